"""Queueing behind Kueue as tables: an owner and its Workload as cached -> the Workload wanted, the hold or the
placement, and what the job, cluster and worker-group plans do with them."""

from __future__ import annotations

import copy
from typing import Any

from support.builders import admitted_workload, evicted_workload, stored_workload

from dask_operator.controller.contract.kueue import (
    POD_SETS_HASH_ANNOTATION,
    Placement,
    Queueing,
    cluster_pod_sets,
    desired_workload,
    job_pod_sets,
    pod_set_name,
    queueing,
    workload_name,
    workload_steps,
)
from dask_operator.controller.contract.plans import Apply, Create, Delete, PatchStatus
from dask_operator.controller.planners.cluster import (
    PROPAGATED_REPLICAS_ANNOTATION,
    ClusterObservation,
    plan_cluster,
)
from dask_operator.controller.planners.job import JobObservation, plan_job
from dask_operator.controller.planners.workergroup import GroupObservation, plan_group

NOW = 1_700_000_000.0
FLAVORS = {
    "rf": {
        "metadata": {"name": "rf"},
        "spec": {
            "nodeLabels": {"pool": "batch"},
            "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
}


def pod(name: str, cpu: str = "200m") -> dict[str, Any]:
    return {"containers": [{"name": name, "image": "dask", "resources": {"requests": {"cpu": cpu}}}]}


def job(labels: dict[str, str] | None = None, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskJob",
        "metadata": {"name": "j", "namespace": "ns", "uid": "job-uid", "generation": 1,
                     "labels": {"kueue.x-k8s.io/queue-name": "lq", **(labels or {})}},
        "spec": {
            "job": {"spec": {"restartPolicy": "Never", **pod("job")}},
            "cluster": {"spec": {
                "scheduler": {"spec": pod("scheduler"), "service": {"ports": [{"name": "tcp-comm", "port": 8786}]}},
                "worker": {"replicas": 3, "spec": pod("worker")},
            }},
        },
    }  # fmt: skip
    if status is not None:
        obj["status"] = status
    return obj


def cluster(labels: dict[str, str] | None = None, replicas: int = 2) -> dict[str, Any]:
    spec = job()["spec"]["cluster"]["spec"]
    spec["worker"]["replicas"] = replicas
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": "c", "namespace": "ns", "uid": "c-uid", "generation": 1,
                     "labels": {"kueue.x-k8s.io/queue-name": "lq", **(labels or {})}},
        "spec": spec,
    }  # fmt: skip


def recorded(workload: dict[str, Any], flavors: dict[str, Any] | None = None) -> dict[str, Any]:
    """`workload` as it is once the operator recorded its admitted placements."""
    state = queueing(job(), workload, flavors or {})
    assert state is not None
    (record,) = [s for s in workload_steps(workload, state, True, None, NOW) if isinstance(s, Apply)]
    workload["metadata"].setdefault("annotations", {}).update(record.obj["metadata"]["annotations"])
    return workload


def job_workload(**kw: Any) -> dict[str, Any]:
    return desired_workload(job(), job_pod_sets(job()), {})


# -- the Workload ------------------------------------------------------------------------------------------


