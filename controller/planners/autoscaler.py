"""Desired state of a DaskAutoscaler: the replicas of its cluster's default worker group, and its status.

Invariant: pure functions of the observed objects, the scheduler's adaptive target and `now`. Only
`<cluster>-default`'s `spec.worker.replicas` is ever written, and only when the scheduler
pod is Ready and answered. The scheduler's target is clamped to [minimum, maximum]; scale-up takes
one step, scale-down at most max(1, floor(r / 4)) workers per step; after a change nothing changes
for COOLDOWN_SECONDS, a deadline kept in the `kubernetes.dask.org/cooldown-until` annotation.

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
    default_worker_group_name,
)
from dask_operator.api.v1.types import CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY
from dask_operator.controller.contract.children import adoption, is_controlled_by
from dask_operator.controller.contract.conditions import (
    Condition,
    EventSpec,
    condition_events,
    merge_conditions,
)
from dask_operator.controller.contract.objects import Obj, rfc3339
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
COOLDOWN_SECONDS = 15.0  # no change for this long after a change
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
    """The scheduler's adaptive target, or why it could not be had (`workers` None)."""

    workers: int | None
    error: str = ""


@dataclass(frozen=True)
class AutoscalerObservation:
    autoscaler: Obj
    cluster: Obj | None = None
    scheduler_pods: Sequence[Obj] = ()  # the cluster's scheduler pods
    service: Obj | None = None  # the cluster's scheduler Service
    default_group: Obj | None = None
    scheduler: SchedulerTarget | None = None  # None: not asked (yet)


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
        return Plan(question=Question.ADAPTIVE_TARGET)
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
    assert obs.default_group is not None  # _not_ready said so
    return _scale(obs, obs.default_group, obs.scheduler.workers, adopt, previous, now)


def _not_ready(obs: AutoscalerObservation) -> Condition | None:
    """Ready=False while there is no default group to scale or no single Ready scheduler to ask."""
    group_name = default_worker_group_name(obs.autoscaler["spec"]["cluster"])
    live = [p for p in obs.scheduler_pods if not is_terminating(p)]
    if obs.default_group is None:
        return Condition(CONDITION_READY, False, "WorkerGroupNotFound", f"{group_name} does not exist yet.")
    if len(live) != 1 or not is_pod_ready(live[0]) or obs.service is None:
        # Several scheduler pods (a replacement under way) or none ready: the answer would be about the wrong one.
        return Condition(
            CONDITION_READY, False, "SchedulerNotReady", "The scheduler is not ready; not autoscaling."
        )
    return None


def _scale(
    obs: AutoscalerObservation, group: Obj, target: int, adopt: Obj | None, previous: Obj, now: float
) -> Plan:
    """The bounded target, unless a cooldown holds; a change writes the replicas, then the next cooldown."""
    autoscaler = obs.autoscaler
    meta, spec = autoscaler["metadata"], autoscaler["spec"]
    minimum, maximum = int(spec["minimum"]), int(spec["maximum"])
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
        return _plan(obs, previous, now, ready, progressing, adopt=adopt, wake=until - now)
    if desired == current:
        return _plan(obs, previous, now, ready, _stable(), adopt=adopt, desired=desired)
    until = now + COOLDOWN_SECONDS
    event = EventSpec(
        "Normal",
        "ScaledUp" if desired > current else "ScaledDown",
        f"Scaled {group_name} from {current} to {desired} workers (the scheduler asks for {target}; "
        f"bounds {minimum}..{maximum}).",
    )
    # The replicas before the cooldown: a lost cooldown delays nothing, a lost change would.
    writes = [
        Apply(replicas_intent(group, desired, meta["name"]), AUTOSCALER_FIELD_MANAGER),
        Apply(cooldown_intent(autoscaler, until), AUTOSCALER_FIELD_MANAGER),
    ]
    progressing = _cooling_down(f"Last scaled to {desired} workers", until)
    plan = _plan(
        obs, previous, now, ready, progressing, adopt=adopt, desired=desired, scaled_at=now, extra=[event]
    )
    return Plan(steps=(*writes, *plan.steps), requeue_after=min(POLL_SECONDS, COOLDOWN_SECONDS))


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
) -> Plan:
    meta = obs.autoscaler["metadata"]
    conditions = [ready, progressing, degraded or Condition(CONDITION_DEGRADED, False, "AsExpected", "")]
    status: Obj = {"observedGeneration": meta.get("generation", 0)}
    if desired is not None:
        status["desiredWorkers"] = desired
    elif "desiredWorkers" in previous:
        status["desiredWorkers"] = previous["desiredWorkers"]
    if scaled_at is not None:
        status["lastScaleTime"] = rfc3339(scaled_at)
    elif previous.get("lastScaleTime"):
        status["lastScaleTime"] = previous["lastScaleTime"]
    status["conditions"] = merge_conditions(
        previous.get("conditions"), conditions, rfc3339(now), meta.get("generation")
    )
    events = [*extra, *condition_events(previous.get("conditions"), status["conditions"], ready_events=False)]
    requeue = POLL_SECONDS if wake is None else max(0.5, min(POLL_SECONDS, wake))
    steps: list[Step] = [Apply(adopt, ADOPTION_FIELD_MANAGER)] if adopt is not None else []
    steps += [SetStatus(status), *(Emit(e) for e in events)]
    return Plan(steps=tuple(steps), requeue_after=requeue)


def scheduler_pods_of(pods: Sequence[Obj]) -> list[Obj]:
    """The scheduler pods among a cluster's pods."""
    return [p for p in pods if p["metadata"].get("labels", {}).get(LABEL_COMPONENT) == COMPONENT_SCHEDULER]
