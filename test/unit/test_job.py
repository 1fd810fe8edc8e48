"""DaskJob desired state as tables: observed job, cluster and runner pod -> plan."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from support.builders import applied, created

from dask_operator.controller.contract.hold import hold_of
from dask_operator.controller.contract.objects import rfc3339
from dask_operator.controller.contract.plans import ADOPTION_FIELD_MANAGER, Cause, Plan
from dask_operator.controller.planners.job import (
    RUNNER_REFUSED_TIMEOUT,
    WAIT_SECONDS,
    JobObservation,
    desired_job_cluster,
    desired_runner_pod,
    plan_job,
)

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
    assert meta["annotations"] == {
        "note": "x",
        "cluster-note": "z",
        "kubernetes.dask.org/created-by-job": UID,
    }
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
        "attempts",  # one runner, the one seen Running
    } | ({"failed", "failures"} if phase == "Failed" else set())
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


@pytest.mark.parametrize("owner_kind", ["Something", None])
def test_a_cluster_of_the_jobs_name_it_did_not_create_is_neither_used_adopted_nor_deleted(
    owner_kind: str | None,
) -> None:
    """Regression: a DaskJob named like a standalone DaskCluster adopted it and deleted it when it ended."""
    theirs = cluster(uid="other-uid", kind=owner_kind or "Something")
    del theirs["metadata"]["annotations"]["kubernetes.dask.org/created-by-job"]
    if owner_kind is None:
        del theirs["metadata"]["ownerReferences"]  # a standalone DaskCluster
    p = plan(status_of("JobCreated"), cluster=theirs)
    assert created(p, "Pod") is None and created(p, "DaskCluster") is None and adopted(p) is None
    assert condition(p, "Degraded")["reason"] == "ClusterNameTaken"
    assert p.requeue_after == WAIT_SECONDS and not p.deletes


def test_the_cluster_a_job_created_carries_its_marker_and_is_taken_back_when_unowned() -> None:
    orphan = cluster()
    assert orphan["metadata"]["annotations"]["kubernetes.dask.org/created-by-job"] == UID
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


# -- backoffLimit --------------------------------------------------------------------------------------------


def failed_runner(uid: str = "j-runner-uid") -> dict[str, Any]:
    pod = runner(
        "Failed",
        containerStatuses=[
            {
                "name": "job",
                "state": {
                    "terminated": {"exitCode": 3, "reason": "Error", "finishedAt": "2023-11-14T22:13:40Z"}
                },
            }
        ],
    )
    pod["metadata"]["uid"] = uid
    return pod


def retry_plan(status: dict[str, Any], pod: dict[str, Any] | None, limit: int = 2) -> Plan:
    job = make_job(status, backoffLimit=limit)
    return plan_job(JobObservation(job=job, cluster=cluster(), runner=pod), NOW)


def test_a_failure_within_the_backoff_limit_is_recorded_before_its_pod_is_deleted() -> None:
    first = retry_plan(status_of("Running", attempts=1), failed_runner())
    assert first.status is not None and first.status["jobStatus"] == "Running"
    assert first.status["failed"] == 1
    (record,) = first.status["failures"]
    assert record["podUID"] == "j-runner-uid" and record["attempt"] == 1 and record["reason"] == "Error"
    assert record["time"] == "2023-11-14T22:13:40Z"
    assert not first.deletes and first.requeue_after is not None  # recorded first, deleted next time
    assert ("Warning", "RunnerFailed") in [(e.type, e.reason) for e in first.events]
    assert condition(first, "Progressing")["reason"] == "RetryingRunner"

    second = retry_plan(first.status, failed_runner())
    assert [d.cause for d in second.deletes] == [Cause.RUNNER_RETRY]
    assert second.status is not None and second.status["failed"] == 1  # counted once
    assert "RunnerFailed" not in reasons(second)

    third = retry_plan(second.status, None)  # the failed pod is gone: a new runner, attempt 2
    assert created(third, "Pod") is not None
    assert (
        third.status is not None and third.status["attempts"] == 2 and third.status["jobStatus"] == "Running"
    )


def test_the_failure_past_the_backoff_limit_fails_the_job() -> None:
    failures = [{"podUID": "a", "attempt": 1, "reason": "Error", "message": "m"}]
    status = status_of("Running", attempts=2, failed=1, failures=failures)
    p = retry_plan(status, failed_runner("b"), limit=1)
    assert p.status is not None and p.status["jobStatus"] == "Failed" and p.status["failed"] == 2
    failed = condition(p, "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and "failed 2 times" in failed["message"]
    assert [d.cause for d in p.deletes] == [Cause.JOB_FINISHED]  # the cluster; the runner is kept


def test_without_backoff_limit_the_first_failure_fails_the_job_as_before() -> None:
    p = plan_job(JobObservation(make_job(status_of("Running")), cluster(), failed_runner()), NOW)
    assert p.status is not None and p.status["jobStatus"] == "Failed"
    assert condition(p, "Failed")["reason"] == "RunnerFailed"


def test_success_after_failures_keeps_them_in_status() -> None:
    failures = [
        {"podUID": u, "attempt": n, "reason": "Error", "message": "m"} for n, u in ((1, "a"), (2, "b"))
    ]
    status = status_of("Running", attempts=3, failed=2, failures=failures)
    p = retry_plan(status, runner("Succeeded"))
    assert p.status is not None and p.status["jobStatus"] == "Successful"
    assert p.status["failed"] == 2 and len(p.status["failures"]) == 2


def test_only_the_last_failures_are_kept() -> None:
    failures = [{"podUID": str(n), "attempt": n, "reason": "Error", "message": "m"} for n in range(1, 11)]
    status = status_of("Running", attempts=11, failed=10, failures=failures)
    p = retry_plan(status, failed_runner("eleven"), limit=20)
    assert p.status is not None and p.status["failed"] == 11
    assert len(p.status["failures"]) == 10 and p.status["failures"][-1]["podUID"] == "eleven"


# -- a runner gone unseen, a cluster gone under the runner (issue 12) ---------------------------------------


def test_a_runner_created_and_gone_unseen_is_never_run_again() -> None:
    for before in ("ClusterCreated", "Running"):
        p = plan(status_of(before, attempts=1), cluster=cluster())
        assert created(p, "Pod") is None
        assert p.status is not None and p.status["jobStatus"] == "Failed"
        failed = condition(p, "Failed")
        assert failed["reason"] == "RunnerLost" and "not run again" in failed["message"]
        assert deleted(p) == ("ns", "j", "j-uid")


def test_a_runner_deleted_after_its_recorded_failure_is_replaced_not_lost() -> None:
    failures = [{"podUID": "a", "attempt": 1, "reason": "Error", "message": "m"}]
    p = retry_plan(status_of("ClusterCreated", attempts=1, failed=1, failures=failures), None)
    assert created(p, "Pod") is not None
    assert p.status is not None and p.status["jobStatus"] == "ClusterCreated" and p.status["attempts"] == 2


def test_a_refused_runner_create_is_tried_again_without_counting_an_attempt() -> None:
    refused = {
        "type": "ReplicaFailure",
        "status": "True",
        "reason": "FailedCreate",
        "message": "exceeded quota",
        "lastTransitionTime": rfc3339(NOW - 10),
    }
    p = plan(status_of("ClusterCreated", attempts=1, conditions=[refused]), cluster=cluster())
    assert created(p, "Pod") is not None
    assert p.status is not None and p.status["attempts"] == 1


def test_a_cluster_deleted_under_a_runner_seen_running_fails_the_job_even_before_the_status_said_so() -> None:
    p = plan(status_of("ClusterCreated", attempts=1), cluster=None, runner=runner("Running"))
    assert created(p, "DaskCluster") is None
    assert p.status is not None and p.status["jobStatus"] == "Failed"
    assert condition(p, "Failed")["reason"] == "ClusterLost"


# -- activeDeadlineSeconds ------------------------------------------------------------------------------------


def deadline_job(status: dict[str, Any], deadline: int = 30, created_at: float = NOW - 10) -> dict[str, Any]:
    job = make_job(status, activeDeadlineSeconds=deadline)
    job["metadata"]["creationTimestamp"] = rfc3339(created_at)
    return job


def test_a_deadline_not_reached_requeues_exactly_when_it_is() -> None:
    p = plan_job(
        JobObservation(deadline_job(status_of("Running", attempts=1)), cluster(), runner("Running")), NOW
    )
    assert p.status is not None and p.status["jobStatus"] == "Running"
    assert p.requeue_after == pytest.approx(20)


def test_a_deadline_reached_fails_the_job_deletes_the_runner_and_the_cluster() -> None:
    job = deadline_job(status_of("Running", attempts=1), deadline=5)
    p = plan_job(JobObservation(job, cluster(), runner("Running")), NOW)
    assert p.status is not None and p.status["jobStatus"] == "Failed"
    assert condition(p, "Failed")["reason"] == "DeadlineExceeded"
    assert {(d.ref.kind, d.cause) for d in p.deletes} == {
        ("Pod", Cause.DEADLINE_EXCEEDED),
        ("DaskCluster", Cause.JOB_FINISHED),
    }
    assert p.status["endTime"] == rfc3339(NOW)


def test_the_deadline_counts_from_the_last_resume() -> None:
    resumed = {
        "type": "Suspended",
        "status": "False",
        "reason": "Resumed",
        "message": "",
        "lastTransitionTime": rfc3339(NOW - 2),
    }
    job = deadline_job(status_of("ClusterCreated", conditions=[resumed]), deadline=5, created_at=NOW - 100)
    p = plan_job(JobObservation(job, cluster()), NOW)
    assert p.status is not None and p.status["jobStatus"] != "Failed"
    assert p.requeue_after == pytest.approx(3)  # resumed 2 s ago, 5 s allowed


def test_no_deadline_runs_while_held() -> None:
    job = deadline_job(status_of("Suspended"), deadline=5, created_at=NOW - 100)
    job["spec"]["suspend"] = True
    p = plan_job(JobObservation(job, hold=hold_of(job)), NOW)
    assert p.status is not None and p.status["jobStatus"] == "Suspended" and p.requeue_after is None


# -- ttlSecondsAfterFinished -------------------------------------------------------------------------------


def finished_job(ttl: int, ended: float) -> dict[str, Any]:
    status = status_of(
        "Successful", endTime=rfc3339(ended), conditions=[{"type": "Complete", "status": "True"}]
    )
    return make_job(status, ttlSecondsAfterFinished=ttl)


def test_a_finished_job_is_kept_until_its_ttl_then_deleted() -> None:
    early = plan_job(JobObservation(finished_job(10, NOW - 4)), NOW)
    assert not early.deletes and early.requeue_after == pytest.approx(6)
    late = plan_job(JobObservation(finished_job(10, NOW - 11)), NOW)
    assert [(d.ref.kind, d.ref.name, d.ref.uid, d.cause) for d in late.deletes] == [
        ("DaskJob", "j", UID, Cause.TTL_EXPIRED)
    ]
    assert "TTLExpired" in reasons(late)


def test_the_ttl_starts_only_once_the_job_has_finished() -> None:
    job = make_job(status_of("Running", attempts=1), ttlSecondsAfterFinished=0)
    p = plan_job(JobObservation(job, runner=runner("Succeeded")), NOW)  # the first terminal write
    assert p.status is not None and p.status["jobStatus"] == "Successful"
    assert not [d for d in p.deletes if d.ref.kind == "DaskJob"]
    assert p.requeue_after == pytest.approx(0.5)


# -- suspend --------------------------------------------------------------------------------------------


def held_plan(status: dict[str, Any], **observed: Any) -> Plan:
    job = make_job(status, suspend=True)
    return plan_job(JobObservation(job=job, hold=hold_of(job), **observed), NOW)


def test_suspending_a_running_job_deletes_runner_and_cluster_without_a_failure() -> None:
    p = held_plan(status_of("Running", attempts=1), cluster=cluster(), runner=runner("Running"))
    assert {(d.ref.kind, d.cause, d.foreground) for d in p.deletes} == {
        ("Pod", Cause.HELD, False),
        ("DaskCluster", Cause.HELD, True),  # a resume waits until its pods and Service are gone
    }
    assert not p.creates
    assert p.status is not None and p.status["jobStatus"] == "Suspended" and "failed" not in p.status
    assert condition(p, "Suspended")["status"] == "True"
    assert condition(p, "Progressing")["reason"] == "Suspending"
    assert reasons(p) == ["Suspended"]


def test_a_suspended_job_with_nothing_left_is_quiet_and_creates_nothing() -> None:
    first = held_plan(status_of("Running", attempts=1))
    assert first.status is not None
    again = held_plan(first.status)
    assert not again.creates and not again.deletes and not again.events
    assert condition(again, "Progressing")["status"] == "False"


def test_a_job_created_suspended_never_creates_anything() -> None:
    p = held_plan(status_of("JobCreated"))
    assert not p.creates and p.status is not None and p.status["jobStatus"] == "Suspended"


def test_resuming_creates_cluster_and_a_new_runner_and_says_so() -> None:
    held = held_plan(status_of("Running", attempts=1))
    assert held.status is not None
    p = plan(held.status)
    assert created(p, "DaskCluster") is not None and created(p, "Pod") is not None
    assert p.status is not None and p.status["jobStatus"] == "ClusterCreated" and p.status["attempts"] == 2
    assert condition(p, "Suspended")["reason"] == "Resumed"
    assert "Resumed" in reasons(p)


def test_resuming_waits_for_the_stopped_runner_to_go() -> None:
    held = held_plan(status_of("Running", attempts=1))
    assert held.status is not None
    p = plan(held.status, cluster=cluster(), runner=runner("Running", terminating=True))
    assert created(p, "Pod") is None and p.requeue_after == WAIT_SECONDS


def test_a_runner_that_succeeded_as_the_job_was_suspended_completes_it() -> None:
    p = held_plan(status_of("Running", attempts=1), cluster=cluster(), runner=runner("Succeeded"))
    assert p.status is not None and p.status["jobStatus"] == "Successful"


def test_a_held_job_on_an_existing_cluster_never_touches_it() -> None:
    job = make_job(status_of("Running", attempts=1), suspend=True, clusterRef={"name": "shared"})
    del job["spec"]["cluster"]
    p = plan_job(
        JobObservation(job, cluster=shared_cluster(), runner=runner("Running"), hold=hold_of(job)), NOW
    )
    assert [(d.ref.kind, d.cause) for d in p.deletes] == [("Pod", Cause.HELD)]


# -- spec.clusterRef ----------------------------------------------------------------------------------------


def ref_job(status: dict[str, Any] | None) -> dict[str, Any]:
    job = make_job(status, clusterRef={"name": "shared"})
    del job["spec"]["cluster"]
    return job


def shared_cluster(**spec: Any) -> dict[str, Any]:
    obj = copy.deepcopy(desired_job_cluster(make_job()))
    obj["metadata"].update(name="shared", uid="shared-uid", ownerReferences=[])
    obj["spec"].update(spec)
    return obj


def test_a_job_on_an_existing_cluster_creates_only_its_runner_pointing_there() -> None:
    p = plan_job(JobObservation(ref_job(status_of("JobCreated")), cluster=shared_cluster()), NOW)
    assert created(p, "DaskCluster") is None and adopted(p) is None
    pod = created(p, "Pod")
    assert pod is not None
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["DASK_SCHEDULER_ADDRESS"].startswith("tcp://shared-scheduler.ns.svc.")
    assert pod["metadata"]["labels"]["dask.org/cluster-name"] == "shared"
    assert p.status is not None and p.status["clusterName"] == "shared"


def test_a_job_on_an_existing_cluster_leaves_it_when_it_ends() -> None:
    p = plan_job(
        JobObservation(ref_job(status_of("Running", attempts=1)), shared_cluster(), runner("Succeeded")), NOW
    )
    assert p.status is not None and p.status["jobStatus"] == "Successful"
    assert not p.deletes
    assert "deleting DaskCluster" not in " ".join(e.message for e in p.events)


@pytest.mark.parametrize(
    ("observed", "reason"),
    [(None, "ClusterNotFound"), (shared_cluster(suspend=True), "ClusterSuspended")],
)
def test_a_job_waits_for_a_missing_or_suspended_existing_cluster(observed: Any, reason: str) -> None:
    p = plan_job(JobObservation(ref_job(status_of("JobCreated")), cluster=observed), NOW)
    assert not p.creates and p.requeue_after == WAIT_SECONDS
    assert condition(p, "Degraded")["reason"] == reason


def test_an_existing_cluster_deleted_under_the_runner_fails_the_job() -> None:
    p = plan_job(JobObservation(ref_job(status_of("Running", attempts=1)), None, runner("Running")), NOW)
    assert p.status is not None and p.status["jobStatus"] == "Failed"
    assert condition(p, "Failed")["reason"] == "ClusterLost" and not p.creates


def test_a_runner_killed_by_the_hold_is_no_failure_while_held_or_after_the_resume() -> None:
    killed = runner("Failed", terminating=True)
    held = held_plan(status_of("Suspended", attempts=1), runner=killed)
    assert held.status is not None and held.status["jobStatus"] == "Suspended" and "failed" not in held.status
    resumed = plan(held.status, runner=killed)
    assert resumed.status is not None and "failed" not in resumed.status
    assert resumed.status["jobStatus"] != "Failed" and resumed.requeue_after == WAIT_SECONDS
