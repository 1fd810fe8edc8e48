"""A TCP proxy the test controls, in front of the real API server: pass, delay, black-hole, drop, refuse.

Invariant: in `pass` mode bytes flow unchanged (TLS end to end); every fault acts on real sockets, so the
client under test meets exactly what a broken network does to it: `blackhole` swallows bytes silently
(no FIN, no RST), `drop` resets every open connection, `refuse` closes the listening socket (ECONNREFUSED),
`delay` holds each chunk. With `upstream_tls` the proxy speaks plain HTTP to the client and TLS to the API
server, one request per connection, so it can log requests and answer some itself (429, 410, 500 ...).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self
from urllib.parse import urlsplit

PASS, BLACKHOLE, DELAY = "pass", "blackhole", "delay"


@dataclass(frozen=True)
class SeenRequest:
    method: str
    target: str  # path and query, as sent
    at: float  # time.monotonic()
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)


# An injector sees each request (http mode) and may answer it: (status, extra headers, body) or None.
Injector = Callable[[SeenRequest], "tuple[int, dict[str, str], bytes] | None"]


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv() on it; close() alone would not
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    def __init__(
        self,
        upstream_url: str,
        *,
        upstream_tls: ssl.SSLContext | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        split = urlsplit(upstream_url)
        self.upstream = (split.hostname or "127.0.0.1", split.port or 443)
        self.upstream_tls = upstream_tls
        self.listen_host = listen_host
        self.mode = PASS
        self.delay_seconds = 0.0
        self.requests: list[SeenRequest] = []
        self.injector: Injector | None = None
        self.connections_accepted = 0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._closed = False
        self.port = 0
        self._bind()

    # -- addressing -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "http" if self.upstream_tls is not None else "https"
        return f"{scheme}://{self.listen_host}:{self.port}"

    def _bind(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.listen_host, self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(
            target=self._accept, args=(listener,), daemon=True, name=f"faultproxy-{self.port}"
        ).start()

    # -- faults -----------------------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Heal: forward bytes again (and listen again after refuse())."""
        self.mode = PASS
        if self._listener is None and not self._closed:
            self._bind()

    def blackhole(self) -> None:
        """Swallow every byte in both directions on open and new connections; nothing is closed."""
        self.mode = BLACKHOLE

    def delay(self, seconds: float) -> None:
        self.mode = DELAY
        self.delay_seconds = seconds

    def drop(self) -> int:
        """Reset (RST) every open connection; returns how many. New connections are still accepted."""
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            _reset(conn)
        return len(conns)

    def refuse(self) -> None:
        """Stop listening (connects get ECONNREFUSED) and reset open connections."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            with contextlib.suppress(OSError):
                listener.close()
        self.drop()

    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def close(self) -> None:
        self._closed = True
        self.refuse()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------------

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._conns.update(socks)

    def _untrack(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._conns.discard(sock)
        for sock in socks:
            # shutdown first: close() alone leaves a recv() blocked in the other pump asleep, and the
            # connection half-dead (the peer would never see it end)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self.connections_accepted += 1
            self._track(client)
            target = self._serve_http if self.upstream_tls is not None else self._serve_tcp
            threading.Thread(target=target, args=(client,), daemon=True).start()

    def _serve_tcp(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            self._untrack(client)
            return
        upstream.settimeout(None)
        self._track(upstream)
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if self.mode == BLACKHOLE:
                    continue
                if self.mode == DELAY:
                    time.sleep(self.delay_seconds)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._untrack(source, sink)

    def _serve_http(self, client: socket.socket) -> None:
        assert self.upstream_tls is not None
        try:
            head, body = _read_request(client)
        except (OSError, ValueError):
            self._untrack(client)
            return
        request_line, _, header_block = head.partition("\r\n")
        method, target, _version = request_line.split(" ", 2)
        pairs = tuple(
            (name.strip(), value.strip())
            for name, _, value in (line.partition(":") for line in header_block.split("\r\n") if line)
        )
        seen = SeenRequest(method, target, time.monotonic(), pairs)
        with self._lock:
            self.requests.append(seen)
        answer = self.injector(seen) if self.injector is not None else None
        if answer is not None:
            status, headers, payload = answer
            lines = [
                f"HTTP/1.1 {status} Injected",
                "Content-Type: application/json",
                f"Content-Length: {len(payload)}",
            ]
            lines += [f"{k}: {v}" for k, v in headers.items()] + ["Connection: close", "", ""]
            with contextlib.suppress(OSError):
                client.sendall("\r\n".join(lines).encode() + payload)
            self._untrack(client)
            return
        headers = [
            line for line in header_block.split("\r\n") if line and not line.lower().startswith("connection:")
        ]
        forwarded = "\r\n".join([request_line, *headers, "Connection: close", "", ""]).encode() + body
        try:
            raw = socket.create_connection(self.upstream, timeout=10)
            upstream = self.upstream_tls.wrap_socket(raw, server_hostname=self.upstream[0])
            upstream.settimeout(None)
        except OSError:
            self._untrack(client)
            return
        self._track(upstream)
        try:
            if self.mode == BLACKHOLE:
                self._pump(client, upstream)  # swallows; returns when the client gives up
                return
            upstream.sendall(forwarded)
        except OSError:
            self._untrack(client, upstream)
            return
        self._pump(upstream, client)


def _read_request(sock: socket.socket) -> tuple[str, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("connection closed before a request arrived")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    length = 0
    for line in text.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return text, rest


def client_tls_context(ca_file: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """What the proxy (in http mode) presents to the API server: the test's admin credentials."""
    context = ssl.create_default_context(cafile=ca_file)
    context.load_cert_chain(cert_file, key_file)
    return context
