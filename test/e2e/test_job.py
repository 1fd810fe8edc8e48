"""DaskJob end to end: a runner pod that computes on the job's own Dask cluster, and one that fails.

Real scheduler, worker and runner processes on the process node; the operator is a `dask-operator run`
subprocess per test (support/operator.py). Waits have deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from support.operator import (
    OperatorProcess,
    apply,
    cluster_manifest,
    condition,
    dask_client,
    get,
    job_manifest,
    set_pod_quota,
    wait_refused,
    wait_running,
    warning_events,
)
from support.wait import wait_for

pytestmark = pytest.mark.timeout(240)

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

# The runner finds the scheduler through DASK_SCHEDULER_ADDRESS, injected by the operator; it starts in
# parallel with the cluster, so it waits for a worker (generously: two cores shared with other tests).
COMPUTE = """
from dask.distributed import Client
with Client(timeout=120) as client:
    client.wait_for_workers(1, timeout=120)
    total = client.submit(sum, client.map(lambda x: x * x, range(10))).result(timeout=60)
    assert total == 285, total
    print("job result", total, flush=True)
"""


def job_status(plane: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict((get(plane, namespace, "daskjob", name) or {}).get("status") or {})


def finished(plane: Any, namespace: str, name: str) -> dict[str, Any] | None:
    status = job_status(plane, namespace, name)
    return status if status.get("jobStatus") in ("Successful", "Failed") else None


def test_job_computes_on_its_cluster_then_the_cluster_is_deleted(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, job_manifest("compute", ["python", "-c", COMPUTE]))

    def cluster_made() -> dict[str, Any] | None:
        return get(plane, namespace, "daskcluster", "compute")

    cluster = wait_for(cluster_made, timeout=60, message="DaskCluster compute created")
    (owner,) = cluster["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("DaskJob", "compute", True)
    assert cluster["metadata"]["labels"]["dask.org/cluster-name"] == "compute"
    assert cluster["metadata"]["labels"]["team"] == "e2e"

    status = wait_for(lambda: finished(plane, namespace, "compute"), timeout=180, interval=0.5,
                      message="job finished")  # fmt: skip
    runner = get(plane, namespace, "pod", "compute-runner")
    assert status["jobStatus"] == "Successful", (status, runner and runner.get("status"))
    assert (status["clusterName"], status["jobRunnerPodName"]) == ("compute", "compute-runner")
    assert TIME.match(status["startTime"]) and TIME.match(status["endTime"]), status
    assert status["startTime"] <= status["endTime"]
    assert condition({"status": status}, "Complete")["status"] == "True"

    # the runner pod stays (Completed, with its logs); the cluster and everything under it goes
    assert runner is not None and runner["status"]["phase"] == "Succeeded"
    labels = runner["metadata"]["labels"]
    assert labels["dask.org/component"] == "job-runner" and labels["role"] == "runner"
    env = {e["name"]: e.get("value") for e in runner["spec"]["containers"][0]["env"]}
    assert env["DASK_SCHEDULER_ADDRESS"] == f"tcp://compute-scheduler.{namespace}.svc.cluster.local:8786"
    logs = plane.kubectl("logs", "-n", namespace, "compute-runner", check=False).stdout
    assert "job result 285" in logs or not logs, logs  # logs are best effort on the process node
    wait_for(lambda: cluster_made() is None, timeout=60, message="the job's DaskCluster deleted")
    events = get(plane, namespace, "events", "--field-selector", "involvedObject.name=compute")
    reasons = {e["reason"] for e in events["items"] if e["involvedObject"]["kind"] == "DaskJob"}
    assert {"ClusterCreated", "Completed"} <= reasons, reasons
    assert get(plane, namespace, "daskjob", "compute") is not None


def test_failing_runner_fails_the_job(plane: Any, namespace: str, dask_operator: OperatorProcess) -> None:
    apply(plane, namespace, job_manifest("broken", ["python", "-c", "import sys; sys.exit(1)"]))
    status = wait_for(lambda: finished(plane, namespace, "broken"), timeout=120, interval=0.5,
                      message="job finished")  # fmt: skip
    assert status["jobStatus"] == "Failed", status
    assert TIME.match(status.get("endTime") or ""), status
    failed = condition({"status": status}, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "RunnerFailed", failed
    wait_for(
        lambda: get(plane, namespace, "daskcluster", "broken") is None,
        timeout=60,
        message="the failed job's DaskCluster deleted",
    )
    runner = get(plane, namespace, "pod", "broken-runner")
    assert runner is not None and runner["status"]["phase"] == "Failed"


def test_a_runner_refused_by_a_quota_is_reported_and_runs_once_the_quota_is_lifted(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    set_pod_quota(plane, namespace, 0)
    apply(plane, namespace, job_manifest("quota", ["python", "-c", COMPUTE]))
    refused = wait_refused(plane, namespace, "daskjob", "quota")
    assert refused["reason"] == "FailedCreate" and "exceeded quota" in refused["message"]
    assert "quota-runner" in refused["message"]
    assert job_status(plane, namespace, "quota")["jobStatus"] == "ClusterCreated"
    assert any(e["reason"] == "FailedCreate" for e in warning_events(plane, namespace, "quota"))

    set_pod_quota(plane, namespace, None)
    status = wait_for(lambda: finished(plane, namespace, "quota"), timeout=180, interval=1,
                      message="the job finishes once the quota is lifted")  # fmt: skip
    runner_log = plane.kubectl("-n", namespace, "logs", "quota-runner", check=False).stdout
    assert status["jobStatus"] == "Successful", runner_log[-2000:]
    assert condition({"status": status}, "ReplicaFailure") == {}


# -- the lifecycle holes of issue 12 -------------------------------------------------------------------------

# Connects to the job's cluster and waits until the test says "go" through the scheduler's metadata.
WAITS_FOR_GO = """
import time
from dask.distributed import Client
with Client(timeout=120) as client:
    while not client.get_metadata("go", False):
        time.sleep(0.2)
