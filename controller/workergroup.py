"""Desired state of a DaskWorkerGroup: its worker Pods, how to get there gracefully, and its status.

Invariant: pure functions of the observed objects, the scheduler's worker list and `now`. A group converges
to exactly `spec.worker.replicas` live pods built from its current template. Worker names are derived from
(group UID, template hash, ordinal), so a restarted operator recomputes the same names and cannot duplicate
a worker. Removing a worker never loses data the scheduler can move: pods that never joined go first, then
only workers of this group are retired by name through the scheduler, and only the retired ones are deleted.
A group whose cluster is held (`GroupObservation.hold`) deletes all its pods and creates none, keeping
`spec.worker.replicas` for the resume. Held by test/unit/test_workergroup.py.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from dask_operator.controller.children import (
    TEMPLATE_HASH_LABEL,
    adoption,
    child_metadata,
    is_controlled_by,
    is_terminating,
    owner_reference,
    template_hash,
    with_env_defaults,
)
from dask_operator.controller.cluster import cluster_scheduler_address
from dask_operator.controller.conditions import (
    Condition,
    EventSpec,
    condition_events,
    find_condition,
    merge_conditions,
)
from dask_operator.controller.hold import Hold
from dask_operator.controller.kueue import Queueing, pod_set_name
from dask_operator.controller.objects import Obj, parse_rfc3339, rfc3339
from dask_operator.controller.plans import (
    ADOPTION_FIELD_MANAGER,
    Apply,
    Cause,
    Create,
    Delete,
    Emit,
    Plan,
    Question,
    Ref,
    Retire,
    RetiringPod,
    SetStatus,
    Step,
)
from dask_operator.controller.pods import is_pod_finished, is_pod_ready, pod_failure, recovery_deadline
from dask_operator.controller.scheduler_api import DaskWorker

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
    scheduler: SchedulerView | None = None  # None: not asked (yet)
    previous_conditions: Sequence[Mapping[str, Any]] | None = None  # defaults to the group's status
    queue: Queueing | None = None  # the cluster's place in Kueue; None: the cluster is not behind Kueue
    hold: Hold | None = None  # hold_of(its cluster): a held cluster's groups run no pod


# -- worker pods --------------------------------------------------------------------------------------------


def worker_template(
    group: Mapping[str, Any], cluster: Mapping[str, Any], cluster_domain: str, queue: Queueing | None = None
) -> Obj:
    """The pod every worker of the group is made from, minus its name and DASK_WORKER_NAME; behind Kueue, with
    the node selector and tolerations of the flavors admitted for the group's pod set."""
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
    if queue is not None:
        spec = queue.placement(pod_set_name(cluster_name, gmeta["name"])).apply_to(spec)
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


def workers_in_pod(pod: Mapping[str, Any], workers: Sequence[DaskWorker]) -> tuple[DaskWorker, ...]:
    """Every worker the scheduler knows that runs in `pod`, and only those.

    By name first: workers are named after their pod (`--name $(DASK_WORKER_NAME)`), and `--nworkers N`
    appends `-0..-N-1`. By pod IP only when no worker carries the pod's name and the IP is the pod's own
    (never with hostNetwork, where every pod of the node shares it, possibly another group's).
    """
    name = pod["metadata"]["name"]
    named = tuple(w for w in workers if w.name == name or _numbered_after(w.name, name))
    if named:
        return named
    ip = pod.get("status", {}).get("podIP")
    if not ip or pod.get("spec", {}).get("hostNetwork"):
        return ()
    # A worker named like a worker pod belongs to that pod, even on this IP: a deleted pod's worker the
    # scheduler still lists may hold the IP this new pod was just given.
    return tuple(
        w
        for w in workers
        if w.address.split("://", 1)[-1].rsplit(":", 1)[0] == ip and not _POD_WORKER_NAME.match(w.name)
    )


_POD_WORKER_NAME = re.compile(r".+-worker-[0-9a-f]{10}(-[0-9]+)?$")  # worker_name(), maybe with -N


def _numbered_after(worker: str, pod: str) -> bool:
    prefix = pod + "-"
    return worker.startswith(prefix) and worker[len(prefix) :].isdigit()


def _deletion(pod: Obj, cause: Cause) -> Delete:
    return Delete(Ref.of(pod), cause)


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


