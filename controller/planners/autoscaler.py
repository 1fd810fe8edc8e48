"""Desired state of a DaskAutoscaler: the replicas of one worker group of its cluster, and its status.

Invariant: pure functions of the observed objects, the scheduler's answer and `now`. Only the targeted
group's (`spec.workerGroup`, else `<cluster>-default`) `spec.worker.replicas` is ever written, and only when
the scheduler pod is Ready and answered; workers leave only through that group's own retirement, so an
autoscaler never retires another group's workers.
With the demand extension's report (contract/demand.py), the group's warrant counts only the tasks whose
resource restrictions route to it; a scale-up goes to the whole warrant (clamped to [minimum, maximum]) in
one write, at once; a scale-down waits until the warrant has stayed below the group's size for
`spec.scaleDownDelaySeconds` (default SCALE_DOWN_DELAY_SECONDS, the time kept in `status.scaleDownPendingSince`)
and `spec.cooldownSeconds` (default COOLDOWN_SECONDS) after the last change, then goes to the warrant, but
never to zero while the group's workers are the cluster's only ones and hold data (nothing could take it).
Without the report (the scheduler has no demand route), only the default group is scaled, from the
scheduler's adaptive target: scale-up takes one step, scale-down at most max(1, floor(r / 4)) workers per
step, and after a change nothing changes for the cooldown, a deadline kept in the
`kubernetes.dask.org/cooldown-until` annotation.

The cluster reconciler copies a DaskCluster's `spec.worker.replicas` onto its default group only when that
value changes (annotation `kubernetes.dask.org/propagated-replicas`), so it never undoes these writes; a
`kubectl scale` of the cluster still wins until the next tick, as in the reference.
Held by test/unit/test_autoscaler.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dask_operator.api.v1.group import API_VERSION
from dask_operator.api.v1.names import (
    ANNOTATION_AUTOSCALED_BY,
    ANNOTATION_COOLDOWN_UNTIL,
    COMPONENT_SCHEDULER,
    DASK_AUTOSCALER,
    DASK_WORKER_GROUP,
    LABEL_COMPONENT,
    autoscaled_group_name,
    default_worker_group_name,
)
from dask_operator.api.v1.types import CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY

CONDITION_DEMAND = (
    "DemandPerGroup"  # True: the scheduler reports its tasks' resources (the extension answers)
)
from dask_operator.controller.contract.children import adoption, is_controlled_by
from dask_operator.controller.contract.conditions import (
    Condition,
    EventSpec,
    condition_events,
    merge_conditions,
)
from dask_operator.controller.contract.demand import (
    GroupProfile,
    SchedulerDemand,
    data_floor,
    group_profile,
    unroutable,
    warranted_workers,
)
from dask_operator.controller.contract.objects import Obj, parse_rfc3339, rfc3339
from dask_operator.controller.contract.plans import (
    ADOPTION_FIELD_MANAGER,
    AUTOSCALER_FIELD_MANAGER,
    Apply,
    Emit,
    Plan,
    Question,
    SetStatus,
    Step,
)
from dask_operator.controller.contract.pods import is_pod_ready, is_terminating

POLL_SECONDS = 5.0  # how often an active autoscaler asks the scheduler (the reference's timer)
# By demand, more often: the report is a small JSON answer, and a burst waits for the next look.
DEMAND_POLL_SECONDS = 2.0
COOLDOWN_SECONDS = 15.0  # no change for this long after a change (by demand: no scale-down)
SCALE_DOWN_DELAY_SECONDS = 30.0  # by demand: the warrant stays below the size this long before a scale-down
SCALE_DOWN_FRACTION = 0.25  # at most this fraction of the workers (but at least one) go per step


def bounded_target(current: int, target: int, minimum: int, maximum: int) -> int:
    """The replicas to request: `target` clamped to [minimum, maximum]; a scale-down is damped to at most
    max(1, floor(current * 0.25)) workers, a scale-up is not."""
    desired = min(maximum, max(minimum, target))
    if desired < current:
        step = max(1, math.floor(current * SCALE_DOWN_FRACTION))
        desired = max(current - step, desired)
    return desired


def cooldown_until(autoscaler: Mapping[str, Any]) -> float | None:
    """The annotation's deadline (epoch seconds); None when absent or unreadable."""
    value = (autoscaler.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_COOLDOWN_UNTIL)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class SchedulerTarget:
    """The scheduler's answer: its demand report (`demand`), else its adaptive target (`workers`), else why
    neither could be had (`error`)."""

    workers: int | None
    error: str = ""
    demand: SchedulerDemand | None = None
    why_no_demand: str = ""


