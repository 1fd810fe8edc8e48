"""Desired state of a DaskWorkerGroup: its worker Pods, how to get there gracefully, and its status.

Invariant: pure functions of the observed objects, the scheduler's worker list and `now`. A group converges
to exactly `spec.worker.replicas` live pods built from its current template. Worker names are derived from
(group UID, template hash, ordinal), so a restarted operator recomputes the same names and cannot duplicate
a worker. Removing a worker never loses data the scheduler can move: pods that never joined go first, then
only workers of this group are retired by name through the scheduler, and only the retired ones are deleted.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dask_operator.api.v1.group import GROUP
from dask_operator.api.v1.names import (
    DEFAULT_CLUSTER_DOMAIN,
    ISTIO_SIDECAR_INJECT_VALUE,
    LABEL_ISTIO_SIDECAR_INJECT,
    label_selector_string,
    worker_pod_name,
    worker_selector_labels,
)
from dask_operator.api.v1.types import CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY
from dask_operator.controller.cluster import cluster_scheduler_address
from dask_operator.controller.metadata import (
    TEMPLATE_HASH_LABEL,
    Condition,
    EventSpec,
    child_metadata,
    condition_events,
    find_condition,
    is_controlled_by,
    is_pod_finished,
    is_pod_ready,
    is_terminating,
    merge_conditions,
    owner_reference,
    pod_failure,
    recovery_deadline,
    template_hash,
    with_env_defaults,
)
from dask_operator.controller.plans import Obj, PodDeletion, parse_rfc3339, rfc3339
from dask_operator.controller.scheduler import DaskWorker

WORKER_NAME_ENV = "DASK_WORKER_NAME"
SCHEDULER_ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"

# On a DaskCluster: seconds a scale-down waits for an unreachable scheduler before deleting workers without
# retiring them (their in-memory data is lost; a Warning Event says so).
FORCE_SCALE_DOWN_ANNOTATION = f"{GROUP}/scale-down-force-timeout"
DEFAULT_FORCE_SCALE_DOWN_SECONDS = 300.0


@dataclass(frozen=True)
class GroupSettings:
    batch_size: int | None = None  # at most this many pods created per round (None: no limit)
    batch_delay: float = 0.0  # seconds between rounds
    force_timeout: float = DEFAULT_FORCE_SCALE_DOWN_SECONDS
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN


@dataclass(frozen=True)
class SchedulerView:
    """The scheduler's workers (all groups), or why they could not be listed (`workers` None)."""

    workers: tuple[DaskWorker, ...] | None
    error: str = ""


@dataclass(frozen=True)
class GroupObservation:
    group: Obj
    cluster: Obj | None
    pods: Sequence[Obj] = ()  # pods the group controls
    expected_present: frozenset[str] = frozenset()  # pod names created but not yet in the cache
    expected_gone: frozenset[str] = frozenset()  # pod UIDs deleted but still in the cache
    scheduler: SchedulerView | None = None  # None: not asked (yet)
    previous_conditions: Sequence[Mapping[str, Any]] | None = None  # defaults to the group's status


@dataclass(frozen=True)
class Retirement:
    """Retire these workers through the scheduler, then delete the pods of the ones it retired."""

    workers: tuple[DaskWorker, ...]
    pods: tuple[PodDeletion, ...]  # pods[i] runs workers[i]


@dataclass(frozen=True)
class GroupPlan:
    adopt: Obj | None = None
    create_pods: tuple[Obj, ...] = ()
    delete_pods: tuple[PodDeletion, ...] = ()
    retire: Retirement | None = None
    needs_scheduler: bool = False  # ask the scheduler for its workers and plan again
    status: Obj | None = None
    events: tuple[EventSpec, ...] = ()
    requeue_after: float | None = None
    notes: tuple[str, ...] = field(default=())  # what the plan does, for logs


# -- worker pods --------------------------------------------------------------------------------------------


def worker_template(group: Mapping[str, Any], cluster: Mapping[str, Any], cluster_domain: str) -> Obj:
    """The pod every worker of the group is made from, minus its name and DASK_WORKER_NAME."""
    gmeta = group["metadata"]
    cluster_name = group["spec"]["cluster"]
    worker = group["spec"]["worker"]
    labels, annotations = child_metadata(
        group,
        worker.get("metadata"),
        {
            **worker_selector_labels(cluster_name, gmeta["name"]),
            LABEL_ISTIO_SIDECAR_INJECT: ISTIO_SIDECAR_INJECT_VALUE,
        },
        fill_labels=[cluster.get("metadata", {}).get("labels")],
    )
    spec = copy.deepcopy(worker["spec"])
    spec["containers"] = with_env_defaults(
        spec.get("containers") or [],
        {SCHEDULER_ADDRESS_ENV: cluster_scheduler_address(cluster, cluster_domain)},
    )
    labels[TEMPLATE_HASH_LABEL] = template_hash(spec)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": gmeta["namespace"],
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(group)],
        },
        "spec": spec,
    }