def test_a_jobs_workload_has_scheduler_worker_and_runner_pod_sets_owned_by_the_job() -> None:
    wl = job_workload()
    assert wl["metadata"]["name"] == workload_name(job()) == "daskjob-j"
    assert wl["spec"]["queueName"] == "lq"
    assert [(p["name"], p["count"]) for p in wl["spec"]["podSets"]] == [
        ("scheduler", 1),
        ("worker", 3),
        ("runner", 1),
    ]
    runner = wl["spec"]["podSets"][2]["template"]["spec"]["containers"][0]
    assert runner["resources"] == {"requests": {"cpu": "200m"}}
    (owner,) = wl["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("DaskJob", "job-uid", True)
    assert "priorityClassRef" not in wl["spec"]


def test_a_priority_class_label_gives_the_workload_its_class_and_value() -> None:
    owner = job({"kueue.x-k8s.io/priority-class": "high"})
    wl = desired_workload(owner, job_pod_sets(owner), {"high": {"metadata": {"name": "high"}, "value": 1000}})
    assert wl["spec"]["priorityClassRef"] == {
        "group": "kueue.x-k8s.io",
        "kind": "WorkloadPriorityClass",
        "name": "high",
    }
    assert wl["spec"]["priority"] == 1000


def test_a_clusters_workload_counts_workers_at_the_autoscalers_maximum_and_each_extra_group() -> None:
    owner = cluster(replicas=2)
    groups = [
        {"metadata": {"name": "c-default"}, "spec": {"worker": {"replicas": 2, "spec": pod("worker")}}},
        {"metadata": {"name": "c-GPU_big"}, "spec": {"worker": {"replicas": 4, "spec": pod("worker", "1")}}},
    ]
    sets = cluster_pod_sets(owner, groups, [{"spec": {"cluster": "c", "minimum": 1, "maximum": 6}}])
    assert [(p["name"], p["count"]) for p in sets] == [("scheduler", 1), ("worker", 6), ("worker-gpu-big", 4)]
    assert pod_set_name("c", "c-default") == "worker"


def test_the_workload_is_created_when_missing_and_replaced_only_while_it_holds_no_quota() -> None:
    wl = job_workload()
    assert workload_steps(wl, queueing(job(), None, {}), False, None, NOW) == [Create(wl)]  # type: ignore[arg-type]
    stale = stored_workload(wl)
    stale["metadata"]["annotations"][POD_SETS_HASH_ANNOTATION] = "old"
    steps = workload_steps(wl, queueing(job(), stale, {}), False, None, NOW)  # type: ignore[arg-type]
    assert [type(s) for s in steps] == [Delete]
    running = recorded(admitted_workload(stale))
    assert workload_steps(wl, queueing(job(), running, {}), True, None, NOW) == []  # type: ignore[arg-type]


# -- admission -> hold or placement -------------------------------------------------------------------------


def test_no_label_means_no_queueing_at_all() -> None:
    owner = job()
    del owner["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    assert queueing(owner, None, {}) is None


def test_admission_maps_to_a_hold_or_a_placement() -> None:
    wl = job_workload()
    missing = queueing(job(), None, {})
    queued = queueing(job(), stored_workload(wl), FLAVORS)
    admitted = queueing(job(), admitted_workload(stored_workload(wl)), FLAVORS)
    evicted = queueing(job(), evicted_workload(admitted_workload(stored_workload(wl))), FLAVORS)
    unavailable = queueing(job(), None, {}, kueue_available=False)
    assert missing is not None and missing.hold is not None and missing.hold.reason == "Queued"
    assert queued is not None and queued.hold is not None and queued.hold.reason == "Queued"
    assert "insufficient unused quota" in queued.hold.message
    assert admitted is not None and admitted.hold is None and admitted.cluster_queue == "cq"
    assert admitted.placement("runner") == Placement(
        {"pool": "batch"}, ({"key": "batch", "operator": "Exists", "effect": "NoSchedule"},)
    )
    assert (
        evicted is not None
        and evicted.hold is not None
        and evicted.hold.reason == "Evicted"
        and evicted.evicted
    )
    assert "Preempted" in evicted.hold.message
    assert (
        unavailable is not None
        and unavailable.hold is not None
        and unavailable.hold.reason == "KueueUnavailable"
    )


def test_an_evicted_workload_gives_its_quota_back_only_once_the_pods_are_gone() -> None:
    wl = job_workload()
    stored = evicted_workload(admitted_workload(stored_workload(wl)))
    state = queueing(job(), stored, FLAVORS)
    assert state is not None
    assert workload_steps(wl, state, True, None, NOW) == []
    (patch,) = workload_steps(wl, state, False, None, NOW)
    assert isinstance(patch, PatchStatus) and patch.resource_version == "7"
    assert patch.patch["status"]["admission"] is None
    conds = {c["type"]: (c["status"], c["reason"]) for c in patch.patch["status"]["conditions"]}
    assert conds["QuotaReserved"] == ("False", "Pending")
    assert conds["Admitted"] == ("False", "NoReservation")
    assert conds["Requeued"] == ("True", "Preempted")
    assert conds["Evicted"] == ("True", "Preempted")  # Kueue resets it when it admits again


def test_a_finished_owner_marks_its_workload_finished_once() -> None:
    wl = job_workload()
    state = queueing(job(), admitted_workload(stored_workload(wl)), FLAVORS)
    assert state is not None
    (patch,) = workload_steps(wl, state, False, ("Succeeded", "The DaskJob successful."), NOW)
    assert isinstance(patch, PatchStatus)
    finished = next(c for c in patch.patch["status"]["conditions"] if c["type"] == "Finished")
    assert (finished["status"], finished["reason"]) == ("True", "Succeeded")
    assert "admission" not in patch.patch["status"]
    done = copy.deepcopy(state.workload)
    assert done is not None
    done["status"]["conditions"].append({"type": "Finished", "status": "True", "reason": "Succeeded"})
    assert workload_steps(wl, Queueing(None, done), False, ("Succeeded", ""), NOW) == []


# -- what the plans do with it ------------------------------------------------------------------------------


def test_a_queued_job_creates_nothing_but_its_workload() -> None:
    p = plan_job(
        JobObservation(job=job(status={"jobStatus": "JobCreated"}), queue=queueing(job(), None, {})), NOW
    )
    assert [o["kind"] for o in p.creates] == ["Workload"]
    assert p.status is not None and p.status["jobStatus"] == "Suspended"  # held, as by spec.suspend
    admitted = next(c for c in p.status["conditions"] if c["type"] == "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "Queued")
    assert [e.reason for e in p.events] == ["Queued"]


def test_an_admitted_job_creates_its_cluster_and_runner_on_the_admitted_flavor() -> None:
    state = queueing(job(), admitted_workload(stored_workload(job_workload())), FLAVORS)
    p = plan_job(JobObservation(job=job(status={"jobStatus": "JobCreated"}), queue=state), NOW)
    made = {o["kind"]: o for o in p.creates}
    assert made["Pod"]["spec"]["nodeSelector"] == {"pool": "batch"}
    assert made["Pod"]["spec"]["tolerations"][0]["key"] == "batch"
    scheduler = made["DaskCluster"]["spec"]["scheduler"]["spec"]
    assert scheduler["nodeSelector"] == {"pool": "batch"}
    assert "kueue.x-k8s.io/queue-name" not in made["DaskCluster"]["metadata"]["labels"]
    assert "kueue.x-k8s.io/queue-name" not in made["Pod"]["metadata"]["labels"]
    assert [e.reason for e in p.events if e.reason == "Admitted"] == ["Admitted"]


def test_an_evicted_running_job_deletes_its_runner_and_cluster_and_says_what_is_lost() -> None:
    wl = evicted_workload(admitted_workload(stored_workload(job_workload())))
    state = queueing(job(), wl, FLAVORS)
    admitted_before = [{"type": "Admitted", "status": "True", "reason": "Admitted", "message": ""}]
    running_job = job(status={"jobStatus": "Running", "conditions": admitted_before})
    owner = [{"kind": "DaskJob", "name": "j", "uid": "job-uid", "controller": True}]
    runner = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j-runner", "namespace": "ns", "uid": "r",
              "ownerReferences": owner}, "status": {"phase": "Running"}}  # fmt: skip
    dc = {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
          "metadata": {"name": "j", "namespace": "ns", "uid": "dc", "ownerReferences": owner}}  # fmt: skip
    p = plan_job(JobObservation(job=running_job, cluster=dc, runner=runner, queue=state, pods_left=3), NOW)
    assert sorted(d.ref.name for d in p.deletes) == ["j", "j-runner"]
    assert not p.creates and not list(p.of_type(PatchStatus))  # pods still there: the quota is kept
    assert p.status is not None and p.status["jobStatus"] == "Suspended"
    (evicted,) = [e for e in p.events if e.reason == "Evicted"]
    assert evicted.type == "Warning" and "lost" in evicted.message
    assert p.requeue_after is not None
    gone = plan_job(JobObservation(job=running_job, queue=state), NOW)
    assert [type(s) for s in gone.of_type(PatchStatus)] == [PatchStatus]


def test_a_held_cluster_runs_no_scheduler_and_its_groups_no_workers() -> None:
    owner = cluster()
    state = queueing(owner, None, {})
    sched = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c-scheduler", "namespace": "ns", "uid": "s",
             "labels": {"dask.org/component": "scheduler"}}}  # fmt: skip
    p = plan_cluster(ClusterObservation(cluster=owner, scheduler_pods=[sched], queue=state), NOW)
    assert [d.ref.name for d in p.deletes] == ["c-scheduler"]
    assert [o["kind"] for o in p.creates] == ["Workload"]
    assert all(o["kind"] != "Pod" for o in p.creates)
    group = {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskWorkerGroup",
             "metadata": {"name": "c-default", "namespace": "ns", "uid": "g"},
             "spec": {"cluster": "c", "worker": {"replicas": 2, "spec": pod("worker")}}}  # fmt: skip
    worker = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c-default-worker-1", "namespace": "ns",
              "uid": "w"}, "status": {"phase": "Running"}}  # fmt: skip
    g = plan_group(GroupObservation(group=group, cluster=owner, pods=[worker], queue=state), NOW)
    assert [d.ref.name for d in g.deletes] == ["c-default-worker-1"] and not g.creates