def plan_group(obs: GroupObservation, now: float, settings: GroupSettings = GroupSettings()) -> Plan:
    """Observed group, pods and (if asked) scheduler -> the writes that move the group toward its spec."""
    group = obs.group
    previous = obs.previous_conditions
    if previous is None:
        previous = group.get("status", {}).get("conditions")
    pods = _PodSets.of(obs)
    if obs.cluster is None:
        return _waiting_for_cluster(group, pods, previous, now)
    if obs.hold is not None:
        return _held(group, obs.pods, obs.hold, previous, now)

    cluster = obs.cluster
    if obs.queue is not None and obs.queue.hold is not None:
        return _held(group, obs.pods, obs.queue.hold, previous, now)
    template = worker_template(group, cluster, settings.cluster_domain, obs.queue)
    draft = _Draft(group, template, pods, int(group["spec"]["worker"].get("replicas", 1)))
    draft.deletions += [_deletion(p, Cause.POD_FINISHED) for p in pods.finished]
    if draft.surplus < 0:
        _scale_up(draft, settings, now)
    elif draft.outdated and draft.surplus <= 1:
        _roll_one(draft)
    elif draft.surplus > 0:
        _choose_scale_down(draft)

    degraded = _failure_condition(pods.live, now)
    recovery = recovery_deadline(pods.live, now)
    if recovery is not None and degraded.status:
        draft.wake_in(recovery)
    if draft.victims:
        degraded = _remove_victims(draft, obs.scheduler, previous, now, settings) or degraded

    conditions = [
        _ready_condition(pods.live, draft.current, draft.replicas),
        draft.progressing,
        degraded,
    ]
    status = _status(group, pods.live, draft.want, conditions, previous, now)
    # A group's readiness is reported by its cluster's Ready Event; a group only warns.
    events = draft.events + condition_events(previous, status["conditions"], ready_events=False)
    if draft.needs_scheduler:
        return Plan(question=Question.WORKERS)
    adopt = adoption(group, cluster) if not is_controlled_by(group, cluster["metadata"]["uid"]) else None
    steps: list[Step] = [Apply(adopt, ADOPTION_FIELD_MANAGER)] if adopt is not None else []
    steps += draft.deletions
    steps += [Create(pod) for pod in draft.creates]
    if draft.retire is not None:
        steps.append(draft.retire)
    steps.append(SetStatus(status))
    steps += [Emit(e) for e in events]
    return Plan(steps=tuple(steps), requeue_after=draft.requeue, notes=tuple(draft.notes))


@dataclass(frozen=True)
class _PodSets:
    """The group's pods as the plan sees them."""

    live: list[Obj]  # not terminating, not finished, not deleted by us
    finished: list[Obj]  # Succeeded/Failed: replaced
    taken: set[str]  # names no new pod may use

    @classmethod
    def of(cls, obs: GroupObservation) -> _PodSets:
        running = [p for p in obs.pods if not is_terminating(p)]
        observed_names = {p["metadata"]["name"] for p in obs.pods}
        return cls(
            live=[p for p in running if not is_pod_finished(p)],
            finished=[p for p in running if is_pod_finished(p)],
            taken=observed_names,
        )


class _Draft:
    """The plan under construction (mutable only inside plan_group and its steps)."""

    def __init__(self, group: Obj, template: Obj, pods: _PodSets, replicas: int) -> None:
        self.group, self.template, self.pods, self.replicas = group, template, pods, replicas
        self.want = str(template["metadata"]["labels"][TEMPLATE_HASH_LABEL])
        self.current = [p for p in pods.live if _pod_hash(p) == self.want]
        self.outdated = [p for p in pods.live if _pod_hash(p) != self.want]
        self.total = len(pods.live)
        self.surplus = self.total - replicas
        self.creates: list[Obj] = []
        self.deletions: list[Delete] = []
        self.victims: list[Obj] = []  # pods to remove gracefully, in order of preference
        self.rolling = False  # the victims are old-template pods being replaced, not a scale-down
        self.retire: Retire | None = None
        self.needs_scheduler = False
        self.events: list[EventSpec] = []
        self.notes: list[str] = []
        self.requeue: float | None = None
        self.progressing = Condition(
            CONDITION_PROGRESSING, False, "Stable", f"{replicas} workers match the spec."
        )

    def wake_in(self, seconds: float) -> None:
        self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)

    def scaling_up(self, doing: str) -> None:
        self.progressing = Condition(
            CONDITION_PROGRESSING, True, "ScalingUp", f"{doing}: {self.total} of {self.replicas} exist."
        )

    def create(self, count: int) -> None:
        names = new_worker_names(self.group, self.want, self.pods.taken, count)
        self.creates += [worker_pod(self.template, n) for n in names]