def worker_name(group: Mapping[str, Any], hash_: str, ordinal: int) -> str:
    """`<group>-worker-<10 hex>`: stable for (group UID, template hash, ordinal)."""
    seed = f"{group['metadata']['uid']}/{hash_}/{ordinal}".encode()
    return worker_pod_name(group["metadata"]["name"], hashlib.sha256(seed).hexdigest()[:10])


def worker_pod(template: Mapping[str, Any], name: str) -> Obj:
    pod = copy.deepcopy(dict(template))
    pod["metadata"]["name"] = name
    pod["spec"]["containers"] = with_env_defaults(pod["spec"]["containers"], {WORKER_NAME_ENV: name})
    return pod


def new_worker_names(group: Mapping[str, Any], hash_: str, taken: set[str], count: int) -> list[str]:
    """The `count` lowest-ordinal names not taken by any pod (live, terminating or expected)."""
    names: list[str] = []
    ordinal = 0
    while len(names) < count:
        name = worker_name(group, hash_, ordinal)
        if name not in taken:
            names.append(name)
        ordinal += 1
    return names


def adoption(group: Mapping[str, Any], cluster: Mapping[str, Any]) -> Obj | None:
    """The owner reference that makes the cluster own this group, unless it (or another controller) does."""
    refs = group["metadata"].get("ownerReferences") or []
    if any(r.get("controller") for r in refs):
        return None
    return {
        "apiVersion": group["apiVersion"],
        "kind": group["kind"],
        "metadata": {
            "name": group["metadata"]["name"],
            "namespace": group["metadata"]["namespace"],
            "ownerReferences": [owner_reference(cluster)],
        },
    }


# -- classification -----------------------------------------------------------------------------------------


def _pod_hash(pod: Mapping[str, Any]) -> str | None:
    value = pod.get("metadata", {}).get("labels", {}).get(TEMPLATE_HASH_LABEL)
    return str(value) if value is not None else None


def _newest_first(pods: Sequence[Obj]) -> list[Obj]:
    return sorted(
        pods,
        key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]),
        reverse=True,
    )


def joined_worker(pod: Mapping[str, Any], workers: Sequence[DaskWorker]) -> DaskWorker | None:
    """The scheduler's entry for the worker in `pod`: by Dask name (= pod name), else by pod IP."""
    name = pod["metadata"]["name"]
    ip = pod.get("status", {}).get("podIP")
    for w in workers:
        if w.name == name:
            return w
    if ip:
        for w in workers:
            host = w.address.split("://", 1)[-1].rsplit(":", 1)[0]
            if host == ip:
                return w
    return None


def _deletion(pod: Mapping[str, Any], reason: str) -> PodDeletion:
    meta = pod["metadata"]
    return PodDeletion(meta["namespace"], meta["name"], meta["uid"], reason)


def _is_started(pod: Mapping[str, Any]) -> bool:
    """A pod whose containers have started at least once (it may have joined the scheduler)."""
    status = pod.get("status", {})
    if status.get("phase") not in (None, "Pending"):
        return True
    return any(
        (cs.get("state") or {}).get("running") or cs.get("restartCount")
        for cs in status.get("containerStatuses") or []
    )


# -- the plan --------------------------------------------------------------------------------------------------


