"""Queueing behind Kueue: the Workload a labelled DaskJob or DaskCluster owns, and what Kueue's answer means
for it (a hold, or the placement its pods get).

Invariant: pure functions of the owner, the Workload as cached and Kueue's ResourceFlavors/priority classes.
An owner without the `kueue.x-k8s.io/queue-name` label has no Workload and is never held by Kueue. An owner with
it runs pods only while its Workload is Admitted and not Evicted; the Workload's pod sets are fixed when it is
created (Kueue forbids changing them) and replaced only while it holds no quota; after an eviction the admission
is cleared only once the owner's pods are gone, so quota is never given back while pods still use it. A
suspended owner (spec.suspend) has no Workload: it creates none, and deletes the one it has (releasing its
quota) once its pods are gone. Held by
test/unit/test_kueue.py and test/e2e/test_kueue.py.

Why a Workload per object and not Kueue's pod-group integration: a pod group needs every pod to exist (gated)
before admission and cannot account for workers the autoscaler may add later, while a Workload states the whole
shape up front (scheduler, runner, each worker group at its replicas or autoscaler maximum), is admitted or
evicted as one, and its conditions are read by the reconcilers like any other child. This is how Kueue's own
job integrations and the non-Go operators integrate.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dask_operator.api.v1.group import GROUP as DASK_GROUP
from dask_operator.api.v1.names import (
    LABEL_KUEUE_PRIORITY_CLASS,
    LABEL_KUEUE_QUEUE_NAME,
    UNPROPAGATED_LABELS,
    default_worker_group_name,
)
from dask_operator.controller.contract.children import owner_reference, template_hash
from dask_operator.controller.contract.conditions import Condition, EventSpec, find_condition
from dask_operator.controller.contract.hold import Hold
from dask_operator.controller.contract.names import KUEUE_GROUP, KUEUE_VERSION
from dask_operator.controller.contract.objects import Obj, rfc3339
from dask_operator.controller.contract.plans import Apply, Cause, Create, Delete, PatchStatus, Ref, Step

QUEUE_NAME_LABEL = LABEL_KUEUE_QUEUE_NAME
PRIORITY_CLASS_LABEL = LABEL_KUEUE_PRIORITY_CLASS
KUEUE_LABELS = UNPROPAGATED_LABELS  # never copied to children (see child_metadata)

WORKLOAD_API_VERSION = f"{KUEUE_GROUP}/{KUEUE_VERSION}"  # the kinds themselves: controller/kinds.py

# On our Workloads: a hash of the pod sets they were built from (Kueue may default fields inside templates, so
# the spec itself is not compared).
POD_SETS_HASH_ANNOTATION = f"{DASK_GROUP}/pod-sets-hash"
# On our Workloads: the node selectors and tolerations each pod set got from its flavors when it was admitted.
PLACEMENTS_ANNOTATION = f"{DASK_GROUP}/admitted-placements"
# The field manager of that annotation alone (applying it never touches the fields the Workload was made with).
WORKLOAD_FIELD_MANAGER = "dask-operator-kueue"

CONDITION_ADMITTED = "Admitted"  # on DaskJobs and DaskClusters behind Kueue
REASON_QUEUED = "Queued"
REASON_ADMITTED = "Admitted"
REASON_EVICTED = "Evicted"
REASON_KUEUE_UNAVAILABLE = "KueueUnavailable"
MAX_POD_SETS = 8  # Kueue's limit
KUEUE_HOLD_REASONS = (REASON_QUEUED, REASON_EVICTED, REASON_KUEUE_UNAVAILABLE)


@dataclass(frozen=True)
class KueueAccess:
    """Kueue's Workload API is served (`workloads`); the operator may list flavors and priority classes."""

    workloads: bool = False
    flavors: bool = False
    priority_classes: bool = False


def queue_name(obj: Mapping[str, Any]) -> str | None:
    value = (obj.get("metadata", {}).get("labels") or {}).get(QUEUE_NAME_LABEL)
    return str(value) if value else None


def workload_name(owner: Mapping[str, Any]) -> str:
    """`daskjob-<name>` / `daskcluster-<name>`: one Workload per owner, found again by name."""
    return f"{str(owner['kind']).lower()}-{owner['metadata']['name']}"


