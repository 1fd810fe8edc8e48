"""The reconcile template (controller/reconciler.py) with a stalled scheduler: a real socket that accepts and
never answers. Each kind's reconcile returns within 50 ms on its worker thread; the question runs off-thread,
and its answer (here: the scheduler's silence, as an error) is planner input on the next pass, which the
answer's arrival enqueues.

The scheduler is real (a socket); the API server's writes are recorded instead of sent (`RecordingExecutor`),
because what is under test is the scheduler's clock, not the writes (test/e2e/test_cluster.py sends them).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import pytest
from support import builders
from support.objects import (
    DaskAutoscalerBuilder,
    DaskClusterBuilder,
    DaskJobBuilder,
    DaskWorkerGroupBuilder,
)
from support.runtime_offline import offline_cache

from dask_operator.controller import indexes
from dask_operator.controller.contract.names import PROPAGATED_REPLICAS_ANNOTATION
from dask_operator.controller.contract.plans import Plan
from dask_operator.controller.executor import Executor, Outcome, RetireWorkers
from dask_operator.controller.kinds import (
    DASK_AUTOSCALER_KIND,
    DASK_CLUSTER_KIND,
    DASK_JOB_KIND,
    DASK_WORKER_GROUP_KIND,
)
from dask_operator.controller.planners.cluster import ClusterObservation, plan_cluster
from dask_operator.controller.planners.workergroup import GroupObservation, plan_group
from dask_operator.controller.reconciler import DaskReconciler
from dask_operator.controller.reconcilers.autoscaler import DaskAutoscalerReconciler
from dask_operator.controller.reconcilers.cluster import DaskClusterReconciler
from dask_operator.controller.reconcilers.job import DaskJobReconciler
from dask_operator.controller.reconcilers.workergroup import DaskWorkerGroupReconciler
from dask_operator.controller.settings import OperatorSettings
from dask_operator.runtime.cache import Cache
from dask_operator.runtime.kinds import POD, PODDISRUPTIONBUDGET, SERVICE, Kind
from dask_operator.runtime.reconcile import Request

NOW = 1_700_000_000.0
RETURNS_WITHIN = 0.050
Obj = dict[str, Any]


class RecordingExecutor(Executor):
    """Records the plans it is given; writes nothing."""

    def __init__(self) -> None:
        super().__init__(None, None, None, events_enabled=False)  # type: ignore[arg-type]
        self.plans: list[Plan] = []

    def run(self, obj: Obj, plan: Plan, now: float, retire_workers: RetireWorkers | None = None) -> Outcome:
        self.plans.append(plan)
        return Outcome(requeue_after=plan.requeue_after)


class Manager:
    def __init__(self, cache: Cache) -> None:
        self.cache, self.client, self.applier, self.recorder = cache, None, None, None


@pytest.fixture
def stalled_scheduler() -> Iterator[int]:
    """A port that accepts connections and never sends a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def _cluster_world(port: int) -> tuple[Obj, dict[Kind, list[Obj]]]:
    """A Ready cluster with an idle timeout, whose scheduler Service points at `port`."""
    cluster = DaskClusterBuilder("ns", "c").with_idle_timeout(60).build()
    plan = plan_cluster(ClusterObservation(cluster), NOW)
    pod = builders.controlled_by(builders.running(builders.created(plan, "Pod")), cluster)  # type: ignore[arg-type]
    service = builders.applied(plan, "Service")
    assert service is not None
    service["metadata"]["uid"] = "svc-uid"
    service["spec"]["clusterIP"] = "127.0.0.1"
    for p in service["spec"]["ports"]:
        if p["name"] == "http-dashboard":
            p["port"] = port
    objects = {DASK_CLUSTER_KIND: [cluster], POD: [pod], SERVICE: [service]}
    return cluster, objects


def _group_scaling_down(cluster: Obj) -> tuple[Obj, list[Obj]]:
    """The default group at 1 replica with 3 running worker pods: a scale-down, which asks for the workers."""
    three = DaskWorkerGroupBuilder.default_of(cluster).with_replicas(3)
    wanted = plan_group(GroupObservation(three.with_annotations({PROPAGATED_REPLICAS_ANNOTATION: "3"}).build(), cluster, []), NOW)  # fmt: skip
    group = three.with_replicas(1).with_annotations({PROPAGATED_REPLICAS_ANNOTATION: "1"}).build()
    pods = [builders.controlled_by(builders.running(p, created_at=NOW - 100 + i), group) for i, p in enumerate(wanted.creates)]  # fmt: skip
    return group, pods


def _fed_cache(objects: dict[Kind, list[Obj]]) -> Cache:
    cache = offline_cache()
    indexes.register(cache)
    kinds = (DASK_CLUSTER_KIND, DASK_WORKER_GROUP_KIND, DASK_AUTOSCALER_KIND, DASK_JOB_KIND, POD, SERVICE, PODDISRUPTIONBUDGET)  # fmt: skip
    for kind in kinds:
        cache.informer(kind)
    cache.start()
    for kind in kinds:
        cache.informer(kind).replace(objects.get(kind, []), "1")
    return cache


