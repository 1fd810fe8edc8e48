"""The server side of one SPDY/3.1 connection on asyncio: streams the client opens, their data, FIN and RST.

Invariant: every frame is written from the event loop, in order, through one `HeaderCodec`; a stream is
replied to (SYN_REPLY) before it is handed out, so no data can precede its reply. A stream's reader sees
the client's bytes in order and then b"" once the client sent FIN or RST or the connection ended.
Pings from the client are echoed. Held by test/unit/test_node_spdy.py and test/e2e/test_kubelet_streaming.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from . import spdy

log = logging.getLogger(__name__)

CHUNK = 32 * 1024  # data frames we send are at most this long, so one stream cannot hog the connection


class SpdyStream:
    def __init__(self, session: SpdySession, stream_id: int, headers: spdy.Headers) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self._incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.remote_closed = False
        self.local_closed = False

    def header(self, name: str) -> str:
        return spdy.first(self.headers, name)

    async def read(self) -> bytes:
        """The next bytes from the client; b"" once it closed its side (or the connection ended)."""
        if self.remote_closed and self._incoming.empty():
            return b""
        data = await self._incoming.get()
        if not data:
            self._incoming.put_nowait(b"")  # every later read sees the end too
        return data

    async def write(self, data: bytes) -> None:
        if self.local_closed or self.session.closed:
            raise ConnectionResetError(f"SPDY stream {self.id} is closed")
        for i in range(0, len(data), CHUNK):
            self.session.send(spdy.DataFrame(self.id, data[i : i + CHUNK]))
        await self.session.drain()

    def close(self) -> None:
        """Half-closes our side (FIN); idempotent."""
        if self.local_closed:
            return
        self.local_closed = True
        if not self.session.closed:
            self.session.send(spdy.DataFrame(self.id, b"", spdy.FLAG_FIN))
        self._forget_if_done()

    def _forget_if_done(self) -> None:
        # A stream closed both ways is dropped, so a long port-forward with many connections stays small.
        if self.local_closed and self.remote_closed:
            self.session.streams.pop(self.id, None)

    def reset(self, status: int = spdy.RstStatus.CANCEL) -> None:
        if not self.local_closed and not self.session.closed:
            self.session.send(spdy.RstStream(self.id, status))
        self.local_closed = True
        self._remote_end()

    def _receive(self, data: bytes) -> None:
        if data and not self.remote_closed:
            self._incoming.put_nowait(data)

    def _remote_end(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            self._incoming.put_nowait(b"")
        self._forget_if_done()


StreamFilter = Callable[[SpdyStream], str | None]  # None accepts the stream, a message rejects it


class SpdySession:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        accept: StreamFilter = lambda _s: None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.accept = accept
        self.codec = spdy.HeaderCodec()
        self.decoder = spdy.FrameDecoder(self.codec)
        self.streams: dict[int, SpdyStream] = {}
        self.new_streams: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self.closed = False
        self.last_stream_id = 0
        self.done = asyncio.Event()

    def send(self, frame: spdy.Frame) -> None:
        if self.closed:
            return
        self.writer.write(spdy.encode(frame, self.codec))

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as e:
            self._lost()
            raise ConnectionResetError(str(e)) from e

    async def next_stream(self) -> SpdyStream | None:
        """The next stream the client opened, or None once the connection is gone."""
        if self.done.is_set() and self.new_streams.empty():
            return None
        stream = await self.new_streams.get()
        if stream is None:
            self.new_streams.put_nowait(None)
        return stream

    async def serve(self) -> None:
        """Reads frames until the client goes away; run it as a task next to the handler."""
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for frame in self.decoder.feed(data):
                    if not self._dispatch(frame):
                        return
        except (spdy.ProtocolError, ConnectionError, OSError) as e:
            log.debug("spdy session ended: %s", e)
        finally:
            self._lost()

    def _dispatch(self, frame: spdy.Frame) -> bool:
        if isinstance(frame, spdy.DataFrame):
            stream = self.streams.get(frame.stream_id)
            if stream is not None:
                stream._receive(frame.data)
                if frame.fin:
                    stream._remote_end()
        elif isinstance(frame, spdy.SynStream):
            self._open(frame)
        elif isinstance(frame, spdy.RstStream):
            stream = self.streams.pop(frame.stream_id, None)
            if stream is not None:
                stream.local_closed = True
                stream._remote_end()
        elif isinstance(frame, spdy.HeadersFrame):
            stream = self.streams.get(frame.stream_id)
            if stream is not None and frame.flags & spdy.FLAG_FIN:
                stream._remote_end()
        elif isinstance(frame, spdy.Ping):
            if frame.ping_id % 2 == 1:  # the client's ping (ours would be even): echo it
                self.send(frame)
        elif isinstance(frame, spdy.GoAway):
            return False
        return True

    def _open(self, frame: spdy.SynStream) -> None:
        if frame.stream_id % 2 == 0 or frame.stream_id <= self.last_stream_id:
            self.send(spdy.RstStream(frame.stream_id, spdy.RstStatus.PROTOCOL_ERROR))
            return
        self.last_stream_id = frame.stream_id
        stream = SpdyStream(self, frame.stream_id, frame.headers)
        reason = self.accept(stream)
        if reason is not None:
            log.info("spdy stream %s rejected: %s", frame.stream_id, reason)
            self.send(spdy.RstStream(frame.stream_id, spdy.RstStatus.REFUSED_STREAM))
            return
        self.streams[frame.stream_id] = stream
        self.send(spdy.SynReply(frame.stream_id, {}))
        if frame.fin:
            stream._remote_end()
        self.new_streams.put_nowait(stream)

    def _lost(self) -> None:
        if self.done.is_set():
            return
        self.done.set()
        for stream in list(self.streams.values()):
            stream._remote_end()
        self.new_streams.put_nowait(None)

    async def close(self, timeout: float = 5.0) -> None:
        """Ends every stream (FIN), says GOAWAY and closes the connection after flushing what was written."""
        for stream in list(self.streams.values()):
            stream.close()
        self.send(spdy.GoAway(self.last_stream_id))
        self.closed = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.drain(), timeout)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), timeout)
        self._lost()