def test_an_admitted_clusters_workers_get_their_groups_placement() -> None:
    owner = cluster()
    wl = desired_workload(owner, cluster_pod_sets(owner, [], []), {})
    state = queueing(owner, admitted_workload(stored_workload(wl)), FLAVORS)
    group = {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskWorkerGroup",
             "metadata": {"name": "c-default", "namespace": "ns", "uid": "g",
                          "annotations": {PROPAGATED_REPLICAS_ANNOTATION: "2"}},
             "spec": {"cluster": "c", "worker": {"replicas": 2, "spec": pod("worker")}}}  # fmt: skip
    g = plan_group(GroupObservation(group=group, cluster=owner, queue=state), NOW)
    assert len(g.creates) == 2
    assert all(p["spec"]["nodeSelector"] == {"pool": "batch"} for p in g.creates)


def test_a_runner_failing_while_the_eviction_deletes_it_does_not_fail_the_job() -> None:
    wl = evicted_workload(admitted_workload(stored_workload(job_workload())))
    owner = [{"kind": "DaskJob", "name": "j", "uid": "job-uid", "controller": True}]
    runner = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j-runner", "namespace": "ns", "uid": "r",
              "ownerReferences": owner, "deletionTimestamp": "2023-11-14T22:00:00Z"},
              "status": {"phase": "Failed"}}  # fmt: skip
    p = plan_job(
        JobObservation(job=job(status={"jobStatus": "Running"}), runner=runner, queue=queueing(job(), wl, {}),
                       pods_left=1),
        NOW,
    )  # fmt: skip
    assert p.status is not None and p.status["jobStatus"] == "Suspended"