# -- what the operator knows about Kueue and what Kueue says ------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """What admission adds to one pod set's pods: the flavors' node labels and tolerations."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Obj, ...] = ()

    def apply_to(self, pod_spec: Obj) -> Obj:
        """`pod_spec` (not modified) with the node selector merged and missing tolerations appended."""
        if not self.node_selector and not self.tolerations:
            return pod_spec
        spec = dict(pod_spec)
        if self.node_selector:
            spec["nodeSelector"] = {**(pod_spec.get("nodeSelector") or {}), **self.node_selector}
        if self.tolerations:
            present = list(pod_spec.get("tolerations") or [])
            spec["tolerations"] = present + [t for t in self.tolerations if t not in present]
        return spec


NO_PLACEMENT = Placement()


@dataclass(frozen=True)
class Queueing:
    """An owner's place in Kueue: held (and why) or admitted (to which ClusterQueue, placed how)."""

    hold: Hold | None
    workload: Obj | None = None
    cluster_queue: str | None = None
    placements: Mapping[str, Placement] = field(default_factory=dict)
    evicted: bool = False
    admitted: Mapping[str, int] | None = None  # pod set -> pods Kueue admitted; None: not admitted
    placements_recorded: bool = False  # the Workload carries the placements computed at admission

    def placement(self, pod_set: str) -> Placement:
        return self.placements.get(pod_set, NO_PLACEMENT)

    def admitted_count(self, pod_set: str) -> int | None:
        """How many pods of `pod_set` the quota covers (0 for a pod set the Workload does not have); None
        when the owner is not admitted (then it runs nothing anyway)."""
        return None if self.admitted is None else self.admitted.get(pod_set, 0)


