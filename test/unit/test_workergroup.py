"""DaskWorkerGroup desired state as tables: observed pods and scheduler -> plan."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
from support import builders

from dask_operator.api.v1.names import ANNOTATION_AUTOSCALED_BY
from dask_operator.controller.contract.children import TEMPLATE_HASH_LABEL
from dask_operator.controller.contract.hold import Hold
from dask_operator.controller.contract.objects import rfc3339
from dask_operator.controller.contract.plans import (
    ADOPTION_FIELD_MANAGER,
    AUTOSCALER_FIELD_MANAGER,
    Cause,
    Plan,
    Question,
    ReleaseFields,
)
from dask_operator.controller.contract.scheduler_api import DaskWorker
from dask_operator.controller.planners.cluster import PROPAGATED_REPLICAS_ANNOTATION
from dask_operator.controller.planners.workergroup import (
    GroupObservation,
    GroupSettings,
    RetirementView,
    SchedulerView,
    choose_pods_to_retire,
    plan_group,
    retire_retry_delay,
    worker_name,
    workers_in_pod,
)

NOW = 1_700_000_000.0


def make_cluster() -> dict[str, Any]:
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {
            "name": "c",
            "namespace": "ns",
            "uid": "cluster-uid",
            "labels": {"team": "a", "k": "cluster"},
        },
        "spec": {
            "scheduler": {
                "spec": {"containers": [{"name": "scheduler"}]},
                "service": {"ports": [{"name": "tcp-comm", "port": 8786}]},
            },
            "worker": {"replicas": 1, "spec": {"containers": [{"name": "worker"}]}},
        },
    }


def make_group(replicas: int = 3, image: str = "dask:1", name: str = "c-default") -> dict[str, Any]:
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"{name}-uid",
            "generation": 1,
            "labels": {"k": "group"},
            # the cluster has written its replicas (a default group waits for that: awaits_replicas)
            "annotations": {PROPAGATED_REPLICAS_ANNOTATION: str(replicas)},
            "ownerReferences": [
                {"kind": "DaskCluster", "uid": "cluster-uid", "name": "c", "controller": True},
            ],
        },
        "spec": {
            "cluster": "c",
            "worker": {
                "replicas": replicas,
                "metadata": {"labels": {"dask.org/component": "superworker", "sub": "s"}},
                "spec": {
                    "containers": [
                        {
                            "name": "worker",
                            "image": image,
                            "args": ["dask", "worker", "--name", "$(DASK_WORKER_NAME)"],
                        },
                        {
                            "name": "sidecar",
                            "image": "x",
                            "env": [{"name": "DASK_WORKER_NAME", "value": "mine"}],
                        },
                    ]
                },
            },
        },
    }


def plan(group: dict[str, Any], pods: list[dict[str, Any]] = (), **kw: Any) -> Plan:  # type: ignore[assignment]
    settings = kw.pop("settings", GroupSettings())
    now = kw.pop("now", NOW)
    return plan_group(
        GroupObservation(group, kw.pop("cluster", make_cluster()), list(pods), **kw), now, settings
    )


def adoption_of(result: Plan) -> dict[str, Any] | None:
    return builders.applied(result, "DaskWorkerGroup", ADOPTION_FIELD_MANAGER)


def asks_scheduler(result: Plan) -> bool:
    return result.question is Question.WORKERS


def running(pod: dict[str, Any], n: int, ready: bool = True) -> dict[str, Any]:
    """A pod as the cache shows it once it runs; `n` orders creation (higher is newer)."""
    return builders.running(pod, created_at=NOW - 1000 + n, ip=f"10.0.0.{n}", ready=ready)


def pending(pod: dict[str, Any], n: int) -> dict[str, Any]:
    return builders.pending(pod, created_at=NOW - 1000 + n, ip=f"10.0.0.{n}")


def workers_of(pods: list[dict[str, Any]]) -> tuple[DaskWorker, ...]:
    return tuple(DaskWorker(p["metadata"]["name"], f"tcp://{p['status']['podIP']}:4000") for p in pods)


def scaled_to(replicas: int) -> list[dict[str, Any]]:
    """The running pods of a group that reached `replicas` workers."""
    group = make_group(replicas)
    return [running(p, i) for i, p in enumerate(plan(group).creates)]


def test_scale_up_creates_deterministic_names_and_injects_env() -> None:
    first = plan(make_group(3))
    again = plan(make_group(3))
    names = [p["metadata"]["name"] for p in first.creates]
    assert names == [p["metadata"]["name"] for p in again.creates]
    assert len(set(names)) == 3 and all(n.startswith("c-default-worker-") and len(n) == 27 for n in names)
    pod = first.creates[0]
    env = {c["name"]: {e["name"]: e["value"] for e in c["env"]} for c in pod["spec"]["containers"]}
    assert env["worker"] == {
        "DASK_SCHEDULER_ADDRESS": "tcp://c-scheduler.ns.svc.cluster.local:8786",
        "DASK_WORKER_NAME": pod["metadata"]["name"],
    }
    assert env["sidecar"]["DASK_WORKER_NAME"] == "mine"  # the user's value wins, no duplicate
    assert [e["name"] for e in pod["spec"]["containers"][1]["env"]].count("DASK_WORKER_NAME") == 1


def test_worker_labels_follow_the_reference_precedence() -> None:
    labels = plan(make_group(1)).creates[0]["metadata"]["labels"]
    assert labels["dask.org/cluster-name"] == "c"
    assert labels["dask.org/workergroup-name"] == "c-default"
    assert labels["dask.org/component"] == "worker"
    assert labels["sidecar.istio.io/inject"] == "false"
    assert labels["sub"] == "s"
    assert labels["k"] == "group"  # the group's label, not overridden by the cluster's
    assert labels["team"] == "a"  # cluster labels fill what is missing


def test_names_taken_by_terminating_or_expected_pods_are_skipped() -> None:
    group = make_group(1)
    first = plan(group).creates[0]["metadata"]["name"]
    gone = running(plan(group).creates[0], 1)
    gone["metadata"]["deletionTimestamp"] = rfc3339(NOW)
    second = plan(group, [gone]).creates[0]["metadata"]["name"]
    assert second != first


def test_restart_mid_scale_up_creates_only_the_missing_workers() -> None:
    group = make_group(8)
    full = [p["metadata"]["name"] for p in plan(group).creates]
    pods = [running(p, i) for i, p in enumerate(plan(make_group(2)).creates)]
    rest = [p["metadata"]["name"] for p in plan(group, pods).creates]
    assert sorted([p["metadata"]["name"] for p in pods] + rest) == sorted(full)


def test_batch_size_limits_creations_per_round() -> None:
    result = plan(make_group(5), settings=GroupSettings(batch_size=2, batch_delay=3))
    assert len(result.creates) == 2 and result.requeue_after == 3


def test_batch_rounds_keep_their_pace_when_pod_events_wake_the_group_early() -> None:
    """Pod events re-trigger a reconcile right after a round; the next round waits for the delay anyway."""
    settings = GroupSettings(batch_size=2, batch_delay=6)
    first = [running(p, 0) for p in plan(make_group(2)).creates]  # created at NOW - 1000
    round1 = plan(make_group(8), first, settings=settings)
    assert len(round1.creates) == 2
    fresh = [running(p, 1000) for p in round1.creates]  # the cache now shows them, created at NOW
    early = plan(make_group(8), first + fresh, settings=settings, now=NOW + 2)
    assert early.creates == () and early.requeue_after == pytest.approx(4)
    on_time = plan(make_group(8), first + fresh, settings=settings, now=NOW + 6)
    assert len(on_time.creates) == 2


def test_scale_down_removes_unstarted_pods_first_without_the_scheduler() -> None:
    group = make_group(3)
    pods = [running(p, i) for i, p in enumerate(plan(group).creates)]
    extra = plan(make_group(4), pods).creates[0]
    result = plan(group, [*pods, pending(extra, 9)])
    assert [d.ref.name for d in result.deletes] == [extra["metadata"]["name"]]
    assert not asks_scheduler(result) and result.retire is None


def test_scale_down_of_running_workers_asks_the_scheduler_then_retires_newest() -> None:
    pods = scaled_to(3)
    group = make_group(1)
    first = plan(group, pods)
    assert asks_scheduler(first) and first.deletes == ()
    view = SchedulerView((*workers_of(pods), DaskWorker("other-group-worker", "tcp://10.9.9.9:1")))
    result = plan(group, pods, scheduler=view)
    assert result.retire is not None
    assert [w.name for w in result.retire.workers] == [
        pods[2]["metadata"]["name"],
        pods[1]["metadata"]["name"],
    ]
    assert result.deletes == ()
    # each worker to retire comes with the pod to delete once the scheduler confirms it
    assert [(rp.delete.ref.name, [w.name for w in rp.workers]) for rp in result.retire.pods] == [
        (w.name, [w.name]) for w in result.retire.workers
    ]


def test_scale_down_deletes_never_joined_workers_before_retiring_any() -> None:
    pods = scaled_to(3)
    view = SchedulerView((*workers_of(pods[:2]), DaskWorker("other", "tcp://10.9.9.9:1")))
    result = plan(make_group(2), pods, scheduler=view)
    assert [d.ref.name for d in result.deletes] == [pods[2]["metadata"]["name"]]
    assert result.retire is None


def test_worker_found_by_pod_ip_when_named_differently() -> None:
    pods = scaled_to(2)
    view = SchedulerView(
        (DaskWorker("custom-name", "tcp://10.0.0.1:4000"), DaskWorker("x", "tcp://10.0.0.0:4000"))
    )
    result = plan(make_group(1), pods, scheduler=view)
    assert result.retire is not None and [w.name for w in result.retire.workers] == ["custom-name"]


def test_only_joined_worker_is_retired_not_dropped_while_another_pod_of_the_group_remains() -> None:
    older, newer = scaled_to(2)  # the older one is restarting and has not (re)joined the scheduler
    result = plan(make_group(1), [older, newer], scheduler=SchedulerView(workers_of([newer])))
    assert result.deletes == ()
    assert result.retire is not None and [w.name for w in result.retire.workers] == [
        newer["metadata"]["name"]
    ]


def test_scale_to_zero_does_not_try_to_move_data_nowhere() -> None:
    pods = scaled_to(2)
    result = plan(make_group(0), pods, scheduler=SchedulerView(workers_of(pods)))
    assert result.retire is None
    assert sorted(d.ref.name for d in result.deletes) == sorted(p["metadata"]["name"] for p in pods)


def test_unreachable_scheduler_waits_with_condition_then_forces() -> None:
    pods = scaled_to(3)
    group = make_group(1)
    down = SchedulerView(None, "connection refused")
    waiting = plan(group, pods, scheduler=down, settings=GroupSettings(force_timeout=60))
    assert waiting.deletes == () and waiting.retire is None
    assert waiting.requeue_after is not None and 0 < waiting.requeue_after <= 30
    degraded = next(c for c in waiting.status["conditions"] if c["type"] == "Degraded")  # type: ignore[index]
    assert degraded["reason"] == "SchedulerUnreachable" and degraded["status"] == "True"
    assert [e.reason for e in waiting.events] == ["SchedulerUnreachable"]

    group["status"] = waiting.status
    still = plan(group, pods, scheduler=down, settings=GroupSettings(force_timeout=60), now=NOW + 30)
    assert still.deletes == () and still.events == ()
    forced = plan(group, pods, scheduler=down, settings=GroupSettings(force_timeout=60), now=NOW + 61)
    assert len(forced.deletes) == 2
    assert [e.reason for e in forced.events if e.type == "Warning"] == ["ScaleDownForced"]


def test_rolling_update_surges_one_then_retires_one_old_worker() -> None:
    old_pods = scaled_to(2)
    new_group = make_group(2, image="dask:2")
    step1 = plan(new_group, old_pods)
    assert len(step1.creates) == 1 and step1.deletes == () and step1.retire is None
    progressing = next(c for c in step1.status["conditions"] if c["type"] == "Progressing")  # type: ignore[index]
    assert progressing["reason"] == "RollingUpdate"
    surge = running(step1.creates[0], 10, ready=False)
    # surge pod not ready yet: wait
    assert plan(new_group, [*old_pods, surge]).creates == ()
    assert not asks_scheduler(plan(new_group, [*old_pods, surge]))
    surge = running(step1.creates[0], 10)
    # a Ready pod whose worker has not joined the scheduler yet cannot take the old worker's data
    waiting = plan(new_group, [*old_pods, surge], scheduler=SchedulerView(workers_of(old_pods)))
    assert waiting.retire is None and waiting.deletes == () and waiting.requeue_after == 1.0
    step2 = plan(new_group, [*old_pods, surge], scheduler=SchedulerView(workers_of([*old_pods, surge])))
    assert step2.retire is not None and [w.name for w in step2.retire.workers] == [
        old_pods[1]["metadata"]["name"]
    ]
    assert step2.status["updatedReplicas"] == 1  # type: ignore[index]


def test_rolling_update_replaces_unstarted_old_pods_at_once() -> None:
    group = make_group(2)
    old = [pending(p, i) for i, p in enumerate(plan(group).creates)]
    result = plan(make_group(2, image="dask:2"), old)
    assert sorted(d.ref.name for d in result.deletes) == sorted(p["metadata"]["name"] for p in old)


def test_finished_pods_are_replaced() -> None:
    pods = scaled_to(2)
    pods[0]["status"]["phase"] = "Failed"
    result = plan(make_group(2), pods)
    assert [d.ref.name for d in result.deletes] == [pods[0]["metadata"]["name"]]
    assert len(result.creates) == 1


def test_crash_looping_worker_degrades_the_group_with_the_reason() -> None:
    pods = scaled_to(1)
    pods[0]["status"]["containerStatuses"] = [
        {
            "name": "worker",
            "ready": False,
            "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 3}},
        }
    ]
    result = plan(make_group(1), pods)
    degraded = next(c for c in result.status["conditions"] if c["type"] == "Degraded")  # type: ignore[index]
    assert degraded["status"] == "True" and degraded["reason"] == "WorkerFailing"
    assert "CrashLoopBackOff" in degraded["message"] and "exit code 3" in degraded["message"]


def test_steady_state_plans_nothing_and_reports_ready() -> None:
    pods = scaled_to(3)
    result = plan(make_group(3), pods)
    assert (result.creates, result.deletes, result.retire, adoption_of(result)) == ((), (), None, None)
    assert result.status["replicas"] == 3 and result.status["readyReplicas"] == 3  # type: ignore[index]
    ready = next(c for c in result.status["conditions"] if c["type"] == "Ready")  # type: ignore[index]
    assert ready["status"] == "True"


def test_group_without_cluster_waits_and_group_without_owner_is_adopted() -> None:
    result = plan(make_group(2), cluster=None)
    assert result.creates == () and adoption_of(result) is None
    assert {c["type"]: c["reason"] for c in result.status["conditions"]}["Progressing"] == "WaitingForCluster"  # type: ignore[index]
    orphan = make_group(2, name="c-extra")
    orphan["metadata"]["ownerReferences"] = []
    adopt = adoption_of(plan(orphan))
    assert adopt is not None
    (ref,) = adopt["metadata"]["ownerReferences"]
    assert ref["uid"] == "cluster-uid" and ref["controller"] and ref["blockOwnerDeletion"]


@pytest.mark.parametrize("sequence", [[1, 5, 2, 4], [3, 0, 2], [2, 8]])
def test_any_sequence_of_replica_changes_converges_to_the_last(sequence: list[int]) -> None:
    pods: list[dict[str, Any]] = []
    n = 0
    for replicas in sequence:
        for _ in range(10):
            group = make_group(replicas)
            result = plan(group, pods)
            if asks_scheduler(result):
                result = plan(group, pods, scheduler=SchedulerView(workers_of(pods)))
            gone = {d.ref.uid for d in result.deletes}
            if result.retire is not None:
                gone |= {rp.delete.ref.uid for rp in result.retire.pods}
            pods = [p for p in pods if p["metadata"]["uid"] not in gone]
            for created in result.creates:
                n += 1
                pods.append(running(created, n))
        assert len(pods) == replicas
    assert len({p["metadata"]["name"] for p in pods}) == len(pods)


def test_worker_name_depends_on_uid_template_and_ordinal_only() -> None:
    group = make_group(1)
    assert worker_name(group, "h", 0) == worker_name(copy.deepcopy(group), "h", 0)
    assert len({worker_name(group, "h", 0), worker_name(group, "h", 1), worker_name(group, "g", 0)}) == 3
    assert plan(make_group(1)).creates[0]["metadata"]["labels"][TEMPLATE_HASH_LABEL]


def test_every_worker_of_a_multi_worker_pod_is_retired_with_it_and_no_other() -> None:
    """`--nworkers 2` names a pod's workers <pod>-0 and <pod>-1; both go with the pod, a worker whose name
    only starts like the pod's does not, and with hostNetwork no worker is matched by the shared IP."""
    pods = scaled_to(3)
    workers = tuple(
        DaskWorker(f"{p['metadata']['name']}-{i}", f"tcp://{p['status']['podIP']}:{4000 + i}")
        for p in pods
        for i in (0, 1)
    )
    result = plan(make_group(1), pods, scheduler=SchedulerView(workers))
    assert result.retire is not None
    newest = sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])[1:]
    assert {rp.delete.ref.name: sorted(w.name for w in rp.workers) for rp in result.retire.pods} == {
        p["metadata"]["name"]: [f"{p['metadata']['name']}-0", f"{p['metadata']['name']}-1"] for p in newest
    }
    lookalike = DaskWorker(pods[2]["metadata"]["name"] + "-x", "tcp://10.9.9.9:1")
    assert workers_in_pod(pods[2], [lookalike]) == ()
    shared = copy.deepcopy(pods[2])
    shared["spec"]["hostNetwork"] = True
    stranger = DaskWorker("other-group-worker", f"tcp://{shared['status']['podIP']}:5000")
    assert workers_in_pod(shared, [stranger]) == ()
    assert workers_in_pod(pods[2], [stranger]) == (stranger,)  # a pod's own IP, no hostNetwork: unambiguous
    # a deleted pod's worker still listed on the IP a new pod was given is not the new pod's
    stale = DaskWorker(pods[0]["metadata"]["name"], f"tcp://{pods[2]['status']['podIP']}:4000")
    assert workers_in_pod(pods[2], [stale]) == ()