def _waiting_for_cluster(
    group: Obj, pods: _PodSets, previous: Sequence[Mapping[str, Any]] | None, now: float
) -> Plan:
    cluster, namespace = group["spec"]["cluster"], group["metadata"]["namespace"]
    conditions = [
        Condition(CONDITION_READY, False, "ClusterNotFound", f"DaskCluster {cluster} does not exist."),
        Condition(
            CONDITION_PROGRESSING,
            True,
            "WaitingForCluster",
            f"Waiting for DaskCluster {cluster} to be created in namespace {namespace}.",
        ),
        Condition(CONDITION_DEGRADED, False, "AsExpected", ""),
    ]
    status = _status(group, pods.live, None, conditions, previous, now)
    events = condition_events(previous, status["conditions"], ready_events=False)
    return Plan(steps=(SetStatus(status), *(Emit(e) for e in events)))


def _held(
    group: Obj, pods: Sequence[Obj], hold: Hold, previous: Sequence[Mapping[str, Any]] | None, now: float
) -> Plan:
    """The cluster is held: every pod of the group goes at once, without retirement (the scheduler goes
    too, so no worker could take the data); spec.worker.replicas is kept for the resume."""
    going = [p for p in pods if not is_terminating(p)]
    if pods:
        progressing = Condition(
            CONDITION_PROGRESSING,
            True,
            "Suspending",
            f"Removing {len(pods)} worker pods: the cluster is held.",
        )
    else:
        progressing = Condition(CONDITION_PROGRESSING, False, hold.reason, "No worker runs while held.")
    conditions = [
        Condition(CONDITION_READY, False, hold.reason, hold.message),
        progressing,
        Condition(CONDITION_DEGRADED, False, "AsExpected", ""),
    ]
    status = _status(group, [], None, conditions, previous, now)
    events = condition_events(previous, status["conditions"], ready_events=False)
    steps: list[Step] = [_deletion(p, Cause.HELD) for p in going]
    return Plan(steps=(*steps, SetStatus(status), *(Emit(e) for e in events)))


def _scale_up(draft: _Draft, settings: GroupSettings, now: float) -> None:
    """Create the missing workers, at most `batch_size` per round and rounds `batch_delay` apart.

    The last round's time is read from the cluster (the newest pod's creationTimestamp; a round not yet in
    the cache counts as just now), not remembered, so pod events arriving between rounds and an operator
    restart both keep the pace.
    """
    missing = -draft.surplus
    if settings.batch_size is not None and settings.batch_delay > 0:
        wait = _until_next_round(draft.pods, settings.batch_delay, now)
        if wait > 0:
            draft.wake_in(wait)
            draft.scaling_up(f"Creating workers in rounds of {settings.batch_size}")
            draft.notes.append(f"next round in {wait:.1f} s")
            return
    count = missing if settings.batch_size is None else min(missing, settings.batch_size)
    draft.create(count)
    if count < missing:
        draft.wake_in(max(settings.batch_delay, 0.5))
    draft.scaling_up("Creating workers")
    draft.notes.append(f"create {count}")


def _until_next_round(pods: _PodSets, delay: float, now: float) -> float:
    """Seconds until the next creation round may start (0: now)."""
    created = [parse_rfc3339(p["metadata"].get("creationTimestamp")) for p in pods.live]
    latest = max((t for t in created if t is not None), default=None)
    return 0.0 if latest is None else max(0.0, latest + delay - now)


def _roll_one(draft: _Draft) -> None:
    """One step of a rolling update (max surge 1, max unavailable 0): old pods that never started go at once;
    otherwise add one new worker, and once every new worker is ready retire one old worker."""
    draft.progressing = Condition(
        CONDITION_PROGRESSING,
        True,
        "RollingUpdate",
        f"Replacing workers built from an old template: {len(draft.current)} of {draft.replicas} updated.",
    )
    unstarted = [p for p in draft.outdated if not _is_started(p)]
    if unstarted:
        draft.deletions += [_deletion(p, Cause.OLD_TEMPLATE_NEVER_STARTED) for p in unstarted]
    elif any(not is_pod_ready(p) for p in draft.current):
        pass  # the surge pod must be ready before an old one goes
    elif draft.surplus <= 0:
        draft.create(1)
        draft.notes.append("roll: surge 1")
    else:
        draft.victims = _newest_first(draft.outdated)[:1]
        draft.rolling = True
        draft.notes.append("roll: retire 1")