"""


def test_a_cluster_deleted_under_the_runner_fails_the_job_and_is_not_recreated(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, job_manifest("orphan", ["python", "-c", WAITS_FOR_GO], workers=0))
    wait_for(lambda: job_status(plane, namespace, "orphan").get("jobStatus") == "Running", timeout=90,
             interval=0.5, message="runner running")  # fmt: skip
    plane.kubectl("delete", "-n", namespace, "daskcluster", "orphan", "--wait=false")
    status = wait_for(lambda: finished(plane, namespace, "orphan"), timeout=60, interval=0.5,
                      message="job finished")  # fmt: skip
    failed = condition({"status": status}, "Failed")
    assert status["jobStatus"] == "Failed" and failed["reason"] == "ClusterLost", status
    assert "was deleted while the runner was running" in failed["message"]
    wait_for(
        lambda: get(plane, namespace, "daskcluster", "orphan") is None, timeout=60, message="cluster gone"
    )
    # the operator reconciles the failed job again (its runner pod changes) and still makes no cluster
    plane.kubectl("delete", "-n", namespace, "pod", "orphan-runner", "--wait=true")
    assert finished(plane, namespace, "orphan") == status or job_status(plane, namespace, "orphan") == status
    assert get(plane, namespace, "daskcluster", "orphan") is None
    assert get(plane, namespace, "pod", "orphan-runner") is None


def test_a_runner_that_finished_while_the_operator_was_down_and_was_deleted_is_not_run_again(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, job_manifest("unseen", ["python", "-c", WAITS_FOR_GO], workers=0))
    wait_for(lambda: get(plane, namespace, "pod", "unseen-runner"), timeout=60, message="runner created")
    wait_running(plane, namespace, "unseen")
    dask_operator.stop()
    with dask_client(plane, namespace, "unseen") as client:
        client.set_metadata("go", True)
    wait_for(
        lambda: (
            (get(plane, namespace, "pod", "unseen-runner") or {}).get("status", {}).get("phase")
            == "Succeeded"
        ),
        timeout=90,
        interval=0.5,
        message="runner finished with the operator down",
    )
    plane.kubectl("delete", "-n", namespace, "pod", "unseen-runner", "--wait=true")
    dask_operator.start()
    status = wait_for(lambda: finished(plane, namespace, "unseen"), timeout=60, interval=0.5,
                      message="job finished")  # fmt: skip
    failed = condition({"status": status}, "Failed")
    assert status["jobStatus"] == "Failed" and failed["reason"] == "RunnerLost", status
    assert "not run again" in failed["message"], failed
    assert status["attempts"] == 1
    wait_for(
        lambda: get(plane, namespace, "daskcluster", "unseen") is None, timeout=60, message="cluster deleted"
    )
    assert get(plane, namespace, "pod", "unseen-runner") is None  # never created a second time


def test_a_job_named_like_a_colleagues_cluster_leaves_it_alone(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    """Regression: a DaskJob named like an existing standalone DaskCluster adopted it and deleted it when the
    job ended (or was deleted)."""
    apply(plane, namespace, cluster_manifest("shared", 0))
    wait_running(plane, namespace, "shared")
    theirs = get(plane, namespace, "daskcluster", "shared")
    apply(plane, namespace, job_manifest("shared", ["python", "-c", "print('never runs')"]))

    def name_taken() -> dict[str, Any] | None:
        degraded = condition(get(plane, namespace, "daskjob", "shared"), "Degraded")
        return degraded if degraded.get("reason") == "ClusterNameTaken" else None

    degraded = wait_for(name_taken, timeout=60, message="the job says the cluster's name is taken")
    assert "was not created by this DaskJob" in degraded["message"]
    assert get(plane, namespace, "pod", "shared-runner") is None
    plane.kubectl("-n", namespace, "delete", "daskjob", "shared", "--wait=true")
    mine = get(plane, namespace, "daskcluster", "shared")
    assert mine is not None and mine["metadata"]["uid"] == theirs["metadata"]["uid"]
    assert not mine["metadata"].get("ownerReferences")