# -- which pods go, and retirements that end ---------------------------------------------------------------


def holding(pods: list[dict[str, Any]], nbytes: dict[int, int], **kw: Any) -> tuple[DaskWorker, ...]:
    """One worker per pod, pod i holding nbytes[i] bytes (0 if absent); kw sets fields of every worker."""
    return tuple(
        DaskWorker(p["metadata"]["name"], f"tcp://{p['status']['podIP']}:4000", nbytes=nbytes.get(i, 0), **kw)
        for i, p in enumerate(pods)
    )


def test_scale_down_retires_the_pods_holding_the_least_data_then_the_newest() -> None:
    pods = scaled_to(4)  # pods[3] is the newest
    view = SchedulerView(holding(pods, {0: 10, 1: 5_000, 2: 10, 3: 90_000}))
    result = plan(make_group(2), pods, scheduler=view)
    assert result.retire is not None
    # pods 0 and 2 hold 10 bytes each; of those the newer (2) comes first
    assert [rp.delete.ref.name for rp in result.retire.pods] == [
        pods[2]["metadata"]["name"],
        pods[0]["metadata"]["name"],
    ]


def test_choice_never_takes_a_pod_receiving_data_from_a_retirement_in_progress() -> None:
    pods = scaled_to(3)
    retiring = DaskWorker("other-group-w", "tcp://10.9.9.9:1", nbytes=50, status="closing_gracefully")
    workers = (*holding(pods, {0: 100, 1: 200, 2: 300}), retiring)
    receiving = tuple(dataclasses.replace(w, incoming=2) if w.nbytes == 100 else w for w in workers)
    chosen, skipped = choose_pods_to_retire(pods, receiving, 1)
    assert chosen == [pods[1]] and skipped == [pods[0]]
    # the same transfers with no retirement in progress are ordinary computation: no reason to skip
    quiet = tuple(w for w in receiving if not w.retiring)
    assert choose_pods_to_retire(pods, quiet, 1) == ([pods[0]], [])
    # a pod the scheduler is already retiring comes first, whatever it holds
    going = tuple(
        dataclasses.replace(w, status="closing_gracefully") if w.nbytes == 300 else w for w in quiet
    )
    assert choose_pods_to_retire(pods, going, 1)[0] == [pods[2]]


