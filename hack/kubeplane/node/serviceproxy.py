"""Userspace TCP proxy for ClusterIPs (kube-proxy's old "userspace" mode), on an asyncio loop.

Invariant: one listener per (ClusterIP, port) with at least one ready backend, and none otherwise, so a
client of a Service without endpoints gets "connection refused" (as with kube-proxy's REJECT rule) and
retries, instead of a connection that closes mid-handshake. Each new connection goes to the next
backend in round-robin order; if no backend answers it is reset. Routes are replaced as a whole.
Listeners use IP_FREEBIND, so they can bind before the address is on the bridge, and SO_REUSEPORT,
so the nodes of one plane all listen on its ClusterIPs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct

from .servicetable import Backend, Frontend

log = logging.getLogger(__name__)

IP_FREEBIND = 15
CONNECT_TIMEOUT = 5.0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


class ServiceProxy:
    def __init__(self) -> None:
        self.backends: dict[Frontend, tuple[Backend, ...]] = {}
        self._servers: dict[Frontend, asyncio.base_events.Server] = {}
        self._rr: dict[Frontend, itertools.count[int]] = {}

    async def update(self, backends: dict[Frontend, tuple[Backend, ...]]) -> None:
        """Call on the proxy's loop. Opens and closes listeners to match the new routes."""
        self.backends = {f: b for f, b in backends.items() if b}
        for front in [f for f in self._servers if f not in self.backends]:
            server = self._servers.pop(front)
            server.close()
        for front in self.backends:
            if front in self._servers:
                continue
            try:
                self._servers[front] = await self._listen(front)
            except OSError as e:
                log.warning("proxy: cannot listen on %s:%s: %s", *front, e)

    async def _listen(self, front: Frontend) -> asyncio.base_events.Server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Every node of a plane serves every ClusterIP on the shared bridge: the kernel spreads
        # connections over their listeners, and a stopped node's listener just drops out.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.bind(front)
        sock.listen(512)
        sock.setblocking(False)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._forward(front, reader, writer)

        return await asyncio.start_server(handle, sock=sock)

    async def _forward(
        self, front: Frontend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        candidates = self.backends.get(front, ())
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        if candidates:
            start = next(self._rr.setdefault(front, itertools.count()))
            for i in range(len(candidates)):
                host, port = candidates[(start + i) % len(candidates)]
                try:
                    upstream = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
                    break
                except (OSError, TimeoutError) as e:
                    log.debug("proxy %s:%s -> %s:%s failed: %s", *front, host, port, e)
        if upstream is None:
            sock = writer.get_extra_info("socket")
            if sock is not None:  # linger 0: the client sees a reset, like a rejected connection
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            return
        up_reader, up_writer = upstream
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
