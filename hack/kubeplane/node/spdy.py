"""SPDY/3.1 framing, without I/O: frames to bytes and bytes to frames (what kubelets speak to API servers).

Invariant: `encode` and `FrameDecoder` are inverse over every frame type, given a `HeaderCodec` on each
side; header blocks are zlib-compressed with the SPDY/3 dictionary as one compression context per
direction (each block ends with a sync flush, so the peer can decode it on arrival). The decoder keeps
partial input until a whole frame has arrived. Held by test/unit/test_node_spdy.py.

Flow control is not enforced: the Go SPDY peers of Kubernetes (moby/spdystream) never send WINDOW_UPDATE,
so a sender that waited for window would stall after 64 KiB. WINDOW_UPDATE and SETTINGS are parsed and
left to the caller to ignore.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

VERSION = 3
MAX_FRAME_PAYLOAD = (1 << 24) - 1
MAX_HEADERS = 1000
MAX_HEADER_FIELD = 1 << 20
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# The SPDY/3 header compression dictionary: length-prefixed common header names and values, then a
# run of common status codes, dates and media types.
_DICTIONARY_WORDS = (
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
)
_DICTIONARY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = (
    b"".join(struct.pack(">I", len(w)) + w.encode() for w in _DICTIONARY_WORDS) + _DICTIONARY_TAIL.encode()
)


class FrameType(IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


class ProtocolError(Exception):
    """The peer sent something that is not SPDY/3.1; the session cannot continue."""


Headers = dict[str, list[str]]  # lower-case name -> values (joined by NUL on the wire)


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers
    associated_id: int = 0
    priority: int = 0
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Settings:
    entries: tuple[tuple[int, int, int], ...]  # (flags, id, value)
    flags: int = 0


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = 0


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers
    flags: int = 0


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


Frame = DataFrame | SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate


def first(headers: Headers, name: str) -> str:
    """The first value of a header ('' when absent); names are matched case-insensitively."""
    values = headers.get(name.lower()) or [""]
    return values[0]


class HeaderCodec:
    """One direction's compressor and the other direction's decompressor (each a single zlib stream)."""

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 8, zdict=DICTIONARY)
        self._decompressor = zlib.decompressobj(zdict=DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        block = [struct.pack(">I", len(headers))]
        for name, values in headers.items():
            key, value = name.lower().encode(), "\x00".join(values).encode()
            block += [struct.pack(">I", len(key)), key, struct.pack(">I", len(value)), value]
        raw = b"".join(block)
        return self._compressor.compress(raw) + self._compressor.flush(zlib.Z_SYNC_FLUSH)

    def decompress(self, block: bytes) -> Headers:
        try:
            raw = self._decompressor.decompress(block)
        except zlib.error as e:
            raise ProtocolError(f"header block does not decompress: {e}") from e
        return _parse_header_block(raw)


def _parse_header_block(raw: bytes) -> Headers:
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(raw):
            raise ProtocolError("truncated header block")
        out = raw[pos : pos + n]
        pos += n
        return out

    (count,) = struct.unpack(">I", take(4))
    if count > MAX_HEADERS:
        raise ProtocolError(f"too many headers: {count}")
    headers: Headers = {}
    for _ in range(count):
        (n,) = struct.unpack(">I", take(4))
        if n > MAX_HEADER_FIELD:
            raise ProtocolError("header name too long")
        name = take(n).decode("latin-1").lower()
        (n,) = struct.unpack(">I", take(4))
        if n > MAX_HEADER_FIELD:
            raise ProtocolError("header value too long")
        headers.setdefault(name, []).extend(take(n).decode("latin-1").split("\x00"))
    return headers


def _control(frame_type: FrameType, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError("control frame payload too large")
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(payload)) + payload


def encode(frame: Frame, codec: HeaderCodec) -> bytes:
    """The wire bytes of one frame (header blocks go through `codec`, so call in sending order)."""
    if isinstance(frame, DataFrame):
        if len(frame.data) > MAX_FRAME_PAYLOAD:
            raise ValueError("data frame payload too large")
        return (
            struct.pack(">II", frame.stream_id & 0x7FFFFFFF, (frame.flags << 24) | len(frame.data))
            + frame.data
        )
    if isinstance(frame, SynStream):
        head = struct.pack(">IIBB", frame.stream_id, frame.associated_id, (frame.priority & 7) << 5, 0)
        return _control(FrameType.SYN_STREAM, frame.flags, head + codec.compress(frame.headers))
    if isinstance(frame, SynReply):
        payload = struct.pack(">I", frame.stream_id) + codec.compress(frame.headers)
        return _control(FrameType.SYN_REPLY, frame.flags, payload)
    if isinstance(frame, HeadersFrame):
        payload = struct.pack(">I", frame.stream_id) + codec.compress(frame.headers)
        return _control(FrameType.HEADERS, frame.flags, payload)
    if isinstance(frame, RstStream):
        return _control(FrameType.RST_STREAM, 0, struct.pack(">II", frame.stream_id, frame.status))
    if isinstance(frame, Settings):
        body = struct.pack(">I", len(frame.entries)) + b"".join(
            struct.pack(">II", (f << 24) | i, v) for f, i, v in frame.entries
        )
        return _control(FrameType.SETTINGS, frame.flags, body)
    if isinstance(frame, Ping):
        return _control(FrameType.PING, 0, struct.pack(">I", frame.ping_id))
    if isinstance(frame, GoAway):
        return _control(FrameType.GOAWAY, 0, struct.pack(">II", frame.last_good_stream_id, frame.status))
    if isinstance(frame, WindowUpdate):
        return _control(FrameType.WINDOW_UPDATE, 0, struct.pack(">II", frame.stream_id, frame.delta))
    raise TypeError(f"not a SPDY frame: {frame!r}")


class FrameDecoder:
    """Turns received bytes into frames; bytes of an incomplete frame wait for the next `feed`."""

    def __init__(self, codec: HeaderCodec) -> None:
        self._codec = codec
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= 8:
            word, length_word = struct.unpack_from(">II", self._buffer)
            flags, length = length_word >> 24, length_word & 0xFFFFFF
            if len(self._buffer) < 8 + length:
                break
            payload = bytes(self._buffer[8 : 8 + length])
            del self._buffer[: 8 + length]
            if word & 0x80000000:
                frame = self._control(word, flags, payload)
                if frame is not None:
                    frames.append(frame)
            else:
                stream_id = word & 0x7FFFFFFF
                if stream_id == 0:
                    raise ProtocolError("data frame on stream 0")
                frames.append(DataFrame(stream_id, payload, flags))
        return frames

    def _control(self, word: int, flags: int, payload: bytes) -> Frame | None:
        version, kind = (word >> 16) & 0x7FFF, word & 0xFFFF
        if version != VERSION:
            raise ProtocolError(f"unsupported SPDY version {version}")

        def need(n: int) -> None:
            if len(payload) < n:
                raise ProtocolError(f"control frame type {kind} too short ({len(payload)} bytes)")

        if kind == FrameType.SYN_STREAM:
            need(10)
            sid, assoc, prio = struct.unpack_from(">IIB", payload)
            headers = self._codec.decompress(payload[10:])
            return SynStream(sid & 0x7FFFFFFF, headers, assoc & 0x7FFFFFFF, prio >> 5, flags)
        if kind in (FrameType.SYN_REPLY, FrameType.HEADERS):
            need(4)
            (sid,) = struct.unpack_from(">I", payload)
            headers = self._codec.decompress(payload[4:])
            if kind == FrameType.SYN_REPLY:
                return SynReply(sid & 0x7FFFFFFF, headers, flags)
            return HeadersFrame(sid & 0x7FFFFFFF, headers, flags)
        if kind == FrameType.RST_STREAM:
            need(8)
            sid, status = struct.unpack_from(">II", payload)
            return RstStream(sid & 0x7FFFFFFF, status)
        if kind == FrameType.SETTINGS:
            need(4)
            (count,) = struct.unpack_from(">I", payload)
            if count > (len(payload) - 4) // 8:
                raise ProtocolError("SETTINGS frame shorter than its entry count")
            entries = []
            for i in range(count):
                idf, value = struct.unpack_from(">II", payload, 4 + 8 * i)
                entries.append((idf >> 24, idf & 0xFFFFFF, value))
            return Settings(tuple(entries), flags)
        if kind == FrameType.PING:
            need(4)
            return Ping(struct.unpack_from(">I", payload)[0])
        if kind == FrameType.GOAWAY:
            need(4)
            last = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            status = struct.unpack_from(">I", payload, 4)[0] if len(payload) >= 8 else 0
            return GoAway(last, status)
        if kind == FrameType.WINDOW_UPDATE:
            need(8)
            sid, delta = struct.unpack_from(">II", payload)
            return WindowUpdate(sid & 0x7FFFFFFF, delta & 0x7FFFFFFF)
        return None  # unknown control frames are ignored, as the spec asks