def test_retirement_in_flight_is_not_asked_again_nor_waited_for() -> None:
    pods = scaled_to(3)
    group = make_group(2)
    first = plan(group, pods, scheduler=SchedulerView(holding(pods, {})))
    assert first.retire is not None
    flying = RetirementView(first.retire, attempt=1, asked=NOW)
    again = plan(group, pods, retirement=flying, now=NOW + 20)
    assert not asks_scheduler(again) and again.retire is None and again.deletes == ()
    progressing = condition_of(again, "Progressing")
    assert (
        progressing["reason"] == "RetiringWorkers" and pods[2]["metadata"]["name"] in progressing["message"]
    )


def test_answered_retirement_deletes_exactly_the_retired_pods_by_uid() -> None:
    pods = scaled_to(3)
    group = make_group(1)
    first = plan(group, pods, scheduler=SchedulerView(holding(pods, {})))
    assert first.retire is not None and len(first.retire.pods) == 2
    names = [w.name for w in first.retire.workers]
    done = RetirementView(first.retire, 1, NOW, answered=NOW + 3, retired=frozenset(names))
    # the workers are listed again, by a list asked after the answer, before any pod goes
    relist = plan(group, pods, retirement=done, now=NOW + 4)
    assert asks_scheduler(relist) and relist.asked_after == NOW + 3 and relist.deletes == ()
    left = tuple(w for w in holding(pods, {}) if w.name not in names)
    result = plan(group, pods, retirement=done, scheduler=SchedulerView(left, asked=NOW + 3.5), now=NOW + 4)
    assert not asks_scheduler(result) and result.retire is None
    assert {(d.ref.name, d.cause) for d in result.deletes} == {(n, Cause.RETIRED) for n in names}
    # a new pod that reuses a retired pod's name (same ordinal) is another object: never deleted for it
    reborn = copy.deepcopy(pods[2])
    reborn["metadata"]["uid"] = "new-uid"
    later = plan(make_group(2), [pods[0], reborn], retirement=done, now=NOW + 60)
    assert later.deletes == ()


