"""Desired state of a DaskCluster: scheduler Pod and Service, the default worker group, status, idleness.

Invariant: pure functions of the observed objects and `now`. A valid cluster always converges to exactly
one scheduler pod (none while Kueue holds it: see kueue.py) built from the current `spec.scheduler` (a changed template replaces it, with an Event),
one Service `<cluster>-scheduler` equal to `spec.scheduler.service`, and a DaskWorkerGroup `<cluster>-default`
carrying `spec.worker`; all owned by the cluster (controller=true, blockOwnerDeletion=true), no finalizers.
Its phase means what the reference's means (Created -> Pending -> Running once the scheduler Pod and Service
exist). A held cluster (`Hold`, from `hold_of`) keeps its object and its worker groups (so their replica
counts) and converges to no scheduler pod and no Service, phase Suspended; lifting the hold rebuilds both
from the unchanged spec. Held by test/unit/test_cluster.py.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dask_operator.api.v1.group import API_VERSION
from dask_operator.api.v1.names import (
    COMPONENT_SCHEDULER,
    COMPONENT_WORKER_GROUP,
    DASK_WORKER_GROUP,
    DEFAULT_CLUSTER_DOMAIN,
    ISTIO_SIDECAR_INJECT_VALUE,
    LABEL_CLUSTER_NAME,
    LABEL_COMPONENT,
    LABEL_ISTIO_SIDECAR_INJECT,
    LABEL_WORKER_GROUP_NAME,
    cluster_name_problems,
    default_worker_group_name,
    label_selector_string,
    scheduler_name,
    scheduler_service_name,
    worker_selector_labels,
)
from dask_operator.api.v1.types import (
    CONDITION_DEGRADED,
    CONDITION_PROGRESSING,
    CONDITION_READY,
    CONDITION_SUSPENDED,
    PHASE_CREATED,
    PHASE_ERROR,
    PHASE_PENDING,
    PHASE_RUNNING,
    PHASE_SUSPENDED,
)
from dask_operator.controller.contract.children import (
    TEMPLATE_HASH_LABEL,
    child_metadata,
    owned_child,
    template_hash,
    with_env_defaults,
)
from dask_operator.controller.contract.conditions import (
    CONDITION_SCHEDULER_API,
    Condition,
    EventSpec,
    condition_events,
    find_condition,
    merge_conditions,
)
from dask_operator.controller.contract.hold import Hold, held_conditions, hold_events, suspended_condition
from dask_operator.controller.contract.kueue import (
    Queueing,
    admission_events,
    admitted_condition,
    cluster_pod_sets,
    desired_workload,
    workload_steps,
)
from dask_operator.controller.contract.losses import (
    CONDITION_WORKER_LOST,
    REASON_WORKER_KILLED,
    scheduler_restarted,
)
from dask_operator.controller.contract.names import (
    PROPAGATED_REPLICAS_ANNOTATION,
    cluster_dashboard_address,
    cluster_scheduler_address,
)
from dask_operator.controller.contract.objects import Obj, rfc3339
from dask_operator.controller.contract.plans import (
    REPLICAS_FIELD_MANAGER,
    Apply,
    Cause,
    Create,
    Delete,
    Emit,
    Plan,
    Question,
    Ref,
    SetStatus,
    Step,
    earliest,
)
from dask_operator.controller.contract.pods import is_pod_finished, is_pod_ready, is_terminating, pod_failure
from dask_operator.controller.contract.scheduler_api import (
    HTTP_ROUTES_ENV,
    PRELOAD_ENV,
    preload_value,
    preload_wanted,
    routes_decision,
)

# Degraded reason while a scheduler deleted from outside the operator is replaced (its state is gone).
SCHEDULER_LOST = "SchedulerLost"


# -- children ------------------------------------------------------------------------------------------


# Dask removes a worker whose heartbeats stopped after `distributed.scheduler.worker-ttl` (5 minutes by
# default, and checked as often). A worker on a stopped or partitioned node sends nothing, and until then the
# scheduler believes its data still exists and keeps tasks waiting on it. One minute (so gone within 1-2
# minutes) is far above the heartbeat interval (0.5-2 s for up to 200 workers; Dask itself raises the TTL to
# 10 heartbeats on larger clusters) and above a stall of a busy worker's event loop. The user's value wins.
WORKER_TTL_ENV = "DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL"
DEFAULT_WORKER_TTL = "60s"


def desired_scheduler_pod(cluster: Mapping[str, Any], queue: Queueing | None = None) -> Obj:
    """The scheduler Pod: `spec.scheduler.spec` plus the HTTP API route (unless the user configured routes)
    a worker TTL of DEFAULT_WORKER_TTL (unless the user set one), and behind Kueue its admitted flavors'
    node selector and tolerations.

    Its template-hash label covers the pod spec only: label/annotation edits never restart a scheduler.
    """
    meta = cluster["metadata"]
    name = meta["name"]
    labels, annotations = child_metadata(
        cluster,
        cluster["spec"]["scheduler"].get("metadata"),
        {
            LABEL_CLUSTER_NAME: name,
            LABEL_COMPONENT: COMPONENT_SCHEDULER,
            LABEL_ISTIO_SIDECAR_INJECT: ISTIO_SIDECAR_INJECT_VALUE,
        },
    )
    spec = copy.deepcopy(cluster["spec"]["scheduler"]["spec"])
    spec["containers"] = [_with_api_route(c) for c in spec.get("containers") or []]
    if queue is not None:
        spec = queue.placement("scheduler").apply_to(spec)
    labels[TEMPLATE_HASH_LABEL] = template_hash(spec)
    # Added after hashing: an operator upgrade that brings this default never restarts a running scheduler
    # (a restart loses the cluster's state).
    spec["containers"] = with_env_defaults(spec["containers"], {WORKER_TTL_ENV: DEFAULT_WORKER_TTL})
    spec["containers"] = [_with_demand_extension(c) for c in spec["containers"]]
    return owned_child(cluster, "v1", "Pod", scheduler_name(name), (labels, annotations), spec)


def _with_api_route(container: Obj) -> Obj:
    decision = routes_decision(container)
    if decision.value is None:
        return {**container, "env": list(container.get("env") or [])}
    env = [e for e in container.get("env") or [] if e.get("name") != HTTP_ROUTES_ENV]
    return {**container, "env": [*env, {"name": HTTP_ROUTES_ENV, "value": decision.value}]}


def _with_demand_extension(container: Obj) -> Obj:
    """The per-group autoscaler's demand route, preloaded (after hashing, like the TTL: an operator upgrade
    that brings it never restarts a running scheduler; the next scheduler pod gets it)."""
    if not preload_wanted(container):
        return container
    return {**container, "env": [*container.get("env", []), {"name": PRELOAD_ENV, "value": preload_value()}]}


def scheduler_api_condition(cluster: Mapping[str, Any]) -> Condition:
    """Whether the operator reaches the scheduler through its HTTP API, and why (the routes decision of its
    first container, the one running `dask scheduler` in every upstream example)."""
    containers = cluster["spec"]["scheduler"]["spec"].get("containers") or [{}]
    decision = routes_decision(containers[0])
    return Condition(CONDITION_SCHEDULER_API, decision.http_api, decision.reason, decision.message)


def desired_scheduler_service(cluster: Mapping[str, Any]) -> Obj:
    """The scheduler Service: `spec.scheduler.service` verbatim (selector and ports are the user's)."""
    meta = cluster["metadata"]
    labels, annotations = child_metadata(
        cluster,
        cluster["spec"]["scheduler"].get("metadata"),
        {LABEL_CLUSTER_NAME: meta["name"], LABEL_COMPONENT: COMPONENT_SCHEDULER},
    )
    return owned_child(
        cluster,
        "v1",
        "Service",
        scheduler_service_name(meta["name"]),
        (labels, annotations),
        copy.deepcopy(cluster["spec"]["scheduler"]["service"]),
    )


def desired_default_group(cluster: Mapping[str, Any]) -> Obj:
    """`<cluster>-default` with the cluster's whole `spec.worker` except `replicas` (see below)."""
    meta = cluster["metadata"]
    worker = cluster["spec"]["worker"]
    labels, annotations = child_metadata(
        cluster,
        worker.get("metadata"),
        {LABEL_CLUSTER_NAME: meta["name"], LABEL_COMPONENT: COMPONENT_WORKER_GROUP},
    )
    group_worker = {k: copy.deepcopy(v) for k, v in worker.items() if k != "replicas"}
    return owned_child(
        cluster,
        API_VERSION,
        DASK_WORKER_GROUP.kind,
        default_worker_group_name(meta["name"]),
        (labels, annotations),
        {"cluster": meta["name"], "worker": group_worker},
    )


def default_group_replicas(cluster: Mapping[str, Any], default_group: Mapping[str, Any] | None) -> Obj | None:
    """The replicas write for `<cluster>-default` (its own field manager), or None when already propagated."""
    replicas = int(cluster["spec"]["worker"].get("replicas", 1))
    # Executed after the main apply, which creates a missing group (its required fields come with it).
    annotations = (default_group or {}).get("metadata", {}).get("annotations") or {}
    propagated = annotations.get(PROPAGATED_REPLICAS_ANNOTATION)
    if propagated == str(replicas):
        return None
    meta = cluster["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": DASK_WORKER_GROUP.kind,
        "metadata": {
            "name": default_worker_group_name(meta["name"]),
            "namespace": meta["namespace"],
            "annotations": {PROPAGATED_REPLICAS_ANNOTATION: str(replicas)},
        },
        "spec": {"worker": {"replicas": replicas}},
    }


# -- the plan --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdleAnswer:
    """The scheduler's answer to Question.IDLE_SINCE: since when it is idle (its clock), if it answered."""

    idle_since: float | None
    reachable: bool


@dataclass(frozen=True)
class ClusterObservation:
    """What the cache shows about one DaskCluster (nothing else is read), and the scheduler's answer."""

    cluster: Obj
    scheduler_pods: Sequence[Obj] = ()  # pods the cluster controls with component=scheduler
    service: Obj | None = None
    groups: Sequence[Obj] = ()  # DaskWorkerGroups whose spec.cluster names this cluster
    worker_pods: Sequence[Obj] = ()  # worker pods labelled with this cluster's name
    idle: IdleAnswer | None = None  # None: not asked (yet)
    queue: Queueing | None = None  # None: not behind Kueue (no queue label)
    autoscalers: Sequence[Obj] = ()  # DaskAutoscalers naming this cluster (their maximum sizes the Workload)
    priority_classes: Mapping[str, Obj] = field(default_factory=dict)  # Kueue's, by name
    hold: Hold | None = None  # hold_of(cluster): held clusters run nothing


def plan_cluster(obs: ClusterObservation, now: float, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> Plan:
    """The default group and its replicas; the scheduler's Service and pod (none while Kueue holds the cluster);
    the Workload; the status and its Events; and, with spec.idleTimeout, the idle check (a question first)."""
    cluster = obs.cluster
    problems = cluster_name_problems(cluster["metadata"]["name"])
    if problems:
        return _invalid_plan(cluster, problems, now)
    group_steps = _default_group_steps(obs)
    if obs.hold is not None:
        # The group and its replica count stay (resume restores them); what runs goes.
        # suspended behind Kueue: no Workload, its quota given back once its pods are gone
        return _held_plan(obs, obs.hold, [*group_steps, *_cluster_workload_steps(obs, now, True)], now)
    scheduler = _scheduler_part(obs, now)
    lost = None
    if scheduler.pod is not None:
        lost = scheduler_lost(obs.scheduler_pods, scheduler.pod["metadata"]["labels"][TEMPLATE_HASH_LABEL])
    status = cluster_status(obs, scheduler.state, now, cluster_domain, lost)
    status_events, status_wake = _status_events(obs, status, bool(scheduler.steps), now)
    idle = _idle_steps(obs, scheduler.state, now)
    if idle is None:
        return Plan(question=Question.IDLE_SINCE)
    idle_steps, idle_events, idle_wake = idle
    steps = (
        Apply(desired_scheduler_service(cluster)),
        *group_steps,
        *scheduler.steps,
        *_cluster_workload_steps(obs, now),
        *idle_steps,
        SetStatus(status),
    )
    events = (*scheduler.events, *status_events, *idle_events)
    requeue = earliest(scheduler.requeue, status_wake, idle_wake)
    return Plan(steps=(*steps, *(Emit(e) for e in events)), requeue_after=requeue)


def _default_group_steps(obs: ClusterObservation) -> tuple[Step, ...]:
    """A new group is created without replicas (the main manager never owns them) and the replicas write
    follows in the next wave; until it lands, the group waits (workergroup.awaits_replicas), so the CRD's
    default of 1 never makes a throwaway worker. Two writes, as with the replicas in the first one, but no
    third to hand their ownership over."""
    cluster = obs.cluster
    name = default_worker_group_name(cluster["metadata"]["name"])
    default_group = next((g for g in obs.groups if g["metadata"]["name"] == name), None)
    replicas = default_group_replicas(cluster, default_group)
    group = Apply(desired_default_group(cluster))
    return (group,) if replicas is None else (group, Apply(replicas, REPLICAS_FIELD_MANAGER))


@dataclass(frozen=True)
class _SchedulerPart:
    """The scheduler pod as planned (None while Kueue holds the cluster), its writes, Events and state."""

    pod: Obj | None
    steps: tuple[Step, ...]
    events: tuple[EventSpec, ...]
    state: str
    requeue: float | None = None


def _scheduler_part(obs: ClusterObservation, now: float) -> _SchedulerPart:
    queue = obs.queue
    if queue is not None and queue.hold is not None:
        steps, events, state = _held_scheduler(obs, queue)
        going = queue.evicted and bool(obs.scheduler_pods or obs.worker_pods)
        # worker pods going away are not watched by the cluster
        return _SchedulerPart(None, tuple(steps), tuple(events), state, IDLE_POLL_SECONDS if going else None)
    pod = desired_scheduler_pod(obs.cluster, queue)
    steps, events, state = _scheduler_pod_changes(obs, pod, now)
    return _SchedulerPart(pod, tuple(steps), tuple(events), state)


def _cluster_workload_steps(obs: ClusterObservation, now: float, suspended: bool = False) -> list[Step]:
    queue = obs.queue
    if queue is None:
        return []
    pods_left = bool(obs.scheduler_pods or obs.worker_pods)
    ready = None if suspended else _pods_ready(obs)
    return workload_steps(_workload_of(obs), queue, pods_left, None, now, suspended, pods_ready=ready)


def _status_events(
    obs: ClusterObservation, status: Obj, pods_change: bool, now: float
) -> tuple[list[EventSpec], float | None]:
    """The Events the status change deserves, and when a restarted scheduler's Event is due."""
    previous = obs.cluster.get("status", {}).get("conditions")
    events = condition_events(previous, status["conditions"]) + hold_events(previous, status["conditions"])
    if obs.queue is not None:
        dropped = ""
        if pods_change or obs.worker_pods:
            dropped = (
                "Deleting the scheduler and worker pods: the data held in the cluster's memory is lost; it starts "
                "again, empty, when Kueue admits it again."
            )
        events += admission_events(previous, obs.queue, dropped)
    restarted = scheduler_restarted(obs.scheduler_pods, previous, now)
    return events + list(restarted.events), restarted.wake_in


def _idle_steps(
    obs: ClusterObservation, scheduler_state: str, now: float
) -> tuple[tuple[Step, ...], tuple[EventSpec, ...], float | None] | None:
    """With spec.idleTimeout: delete the cluster once its Ready scheduler says it has been idle for longer
    (steps, events, requeue); None: the scheduler must be asked first."""
    cluster = obs.cluster
    if not int(cluster.get("spec", {}).get("idleTimeout") or 0):
        return (), (), None
    if scheduler_state != "Ready":
        return (), (), IDLE_POLL_SECONDS
    if obs.idle is None:
        return None
    decision = idle_decision(cluster, obs.idle.idle_since, obs.idle.reachable, now)
    steps: tuple[Step, ...] = (Delete(Ref.of(cluster), Cause.IDLE_TIMEOUT),) if decision.delete else ()
    events = (decision.event,) if decision.event is not None else ()
    return steps, events, decision.requeue_after


def _scheduler_pod_changes(
    obs: ClusterObservation, pod: Obj, now: float
) -> tuple[list[Step], list[EventSpec], str]:
    """Create the scheduler pod when none exists; replace one from an old template or one that finished.

    Returns the deletes and creates, events and the scheduler's state: Ready, Starting, Replacing or Failing.
    """
    want_hash = pod["metadata"]["labels"][TEMPLATE_HASH_LABEL]
    present = list(obs.scheduler_pods)
    live = [p for p in present if not is_terminating(p)]
    steps: list[Step] = []
    events: list[EventSpec] = []
    state = "Starting"
    for p in live:
        pm = p["metadata"]
        if pm.get("labels", {}).get(TEMPLATE_HASH_LABEL) != want_hash:
            steps.append(Delete(Ref.of(p), Cause.TEMPLATE_CHANGED))
            events.append(
                EventSpec(
                    "Normal",
                    "SchedulerReplaced",
                    f"spec.scheduler changed: replacing scheduler pod {pm['name']} with one built from the "
                    "new template (the scheduler restarts; workers reconnect).",
                )
            )
            state = "Replacing"
        elif is_pod_finished(p):
            steps.append(Delete(Ref.of(p), Cause.POD_FINISHED))
            events.append(
                EventSpec(
                    "Warning",
                    "SchedulerRestarted",
                    f"Scheduler pod {pm['name']} stopped; starting a new one.",
                )
            )
            state = "Replacing"
        elif is_pod_ready(p):
            state = "Ready"
        elif pod_failure(p, now):
            state = "Failing"
    name_taken = any(p["metadata"]["name"] == pod["metadata"]["name"] for p in present)
    if not name_taken:
        steps.append(Create(pod))  # a terminating predecessor must go first: the name is fixed
    return steps, events, state


# Why Kubernetes is deleting a pod, from its DisruptionTarget condition (reason -> what a user recognises).
_DISRUPTIONS = {
    "EvictionByEvictionAPI": "was evicted (kubectl drain or the Eviction API)",
    "PreemptionByScheduler": "was preempted by a higher-priority pod",
    "DeletionByTaintManager": "was deleted because its node failed or was tainted NoExecute",
    "TerminationByKubelet": "was terminated by its node (node pressure or shutdown)",
}


def scheduler_lost(pods: Sequence[Obj], want_hash: str) -> str | None:
    """A sentence saying what it costs when someone other than the operator deletes the current scheduler
    pod (a drain, an eviction, `kubectl delete pod`); None otherwise.

    The operator itself deletes a scheduler pod only when it was built from an old template or has finished,
    so a terminating pod of the current template that was still running is someone else's doing.
    """
    for p in pods:
        if not is_terminating(p) or p["metadata"].get("labels", {}).get(TEMPLATE_HASH_LABEL) != want_hash:
            continue
        target = next(
            (
                c
                for c in p.get("status", {}).get("conditions") or []
                if c.get("type") == "DisruptionTarget" and c.get("status") == "True"
            ),
            None,
        )
        if target is None and is_pod_finished(p):
            continue
        how = _DISRUPTIONS.get(
            str((target or {}).get("reason")),
            "was deleted from outside the operator (e.g. kubectl delete pod)",
        )
        return (
            f"Scheduler pod {p['metadata']['name']} {how}: all of the scheduler's in-memory state is lost "
            "(every task, persisted result and scattered value the cluster held). A new scheduler starts "
            "empty, the workers reconnect to it, and clients must submit their work again."
        )
    return None


def _held_scheduler(obs: ClusterObservation, queue: Queueing) -> tuple[list[Step], list[EventSpec], str]:
    """Not admitted by Kueue, or evicted: no scheduler pod (a live one is deleted)."""
    steps: list[Step] = [Delete(Ref.of(p), Cause.HELD) for p in obs.scheduler_pods if not is_terminating(p)]
    return steps, [], "Held"


def cluster_status(
    obs: ClusterObservation,
    scheduler_state: str,
    now: float,
    cluster_domain: str,
    scheduler_lost: str | None = None,
) -> Obj:
    cluster = obs.cluster
    meta = cluster["metadata"]
    name = meta["name"]
    default_name = default_worker_group_name(name)
    service = obs.service
    service_ok = service is not None and not is_terminating(service)
    if service_ok and service is not None and service.get("spec", {}).get("type") == "LoadBalancer":
        service_ok = bool(service.get("status", {}).get("loadBalancer", {}).get("ingress"))
    scheduler_ready = scheduler_state == "Ready"

    # The reference's meaning: Running once the scheduler Pod and Service exist (a LoadBalancer with its
    # ingress); readiness and crash loops are the Ready and Degraded conditions' business.
    if service_ok and any(not is_terminating(p) for p in obs.scheduler_pods):
        phase = PHASE_RUNNING
    elif obs.service is None and not obs.scheduler_pods:
        phase = PHASE_CREATED
    else:
        phase = PHASE_PENDING

    live_workers = [p for p in obs.worker_pods if not is_terminating(p)]
    default_pods = [
        p
        for p in live_workers
        if p["metadata"].get("labels", {}).get(LABEL_WORKER_GROUP_NAME) == default_name
    ]
    desired_total = sum(int(g.get("spec", {}).get("worker", {}).get("replicas", 1)) for g in obs.groups)
    if not any(g["metadata"]["name"] == default_name for g in obs.groups):
        desired_total += int(cluster["spec"]["worker"].get("replicas", 1))
    ready_total = sum(1 for p in live_workers if is_pod_ready(p))

    conditions = [
        _ready_condition(phase, scheduler_ready, service_ok, ready_total, desired_total, len(live_workers)),
        _progressing_condition(scheduler_state, service_ok, len(live_workers), desired_total, obs.groups),
        _degraded_condition(obs, scheduler_state, now, scheduler_lost),
        scheduler_api_condition(cluster),
        scheduler_restarted(obs.scheduler_pods, cluster.get("status", {}).get("conditions"), now).condition,
        _group_condition(obs.groups, CONDITION_WORKER_LOST, REASON_WORKER_KILLED)
        or Condition(CONDITION_WORKER_LOST, False, "NoneLost", ""),
    ]
    if obs.queue is not None:
        hold = obs.queue.hold
        if hold is not None:
            conditions[:2] = [
                Condition(CONDITION_READY, False, hold.reason, hold.message),
                Condition(CONDITION_PROGRESSING, False, hold.reason, hold.message),
            ]
        conditions.append(admitted_condition(obs.queue))
    suspended = suspended_condition(obs.hold, cluster.get("status", {}).get("conditions"))
    if suspended is not None:
        conditions.append(suspended)
    status: Obj = {
        "observedGeneration": meta.get("generation", 0),
        "phase": phase,
        "replicas": len(default_pods),
        "readyReplicas": sum(1 for p in default_pods if is_pod_ready(p)),
        "selector": label_selector_string(worker_selector_labels(name, default_name)),
        "conditions": merge_conditions(
            cluster.get("status", {}).get("conditions"), conditions, rfc3339(now), meta.get("generation")
        ),
    }
    if service_ok:
        status["schedulerAddress"] = cluster_scheduler_address(cluster, cluster_domain)
        status["dashboardAddress"] = cluster_dashboard_address(cluster, cluster_domain)
    return status


def _pods_ready(obs: ClusterObservation) -> bool:
    """The scheduler and as many workers as the cluster's groups want are Ready (Kueue's PodsReady)."""

    def ready(pods: Sequence[Obj]) -> int:
        return sum(1 for p in pods if is_pod_ready(p) and not is_terminating(p))

    wanted = sum(int(((g.get("spec") or {}).get("worker") or {}).get("replicas", 1)) for g in obs.groups)
    return ready(obs.scheduler_pods) >= 1 and ready(obs.worker_pods) >= wanted


def _workload_of(obs: ClusterObservation) -> Obj:
    cluster = obs.cluster
    return desired_workload(
        cluster, cluster_pod_sets(cluster, obs.groups, obs.autoscalers), obs.priority_classes
    )


def _held_plan(obs: ClusterObservation, hold: Hold, steps: list[Step], now: float) -> Plan:
    """A held cluster: its scheduler pod and Service are deleted (its worker groups delete their pods);
    phase Suspended once nothing of it runs."""
    cluster = obs.cluster
    meta = cluster["metadata"]
    name = meta["name"]
    running: list[Obj] = [p for p in obs.scheduler_pods if not is_terminating(p)]
    if obs.service is not None and not is_terminating(obs.service):
        running.append(obs.service)
    steps += [Delete(Ref.of(o), Cause.HELD) for o in running]
    left = len(obs.scheduler_pods) + (obs.service is not None) + len(obs.worker_pods)
    default_name = default_worker_group_name(name)
    default_pods = [
        p
        for p in obs.worker_pods
        if not is_terminating(p)
        and p["metadata"].get("labels", {}).get(LABEL_WORKER_GROUP_NAME) == default_name
    ]
    removing = f"Removing the scheduler and workers: {left} objects left." if left else None
    conditions = [
        *held_conditions(hold, removing, "Nothing runs while held."),
        Condition(CONDITION_SUSPENDED, True, hold.reason, hold.message),
    ]
    previous = cluster.get("status", {}).get("conditions")
    merged = merge_conditions(previous, conditions, rfc3339(now), meta.get("generation"))
    status: Obj = {
        "observedGeneration": meta.get("generation", 0),
        "phase": PHASE_SUSPENDED,
        "replicas": len(default_pods),
        "readyReplicas": sum(1 for p in default_pods if is_pod_ready(p)),
        "selector": label_selector_string(worker_selector_labels(name, default_name)),
        "conditions": merged,
    }
    events = condition_events(previous, merged) + hold_events(previous, merged)
    return Plan(steps=(*steps, SetStatus(status), *(Emit(e) for e in events)))


def _ready_condition(
    phase: str, scheduler_ready: bool, service_ok: bool, ready: int, desired: int, live: int
) -> Condition:
    if not service_ok:
        return Condition(
            CONDITION_READY, False, "ServiceNotReady", "The scheduler Service is not available yet."
        )
    if not scheduler_ready:
        return Condition(CONDITION_READY, False, "SchedulerNotReady", "The scheduler pod is not ready.")
    if ready < desired or live != desired:
        return Condition(
            CONDITION_READY, False, "WorkersNotReady", f"{ready} of {desired} workers are ready."
        )
    return Condition(CONDITION_READY, True, "ClusterReady", f"Scheduler and {ready} workers are ready.")


def _progressing_condition(
    scheduler_state: str, service_ok: bool, live: int, desired: int, groups: Sequence[Obj]
) -> Condition:
    if scheduler_state == "Replacing":
        return Condition(
            CONDITION_PROGRESSING, True, "ReplacingScheduler", "The scheduler pod is being replaced."
        )
    if scheduler_state == "Starting" or not service_ok:
        return Condition(CONDITION_PROGRESSING, True, "StartingScheduler", "The scheduler is starting.")
    from_group = _group_condition(groups, CONDITION_PROGRESSING, "Workers")
    if from_group is not None:
        return from_group
    if live != desired:
        return Condition(CONDITION_PROGRESSING, True, "ScalingWorkers", f"{live} of {desired} workers exist.")
    return Condition(CONDITION_PROGRESSING, False, "Stable", "Scheduler and workers match the spec.")


def _degraded_condition(
    obs: ClusterObservation, scheduler_state: str, now: float, lost: str | None
) -> Condition:
    if scheduler_state == "Failing":
        failures = [f for f in (pod_failure(p, now) for p in obs.scheduler_pods) if f]
        return Condition(CONDITION_DEGRADED, True, "SchedulerFailing", failures[0] if failures else "")
    if lost is not None:
        return Condition(CONDITION_DEGRADED, True, SCHEDULER_LOST, lost)
    # Once seen, the loss stays on the status until the new scheduler is ready (the old pod may be gone).
    before = find_condition(obs.cluster.get("status", {}).get("conditions"), CONDITION_DEGRADED)
    if before and before.get("reason") == SCHEDULER_LOST and scheduler_state != "Ready":
        return Condition(CONDITION_DEGRADED, True, SCHEDULER_LOST, str(before.get("message") or ""))
    return _group_condition(obs.groups, CONDITION_DEGRADED, "WorkerGroupDegraded") or Condition(
        CONDITION_DEGRADED, False, "AsExpected", ""
    )


def _group_condition(groups: Sequence[Obj], kind: str, default_reason: str) -> Condition | None:
    """The first worker group whose condition `kind` is True, surfaced on the cluster with its name."""
    for group in groups:
        cond = find_condition(group.get("status", {}).get("conditions"), kind)
        if cond and cond.get("status") == "True":
            message = f"Worker group {group['metadata']['name']}: {cond.get('message', '')}"
            return Condition(kind, True, str(cond.get("reason") or default_reason), message)
    return None


def _invalid_plan(cluster: Obj, problems: list[str], now: float) -> Plan:
    meta = cluster["metadata"]
    message = (
        f"DaskCluster name {meta['name']!r} " + "; it ".join(problems) + ". Nothing was created: delete this "
        "DaskCluster and create it under a valid name."
    )
    conditions = [
        Condition(CONDITION_READY, False, "InvalidName", message),
        Condition(CONDITION_PROGRESSING, False, "InvalidName", message),
        Condition(CONDITION_DEGRADED, True, "InvalidName", message),
    ]
    previous = cluster.get("status", {}).get("conditions")
    merged = merge_conditions(previous, conditions, rfc3339(now), meta.get("generation"))
    status = {"observedGeneration": meta.get("generation", 0), "phase": PHASE_ERROR, "conditions": merged}
    return Plan(steps=(SetStatus(status), *(Emit(e) for e in condition_events(previous, merged))))


# -- idle timeout -----------------------------------------------------------------------------------------

IDLE_POLL_SECONDS = 5.0


@dataclass(frozen=True)
class IdleDecision:
    delete: bool
    requeue_after: float | None
    event: EventSpec | None = None


def idle_decision(
    cluster: Mapping[str, Any], idle_since: float | None, reachable: bool, now: float
) -> IdleDecision:
    """Delete the cluster once the scheduler says it has been idle for longer than `spec.idleTimeout`.

    `idle_since` is the scheduler's clock; an unreachable scheduler is never idle.
    """
    timeout = int(cluster.get("spec", {}).get("idleTimeout") or 0)
    if timeout <= 0:
        return IdleDecision(False, None)
    if not reachable or idle_since is None:
        return IdleDecision(False, IDLE_POLL_SECONDS)
    idle_for = now - idle_since
    if idle_for > timeout:
        return IdleDecision(
            True,
            None,
            EventSpec(
                "Normal",
                "IdleTimeout",
                f"The scheduler has been idle for {int(idle_for)} s (spec.idleTimeout is {timeout} s): "
                "deleting the DaskCluster.",
            ),
        )
    return IdleDecision(False, min(IDLE_POLL_SECONDS, max(timeout - idle_for, 0.5)))