def _true(workload: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    cond = find_condition((workload.get("status") or {}).get("conditions"), kind)
    return cond if cond is not None and cond.get("status") == "True" else None


def queueing(
    owner: Mapping[str, Any],
    workload: Obj | None,
    flavors: Mapping[str, Obj],
    kueue_available: bool = True,
) -> Queueing | None:
    """None for an owner without the queue label; otherwise where its Workload stands.

    `workload` is the cached Workload of that name if this owner controls it (another's is ignored);
    `flavors` the ResourceFlavors by name (empty when the operator may not read them).
    """
    queue = queue_name(owner)
    if queue is None:
        return None
    if not kueue_available:
        return Queueing(
            Hold(
                REASON_KUEUE_UNAVAILABLE,
                f"This object carries the label {QUEUE_NAME_LABEL}={queue}, but Kueue's Workload API "
                f"({KUEUE_GROUP}/{KUEUE_VERSION}) was not installed when the operator started, so nothing runs. "
                "Install Kueue and restart the operator, or remove the label.",
            )
        )
    if workload is None:
        return Queueing(Hold(REASON_QUEUED, f"Creating the Kueue Workload for LocalQueue {queue}."))
    evicted = _true(workload, "Evicted")
    if evicted is not None:
        why = f"{evicted.get('reason', '')}: {evicted.get('message', '')}".strip(": ")
        return Queueing(
            Hold(REASON_EVICTED, f"Kueue evicted Workload {workload['metadata']['name']} ({why})."),
            workload,
            evicted=True,
        )
    admission = (workload.get("status") or {}).get("admission")
    if _true(workload, "Admitted") is not None and admission:
        recorded = recorded_placements(workload)
        return Queueing(
            None,
            workload,
            cluster_queue=str(admission.get("clusterQueue") or ""),
            placements=recorded if recorded is not None else placements(admission, flavors),
            admitted=admitted_counts(workload, admission),
            placements_recorded=recorded is not None,
        )
    reserved = find_condition((workload.get("status") or {}).get("conditions"), "QuotaReserved") or {}
    detail = str(reserved.get("message") or "waiting for Kueue to reserve quota")
    return Queueing(
        Hold(REASON_QUEUED, f"Waiting in LocalQueue {queue} for admission by Kueue: {detail}."),
        workload,
    )


def placements(admission: Mapping[str, Any], flavors: Mapping[str, Obj]) -> dict[str, Placement]:
    """Pod set name -> node labels and tolerations of the flavors admission assigned to it (a flavor the
    operator cannot see adds nothing)."""
    out: dict[str, Placement] = {}
    for assignment in admission.get("podSetAssignments") or []:
        selector: dict[str, str] = {}
        tolerations: list[Obj] = []
        for name in sorted(set((assignment.get("flavors") or {}).values())):
            spec = (flavors.get(name) or {}).get("spec") or {}
            selector.update(spec.get("nodeLabels") or {})
            tolerations += [t for t in spec.get("tolerations") or [] if t not in tolerations]
        out[str(assignment.get("name", "main"))] = Placement(selector, tuple(tolerations))
    return out


def admitted_counts(workload: Mapping[str, Any], admission: Mapping[str, Any]) -> dict[str, int]:
    """Pod set -> pods admitted: the assignment's count (partial admission), else the pod set's own."""
    counts = {
        str(ps.get("name")): int(ps.get("count") or 0)
        for ps in (workload.get("spec") or {}).get("podSets") or []
    }
    for assignment in admission.get("podSetAssignments") or []:
        name = str(assignment.get("name"))
        if name in counts and isinstance(assignment.get("count"), int):
            counts[name] = min(counts[name], int(assignment["count"]))
    return counts


def recorded_placements(workload: Mapping[str, Any]) -> dict[str, Placement] | None:
    """The placements recorded on the Workload at admission, or None (not yet, or unreadable)."""
    text = (workload.get("metadata", {}).get("annotations") or {}).get(PLACEMENTS_ANNOTATION)
    if not text:
        return None
    try:
        recorded = json.loads(text)
        return {
            str(name): Placement(
                {str(k): str(v) for k, v in (p.get("nodeSelector") or {}).items()},
                tuple(dict(t) for t in p.get("tolerations") or []),
            )
            for name, p in recorded.items()
        }
    except (ValueError, AttributeError, TypeError):
        return None


def placements_record(workload: Mapping[str, Any], placed: Mapping[str, Placement]) -> Obj:
    """The apply that records `placed` on the Workload, so a ResourceFlavor edited later never rolls pods
    that were placed at admission."""
    meta = workload["metadata"]
    text = json.dumps(
        {
            name: {"nodeSelector": dict(p.node_selector), "tolerations": [dict(t) for t in p.tolerations]}
            for name, p in sorted(placed.items())
        },
        sort_keys=True,
    )
    return {
        "apiVersion": WORKLOAD_API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "annotations": {PLACEMENTS_ANNOTATION: text},
        },
    }


# -- the Workload -----------------------------------------------------------------------------------------


def pod_set(
    name: str, count: int, pod_spec: Mapping[str, Any], labels: Mapping[str, str] | None = None
) -> Obj:
    template: Obj = {"spec": copy.deepcopy(dict(pod_spec))}
    if labels:
        template["metadata"] = {"labels": dict(labels)}
    return {"name": name, "count": max(0, int(count)), "template": template}


def pod_set_name(cluster: str, group: str) -> str:
    """`worker` for a cluster's default group; `worker-<suffix>` (a DNS label) for another group."""
    if group == default_worker_group_name(cluster):
        return "worker"
    suffix = group[len(cluster) + 1 :] if group.startswith(cluster + "-") else group
    suffix = re.sub(r"[^a-z0-9-]+", "-", suffix.lower()).strip("-")
    name = f"worker-{suffix}"[:63].rstrip("-")
    return name if len(name) > len("worker-") else f"worker-{template_hash(group)}"


def job_pod_sets(job: Mapping[str, Any]) -> list[Obj]:
    """A DaskJob's pods: its cluster's scheduler and workers (at `replicas`) and its runner; with
    spec.clusterRef only the runner (the cluster it runs on is another object, queued, or not, on its own)."""
    runner = pod_set("runner", 1, job["spec"]["job"]["spec"])
    if job["spec"].get("clusterRef"):
        return [runner]
    cluster = job["spec"]["cluster"]["spec"]
    worker = cluster["worker"]
    return [
        pod_set("scheduler", 1, cluster["scheduler"]["spec"]),
        pod_set("worker", int(worker.get("replicas", 1)), worker["spec"]),
        runner,
    ]