def plan_group(obs: GroupObservation, now: float, settings: GroupSettings = GroupSettings()) -> GroupPlan:
    group = obs.group
    gmeta = group["metadata"]
    replicas = int(group["spec"]["worker"].get("replicas", 1))
    previous = obs.previous_conditions
    if previous is None:
        previous = group.get("status", {}).get("conditions")

    present = [p for p in obs.pods if p["metadata"].get("uid") not in obs.expected_gone]
    taken = {p["metadata"]["name"] for p in obs.pods} | set(obs.expected_present)
    observed_names = {p["metadata"]["name"] for p in obs.pods}
    unobserved = sorted(obs.expected_present - observed_names)
    live = [p for p in present if not is_terminating(p)]
    finished = [p for p in live if is_pod_finished(p)]
    live = [p for p in live if not is_pod_finished(p)]

    if obs.cluster is None:
        cond = [
            Condition(
                CONDITION_READY,
                False,
                "ClusterNotFound",
                f"DaskCluster {group['spec']['cluster']} does not exist.",
            ),
            Condition(
                CONDITION_PROGRESSING,
                True,
                "WaitingForCluster",
                f"Waiting for DaskCluster {group['spec']['cluster']} to be created in namespace {gmeta['namespace']}.",
            ),
            Condition(CONDITION_DEGRADED, False, "AsExpected", ""),
        ]
        status = _status(group, live, None, cond, previous, now)
        return GroupPlan(
            status=status, events=tuple(condition_events(previous, status["conditions"], ready_events=False))
        )

    cluster = obs.cluster
    template = worker_template(group, cluster, settings.cluster_domain)
    want = str(template["metadata"]["labels"][TEMPLATE_HASH_LABEL])
    current = [p for p in live if _pod_hash(p) == want]
    outdated = [p for p in live if _pod_hash(p) != want]
    total = len(live) + len(unobserved)
    surplus = total - replicas

    creates: list[Obj] = []
    deletions = [_deletion(p, "pod finished; replacing it") for p in finished]
    victims: list[Obj] = []  # pods to remove gracefully, in order of preference
    rolling = False  # victims are old-template pods being replaced, not a scale-down
    notes: list[str] = []
    requeue: float | None = None
    progressing = Condition(CONDITION_PROGRESSING, False, "Stable", f"{replicas} workers match the spec.")

    if surplus < 0:
        count = -surplus if settings.batch_size is None else min(-surplus, settings.batch_size)
        creates = [worker_pod(template, n) for n in new_worker_names(group, want, taken, count)]
        if count < -surplus:
            requeue = max(settings.batch_delay, 0.5)
        progressing = Condition(
            CONDITION_PROGRESSING, True, "ScalingUp", f"Creating workers: {total} of {replicas} exist."
        )
        notes.append(f"create {count}")
    elif outdated and surplus <= 1:
        progressing = Condition(
            CONDITION_PROGRESSING,
            True,
            "RollingUpdate",
            f"Replacing workers built from an old template: {len(current)} of {replicas} updated.",
        )
        unstarted_outdated = [p for p in outdated if not _is_started(p)]
        if unstarted_outdated:
            deletions += [_deletion(p, "old template, never started") for p in unstarted_outdated]
        elif unobserved or any(not is_pod_ready(p) for p in current):
            pass  # the surge pod must be ready before an old one goes
        elif surplus <= 0:
            creates = [worker_pod(template, n) for n in new_worker_names(group, want, taken, 1)]
            notes.append("roll: surge 1")
        else:
            victims = _newest_first(outdated)[:1]
            rolling = True
            notes.append("roll: retire 1")
    elif surplus > 0:
        progressing = Condition(
            CONDITION_PROGRESSING,
            True,
            "ScalingDown",
            f"Removing workers: {total} of {replicas} wanted exist.",
        )
        if unobserved:
            requeue = 1.0  # wait for the cache to show the pods just created before choosing any to remove
        else:
            unstarted = [p for p in live if not _is_started(p)]
            ordered_unstarted = _newest_first([p for p in unstarted if p in outdated]) + _newest_first(
                [p for p in unstarted if p in current]
            )
            first = ordered_unstarted[:surplus]
            deletions += [_deletion(p, "scale-down, never started") for p in first]
            rest = [p for p in live if p not in unstarted]
            victims = (
                _newest_first([p for p in rest if p in outdated])
                + _newest_first([p for p in rest if p in current])
            )[: surplus - len(first)]

    retire: Retirement | None = None
    needs_scheduler = False
    degraded = _failure_condition(live, now)
    recovery = recovery_deadline(live, now)
    if recovery is not None and degraded.status:
        requeue = recovery if requeue is None else min(requeue, recovery)
    events: list[EventSpec] = []
    if victims:
        if obs.scheduler is None:
            needs_scheduler = True
        elif obs.scheduler.workers is None:
            since = _unreachable_since(previous, now)
            waited = now - since
            if waited >= settings.force_timeout:
                deletions += [_deletion(p, "scale-down forced: scheduler unreachable") for p in victims]
                events.append(
                    EventSpec(
                        "Warning",
                        "ScaleDownForced",
                        f"The scheduler has been unreachable for {int(waited)} s (limit {int(settings.force_timeout)} s, "
                        f"annotation {FORCE_SCALE_DOWN_ANNOTATION} on the DaskCluster): deleting "
                        f"{', '.join(p['metadata']['name'] for p in victims)} without retiring them; data they held "
                        "in memory is lost.",
                    )
                )
            else:
                degraded = Condition(
                    CONDITION_DEGRADED,
                    True,
                    "SchedulerUnreachable",
                    f"Cannot reach the scheduler to retire workers gracefully ({obs.scheduler.error}); retrying, and "
                    f"forcing the scale-down after {int(settings.force_timeout)} s.",
                )
                progressing = Condition(
                    CONDITION_PROGRESSING, True, "WaitingForScheduler", "Scale-down waits for the scheduler."
                )
                requeue = min(settings.force_timeout - waited, min(30.0, max(2.0, waited / 2)))
        else:
            workers = obs.scheduler.workers
            joined = [(p, joined_worker(p, workers)) for p in victims]
            never = [p for p, w in joined if w is None]
            deletions += [_deletion(p, "scale-down, never joined the scheduler") for p in never]
            to_retire = [(p, w) for p, w in joined if w is not None]
            others = [p for p in live if p not in victims]
            if rolling and any(joined_worker(p, workers) is None for p in current):
                # The replacement must have joined the scheduler before an old worker's data can move to it;
                # joining is not a Kubernetes event, so look again shortly.
                requeue = 1.0 if requeue is None else min(requeue, 1.0)
            elif to_retire and len(to_retire) >= len(workers) and not others:
                # Scaling to zero: no worker remains (or is coming) to take the data, so retiring cannot succeed.
                deletions += [_deletion(p, "scale-down, last workers") for p, _ in to_retire]
            elif to_retire:
                retire = Retirement(
                    workers=tuple(w for _, w in to_retire if w is not None),
                    pods=tuple(_deletion(p, "retired by the scheduler") for p, _ in to_retire),
                )

    conditions = [
        _ready_condition(live, current, replicas, unobserved),
        progressing,
        degraded,
    ]
    status = _status(group, live, want, conditions, previous, now)
    # A group's readiness is reported by its cluster's Ready Event; a group only warns.
    events += condition_events(previous, status["conditions"], ready_events=False)
    return GroupPlan(
        adopt=adoption(group, cluster) if not is_controlled_by(group, cluster["metadata"]["uid"]) else None,
        create_pods=tuple(creates),
        delete_pods=tuple(deletions),
        retire=retire,
        needs_scheduler=needs_scheduler,
        status=status,
        events=tuple(events),
        requeue_after=requeue,
        notes=tuple(notes),
    )


