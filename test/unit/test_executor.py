"""executor.py's pure half: a refused write becomes a sentence with the API server's words and what to do,
and the status the executor writes carries it as ReplicaFailure and Degraded, keeping the transition time
while the refusal lasts and dropping it once a plan succeeds."""

from __future__ import annotations

from dask_operator.controller.contract.conditions import EventSpec
from dask_operator.controller.contract.objects import rfc3339
from dask_operator.controller.contract.plans import Cause, Create, Delete, Ref
from dask_operator.controller.executor import Refusal, refusal_of, with_refusals
from dask_operator.runtime.client import ApiError

NOW = 1_700_000_000.0
QUOTA = (
    'pods "c-scheduler" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=0, limited: pods=0'
)


def test_a_refused_create_names_the_object_the_server_message_and_what_to_do() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c-scheduler", "namespace": "ns"}}
    refusal = refusal_of(Create(pod), ApiError(403, "POST", "/api/v1/namespaces/ns/pods", {"message": QUOTA}))
    assert refusal.reason == "FailedCreate"
    assert refusal.message.startswith("Creating Pod c-scheduler was refused by the API server: " + QUOTA)
    assert "ResourceQuota" in refusal.message and "retries every 5 s" in refusal.message
    invalid = refusal_of(Create(pod), ApiError(422, "POST", "/p", {"message": "spec.containers: Required"}))
    assert "Fix the spec" in invalid.message
    gone = refusal_of(
        Delete(Ref("v1", "Pod", "ns", "w", "u"), Cause.RETIRED), ApiError(500, "DELETE", "/p", "boom")
    )
    assert gone.reason == "FailedDelete" and "Pod w" in gone.message
    ending = 'pods "c-scheduler" is forbidden: unable to create new content in namespace ns because it is being terminated'
    closing = refusal_of(Create(pod), ApiError(403, "POST", "/p", {"message": ending}))
    assert "namespace is being deleted" in closing.message and "RBAC" not in closing.message


def test_refusals_become_replica_failure_and_degraded_and_keep_their_transition_time() -> None:
    planned = {
        "phase": "Pending",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "ServiceNotReady", "message": ""},
            {"type": "Degraded", "status": "False", "reason": "AsExpected", "message": ""},
        ],
    }
    refusals = [Refusal("FailedCreate", "first"), Refusal("FailedCreate", "second")]
    first = with_refusals(planned, refusals, {}, NOW, 3)
    by_type = {c["type"]: c for c in first["conditions"]}
    assert by_type["Ready"]["reason"] == "ServiceNotReady"  # the planner's conditions stay
    for kind in ("ReplicaFailure", "Degraded"):
        assert by_type[kind]["status"] == "True" and by_type[kind]["reason"] == "FailedCreate"
        assert by_type[kind]["message"] == "first (1 more writes refused)"
        assert by_type[kind]["lastTransitionTime"] == rfc3339(NOW)
        assert by_type[kind]["observedGeneration"] == 3
    later = with_refusals(planned, refusals, first, NOW + 60, 3)
    (still,) = (c for c in later["conditions"] if c["type"] == "ReplicaFailure")
    assert still["lastTransitionTime"] == rfc3339(NOW)
    assert later["phase"] == "Pending"


def test_a_retirement_is_started_not_waited_for_and_deletes_nothing_by_itself() -> None:
    """The executor hands the Retire step to the caller's starter and returns; which pods may go is decided
    by the next plan, from the answer (test_workergroup.py)."""
    from dask_operator.controller.contract.plans import Retire, RetiringPod
    from dask_operator.controller.contract.scheduler_api import DaskWorker
    from dask_operator.controller.executor import Executor

    pod = RetiringPod(
        Delete(Ref("v1", "Pod", "ns", "p", "u"), Cause.RETIRED),
        (DaskWorker("p-0", "tcp://10.0.0.1:1"), DaskWorker("p-1", "tcp://10.0.0.1:2")),
    )
    group = {"metadata": {"namespace": "ns", "name": "g"}}
    executor = Executor(None, None, None, events_enabled=False)  # type: ignore[arg-type]  (no I/O happens)
    started: list[Retire] = []
    assert executor.retire(group, Retire((pod,)), started.append) is None
    assert started == [Retire((pod,))]
    refused = executor.retire(group, Retire((pod,)), None)
    assert refused is not None and refused.reason == "RetirementFailed"


def test_write_waves_group_writes_to_distinct_objects_and_keep_everything_else_in_order() -> None:
    from dask_operator.controller.contract.plans import Apply, Emit, SetStatus
    from dask_operator.controller.executor import write_waves

    def obj(kind: str, name: str) -> dict[str, object]:
        return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name, "namespace": "ns"}}

    service, group, pod = (
        Apply(obj("Service", "c")),
        Apply(obj("DaskWorkerGroup", "c-default")),
        Create(obj("Pod", "s")),
    )
    replicas = Apply(obj("DaskWorkerGroup", "c-default"), "dask-operator-replicas")
    status, event = SetStatus({"phase": "Running"}), Emit(EventSpec("Normal", "R", "m"))
    # the group's replicas write waits for the group's own apply; the pod goes with it
    assert write_waves([service, group, replicas, pod, status, event]) == [
        (service, group), (replicas, pod), (status,), (event,),
    ]  # fmt: skip
    # a delete and a create of the same name stay one after the other
    old = Delete(Ref("v1", "Pod", "ns", "s", "u"), Cause.TEMPLATE_CHANGED)
    assert write_waves([old, pod]) == [(old,), (pod,)]
    assert write_waves([]) == []


def test_a_plan_that_emits_an_event_writes_its_status_at_once() -> None:
    """A loss's Event is produced only for a loss the stored status does not name yet; a status held back by
    the coalescing window let the next reconcile emit the same Event again (a deleted scheduler pod produced
    two SchedulerStateLost Events)."""
    from dask_operator.controller.contract.plans import Emit, Plan, SetStatus
    from dask_operator.controller.executor import Executor

    class Applier:
        def __init__(self) -> None:
            self.statuses: list[object] = []

        def apply_status(self, obj: object, manager: str) -> None:
            self.statuses.append(obj)

    progress = {"observedGeneration": 1, "phase": "Running", "conditions": [
        {"type": "Ready", "status": "False", "reason": "WorkersNotReady", "message": ""},
        {"type": "Progressing", "status": "True", "reason": "ScalingUp", "message": ""},
        {"type": "SchedulerRestarted", "status": "True", "reason": "SchedulerStateLost", "message": "lost"},
    ]}  # fmt: skip
    cluster = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": "c", "namespace": "ns", "uid": "u", "generation": 1},
        "status": {**progress, "conditions": progress["conditions"][:2]},
    }
    applier = Applier()
    executor = Executor(None, applier, None, events_enabled=False, status_window=1.0)  # type: ignore[arg-type]
    quiet = executor.run(cluster, Plan((SetStatus(progress),)), NOW)
    assert not quiet.status_written and applier.statuses == []  # a progress change waits for the window
    told = executor.run(
        cluster, Plan((Emit(EventSpec("Warning", "SchedulerStateLost", "lost")), SetStatus(progress))), NOW
    )
    assert told.status_written and len(applier.statuses) == 1