def cluster_pod_sets(
    cluster: Mapping[str, Any], groups: Sequence[Mapping[str, Any]], autoscalers: Sequence[Mapping[str, Any]]
) -> list[Obj]:
    """A DaskCluster's pods: its scheduler and every worker group naming it, each at its replicas (the default
    group at the autoscaler's maximum when a DaskAutoscaler scales it). At most 8 pod sets (Kueue's limit):
    groups beyond the 7th, by name, are left out (their pods are not counted)."""
    name = cluster["metadata"]["name"]
    default = default_worker_group_name(name)
    worker = cluster["spec"]["worker"]
    replicas = int(worker.get("replicas", 1))
    maxima = [
        int(a["spec"]["maximum"]) for a in autoscalers if (a.get("spec") or {}).get("maximum") is not None
    ]
    if maxima:
        replicas = max(maxima)
    sets = [
        pod_set("scheduler", 1, cluster["spec"]["scheduler"]["spec"]),
        pod_set("worker", replicas, worker["spec"]),
    ]
    others = sorted(
        (g for g in groups if g["metadata"]["name"] != default), key=lambda g: g["metadata"]["name"]
    )
    for group in others[: MAX_POD_SETS - 2]:
        gw = group["spec"]["worker"]
        sets.append(
            pod_set(pod_set_name(name, group["metadata"]["name"]), int(gw.get("replicas", 1)), gw["spec"])
        )
    return sets


def desired_workload(
    owner: Mapping[str, Any], pod_sets: Sequence[Obj], priority_classes: Mapping[str, Obj]
) -> Obj:
    """The Workload `owner` controls: its LocalQueue, pod sets and priority (from a WorkloadPriorityClass named
    by the `kueue.x-k8s.io/priority-class` label; unknown classes are left for Kueue to reject)."""
    meta = owner["metadata"]
    spec: Obj = {"queueName": queue_name(owner), "podSets": [copy.deepcopy(p) for p in pod_sets]}
    priority_class = (meta.get("labels") or {}).get(PRIORITY_CLASS_LABEL)
    if priority_class:
        spec["priorityClassRef"] = {
            "group": KUEUE_GROUP,
            "kind": "WorkloadPriorityClass",
            "name": priority_class,
        }
        known = priority_classes.get(priority_class)
        spec["priority"] = int((known or {}).get("value", 0))
    return {
        "apiVersion": WORKLOAD_API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": workload_name(owner),
            "namespace": meta["namespace"],
            "labels": {QUEUE_NAME_LABEL: str(queue_name(owner))},
            "annotations": {POD_SETS_HASH_ANNOTATION: template_hash(spec)},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": spec,
    }