def _choose_scale_down(draft: _Draft) -> None:
    """Pods that never started go first; then the newest, old-template ones before current ones."""
    draft.progressing = Condition(
        CONDITION_PROGRESSING,
        True,
        "ScalingDown",
        f"Removing workers: {draft.total} of {draft.replicas} wanted exist.",
    )
    live, surplus = draft.pods.live, draft.surplus
    unstarted = [p for p in live if not _is_started(p)]
    first = (
        _newest_first([p for p in unstarted if p in draft.outdated])
        + _newest_first([p for p in unstarted if p in draft.current])
    )[:surplus]
    draft.deletions += [_deletion(p, Cause.NEVER_STARTED) for p in first]
    rest = [p for p in live if p not in unstarted]
    draft.victims = (
        _newest_first([p for p in rest if p in draft.outdated])
        + _newest_first([p for p in rest if p in draft.current])
    )[: surplus - len(first)]


def _remove_victims(
    draft: _Draft,
    scheduler: SchedulerView | None,
    previous: Sequence[Mapping[str, Any]] | None,
    now: float,
    settings: GroupSettings,
) -> Condition | None:
    """Never-joined victims are deleted; joined ones are retired through the scheduler. Without the scheduler's
    worker list, ask for it; with the scheduler unreachable, wait (Degraded, returned) until the force timeout."""
    victims = draft.victims
    if scheduler is None:
        draft.needs_scheduler = True
        return None
    if scheduler.workers is None:
        waited = now - _unreachable_since(previous, now)
        if waited < settings.force_timeout:
            draft.progressing = Condition(
                CONDITION_PROGRESSING, True, "WaitingForScheduler", "Scale-down waits for the scheduler."
            )
            draft.wake_in(min(settings.force_timeout - waited, min(30.0, max(2.0, waited / 2))))
            return Condition(
                CONDITION_DEGRADED,
                True,
                "SchedulerUnreachable",
                f"Cannot reach the scheduler to retire workers gracefully ({scheduler.error}); retrying, and "
                f"forcing the scale-down after {int(settings.force_timeout)} s.",
            )
        draft.deletions += [_deletion(p, Cause.FORCED) for p in victims]
        draft.events.append(
            EventSpec(
                "Warning",
                "ScaleDownForced",
                f"The scheduler has been unreachable for {int(waited)} s (limit {int(settings.force_timeout)} s, "
                f"annotation {FORCE_SCALE_DOWN_ANNOTATION} on the DaskCluster): deleting "
                f"{', '.join(p['metadata']['name'] for p in victims)} without retiring them; data they held "
                "in memory is lost.",
            )
        )
        return None

    workers = scheduler.workers
    joined = [(p, workers_in_pod(p, workers)) for p in victims]
    draft.deletions += [_deletion(p, Cause.NEVER_JOINED) for p, ws in joined if not ws]
    to_retire = [(p, ws) for p, ws in joined if ws]
    others = [p for p in draft.pods.live if p not in victims]
    if draft.rolling and any(not workers_in_pod(p, workers) for p in draft.current):
        # The replacement must have joined the scheduler before an old worker's data can move to it;
        # joining is not a Kubernetes event, so look again shortly.
        draft.wake_in(1.0)
    elif to_retire and sum(len(ws) for _, ws in to_retire) >= len(workers) and not others:
        # Scaling to zero: no worker remains (or is coming) to take the data, so retiring cannot succeed.
        draft.deletions += [_deletion(p, Cause.LAST_WORKERS) for p, _ in to_retire]
    elif to_retire:
        draft.retire = Retire(tuple(RetiringPod(_deletion(p, Cause.RETIRED), ws) for p, ws in to_retire))
    return None


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


def _ready_condition(live: Sequence[Obj], current: Sequence[Obj], replicas: int) -> Condition:
    ready = sum(1 for p in current if is_pod_ready(p))
    if ready >= replicas and len(live) == replicas:
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
