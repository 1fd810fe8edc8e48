"""The kubelet endpoint the API server proxies `kubectl logs` to: HTTPS `/containerLogs/{ns}/{pod}/{c}`.

Invariant: only clients with a certificate from the cluster CA are served (the API server's
kubelet-client certificate). Supports follow, tailLines, previous, timestamps, sinceSeconds, sinceTime
and limitBytes with the kubelet's meanings; a follow stream ends when the container's output closes.
"""

from __future__ import annotations

import contextlib
import logging
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from . import logfiles

log = logging.getLogger(__name__)

PodDirLookup = Callable[[str, str], Path | None]  # (namespace, pod) -> its log directory


def container_logs(pod_dir: Path, container: str) -> list[Path]:
    """Log files of one container, oldest start first."""
    cdir = pod_dir / container
    if not cdir.is_dir():
        return []
    files = [p for p in cdir.glob("*.log") if p.stem.isdigit()]
    return sorted(files, key=lambda p: int(p.stem))


class _Handler(BaseHTTPRequestHandler):
    server: LogServer
    protocol_version = "HTTP/1.0"  # body ends when the connection closes: natural for `follow`

    def log_message(self, format: str, *args: object) -> None:
        log.debug("logs: " + format, *args)

    def _error(self, status: int, message: str) -> None:
        body = message.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        if parts == ["healthz"]:
            self._error(200, "ok")
            return
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._error(404, f"not found: {url.path}")
            return
        _, ns, pod, container = parts
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        pod_dir = self.server.pod_dir(ns, pod)
        files = container_logs(pod_dir, container) if pod_dir else []
        if pod_dir is None:
            self._error(404, f'pod "{pod}" in namespace "{ns}" not found on this node')
            return
        previous = q.get("previous", "false").lower() == "true"
        if previous:
            if len(files) < 2:
                self._error(400, f'previous terminated container "{container}" in pod "{pod}" not found')
                return
            path = files[-2]
        else:
            if not files:
                self._error(400, f'container "{container}" in pod "{pod}" is waiting to start')
                return
            path = files[-1]
        tail = int(q["tailLines"]) if q.get("tailLines", "").lstrip("-").isdigit() else None
        since: float | None = None
        if q.get("sinceSeconds", "").isdigit():
            since = time.time() - int(q["sinceSeconds"])
        elif q.get("sinceTime"):
            with contextlib.suppress(ValueError):
                since = logfiles.parse_ts(q["sinceTime"])
        timestamps = q.get("timestamps", "false").lower() == "true"
        follow = q.get("follow", "false").lower() == "true" and not previous
        limit = int(q["limitBytes"]) if q.get("limitBytes", "").isdigit() else None
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        sent = 0

        def emit(line: logfiles.LogLine) -> bool:
            nonlocal sent
            data = line.render(timestamps)
            if limit is not None and sent + len(data) > limit:
                data = data[: max(0, limit - sent)]
            self.wfile.write(data)
            sent += len(data)
            return limit is None or sent < limit

        try:
            size = path.stat().st_size
            lines = logfiles.read_lines(path)
            for line in logfiles.select_lines(lines, tail, since):
                if not emit(line):
                    return
            self.wfile.flush()
            if follow:
                for line in logfiles.follow(path, size, lambda: self.server.is_open(path)):
                    if not emit(line):
                        return
                    self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            return


class LogServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        host: str,
        port: int,
        cert: str,
        key: str,
        client_ca: str,
        pod_dir: PodDirLookup,
        is_open: Callable[[Path], bool],
    ) -> None:
        super().__init__((host, port), _Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        # The handshake happens on the handler's thread (first read), so a slow client cannot block accept.
        self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.pod_dir = pod_dir
        self.is_open = is_open
        self._thread = threading.Thread(target=self.serve_forever, name="kubelet logs", daemon=True)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup of the node IP (getfqdn): ~6 s here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