@dataclass(frozen=True)
class AutoscalerObservation:
    autoscaler: Obj
    cluster: Obj | None = None
    scheduler_pods: Sequence[Obj] = ()  # the cluster's scheduler pods
    service: Obj | None = None  # the cluster's scheduler Service
    group: Obj | None = None  # the group it scales
    group_pods: Sequence[Obj] = ()  # that group's pods (whose workers hold which data)
    groups: Sequence[Obj] = ()  # every worker group of the cluster (where each task's demand goes)
    scheduler: SchedulerTarget | None = None  # None: not asked (yet)


target_group_name = autoscaled_group_name


def _seconds(spec: Mapping[str, Any], field: str, default: float) -> float:
    value = spec.get(field)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def replicas_intent(group: Mapping[str, Any], replicas: int, autoscaler: str = "") -> Obj:
    """The autoscaler's write: the group's replicas, and which autoscaler owns them (so their ownership
    can be released once it is gone)."""
    meta = group["metadata"]
    metadata: Obj = {"name": meta["name"], "namespace": meta["namespace"]}
    if autoscaler:
        metadata["annotations"] = {ANNOTATION_AUTOSCALED_BY: autoscaler}
    return {
        "apiVersion": API_VERSION,
        "kind": DASK_WORKER_GROUP.kind,
        "metadata": metadata,
        "spec": {"worker": {"replicas": replicas}},
    }


def cooldown_intent(autoscaler: Mapping[str, Any], until: float) -> Obj:
    meta = autoscaler["metadata"]
    return {
        "apiVersion": autoscaler.get("apiVersion", API_VERSION),
        "kind": autoscaler.get("kind", DASK_AUTOSCALER.kind),
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "annotations": {ANNOTATION_COOLDOWN_UNTIL: repr(float(until))},
        },
    }


def _profiles(obs: AutoscalerObservation, group: Obj) -> list[GroupProfile]:
    """What each live group of the cluster offers tasks, the autoscaler's own group first."""
    name = target_group_name(obs.autoscaler)
    live = [g for g in obs.groups if not is_terminating(g) and g["metadata"]["name"] != name]
    return [group_profile(g) for g in [group, *live]]


def demand_warrant(obs: AutoscalerObservation, group: Obj, demand: SchedulerDemand) -> int:
    """The workers the tasks routed to the autoscaler's group warrant, before clamping: what the scheduler
    asks of that group (the `dask_operator_autoscaler_scheduler_target` gauge)."""
    return warranted_workers(demand, _profiles(obs, group), target_group_name(obs.autoscaler))


