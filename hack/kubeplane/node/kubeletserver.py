"""The kubelet's HTTPS port: the endpoints the API server proxies `logs`, `exec`, `attach` and `port-forward` to.

Invariant: only clients with a certificate from the cluster CA are served (the API server's
kubelet-client certificate). All network I/O runs on one asyncio loop thread (TLS state is never
shared between threads); blocking work (reading log files) runs on worker threads. Streaming requests
are upgraded to SPDY/3.1 after protocol negotiation (`X-Stream-Protocol-Version`); a request that
cannot be served is answered with a plain HTTP error before any upgrade. Every exec, attach and
forward ends with its connection, and `stop()` ends them all. Held by test/e2e/test_kubelet_streaming.py
and test/e2e/test_process_node.py (logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from . import logfiles, podexec, portforward, remotecommand, wsstream
from .logserver import LogRequest, LogUnavailable, log_chunks, log_file
from .podexec import ContainerProcess, TerminalSize
from .spdysession import SpdySession

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class RunningContainer:
    """What exec and attach need of a running container."""

    process: ContainerProcess
    log_path: Path | None = None
    stdin: IO[bytes] | None = None  # the container's stdin pipe, when its spec has `stdin: true`
    stdin_once: bool = False


class PodLookup(Protocol):
    def pod_dir(self, namespace: str, pod: str) -> Path | None: ...
    def pod_uid(self, namespace: str, pod: str) -> str | None: ...
    def container(self, namespace: str, pod: str, container: str) -> RunningContainer | None: ...
    def netns_path(self, namespace: str, pod: str) -> str | None: ...


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, list[str]] = field(default_factory=dict)

    def header(self, name: str) -> str:
        return ", ".join(self.headers.get(name.lower(), []))

    def header_list(self, name: str) -> list[str]:
        out = []
        for value in self.headers.get(name.lower(), []):
            out += [v.strip() for v in value.split(",") if v.strip()]
        return out

    @property
    def wants_spdy(self) -> bool:
        return "upgrade" in self.header("connection").lower() and "spdy/3.1" in self.header("upgrade").lower()

    @property
    def wants_websocket(self) -> bool:
        return (
            "upgrade" in self.header("connection").lower() and "websocket" in self.header("upgrade").lower()
        )


def parse_request(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    url = urlsplit(target)
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Request(method, url.path, parse_qs(url.query, keep_blank_values=True), headers)


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


REASONS = {
    101: "Switching Protocols",
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}


def response_head(status: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class KubeletServer:
    def __init__(
        self,
        host: str,
        port: int,
        cert: str,
        key: str,
        client_ca: str,
        pods: PodLookup,
        is_open: Callable[[Path], bool],
    ) -> None:
        self.host, self.port = host, port
        self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl.load_cert_chain(cert, key)
        self.ssl.load_verify_locations(client_ca)
        self.ssl.verify_mode = ssl.CERT_REQUIRED
        self.pods = pods
        self.is_open = is_open
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kubelet server", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # --- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._listen(), self.loop)
        fut.result(30)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, ssl=self.ssl, limit=MAX_HEAD, ssl_handshake_timeout=30
        )

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                await asyncio.wait(list(self._connections), timeout=5)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    # --- requests -----------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            request = parse_request(head)
            await self._route(request, reader, writer)
        except HttpError as e:
            with contextlib.suppress(Exception):
                await self._reply(writer, e.status, str(e), e.headers)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("kubelet server: request failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)

    async def _reply(
        self, writer: asyncio.StreamWriter, status: int, text: str, headers: Mapping[str, str] | None = None
    ) -> None:
        body = text.encode()
        head = {
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Length": str(len(body)),
            "Connection": "close",
            **(headers or {}),
        }
        writer.write(response_head(status, head) + body)
        await writer.drain()

    async def _route(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parts = [unquote(p) for p in req.path.split("/") if p]
        if parts == ["healthz"]:
            await self._reply(writer, 200, "ok")
            return
        if not parts:
            raise HttpError(404, f"not found: {req.path}")
        kind = parts[0]
        if kind == "containerLogs" and len(parts) == 4:
            await self._logs(req, parts[1], parts[2], parts[3], reader, writer)
        elif kind in ("exec", "attach") and len(parts) in (4, 5):
            # /exec/{ns}/{pod}/{container} or /exec/{ns}/{pod}/{uid}/{container}
            await self._command(req, kind, parts[1], parts[2], parts[-1], reader, writer)
        elif kind == "portForward" and len(parts) in (3, 4):
            await self._port_forward(req, parts[1], parts[2], reader, writer)
        else:
            raise HttpError(404, f"not found: {req.path}")

    # --- logs ---------------------------------------------------------------------------------------

    async def _logs(
        self,
        req: Request,
        ns: str,
        pod: str,
        container: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        query = {k: v[-1] for k, v in req.query.items()}
        pod_dir = self.pods.pod_dir(ns, pod)
        if pod_dir is None:
            raise HttpError(404, f'pod "{pod}" in namespace "{ns}" not found on this node')
        request = LogRequest.from_query(query)
        try:
            path = log_file(request, pod_dir, pod, container)
        except LogUnavailable as e:
            raise HttpError(e.status, str(e)) from e
        writer.write(response_head(200, {"Content-Type": "text/plain", "Connection": "close"}))
        await writer.drain()
        loop = asyncio.get_running_loop()
        gone = threading.Event()

        def produce() -> None:
            # Runs on a worker thread: log files are read with blocking calls.
            async def send(data: bytes) -> None:
                writer.write(data)
                await writer.drain()

            try:
                for data in log_chunks(request, path, self.is_open, lambda: not gone.is_set()):
                    asyncio.run_coroutine_threadsafe(send(data), loop).result()
            except Exception:  # noqa: BLE001 - the client went away (or the loop stopped): stop reading
                return

        async def watch_client() -> None:
            # A follow may wait long for the next line: notice a client that left in the meantime.
            with contextlib.suppress(Exception):
                while await reader.read(4096):
                    pass
            gone.set()

        watcher = asyncio.create_task(watch_client())
        try:
            await asyncio.to_thread(produce)
        finally:
            gone.set()
            watcher.cancel()

    # --- exec and attach ------------------------------------------------------------------------------

    def _running(self, ns: str, pod: str, container: str) -> RunningContainer:
        if self.pods.pod_dir(ns, pod) is None:
            raise HttpError(404, f'pod "{pod}" in namespace "{ns}" not found on this node')
        running = self.pods.container(ns, pod, container)
        if running is None:
            raise HttpError(
                400, f'container "{container}" in pod "{pod}" is not running (no such container, or it ended)'
            )
        return running

    async def _command(
        self,
        req: Request,
        kind: str,
        ns: str,
        pod: str,
        container: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            opts = remotecommand.StreamOptions.from_query(req.query)
        except ValueError as e:
            raise HttpError(400, str(e)) from e
        command = req.query.get("command", [])
        if kind == "exec" and not command:
            raise HttpError(400, "you must specify a command")
        running = self._running(ns, pod, container)
        if req.wants_websocket:
            await wsstream.serve_command(
                req, reader, writer, opts, self._runner(kind, running, command, opts)
            )
            return
        if not req.wants_spdy:
            raise HttpError(400, "unable to upgrade: missing upgrade headers in request")
        protocol = self._handshake(req, remotecommand.PROTOCOLS, default=remotecommand.V1)
        session = await self._upgrade(writer, reader, protocol)
        serving = asyncio.create_task(session.serve())
        try:
            try:
                streams = await remotecommand.collect_streams(session, opts, protocol)
            except (TimeoutError, ConnectionError) as e:
                log.info("%s %s/%s: %s", kind, ns, pod, e or "timed out waiting for client streams")
                return
            await remotecommand.until_client_leaves(
                self._run_command(kind, running, command, opts, streams), session.done.wait()
            )
        finally:
            await session.close()
            serving.cancel()

    def _runner(
        self, kind: str, running: RunningContainer, command: list[str], opts: remotecommand.StreamOptions
    ) -> remotecommand.CommandRunner:
        async def run(io: remotecommand.CommandIO) -> dict[str, object]:
            return await self._execute(kind, running, command, opts, io)

        return run

    async def _run_command(
        self,
        kind: str,
        running: RunningContainer,
        command: list[str],
        opts: remotecommand.StreamOptions,
        streams: remotecommand.CommandStreams,
    ) -> None:
        resizes: asyncio.Queue[TerminalSize | None] | None = None
        resizer = None
        if streams.resize is not None:
            resizes = asyncio.Queue()
            resizer = asyncio.create_task(remotecommand.forward_resizes(streams.resize, resizes))
        io = remotecommand.CommandIO(
            stdin=streams.stdin.read if streams.stdin else None,
            stdout=streams.stdout.write if streams.stdout else None,
            stderr=streams.stderr.write if streams.stderr else None,
            resizes=resizes,
        )
        try:
            status = await self._execute(kind, running, command, opts, io)
            await remotecommand.write_status(streams, status)
        finally:
            if resizer is not None:
                resizer.cancel()

    async def _execute(
        self,
        kind: str,
        running: RunningContainer,
        command: list[str],
        opts: remotecommand.StreamOptions,
        io: remotecommand.CommandIO,
    ) -> dict[str, object]:
        try:
            if kind == "attach":
                await attach(running, io, self.is_open)
                return remotecommand.success_status()
            if opts.tty:
                code = await podexec.run_tty(running.process, command, io.stdin, io.stdout, io.resizes)
            else:
                code = await podexec.run_piped(running.process, command, io.stdin, io.stdout, io.stderr)
        except podexec.ExecError as e:
            return remotecommand.internal_error_status(f"error executing command in container: {e}")
        except (ConnectionError, OSError) as e:
            log.info("%s: connection ended: %s", kind, e)
            return remotecommand.internal_error_status(f"error executing command in container: {e}")
        return remotecommand.success_status() if code == 0 else remotecommand.exit_code_status(code)

    # --- port forward ---------------------------------------------------------------------------------

    async def _port_forward(
        self, req: Request, ns: str, pod: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.pods.pod_dir(ns, pod) is None:
            raise HttpError(404, f'pod "{pod}" in namespace "{ns}" not found on this node')
        netns = self.pods.netns_path(ns, pod)
        if netns is None:
            raise HttpError(400, f'pod "{pod}" in namespace "{ns}" has no network namespace (not running)')
        uid = self.pods.pod_uid(ns, pod) or ""
        connect = portforward.netns_connector(netns, netns.rsplit("/", 1)[-1])
        if req.wants_websocket:
            await wsstream.serve_port_forward(req, reader, writer, connect, pod, uid)
            return
        if not req.wants_spdy:
            raise HttpError(400, "unable to upgrade: missing upgrade headers in request")
        protocol = self._handshake(req, (portforward.PROTOCOL,), default=None)
        session = await self._upgrade(writer, reader, protocol, portforward.accept_stream)
        serving = asyncio.create_task(session.serve())
        try:
            await portforward.serve_spdy(session, connect, pod, uid)
        finally:
            await session.close()
            serving.cancel()

    # --- upgrades ---------------------------------------------------------------------------------------

    def _handshake(self, req: Request, server: tuple[str, ...], default: str | None) -> str:
        client = req.header_list("X-Stream-Protocol-Version")
        if not client:
            if default is not None:
                return default
            raise HttpError(
                400, "unable to upgrade: header X-Stream-Protocol-Version does not exist in request"
            )
        chosen = remotecommand.negotiate(client, server)
        if not chosen:
            raise HttpError(
                403,
                f"unable to upgrade: unable to negotiate protocol: client supports {client}, server accepts {list(server)}",
                {"X-Accepted-Stream-Protocol-Versions": ", ".join(server)},
            )
        return chosen

    async def _upgrade(
        self,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        protocol: str,
        accept: Callable[..., str | None] | None = None,
    ) -> SpdySession:
        headers = {"Connection": "Upgrade", "Upgrade": "SPDY/3.1", "X-Stream-Protocol-Version": protocol}
        writer.write(response_head(101, headers))
        await writer.drain()
        if accept is None:
            return SpdySession(reader, writer)
        return SpdySession(reader, writer, accept)


async def attach(
    running: RunningContainer, io: remotecommand.CommandIO, is_open: Callable[[Path], bool]
) -> None:
    """Streams the container's new output and feeds its stdin (when it has one) until the output ends."""
    path = running.log_path
    loop = asyncio.get_running_loop()
    output: asyncio.Queue[bytes] = asyncio.Queue()
    gone = threading.Event()

    def follow() -> None:
        if path is None:
            loop.call_soon_threadsafe(output.put_nowait, b"")
            return
        try:
            offset = path.stat().st_size
        except OSError:
            offset = 0
        try:
            for line in logfiles.follow(path, offset, lambda: is_open(path) and not gone.is_set(), 0.1):
                if gone.is_set():
                    break
                loop.call_soon_threadsafe(output.put_nowait, line.text)
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(output.put_nowait, b"")

    async def feed() -> None:
        stdin = running.stdin
        assert io.stdin is not None
        while chunk := await io.stdin():
            if stdin is None:
                continue  # the container has no stdin: what is typed goes nowhere, as with the kubelet
            await asyncio.to_thread(_write_all, stdin, chunk)
        if stdin is not None and running.stdin_once:
            with contextlib.suppress(OSError):
                stdin.close()

    follower = loop.run_in_executor(None, follow)
    feeder = asyncio.create_task(feed()) if io.stdin is not None else None
    try:
        while data := await output.get():
            if io.stdout is not None:
                await io.stdout(data)
    finally:
        gone.set()
        if feeder is not None:
            feeder.cancel()
            if running.stdin is not None and running.stdin_once:  # also when the client just vanished
                with contextlib.suppress(OSError):
                    running.stdin.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(follower, 5)


def _write_all(stream: IO[bytes], data: bytes) -> None:
    try:
        stream.write(data)
        stream.flush()
    except (OSError, ValueError):
        pass
