"""The pure half of api/kubecluster/portforward.py: the WebSocket URL, the channel codec (port headers
stripped, split frames), which scheduler pod is chosen and how a Service targetPort maps to a pod port."""

from __future__ import annotations

from typing import Any

import pytest

from dask_operator.api.kubecluster.portforward import (
    DATA_CHANNEL,
    ERROR_CHANNEL,
    ChannelReader,
    data_frame,
    pick_scheduler_pod,
    pod_port,
    portforward_url,
)


def test_url_switches_the_scheme_and_quotes_names() -> None:
    url = portforward_url("https://127.0.0.1:6443/", "ns", "demo-scheduler", 8786)
    assert url == "wss://127.0.0.1:6443/api/v1/namespaces/ns/pods/demo-scheduler/portforward?ports=8786"
    assert portforward_url("http://h:8080", "a", "b", 1).startswith("ws://h:8080/")


def test_reader_drops_each_channels_port_header_once_even_when_split() -> None:
    reader = ChannelReader()
    assert reader.feed(bytes([DATA_CHANNEL, 0x52])) == (DATA_CHANNEL, b"")  # half of port 8786 (0x2252)
    assert reader.feed(bytes([DATA_CHANNEL, 0x22]) + b"hello") == (DATA_CHANNEL, b"hello")
    assert reader.feed(bytes([DATA_CHANNEL]) + b"\x52\x22") == (DATA_CHANNEL, b"\x52\x22")  # data, not header
    assert reader.feed(bytes([ERROR_CHANNEL, 0x52, 0x22])) == (ERROR_CHANNEL, b"")
    assert reader.feed(bytes([ERROR_CHANNEL]) + b"connection refused") == (
        ERROR_CHANNEL,
        b"connection refused",
    )
    assert reader.feed(b"") == (-1, b"")
    assert reader.feed(bytes([7, 1, 2])) == (7, b"")


def test_data_frame_prefixes_the_data_channel() -> None:
    assert data_frame(b"abc") == b"\x00abc"


def pod(name: str, phase: str = "Running", ready: bool = True, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    return {"metadata": meta, "status": {"phase": phase, "conditions": [condition]}}


def test_pick_prefers_a_ready_running_pod_and_skips_deleting_ones() -> None:
    assert pick_scheduler_pod([]) is None
    assert pick_scheduler_pod([pod("a", phase="Pending")]) is None
    assert pick_scheduler_pod([pod("a", deleting=True), pod("b", ready=False)]) == "b"
    assert pick_scheduler_pod([pod("a", ready=False), pod("b")]) == "b"


def test_pod_port_resolves_named_target_ports() -> None:
    scheduler = {
        "metadata": {"name": "s"},
        "spec": {"containers": [{"ports": [{"name": "tcp-comm", "containerPort": 8786}]}]},
    }
    assert pod_port(scheduler, "tcp-comm") == 8786
    assert pod_port(scheduler, 9000) == 9000
    assert pod_port(scheduler, "8787") == 8787
    with pytest.raises(ValueError, match="http-dashboard"):
        pod_port(scheduler, "http-dashboard")


# -- the relay against a local WebSocket peer speaking the kubelet's channel protocol ------------------------


def test_a_local_close_reaches_the_pod_and_a_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Regression: a local connection closed by the user left the WebSocket (and the pod's connection) open
    until the pod closed its end; a failing forward was logged at debug level only."""
    import asyncio

    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets
    from tornado.web import Application
    from tornado.websocket import WebSocketHandler, websocket_connect

    from dask_operator.api.kubecluster.portforward import PortForward, PortForwardError

    closed = asyncio.Event()
    received: list[bytes] = []

    class Kubelet(WebSocketHandler):
        def select_subprotocol(self, subprotocols: list[str]) -> str | None:
            return subprotocols[0] if subprotocols else None

        async def open(self, *args: str, **kwargs: str) -> None:
            for channel in (DATA_CHANNEL, ERROR_CHANNEL):  # each channel starts with the port number
                await self.write_message(bytes([channel, 0x52, 0x22]), binary=True)

        def on_message(self, message: str | bytes) -> None:
            received.append(message if isinstance(message, bytes) else message.encode())

        def on_close(self) -> None:
            closed.set()

    class LocalTarget:
        def __init__(self, url: str, fail: bool = False) -> None:
            self.url, self.fail = url, fail

        def describe(self) -> str:
            return "pod ns/demo-scheduler"

        def forget(self, pod: str) -> None:
            pass

        async def open(self, port: int) -> tuple[str, Any]:
            if self.fail:
                raise PortForwardError('pods "demo-scheduler" is forbidden')
            return "demo-scheduler", await websocket_connect(self.url, subprotocols=["v4.channel.k8s.io"])

    async def scenario() -> None:
        server = HTTPServer(Application([("/", Kubelet)]))
        sockets = bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        url = f"ws://127.0.0.1:{sockets[0].getsockname()[1]}/"
        forward = PortForward(LocalTarget(url), 8786)  # type: ignore[arg-type]
        port = await forward.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        await writer.drain()
        writer.close()  # the user's side goes away
        await asyncio.wait_for(closed.wait(), 10)  # ... and so does the pod's
        assert b"".join(m[1:] for m in received) == b"hello"
        await forward.close()

        failing = PortForward(LocalTarget(url, fail=True), 8786)  # type: ignore[arg-type]
        port = await failing.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # refused: the local connection ends
        writer.close()
        await failing.close()
        server.stop()

    with caplog.at_level("WARNING", logger="dask_operator.api.kubecluster.portforward"):
        asyncio.run(scenario())
    assert any("forbidden" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
