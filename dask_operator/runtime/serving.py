"""A tiny threaded HTTP server for the probe and metrics endpoints.

Invariant: a route handler gets the path and query and returns (status, content type, body); the server
runs on its own daemon threads, so a busy controller cannot delay a probe, and `close()` frees the port.
Held by test/integration/test_runtime_manager.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

Response = tuple[int, str, bytes]
Route = Callable[[str, Mapping[str, list[str]]], Response]


class EndpointServer:
    def __init__(self, address: tuple[str, int], routes: Mapping[str, Route]) -> None:
        self.address = address
        self.routes = dict(routes)
        server_routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                split = urlsplit(self.path)
                query = parse_qs(split.query, keep_blank_values=True)
                route = None
                for prefix in sorted(server_routes, key=len, reverse=True):
                    if split.path == prefix or split.path.startswith(prefix.rstrip("/") + "/"):
                        route = server_routes[prefix]
                        break
                if route is None:
                    status, content_type, body = 404, "text/plain; charset=utf-8", b"404 page not found\n"
                else:
                    try:
                        status, content_type, body = route(split.path, query)
                    except Exception as error:  # noqa: BLE001  (a probe must answer, whatever broke)
                        status, content_type, body = 500, "text/plain; charset=utf-8", f"{error}\n".encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(address, Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"http-{address[1]}", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
