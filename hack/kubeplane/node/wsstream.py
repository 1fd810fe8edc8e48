"""WebSocket (RFC 6455) channels for exec, attach and port-forward, for clients the API server passes through.

The API server translates kubectl's WebSockets into SPDY, but proxies other WebSocket requests (the
`kubernetes` Python client's port-forward, exec clients offering only `v4.channel.k8s.io`) to the kubelet
unchanged. Invariant: every binary message carries its channel number in the first byte (the
`channel.k8s.io` family, binary variants only); for port-forward each port has a data channel 2i and
an error channel 2i+1, and the first message on each carries the port (uint16, little endian); the
connection ends with a Close frame once every channel is done. Held by test/unit/test_node_spdy.py
(framing) and test/e2e/test_kubelet_streaming.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import portforward, remotecommand
from .podexec import ReadChunk, TerminalSize, WriteChunk

if TYPE_CHECKING:
    from .kubeletserver import Request

log = logging.getLogger(__name__)

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 16 * 1024 * 1024
COMMAND_PROTOCOLS = ("v4.channel.k8s.io", "channel.k8s.io")
PORT_FORWARD_PROTOCOLS = ("v4.channel.k8s.io",)


class WebSocketError(Exception):
    pass


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame; servers send unmasked frames, clients masked ones (`mask`: 4 bytes)."""
    head = bytearray([0x80 | opcode])
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head.append(mask_bit | n)
    elif n < 1 << 16:
        head.append(mask_bit | 126)
        head += struct.pack(">H", n)
    else:
        head.append(mask_bit | 127)
        head += struct.pack(">Q", n)
    if mask:
        head += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(head) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    """(fin, opcode, unmasked payload) of the next frame."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack(">H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack(">Q", await reader.readexactly(8))
    if n > MAX_MESSAGE:
        raise WebSocketError(f"frame too large: {n}")
    mask = await reader.readexactly(4) if b1 & 0x80 else b""
    payload = await reader.readexactly(n)
    if mask:
        payload = _unmask(payload, mask)
    return bool(b0 & 0x80), b0 & 0x0F, payload


def _unmask(payload: bytes, mask: bytes) -> bytes:
    # XOR through a big integer: fast enough for port-forward traffic without numpy.
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class ChannelSocket:
    """A server-side WebSocket carrying numbered channels."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, channels: int) -> None:
        self.reader, self.writer = reader, writer
        self.inbound: list[asyncio.Queue[bytes]] = [asyncio.Queue() for _ in range(channels)]
        self.closed = False

    async def send(self, channel: int, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("websocket closed")
        self.writer.write(encode_frame(OP_BINARY, bytes([channel]) + data))
        await self.writer.drain()

    def channel_writer(self, channel: int) -> WriteChunk:
        async def write(data: bytes) -> None:
            await self.send(channel, data)

        return write

    def channel_reader(self, channel: int) -> ReadChunk:
        async def read() -> bytes:
            data = await self.inbound[channel].get()
            if not data:
                self.inbound[channel].put_nowait(b"")
            return data

        return read

    async def serve(self) -> None:
        """Reads messages into their channel's queue until the client closes; answers pings."""
        message = b""
        try:
            while True:
                fin, opcode, payload = await read_frame(self.reader)
                if opcode == OP_CLOSE:
                    with contextlib.suppress(Exception):
                        self.writer.write(encode_frame(OP_CLOSE, payload[:2]))
                    break
                if opcode == OP_PING:
                    self.writer.write(encode_frame(OP_PONG, payload))
                    continue
                if opcode == OP_PONG:
                    continue
                message += payload
                if not fin:
                    continue
                data, message = message, b""
                if data and data[0] < len(self.inbound) and len(data) > 1:
                    self.inbound[data[0]].put_nowait(data[1:])
        except (asyncio.IncompleteReadError, ConnectionError, OSError, WebSocketError):
            pass
        finally:
            for queue in self.inbound:
                queue.put_nowait(b"")

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.write(encode_frame(OP_CLOSE, struct.pack(">H", 1000)))
            await asyncio.wait_for(self.writer.drain(), 5)


async def _upgrade(req: Request, writer: asyncio.StreamWriter, allowed: Sequence[str]) -> str:
    from .kubeletserver import HttpError, response_head

    key = req.header("Sec-WebSocket-Key")
    if not key:
        raise HttpError(400, "websocket upgrade without Sec-WebSocket-Key")
    offered = req.header_list("Sec-WebSocket-Protocol")
    chosen = next((p for p in offered if p in allowed), None) if offered else ""
    if chosen is None:
        raise HttpError(400, f"requested protocol(s) are not supported: {offered}; supports {list(allowed)}")
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept_key(key)}
    if chosen:
        headers["Sec-WebSocket-Protocol"] = chosen
    writer.write(response_head(101, headers))
    await writer.drain()
    return chosen


