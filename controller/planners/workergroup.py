"""Desired state of a DaskWorkerGroup: its worker Pods, how to get there gracefully, and its status.

Invariant: pure functions of the observed objects, the scheduler's worker list, the group's latest
retirement request (and its answer) and `now`. A group converges to exactly `spec.worker.replicas` live pods
built from its current template. Worker names are derived from (group UID, template hash, ordinal), so a
restarted operator recomputes the same names and cannot duplicate a worker. Removing a worker never loses
data the scheduler can move: pods that never joined go first, then the pods holding the least data (then the
newest), never one whose workers are receiving data from a retirement in progress; only workers of this
group are retired by name through the scheduler, one request at a time per group, never twice while the
scheduler still retires them; a pod is deleted only once the scheduler retired every worker it runs, as a
worker list asked after the retirement ended shows (a worker that joined the pod since is retired too); a
request that did not retire them all is asked again after a growing delay. A group whose cluster is held
(`GroupObservation.hold`) deletes all its pods and creates none,
keeping `spec.worker.replicas` for the resume. A cluster's default group runs nothing until the cluster has
written its replicas (`awaits_replicas`). Held by test/unit/test_workergroup.py.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dask_operator.api.v1.names import (
    ANNOTATION_AUTOSCALED_BY,
    DEFAULT_CLUSTER_DOMAIN,
    ISTIO_SIDECAR_INJECT_VALUE,
    LABEL_ISTIO_SIDECAR_INJECT,
    default_worker_group_name,
    label_selector_string,
    worker_pod_name,
    worker_selector_labels,
)
from dask_operator.api.v1.types import CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY
from dask_operator.controller.contract.children import (
    TEMPLATE_HASH_LABEL,
    adoption,
    child_metadata,
    is_controlled_by,
    owner_reference,
    template_hash,
    with_env_defaults,
)
from dask_operator.controller.contract.conditions import (
    CONDITION_REPLICA_FAILURE,
    Condition,
    EventSpec,
    condition_events,
    find_condition,
    merge_conditions,
)
from dask_operator.controller.contract.drain import (
    DEFAULT_WORKER_GRACE_SECONDS,
    desired_disruption_budget,
    with_drain_hook,
)
from dask_operator.controller.contract.hold import Hold, held_conditions
from dask_operator.controller.contract.kueue import Queueing, pod_set_name
from dask_operator.controller.contract.losses import worker_lost
from dask_operator.controller.contract.names import (
    DEFAULT_FORCE_SCALE_DOWN_SECONDS,
    FORCE_SCALE_DOWN_ANNOTATION,
    PROPAGATED_REPLICAS_ANNOTATION,
    SCHEDULER_ADDRESS_ENV,
    WORKER_NAME_ENV,
    cluster_scheduler_address,
)
from dask_operator.controller.contract.objects import Obj, parse_rfc3339, rfc3339
from dask_operator.controller.contract.plans import (
    ADOPTION_FIELD_MANAGER,
    AUTOSCALER_FIELD_MANAGER,
    Apply,
    Cause,
    Create,
    Delete,
    Emit,
    Plan,
    Question,
    Ref,
    ReleaseFields,
    Retire,
    RetiringPod,
    SetStatus,
    Step,
    earliest,
)
from dask_operator.controller.contract.pods import (
    is_pod_finished,
    is_pod_ready,
    is_terminating,
    pod_failure,
    recovery_deadline,
)
from dask_operator.controller.contract.scheduler_api import DaskWorker


@dataclass(frozen=True)
class GroupSettings:
    batch_size: int | None = None  # at most this many pods created per round (None: no limit)
    batch_delay: float = 0.0  # seconds between rounds
    force_timeout: float = DEFAULT_FORCE_SCALE_DOWN_SECONDS
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    worker_grace: float = (
        DEFAULT_WORKER_GRACE_SECONDS  # terminationGracePeriodSeconds unless the spec sets it
    )


@dataclass(frozen=True)
class SchedulerView:
    """The scheduler's workers (all groups), or why they could not be listed (`workers` None), and when the
    list was asked for (on the reconciler's clock; None: unknown, e.g. not from a call)."""

    workers: tuple[DaskWorker, ...] | None
    error: str = ""
    asked: float | None = None


# A retirement that did not retire every worker is asked again after 5 s, 10 s, 20 s ... at most 5 min.
RETIRE_RETRY_FIRST_SECONDS = 5.0
RETIRE_RETRY_MAX_SECONDS = 300.0
# How often a group whose workers the scheduler is still retiring looks again (their end also wakes it).
RETIRING_POLL_SECONDS = 5.0


def retire_retry_delay(attempt: int) -> float:
    """Seconds between the end of the `attempt`-th retirement in a row that left workers and the next."""
    return float(min(RETIRE_RETRY_FIRST_SECONDS * 2.0 ** max(0, attempt - 1), RETIRE_RETRY_MAX_SECONDS))


@dataclass(frozen=True)
class RetirementView:
    """The group's latest retirement request as the operator made it and, once it ended, its answer."""

    retire: Retire
    attempt: int  # 1 for a first request; n for the n-th in a row that did not retire every worker
    asked: float
    answered: float | None = None  # None: in flight
    retired: frozenset[str] = frozenset()  # names of the workers the scheduler retired
    error: str = ""  # the scheduler could not be asked, or did not answer in time
    acted: bool = False  # it may have received the request anyway (a timeout): it may still be retiring

    @property
    def in_flight(self) -> bool:
        return self.answered is None

    @property
    def kept(self) -> tuple[str, ...]:
        """Workers asked for that the scheduler did not retire."""
        return tuple(w.name for w in self.retire.workers if w.name not in self.retired)


@dataclass(frozen=True)
class GroupObservation:
    group: Obj
    cluster: Obj | None
    pods: Sequence[Obj] = ()  # pods the group controls
    disruption_budgets: Sequence[Obj] = ()  # PodDisruptionBudgets the group controls
    scheduler: SchedulerView | None = None  # None: not asked (yet)
    previous_conditions: Sequence[Mapping[str, Any]] | None = None  # defaults to the group's status
    retirement: RetirementView | None = None  # the group's latest retirement request, if any
    autoscaled: bool = True  # a DaskAutoscaler names the group's cluster (False: none does)
    queue: Queueing | None = None  # the cluster's place in Kueue; None: the cluster is not behind Kueue
    hold: Hold | None = None  # hold_of(its cluster): a held cluster's groups run no pod


# -- worker pods --------------------------------------------------------------------------------------------


def worker_template(
    group: Mapping[str, Any],
    cluster: Mapping[str, Any],
    cluster_domain: str,
    worker_grace: float = DEFAULT_WORKER_GRACE_SECONDS,
    queue: Queueing | None = None,
) -> Obj:
    """The pod every worker of the group is made from, minus its name and DASK_WORKER_NAME; behind Kueue,
    with the node selector and tolerations of the flavors admitted for the group's pod set.

    The drain hook and default grace period are added after the template hash is taken: they are the
    operator's, not the user's, so an operator upgrade that changes them rolls no running worker.
    """
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
    spec = with_drain_hook(spec, worker_grace)
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


def _pod_created(pod: Mapping[str, Any]) -> str:
    return str(pod["metadata"].get("creationTimestamp") or "")


def choose_pods_to_retire(
    candidates: Sequence[Obj], workers: Sequence[DaskWorker], count: int, prefer: Sequence[Obj] = ()
) -> tuple[list[Obj], list[Obj]]:
    """The `count` pods to remove, in order, and the candidates skipped because they receive data.

    Pods whose workers the scheduler is already retiring come first (they are going anyway), then pods in
    `prefer` (an old template), then the pods holding the least data, then the newest. A pod any of whose
    workers has transfers in flight while another worker of the cluster is being retired may be receiving
    that worker's data: it is never chosen (moving the data twice, or onto a worker about to go).
    """
    preferred = {p["metadata"]["name"] for p in prefer}
    retiring = {w.name for w in workers if w.retiring}
    eligible: list[tuple[Obj, tuple[DaskWorker, ...]]] = []
    skipped: list[tuple[Obj, tuple[DaskWorker, ...]]] = []
    for pod in candidates:
        own = workers_in_pod(pod, workers)
        receiving = any(w.incoming for w in own) and bool(retiring - {w.name for w in own})
        (skipped if receiving and not any(w.retiring for w in own) else eligible).append((pod, own))
    newest_first = sorted(
        eligible, key=lambda e: (_pod_created(e[0]), e[0]["metadata"]["name"]), reverse=True
    )
    ordered = sorted(
        newest_first,
        key=lambda e: (
            not any(w.retiring for w in e[1]),
            e[0]["metadata"]["name"] not in preferred,
            sum(w.nbytes for w in e[1]),
        ),
    )
    return [pod for pod, _ in ordered[:count]], [pod for pod, _ in skipped]


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
    candidates = _retired_pods(obs.retirement, obs.pods)
    if (
        candidates
        and obs.retirement is not None
        and not _listed_since(obs.scheduler, obs.retirement.answered)
    ):
        # Which workers run in those pods now: one may have joined since the list the retirement was made from.
        note = "listing the workers again before deleting the pods of a retirement"
        return Plan(question=Question.WORKERS, asked_after=obs.retirement.answered, notes=(note,))
    retired = _emptied(candidates, obs.scheduler)
    pods = _PodSets.of(obs, {p["metadata"]["uid"] for p in retired})
    if obs.cluster is None:
        return _waiting_for_cluster(group, pods, previous, now)
    if obs.hold is not None:
        return _held(group, obs.pods, obs.hold, previous, now)

    cluster = obs.cluster
    if obs.queue is not None and obs.queue.hold is not None:
        return _held(group, obs.pods, obs.queue.hold, previous, now)
    if awaits_replicas(group, cluster):
        return Plan(notes=("waiting for the cluster's replicas",))
    template = worker_template(group, cluster, settings.cluster_domain, settings.worker_grace, obs.queue)
    replicas, over_quota = _admitted_replicas(group, cluster, obs.queue)
    draft = _Draft(group, template, pods, replicas)
    draft.deletions += [_deletion(p, Cause.POD_FINISHED) for p in pods.finished]
    draft.deletions += [_deletion(p, Cause.RETIRED) for p in retired]
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
    retirement_problem = None
    if draft.victims:
        removal = _remove_victims(draft, obs, previous, now, settings)
        draft.take(removal)
        retirement_problem = removal.degraded
        degraded = retirement_problem or degraded

    lost = _worker_losses(draft, obs.pods, previous, now)
    conditions = [
        _ready_condition(pods.live, draft.current, draft.replicas),
        draft.progressing,
        degraded,
        lost,
    ]
    if retirement_problem is not None and retirement_problem.reason in RETIREMENT_PROBLEMS:
        conditions.append(dataclasses.replace(retirement_problem, type=CONDITION_REPLICA_FAILURE))
    elif over_quota is not None:
        conditions.append(over_quota)
    status = _status(group, pods.live, draft.want, conditions, previous, now)
    # A group's readiness is reported by its cluster's Ready Event; a group only warns.
    events = draft.events + condition_events(previous, status["conditions"], ready_events=False)
    if draft.needs_scheduler:
        return Plan(question=Question.WORKERS)
    adopt = adoption(group, cluster) if not is_controlled_by(group, cluster["metadata"]["uid"]) else None
    steps: list[Step] = [Apply(adopt, ADOPTION_FIELD_MANAGER)] if adopt is not None else []
    release = autoscaler_release(group, obs.autoscaled)
    if release is not None:
        steps.append(release)
    steps += _disruption_budget_steps(group, obs.disruption_budgets)
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
    def of(cls, obs: GroupObservation, deleted: set[str] = frozenset()) -> _PodSets:  # type: ignore[assignment]
        running = [p for p in obs.pods if not is_terminating(p) and p["metadata"].get("uid") not in deleted]
        observed_names = {p["metadata"]["name"] for p in obs.pods}
        return cls(
            live=[p for p in running if not is_pod_finished(p)],
            finished=[p for p in running if is_pod_finished(p)],
            taken=observed_names,
        )


def _admitted_replicas(group: Obj, cluster: Obj, queue: Queueing | None) -> tuple[int, Condition | None]:
    """The replicas the group may run: its spec's, capped behind Kueue at what the cluster's Workload was
    admitted with for this group's pod set, and why when capped. Pods beyond the admitted count would run
    outside the quota (a later scale-up, an autoscaler added after admission, a group past Kueue's 8 pod sets)."""
    replicas = int(group["spec"]["worker"].get("replicas", 1))
    pod_set = pod_set_name(cluster["metadata"]["name"], group["metadata"]["name"])
    admitted = queue.admitted_count(pod_set) if queue is not None else None
    if admitted is None or replicas <= admitted:
        return replicas, None
    counted = "has no pod set for this group" if admitted == 0 else f"was admitted with {admitted}"
    return admitted, Condition(
        CONDITION_REPLICA_FAILURE,
        True,
        "NotAdmitted",
        f"spec.worker.replicas is {replicas}, but the DaskCluster's Kueue Workload {counted} worker(s) for this "
        f"group: {replicas - admitted} are held so that the quota holds. Suspend and resume the DaskCluster to "
        "queue it again at its new size.",
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
        self.victims: list[Obj] = []  # candidates to remove gracefully (newest first, old template first)
        self.victim_count = 0  # how many of them go
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
        self.requeue = earliest(self.requeue, seconds)

    def take(self, removal: _Removal) -> None:
        """Add what _remove_victims decided: the one place its decision enters the draft."""
        self.deletions += removal.deletions
        if removal.retire is not None:
            self.retire = removal.retire
        if removal.progressing is not None:
            self.progressing = removal.progressing
        if removal.requeue is not None:
            self.wake_in(removal.requeue)
        self.needs_scheduler = self.needs_scheduler or removal.needs_scheduler
        self.events += removal.events
        self.notes += removal.notes

    def scaling_up(self, doing: str) -> None:
        self.progressing = Condition(
            CONDITION_PROGRESSING, True, "ScalingUp", f"{doing}: {self.total} of {self.replicas} exist."
        )

    def create(self, count: int) -> None:
        names = new_worker_names(self.group, self.want, self.pods.taken, count)
        self.creates += [worker_pod(self.template, n) for n in names]


def autoscaler_release(group: Obj, autoscaled: bool) -> ReleaseFields | None:
    """Once no DaskAutoscaler names the group's cluster, the ownership of the replicas its autoscaler wrote
    goes (the value stays): a later `kubectl apply --server-side` of the group sets them without a conflict."""
    if autoscaled or ANNOTATION_AUTOSCALED_BY not in (group["metadata"].get("annotations") or {}):
        return None
    return ReleaseFields(Ref.of(group), AUTOSCALER_FIELD_MANAGER, ANNOTATION_AUTOSCALED_BY)


def _disruption_budget_steps(group: Obj, observed: Sequence[Obj]) -> list[Step]:
    """Apply the group's PodDisruptionBudget when its spec asks for one; delete the ones it no longer wants."""
    budget = desired_disruption_budget(group)
    keep = budget["metadata"]["name"] if budget is not None else None
    steps: list[Step] = [Apply(budget)] if budget is not None else []
    steps += [
        Delete(Ref.of(b), Cause.BUDGET_REMOVED)
        for b in observed
        if b["metadata"]["name"] != keep and not is_terminating(b)
    ]
    return steps


def awaits_replicas(group: Mapping[str, Any], cluster: Mapping[str, Any]) -> bool:
    """A cluster's default group before the cluster wrote its replicas: its `replicas` is the CRD's default,
    not a count anyone asked for, so it runs nothing yet (the cluster writes them right after creating it)."""
    if group["metadata"]["name"] != default_worker_group_name(cluster["metadata"]["name"]):
        return False
    return PROPAGATED_REPLICAS_ANNOTATION not in (group["metadata"].get("annotations") or {})


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
    removing = f"Removing {len(pods)} worker pods: the cluster is held." if pods else None
    conditions = held_conditions(hold, removing, "No worker runs while held.")
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
        draft.victims = _newest_first(draft.outdated)
        draft.victim_count = 1
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
    draft.victim_count = surplus - len(first)
    if draft.victim_count > 0:
        draft.victims = _newest_first([p for p in rest if p in draft.outdated]) + _newest_first(
            [p for p in rest if p in draft.current]
        )


@dataclass(frozen=True)
class _Removal:
    """What removing the victims decided, for plan_group to add to its draft: pods to delete, a retirement to
    start, how the scale-down stands (Progressing; Degraded when something keeps it from progressing), and when
    to look again."""

    degraded: Condition | None = None
    deletions: tuple[Delete, ...] = ()
    retire: Retire | None = None
    progressing: Condition | None = None  # None: the draft's stands
    requeue: float | None = None
    needs_scheduler: bool = False
    events: tuple[EventSpec, ...] = ()
    notes: tuple[str, ...] = ()


def _remove_victims(
    draft: _Draft,
    obs: GroupObservation,
    previous: Sequence[Mapping[str, Any]] | None,
    now: float,
    settings: GroupSettings,
) -> _Removal:
    """Never-joined victims are deleted; joined ones are retired through the scheduler, one request at a time
    per group, again after a growing delay when a request did not retire them all. Without the scheduler's
    worker list, ask for it; with the scheduler unreachable, wait (Degraded) until the force timeout."""
    retirement, scheduler = obs.retirement, obs.scheduler
    if retirement is not None and retirement.in_flight:
        names = ", ".join(w.name for w in retirement.retire.workers)
        progressing = Condition(
            CONDITION_PROGRESSING,
            True,
            "RetiringWorkers",
            f"The scheduler is retiring workers {names} (asked {int(now - retirement.asked)} s ago).",
        )
        # its answer wakes the group; the requeue is a safety net
        return _Removal(_still_degraded(previous, retirement), progressing=progressing, requeue=30.0)
    problem = _retirement_problem(retirement)
    if problem is not None and retirement is not None and retirement.answered is not None:
        wait = retirement.answered + retire_retry_delay(retirement.attempt) - now
        if wait > 0:
            return _Removal(problem, requeue=wait)
    if scheduler is None:
        return _Removal(needs_scheduler=True)
    if scheduler.workers is None:
        return _without_scheduler(draft, scheduler, previous, now, settings)
    return _retire_or_delete(draft, retirement, scheduler.workers, previous, problem)


def _retire_or_delete(
    draft: _Draft,
    retirement: RetirementView | None,
    workers: Sequence[DaskWorker],
    previous: Sequence[Mapping[str, Any]] | None,
    problem: Condition | None,
) -> _Removal:
    """With the scheduler's workers: delete the victims that never joined, retire the others in one request
    (or delete them when no worker would remain to take their data), or wait for a retirement under way."""
    prefer = [] if draft.rolling else draft.outdated
    victims, receiving = choose_pods_to_retire(draft.victims, workers, draft.victim_count, prefer)
    removal = _Removal(problem)
    if len(victims) < draft.victim_count and receiving:
        note = f"not retiring {len(receiving)} pods receiving data from a retirement"
        removal = _Removal(problem, notes=(note,), requeue=RETIRING_POLL_SECONDS)
    joined = [(p, workers_in_pod(p, workers)) for p in victims]
    asked_before = {rp.delete.ref.uid for rp in retirement.retire.pods} if retirement is not None else set()
    gone = tuple(
        _deletion(p, Cause.RETIRED if p["metadata"]["uid"] in asked_before else Cause.NEVER_JOINED)
        for p, ws in joined
        if not ws
    )
    removal = dataclasses.replace(removal, deletions=gone)
    retiring = [(p, ws) for p, ws in joined if any(w.retiring for w in ws)]
    to_retire = [(p, ws) for p, ws in joined if ws and not any(w.retiring for w in ws)]
    if retiring:
        removal = _waiting_for_earlier_retirement(removal, retiring)
    others = [p for p in draft.pods.live if p not in victims]
    if draft.rolling and any(not workers_in_pod(p, workers) for p in draft.current):
        # The replacement must have joined the scheduler before an old worker's data can move to it;
        # joining is not a Kubernetes event, so look again shortly.
        return dataclasses.replace(removal, requeue=earliest(removal.requeue, 1.0))
    if to_retire and sum(len(ws) for _, ws in to_retire) >= len(workers) and not others:
        # Scaling to zero: no worker remains (or is coming) to take the data, so retiring cannot succeed.
        last = tuple(_deletion(p, Cause.LAST_WORKERS) for p, _ in to_retire)
        return dataclasses.replace(removal, deletions=(*gone, *last))
    if to_retire and not retiring:
        retire = Retire(
            tuple(RetiringPod(_deletion(p, Cause.RETIRED), ws, _restarts(p)) for p, ws in to_retire)
        )
        return dataclasses.replace(removal, retire=retire, degraded=_still_degraded(previous, retirement))
    return removal


def _waiting_for_earlier_retirement(
    removal: _Removal, retiring: Sequence[tuple[Obj, Sequence[DaskWorker]]]
) -> _Removal:
    """An earlier request (maybe one that timed out, or another operator's) is still being carried out: asking
    again would start a second retirement of the same workers."""
    names = ", ".join(w.name for _, ws in retiring for w in ws)
    progressing = Condition(
        CONDITION_PROGRESSING,
        True,
        "RetiringWorkers",
        f"The scheduler is still retiring workers {names} from an earlier request; waiting for it.",
    )
    return dataclasses.replace(
        removal, progressing=progressing, requeue=earliest(removal.requeue, RETIRING_POLL_SECONDS)
    )


RETIREMENT_PROBLEMS = ("RetirementIncomplete", "RetirementFailed", "RetirementTimedOut")


def _retirement_problem(retirement: RetirementView | None) -> Condition | None:
    """Degraded, naming the workers, when the latest retirement ended without retiring all of them."""
    if retirement is None or retirement.in_flight:
        return None
    delay = int(retire_retry_delay(retirement.attempt))
    if retirement.error and retirement.acted:
        names = ", ".join(w.name for w in retirement.retire.workers)
        return Condition(
            CONDITION_DEGRADED,
            True,
            "RetirementTimedOut",
            f"The scheduler did not answer the retirement of workers {names} in time ({retirement.error}). "
            "It may still be retiring them, so the operator does not ask again while it does; their pods are "
            "kept until the scheduler has let them go.",
        )
    if retirement.error:
        names = ", ".join(w.name for w in retirement.retire.workers)
        return Condition(
            CONDITION_DEGRADED,
            True,
            "RetirementFailed",
            f"Retiring workers {names} failed (attempt {retirement.attempt}): {retirement.error}. Their pods "
            f"are kept; the operator asks again in {delay} s.",
        )
    if retirement.kept:
        return Condition(
            CONDITION_DEGRADED,
            True,
            "RetirementIncomplete",
            f"The scheduler kept workers {', '.join(retirement.kept)} (attempt {retirement.attempt}): their "
            "data could not be moved to another worker (none running could take it). Their pods are kept; "
            f"the operator asks again in {delay} s.",
        )
    return None


def _still_degraded(
    previous: Sequence[Mapping[str, Any]] | None, retirement: RetirementView | None
) -> Condition | None:
    """While a retry is in flight, the problem that caused it stays reported (no flapping, no Event per try)."""
    cond = find_condition(previous, CONDITION_DEGRADED)
    if retirement is None or (retirement.attempt <= 1 and retirement.in_flight):
        return None
    if cond and cond.get("status") == "True" and cond.get("reason") in RETIREMENT_PROBLEMS:
        return Condition(CONDITION_DEGRADED, True, str(cond["reason"]), str(cond.get("message", "")))
    return None


def _without_scheduler(
    draft: _Draft,
    scheduler: SchedulerView,
    previous: Sequence[Mapping[str, Any]] | None,
    now: float,
    settings: GroupSettings,
) -> _Removal:
    """Wait for an unreachable scheduler (Degraded) until the force timeout, then delete the newest victims."""
    waited = now - _unreachable_since(previous, now)
    if waited < settings.force_timeout:
        return _Removal(
            Condition(
                CONDITION_DEGRADED,
                True,
                "SchedulerUnreachable",
                f"Cannot reach the scheduler to retire workers gracefully ({scheduler.error}); retrying, and "
                f"forcing the scale-down after {int(settings.force_timeout)} s.",
            ),
            progressing=Condition(
                CONDITION_PROGRESSING, True, "WaitingForScheduler", "Scale-down waits for the scheduler."
            ),
            requeue=min(settings.force_timeout - waited, min(30.0, max(2.0, waited / 2))),
        )
    victims = draft.victims[: draft.victim_count]
    forced = EventSpec(
        "Warning",
        "ScaleDownForced",
        f"The scheduler has been unreachable for {int(waited)} s (limit {int(settings.force_timeout)} s, "
        f"annotation {FORCE_SCALE_DOWN_ANNOTATION} on the DaskCluster): deleting "
        f"{', '.join(p['metadata']['name'] for p in victims)} without retiring them; data they held "
        "in memory is lost.",
    )
    return _Removal(deletions=tuple(_deletion(p, Cause.FORCED) for p in victims), events=(forced,))


def _retired_pods(retirement: RetirementView | None, pods: Sequence[Obj]) -> list[Obj]:
    """Candidates for deletion: pods (same UID, not yet being deleted) every worker of which the latest
    answered request retired, or whose containers restarted since it was asked (a retired worker's process
    ends, and its container restarts, once the scheduler lets it go, even when the answer was lost to a
    timeout). They are deleted only once a list asked after the answer shows none of their workers
    (`_emptied`)."""
    if retirement is None or retirement.in_flight:
        return []
    asked = {rp.delete.ref.uid: rp for rp in retirement.retire.pods}
    done = {
        uid
        for uid, rp in asked.items()
        if rp.workers and all(w.name in retirement.retired for w in rp.workers)
    }
    return [
        p
        for p in pods
        if not is_terminating(p)
        and (uid := p["metadata"].get("uid")) in asked
        and (uid in done or _restarts(p) > asked[uid].restarts)
    ]


def _listed_since(scheduler: SchedulerView | None, moment: float | None) -> bool:
    """Whether `scheduler` answers a list asked at or after `moment` (an error answer counts: it was asked)."""
    return (
        scheduler is not None
        and scheduler.asked is not None
        and moment is not None
        and scheduler.asked >= moment
    )


def _emptied(candidates: Sequence[Obj], scheduler: SchedulerView | None) -> list[Obj]:
    """The candidates in which the fresh list shows no worker at all (a retired worker has left the scheduler
    by the time its retirement is answered). A pod in which a worker shows up again, or whose workers could
    not be listed, stays: it is retired (or waited for) like any other pod."""
    if scheduler is None or scheduler.workers is None:
        return []
    return [p for p in candidates if not workers_in_pod(p, scheduler.workers)]


def _restarts(pod: Mapping[str, Any]) -> int:
    return sum(
        int(cs.get("restartCount") or 0) for cs in pod.get("status", {}).get("containerStatuses") or []
    )


def _unreachable_since(previous: Sequence[Mapping[str, Any]] | None, now: float) -> float:
    cond = find_condition(previous, CONDITION_DEGRADED)
    if cond and cond.get("status") == "True" and cond.get("reason") == "SchedulerUnreachable":
        since = parse_rfc3339(cond.get("lastTransitionTime"))
        if since is not None:
            return since
    return now


def _worker_losses(
    draft: _Draft, pods: Sequence[Obj], previous: Sequence[Mapping[str, Any]] | None, now: float
) -> Condition:
    """WorkerLost: workers killed while holding data (controller/contract/losses.py), with their Warning Events."""
    report = worker_lost(pods, previous, now)
    draft.events += report.events
    if report.wake_in is not None:
        draft.wake_in(report.wake_in)
    return report.condition


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
