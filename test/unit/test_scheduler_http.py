"""A hostile "scheduler" HTTP server against api/scheduler_http.py: pickles, oversized and never-ending
answers, wrong content types, redirects and non-standard JSON are refused within the deadline.

The server is a real socket server in this process (no mocks); each route misbehaves one way.
"""

from __future__ import annotations

import http.server
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dask_operator.api.scheduler_http import SchedulerHTTPError, parse_json, request_json


class _Marker:
    """Unpickling this creates a file: proof that someone deserialised the tenant's bytes."""

    path = ""

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "pwned"))  # type: ignore[return-value]


class Hostile(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    pickle_bytes = b""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, content_type: str, body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        route = self.path
        if route == "/ok":
            self._send(200, "application/json; charset=UTF-8", b'{"workers": 3}')
        elif route == "/pickle":
            self._send(200, "application/octet-stream", self.pickle_bytes)
        elif route == "/pickle-as-json":
            self._send(200, "application/json", self.pickle_bytes)
        elif route == "/html":
            self._send(200, "text/html", b"<html>{}</html>")
        elif route == "/nan":
            self._send(200, "application/json", b'{"idle_since": NaN}')
        elif route == "/deep":
            self._send(200, "application/json", b"[" * 200_000 + b"]" * 200_000)
        elif route == "/huge-declared":
            self._send(200, "application/json", b"{}", length=1 << 40)
        elif route == "/huge-streamed":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()  # no length: read until close
            chunk = b" " * 65536
            try:
                for _ in range(1000):  # 64 MiB, more than the client reads
                    self.wfile.write(chunk)
            except OSError:
                pass
        elif route == "/drip":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(100000):  # one byte every 0.2 s: each read is quick, the whole never ends
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        elif route == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, "text/plain", b"not found")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    marker = tmp_path_factory.mktemp("pickle") / "unpickled"
    _Marker.path = str(marker)
    Hostile.pickle_bytes = pickle.dumps({"workers": _Marker()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", marker
    server.shutdown()
    server.server_close()


def test_a_json_answer_is_parsed(hostile: tuple[str, Path]) -> None:
    url, _ = hostile
    assert request_json("GET", f"{url}/ok", timeout=5) == {"workers": 3}


@pytest.mark.parametrize(
    ("route", "why"),
    [
        ("/pickle", "not application/json"),
        ("/pickle-as-json", "not strict JSON"),
        ("/html", "not application/json"),
        ("/nan", "non-standard JSON constant NaN"),
        ("/deep", "RecursionError"),
        ("/huge-declared", "more than the"),
        ("/huge-streamed", "longer than the"),
        ("/redirect", "status 302"),
        ("/missing", "status 404"),
    ],
)
def test_what_a_hostile_scheduler_answers_is_refused_and_never_unpickled(
    hostile: tuple[str, Path], route: str, why: str
) -> None:
    url, marker = hostile
    with pytest.raises(SchedulerHTTPError, match=why):
        request_json("GET", f"{url}{route}", timeout=10)
    assert not marker.exists()


def test_a_never_ending_answer_is_cut_at_the_deadline(hostile: tuple[str, Path]) -> None:
    url, _ = hostile
    started = time.monotonic()
    with pytest.raises(SchedulerHTTPError, match="no complete answer within 1 s") as caught:
        request_json("GET", f"{url}/drip", timeout=1.0)
    assert time.monotonic() - started < 3.0  # the deadline, not a per-read timeout
    assert caught.value.sent


def test_a_missing_route_was_not_acted_on(hostile: tuple[str, Path]) -> None:
    url, _ = hostile
    with pytest.raises(SchedulerHTTPError) as missing:
        request_json("POST", f"{url}/missing", {"workers": []}, timeout=5)
    assert (missing.value.status, missing.value.sent) == (404, False)


def test_only_plain_http_urls() -> None:
    for url in ("file:///etc/passwd", "https://example:1/x", "http://host/no-port"):
        with pytest.raises(SchedulerHTTPError, match="not an http://host:port URL"):
            request_json("GET", url, timeout=1)


def test_strict_json() -> None:
    assert parse_json(b'{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}
    for bad in (b"Infinity", b"\xff", b"{'a': 1}"):
        with pytest.raises(SchedulerHTTPError):
            parse_json(bad)
