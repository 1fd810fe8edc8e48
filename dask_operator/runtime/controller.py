"""A controller: watches feed one work queue of Requests; N workers reconcile them.

Invariant: no reconcile starts before every source of the controller has synced, and none starts after stop;
a key is reconciled by one worker at a time; the outcome decides the requeue exactly as c-r does (error ->
rate-limited requeue, terminal error -> none, requeue_after -> forget + delay, success -> forget), a
crashing reconcile never kills its worker, and a reconcile never starts on a cache older than the writes the
previous reconcile of the same key made (runtime/consistency.py); with `status_writes`, every status write a
reconcile makes is remembered there as it happens (for the For watch's NotOwnStatusEcho).
Held by test/unit/test_runtime_controller.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import structlog

from dask_operator.runtime import metrics
from dask_operator.runtime.cache import Cache, CacheNotSynced
from dask_operator.runtime.client import ApiError, ConnectionFailure
from dask_operator.runtime.consistency import OwnStatusWrites, OwnWrites, recording
from dask_operator.runtime.handler import EnqueueHandler, RequestMapper
from dask_operator.runtime.informer import Registration
from dask_operator.runtime.kinds import Kind
from dask_operator.runtime.logs import reconcile_context
from dask_operator.runtime.predicate import Predicate
from dask_operator.runtime.ratelimiter import RateLimiter
from dask_operator.runtime.reconcile import (
    Reconciler,
    ReconcileTimeout,
    Request,
    Result,
    TerminalError,
    deadline_after,
    remaining_time,
)
from dask_operator.runtime.workqueue import WorkQueue

log = structlog.get_logger("dask_operator.runtime.controller")

DEFAULT_CACHE_SYNC_TIMEOUT = 120.0
# How soon a request whose cache lags behind its own writes is looked at again (the watch event that
# catches the cache up usually enqueues it first).
CACHE_CATCH_UP_SECONDS = 0.2


class ReconcileError(Exception):
    """Raise to fail a reconcile on purpose: it is retried with per-key backoff, and is not counted as a panic."""


# Failures a reconcile is expected to meet; any other exception is a bug and also counts as a panic.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ReconcileError,
    TerminalError,
    ReconcileTimeout,
    ApiError,
    ConnectionFailure,
    CacheNotSynced,
)


class SourceSyncTimeout(Exception):
    """A watched kind did not sync within cache_sync_timeout."""


@dataclass(frozen=True)
class WatchSpec:
    kind: Kind
    mapper: RequestMapper
    predicates: tuple[Predicate, ...] = field(default_factory=tuple)


class Controller:
    def __init__(
        self,
        name: str,
        reconciler: Reconciler,
        cache: Cache,
        watches: Iterable[WatchSpec],
        *,
        max_concurrent_reconciles: int = 1,
        reconcile_timeout: float | None = None,
        rate_limiter: RateLimiter | None = None,
        cache_sync_timeout: float = DEFAULT_CACHE_SYNC_TIMEOUT,
        event_filters: Sequence[Predicate] = (),
        may_act: Callable[[], bool] = lambda: True,
        status_writes: OwnStatusWrites | None = None,
    ) -> None:
        if max_concurrent_reconciles < 1:
            raise ValueError("max_concurrent_reconciles must be at least 1")
        self.name = name
        self.reconciler = reconciler
        self.cache = cache
        self.watches = tuple(watches)
        self.max_concurrent_reconciles = max_concurrent_reconciles
        self.reconcile_timeout = reconcile_timeout
        self.cache_sync_timeout = cache_sync_timeout
        self.event_filters = tuple(event_filters)
        self.may_act = may_act  # false once the leader's lease may have passed to another replica
        self.queue: WorkQueue[Request] = WorkQueue(name, rate_limiter=rate_limiter)
        self.own_writes = OwnWrites(self._seen_resource_version)
        self.status_writes = (
            status_writes  # where this controller's status writes are remembered, if anywhere
        )
        self._registrations: list[Registration] = []
        self._workers: list[threading.Thread] = []
        self._started = False
        self._stopping = threading.Event()
        self._log = log.bind(controller=name)
        self._init_metrics()

    def _init_metrics(self) -> None:
        # pre-created at 0 so dashboards list the controller before its first reconcile
        for result in metrics.RECONCILE_RESULTS:
            metrics.RECONCILE_TOTAL.labels(self.name, result).inc(0)
        for counter in (
            metrics.RECONCILE_ERRORS,
            metrics.TERMINAL_RECONCILE_ERRORS,
            metrics.RECONCILE_PANICS,
            metrics.RECONCILE_TIMEOUTS,
        ):
            counter.labels(self.name).inc(0)
        metrics.RECONCILE_TIME.labels(self.name)
        metrics.MAX_CONCURRENT_RECONCILES.labels(self.name).set(self.max_concurrent_reconciles)
        metrics.ACTIVE_WORKERS.labels(self.name).set(0)
        self._total = {
            result: metrics.RECONCILE_TOTAL.labels(self.name, result) for result in metrics.RECONCILE_RESULTS
        }
        self._errors = metrics.RECONCILE_ERRORS.labels(self.name)
        self._terminal = metrics.TERMINAL_RECONCILE_ERRORS.labels(self.name)
        self._panics = metrics.RECONCILE_PANICS.labels(self.name)
        self._timeouts = metrics.RECONCILE_TIMEOUTS.labels(self.name)
        self._time = metrics.RECONCILE_TIME.labels(self.name)
        self._active = metrics.ACTIVE_WORKERS.labels(self.name)

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self, stop: threading.Event | None = None) -> None:
        """Register the watches, wait until each has synced, then start the workers; returns when they run."""
        if self._started:
            raise RuntimeError(f"controller {self.name} was already started")
        self._started = True
        for spec in self.watches:
            self._log.info("Starting EventSource", source=str(spec.kind))
            informer = self.cache.informer(spec.kind)
            handler = EnqueueHandler(self.queue, spec.mapper, spec.predicates + self.event_filters)
            self._registrations.append(informer.add_handler(handler))  # started by the cache
        self._log.info("Starting Controller")
        deadline = time.monotonic() + self.cache_sync_timeout
        for spec, registration in zip(self.watches, self._registrations, strict=True):
            while not registration.has_synced():
                if stop is not None and stop.is_set():
                    return
                if time.monotonic() > deadline:
                    raise SourceSyncTimeout(
                        f"controller {self.name}: timed out waiting for source {spec.kind} to sync "
                        f"(is the CRD installed and is the operator allowed to list and watch it?)"
                    )
                time.sleep(0.01)
        self._log.info("Starting workers", worker_count=self.max_concurrent_reconciles)
        for index in range(self.max_concurrent_reconciles):
            worker = threading.Thread(target=self._work, name=f"{self.name}-worker-{index}", daemon=True)
            self._workers.append(worker)
            worker.start()

    def stop(self, timeout: float | None = 30.0) -> bool:
        """No new reconciles; wait (bounded) for in-flight ones; True if all finished."""
        self._log.info("Shutdown signal received, waiting for all workers to finish")
        self._stopping.set()
        drained = self.queue.shutdown_with_drain(timeout)
        for registration in self._registrations:
            registration.remove()
        for worker in self._workers:
            worker.join(1.0 if drained else 0.0)
        if drained:
            self._log.info("All workers finished")
        return drained

    def abort(self) -> None:
        """Stop handing out work at once, without waiting (lost leadership)."""
        self._stopping.set()
        self.queue.shutdown()

    def _seen_resource_version(self, kind: Kind) -> int | None:
        informer = self.cache.informers().get(kind)
        if informer is None:
            return None  # a kind this cache does not watch cannot be stale
        try:
            return int(informer.reflector.last_sync_resource_version)
        except ValueError:
            return None

    # -- workers ----------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            request, shutdown = self.queue.get()
            if shutdown or request is None:
                return
            if self._stopping.is_set():
                self.queue.done(request)
                continue
            self._active.inc()
            try:
                self._reconcile_handler(request)
            finally:
                self._active.dec()
                self.queue.done(request)

    def _reconcile_handler(self, request: Request) -> None:
        if not self.may_act():
            # no reconcile starts without the lease; the manager aborts this controller when it is lost
            self.queue.add_after(request, CACHE_CATCH_UP_SECONDS)
            return
        if self.own_writes.behind(request):
            # the cache does not show this request's own last writes yet: acting now would redo them
            self.queue.add_after(request, CACHE_CATCH_UP_SECONDS)
            self._total["requeue_after"].inc()
            return
        reconcile_id = str(uuid.uuid4())
        started = time.monotonic()
        with (
            reconcile_context(self.name, request.namespace, request.name, reconcile_id),
            deadline_after(self.reconcile_timeout),
            recording(self.status_writes) as writes,
        ):
            try:
                try:
                    result = self.reconciler.reconcile(request)
                finally:
                    self.own_writes.wrote(request, writes)
            except BaseException as error:
                if isinstance(error, KeyboardInterrupt | SystemExit | GeneratorExit):
                    raise
                timed_out = isinstance(error, ReconcileTimeout) and (remaining_time() or 0.0) <= 0
                self._time.observe(time.monotonic() - started)
                self._on_error(request, error, timed_out)
                return
            self._time.observe(time.monotonic() - started)
            self._on_result(request, result)

    def _on_error(self, request: Request, error: BaseException, timed_out: bool) -> None:
        self._errors.inc()
        self._total["error"].inc()
        if timed_out:
            self._timeouts.inc()
        if isinstance(error, TerminalError):
            self._terminal.inc()
            self._log.error("Reconciler error", error=str(error), terminal=True)
            return
        if not isinstance(error, EXPECTED_ERRORS):
            self._panics.inc()
            self._log.error("Observed a panic in reconciler", error=repr(error), exc_info=error)
        self._log.error("Reconciler error", error=str(error) or repr(error))
        self.queue.add_rate_limited(request)

    def _on_result(self, request: Request, result: Result) -> None:
        if result is None:
            result = Result()
        if result.requeue_after is not None and result.requeue_after > 0:
            self.queue.forget(request)
            self.queue.add_after(request, result.requeue_after)
            self._total["requeue_after"].inc()
        elif result.requeue:
            self.queue.add_rate_limited(request)
            self._total["requeue"].inc()
        else:
            self.queue.forget(request)
            self._total["success"].inc()
        self._log.debug("Reconcile done", requeue_after=result.requeue_after, requeue=result.requeue)