def test_a_worker_that_joined_a_retired_pod_since_the_list_is_retired_before_the_pod_goes() -> None:
    """The list a retirement was made from is old by the time it is answered: a worker may have joined one of
    its pods since (a second process of the pod, or its container restarted). Before the fix that pod was
    deleted with the worker in it; now it is retired first, and only a list without it lets the pod go."""
    pods = scaled_to(2)
    group = make_group(1)
    first = plan(group, pods, scheduler=SchedulerView(holding(pods, {})))
    assert first.retire is not None
    (name,) = [w.name for w in first.retire.workers]
    done = RetirementView(first.retire, 1, NOW, answered=NOW + 3, retired=frozenset({name}))
    other = next(i for i, p in enumerate(pods) if p["metadata"]["name"] != name)
    stale = SchedulerView(tuple(w for w in holding(pods, {other: 90_000}) if w.name != name), asked=NOW + 1)
    assert asks_scheduler(plan(group, pods, retirement=done, scheduler=stale, now=NOW + 4))
    joined = DaskWorker(f"{name}-1", "tcp://10.0.0.2:40000", nbytes=4096)
    fresh = SchedulerView((*stale.workers, joined), asked=NOW + 3)  # type: ignore[misc]
    again = plan(group, pods, retirement=done, scheduler=fresh, now=NOW + 4)
    assert again.deletes == ()
    assert again.retire is not None and [w.name for w in again.retire.workers] == [joined.name]
    empty = SchedulerView(stale.workers, asked=NOW + 9)
    gone = RetirementView(again.retire, 1, NOW + 5, answered=NOW + 8, retired=frozenset({joined.name}))
    assert [d.ref.name for d in plan(group, pods, retirement=gone, scheduler=empty, now=NOW + 9).deletes] == [
        name
    ]
    # a list that could not be had keeps the pod: it waits like any pod whose scheduler cannot be asked
    down = SchedulerView(None, "connection refused", asked=NOW + 4)
    assert plan(group, pods, retirement=done, scheduler=down, now=NOW + 4).deletes == ()


