"""Properties every planner holds over random specs and observed states (hypothesis), besides its tables:

- it never raises;
- it is deterministic (the same observation, in any order, gives the same names and writes);
- it is idempotent: once the world shows what a plan wrote, planning again repeats none of it, and a few
  rounds reach a plan with no writes at all (the steady state costs nothing);
- it never plans to delete a pod of another group or cluster, nor to retire another group's workers;
- planning again on the object showing the status just planned writes nothing new (a status fixed point);
- it plans the same on pods as the cache keeps them (stripped of what no planner reads).

A small in-memory world applies a plan the way the API server and the kubelet would (creates appear
running and joined, deletes and retirements remove, applies and statuses are stored). Examples are bounded
so the default suite stays quick (~5 s).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from support.builders import controlled_by, finished, killed, pending, running, terminating

from dask_operator.controller.contract.children import TEMPLATE_HASH_LABEL
from dask_operator.controller.contract.plans import Apply, Plan
from dask_operator.controller.contract.scheduler_api import DaskWorker
from dask_operator.controller.indexes import pod_for_cache
from dask_operator.controller.planners.autoscaler import (
    AutoscalerObservation,
    SchedulerTarget,
    plan_autoscaler,
)
from dask_operator.controller.planners.cluster import (
    PROPAGATED_REPLICAS_ANNOTATION,
    ClusterObservation,
    IdleAnswer,
    desired_scheduler_pod,
    plan_cluster,
)
from dask_operator.controller.planners.job import (
    JobObservation,
    desired_job_cluster,
    desired_runner_pod,
    plan_job,
)
from dask_operator.controller.planners.workergroup import (
    GroupObservation,
    SchedulerView,
    plan_group,
    worker_name,
    worker_template,
)

NOW = 1_700_000_000.0
# The default suite runs the same 60 examples each time (deterministic); PROPERTY_EXAMPLES=N explores N fresh
# random ones per planner (a failure prints the example and its reproduction blob).
_EXPLORE = int(os.environ.get("PROPERTY_EXAMPLES", "0"))
EXAMPLES = settings(
    max_examples=_EXPLORE or 60,
    derandomize=not _EXPLORE,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
ROUNDS = 12

Obj = dict[str, Any]


def _cluster(name: str = "c", replicas: int = 2, idle: int = 0, image: str = "dask:1") -> Obj:
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name, "namespace": "ns", "uid": f"{name}-uid", "generation": 1},
        "spec": {
            "idleTimeout": idle,
            "scheduler": {
                "spec": {
                    "containers": [{"name": "scheduler", "image": image, "args": ["dask", "scheduler"]}]
                },
                "service": {"ports": [{"name": "tcp-comm", "port": 8786}]},
            },
            "worker": {"replicas": replicas, "spec": {"containers": [{"name": "worker", "image": "dask:1"}]}},
        },
    }


def _group(cluster: Obj, replicas: int, name: str = "c-default", image: str = "dask:1") -> Obj:
    group = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"{name}-uid",
            "generation": 1,
            "annotations": {PROPAGATED_REPLICAS_ANNOTATION: str(replicas)},
        },
        "spec": {
            "cluster": cluster["metadata"]["name"],
            "worker": {"replicas": replicas, "spec": {"containers": [{"name": "worker", "image": image}]}},
        },
    }
    return controlled_by(group, cluster)


def _writes(plan: Plan, stored_status: Obj | None, applied: dict[tuple[str, str, str], Obj]) -> list[str]:
    """What executing `plan` would write: the executor skips a status equal to the stored one and an apply
    equal to the last one this field manager applied to that object."""
    out = [f"create {o['metadata']['name']}" for o in plan.creates]
    out += [f"delete {d.ref.name}" for d in plan.deletes]
    out += [f"retire {w.name}" for w in (plan.retire.workers if plan.retire else ())]
    out += [f"event {e.reason}: {e.message}" for e in plan.events]
    for step in plan.of_type(Apply):
        key = (step.field_manager, step.obj["kind"], step.obj["metadata"]["name"])
        if applied.get(key) != step.obj:
            out.append(f"apply {key}")
    if plan.status is not None and plan.status != stored_status:
        out.append("status")
    return out


def _record_applies(plan: Plan, applied: dict[tuple[str, str, str], Obj]) -> None:
    for step in plan.of_type(Apply):
        applied[(step.field_manager, step.obj["kind"], step.obj["metadata"]["name"])] = step.obj


def _no_repeat(first: Plan, again: Plan) -> None:
    """Nothing `first` wrote is written again once the world shows it."""
    assert not {o["metadata"]["name"] for o in first.creates} & {o["metadata"]["name"] for o in again.creates}
    assert not {d.ref.uid for d in first.deletes} & {d.ref.uid for d in again.deletes}
    assert not set(first.events) & set(again.events), (first.events, again.events)


# -- worker groups ---------------------------------------------------------------------------------------

POD_STATES = ("pending", "ready", "not-ready", "failed", "succeeded", "terminating", "killed", "oom")


@st.composite
def group_worlds(draw: st.DrawFn) -> dict[str, Any]:
    cluster = _cluster()
    group = _group(cluster, draw(st.integers(0, 5)), image=draw(st.sampled_from(["dask:1", "dask:2"])))
    current = worker_template(group, cluster, "cluster.local")["metadata"]["labels"][TEMPLATE_HASH_LABEL]
    old = worker_template(_group(cluster, 1, image="dask:0"), cluster, "cluster.local")
    specs = draw(
        st.lists(
            st.tuples(st.integers(0, 7), st.booleans(), st.sampled_from(POD_STATES), st.booleans()),
            max_size=7,
            unique_by=lambda s: (s[0], s[1]),
        )
    )
    pods, joined = [], []
    for n, (ordinal, is_current, state, has_joined) in enumerate(specs):
        template = worker_template(group, cluster, "cluster.local") if is_current else copy.deepcopy(old)
        hash_ = current if is_current else template["metadata"]["labels"][TEMPLATE_HASH_LABEL]
        pod = controlled_by({**template, "metadata": {**template["metadata"]}}, group)
        pod["metadata"]["name"] = worker_name(group, hash_, ordinal)
        pods.append(_pod_in_state(pod, state, n))
        if has_joined and state in ("ready", "not-ready", "killed", "oom", "terminating"):
            joined.append(pods[-1]["metadata"]["name"])
    # another group's workers on the same scheduler: never this group's to retire
    others = [
        DaskWorker(f"c-other-worker-{i:010x}", f"tcp://10.1.0.{i}:4000")
        for i in range(draw(st.integers(0, 2)))
    ]
    reachable = draw(st.booleans())
    return {"cluster": cluster, "group": group, "pods": pods, "joined": joined, "others": others,
            "reachable": reachable}  # fmt: skip


def _pod_in_state(pod: Obj, state: str, n: int) -> Obj:
    kw = {"created_at": NOW - 1000 + n, "ip": f"10.0.0.{n + 1}"}
    if state == "pending":
        return pending(pod, **kw)
    if state in ("ready", "not-ready"):
        return running(pod, ready=state == "ready", **kw)
    if state == "failed":
        return finished(running(pod, **kw), "Failed", code=137, at=NOW - 10)
    if state == "succeeded":
        return finished(running(pod, **kw), "Succeeded", code=0, at=NOW - 10)
    if state == "terminating":
        return terminating(running(pod, **kw))
    reason = "OOMKilled" if state == "oom" else "Error"
    return killed(running(pod, **kw), NOW - 20, reason=reason)


def _is_ready(pod: Obj) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def _worker(pod: Obj) -> DaskWorker:
    return DaskWorker(pod["metadata"]["name"], f"tcp://{pod['status'].get('podIP', '0.0.0.0')}:4000")


def _plan_group(world: dict[str, Any]) -> Plan:
    obs = GroupObservation(world["group"], world["cluster"], list(world["pods"]))
    plan = plan_group(obs, NOW)
    if plan.question is not None:
        pods = {p["metadata"]["name"]: p for p in world["pods"]}
        workers = tuple(_worker(pods[n]) for n in world["joined"] if n in pods) + tuple(world["others"])
        view = SchedulerView(workers if world["reachable"] else None, "connection refused")
        plan = plan_group(dataclasses.replace(obs, scheduler=view), NOW)
    return plan


def _apply_group(world: dict[str, Any], plan: Plan, applied: dict[tuple[str, str, str], Obj]) -> None:
    gone = {d.ref.uid for d in plan.deletes}
    if plan.retire is not None:
        gone |= {p.delete.ref.uid for p in plan.retire.pods}
    world["pods"] = [
        p
        for p in world["pods"]
        if p["metadata"]["uid"] not in gone and "deletionTimestamp" not in p["metadata"]
    ]
    # the kubelet moves on: pods that were pending or not ready run and join the scheduler
    for i, pod in enumerate(world["pods"]):
        if pod["status"].get("phase") in ("Pending", "Running") and not _is_ready(pod):
            world["pods"][i] = running(pod, created_at=NOW - 1000 + i, ip=pod["status"]["podIP"])
    world["joined"] += [p["metadata"]["name"] for p in world["pods"] if p["status"].get("phase") == "Running"]
    for n, pod in enumerate(plan.creates):
        world["pods"].append(running(pod, created_at=NOW - 100 + n, ip=f"10.0.1.{n + 1}"))
        world["joined"].append(pod["metadata"]["name"])
    if plan.status is not None:
        world["group"] = {**world["group"], "status": plan.status}
    _record_applies(plan, applied)


@EXAMPLES
@given(group_worlds())
def test_worker_group_planner(world: dict[str, Any]) -> None:
    note(f"initial world: {copy.deepcopy(world)}")
    plan = _plan_group(world)
    own = {p["metadata"]["uid"]: p for p in world["pods"]}
    # never another group's pod or worker
    assert all(d.ref.uid in own for d in plan.deletes)
    if plan.retire is not None:
        assert all(p.delete.ref.uid in own for p in plan.retire.pods)
        assert not set(plan.retire.workers) & set(world["others"])
    # deterministic, whatever order the cache lists the pods in
    shuffled = {**world, "pods": list(reversed(world["pods"]))}
    assert _plan_group(shuffled) == _plan_group(copy.deepcopy(world)) == plan or _same_writes(
        _plan_group(shuffled), plan
    )
    # idempotent, and converging to a plan with no writes
    applied: dict[tuple[str, str, str], Obj] = {}
    for _ in range(ROUNDS):
        _apply_group(world, plan, applied)
        again = _plan_group(world)
        note(f"then: {_writes(again, world['group'].get('status'), applied)} {again.notes}")
        _no_repeat(plan, again)
        plan = again
        if not _writes(plan, world["group"].get("status"), applied):
            break
    else:
        raise AssertionError(
            f"no steady state after {ROUNDS} rounds: {_writes(plan, world['group'].get('status'), applied)}"
        )
    live = [p for p in world["pods"] if "deletionTimestamp" not in p["metadata"]]
    if world["reachable"]:
        assert len(live) == world["group"]["spec"]["worker"]["replicas"]


def _same_writes(a: Plan, b: Plan) -> bool:
    return (
        sorted(o["metadata"]["name"] for o in a.creates) == sorted(o["metadata"]["name"] for o in b.creates)
        and sorted(d.ref.uid for d in a.deletes) == sorted(d.ref.uid for d in b.deletes)
        and a.status == b.status
    )


# -- clusters --------------------------------------------------------------------------------------------

SCHEDULER_STATES = ("none", "pending", "ready", "failed", "killed", "old-template", "terminating")


@st.composite
def cluster_worlds(draw: st.DrawFn) -> dict[str, Any]:
    cluster = _cluster(replicas=draw(st.integers(0, 5)), idle=draw(st.sampled_from([0, 0, 60])))
    state = draw(st.sampled_from(SCHEDULER_STATES))
    scheduler: list[Obj] = []
    if state != "none":
        template = cluster if state != "old-template" else _cluster(image="dask:0")
        pod = controlled_by(desired_scheduler_pod(template), cluster)
        scheduler = [_pod_in_state(pod, {"old-template": "ready"}.get(state, state), 0)]
    other = _cluster("d")
    groups = [_group(other, 2, name="d-default")] if draw(st.booleans()) else []
    if draw(st.booleans()):
        groups.append(_group(cluster, draw(st.integers(0, 3))))
    return {"cluster": cluster, "scheduler": scheduler, "service": None, "groups": groups,
            "idle": draw(st.sampled_from([None, NOW - 5, NOW - 600]))}  # fmt: skip


def _plan_cluster(world: dict[str, Any]) -> Plan:
    mine = [g for g in world["groups"] if g["spec"]["cluster"] == world["cluster"]["metadata"]["name"]]
    obs = ClusterObservation(world["cluster"], list(world["scheduler"]), world["service"], mine)
    plan = plan_cluster(obs, NOW)
    if plan.question is not None:
        plan = plan_cluster(dataclasses.replace(obs, idle=IdleAnswer(world["idle"], True)), NOW)
    return plan


def _apply_cluster(world: dict[str, Any], plan: Plan, applied: dict[tuple[str, str, str], Obj]) -> None:
    gone = {d.ref.uid for d in plan.deletes}
    # pods deleted now, or terminating since the last round (the kubelet finished them), are gone
    world["scheduler"] = [
        p
        for p in world["scheduler"]
        if p["metadata"]["uid"] not in gone and "deletionTimestamp" not in p["metadata"]
    ]
    world["deleted"] = world["cluster"]["metadata"]["uid"] in gone
    for pod in plan.creates:
        world["scheduler"].append(running(pod, created_at=NOW - 50))
    for step in plan.of_type(Apply):
        obj, name = step.obj, step.obj["metadata"]["name"]
        if obj["kind"] == "Service":
            world["service"] = obj
        else:
            groups = {g["metadata"]["name"]: g for g in world["groups"]}
            group = copy.deepcopy(
                groups.get(name) or {**obj, "metadata": {**obj["metadata"], "uid": f"{name}-uid"}}
            )
            group["metadata"]["annotations"] = {**group["metadata"].get("annotations", {}),
                                                **obj["metadata"].get("annotations", {})}  # fmt: skip
            replicas = obj["spec"]["worker"].get("replicas", group["spec"]["worker"].get("replicas"))
            if step.field_manager == "dask-operator":
                group["spec"] = copy.deepcopy(obj["spec"])
            group["spec"]["worker"]["replicas"] = replicas
            groups[name] = group
            world["groups"] = list(groups.values())
    if plan.status is not None:
        world["cluster"] = {**world["cluster"], "status": plan.status}
    _record_applies(plan, applied)


@EXAMPLES
@given(cluster_worlds())
def test_cluster_planner(world: dict[str, Any]) -> None:
    plan = _plan_cluster(world)
    cluster_uid = world["cluster"]["metadata"]["uid"]
    mine = {p["metadata"]["uid"] for p in world["scheduler"]} | {cluster_uid}
    assert all(d.ref.uid in mine for d in plan.deletes), "deletes only its own scheduler pod (or itself)"
    assert all(o["metadata"]["name"] == "c-scheduler" for o in plan.creates)
    assert all(a["metadata"]["name"] in ("c-scheduler", "c-default") for a in plan.applies)
    assert _plan_cluster(copy.deepcopy(world)) == plan
    applied: dict[tuple[str, str, str], Obj] = {}
    for _ in range(ROUNDS):
        _apply_cluster(world, plan, applied)
        if world["deleted"]:
            return  # idle for longer than spec.idleTimeout: the cluster is gone
        again = _plan_cluster(world)
        _no_repeat(plan, again)
        plan = again
        if not _writes(plan, world["cluster"].get("status"), applied):
            break
    else:
        raise AssertionError(f"no steady state: {_writes(plan, world['cluster'].get('status'), applied)}")
    assert [
        p["metadata"]["name"] for p in world["scheduler"] if "deletionTimestamp" not in p["metadata"]
    ] == ["c-scheduler"]


# -- jobs ------------------------------------------------------------------------------------------------

JOB_STATUSES = (None, "JobCreated", "ClusterCreated", "Running", "Successful", "Failed")
RUNNER_PHASES = ("none", "Pending", "Running", "Succeeded", "Failed", "foreign", "terminating")
JOB_CLUSTERS = ("none", "own", "foreign", "terminating", "orphan")


def _job(status: str | None) -> Obj:
    cluster = _cluster("j")
    job: Obj = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskJob",
        "metadata": {"name": "j", "namespace": "ns", "uid": "job-uid", "generation": 1},
        "spec": {
            "job": {"spec": {"restartPolicy": "Never", "containers": [{"name": "job", "image": "dask"}]}},
            "cluster": {"spec": cluster["spec"]},
        },
    }
    if status is not None:
        job["status"] = {"jobStatus": status, "observedGeneration": 1}
    return job


@st.composite
def job_worlds(draw: st.DrawFn) -> dict[str, Any]:
    job = _job(draw(st.sampled_from(JOB_STATUSES)))
    stranger = {"apiVersion": "v1", "kind": "Deployment", "metadata": {"name": "x", "uid": "x-uid"}}
    cluster_state = draw(st.sampled_from(JOB_CLUSTERS))
    cluster = None
    if cluster_state != "none":
        base = {**desired_job_cluster(job)}
        base["metadata"] = {**base["metadata"], "uid": "j-uid"}
        cluster = {"own": controlled_by(base, job), "foreign": controlled_by(base, stranger),
                   "terminating": terminating(controlled_by(base, job)), "orphan": base}[cluster_state]  # fmt: skip
        if cluster_state == "orphan":
            cluster["metadata"].pop("ownerReferences", None)
    phase = draw(st.sampled_from(RUNNER_PHASES))
    runner = None
    if phase != "none":
        pod = desired_runner_pod(job)
        pod["metadata"] = {**pod["metadata"], "uid": "j-runner-uid"}
        runner = controlled_by(pod, stranger if phase == "foreign" else job)
        runner["status"] = {"phase": "Running" if phase in ("foreign", "terminating") else phase}
        if phase == "terminating":
            runner = terminating(runner)
    return {"job": job, "cluster": cluster, "runner": runner}


def _apply_job(world: dict[str, Any], plan: Plan, applied: dict[tuple[str, str, str], Obj]) -> None:
    for d in plan.deletes:
        if world["cluster"] is not None and d.ref.uid == world["cluster"]["metadata"]["uid"]:
            world["cluster"] = None  # the garbage collector took it
    for obj in plan.creates:
        obj = controlled_by({**obj, "metadata": {**obj["metadata"], "uid": f"{obj['metadata']['name']}-uid"}},
                            world["job"])  # fmt: skip
        if obj["kind"] == "Pod":
            world["runner"] = {**obj, "status": {"phase": "Pending"}}
        else:
            world["cluster"] = obj
    for step in plan.of_type(Apply):
        if step.obj["kind"] == "DaskCluster" and world["cluster"] is not None:
            world["cluster"] = controlled_by(world["cluster"], world["job"])
    if plan.status is not None:
        world["job"] = {**world["job"], "status": plan.status}
    _record_applies(plan, applied)


@EXAMPLES
@given(job_worlds())
def test_job_planner(world: dict[str, Any]) -> None:
    def plan_of(w: dict[str, Any]) -> Plan:
        return plan_job(JobObservation(w["job"], w["cluster"], w["runner"]), NOW)

    plan = plan_of(world)
    for d in plan.deletes:  # only its own cluster, never a pod, never someone else's cluster
        assert d.ref.kind == "DaskCluster" and world["cluster"] is not None
        refs = world["cluster"]["metadata"].get("ownerReferences") or []
        assert any(r.get("uid") == "job-uid" and r.get("controller") for r in refs)
    assert plan_of(copy.deepcopy(world)) == plan
    applied: dict[tuple[str, str, str], Obj] = {}
    for _ in range(ROUNDS):
        _apply_job(world, plan, applied)
        again = plan_of(world)
        _no_repeat(plan, again)
        plan = again
        if not _writes(plan, world["job"].get("status"), applied):
            break
    else:
        raise AssertionError(f"no steady state: {_writes(plan, world['job'].get('status'), applied)}")


# -- autoscalers -----------------------------------------------------------------------------------------


@st.composite
def autoscaler_worlds(draw: st.DrawFn) -> dict[str, Any]:
    cluster = _cluster()
    minimum = draw(st.integers(0, 4))
    autoscaler: Obj = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskAutoscaler",
        "metadata": {"name": "a", "namespace": "ns", "uid": "a-uid", "generation": 1},
        "spec": {"cluster": "c", "minimum": minimum, "maximum": minimum + draw(st.integers(0, 6))},
    }
    if draw(st.booleans()):
        autoscaler = controlled_by(autoscaler, cluster)
    if draw(st.booleans()):
        until = NOW + draw(st.sampled_from([-10.0, 30.0]))
        autoscaler["metadata"]["annotations"] = {"kubernetes.dask.org/cooldown-until": repr(until)}
    scheduler = controlled_by(desired_scheduler_pod(cluster), cluster)
    scheduler = running(scheduler, ready=draw(st.booleans()))
    group = _group(cluster, draw(st.integers(0, 8))) if draw(st.integers(0, 5)) else None
    target = draw(st.one_of(st.none(), st.integers(0, 20)))
    return {"autoscaler": autoscaler, "cluster": cluster if draw(st.integers(0, 5)) else None,
            "scheduler": [scheduler], "group": group, "target": target}  # fmt: skip


def _plan_autoscaler(world: dict[str, Any]) -> Plan:
    service = {"metadata": {"name": "c-scheduler", "namespace": "ns"}, "spec": {}}
    obs = AutoscalerObservation(
        world["autoscaler"], world["cluster"], world["scheduler"], service, world["group"]
    )
    plan = plan_autoscaler(obs, NOW)
    if plan.question is not None:
        answer = SchedulerTarget(world["target"], "" if world["target"] is not None else "refused")
        plan = plan_autoscaler(dataclasses.replace(obs, scheduler=answer), NOW)
    return plan


def _apply_autoscaler(world: dict[str, Any], plan: Plan, applied: dict[tuple[str, str, str], Obj]) -> None:
    for step in plan.of_type(Apply):
        obj = step.obj
        if obj["kind"] == "DaskWorkerGroup":
            group = copy.deepcopy(world["group"])
            group["spec"]["worker"]["replicas"] = obj["spec"]["worker"]["replicas"]
            world["group"] = group
        elif step.field_manager == "dask-operator-adoption":
            world["autoscaler"] = controlled_by(world["autoscaler"], world["cluster"])
        else:
            autoscaler = copy.deepcopy(world["autoscaler"])
            autoscaler["metadata"]["annotations"] = {**autoscaler["metadata"].get("annotations", {}),
                                                     **obj["metadata"]["annotations"]}  # fmt: skip
            world["autoscaler"] = autoscaler
    if plan.status is not None:
        world["autoscaler"] = {**world["autoscaler"], "status": plan.status}
    _record_applies(plan, applied)


@EXAMPLES
@given(autoscaler_worlds())
def test_autoscaler_planner(world: dict[str, Any]) -> None:
    plan = _plan_autoscaler(world)
    assert not plan.deletes and not plan.creates and plan.retire is None
    for step in plan.of_type(Apply):  # only the default group of its own cluster, and itself
        assert (step.obj["kind"], step.obj["metadata"]["name"]) in {("DaskWorkerGroup", "c-default"),
                                                                    ("DaskAutoscaler", "a")}  # fmt: skip
    assert _plan_autoscaler(copy.deepcopy(world)) == plan
    applied: dict[tuple[str, str, str], Obj] = {}
    for _ in range(ROUNDS):
        _apply_autoscaler(world, plan, applied)
        again = _plan_autoscaler(world)
        _no_repeat(plan, again)
        plan = again
        if not _writes(plan, world["autoscaler"].get("status"), applied):
            break
    else:
        raise AssertionError(f"no steady state: {_writes(plan, world['autoscaler'].get('status'), applied)}")


# -- a status shown changes nothing else ------------------------------------------------------------------
# The controllers do not reconcile on the watch echo of their own status write (runtime NotOwnStatusEcho):
# that is sound only if planning again on the object showing the status it just wrote plans no new write.
# The job planner does not hold it (jobStatus steps JobCreated -> ClusterCreated -> Running through its own
# status), so the job controller keeps reconciling on its echoes.


def _status_fixed_point(first: Plan, again: Plan) -> None:
    """`again` (planned on the world that shows `first`'s status and nothing else new) writes nothing that
    `first` did not: the same creates, deletes, applies and retirement, the same status, no new Event."""
    assert again.status == first.status, "the status written is planned again as is"
    assert [o["metadata"]["name"] for o in again.creates] == [o["metadata"]["name"] for o in first.creates]
    assert [d.ref.uid for d in again.deletes] == [d.ref.uid for d in first.deletes]
    assert [(a.field_manager, a.obj) for a in again.of_type(Apply)] == [
        (a.field_manager, a.obj) for a in first.of_type(Apply)
    ]
    assert again.retire == first.retire
    assert set(again.events) <= set(first.events), (first.events, again.events)


@EXAMPLES
@given(group_worlds())
def test_worker_group_status_is_a_fixed_point(world: dict[str, Any]) -> None:
    plan = _plan_group(world)
    if plan.status is not None:
        _status_fixed_point(plan, _plan_group({**world, "group": {**world["group"], "status": plan.status}}))


@EXAMPLES
@given(cluster_worlds())
def test_cluster_status_is_a_fixed_point(world: dict[str, Any]) -> None:
    plan = _plan_cluster(world)
    if plan.status is not None:
        shown = {**world, "cluster": {**world["cluster"], "status": plan.status}}
        _status_fixed_point(plan, _plan_cluster(shown))


@EXAMPLES
@given(autoscaler_worlds())
def test_autoscaler_status_is_a_fixed_point(world: dict[str, Any]) -> None:
    plan = _plan_autoscaler(world)
    if plan.status is not None:
        shown = {**world, "autoscaler": {**world["autoscaler"], "status": plan.status}}
        _status_fixed_point(plan, _plan_autoscaler(shown))


# -- pods as the cache keeps them -------------------------------------------------------------------------
# The cache strips pods of what no planner reads (controller/indexes.pod_for_cache): every plan is the same.


def _cached(pods: list[Obj]) -> list[Obj]:
    return [pod_for_cache(copy.deepcopy(p)) for p in pods]


@EXAMPLES
@given(group_worlds())
def test_worker_group_plans_the_same_on_cached_pods(world: dict[str, Any]) -> None:
    assert _plan_group({**world, "pods": _cached(world["pods"])}) == _plan_group(world)


@EXAMPLES
@given(cluster_worlds())
def test_cluster_plans_the_same_on_cached_pods(world: dict[str, Any]) -> None:
    assert _plan_cluster({**world, "scheduler": _cached(world["scheduler"])}) == _plan_cluster(world)


@EXAMPLES
@given(job_worlds())
def test_job_plans_the_same_on_a_cached_runner(world: dict[str, Any]) -> None:
    def plan_of(w: dict[str, Any]) -> Plan:
        return plan_job(JobObservation(w["job"], w["cluster"], w["runner"]), NOW)

    runner = world["runner"] and _cached([world["runner"]])[0]
    assert plan_of({**world, "runner": runner}) == plan_of(world)


@EXAMPLES
@given(autoscaler_worlds())
def test_autoscaler_plans_the_same_on_cached_pods(world: dict[str, Any]) -> None:
    assert _plan_autoscaler({**world, "scheduler": _cached(world["scheduler"])}) == _plan_autoscaler(world)