def _world(port: int, kind: str) -> tuple[Kind, Request, dict[Kind, list[Obj]]]:
    cluster, objects = _cluster_world(port)
    if kind == "cluster":
        return DASK_CLUSTER_KIND, Request("ns", "c"), objects
    if kind == "autoscaler":
        objects[DASK_WORKER_GROUP_KIND] = [DaskWorkerGroupBuilder.default_of(cluster).build()]
        objects[DASK_AUTOSCALER_KIND] = [DaskAutoscalerBuilder("ns", "a", "c").build()]
        return DASK_AUTOSCALER_KIND, Request("ns", "a"), objects
    if kind == "workergroup":
        group, pods = _group_scaling_down(cluster)
        objects[DASK_WORKER_GROUP_KIND] = [group]
        objects[POD] += pods
        return DASK_WORKER_GROUP_KIND, Request("ns", group["metadata"]["name"]), objects
    objects[DASK_JOB_KIND] = [DaskJobBuilder("ns", "j").build()]
    return DASK_JOB_KIND, Request("ns", "j"), objects


RECONCILERS: dict[str, Callable[..., DaskReconciler[Any]]] = {
    "cluster": DaskClusterReconciler,
    "workergroup": DaskWorkerGroupReconciler,
    "autoscaler": DaskAutoscalerReconciler,
    "job": DaskJobReconciler,
}


def _timed(reconciler: DaskReconciler[Any], request: Request) -> float:
    started = time.monotonic()
    reconciler.reconcile(request)
    return time.monotonic() - started


@pytest.mark.parametrize("kind", sorted(RECONCILERS))
def test_a_stalled_scheduler_never_holds_a_reconcile(stalled_scheduler: int, kind: str) -> None:
    _, request, objects = _world(stalled_scheduler, kind)
    cache = _fed_cache(objects)
    executor = RecordingExecutor()
    settings = OperatorSettings(scheduler_timeout=0.3)
    reconciler = RECONCILERS[kind](Manager(cache), settings, clock=lambda: NOW, executor=executor)
    woken = threading.Event()
    keys: list[Hashable] = []
    reconciler.calls.notify = lambda key: (keys.append(key), woken.set())
    try:
        assert _timed(reconciler, request) < RETURNS_WITHIN
        if kind == "job":  # a job asks no scheduler anything: its plan ran at once
            assert len(executor.plans) == 1 and not woken.is_set()
            return
        assert executor.plans == []  # the question is out; nothing planned on a guess
        # the scheduler stays silent; the call's own timeout ends it, and the answer wakes the key
        assert woken.wait(10), "the unanswered question came back as an answer"
        assert keys == [request]
        assert _timed(reconciler, request) < RETURNS_WITHIN
        (plan,) = executor.plans  # planned with the silence as input, not asked again
        assert plan.question is None and plan.status is not None
    finally:
        cache.stop()


def test_watch_mappers_turn_related_objects_into_requests(stalled_scheduler: int) -> None:
    """A cluster's change wakes its groups, autoscalers and the jobs naming it; a Workload's wakes its
    cluster's groups (read from the Workload itself, so its deletion still maps)."""
    from dask_operator.controller.reconcilers.autoscaler import autoscalers_of_cluster
    from dask_operator.controller.reconcilers.job import jobs_on_cluster
    from dask_operator.controller.reconcilers.workergroup import groups_of_cluster, groups_of_workload_owner

    _, _, objects = _world(stalled_scheduler, "autoscaler")
    (cluster,) = objects[DASK_CLUSTER_KIND]
    job = DaskJobBuilder("ns", "j").build()
    job["spec"]["clusterRef"] = {"name": "c"}
    objects[DASK_JOB_KIND] = [job, DaskJobBuilder("ns", "other").build()]
    cache = _fed_cache(objects)
    manager = Manager(cache)
    workload = {"metadata": {"namespace": "ns", "name": "w", "ownerReferences": [
        {"kind": "DaskCluster", "name": "c", "controller": True}]}}  # fmt: skip
    try:
        assert groups_of_cluster(manager)(cluster) == [Request("ns", "c-default")]
        assert autoscalers_of_cluster(manager)(cluster) == [Request("ns", "a")]
        assert jobs_on_cluster(manager)(cluster) == [Request("ns", "j")]
        assert groups_of_workload_owner(manager)(workload) == [Request("ns", "c-default")]
    finally:
        cache.stop()


def test_an_answer_asked_before_what_the_plan_needs_is_not_used(stalled_scheduler: int) -> None:
    """`Plan.asked_after`: a worker list asked before a retirement ended says nothing about the pods now; the
    template asks again instead of feeding it to the planner, however young it is."""
    from dask_operator.controller.contract.plans import Question

    _, request, objects = _world(stalled_scheduler, "workergroup")
    cache = _fed_cache(objects)
    now = [NOW]
    reconciler = DaskWorkerGroupReconciler(Manager(cache), OperatorSettings(scheduler_timeout=0.3), clock=lambda: now[0], executor=RecordingExecutor())  # fmt: skip
    answered = threading.Event()
    reconciler.calls.notify = lambda key: answered.set()
    try:
        reconciler.calls.ask(request, Question.WORKERS.value, list)  # asked at NOW, answered at once
        assert answered.wait(5)
        group = cache.get(DASK_WORKER_GROUP_KIND, "ns", request.name)
        assert group is not None
        observed = reconciler.observe(group)
        assert observed is not None
        now[0] = NOW + 1
        used = reconciler.answered(request, group, observed, Question.WORKERS, now[0], asked_after=NOW)
        assert used is not None and used.scheduler is not None and used.scheduler.asked == NOW
        answered.clear()
        assert (
            reconciler.answered(request, group, observed, Question.WORKERS, now[0], asked_after=NOW + 0.5)
            is None
        )
        assert answered.wait(5), "asked again"
        again = reconciler.calls.answer(request, Question.WORKERS.value)
        assert again is not None and again.asked == NOW + 1
    finally:
        cache.stop()