def test_refused_retirement_names_the_kept_worker_and_backs_off() -> None:
    pods = scaled_to(3)
    group = make_group(2)
    view = SchedulerView(holding(pods, {}))
    first = plan(group, pods, scheduler=view)
    assert first.retire is not None
    (kept,) = [w.name for w in first.retire.workers]
    refused = RetirementView(first.retire, 1, NOW, answered=NOW + 2)
    result = plan(group, pods, retirement=refused, now=NOW + 2)
    assert result.retire is None and result.deletes == () and not asks_scheduler(result)
    for kind in ("Degraded", "ReplicaFailure"):
        cond = condition_of(result, kind)
        assert (
            cond["status"] == "True" and cond["reason"] == "RetirementIncomplete" and kept in cond["message"]
        )
    assert [(e.type, e.reason) for e in result.events] == [("Warning", "RetirementIncomplete")]
    assert kept in result.events[0].message
    assert result.requeue_after == 5.0
    # after the delay it is asked again, and the problem stays reported (no Event per attempt)
    group["status"] = result.status
    retry = plan(group, pods, retirement=refused, scheduler=view, now=NOW + 8)
    assert retry.retire is not None and retry.events == ()
    assert condition_of(retry, "Degraded")["reason"] == "RetirementIncomplete"
    # the second refusal waits twice as long; then the worker is free and the pod goes
    second = RetirementView(first.retire, 2, NOW + 8, answered=NOW + 9)
    assert plan(group, pods, retirement=second, scheduler=view, now=NOW + 15).retire is None
    assert plan(group, pods, retirement=second, scheduler=view, now=NOW + 20).retire is not None
    freed = RetirementView(first.retire, 3, NOW + 20, answered=NOW + 21, retired=frozenset({kept}))
    group["status"] = retry.status
    left = SchedulerView(tuple(w for w in view.workers or () if w.name != kept), asked=NOW + 21)
    done = plan(group, pods, retirement=freed, scheduler=left, now=NOW + 21)
    assert [d.ref.name for d in done.deletes] == [kept]
    assert condition_of(done, "Degraded")["status"] == "False" and condition_of(done, "ReplicaFailure") == {}