# -- spec.suspend ---------------------------------------------------------------------------------------------


def test_a_suspended_owner_creates_no_workload_and_gives_its_quota_back_once_its_pods_are_gone() -> None:
    """Regressions: a DaskJob created with suspend: true got a Workload Kueue could admit; a suspended admitted
    cluster kept its quota forever."""
    wl = job_workload()
    assert workload_steps(wl, queueing(job(), None, {}), False, None, NOW, suspended=True) == []  # type: ignore[arg-type]
    running = admitted_workload(stored_workload(wl))
    held = queueing(job(), running, {})
    assert held is not None
    assert workload_steps(wl, held, True, None, NOW, suspended=True) == []  # pods still use the quota
    (delete,) = workload_steps(wl, held, False, None, NOW, suspended=True)
    assert isinstance(delete, Delete) and delete.ref.name == running["metadata"]["name"]


def test_plans_of_suspended_labelled_objects_hold_no_workload() -> None:
    from dask_operator.controller.contract.hold import hold_of

    suspended_job = job(status={"jobStatus": "JobCreated"})
    suspended_job["spec"]["suspend"] = True
    p = plan_job(
        JobObservation(
            job=suspended_job, queue=queueing(suspended_job, None, {}), hold=hold_of(suspended_job)
        ),
        NOW,
    )
    assert not p.creates and p.status is not None and p.status["jobStatus"] == "Suspended"

    owner = cluster()
    owner["spec"]["suspend"] = True
    admitted = admitted_workload(
        stored_workload(desired_workload(owner, cluster_pod_sets(owner, [], []), {}))
    )
    p = plan_cluster(
        ClusterObservation(cluster=owner, queue=queueing(owner, admitted, FLAVORS), hold=hold_of(owner)), NOW
    )
    assert [(type(s).__name__, getattr(s, "ref", None) and s.ref.kind) for s in p.of_type(Delete)] == [
        ("Delete", "Workload")
    ]
    assert not any(o["kind"] == "Workload" for o in p.creates)


