"""Port forwarding into a pod (`portforward.k8s.io`): stream pairs to TCP connections inside the pod's netns.

Invariant: the connection is made from inside the pod's network namespace to localhost:<port> (as the
kubelet does), so a server bound to 127.0.0.1 in the pod is reachable; the node's own threads never
stay in another namespace (the socket is created there, then the thread returns to its own). Over SPDY,
each forwarded connection is a data and an error stream sharing a `requestID`; the connection's end is
FIN on both, a failure to connect is a message on the error stream and a reset of both. Held by
test/e2e/test_kubelet_streaming.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
from collections.abc import Awaitable, Callable

from . import spdy
from .spdysession import SpdySession, SpdyStream

log = logging.getLogger(__name__)

PROTOCOL = "portforward.k8s.io"
STREAM_CREATION_TIMEOUT = 30.0
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

Connector = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {err}")


def socket_in_netns(netns_path: str, family: int) -> socket.socket:
    """A TCP socket that lives in the given network namespace (blocking call; run it on a worker thread)."""
    with open("/proc/thread-self/ns/net", "rb") as own, open(netns_path, "rb") as target:
        _setns(target.fileno())
        try:
            return socket.socket(family, socket.SOCK_STREAM)
        finally:
            _setns(own.fileno())


def netns_connector(netns_path: str, namespace_label: str) -> Connector:
    async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        errors = []
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            sock: socket.socket | None = None
            try:
                sock = await asyncio.to_thread(socket_in_netns, netns_path, family)
                sock.setblocking(False)
                await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 10.0)
            except (TimeoutError, OSError) as e:
                if sock is not None:
                    sock.close()
                tcp = "tcp4" if family == socket.AF_INET else "tcp6"
                where = host if family == socket.AF_INET else f"[{host}]"
                reason = e.strerror if isinstance(e, OSError) and e.strerror else "i/o timeout"
                errors.append(f"dial {tcp} {where}:{port}: connect: {reason.lower()}")
                continue
            assert sock is not None
            return await asyncio.open_connection(sock=sock)
        raise ConnectionError(
            f'failed to connect to localhost:{port} inside namespace "{namespace_label}", '
            f"IPv4: {errors[0]} IPv6 {errors[-1]}"
        )

    return connect


def accept_stream(stream: SpdyStream) -> str | None:
    """The kubelet's checks on a new port-forward stream (None accepts it)."""
    port = stream.header("port")
    if not port:
        return '"port" header is required'
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"unable to parse {port!r} as a port"
    if stream.header("streamType") not in ("data", "error"):
        return f"invalid stream type {stream.header('streamType')!r}"
    return None


async def pipe(
    read: Callable[[], Awaitable[bytes]],
    write: Callable[[bytes], Awaitable[None]],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """Copies both ways until the pod's side ends; the client's end half-closes towards the pod."""

    async def upstream() -> None:
        try:
            while chunk := await read():
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            pass

    up = asyncio.create_task(upstream())
    try:
        while chunk := await reader.read(65536):
            await write(chunk)
    except (ConnectionError, OSError):
        pass
    finally:
        up.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _forward_pair(data: SpdyStream, error: SpdyStream, connect: Connector, pod: str, uid: str) -> None:
    port = int(data.header("port"))
    try:
        reader, writer = await connect(port)
    except (OSError, ConnectionError) as e:
        message = f"error forwarding port {port} to pod {pod}, uid {uid}: {e}"
        log.info("%s", message)
        with contextlib.suppress(ConnectionError):
            await error.write(message.encode())
        data.reset()
        error.reset()
        return
    try:
        await pipe(data.read, data.write, reader, writer)
    finally:
        data.close()
        error.close()


async def _expire_pair(
    pairs: dict[str, dict[str, SpdyStream]], request: str, pair: dict[str, SpdyStream], timeout: float
) -> None:
    """A pair still incomplete after `timeout` is dropped, with a message on its error stream if it has one."""
    await asyncio.sleep(timeout)
    if pairs.get(request) is not pair:
        return
    del pairs[request]
    error = pair.get("error")
    if error is not None:
        with contextlib.suppress(ConnectionError):
            await error.write(
                f"timed out waiting for the data and error streams of request {request}".encode()
            )
    for stream in pair.values():
        stream.reset()


async def serve_spdy(session: SpdySession, connect: Connector, pod: str, uid: str) -> None:
    """Pairs the client's streams by requestID and forwards each pair until the connection ends."""
    pairs: dict[str, dict[str, SpdyStream]] = {}
    tasks: set[asyncio.Task[None]] = set()
    try:
        while (stream := await session.next_stream()) is not None:
            kind = stream.header("streamType")
            request = stream.header("requestID")
            if not request:  # very old clients: consecutive stream ids make a pair
                request = str(stream.id if kind == "error" else stream.id - 2)
            pair = pairs.setdefault(request, {})
            if kind in pair:
                stream.reset(spdy.RstStatus.PROTOCOL_ERROR)
                continue
            pair[kind] = stream
            if len(pair) == 1:
                watcher = asyncio.create_task(_expire_pair(pairs, request, pair, STREAM_CREATION_TIMEOUT))
                tasks.add(watcher)
                watcher.add_done_callback(tasks.discard)
            if "data" in pair and "error" in pair:
                del pairs[request]
                task = asyncio.create_task(_forward_pair(pair["data"], pair["error"], connect, pod, uid))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