def test_retirement_that_timed_out_is_never_asked_again_while_the_scheduler_retires() -> None:
    pods = scaled_to(2)
    group = make_group(1)
    first = plan(group, pods, scheduler=SchedulerView(holding(pods, {})))
    assert first.retire is not None
    (name,) = [w.name for w in first.retire.workers]
    timed_out = RetirementView(first.retire, 1, NOW, answered=NOW + 120, error="read timeout", acted=True)
    still = holding(pods, {})
    still = tuple(dataclasses.replace(w, status="closing_gracefully") if w.name == name else w for w in still)
    for now in (NOW + 121, NOW + 200, NOW + 5000):
        waiting = plan(group, pods, retirement=timed_out, scheduler=SchedulerView(still), now=now)
        assert waiting.retire is None and waiting.deletes == ()
        assert condition_of(waiting, "Degraded")["reason"] == "RetirementTimedOut"
    # the scheduler finished: the worker left it, and its pod goes as retired
    gone = tuple(w for w in still if w.name != name)
    done = plan(
        group, pods, retirement=timed_out, scheduler=SchedulerView(gone, asked=NOW + 5000), now=NOW + 5001
    )
    assert [(d.ref.name, d.cause) for d in done.deletes] == [(name, Cause.RETIRED)]
    # or it finished and the worker's process ended, its container restarted and the new worker joined again
    # under the same name: it may hold data by now, so it is retired (once the retry delay passed), not deleted
    restarted = copy.deepcopy(pods)
    for pod in restarted:
        if pod["metadata"]["name"] == name:
            pod["status"]["containerStatuses"] = [{"name": "worker", "restartCount": 1, "ready": True}]
    rejoined = SchedulerView(holding(pods, {}), asked=NOW + 5000)
    again = plan(group, restarted, retirement=timed_out, scheduler=rejoined, now=NOW + 5001)
    assert again.deletes == () and again.retire is not None
    assert [w.name for w in again.retire.workers] == [name]
    # once the restarted worker left the scheduler, the pod goes without a second request
    left = SchedulerView(gone, asked=NOW + 5000)
    after = plan(group, restarted, retirement=timed_out, scheduler=left, now=NOW + 5001)
    assert after.retire is None and [(d.ref.name, d.cause) for d in after.deletes] == [(name, Cause.RETIRED)]


