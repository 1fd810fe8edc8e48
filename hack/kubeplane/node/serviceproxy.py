"""Userspace TCP proxy for ClusterIPs (kube-proxy's old "userspace" mode), on an asyncio loop.

Invariant: one listener per (ClusterIP, port) with at least one ready backend, and none otherwise, so a
client of a Service without endpoints gets "connection refused" (as with kube-proxy's REJECT rule) and
retries, instead of a connection that closes mid-handshake. Each new connection goes to the next
backend in round-robin order; if no backend answers it is reset. Routes are replaced as a whole.
Listeners use IP_FREEBIND, so they can bind before the address is on the bridge, and SO_REUSEPORT,
so the nodes of one plane all listen on its ClusterIPs and the kernel spreads connections over them.
On a plane of several nodes a connection from another node's pod is handed to that node (handover.py),
so a pod's Service connections are proxied by its own node, as with kube-proxy: stopping a node cuts
its own pods' connections only. Both sides of a proxied connection get TCP keepalive and a user timeout, so a
backend that vanished without closing (its pod's network gone first) ends the client's connection within
seconds instead of never. Held by test/unit/test_process_node.py and test_process_node_handover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
from collections.abc import Coroutine
from typing import Any

from .handover import HandOver
from .servicetable import Backend, Frontend

log = logging.getLogger(__name__)

IP_FREEBIND = 15
CONNECT_TIMEOUT = 5.0
# A proxied connection whose peer vanished without a FIN (its pod's network torn down first) must end, as it
# would across a real network, instead of holding the other side forever: data unacknowledged for
# USER_TIMEOUT_MS aborts it; an idle one is probed after KEEPALIVE_IDLE s, every KEEPALIVE_INTERVAL s.
USER_TIMEOUT_MS = 20_000
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 10, 5, 3


def notice_dead_peers(sock: socket.socket | None) -> None:
    """TCP keepalive and a user timeout on one side of a proxied connection."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)


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
    def __init__(self, handover: HandOver | None = None) -> None:
        self.backends: dict[Frontend, tuple[Backend, ...]] = {}
        self.handover = handover
        self.handed_over = 0  # connections passed to their pod's node
        self.received = 0  # connections other nodes passed to this one
        self._listeners: dict[Frontend, socket.socket] = {}
        self._rr: dict[Frontend, itertools.count[int]] = {}
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Call on the proxy's loop: opens this node's hand-over inbox, if the plane has several nodes."""
        if self.handover is None:
            return
        inbox = self.handover.open_inbox()
        asyncio.get_running_loop().add_reader(inbox.fileno(), self._take_handed_over)

    async def update(self, backends: dict[Frontend, tuple[Backend, ...]]) -> None:
        """Call on the proxy's loop. Opens and closes listeners to match the new routes."""
        self.backends = {f: b for f, b in backends.items() if b}
        for front in [f for f in self._listeners if f not in self.backends]:
            self._stop_listening(front)
        for front in self.backends:
            if front in self._listeners:
                continue
            try:
                self._listeners[front] = self._listen(front)
            except OSError as e:
                log.warning("proxy: cannot listen on %s:%s: %s", *front, e)

    def _listen(self, front: Frontend) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Every node of a plane serves every ClusterIP on the shared bridge: the kernel spreads
            # connections over their listeners, and a stopped node's listener just drops out.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            sock.bind(front)
            sock.listen(512)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        # A reader callback, not loop.sock_accept: nothing is deferred past closing (see _stop_listening).
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, front, sock)
        return sock

    def _stop_listening(self, front: Frontend) -> None:
        sock = self._listeners.pop(front)
        asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()

    def _accept(self, front: Frontend, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("proxy: accept on %s:%s failed: %s", *front, e)
                return
            self._spawn(self.accepted(front, conn))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def accepted(self, front: Frontend, conn: socket.socket) -> None:
        """A connection a listener of this node accepted: handed to its pod's node, or proxied here.

        Nothing is read from it before the hand-over, so no byte of it stays behind in this node."""
        conn.setblocking(False)
        if self.handover is not None and self.handover.pass_on(front, conn):
            self.handed_over += 1
            return
        await self._serve(front, conn)

    def _take_handed_over(self) -> None:
        assert self.handover is not None
        for front, conn in self.handover.receive():
            self.received += 1
            self._spawn(self._serve(front, conn))

    async def _serve(self, front: Frontend, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:
            conn.close()
            return
        await self._forward(front, reader, writer)

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
        for side in (writer, up_writer):
            notice_dead_peers(side.get_extra_info("socket"))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def close(self) -> None:
        for front in list(self._listeners):
            self._stop_listening(front)
        if self.handover is not None and self.handover.inbox is not None:
            asyncio.get_running_loop().remove_reader(self.handover.inbox.fileno())
            self.handover.close_inbox()
