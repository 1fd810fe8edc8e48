"""Shared builders for the planners' unit tests: objects as the cache shows them, and readers of a Plan.

Each unit test starts from what a planner itself produces (a desired pod, a desired cluster) and turns it
into what the cache would show later with these builders, so no test copies a Kubernetes object by hand.
"""

from __future__ import annotations

import copy
from typing import Any

from dask_operator.controller.contract.objects import rfc3339
from dask_operator.controller.contract.plans import FIELD_MANAGER, Apply, Plan

Obj = dict[str, Any]


def running(pod: Obj, *, uid: str | None = None, created_at: float | None = None, ip: str | None = None,
            ready: bool = True) -> Obj:  # fmt: skip
    """`pod` as the cache shows it once its containers run (Ready unless `ready` is False)."""
    pod = copy.deepcopy(pod)
    meta = pod["metadata"]
    meta["uid"] = uid or f"uid-{meta['name']}"
    if created_at is not None:
        meta["creationTimestamp"] = rfc3339(created_at)
    name = (pod.get("spec", {}).get("containers") or [{"name": "main"}])[0].get("name", "main")
    pod["status"] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [{"name": name, "ready": ready, "restartCount": 0, "state": {"running": {}}}],
    }
    if ip is not None:
        pod["status"]["podIP"] = ip
    return pod


def pending(pod: Obj, **kw: Any) -> Obj:
    """`pod` scheduled but not started."""
    pod = running(pod, ready=False, **kw)
    pod["status"] = {
        "phase": "Pending",
        **({"podIP": pod["status"]["podIP"]} if "podIP" in pod["status"] else {}),
    }
    return pod


def terminating(obj: Obj, at: float = 1_700_000_000.0) -> Obj:
    obj = copy.deepcopy(obj)
    obj["metadata"]["deletionTimestamp"] = rfc3339(at)
    return obj


# -- reading a plan ---------------------------------------------------------------------------------------


def applied(plan: Plan, kind: str, field_manager: str = FIELD_MANAGER) -> Obj | None:
    """The object of `kind` the plan applies as `field_manager`, if any."""
    return next(
        (s.obj for s in plan.of_type(Apply) if s.obj["kind"] == kind and s.field_manager == field_manager),
        None,
    )


def created(plan: Plan, kind: str) -> Obj | None:
    return next((o for o in plan.creates if o["kind"] == kind), None)


def condition(plan: Plan, kind: str) -> Obj:
    """The condition `kind` of the status the plan writes."""
    assert plan.status is not None, "the plan writes no status"
    return next(c for c in plan.status["conditions"] if c["type"] == kind)


def killed(pod: Obj, at: float, *, code: int = 137, reason: str = "Error", restarts: int = 1) -> Obj:
    """`pod` running again after its container was killed (`code` 137: SIGKILL, the OOM killer's signal)."""
    pod = running(pod) if "status" not in pod else copy.deepcopy(pod)
    cs = pod["status"]["containerStatuses"][0]
    cs["restartCount"] = restarts
    cs["lastState"] = {"terminated": {"exitCode": code, "reason": reason, "finishedAt": rfc3339(at)}}
    return pod


def finished(pod: Obj, phase: str = "Failed", *, code: int = 1, at: float = 1_700_000_000.0) -> Obj:
    """`pod` as the cache shows it once it stopped for good (restartPolicy Never, or evicted)."""
    pod = running(pod) if "status" not in pod else copy.deepcopy(pod)
    cs = pod["status"]["containerStatuses"][0]
    cs["ready"] = False
    cs["state"] = {"terminated": {"exitCode": code, "reason": "Error", "finishedAt": rfc3339(at)}}
    pod["status"]["phase"] = phase
    pod["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    return pod


def controlled_by(obj: Obj, owner: Obj) -> Obj:
    """`obj` with `owner` as its controller (what the garbage collector and the cache's owner index read)."""
    obj = copy.deepcopy(obj)
    meta = owner["metadata"]
    obj["metadata"]["ownerReferences"] = [
        {"apiVersion": owner.get("apiVersion", "v1"), "kind": owner.get("kind"), "name": meta["name"],
         "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip
    return obj


# -- Kueue's answers ---------------------------------------------------------------------------------------


def _with_condition(workload: Obj, kind: str, status: bool, reason: str, message: str = "") -> Obj:
    conditions = [c for c in workload.setdefault("status", {}).get("conditions", []) if c["type"] != kind]
    conditions.append({"type": kind, "status": "True" if status else "False", "reason": reason,
                       "message": message, "lastTransitionTime": "2023-11-14T22:00:00Z"})  # fmt: skip
    workload["status"]["conditions"] = conditions
    return workload


def stored_workload(workload: Obj, *, uid: str = "wl-uid", resource_version: str = "7") -> Obj:
    """A desired Workload as the cache shows it after its creation (queued, nothing reserved yet)."""
    workload = copy.deepcopy(workload)
    workload["metadata"].update(uid=uid, resourceVersion=resource_version, generation=1)
    return _with_condition(workload, "QuotaReserved", False, "Pending", "insufficient unused quota for cpu")


def admitted_workload(workload: Obj, cluster_queue: str = "cq", flavor: str = "rf") -> Obj:
    """`workload` admitted by Kueue: every pod set assigned `flavor` for cpu."""
    workload = copy.deepcopy(workload)
    workload.setdefault("status", {})["admission"] = {
        "clusterQueue": cluster_queue,
        "podSetAssignments": [
            {"name": p["name"], "flavors": {"cpu": flavor}, "count": p["count"]}
            for p in workload["spec"]["podSets"]
        ],
    }
    _with_condition(
        workload, "QuotaReserved", True, "QuotaReserved", f"Quota reserved in ClusterQueue {cluster_queue}"
    )
    return _with_condition(workload, "Admitted", True, "Admitted", "The workload is admitted")


def evicted_workload(workload: Obj, reason: str = "Preempted") -> Obj:
    """An admitted `workload` Kueue evicted (its admission still set until the owner's pods are gone)."""
    workload = copy.deepcopy(workload)
    return _with_condition(workload, "Evicted", True, reason, "Preempted to accommodate a workload (UID: x)")