def test_retry_delay_doubles_up_to_five_minutes() -> None:
    assert [retire_retry_delay(n) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert retire_retry_delay(50) == 300.0


def condition_of(result: Plan, kind: str) -> dict[str, Any]:
    assert result.status is not None
    return next((c for c in result.status["conditions"] if c["type"] == kind), {})


def test_autoscaler_ownership_of_replicas_is_released_once_no_autoscaler_names_the_cluster() -> None:
    pods = scaled_to(2)
    group = make_group(2)
    group["metadata"]["annotations"][ANNOTATION_AUTOSCALED_BY] = "scaler"
    assert list(plan(group, pods, autoscaled=True).of_type(ReleaseFields)) == []
    (release,) = plan(group, pods, autoscaled=False).of_type(ReleaseFields)
    assert release.ref.uid == group["metadata"]["uid"] and release.field_manager == AUTOSCALER_FIELD_MANAGER
    assert release.annotation == ANNOTATION_AUTOSCALED_BY
    assert list(plan(make_group(2), pods, autoscaled=False).of_type(ReleaseFields)) == []


def test_a_clusters_new_default_group_runs_nothing_until_the_cluster_wrote_its_replicas() -> None:
    fresh = make_group(1)  # as created: the CRD's default replicas, no propagation yet
    del fresh["metadata"]["annotations"][PROPAGATED_REPLICAS_ANNOTATION]
    waiting = plan(fresh, [])
    assert not waiting.steps and waiting.question is None  # no pod, not even a status write
    assert len(plan(make_group(1), []).creates) == 1  # the same group once the cluster wrote its replicas
    other = make_group(1, name="c-extra")  # a group the user added: its replicas are whatever it says
    del other["metadata"]["annotations"][PROPAGATED_REPLICAS_ANNOTATION]
    assert len(plan(other, []).creates) == 1


# -- a held cluster ----------------------------------------------------------------------------------------


def test_a_held_clusters_group_deletes_every_pod_without_retiring_and_keeps_replicas() -> None:
    pods = scaled_to(3)
    going = builders.terminating(pods[0])
    result = plan(make_group(3), [going, *pods[1:]], hold=Hold("Suspended", "held"))
    assert {d.ref.name for d in result.deletes} == {p["metadata"]["name"] for p in pods[1:]}
    assert all(d.cause is Cause.HELD for d in result.deletes)
    assert not result.creates and result.retire is None and result.question is None
    assert result.status is not None and result.status["replicas"] == 0
    assert builders.condition(result, "Ready")["reason"] == "Suspended"
    assert builders.condition(result, "Progressing")["reason"] == "Suspending"


def test_a_held_clusters_empty_group_creates_nothing_and_is_stable() -> None:
    result = plan(make_group(3), [], hold=Hold("Queued", "waiting"))
    assert not result.creates and not result.deletes
    assert builders.condition(result, "Progressing")["status"] == "False"
    assert builders.condition(result, "Ready")["reason"] == "Queued"


def test_lifting_the_hold_restores_the_same_worker_count() -> None:
    assert len(plan(make_group(3), [], hold=None).creates) == 3


def test_a_disruption_budget_is_applied_when_asked_and_deleted_when_the_field_goes() -> None:
    group = make_group(2)
    assert builders.applied(plan(group), "PodDisruptionBudget") is None
    group["spec"]["worker"]["disruptionBudget"] = {"maxUnavailable": 1}
    pdb = builders.applied(plan(group), "PodDisruptionBudget")
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1
    observed = builders.running(pdb, uid="pdb-uid")
    assert plan(group, disruption_budgets=[observed]).deletes == ()
    del group["spec"]["worker"]["disruptionBudget"]
    result = plan(group, disruption_budgets=[observed])
    assert [(d.ref.kind, d.ref.name, d.ref.uid) for d in result.deletes] == [
        ("PodDisruptionBudget", "c-default", "pdb-uid")
    ]


def test_worker_pods_get_the_drain_hook_and_grace_without_changing_their_template_hash() -> None:
    with_hook = plan(make_group(1)).creates[0]
    without = plan(make_group(1), settings=GroupSettings(worker_grace=0)).creates[0]
    assert with_hook["spec"]["terminationGracePeriodSeconds"] == 60
    assert "preStop" in with_hook["spec"]["containers"][0]["lifecycle"]
    assert "lifecycle" not in without["spec"]["containers"][0]
    # Running workers made by an operator without the hook are not rolled by one with it.
    labels = [p["metadata"]["labels"][TEMPLATE_HASH_LABEL] for p in (with_hook, without)]
    assert labels[0] == labels[1]


def test_a_worker_pod_deleted_from_outside_is_replaced_at_once() -> None:
    pods = scaled_to(3)
    drained = builders.terminating(pods[0])
    result = plan(make_group(3), [drained, *pods[1:]])
    (replacement,) = result.creates
    assert replacement["metadata"]["name"] not in {p["metadata"]["name"] for p in pods}
    assert result.deletes == () and result.retire is None and not asks_scheduler(result)
