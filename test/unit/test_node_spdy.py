"""SPDY/3.1 framing, the SPDY server session, the exec protocol's pure parts and WebSocket framing
(hack/kubeplane/node: spdy.py, spdysession.py, remotecommand.py, wsstream.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import zlib

import pytest
from kubeplane.node import remotecommand, spdy, wsstream
from kubeplane.node.podexec import TerminalSize, exit_code
from kubeplane.node.spdysession import SpdySession

# Frames written by moby/spdystream v0.5.1 (the Go library behind kubectl, the API server and the
# kubelet): SYN_STREAM {streamType: data, port: 8080, requestID: 0}, an empty SYN_REPLY, DATA "hello",
# DATA FIN, PING 1, RST_STREAM 3 CANCEL, WINDOW_UPDATE 1 +1024, GOAWAY 1.
GO_FRAMES = bytes.fromhex(
    "800300010000003b0000000100000000000078f9e3c6a7c202253a703a2b294a4dcc452a4a1221a5721138035818581830"
    "303070164162311394ba190d00000000ffff800300020000000e000000016260606000000000ffff000000010000000568"
    "656c6c6f0000000101000000800300060000000400000001800300030000000800000003000000058003000900000008"
    "000000010000040080030007000000080000000100000000"
)

ALL_FRAMES: list[spdy.Frame] = [
    spdy.SynStream(1, {"streamtype": ["error"], "port": ["8786"]}, priority=3, flags=spdy.FLAG_FIN),
    spdy.SynReply(1, {"x-stream-protocol-version": ["v4.channel.k8s.io"]}),
    spdy.DataFrame(1, b"payload" * 1000),
    spdy.DataFrame(1, b"", spdy.FLAG_FIN),
    spdy.RstStream(3, spdy.RstStatus.CANCEL),
    spdy.Settings(((0, 4, 100), (1, 7, 65536))),
    spdy.Ping(7),
    spdy.GoAway(5, 0),
    spdy.HeadersFrame(5, {"a": ["1", "2"]}, spdy.FLAG_FIN),
    spdy.WindowUpdate(1, 4096),
]


def test_dictionary_is_the_spdy3_one() -> None:
    # zlib names a preset dictionary by its Adler-32; peers refuse blocks made with any other.
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 3821447106


def test_decodes_frames_written_by_go_spdystream() -> None:
    frames = spdy.FrameDecoder(spdy.HeaderCodec()).feed(GO_FRAMES)
    assert frames == [
        spdy.SynStream(1, {"streamtype": ["data"], "port": ["8080"], "requestid": ["0"]}),
        spdy.SynReply(1, {}),
        spdy.DataFrame(1, b"hello"),
        spdy.DataFrame(1, b"", spdy.FLAG_FIN),
        spdy.Ping(1),
        spdy.RstStream(3, spdy.RstStatus.CANCEL),
        spdy.WindowUpdate(1, 1024),
        spdy.GoAway(1, 0),
    ]
    assert spdy.first(frames[0].headers, "streamType") == "data"  # type: ignore[union-attr]


def test_encode_and_decode_are_inverse_for_every_frame_type() -> None:
    sender, receiver = spdy.HeaderCodec(), spdy.HeaderCodec()
    wire = b"".join(spdy.encode(f, sender) for f in ALL_FRAMES)
    assert spdy.FrameDecoder(receiver).feed(wire) == ALL_FRAMES


def test_decoder_waits_for_whole_frames() -> None:
    sender = spdy.HeaderCodec()
    wire = b"".join(spdy.encode(f, sender) for f in ALL_FRAMES)
    decoder = spdy.FrameDecoder(spdy.HeaderCodec())
    got: list[spdy.Frame] = []
    for i in range(0, len(wire), 7):  # odd-sized pieces split every frame somewhere
        got += decoder.feed(wire[i : i + 7])
    assert got == ALL_FRAMES


def test_header_blocks_share_one_compression_context() -> None:
    codec = spdy.HeaderCodec()
    headers = {"streamtype": ["stdout"], "x-custom-header-with-a-long-name": ["some long value " * 4]}
    first, second = codec.compress(headers), codec.compress(headers)
    assert len(second) < len(first)  # the second block refers back into the first
    receiver = spdy.HeaderCodec()
    assert receiver.decompress(first) == headers and receiver.decompress(second) == headers


def test_protocol_errors() -> None:
    with pytest.raises(spdy.ProtocolError, match="version"):
        spdy.FrameDecoder(spdy.HeaderCodec()).feed(bytes.fromhex("80020006000000040000000f"))
    with pytest.raises(spdy.ProtocolError, match="stream 0"):
        spdy.FrameDecoder(spdy.HeaderCodec()).feed(bytes.fromhex("0000000000000001ff"))
    with pytest.raises(spdy.ProtocolError, match="decompress"):
        spdy.HeaderCodec().decompress(b"not zlib at all")
    # Unknown control frames are skipped, as the spec asks.
    unknown = bytes.fromhex("8003000a00000002abcd")
    ping = spdy.encode(spdy.Ping(3), spdy.HeaderCodec())
    assert spdy.FrameDecoder(spdy.HeaderCodec()).feed(unknown + ping) == [spdy.Ping(3)]


async def _session_exchange() -> tuple[list[bytes], list[spdy.Frame]]:
    server_sock, client_sock = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=server_sock)
    session = SpdySession(reader, writer, accept=lambda s: None if s.header("port") else "no port")
    serving = asyncio.create_task(session.serve())
    client = spdy.HeaderCodec()
    loop = asyncio.get_running_loop()
    wire = b"".join(
        spdy.encode(f, client)
        for f in [
            spdy.SynStream(1, {"port": ["80"]}),
            spdy.SynStream(3, {}),  # rejected: no port
            spdy.DataFrame(1, b"abc"),
            spdy.Ping(9),
            spdy.DataFrame(1, b"def", spdy.FLAG_FIN),
        ]
    )
    await loop.sock_sendall(client_sock, wire)
    stream = await session.next_stream()
    assert stream is not None and stream.id == 1
    reads = [await stream.read(), await stream.read(), await stream.read()]
    await stream.write(b"x" * 70_000)  # longer than one data frame
    stream.close()
    assert stream.id not in session.streams  # closed both ways: the session forgets it
    await session.close()
    serving.cancel()
    received = b""
    client_sock.setblocking(False)
    while chunk := await loop.sock_recv(client_sock, 65536):
        received += chunk
    client_sock.close()
    return reads, spdy.FrameDecoder(client).feed(received)


def test_session_replies_reads_echoes_pings_and_ends_streams() -> None:
    reads, frames = asyncio.run(_session_exchange())
    assert reads == [b"abc", b"def", b""]
    assert frames[0] == spdy.SynReply(1, {})
    assert spdy.RstStream(3, spdy.RstStatus.REFUSED_STREAM) in frames
    assert spdy.Ping(9) in frames
    data = [f for f in frames if isinstance(f, spdy.DataFrame)]
    assert b"".join(f.data for f in data) == b"x" * 70_000 and len(data) >= 3
    assert data[-1].fin and not any(f.fin for f in data[:-1])
    assert isinstance(frames[-1], spdy.GoAway)


def test_stream_options_from_query() -> None:
    opts = remotecommand.StreamOptions.from_query(
        {"input": ["1"], "output": ["1"], "error": ["1"], "tty": ["1"]}
    )
    assert opts == remotecommand.StreamOptions(
        stdin=True, stdout=True, stderr=False, tty=True
    )  # a tty has no stderr
    assert remotecommand.expected_streams(opts, remotecommand.V4) == 4  # error, stdin, stdout, resize
    assert remotecommand.expected_streams(opts, remotecommand.V2) == 3  # no resize before v3
    with pytest.raises(ValueError, match="at least 1"):
        remotecommand.StreamOptions.from_query({"tty": ["1"]})


def test_protocol_negotiation_takes_the_clients_first_supported() -> None:
    assert (
        remotecommand.negotiate(["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"])
        == remotecommand.V4
    )
    assert remotecommand.negotiate(["v9.channel.k8s.io"]) == ""


def test_exit_code_status_carries_the_code() -> None:
    status = remotecommand.exit_code_status(3)
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert remotecommand.success_status()["status"] == "Success"
    assert exit_code(-9) == 137 and exit_code(2) == 2


def test_resize_events_parse_across_chunks() -> None:
    sizes, rest = remotecommand.parse_resizes('{"Width":80,"Height":24}\n{"Width":1')
    assert sizes == [TerminalSize(80, 24)] and rest == '{"Width":1'
    sizes, rest = remotecommand.parse_resizes(rest + '20,"Height":40}')
    assert sizes == [TerminalSize(120, 40)] and rest == ""


def test_websocket_accept_key_is_rfc6455s() -> None:
    assert wsstream.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_websocket_frames_round_trip_masked_and_unmasked(size: int) -> None:
    payload = os.urandom(size)

    async def read(wire: bytes) -> tuple[bool, int, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(wire)
        reader.feed_eof()
        return await wsstream.read_frame(reader)

    assert asyncio.run(read(wsstream.encode_frame(wsstream.OP_BINARY, payload))) == (True, 2, payload)
    masked = wsstream.encode_frame(wsstream.OP_BINARY, payload, mask=b"\x01\x02\x03\x04")
    assert payload == b"" or payload not in masked
    assert asyncio.run(read(masked)) == (True, 2, payload)


def test_work_is_cancelled_when_the_client_leaves_first() -> None:
    async def scenario() -> tuple[object, object, bool]:
        gone = asyncio.Event()
        cancelled = False

        async def slow() -> str:
            nonlocal cancelled
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled = True
                raise
            return "late"

        async def quick() -> str:
            return "done"

        finished = await remotecommand.until_client_leaves(quick(), gone.wait())
        asyncio.get_running_loop().call_later(0.01, gone.set)
        abandoned = await remotecommand.until_client_leaves(slow(), gone.wait())
        return finished, abandoned, cancelled

    assert asyncio.run(scenario()) == ("done", None, True)
