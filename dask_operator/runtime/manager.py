"""The manager: one shared cache, the controllers, leader election, probes, metrics, and signal handling.

Invariant: /readyz turns 200 only after the cache has synced; controllers run only while this process holds
the lease (when leader election is on); the first SIGTERM stops new reconciles, lets in-flight ones finish
(bounded by graceful_shutdown_timeout), stops informers, releases the lease and closes the HTTP servers last,
then run() returns 0; a second SIGTERM exits 1 at once; a lost lease exits 1 without draining. While it
runs, the C heap keeps at most two malloc arenas and gives its free pages back every few seconds (runtime/heap).
Held by test/integration/test_runtime_manager.py and test/unit/test_runtime_heap.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

import structlog

from dask_operator.runtime import heap, metrics
from dask_operator.runtime.applier import Applier
from dask_operator.runtime.cache import DEFAULT_SYNC_TIMEOUT, Cache
from dask_operator.runtime.client import Client
from dask_operator.runtime.controller import Controller
from dask_operator.runtime.events import EventRecorder
from dask_operator.runtime.health import Checks
from dask_operator.runtime.kinds import Kind
from dask_operator.runtime.leaderelection import LeaderElectionConfig, LeaderElector, exit_now
from dask_operator.runtime.reflector import DEFAULT_MIN_WATCH_TIMEOUT, DEFAULT_READ_TIMEOUT_MARGIN
from dask_operator.runtime.serving import EndpointServer, Route

log = structlog.get_logger("dask_operator.runtime.manager")

Address = tuple[str, int]


class Manager:
    def __init__(
        self,
        client: Client,
        namespace: str | None = None,
        leader_election: LeaderElectionConfig | None = None,
        metrics_address: Address | None = ("0.0.0.0", 8080),
        health_address: Address | None = ("0.0.0.0", 8081),
        *,
        graceful_shutdown_timeout: float = 30.0,
        cache_sync_timeout: float = DEFAULT_SYNC_TIMEOUT,
        event_component: str = "dask-operator",
        exit_on_lost_leadership: bool = True,
        min_watch_timeout: int = DEFAULT_MIN_WATCH_TIMEOUT,
        read_timeout_margin: float = DEFAULT_READ_TIMEOUT_MARGIN,
        label_selectors: Mapping[Kind, str] | None = None,
        heap_trim_interval: float | None = heap.DEFAULT_TRIM_INTERVAL,
    ) -> None:
        heap.limit_arenas()  # before the cache's and controllers' threads make arenas of their own
        self.client = client
        self.namespace = namespace
        self.leader_election = leader_election
        self.metrics_address = metrics_address
        self.health_address = health_address
        self.graceful_shutdown_timeout = graceful_shutdown_timeout
        self.cache_sync_timeout = cache_sync_timeout
        self.exit_on_lost_leadership = exit_on_lost_leadership
        self.cache = Cache(
            client,
            namespace,
            label_selectors=label_selectors,
            sync_timeout=cache_sync_timeout,
            min_watch_timeout=min_watch_timeout,
            read_timeout_margin=read_timeout_margin,
        )
        self.recorder = EventRecorder(client, event_component)
        self.applier = Applier(client, self.cache)
        self.healthz = Checks()
        self.readyz = Checks()
        self.controllers: list[Controller] = []
        self.elector: LeaderElector | None = None
        self._servers: list[EndpointServer] = []
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._controllers_started = threading.Event()
        self._lost_leadership = threading.Event()
        self._leader_stop = threading.Event()
        self._elector_thread: threading.Thread | None = None
        self._exit_code = 0
        self._running = False
        self._signals = 0
        self._trimmer = heap.Trimmer(heap_trim_interval) if heap_trim_interval else None
        self.readyz.add("informers", self._informers_synced)
        self.healthz.add("ping", lambda: None)

    # -- wiring -----------------------------------------------------------------------------------------

    def add_controller(self, controller: Controller) -> None:
        if any(existing.name == controller.name for existing in self.controllers):
            raise ValueError(f"a controller named {controller.name!r} already exists; names must be unique")
        for spec in controller.watches:
            self.cache.informer(spec.kind)
        controller.may_act = self._may_act
        self.controllers.append(controller)

    def _may_act(self) -> bool:
        """Without leader election always; with it, only while the lease is ours by our own clock."""
        if self.leader_election is None:
            return True
        return self.elector is not None and self.elector.is_leader() and not self._lost_leadership.is_set()

    def _informers_synced(self) -> str | None:
        return None if self._synced.is_set() else "informers have not synced yet"

    @property
    def ready(self) -> bool:
        return self._synced.is_set()

    @property
    def leading(self) -> bool:
        return self.elector.is_leader() if self.elector is not None else self._controllers_started.is_set()

    @property
    def health_port(self) -> int | None:
        return self._port_of(self.health_address)

    @property
    def metrics_port(self) -> int | None:
        return self._port_of(self.metrics_address)

    def _port_of(self, address: Address | None) -> int | None:
        if address is None:
            return None
        for server in self._servers:
            if server.address == address:
                return server.port
        return None

    # -- running ----------------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stop() or SIGTERM; 0 after a graceful stop, 1 on failure or a lost lease."""
        if self._running:
            raise RuntimeError("the manager is already running")
        self._running = True
        previous = self._install_signal_handlers()
        try:
            self._start_servers()
            if self._trimmer is not None:
                self._trimmer.start()
            self.cache.start()
            log.info("waiting for caches to sync")
            if not self.cache.wait_for_sync(self.cache_sync_timeout, self._stop):
                if not self._stop.is_set():
                    log.error("failed to wait for caches to sync")
                    self._exit_code = 1
                    self._stop.set()
            else:
                self._synced.set()
                log.info("caches synced")
                self._start_leader_work()
            self._stop.wait()
            self._shutdown()
            return self._exit_code
        finally:
            self._restore_signal_handlers(previous)

    def stop(self) -> None:
        """Begin a graceful shutdown (what the first SIGTERM does)."""
        self._stop.set()

    def _start_leader_work(self) -> None:
        if self.leader_election is None:
            threading.Thread(target=self._start_controllers, name="controllers", daemon=True).start()
            return
        self.elector = LeaderElector(
            self.client,
            self.leader_election,
            on_started_leading=self._start_controllers,
            on_stopped_leading=self._on_lost_leadership,
        )
        self.healthz.add("leader-election", self.elector.check)
        self.readyz.add("leader-election-access", self.elector.access_check)
        self._elector_thread = threading.Thread(
            target=self.elector.run, args=(self._leader_stop,), name="leader-election", daemon=True
        )
        self._elector_thread.start()

    def _start_controllers(self) -> None:
        try:
            for controller in self.controllers:
                if self._stop.is_set() or self._lost_leadership.is_set():
                    return
                controller.start(self._stop)
            self._controllers_started.set()
        except Exception as error:  # noqa: BLE001  (any start failure ends the manager with 1)
            log.error("controller failed to start", error=str(error))
            self._exit_code = 1
            self._stop.set()

    def _on_lost_leadership(self) -> None:
        self._lost_leadership.set()
        for controller in self.controllers:
            controller.abort()
        if self.exit_on_lost_leadership:
            log.error("leader election lost: exiting")
            exit_now(1)
        self._exit_code = 1
        self._stop.set()

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self.graceful_shutdown_timeout
        if self._lost_leadership.is_set():
            deadline = time.monotonic()
        for controller in self.controllers:
            if controller._started:
                controller.stop(max(0.0, deadline - time.monotonic()))
        self.cache.stop()
        if self._elector_thread is not None and self.leader_election is not None:
            self._leader_stop.set()  # releases the lease once the controllers are done
            self._elector_thread.join(self.leader_election.renew_deadline)
        self.recorder.stop(max(0.1, min(2.0, deadline - time.monotonic())))
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self._trimmer is not None:
            self._trimmer.stop()
        log.info("manager stopped", exit_code=self._exit_code)

    def _start_servers(self) -> None:
        routes_by_address: dict[Address, dict[str, Route]] = {}
        if self.health_address is not None:
            routes = routes_by_address.setdefault(self.health_address, {})
            routes["/healthz"] = self.healthz.route("/healthz")
            routes["/readyz"] = self.readyz.route("/readyz")
        if self.metrics_address is not None:
            routes = routes_by_address.setdefault(self.metrics_address, {})
            routes["/metrics"] = lambda path, query: (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.exposition(),
            )
        for address, routes in routes_by_address.items():
            server = EndpointServer(address, routes)
            server.start()
            self._servers.append(server)

    # -- signals ----------------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _restore_signal_handlers(self, previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            os._exit(1)
        log.info("shutdown signal received", signal=signal.Signals(signum).name)
        self._stop.set()