def plan_autoscaler(obs: AutoscalerObservation, now: float) -> Plan:
    """Wait for the cluster, its default group and one Ready scheduler; then ask the adaptive target and scale
    the default group toward it, within the bounds, at most once per cooldown."""
    autoscaler, cluster = obs.autoscaler, obs.cluster
    previous: Obj = dict(autoscaler.get("status") or {})
    if cluster is None or is_terminating(cluster):
        spec, namespace = autoscaler["spec"], autoscaler["metadata"]["namespace"]
        why = f"DaskCluster {spec['cluster']} does not exist in namespace {namespace}; waiting for it."
        ready = Condition(CONDITION_READY, False, "ClusterNotFound", why)
        return _plan(obs, previous, now, ready, _stable(), adopt=None)
    adopt = (
        adoption(autoscaler, cluster)
        if not is_controlled_by(autoscaler, cluster["metadata"]["uid"])
        else None
    )
    not_ready = _not_ready(obs)
    if not_ready is not None:
        return _plan(obs, previous, now, not_ready, _stable(), adopt=adopt)
    if obs.scheduler is None:
        return Plan(question=Question.DEMAND)
    assert obs.group is not None  # _not_ready said so
    if obs.scheduler.demand is not None:
        return _scale_by_demand(obs, obs.group, obs.scheduler.demand, adopt, previous, now)
    if obs.scheduler.workers is None:
        ready = Condition(CONDITION_READY, False, "SchedulerUnreachable", "The scheduler did not answer.")
        degraded = Condition(
            CONDITION_DEGRADED,
            True,
            "SchedulerUnreachable",
            f"Cannot get the adaptive target from the scheduler of {autoscaler['spec']['cluster']} "
            f"({obs.scheduler.error}); not autoscaling until it answers.",
        )
        return _plan(obs, previous, now, ready, _stable(), adopt=adopt, degraded=degraded)
    source = Condition(
        CONDITION_DEMAND,
        False,
        "AdaptiveTarget",
        f"{obs.scheduler.why_no_demand or 'The scheduler reports no demand per resource'}; only the default "
        "group can be scaled, from the scheduler's adaptive target for the whole cluster.",
    )
    if target_group_name(autoscaler) != default_worker_group_name(autoscaler["spec"]["cluster"]):
        ready = Condition(
            CONDITION_READY, False, "NoDemandPerGroup", f"Not autoscaling {target_group_name(autoscaler)}."
        )
        return _plan(obs, previous, now, ready, _stable(), adopt=adopt, source=source)
    return _scale(obs, obs.group, obs.scheduler.workers, adopt, previous, now, source)


def _not_ready(obs: AutoscalerObservation) -> Condition | None:
    """Ready=False while there is no group of this cluster to scale or no single Ready scheduler to ask."""
    group_name = target_group_name(obs.autoscaler)
    live = [p for p in obs.scheduler_pods if not is_terminating(p)]
    if obs.group is None:
        return Condition(CONDITION_READY, False, "WorkerGroupNotFound", f"{group_name} does not exist yet.")
    if (obs.group.get("spec") or {}).get("cluster") != obs.autoscaler["spec"]["cluster"]:
        return Condition(
            CONDITION_READY,
            False,
            "WorkerGroupNotFound",
            f"{group_name} belongs to another DaskCluster; an autoscaler scales only groups of its own cluster.",
        )
    if len(live) != 1 or not is_pod_ready(live[0]) or obs.service is None:
        # Several scheduler pods (a replacement under way) or none ready: the answer would be about the wrong one.
        return Condition(
            CONDITION_READY, False, "SchedulerNotReady", "The scheduler is not ready; not autoscaling."
        )
    return None


def _scale(
    obs: AutoscalerObservation,
    group: Obj,
    target: int,
    adopt: Obj | None,
    previous: Obj,
    now: float,
    source: Condition,
) -> Plan:
    """The bounded target, unless a cooldown holds; a change writes the replicas, then the next cooldown."""
    autoscaler = obs.autoscaler
    spec = autoscaler["spec"]
    minimum, maximum = int(spec["minimum"]), int(spec["maximum"])
    cooldown = _seconds(spec, "cooldownSeconds", COOLDOWN_SECONDS)
    group_name = default_worker_group_name(spec["cluster"])
    current = int(group.get("spec", {}).get("worker", {}).get("replicas", 1))
    desired = bounded_target(current, target, minimum, maximum)
    ready = Condition(
        CONDITION_READY, True, "Autoscaling", f"Scaling {group_name} between {minimum} and {maximum} workers."
    )
    until = cooldown_until(autoscaler) or 0.0
    if now < until:
        last = previous.get("desiredWorkers", current)
        progressing = _cooling_down(f"Last scaled to {last} workers", until)
        return _plan(obs, previous, now, ready, progressing, adopt=adopt, wake=until - now, source=source)
    if desired == current:
        return _plan(obs, previous, now, ready, _stable(), adopt=adopt, desired=desired, source=source)
    scale = _Scale(
        current, desired, f"the scheduler asks for {target}; bounds {minimum}..{maximum}", cooldown
    )
    return _scaled(
        obs, group, previous, now, ready, adopt, source, scale, max(0.5, min(POLL_SECONDS, cooldown))
    )


