"""DaskAutoscaler desired state as tables: bounds, damping, cooldown, and when nothing may change."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from support.builders import applied
from support.objects import DaskAutoscalerBuilder

from dask_operator.api.v1.names import ANNOTATION_COOLDOWN_UNTIL
from dask_operator.controller.contract.demand import Holding, Need, SchedulerDemand, restrictions
from dask_operator.controller.contract.objects import rfc3339
from dask_operator.controller.contract.plans import (
    ADOPTION_FIELD_MANAGER,
    AUTOSCALER_FIELD_MANAGER,
    Plan,
    Question,
)
from dask_operator.controller.planners.autoscaler import (
    COOLDOWN_SECONDS,
    DEMAND_POLL_SECONDS,
    POLL_SECONDS,
    SCALE_DOWN_DELAY_SECONDS,
    AutoscalerObservation,
    SchedulerTarget,
    bounded_target,
    cooldown_until,
    plan_autoscaler,
)

NOW = 1_700_000_000.0


def make_autoscaler(
    minimum: int = 1, maximum: int = 10, cooldown: float | None = None, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    autoscaler = DaskAutoscalerBuilder("ns", "a", "c").with_bounds(minimum, maximum)
    if cooldown is not None:
        autoscaler.with_annotations({ANNOTATION_COOLDOWN_UNTIL: repr(cooldown)})
    obj = autoscaler.build()
    if status is not None:
        obj["status"] = status
    return obj


CLUSTER = {
    "apiVersion": "kubernetes.dask.org/v1",
    "kind": "DaskCluster",
    "metadata": {"name": "c", "namespace": "ns", "uid": "c-uid"},
}
SERVICE = {"metadata": {"name": "c-scheduler", "namespace": "ns"}, "spec": {"clusterIP": "10.0.0.1"}}


def scheduler_pod(ready: bool = True, name: str = "c-scheduler", terminating: bool = False) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {"name": name, "labels": {"dask.org/component": "scheduler"}},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": str(ready)}]},
    }
    if terminating:
        pod["metadata"]["deletionTimestamp"] = "2023-11-14T22:00:00Z"
    return pod


def group(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": {"name": "c-default", "namespace": "ns", "uid": "g-uid"},
        "spec": {"cluster": "c", "worker": {"replicas": replicas, "spec": {}}},
    }


def observe(
    current: int = 2,
    target: int | None = 2,
    autoscaler: dict[str, Any] | None = None,
    error: str = "",
    **changes: Any,
) -> AutoscalerObservation:
    obs = AutoscalerObservation(
        autoscaler=autoscaler or make_autoscaler(),
        cluster=CLUSTER,
        scheduler_pods=[scheduler_pod()],
        service=SERVICE,
        group=group(current),
        scheduler=SchedulerTarget(target, error),
    )
    return dataclasses.replace(obs, **changes)


def condition(p: Plan, kind: str) -> dict[str, Any]:
    assert p.status is not None
    return next(c for c in p.status["conditions"] if c["type"] == kind)


def replicas_apply(p: Plan) -> dict[str, Any] | None:
    return applied(p, "DaskWorkerGroup", AUTOSCALER_FIELD_MANAGER)


def cooldown_apply(p: Plan) -> dict[str, Any] | None:
    return applied(p, "DaskAutoscaler", AUTOSCALER_FIELD_MANAGER)


def adopt(p: Plan) -> dict[str, Any] | None:
    return applied(p, "DaskAutoscaler", ADOPTION_FIELD_MANAGER)


def replicas(p: Plan) -> int | None:
    intent = replicas_apply(p)
    return None if intent is None else int(intent["spec"]["worker"]["replicas"])


# -- the arithmetic -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target", "minimum", "maximum", "expected"),
    [
        (1, 5, 1, 10, 5),  # scale-up in one step
        (1, 50, 1, 10, 10),  # clamped to maximum
        (0, 0, 1, 10, 1),  # clamped to minimum
        (3, 3, 1, 10, 3),
        (3, 0, 0, 10, 2),  # scale-down of 1 (floor(0.75) -> at least 1)
        (20, 0, 1, 30, 15),  # floor(20/4) = 5
        (8, 7, 1, 10, 7),  # within one step
        (8, 50, 1, 4, 6),  # maximum lowered below current: damped too (8 -> 6 -> 5 -> 4)
        (1, 0, 0, 5, 0),  # minimum 0: may reach zero
        (4, 4, 5, 10, 5),  # minimum raised above current: straight up
    ],
)
def test_bounded_target(current: int, target: int, minimum: int, maximum: int, expected: int) -> None:
    assert bounded_target(current, target, minimum, maximum) == expected


def test_scale_down_sequence_from_twenty() -> None:
    seen, r = [20], 20
    while r > 1:
        r = bounded_target(r, 0, 1, 100)
        seen.append(r)
    assert seen == [20, 15, 12, 9, 7, 6, 5, 4, 3, 2, 1]  # checklist 7D-44


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("1700000015.5", 1700000015.5), ("soon", None)]
)
def test_cooldown_annotation(value: str | None, expected: float | None) -> None:
    obj = make_autoscaler()
    if value is not None:
        obj["metadata"]["annotations"] = {"kubernetes.dask.org/cooldown-until": value}
    assert cooldown_until(obj) == expected


# -- the plan --------------------------------------------------------------------------------------------------


def test_scale_up_writes_only_the_default_groups_replicas_and_starts_a_cooldown() -> None:
    p = plan_autoscaler(observe(current=1, target=7, autoscaler=make_autoscaler(1, 5)), NOW)
    assert replicas_apply(p) == {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        # the annotation says whose replicas these are, so their ownership is released once it is gone
        "metadata": {
            "name": "c-default",
            "namespace": "ns",
            "annotations": {"kubernetes.dask.org/autoscaled-by": make_autoscaler()["metadata"]["name"]},
        },
        "spec": {"worker": {"replicas": 5}},
    }
    assert cooldown_apply(p) is not None
    annotations = cooldown_apply(p)["metadata"]["annotations"]
    assert float(annotations["kubernetes.dask.org/cooldown-until"]) == NOW + COOLDOWN_SECONDS
    assert p.status is not None
    assert p.status["desiredWorkers"] == 5 and p.status["lastScaleTime"] == rfc3339(NOW)
    assert [(e.reason, e.message) for e in p.events] == [
        ("ScaledUp", "Scaled c-default from 1 to 5 workers (the scheduler asks for 7; bounds 1..5).")
    ]
    assert condition(p, "Ready")["status"] == "True"
    assert condition(p, "Progressing")["reason"] == "CoolingDown"
    assert p.requeue_after == POLL_SECONDS


def test_scale_down_is_damped() -> None:
    p = plan_autoscaler(observe(current=8, target=1), NOW)
    assert replicas(p) == 6
    assert [e.reason for e in p.events] == ["ScaledDown"]


def test_no_change_writes_nothing_but_status() -> None:
    p = plan_autoscaler(observe(current=3, target=3), NOW)
    assert (replicas_apply(p), cooldown_apply(p)) == (None, None)
    assert p.status is not None and p.status["desiredWorkers"] == 3 and "lastScaleTime" not in p.status
    assert condition(p, "Progressing")["reason"] == "Stable"
    assert p.requeue_after == POLL_SECONDS
    assert p.events == ()


def test_cooldown_blocks_changes_and_wakes_when_it_ends() -> None:
    until = NOW + 3.0
    obs = observe(current=1, target=9, autoscaler=make_autoscaler(cooldown=until))
    p = plan_autoscaler(obs, NOW)
    assert (replicas_apply(p), cooldown_apply(p)) == (None, None)
    assert p.requeue_after == pytest.approx(3.0)
    assert condition(p, "Progressing")["reason"] == "CoolingDown"
    # once it has passed, the change happens
    assert replicas(plan_autoscaler(obs, until + 0.1)) == 9


def test_an_expired_cooldown_does_not_block() -> None:
    p = plan_autoscaler(observe(current=1, target=4, autoscaler=make_autoscaler(cooldown=NOW - 1)), NOW)
    assert replicas(p) == 4


def test_bounds_edited_take_effect_on_the_next_tick() -> None:
    p = plan_autoscaler(observe(current=5, target=5, autoscaler=make_autoscaler(1, 4)), NOW)
    assert replicas(p) == 4


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"cluster": None}, "ClusterNotFound"),
        (
            {"cluster": {**CLUSTER, "metadata": {**CLUSTER["metadata"], "deletionTimestamp": "x"}}},
            "ClusterNotFound",
        ),
        ({"group": None}, "WorkerGroupNotFound"),
        ({"scheduler_pods": []}, "SchedulerNotReady"),
        ({"scheduler_pods": [scheduler_pod(ready=False)]}, "SchedulerNotReady"),
        ({"scheduler_pods": [scheduler_pod(), scheduler_pod(name="c-scheduler-2")]}, "SchedulerNotReady"),
        ({"service": None}, "SchedulerNotReady"),
    ],
)
def test_no_change_without_a_usable_scheduler(changes: dict[str, Any], reason: str) -> None:
    p = plan_autoscaler(observe(current=1, target=9, **changes), NOW)
    assert (replicas_apply(p), cooldown_apply(p), (p.question is Question.DEMAND)) == (
        None,
        None,
        False,
    )
    assert condition(p, "Ready") | {"lastTransitionTime": None} == condition(p, "Ready") | {
        "lastTransitionTime": None,
        "status": "False",
        "reason": reason,
    }
    assert condition(p, "Degraded")["status"] == "False"
    assert p.requeue_after == POLL_SECONDS


def test_a_terminating_old_scheduler_next_to_the_ready_one_is_ignored() -> None:
    obs = observe(
        current=1, target=2, scheduler_pods=[scheduler_pod(name="old", terminating=True), scheduler_pod()]
    )
    assert replicas(plan_autoscaler(obs, NOW)) == 2


def test_the_scheduler_is_asked_only_once_it_is_ready() -> None:
    p = plan_autoscaler(observe(scheduler=None), NOW)
    assert (p.question is Question.DEMAND) and p.status is None and replicas_apply(p) is None


def test_unreachable_scheduler_changes_nothing_and_is_degraded_with_a_warning() -> None:
    p = plan_autoscaler(observe(current=1, target=None, error="connection refused"), NOW)
    assert (replicas_apply(p), cooldown_apply(p)) == (None, None)
    degraded = condition(p, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "SchedulerUnreachable")
    assert "connection refused" in degraded["message"]
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "SchedulerUnreachable")]
    # keeps what it last requested
    previous = {"desiredWorkers": 4, "lastScaleTime": "2023-11-14T22:00:00Z"}
    p = plan_autoscaler(observe(target=None, autoscaler=make_autoscaler(status=previous)), NOW)
    assert p.status is not None
    assert (p.status["desiredWorkers"], p.status["lastScaleTime"]) == (4, "2023-11-14T22:00:00Z")


def test_adopted_by_its_cluster_once() -> None:
    p = plan_autoscaler(observe(), NOW)
    assert adopt(p) is not None
    (ref,) = adopt(p)["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"], ref["blockOwnerDeletion"]) == (
        "DaskCluster",
        "c",
        "c-uid",
        True,
        True,
    )
    adopted = make_autoscaler()
    adopted["metadata"]["ownerReferences"] = [ref]
    assert adopt(plan_autoscaler(observe(autoscaler=adopted), NOW)) is None
    # also while the scheduler is not ready yet, but never without a cluster
    assert adopt(plan_autoscaler(observe(scheduler_pods=[]), NOW)) is not None
    assert adopt(plan_autoscaler(observe(cluster=None), NOW)) is None


def test_steady_state_status_is_stable() -> None:
    first = plan_autoscaler(observe(current=1, target=5), NOW)
    assert first.status is not None
    cooled = make_autoscaler(cooldown=NOW + COOLDOWN_SECONDS, status=first.status)
    during = plan_autoscaler(observe(current=5, target=1, autoscaler=cooled), NOW + 5)
    assert during.status == first.status and during.events == ()
    after = plan_autoscaler(observe(current=5, target=5, autoscaler=cooled), NOW + 20)
    assert after.status is not None and after.status["desiredWorkers"] == 5
    assert after.status["lastScaleTime"] == rfc3339(NOW)
    again = plan_autoscaler(
        observe(current=5, target=5, autoscaler=make_autoscaler(cooldown=NOW + 15, status=after.status)),
        NOW + 30,
    )
    assert again.status == after.status and again.events == ()


# -- per group, by demand (the scheduler's demand extension answers) -----------------------------------------


def worker_group(name: str, replicas: int, resources: str = "") -> dict[str, Any]:
    args = ["dask", "worker", *(["--resources", resources] if resources else [])]
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": {"name": name, "namespace": "ns", "uid": f"{name}-uid"},
        "spec": {
            "cluster": "c",
            "worker": {"replicas": replicas, "spec": {"containers": [{"name": "worker", "args": args}]}},
        },
    }


def by_demand(
    *needs: tuple[dict[str, float], int, float],
    cpu: int = 1,
    gpu: int = 0,
    autoscaler: dict[str, Any] | None = None,
) -> AutoscalerObservation:
    """A cluster with a CPU group `c-default` and a GPU group `c-gpu` (GPU=1); the autoscaler scales c-gpu."""
    groups = [worker_group("c-default", cpu), worker_group("c-gpu", gpu, "GPU=1")]
    report = SchedulerDemand(tuple(Need(restrictions(r), n, sec) for r, n, sec in needs))
    if autoscaler is None:
        built = DaskAutoscalerBuilder("ns", "a", "c").with_bounds(0, 3).with_group("c-gpu").build()
        autoscaler = built
    target = next(
        g for g in groups if g["metadata"]["name"] == autoscaler["spec"].get("workerGroup", "c-default")
    )
    return observe(
        autoscaler=autoscaler, group=target, groups=groups, scheduler=SchedulerTarget(None, demand=report)
    )


def test_gpu_tasks_grow_the_gpu_group_from_zero_and_plain_tasks_never_do() -> None:
    p = plan_autoscaler(by_demand(({"GPU": 1}, 40, 20.0), ({}, 500, 250.0)), NOW)
    assert replicas_apply(p) is not None and replicas_apply(p)["metadata"]["name"] == "c-gpu"
    assert replicas(p) == 3  # 20 s of GPU work warrants 4; the maximum is 3
    assert condition(p, "DemandPerGroup")["status"] == "True"
    assert replicas(plan_autoscaler(by_demand(({}, 500, 250.0)), NOW)) is None  # plain work: not this group


def test_the_cpu_groups_autoscaler_ignores_gpu_tasks() -> None:
    cpu = DaskAutoscalerBuilder("ns", "a", "c").with_bounds(1, 6).build()
    p = plan_autoscaler(by_demand(({"GPU": 1}, 40, 20.0), cpu=1, autoscaler=cpu), NOW)
    assert replicas_apply(p) is None
    p = plan_autoscaler(by_demand(({"GPU": 1}, 40, 20.0), ({}, 2000, 1000.0), cpu=1, autoscaler=cpu), NOW)
    assert (replicas_apply(p)["metadata"]["name"], replicas(p)) == ("c-default", 6)


def test_a_burst_from_zero_warrants_every_pod_in_one_write_even_during_a_cooldown() -> None:
    zero = DaskAutoscalerBuilder("ns", "a", "c").with_bounds(0, 10).build()
    zero["metadata"]["annotations"] = {"kubernetes.dask.org/cooldown-until": repr(NOW + 10)}
    p = plan_autoscaler(by_demand(({}, 2000, 1000.0), cpu=0, autoscaler=zero), NOW)
    assert replicas(p) == 10


def test_scale_down_waits_for_the_delay_then_goes_to_the_warrant() -> None:
    idle = by_demand(gpu=3)
    first = plan_autoscaler(idle, NOW)
    assert replicas_apply(first) is None and first.status is not None
    assert first.status["scaleDownPendingSince"] == rfc3339(NOW)
    assert condition(first, "Progressing")["reason"] == "ScaleDownPending"
    assert first.requeue_after == DEMAND_POLL_SECONDS
    waited = dataclasses.replace(idle, autoscaler={**idle.autoscaler, "status": first.status})
    assert replicas_apply(plan_autoscaler(waited, NOW + SCALE_DOWN_DELAY_SECONDS - 1)) is None
    last = plan_autoscaler(waited, NOW + SCALE_DOWN_DELAY_SECONDS)
    assert replicas(last) == 0 and [e.reason for e in last.events] == ["ScaledDown"]
    assert last.status is not None and "scaleDownPendingSince" not in last.status


def test_work_returning_within_the_delay_cancels_the_scale_down() -> None:
    idle = by_demand(gpu=3)
    pending = plan_autoscaler(idle, NOW).status
    busy = by_demand(({"GPU": 1}, 30, 15.0), gpu=3)
    busy = dataclasses.replace(busy, autoscaler={**busy.autoscaler, "status": pending})
    p = plan_autoscaler(busy, NOW + 10)
    assert replicas_apply(p) is None and p.status is not None and "scaleDownPendingSince" not in p.status
    # a later idle period starts its own delay
    again = dataclasses.replace(idle, autoscaler={**idle.autoscaler, "status": p.status})
    assert plan_autoscaler(again, NOW + 31).status["scaleDownPendingSince"] == rfc3339(NOW + 31)


def test_the_intervals_are_configurable() -> None:
    quick = (
        DaskAutoscalerBuilder("ns", "a", "c")
        .with_bounds(0, 3)
        .with_group("c-gpu")
        .with_intervals(2, 5)
        .build()
    )
    idle = by_demand(gpu=2, autoscaler=quick)
    first = plan_autoscaler(idle, NOW)
    waited = dataclasses.replace(idle, autoscaler={**quick, "status": first.status})
    p = plan_autoscaler(waited, NOW + 5)
    assert replicas(p) == 0
    assert (
        float(cooldown_apply(p)["metadata"]["annotations"]["kubernetes.dask.org/cooldown-until"]) == NOW + 7
    )


def test_without_the_extension_only_the_default_group_scales_and_the_condition_says_so() -> None:
    gpu = by_demand(gpu=0)
    fallback = SchedulerTarget(4, why_no_demand="The scheduler has no demand route")
    p = plan_autoscaler(dataclasses.replace(gpu, scheduler=fallback), NOW)
    assert replicas_apply(p) is None
    assert (condition(p, "Ready")["reason"], condition(p, "DemandPerGroup")["reason"]) == (
        "NoDemandPerGroup",
        "AdaptiveTarget",
    )
    p = plan_autoscaler(observe(current=1, target=4, scheduler=fallback), NOW)
    assert replicas(p) == 4 and condition(p, "DemandPerGroup")["status"] == "False"


def test_a_group_of_another_cluster_is_never_scaled() -> None:
    obs = by_demand(({"GPU": 1}, 40, 20.0))
    foreign = {**obs.group, "spec": {**obs.group["spec"], "cluster": "other"}}
    p = plan_autoscaler(dataclasses.replace(obs, group=foreign), NOW)
    assert replicas_apply(p) is None and condition(p, "Ready")["reason"] == "WorkerGroupNotFound"


def test_tasks_no_group_can_run_are_named() -> None:
    p = plan_autoscaler(by_demand(({"TPU": 1}, 4, 2.0)), NOW)
    assert (
        "4 tasks ask for resources no worker group offers (TPU=1)"
        in condition(p, "DemandPerGroup")["message"]
    )


def test_the_last_workers_holding_data_are_not_scaled_to_zero() -> None:
    zero = DaskAutoscalerBuilder("ns", "a", "c").with_bounds(0, 10).with_intervals(0, 0).build()
    held = SchedulerDemand(workers=(Holding("c-default-worker-a", 1000),))
    obs = observe(
        autoscaler=zero,
        group=worker_group("c-default", 4),
        group_pods=[{"metadata": {"name": "c-default-worker-a"}}],
        groups=[worker_group("c-default", 4)],
        scheduler=SchedulerTarget(None, demand=held),
    )
    p = plan_autoscaler(obs, NOW)
    assert replicas(p) == 1
    assert "one worker stays" in condition(p, "DemandPerGroup")["message"]
    # once another group's worker can take the data, zero is fine
    shared = SchedulerDemand(workers=(*held.workers, Holding("c-gpu-worker-b", 0)))
    assert (
        replicas(
            plan_autoscaler(dataclasses.replace(obs, scheduler=SchedulerTarget(None, demand=shared)), NOW)
        )
        == 0
    )