def _unreachable_since(previous: Sequence[Mapping[str, Any]] | None, now: float) -> float:
    cond = find_condition(previous, CONDITION_DEGRADED)
    if cond and cond.get("status") == "True" and cond.get("reason") == "SchedulerUnreachable":
        since = parse_rfc3339(cond.get("lastTransitionTime"))
        if since is not None:
            return since
    return now


def _failure_condition(live: Sequence[Obj], now: float) -> Condition:
    failures = [f for f in (pod_failure(p, now) for p in live) if f]
    if failures:
        more = f" ({len(failures) - 1} more workers failing)" if len(failures) > 1 else ""
        return Condition(
            CONDITION_DEGRADED,
            True,
            "WorkerFailing",
            f"{failures[0]}{more}. Check the worker command and image in spec.worker.spec.",
        )
    return Condition(CONDITION_DEGRADED, False, "AsExpected", "")


def _ready_condition(
    live: Sequence[Obj], current: Sequence[Obj], replicas: int, unobserved: Sequence[str]
) -> Condition:
    ready = sum(1 for p in current if is_pod_ready(p))
    if ready >= replicas and len(live) == replicas and not unobserved:
        return Condition(CONDITION_READY, True, "WorkersReady", f"{ready} of {replicas} workers are ready.")
    return Condition(CONDITION_READY, False, "WorkersNotReady", f"{ready} of {replicas} workers are ready.")


def _status(
    group: Obj,
    live: Sequence[Obj],
    want: str | None,
    conditions: Sequence[Condition],
    previous: Sequence[Mapping[str, Any]] | None,
    now: float,
) -> Obj:
    meta = group["metadata"]
    return {
        "observedGeneration": meta.get("generation", 0),
        "replicas": len(live),
        "readyReplicas": sum(1 for p in live if is_pod_ready(p)),
        "updatedReplicas": sum(1 for p in live if want is not None and _pod_hash(p) == want),
        "selector": label_selector_string(worker_selector_labels(group["spec"]["cluster"], meta["name"])),
        "conditions": merge_conditions(previous, conditions, rfc3339(now), meta.get("generation")),
    }


def retired_deletions(retirement: Retirement, retired_names: set[str]) -> list[PodDeletion]:
    """The pods to delete after a retirement: exactly those whose workers the scheduler retired."""
    return [
        pod
        for worker, pod in zip(retirement.workers, retirement.pods, strict=True)
        if worker.name in retired_names
    ]