def _scale_by_demand(
    obs: AutoscalerObservation,
    group: Obj,
    demand: SchedulerDemand,
    adopt: Obj | None,
    previous: Obj,
    now: float,
) -> Plan:
    """The group's warrant, clamped: up at once; down once it has stayed lower for the delay and the
    cooldown after the last change has passed. A change writes the replicas, then the cooldown."""
    autoscaler = obs.autoscaler
    spec = autoscaler["spec"]
    minimum, maximum = int(spec["minimum"]), int(spec["maximum"])
    cooldown = _seconds(spec, "cooldownSeconds", COOLDOWN_SECONDS)
    delay = _seconds(spec, "scaleDownDelaySeconds", SCALE_DOWN_DELAY_SECONDS)
    group_name = target_group_name(autoscaler)
    profiles = _profiles(obs, group)
    warrant = warranted_workers(demand, profiles, group_name)
    current = int(group.get("spec", {}).get("worker", {}).get("replicas", 1))
    floor = data_floor(demand, {p["metadata"]["name"] for p in obs.group_pods})
    desired = min(maximum, max(minimum, warrant, floor if current > 0 else 0))
    lost = unroutable(demand, profiles)
    source = Condition(
        CONDITION_DEMAND,
        True,
        "SchedulerExtension",
        f"The tasks whose resources go to {group_name} warrant {warrant} workers"
        + (
            f"; {sum(n.tasks for n in lost)} tasks ask for resources no worker group offers "
            f"({', '.join(sorted({_resources_text(n.resources) for n in lost}))})"
            if lost
            else ""
        )
        + (
            "; one worker stays: it holds the cluster's only copy of its data"
            if floor and warrant < 1
            else ""
        )
        + ".",
    )
    ready = Condition(
        CONDITION_READY, True, "Autoscaling", f"Scaling {group_name} between {minimum} and {maximum} workers."
    )
    pending = _pending_since(previous)
    if desired == current:
        return _plan(obs, previous, now, ready, _stable(), adopt=adopt, desired=desired, source=source)
    if desired < current:
        since = pending if pending is not None else now
        at = max(since + delay, cooldown_until(autoscaler) or 0.0)
        if now < at:
            progressing = Condition(
                CONDITION_PROGRESSING,
                True,
                "ScaleDownPending",
                f"The tasks warrant {desired} of {current} workers; scaling down at {rfc3339(at)} unless more "
                "work arrives.",
            )
            return _plan(
                obs,
                previous,
                now,
                ready,
                progressing,
                adopt=adopt,
                wake=at - now,
                source=source,
                pending=since,
            )
    scale = _Scale(current, desired, f"its tasks warrant {warrant}; bounds {minimum}..{maximum}", cooldown)
    return _scaled(obs, group, previous, now, ready, adopt, source, scale, DEMAND_POLL_SECONDS)


@dataclass(frozen=True)
class _Scale:
    """A decided change of the group's replicas: from `current` to `desired`, `why`, then `cooldown` seconds
    without another."""

    current: int
    desired: int
    why: str
    cooldown: float


