"""Port-forward to the scheduler pod through the API server, in process: `pods/portforward` over WebSocket.

Invariant: every local connection accepted on 127.0.0.1 is one WebSocket (subprotocol `v4.channel.k8s.io`)
to the pod the target names *at that moment*, so a replaced scheduler pod is reached by the next connection
without restarting the forward; a connection that cannot be opened forgets the pod and tries once more with a
freshly looked-up one. Bytes are relayed unchanged in both directions; the channel's 2-byte port header is
stripped. The frame codec and pod choice are pure (test/unit/test_kubecluster_portforward.py); the relay is
held end to end by test/e2e/test_kubecluster.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from dask_operator.api.kubecluster.kinds import POD
from dask_operator.runtime.client import Client as RestClient

logger = logging.getLogger(__name__)

SUBPROTOCOL = "v4.channel.k8s.io"
DATA_CHANNEL = 0
ERROR_CHANNEL = 1
PORT_HEADER_BYTES = 2
CONNECT_TIMEOUT = 15.0
CHUNK = 64 * 1024


class PortForwardError(ConnectionError):
    """The API server or the kubelet refused the forward (no such pod, port closed in the pod, forbidden)."""


# -- pure pieces --------------------------------------------------------------------------------------------


def portforward_url(base_url: str, namespace: str, pod: str, port: int) -> str:
    """The WebSocket URL of `pods/<pod>/portforward` for one port on the API server at `base_url`."""
    scheme, _, rest = base_url.rstrip("/").partition("://")
    ws_scheme = {"https": "wss", "http": "ws"}.get(scheme, scheme)
    return f"{ws_scheme}://{rest}/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/portforward?ports={port}"


def data_frame(payload: bytes) -> bytes:
    """A frame carrying `payload` to the pod's port (the first byte names the channel)."""
    return bytes([DATA_CHANNEL]) + payload


class ChannelReader:
    """Splits frames from the server into data and error bytes, dropping each channel's leading port number."""

    def __init__(self) -> None:
        self._header_left = {DATA_CHANNEL: PORT_HEADER_BYTES, ERROR_CHANNEL: PORT_HEADER_BYTES}

    def feed(self, frame: bytes) -> tuple[int, bytes]:
        """`(channel, payload)`; an unknown channel or an empty frame gives `(channel, b"")`."""
        if not frame:
            return -1, b""
        channel, payload = frame[0], frame[1:]
        left = self._header_left.get(channel)
        if left is None:
            return channel, b""
        if left:
            skipped = min(left, len(payload))
            self._header_left[channel] = left - skipped
            payload = payload[skipped:]
        return channel, payload


def pick_scheduler_pod(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The name of the pod to forward to: a Running, not deleting pod, a Ready one first; else None."""

    def ready(pod: Mapping[str, Any]) -> bool:
        conditions = (pod.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    running = [
        pod
        for pod in pods
        if (pod.get("status") or {}).get("phase") == "Running"
        and not (pod.get("metadata") or {}).get("deletionTimestamp")
    ]
    running.sort(key=lambda pod: (not ready(pod), str((pod.get("metadata") or {}).get("name"))))
    return str(running[0]["metadata"]["name"]) if running else None


# -- the API server end -------------------------------------------------------------------------------------


class SchedulerPodTarget:
    """Which pod to forward to (looked up by label, remembered until a forward to it fails) and how to open it."""

    def __init__(self, api: RestClient, namespace: str, label_selector: str) -> None:
        self.api = api
        self.namespace = namespace
        self.label_selector = label_selector
        self._pod: str | None = None

    async def pod(self) -> str:
        if self._pod is None:
            pods, _ = await asyncio.to_thread(
                self.api.list, POD, self.namespace, label_selector=self.label_selector
            )
            name = pick_scheduler_pod(pods)
            if name is None:
                raise PortForwardError(
                    f"no running scheduler pod in namespace {self.namespace} ({self.label_selector})"
                )
            self._pod = name
        return self._pod

    def describe(self) -> str:
        return (
            f"pod {self.namespace}/{self._pod}" if self._pod else f"{self.namespace} ({self.label_selector})"
        )

    def forget(self, pod: str) -> None:
        if self._pod == pod:
            self._pod = None

    async def open(self, port: int) -> tuple[str, WebSocketClientConnection]:
        pod = await self.pod()
        creds = self.api.credentials
        request = HTTPRequest(
            portforward_url(self.api.base_url, self.namespace, pod, port),
            headers={**creds.headers(), "User-Agent": self.api.user_agent},
            ssl_options=creds.ssl_context(),
            connect_timeout=CONNECT_TIMEOUT,
            request_timeout=CONNECT_TIMEOUT,
        )
        try:
            socket = await websocket_connect(request, subprotocols=[SUBPROTOCOL])
        except Exception as error:
            self.forget(pod)
            raise PortForwardError(
                f"cannot forward to pod {self.namespace}/{pod} port {port}: {error}"
            ) from error
        return pod, socket


class PortForward:
    """A local listener whose connections are relayed to `remote_port` of the target's current pod."""

    def __init__(self, target: SchedulerPodTarget, remote_port: int, local_port: int = 0) -> None:
        self.target = target
        self.remote_port = remote_port
        self.local_port = local_port
        self._server: asyncio.Server | None = None
        self._relays: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on 127.0.0.1 (`local_port`, or a free one when 0); returns the port."""
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", self.local_port)
        self.local_port = int(self._server.sockets[0].getsockname()[1])
        return self.local_port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for task in list(self._relays):
            task.cancel()
        for task in list(self._relays):
            with contextlib.suppress(BaseException):
                await task

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._relays.add(task)
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception as error:  # noqa: BLE001 - one failed connection must not end the listener
            # Where a user sees it (KubeCluster's and kubectl dask's log), not only at debug level.
            logger.warning(
                "port-forward to %s port %d failed: %s", self.target.describe(), self.remote_port, error
            )
        finally:
            writer.close()
            if task is not None:
                self._relays.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            pod, socket = await self.target.open(self.remote_port)
        except PortForwardError:
            pod, socket = await self.target.open(
                self.remote_port
            )  # a replaced pod: once more, looked up anew
        channels = ChannelReader()

        async def to_pod() -> None:
            while data := await reader.read(CHUNK):
                await socket.write_message(data_frame(data), binary=True)

        async def from_pod() -> None:
            while (message := await socket.read_message()) is not None:
                frame = message if isinstance(message, bytes) else message.encode()
                channel, payload = channels.feed(frame)
                if channel == DATA_CHANNEL and payload:
                    writer.write(payload)
                    await writer.drain()
                elif channel == ERROR_CHANNEL and payload:
                    self.target.forget(pod)
                    raise PortForwardError(payload.decode(errors="replace"))

        # Either side ending ends the connection: a local close must reach the pod (the WebSocket's close
        # is the kubelet's signal to close its end), or the pod keeps a half-dead connection.
        upstream, downstream = asyncio.ensure_future(to_pod()), asyncio.ensure_future(from_pod())
        try:
            done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise what ended it
        finally:
            for task in (upstream, downstream):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            socket.close()


def pod_port(pod: Mapping[str, Any], target_port: int | str) -> int:
    """The pod's port a Service `targetPort` names: the number itself, or the container port of that name."""
    if isinstance(target_port, int) or str(target_port).isdigit():
        return int(target_port)
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target_port:
                return int(port["containerPort"])
    name = (pod.get("metadata") or {}).get("name")
    raise ValueError(f"pod {name} has no container port named {target_port!r}")