def test_a_job_on_an_existing_cluster_queues_its_runner_only() -> None:
    """Regression: a DaskJob with spec.clusterRef and a queue label raised KeyError on every reconcile."""
    on_ref = job(status={"jobStatus": "JobCreated"})
    del on_ref["spec"]["cluster"]
    on_ref["spec"]["clusterRef"] = {"name": "shared"}
    (runner_only,) = job_pod_sets(on_ref)
    assert (runner_only["name"], runner_only["count"]) == ("runner", 1)
    p = plan_job(JobObservation(job=on_ref, queue=queueing(on_ref, None, {})), NOW)
    (workload,) = p.creates
    assert [s["name"] for s in workload["spec"]["podSets"]] == ["runner"]


def test_an_admitted_workload_says_when_its_pods_are_ready() -> None:
    """Regression: no PodsReady condition was set, so with Kueue's waitForPodsReady every Dask Workload was
    evicted after its timeout."""
    wl = job_workload()
    running = recorded(admitted_workload(stored_workload(wl)))
    state = queueing(job(), running, {})
    assert state is not None
    (patch,) = workload_steps(wl, state, True, None, NOW, pods_ready=True)
    assert isinstance(patch, PatchStatus)
    ready = next(c for c in patch.patch["status"]["conditions"] if c["type"] == "PodsReady")
    assert (ready["status"], ready["reason"]) == ("True", "PodsReady")
    assert "admission" not in patch.patch["status"]  # the admission is kept
    running["status"]["conditions"].append(ready)
    assert workload_steps(wl, queueing(job(), running, {}), True, None, NOW, pods_ready=True) == []  # type: ignore[arg-type]
    assert workload_steps(wl, queueing(job(), None, {}), False, None, NOW, pods_ready=True) == [Create(wl)]  # type: ignore[arg-type]


def test_placement_is_recorded_at_admission_and_a_later_flavor_edit_rolls_nothing() -> None:
    """Regression: editing a ResourceFlavor changed the pods' template and replaced the scheduler of every
    admitted cluster."""
    wl = admitted_workload(stored_workload(job_workload()))
    wl["status"]["admission"]["podSetAssignments"] = [
        {"name": n, "flavors": {"cpu": "rf"}, "count": c}
        for n, c in (("scheduler", 1), ("worker", 3), ("runner", 1))
    ]
    first = queueing(job(), wl, FLAVORS)
    assert first is not None and not first.placements_recorded
    (record,) = [s for s in workload_steps(job_workload(), first, True, None, NOW) if isinstance(s, Apply)]
    wl["metadata"]["annotations"].update(record.obj["metadata"]["annotations"])
    edited = copy.deepcopy(FLAVORS)
    edited["rf"]["spec"]["nodeLabels"] = {"pool": "elsewhere"}
    later = queueing(job(), wl, edited)
    assert later is not None and later.placements_recorded
    assert later.placement("worker") == first.placement("worker")
    assert later.placement("worker").node_selector == {"pool": "batch"}
    assert not [s for s in workload_steps(job_workload(), later, True, None, NOW) if isinstance(s, Apply)]


def test_an_admitted_cluster_never_runs_more_workers_than_it_was_admitted_with() -> None:
    """Regressions: an admitted cluster scaled from 2 to 6 workers (or given an autoscaler, or raised through
    `replicas` elsewhere) ran them all outside the quota; groups past Kueue's 8 pod sets ran uncounted."""
    owner = cluster(replicas=2)
    wl = desired_workload(owner, cluster_pod_sets(owner, [], []), {})
    state = queueing(owner, admitted_workload(stored_workload(wl)), FLAVORS)

    def group(name: str, replicas: int) -> dict[str, Any]:
        return {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskWorkerGroup",
                "metadata": {"name": name, "namespace": "ns", "uid": name,
                             "annotations": {PROPAGATED_REPLICAS_ANNOTATION: str(replicas)}},
                "spec": {"cluster": "c", "worker": {"replicas": replicas, "spec": pod("worker")}}}  # fmt: skip

    scaled = plan_group(GroupObservation(group=group("c-default", 6), cluster=owner, queue=state), NOW)
    assert len(scaled.creates) == 2
    status = next(s.status for s in scaled.steps if hasattr(s, "status"))
    held = next(c for c in status["conditions"] if c["type"] == "ReplicaFailure")
    assert (held["status"], held["reason"]) == ("True", "NotAdmitted") and "4 are held" in held["message"]

    uncounted = plan_group(GroupObservation(group=group("c-gpu", 3), cluster=owner, queue=state), NOW)
    assert not uncounted.creates
    within = plan_group(GroupObservation(group=group("c-default", 2), cluster=owner, queue=state), NOW)
    assert len(within.creates) == 2