def _scaled(
    obs: AutoscalerObservation,
    group: Obj,
    previous: Obj,
    now: float,
    ready: Condition,
    adopt: Obj | None,
    source: Condition,
    scale: _Scale,
    requeue: float,
) -> Plan:
    """The writes of a scale decision (the group's replicas, then the cooldown: a lost cooldown delays nothing,
    a lost change would), its Event and the status that says so."""
    autoscaler = obs.autoscaler
    until = now + scale.cooldown
    event = EventSpec(
        "Normal",
        "ScaledUp" if scale.desired > scale.current else "ScaledDown",
        f"Scaled {group['metadata']['name']} from {scale.current} to {scale.desired} workers ({scale.why}).",
    )
    writes = [
        Apply(
            replicas_intent(group, scale.desired, autoscaler["metadata"]["name"]), AUTOSCALER_FIELD_MANAGER
        ),
        Apply(cooldown_intent(autoscaler, until), AUTOSCALER_FIELD_MANAGER),
    ]
    progressing = _cooling_down(f"Last scaled to {scale.desired} workers", until)
    plan = _plan(
        obs,
        previous,
        now,
        ready,
        progressing,
        adopt=adopt,
        desired=scale.desired,
        scaled_at=now,
        extra=[event],
        source=source,
    )
    return Plan(steps=(*writes, *plan.steps), requeue_after=requeue)


def _pending_since(status: Mapping[str, Any]) -> float | None:
    value = status.get("scaleDownPendingSince")
    return parse_rfc3339(value) if isinstance(value, str) else None


def _resources_text(resources: Sequence[tuple[str, float]]) -> str:
    return " ".join(f"{name}={amount:g}" for name, amount in resources)


def _cooling_down(last: str, until: float) -> Condition:
    return Condition(
        CONDITION_PROGRESSING,
        True,
        "CoolingDown",
        f"{last}; the next change may happen after {rfc3339(until)}.",
    )


def _stable() -> Condition:
    return Condition(CONDITION_PROGRESSING, False, "Stable", "")


def _plan(
    obs: AutoscalerObservation,
    previous: Obj,
    now: float,
    ready: Condition,
    progressing: Condition,
    *,
    adopt: Obj | None,
    degraded: Condition | None = None,
    desired: int | None = None,
    scaled_at: float | None = None,
    wake: float | None = None,
    extra: Sequence[EventSpec] = (),
    source: Condition | None = None,
    pending: float | None = None,
) -> Plan:
    meta = obs.autoscaler["metadata"]
    conditions = [ready, progressing, degraded or Condition(CONDITION_DEGRADED, False, "AsExpected", "")]
    if source is not None:
        conditions.append(source)
    status: Obj = {"observedGeneration": meta.get("generation", 0)}
    if desired is not None:
        status["desiredWorkers"] = desired
    elif "desiredWorkers" in previous:
        status["desiredWorkers"] = previous["desiredWorkers"]
    if scaled_at is not None:
        status["lastScaleTime"] = rfc3339(scaled_at)
    elif previous.get("lastScaleTime"):
        status["lastScaleTime"] = previous["lastScaleTime"]
    if pending is not None:
        status["scaleDownPendingSince"] = rfc3339(pending)
    status["conditions"] = merge_conditions(
        previous.get("conditions"), conditions, rfc3339(now), meta.get("generation")
    )
    events = [*extra, *condition_events(previous.get("conditions"), status["conditions"], ready_events=False)]
    poll = DEMAND_POLL_SECONDS if source is not None and source.status else POLL_SECONDS
    requeue = poll if wake is None else max(0.5, min(poll, wake))
    steps: list[Step] = [Apply(adopt, ADOPTION_FIELD_MANAGER)] if adopt is not None else []
    steps += [SetStatus(status), *(Emit(e) for e in events)]
    return Plan(steps=tuple(steps), requeue_after=requeue)


def scheduler_pods_of(pods: Sequence[Obj]) -> list[Obj]:
    """The scheduler pods among a cluster's pods."""
    return [p for p in pods if p["metadata"].get("labels", {}).get(LABEL_COMPONENT) == COMPONENT_SCHEDULER]