def workload_steps(
    desired: Obj,
    state: Queueing,
    pods_left: bool,
    finished: tuple[str, str] | None,
    now: float,
    suspended: bool = False,
    pods_ready: bool | None = None,
) -> list[Step]:
    """The writes that keep the Workload in step with its owner.

    Create it when missing; replace it when its pod sets changed while it holds no quota; once evicted and
    no pod of the owner is left, clear its admission (Kueue then queues it again); once the owner finished
    (`finished` = (reason, message)), mark it Finished so that Kueue releases the quota. While admitted, its
    PodsReady condition follows `pods_ready` (Kueue's waitForPodsReady evicts a Workload that never gets
    there; None: not known, left as it is). A `suspended` owner
    (spec.suspend) has no Workload: none is created, and one it has is deleted once no pod of the owner is
    left, which gives its quota back (resuming queues a new one).
    """
    if suspended and finished is None:
        if state.workload is None or pods_left:
            return []
        return [Delete(Ref.of(state.workload), Cause.HELD)]
    workload = state.workload
    if workload is None:
        return [] if finished else [Create(desired)]
    status = workload.get("status") or {}
    if finished is not None:
        if _true(workload, "Finished") is not None:
            return []
        reason, message = finished
        return [
            _status_patch(
                workload, [_condition("Finished", True, reason, message, now)], now, keep_admission=True
            )
        ]
    have = (workload["metadata"].get("annotations") or {}).get(POD_SETS_HASH_ANNOTATION)
    want = desired["metadata"]["annotations"][POD_SETS_HASH_ANNOTATION]
    if have != want and not status.get("admission"):
        return [Delete(Ref.of(workload), Cause.WORKLOAD_CHANGED)]
    if state.evicted and status.get("admission") and not pods_left:
        evicted = _true(workload, "Evicted") or {}
        message = str(evicted.get("message") or "evicted")
        requeue = str(evicted.get("reason")) in ("Preempted", "NodeFailures")
        conditions = [
            _condition("QuotaReserved", False, "Pending", message, now),
            _condition("Admitted", False, "NoReservation", "The workload has no reservation", now),
            _condition("Requeued", requeue, str(evicted.get("reason") or "Evicted"), message, now),
        ]
        return [_status_patch(workload, conditions, now, keep_admission=False)]
    steps: list[Step] = []
    if state.hold is None and status.get("admission") and not state.placements_recorded:
        steps.append(Apply(placements_record(workload, state.placements), WORKLOAD_FIELD_MANAGER))
    if pods_ready is not None and state.hold is None and status.get("admission"):
        current = find_condition(status.get("conditions"), "PodsReady") or {}
        if current.get("status") != ("True" if pods_ready else "False"):
            ready = _condition(
                "PodsReady",
                pods_ready,
                "PodsReady" if pods_ready else "PodsNotReady",
                "All the pods the owner runs are Ready."
                if pods_ready
                else "Not all of the owner's pods are Ready.",
                now,
            )
            steps.append(_status_patch(workload, [ready], now, keep_admission=True))
    return steps


def _condition(kind: str, status: bool, reason: str, message: str, now: float) -> Obj:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(now),
    }


def _status_patch(workload: Obj, changed: Iterable[Obj], now: float, *, keep_admission: bool) -> PatchStatus:
    """A merge patch of the Workload's status (the whole conditions list, as Kueue keeps it), guarded by the
    resourceVersion it was planned from. A condition whose status and reason are unchanged keeps its time."""
    generation = workload["metadata"].get("generation")
    conditions = [dict(c) for c in (workload.get("status") or {}).get("conditions") or []]
    for new in changed:
        old = next((c for c in conditions if c.get("type") == new["type"]), None)
        entry = {**new, **({"observedGeneration": generation} if generation is not None else {})}
        if old is None:
            conditions.append(entry)
        elif (old.get("status"), old.get("reason")) != (new["status"], new["reason"]):
            old.clear()
            old.update(entry)
    patch: Obj = {"status": {"conditions": conditions}}
    if not keep_admission:
        patch["status"]["admission"] = None
    return PatchStatus(Ref.of(workload), str(workload["metadata"].get("resourceVersion", "")), patch)


# -- what the owner's status says -------------------------------------------------------------------------


def admitted_condition(state: Queueing) -> Condition:
    if state.hold is not None:
        return Condition(CONDITION_ADMITTED, False, state.hold.reason, state.hold.message)
    return Condition(
        CONDITION_ADMITTED,
        True,
        REASON_ADMITTED,
        f"Admitted by Kueue to ClusterQueue {state.cluster_queue}.",
    )


def admission_events(
    previous: Iterable[Mapping[str, Any]] | None, state: Queueing, lost: str
) -> list[EventSpec]:
    """Queued / Admitted / Evicted, once per change of the Admitted condition's reason. `lost` says what the
    eviction costs (pods deleted, data gone), in a sentence."""
    old = find_condition(previous, CONDITION_ADMITTED) or {}
    now = admitted_condition(state)
    if old.get("reason") == now.reason and old.get("status") == ("True" if now.status else "False"):
        return []
    if now.reason == REASON_EVICTED:
        return [EventSpec("Warning", REASON_EVICTED, f"{now.message} {lost}".strip())]
    if now.reason == REASON_KUEUE_UNAVAILABLE:
        return [EventSpec("Warning", REASON_KUEUE_UNAVAILABLE, now.message)]
    return [EventSpec("Normal", now.reason, now.message)]


def flavors_by_name(flavors: Iterable[Obj]) -> dict[str, Obj]:
    return {f["metadata"]["name"]: f for f in flavors}