async def serve_command(
    req: Request,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    opts: remotecommand.StreamOptions,
    run: remotecommand.CommandRunner,
) -> None:
    protocol = await _upgrade(req, writer, COMMAND_PROTOCOLS)
    ws = ChannelSocket(reader, writer, 5)
    serving = asyncio.create_task(ws.serve())
    resizes: asyncio.Queue[TerminalSize | None] | None = asyncio.Queue() if opts.tty else None
    try:
        first = 1 if opts.stdout else 2 if opts.stderr else 3
        await ws.send(first, b"")  # tells the client the connection is established
        resizer = asyncio.create_task(_forward_resizes(ws, resizes)) if resizes is not None else None
        io = remotecommand.CommandIO(
            stdin=ws.channel_reader(0) if opts.stdin else None,
            stdout=ws.channel_writer(1) if opts.stdout else None,
            stderr=ws.channel_writer(2) if opts.stderr else None,
            resizes=resizes,
        )
        status = await remotecommand.until_client_leaves(run(io), asyncio.shield(serving))
        if status is None:
            return
        if resizer is not None:
            resizer.cancel()
        if protocol.startswith("v4."):
            await ws.send(3, json.dumps(status).encode())
        elif status.get("status") != "Success":
            await ws.send(3, str(status.get("message", "")).encode())
    except ConnectionError:
        pass
    finally:
        await ws.close()
        serving.cancel()


async def _forward_resizes(ws: ChannelSocket, queue: asyncio.Queue[TerminalSize | None]) -> None:
    read = ws.channel_reader(4)
    pending = ""
    while chunk := await read():
        sizes, pending = remotecommand.parse_resizes(pending + chunk.decode(errors="replace"))
        for size in sizes:
            queue.put_nowait(size)


async def serve_port_forward(
    req: Request,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    connect: portforward.Connector,
    pod: str,
    uid: str,
) -> None:
    from .kubeletserver import HttpError

    ports = []
    for value in req.query.get("port", []):
        for item in value.split(","):
            if not item.isdigit() or not 0 < int(item) < 65536:
                raise HttpError(400, f"unable to parse {item!r} as a port")
            ports.append(int(item))
    if not ports:
        raise HttpError(400, 'query parameter "port" is required')
    await _upgrade(req, writer, PORT_FORWARD_PROTOCOLS)
    ws = ChannelSocket(reader, writer, 2 * len(ports))
    serving = asyncio.create_task(ws.serve())

    async def forward(i: int, port: int) -> None:
        prefix = struct.pack("<H", port)
        await ws.send(2 * i, prefix)
        await ws.send(2 * i + 1, prefix)
        try:
            conn_reader, conn_writer = await connect(port)
        except (OSError, ConnectionError) as e:
            await ws.send(2 * i + 1, f"error forwarding port {port} to pod {pod}, uid {uid}: {e}".encode())
            return
        await portforward.pipe(ws.channel_reader(2 * i), ws.channel_writer(2 * i), conn_reader, conn_writer)

    try:
        forwards = asyncio.gather(*(forward(i, p) for i, p in enumerate(ports)))
        await remotecommand.until_client_leaves(forwards, asyncio.shield(serving))
    except ConnectionError:
        pass
    finally:
        await ws.close()
        serving.cancel()
