"""Controller loop semantics (checklist items 2, 29-34, 38, 39, 52), in-process.

The controller's informers are fed directly (the cache is not started), so no API server is involved.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from support.runtime_offline import offline_cache
from support.wait import wait_for

from dask_operator.runtime import metrics
from dask_operator.runtime.consistency import OwnStatusWrites, note_write
from dask_operator.runtime.controller import (
    Controller,
    ReconcileError,
    SourceSyncTimeout,
    WatchSpec,
)
from dask_operator.runtime.handler import request_for_object
from dask_operator.runtime.kinds import CONFIGMAP
from dask_operator.runtime.predicate import NotOwnStatusEcho
from dask_operator.runtime.ratelimiter import ItemExponentialFailureRateLimiter
from dask_operator.runtime.reconcile import (
    Request,
    Result,
    TerminalError,
    check_deadline,
)

Obj = dict[str, Any]
_names = iter(range(10_000))


def cm(name: str, rv: int = 1) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"namespace": "ns", "name": name, "resourceVersion": str(rv)},
    }


class FnReconciler:
    def __init__(self, fn: Callable[[Request], Result]) -> None:
        self.fn = fn
        self.calls: list[tuple[Request, float]] = []
        self.lock = threading.Lock()

    def reconcile(self, request: Request) -> Result:
        with self.lock:
            self.calls.append((request, time.monotonic()))
        return self.fn(request)

    def count(self) -> int:
        with self.lock:
            return len(self.calls)


def started(fn: Callable[[Request], Result], **options: Any) -> tuple[Controller, FnReconciler, Any]:
    cache = offline_cache()
    reconciler = FnReconciler(fn)
    options.setdefault("rate_limiter", ItemExponentialFailureRateLimiter(0.05, 1.0))
    controller = Controller(
        f"test-{next(_names)}", reconciler, cache, [WatchSpec(CONFIGMAP, request_for_object)], **options
    )
    informer = cache.informer(CONFIGMAP)
    informer.replace([], "1")
    controller.start()
    return controller, reconciler, informer


def value(name: str, controller: Controller, **labels: str) -> float:
    return metrics.sample_value(name, {"controller": controller.name, **labels})


def test_metrics_are_pre_initialised_with_all_four_results() -> None:  # item 52 (reconcile_total)
    controller = Controller("pre-init", FnReconciler(lambda r: Result()), offline_cache(), [])
    for result in ("success", "error", "requeue", "requeue_after"):
        assert (
            metrics.REGISTRY.get_sample_value(
                "controller_runtime_reconcile_total", {"controller": "pre-init", "result": result}
            )
            == 0
        )
    assert value("controller_runtime_max_concurrent_reconciles", controller) == 1
    assert value("controller_runtime_active_workers", controller) == 0


def test_no_reconcile_before_sources_synced_and_sync_timeout_names_the_source() -> None:  # item 2
    cache = offline_cache()
    reconciler = FnReconciler(lambda r: Result())
    controller = Controller(
        "never-synced", reconciler, cache, [WatchSpec(CONFIGMAP, request_for_object)], cache_sync_timeout=0.2
    )
    with pytest.raises(SourceSyncTimeout, match="ConfigMap"):
        controller.start()
    assert reconciler.count() == 0


def test_error_is_requeued_with_backoff_and_counted() -> None:  # item 29
    attempts: list[float] = []

    def fn(request: Request) -> Result:
        attempts.append(time.monotonic())
        if len(attempts) <= 3:
            raise ReconcileError("not yet")
        return Result()

    controller, reconciler, informer = started(fn)
    informer.added(cm("a"))
    wait_for(lambda: reconciler.count() == 4, timeout=5)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.195  # 50, 100, 200 ms
    assert value("controller_runtime_reconcile_errors_total", controller) == 3
    assert value("controller_runtime_reconcile_total", controller, result="error") == 3
    assert value("controller_runtime_reconcile_total", controller, result="success") == 1
    assert value("controller_runtime_reconcile_total", controller, result="requeue_after") == 0
    assert value("controller_runtime_reconcile_panics_total", controller) == 0
    assert controller.queue.num_requeues(Request("ns", "a")) == 0  # forgotten on success
    controller.stop(2)


def test_terminal_error_is_not_requeued() -> None:  # item 30
    def fn(request: Request) -> Result:
        raise TerminalError("bad spec")

    controller, reconciler, informer = started(fn)
    informer.added(cm("a"))
    wait_for(lambda: reconciler.count() == 1, timeout=2)
    time.sleep(0.3)
    assert reconciler.count() == 1
    assert value("controller_runtime_terminal_reconcile_errors_total", controller) == 1
    assert value("controller_runtime_reconcile_errors_total", controller) == 1
    assert value("controller_runtime_reconcile_total", controller, result="error") == 1
    assert controller.queue.waiting() == 0 and len(controller.queue) == 0
    controller.stop(2)


def test_requeue_after_resets_backoff_and_redelivers_on_time() -> None:  # item 31
    def fn(request: Request) -> Result:
        if reconciler.count() == 1:
            raise ReconcileError("fail once to build up backoff")
        return Result(requeue_after=0.3)

    controller, reconciler, informer = started(fn)
    informer.added(cm("a"))
    wait_for(lambda: reconciler.count() >= 3, timeout=3)
    controller.stop(2)
    times = [t for _, t in reconciler.calls]
    assert 0.3 <= times[2] - times[1] < 0.45
    assert value("controller_runtime_reconcile_total", controller, result="requeue_after") >= 1


def test_requeue_true_uses_rate_limited_backoff() -> None:
    def fn(request: Request) -> Result:
        return Result(requeue=reconciler.count() < 3)

    controller, reconciler, informer = started(fn)
    informer.added(cm("a"))
    wait_for(lambda: reconciler.count() == 3, timeout=3)
    assert value("controller_runtime_reconcile_total", controller, result="requeue") == 2
    controller.stop(2)


def test_a_crash_is_a_panic_and_an_error_and_the_worker_survives() -> None:  # item 33
    def fn(request: Request) -> Result:
        if request.name == "bad" and reconciler.count() < 3:
            raise KeyError("spec")
        return Result()

    controller, reconciler, informer = started(fn)
    informer.added(cm("bad"))
    wait_for(lambda: value("controller_runtime_reconcile_panics_total", controller) >= 1, timeout=2)
    informer.added(cm("good"))
    wait_for(lambda: any(r.name == "good" for r, _ in reconciler.calls), timeout=2)
    wait_for(
        lambda: value("controller_runtime_reconcile_total", controller, result="success") >= 2, timeout=3
    )
    assert value("controller_runtime_reconcile_errors_total", controller) == value(
        "controller_runtime_reconcile_panics_total", controller
    )
    controller.stop(2)


def test_at_most_n_concurrent_reconciles() -> None:  # item 34
    active = [0]
    peak = [0]
    lock = threading.Lock()
    observed_gauge: list[float] = []

    def fn(request: Request) -> Result:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        observed_gauge.append(value("controller_runtime_active_workers", controller))
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return Result()

    controller, reconciler, informer = started(fn, max_concurrent_reconciles=3)
    for i in range(20):
        informer.added(cm(f"k{i}"))
    wait_for(lambda: reconciler.count() == 20, timeout=5)
    assert peak[0] == 3
    assert max(observed_gauge) <= 3
    assert value("controller_runtime_max_concurrent_reconciles", controller) == 3
    controller.stop(2)
    assert value("controller_runtime_active_workers", controller) == 0


def test_every_log_line_in_a_reconcile_carries_its_context() -> None:  # item 38
    log = structlog.get_logger("test")

    def fn(request: Request) -> Result:
        log.info("inside")
        if request.name == "err":
            raise ReconcileError("boom")
        return Result()

    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        controller, reconciler, informer = started(fn)
        informer.added(cm("ok"))
        informer.added(cm("err"))
        wait_for(lambda: reconciler.count() >= 3, timeout=3)
        controller.stop(2)
    inside = [entry for entry in logs if entry["event"] == "inside"]
    assert inside and all(
        entry["controller"] == controller.name and entry["namespace"] == "ns" for entry in inside
    )
    assert {entry["name"] for entry in inside} == {"ok", "err"}
    ids = [entry["reconcile_id"] for entry in inside]
    assert len(set(ids)) == len(ids)
    errors = [entry for entry in logs if entry["event"] == "Reconciler error"]
    assert errors and all(entry["error"] == "boom" and entry["name"] == "err" for entry in errors)
    # the reconcile that failed logged the error once, with the same reconcile_id as its own lines
    first_err_id = next(entry["reconcile_id"] for entry in inside if entry["name"] == "err")
    assert sum(1 for entry in errors if entry["reconcile_id"] == first_err_id) == 1


def test_reconcile_timeout_is_cooperative_and_counted_only_when_it_fired() -> None:  # item 39
    def fn(request: Request) -> Result:
        if request.name == "slow":
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                check_deadline()
                time.sleep(0.01)
        if request.name == "own-error":
            raise ReconcileError("not a timeout")
        return Result()

    controller, _reconciler, informer = started(
        fn, reconcile_timeout=0.2, rate_limiter=ItemExponentialFailureRateLimiter(10, 10)
    )
    informer.added(cm("slow"))
    wait_for(lambda: value("controller_runtime_reconcile_timeouts_total", controller) == 1, timeout=2)
    informer.added(cm("own-error"))
    informer.added(cm("fast"))
    wait_for(
        lambda: value("controller_runtime_reconcile_total", controller, result="success") == 1, timeout=2
    )
    wait_for(lambda: value("controller_runtime_reconcile_errors_total", controller) == 2, timeout=2)
    assert value("controller_runtime_reconcile_timeouts_total", controller) == 1
    controller.stop(2)


def test_stop_lets_in_flight_finish_and_starts_nothing_new() -> None:  # item 57 (controller part)
    release = threading.Event()
    finished: list[str] = []

    def fn(request: Request) -> Result:
        if request.name == "long":
            release.wait(5)
        finished.append(request.name)
        return Result()

    controller, reconciler, informer = started(fn)
    informer.added(cm("long"))
    wait_for(lambda: reconciler.count() == 1, timeout=2)
    informer.added(cm("queued"))
    stopper = threading.Thread(target=controller.stop, args=(5,))
    stopper.start()
    time.sleep(0.1)
    assert stopper.is_alive()  # waiting for the in-flight reconcile
    release.set()
    stopper.join(5)
    assert finished == ["long"]


def test_reconcile_time_histogram_has_c_r_buckets() -> None:  # item 52 (buckets)
    controller, reconciler, informer = started(lambda r: Result())
    informer.added(cm("a"))
    wait_for(lambda: reconciler.count() == 1, timeout=2)
    text = metrics.exposition().decode()
    buckets = [
        line.split('le="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("controller_runtime_reconcile_time_seconds_bucket")
        and f'controller="{controller.name}"' in line
    ]
    assert [float(b) for b in buckets[:-1]] == list(metrics.RECONCILE_TIME_BUCKETS)
    assert buckets[-1] == "+Inf"
    controller.stop(2)
    json.dumps(buckets)


def test_a_status_write_is_remembered_as_it_happens_and_its_echo_reconciles_nothing() -> None:
    cache = offline_cache()
    informer = cache.informer(CONFIGMAP)
    informer.replace([], "1")
    written = OwnStatusWrites(CONFIGMAP)
    echoes: list[bool] = []

    def version(rv: int, seen: bool) -> Obj:
        obj = cm("a", rv)
        return {**obj, "metadata": {**obj["metadata"], "uid": "a-uid"}, "status": {"seen": seen}}

    def fn(request: Request) -> Result:
        # what the client does on a status write; the echo may reach the informer before the reconcile ends
        if reconciler.count() > 1:
            return Result()
        ours = version(3, True)
        note_write(CONFIGMAP, ours, "status")
        echoes.append(len(written) == 1)
        informer.modified(ours)
        return Result()

    reconciler = FnReconciler(fn)
    controller = Controller(
        f"test-{next(_names)}",
        reconciler,
        cache,
        [WatchSpec(CONFIGMAP, request_for_object, (NotOwnStatusEcho(written),))],
        status_writes=written,
    )
    controller.start()
    informer.added(version(2, False))
    wait_for(lambda: reconciler.count() == 1, timeout=5)
    time.sleep(0.3)
    assert reconciler.count() == 1 and echoes == [True], "the echo of its own status write enqueued nothing"
    informer.modified(version(4, False))  # someone else's status
    wait_for(lambda: reconciler.count() == 2, timeout=5)
    controller.stop(2)
