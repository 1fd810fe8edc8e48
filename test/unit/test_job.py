"""DaskJob desired state as tables: observed job, cluster and runner pod -> plan."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from support.builders import applied, created

from dask_operator.controller.job import (
    RUNNER_REFUSED_TIMEOUT,
    WAIT_SECONDS,
    JobObservation,
    desired_job_cluster,
    desired_runner_pod,
    plan_job,
)
from dask_operator.controller.objects import rfc3339
from dask_operator.controller.plans import ADOPTION_FIELD_MANAGER, Plan

NOW = 1_700_000_000.0
UID = "job-uid"


def deleted(plan: Plan) -> tuple[str, str, str] | None:
    return next(((d.ref.namespace, d.ref.name, d.ref.uid) for d in plan.deletes), None)


def adopted(plan: Plan) -> dict[str, Any] | None:
    return applied(plan, "DaskCluster", ADOPTION_FIELD_MANAGER)


def make_job(status: dict[str, Any] | None = None, **spec_extra: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskJob",
        "metadata": {
            "name": "j",
            "namespace": "ns",
            "uid": UID,
            "generation": 1,
            "labels": {"team": "a", "dask.org/component": "bogus"},
            "annotations": {
                "note": "x",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "kopf.zalando.org/last-handled-configuration": "{}",
            },
        },
        "spec": {
            "job": {
                "metadata": {"labels": {"runner-label": "r"}, "annotations": {"runner-note": "y"}},
                "spec": {
                    "restartPolicy": "Never",
                    "initContainers": [{"name": "init", "image": "busybox"}],
                    "containers": [
                        {"name": "job", "image": "dask", "args": ["python", "run.py"]},
                        {
                            "name": "sidecar",
                            "image": "dask",
                            "env": [{"name": "DASK_SCHEDULER_ADDRESS", "value": "tcp://elsewhere:1"}],
                        },
                    ],
                },
            },
            "cluster": {
                "metadata": {"labels": {"cluster-label": "c"}, "annotations": {"cluster-note": "z"}},
                "spec": {
                    "idleTimeout": 30,
                    "scheduler": {
                        "spec": {"containers": [{"name": "scheduler", "image": "dask"}]},
                        "service": {"ports": [{"name": "tcp-comm", "port": 8786}]},
                    },
                    "worker": {"replicas": 2, "spec": {"containers": [{"name": "worker", "image": "dask"}]}},
                },
            },
            **spec_extra,
        },
    }
    if status is not None:
        job["status"] = status
    return job


def owned(obj: dict[str, Any], uid: str = UID, kind: str = "DaskJob") -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["uid"] = f"{obj['metadata']['name']}-uid"
    obj["metadata"]["ownerReferences"] = [{"kind": kind, "name": "j", "uid": uid, "controller": True}]
    return obj


def cluster(uid: str = UID, kind: str = "DaskJob", terminating: bool = False) -> dict[str, Any]:
    obj = owned(desired_job_cluster(make_job()), uid, kind)
    if terminating:
        obj["metadata"]["deletionTimestamp"] = "2023-11-14T22:00:00Z"
    return obj


def runner(
    phase: str = "Pending", uid: str = UID, terminating: bool = False, **status: Any
) -> dict[str, Any]:
    pod = owned(desired_runner_pod(make_job()), uid)
    pod["status"] = {"phase": phase, **status}
    if terminating:
        pod["metadata"]["deletionTimestamp"] = "2023-11-14T22:00:00Z"
    return pod


def status_of(job_status: str, **extra: Any) -> dict[str, Any]:
    status = {"jobStatus": job_status, "observedGeneration": 1}
    if job_status != "JobCreated":
        status.update(clusterName="j", jobRunnerPodName="j-runner")
    status.update(extra)
    return status


def plan(status: dict[str, Any] | None = None, **observed: Any) -> Plan:
    return plan_job(JobObservation(job=make_job(status), **observed), NOW)


def condition(p: Plan, kind: str) -> dict[str, Any]:
    assert p.status is not None
    return next(c for c in p.status["conditions"] if c["type"] == kind)


def reasons(p: Plan) -> list[str]:
    return [e.reason for e in p.events]


# -- children ------------------------------------------------------------------------------------------------


def test_cluster_is_named_after_the_job_with_its_metadata_and_only_scheduler_and_worker() -> None:
    obj = desired_job_cluster(make_job())
    meta = obj["metadata"]
    assert (obj["kind"], meta["name"], meta["namespace"]) == ("DaskCluster", "j", "ns")
    assert meta["labels"] == {
        "team": "a",
        "dask.org/component": "bogus",  # the job's labels are copied as they are (7E-50)
        "cluster-label": "c",
        "dask.org/cluster-name": "j",
    }
    assert meta["annotations"] == {"note": "x", "cluster-note": "z"}
    (ref,) = meta["ownerReferences"]
    assert ref == {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskJob",
        "name": "j",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    job_spec = make_job()["spec"]["cluster"]["spec"]
    # idleTimeout is deliberately not copied (7E-60): the cluster lives as long as the runner.
    assert obj["spec"] == {"scheduler": job_spec["scheduler"], "worker": job_spec["worker"]}


def test_runner_pod_labels_annotations_env_and_owner() -> None:
    pod = desired_runner_pod(make_job())
    meta = pod["metadata"]
    assert meta["name"] == "j-runner"
    assert meta["labels"] == {
        "team": "a",
        "runner-label": "r",
        "dask.org/cluster-name": "j",
        "dask.org/component": "job-runner",  # reserved labels win over the job's
        "sidecar.istio.io/inject": "false",
    }
    assert meta["annotations"] == {"note": "x", "runner-note": "y"}
    assert meta["ownerReferences"][0]["uid"] == UID
    job, sidecar = pod["spec"]["containers"]
    assert job["env"] == [
        {"name": "DASK_SCHEDULER_ADDRESS", "value": "tcp://j-scheduler.ns.svc.cluster.local:8786"}
    ]
    assert sidecar["env"] == [{"name": "DASK_SCHEDULER_ADDRESS", "value": "tcp://elsewhere:1"}]  # user's wins
    assert "env" not in pod["spec"]["initContainers"][0]
    assert pod["spec"]["restartPolicy"] == "Never"


def test_runner_address_follows_the_service_port_and_cluster_domain() -> None:
    job = make_job()
    job["spec"]["cluster"]["spec"]["scheduler"]["service"]["ports"][0]["port"] = 9000
    pod = created(plan_job(JobObservation(make_job(status_of("JobCreated"))), NOW, "example.org"), "Pod")
    assert pod is not None
    assert pod["spec"]["containers"][0]["env"][0]["value"] == "tcp://j-scheduler.ns.svc.example.org:8786"
    pod = desired_runner_pod(job)
    assert pod["spec"]["containers"][0]["env"][0]["value"] == "tcp://j-scheduler.ns.svc.cluster.local:9000"


def test_children_do_not_alias_the_job() -> None:
    job = make_job()
    desired_runner_pod(job)["spec"]["containers"][0]["args"].append("x")
    desired_job_cluster(job)["spec"]["worker"]["replicas"] = 9
    assert job == make_job()


# -- status transitions ------------------------------------------------------------------------------------------


def test_a_new_job_first_records_job_created_and_creates_nothing() -> None:
    p = plan(None)
    assert p.status is not None and p.status["jobStatus"] == "JobCreated"
    assert set(p.status) == {"jobStatus", "observedGeneration", "conditions"}
    assert (created(p, "DaskCluster"), created(p, "Pod"), deleted(p)) == (None, None, None)
    assert reasons(p) == ["JobCreated"]
    assert condition(p, "Progressing")["status"] == "True"
    assert condition(p, "Complete")["status"] == "False"


def test_job_created_creates_cluster_and_runner_and_records_cluster_created() -> None:
    p = plan(status_of("JobCreated"))
    assert created(p, "DaskCluster") is not None and created(p, "DaskCluster")["metadata"]["name"] == "j"
    assert created(p, "Pod") is not None and created(p, "Pod")["metadata"]["name"] == "j-runner"
    assert p.status is not None
    assert p.status["jobStatus"] == "ClusterCreated"
    assert (p.status["clusterName"], p.status["jobRunnerPodName"]) == ("j", "j-runner")
    assert reasons(p) == ["ClusterCreated"]
    assert p.requeue_after is None


@pytest.mark.parametrize(
    ("before", "observed", "after", "creates"),
    [
        # cluster and runner exist, runner pending: nothing to do
        ("ClusterCreated", {"cluster": cluster(), "runner": runner("Pending")}, "ClusterCreated", ()),
        # a cluster deleted by hand (or never seen) is recreated before the runner runs (level-triggered);
        # under a running runner it is not: the job fails (ClusterLost)
        ("ClusterCreated", {"runner": runner("Pending")}, "ClusterCreated", ("cluster",)),
        ("Running", {"runner": runner("Running")}, "Failed", ()),
        # the runner is (re)created while it has not started
        ("ClusterCreated", {"cluster": cluster()}, "ClusterCreated", ("runner",)),
        # an existing cluster (operator restarted after creating it) does not stop the runner
        ("JobCreated", {"cluster": cluster()}, "ClusterCreated", ("runner",)),
        # runner running
        ("ClusterCreated", {"cluster": cluster(), "runner": runner("Running")}, "Running", ()),
        ("JobCreated", {"cluster": cluster(), "runner": runner("Running")}, "Running", ()),
        # status never moves backwards
        ("Running", {"cluster": cluster(), "runner": runner("Pending")}, "Running", ()),
    ],
)
def test_active_job_table(
    before: str, observed: dict[str, Any], after: str, creates: tuple[str, ...]
) -> None:
    p = plan(status_of(before), **observed)
    assert p.status is not None and p.status["jobStatus"] == after
    assert ("cluster" in creates) == (created(p, "DaskCluster") is not None)
    assert ("runner" in creates) == (created(p, "Pod") is not None)
    assert deleted(p) is None
    assert condition(p, "Complete")["status"] == "False"


def test_running_records_start_time_from_the_container_and_an_event_once() -> None:
    pod = runner(
        "Running",
        containerStatuses=[{"name": "job", "state": {"running": {"startedAt": "2023-11-14T22:13:10Z"}}}],
    )
    p = plan(status_of("ClusterCreated"), cluster=cluster(), runner=pod)
    assert p.status is not None
    assert p.status["startTime"] == "2023-11-14T22:13:10Z"
    assert reasons(p) == ["Started"]
    assert condition(p, "Ready")["status"] == "True"
    # the next reconcile changes nothing and says nothing
    again = plan(p.status, cluster=cluster(), runner=pod)
    assert again.status == p.status and again.events == ()


def test_running_without_container_times_uses_now() -> None:
    p = plan(status_of("ClusterCreated"), cluster=cluster(), runner=runner("Running"))
    assert p.status is not None and p.status["startTime"] == rfc3339(NOW)


@pytest.mark.parametrize(
    ("phase", "after", "reason"), [("Succeeded", "Successful", "Completed"), ("Failed", "Failed", "Failed")]
)
def test_finished_runner_ends_the_job_and_deletes_its_cluster(phase: str, after: str, reason: str) -> None:
    pod = runner(
        phase,
        containerStatuses=[
            {
                "name": "job",
                "state": {
                    "terminated": {
                        "exitCode": 0 if phase == "Succeeded" else 1,
                        "startedAt": "2023-11-14T22:13:10Z",
                        "finishedAt": "2023-11-14T22:13:40Z",
                    }
                },
            }
        ],
    )
    before = status_of("Running", startTime="2023-11-14T22:13:11Z")
    p = plan(before, cluster=cluster(), runner=pod)
    assert p.status is not None
    assert p.status["jobStatus"] == after
    assert set(p.status) == {
        "observedGeneration",
        "conditions",
        "clusterName",
        "jobRunnerPodName",
        "jobStatus",
        "startTime",
        "endTime",
    }
    assert p.status["startTime"] == "2023-11-14T22:13:11Z"  # kept from Running
    assert p.status["endTime"] == "2023-11-14T22:13:40Z"
    assert deleted(p) == ("ns", "j", "j-uid")
    assert (created(p, "DaskCluster"), created(p, "Pod")) == (None, None)
    assert reasons(p) == [reason]
    assert condition(p, "Complete")["status"] == ("True" if phase == "Succeeded" else "False")
    assert condition(p, "Failed")["status"] == ("True" if phase == "Failed" else "False")
    assert condition(p, "Progressing")["status"] == "False"


def test_a_job_that_finished_before_it_was_seen_running_gets_both_times() -> None:
    p = plan(status_of("ClusterCreated"), cluster=cluster(), runner=runner("Succeeded"))
    assert p.status is not None and p.status["jobStatus"] == "Successful"
    assert p.status["startTime"] == p.status["endTime"] == rfc3339(NOW)
    assert reasons(p) == ["Completed"]


def test_completion_is_idempotent_when_the_cluster_is_already_gone() -> None:
    # 7E-57 (#975): the cluster was deleted but the status write failed; the retry still completes the job.
    p = plan(status_of("Running", startTime="2023-11-14T22:13:11Z"), runner=runner("Succeeded"))
    assert p.status is not None and p.status["jobStatus"] == "Successful"
    assert deleted(p) is None and created(p, "DaskCluster") is None


def test_terminal_status_is_final_and_only_deletes_a_leftover_cluster() -> None:
    done = plan(status_of("Running"), cluster=cluster(), runner=runner("Succeeded")).status
    assert done is not None
    # cluster still there (delete failed): delete again, status unchanged, no events
    p = plan(done, cluster=cluster(), runner=runner("Succeeded"))
    assert p.status == done and p.events == ()
    assert deleted(p) == ("ns", "j", "j-uid")
    # cluster terminating or gone, runner deleted: nothing at all, status kept as it was
    for observed in ({"cluster": cluster(terminating=True)}, {}):
        p = plan(done, **observed)
        assert p.status == done and p.events == ()
        assert (created(p, "DaskCluster"), created(p, "Pod"), deleted(p)) == (None, None, None)


def test_a_terminal_status_written_by_another_operator_gets_conditions_once() -> None:
    legacy = {
        "jobStatus": "Failed",
        "clusterName": "j",
        "jobRunnerPodName": "j-runner",
        "endTime": "2023-11-14T22:13:40Z",
    }
    p = plan(legacy, runner=runner("Failed"))
    assert p.status is not None and p.status["endTime"] == "2023-11-14T22:13:40Z"
    assert condition(p, "Failed")["status"] == "True"
    assert p.events == ()


def test_runner_deleted_while_running_fails_the_job() -> None:
    p = plan(status_of("Running", startTime="2023-11-14T22:13:11Z"), cluster=cluster())
    assert p.status is not None and p.status["jobStatus"] == "Failed"
    assert condition(p, "Failed")["reason"] == "RunnerLost"
    assert deleted(p) is not None and created(p, "Pod") is None
    assert [e.type for e in p.events] == ["Warning"]


def test_someone_elses_cluster_is_used_but_never_deleted() -> None:
    theirs = cluster(uid="other-uid", kind="Something")
    p = plan(status_of("JobCreated"), cluster=theirs)
    assert created(p, "Pod") is not None and created(p, "DaskCluster") is None and adopted(p) is None
    p = plan(status_of("Running"), cluster=theirs, runner=runner("Succeeded"))
    assert deleted(p) is None


def test_an_unowned_cluster_is_adopted() -> None:
    orphan = cluster()
    del orphan["metadata"]["ownerReferences"]
    p = plan(status_of("JobCreated"), cluster=orphan)
    assert adopted(p) is not None
    assert adopted(p)["metadata"]["ownerReferences"][0]["uid"] == UID
    assert created(p, "Pod") is not None


@pytest.mark.parametrize(
    "observed",
    [
        {"cluster": cluster(terminating=True)},  # the previous incarnation's cluster is being deleted
        {"cluster": cluster(uid="old-job-uid")},  # ... or about to be, by the garbage collector
        {"cluster": cluster(), "runner": runner("Running", uid="old-job-uid", terminating=True)},
    ],
)
def test_leftovers_of_a_deleted_job_with_the_same_name_are_waited_for(observed: dict[str, Any]) -> None:
    p = plan(status_of("JobCreated"), **observed)
    assert created(p, "Pod") is None and created(p, "DaskCluster") is None
    assert p.requeue_after == WAIT_SECONDS
    assert p.status is not None and p.status["jobStatus"] == "JobCreated"
    assert condition(p, "Degraded")["status"] == "False"


def test_a_foreign_pod_with_the_runner_name_is_reported() -> None:
    p = plan(status_of("ClusterCreated"), cluster=cluster(), runner=runner("Running", uid="someone"))
    assert p.status is not None and p.status["jobStatus"] == "ClusterCreated"
    assert condition(p, "Degraded")["reason"] == "RunnerNameTaken"
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "RunnerNameTaken")]
    assert created(p, "Pod") is None


def test_crash_looping_runner_is_degraded_with_a_warning() -> None:
    pod = runner(
        "Running",
        containerStatuses=[
            {
                "name": "job",
                "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1}},
            }
        ],
    )
    p = plan(status_of("Running", startTime="2023-11-14T22:13:11Z"), cluster=cluster(), runner=pod)
    assert p.status is not None and p.status["jobStatus"] == "Running"
    degraded = condition(p, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "RunnerFailing")
    assert "restartPolicy Never" in degraded["message"]
    assert [(e.type, e.reason) for e in p.events] == [("Warning", "RunnerFailing")]


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    first = plan(status_of("ClusterCreated"), cluster=cluster(), runner=runner("Running")).status
    assert first is not None
    later = plan_job(JobObservation(make_job(first), cluster(), runner("Running")), NOW + 100)
    assert later.status == first


def test_a_runner_refused_for_too_long_fails_the_job_and_deletes_its_cluster() -> None:
    refused = {
        "type": "ReplicaFailure",
        "status": "True",
        "reason": "FailedCreate",
        "message": "Creating Pod j-runner was refused by the API server: exceeded quota.",
        "lastTransitionTime": rfc3339(NOW - RUNNER_REFUSED_TIMEOUT + 10),
    }
    status = status_of("ClusterCreated", conditions=[refused])
    waiting = plan(status, cluster=cluster())
    assert created(waiting, "Pod") is not None and deleted(waiting) is None  # tried again
    late = plan_job(JobObservation(job=make_job(status), cluster=cluster()), NOW + 20)
    assert late.status is not None and late.status["jobStatus"] == "Failed"
    failed = next(c for c in late.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "RunnerNotCreated" and "exceeded quota" in failed["message"]
    assert deleted(late) == ("ns", "j", "j-uid") and created(late, "Pod") is None


def test_a_cluster_deleted_under_a_running_runner_fails_the_job_and_is_not_recreated() -> None:
    for gone in (None, cluster(terminating=True)):
        p = plan(status_of("Running"), cluster=gone, runner=runner("Running"))
        assert created(p, "DaskCluster") is None and created(p, "Pod") is None
        assert p.status is not None and p.status["jobStatus"] == "Failed"
        failed = next(c for c in p.status["conditions"] if c["type"] == "Failed")
        assert (
            failed["reason"] == "ClusterLost"
            and "was deleted while the runner was running" in failed["message"]
        )
