"""The kubelet's exec/attach stream protocol over SPDY (`channel.k8s.io` v1-v4): streams, status, resizes.

Invariant: a session starts only once the client opened every stream its options ask for (error, plus
stdin/stdout/stderr as requested, plus resize for a TTY on v3+), within the creation timeout; it ends by
writing exactly one status on the error stream (v4: a JSON Status, also for success, carrying a non-zero
exit code as cause `ExitCode`; older versions: the message of a failure only). Held by
test/unit/test_node_spdy.py and test/e2e/test_kubelet_streaming.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .podexec import TerminalSize
from .spdysession import SpdySession, SpdyStream

T = TypeVar("T")

V4 = "v4.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V2 = "v2.channel.k8s.io"
V1 = "channel.k8s.io"
PROTOCOLS = (V4, V3, V2, V1)
STREAM_CREATION_TIMEOUT = 30.0


@dataclass(frozen=True)
class StreamOptions:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool

    @classmethod
    def from_query(cls, query: Mapping[str, Sequence[str]]) -> StreamOptions:
        def flag(name: str) -> bool:
            return (query.get(name) or [""])[-1] == "1"

        tty = flag("tty")
        opts = cls(stdin=flag("input"), stdout=flag("output"), stderr=flag("error") and not tty, tty=tty)
        if not (opts.stdin or opts.stdout or opts.stderr):
            raise ValueError("you must specify at least 1 of stdin, stdout, stderr")
        return opts


def negotiate(client_protocols: Sequence[str], server_protocols: Sequence[str] = PROTOCOLS) -> str:
    """The first protocol of the client's list that the server speaks ('' if none)."""
    for protocol in client_protocols:
        if protocol in server_protocols:
            return protocol
    return ""


def success_status() -> dict[str, Any]:
    return {"metadata": {}, "status": "Success"}


def exit_code_status(code: int) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: command terminated with exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def internal_error_status(message: str) -> dict[str, Any]:
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "code": 500,
    }


def parse_resizes(buffer: str) -> tuple[list[TerminalSize], str]:
    """Terminal sizes from a run of JSON objects ({"Width":..,"Height":..}); returns the unparsed rest."""
    decoder = json.JSONDecoder()
    sizes: list[TerminalSize] = []
    pos = 0
    while True:
        while pos < len(buffer) and buffer[pos] in " \t\r\n":
            pos += 1
        if pos >= len(buffer):
            return sizes, ""
        try:
            obj, end = decoder.raw_decode(buffer, pos)
        except json.JSONDecodeError:
            return sizes, buffer[pos:]
        pos = end
        if isinstance(obj, dict):
            sizes.append(TerminalSize(int(obj.get("Width") or 0), int(obj.get("Height") or 0)))


@dataclass
class CommandStreams:
    protocol: str
    error: SpdyStream | None = None
    stdin: SpdyStream | None = None
    stdout: SpdyStream | None = None
    stderr: SpdyStream | None = None
    resize: SpdyStream | None = None

    def all(self) -> list[SpdyStream]:
        return [s for s in (self.error, self.stdin, self.stdout, self.stderr, self.resize) if s is not None]


def expected_streams(opts: StreamOptions, protocol: str) -> int:
    resizable = opts.tty and protocol in (V4, V3)
    return 1 + opts.stdin + opts.stdout + opts.stderr + resizable


async def collect_streams(
    session: SpdySession, opts: StreamOptions, protocol: str, timeout: float = STREAM_CREATION_TIMEOUT
) -> CommandStreams:
    """Waits for the client's streams; raises TimeoutError if they do not all come in time."""
    streams = CommandStreams(protocol)
    want = expected_streams(opts, protocol)
    received = 0

    async def gather() -> None:
        nonlocal received
        while received < want:
            stream = await session.next_stream()
            if stream is None:
                raise ConnectionResetError("connection closed while waiting for streams")
            kind = stream.header("streamType")
            if kind not in ("error", "stdin", "stdout", "stderr", "resize"):
                stream.reset()
                continue
            setattr(streams, kind, stream)
            received += 1

    await asyncio.wait_for(gather(), timeout)
    if protocol == V1 and streams.stdin is not None:
        streams.stdin = None  # v1 clients never send stdin data on that stream (and kubelets close it)
    return streams


async def write_status(streams: CommandStreams, status: Mapping[str, Any]) -> None:
    if streams.error is None:
        return
    if streams.protocol == V4:
        data = json.dumps(status).encode()
    elif status.get("status") == "Success":
        return
    else:
        data = str(status.get("message", "")).encode()
    with contextlib.suppress(ConnectionError):
        await streams.error.write(data)


async def forward_resizes(stream: SpdyStream, queue: asyncio.Queue[TerminalSize | None]) -> None:
    pending = ""
    while chunk := await stream.read():
        sizes, pending = parse_resizes(pending + chunk.decode(errors="replace"))
        for size in sizes:
            queue.put_nowait(size)
    queue.put_nowait(None)


@dataclass(frozen=True)
class CommandIO:
    """The client's side of an exec or attach, whatever the transport (SPDY streams or WebSocket channels)."""

    stdin: Callable[[], Awaitable[bytes]] | None
    stdout: Callable[[bytes], Awaitable[None]] | None
    stderr: Callable[[bytes], Awaitable[None]] | None
    resizes: asyncio.Queue[TerminalSize | None] | None


CommandRunner = Callable[[CommandIO], Awaitable[dict[str, Any]]]  # runs the command, returns the Status


async def until_client_leaves(work: Awaitable[T], client_gone: Awaitable[object]) -> T | None:
    """Runs `work` unless the client's connection ends first (then `work` is cancelled, and its cleanup
    kills what it started); None in that case."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(client_gone)
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        return None
    return task.result()
