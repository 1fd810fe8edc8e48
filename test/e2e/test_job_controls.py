"""DaskJob controls end to end: backoffLimit, activeDeadlineSeconds, ttlSecondsAfterFinished, clusterRef.

Real scheduler, worker and runner processes on the process node; one operator per test (support/operator.py).
The runners that must fail a given number of times keep their count in the job's own Dask scheduler
(`set_metadata`): the cluster outlives the runner's retries, so the count is the scheduler's, not a file's.
Waits have deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from support.operator import (
    OperatorProcess,
    apply,
    cluster_manifest,
    condition,
    get,
    job_manifest,
    pods,
    wait_running,
)
from support.wait import wait_for

from dask_operator.controller.contract.objects import parse_rfc3339

pytestmark = pytest.mark.timeout(240)

# Fails on its first two runs, succeeds on the third; the attempt number lives in the scheduler.
FAILS_TWICE = """
import sys
from dask.distributed import Client
with Client(timeout=120) as client:
    attempt = client.get_metadata("attempt", 0) + 1
    client.set_metadata("attempt", attempt)
print("attempt", attempt, flush=True)
sys.exit(0 if attempt > 2 else 3)
"""

SLEEPS = "import time; time.sleep(600)"


def job_status(plane: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict((get(plane, namespace, "daskjob", name) or {}).get("status") or {})


def finished(plane: Any, namespace: str, name: str) -> dict[str, Any] | None:
    status = job_status(plane, namespace, name)
    return status if status.get("jobStatus") in ("Successful", "Failed") else None


def wait_finished(plane: Any, namespace: str, name: str, timeout: float = 180) -> dict[str, Any]:
    return wait_for(lambda: finished(plane, namespace, name), timeout=timeout, interval=0.5,
                    message=f"DaskJob {name} finished")  # fmt: skip


@pytest.mark.parametrize(("limit", "outcome", "failed"), [(2, "Successful", 2), (1, "Failed", 2)])
def test_a_runner_failing_twice_is_retried_up_to_the_backoff_limit(
    plane: Any, namespace: str, dask_operator: OperatorProcess, limit: int, outcome: str, failed: int
) -> None:
    name = f"retry{limit}"
    apply(plane, namespace, job_manifest(name, ["python", "-c", FAILS_TWICE], workers=0, backoffLimit=limit))
    status = wait_finished(plane, namespace, name)
    assert status["jobStatus"] == outcome, status
    assert status["failed"] == failed and len(status["failures"]) == failed, status
    assert [f["attempt"] for f in status["failures"]] == [1, 2]
    assert all(f["reason"] == "Error" and "exit code 3" in f["message"] for f in status["failures"]), status
    assert status["attempts"] == failed + (1 if outcome == "Successful" else 0)
    if outcome == "Failed":
        assert condition({"status": status}, "Failed")["reason"] == "BackoffLimitExceeded"
    wait_for(
        lambda: get(plane, namespace, "daskcluster", name) is None, timeout=60, message="cluster deleted"
    )


def test_a_deadline_fails_the_job_and_removes_its_cluster_on_time(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    deadline = 6
    apply(
        plane,
        namespace,
        job_manifest("late", ["python", "-c", SLEEPS], workers=0, activeDeadlineSeconds=deadline),
    )
    created = parse_rfc3339(get(plane, namespace, "daskjob", "late")["metadata"]["creationTimestamp"])
    assert created is not None
    wait_for(lambda: job_status(plane, namespace, "late").get("jobStatus") == "Running", timeout=90,
             interval=0.5, message="runner running")  # fmt: skip
    status = wait_finished(plane, namespace, "late", timeout=60)
    failed = condition({"status": status}, "Failed")
    assert status["jobStatus"] == "Failed" and failed["reason"] == "DeadlineExceeded", status
    ended = parse_rfc3339(status["endTime"])
    assert ended is not None and deadline <= ended - created <= deadline + 5, (created, status["endTime"])
    wait_for(
        lambda: get(plane, namespace, "daskcluster", "late") is None, timeout=30, message="cluster deleted"
    )
    wait_for(
        lambda: get(plane, namespace, "pod", "late-runner") is None, timeout=30, message="runner deleted"
    )


def test_a_finished_job_is_deleted_after_its_ttl(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    ttl = 3
    apply(
        plane,
        namespace,
        job_manifest("brief", ["python", "-c", "pass"], workers=0, ttlSecondsAfterFinished=ttl),
    )
    status = wait_finished(plane, namespace, "brief")
    assert status["jobStatus"] == "Successful", status
    wait_for(lambda: get(plane, namespace, "daskjob", "brief") is None, timeout=30, interval=0.2,
             message="DaskJob deleted after its TTL")  # fmt: skip
    gone_at = time.time()
    ended = parse_rfc3339(status["endTime"])
    assert ended is not None and gone_at - ended >= ttl - 1  # endTime has second precision
    wait_for(lambda: get(plane, namespace, "pod", "brief-runner") is None, timeout=60,
             message="runner pod deleted with the job")  # fmt: skip


COMPUTE = """
from dask.distributed import Client
with Client(timeout=120) as client:
    client.wait_for_workers(1, timeout=120)
    assert client.submit(sum, client.map(lambda x: x * x, range(10))).result(timeout=60) == 285
"""


def test_a_job_on_an_existing_cluster_leaves_it_running(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, cluster_manifest("shared", 1))
    wait_running(plane, namespace, "shared")
    before = get(plane, namespace, "daskcluster", "shared")
    apply(plane, namespace, job_manifest("guest", ["python", "-c", COMPUTE], clusterRef={"name": "shared"}))
    status = wait_finished(plane, namespace, "guest")
    assert status["jobStatus"] == "Successful", status
    assert status["clusterName"] == "shared"
    runner = get(plane, namespace, "pod", "guest-runner")
    env = {e["name"]: e.get("value") for e in runner["spec"]["containers"][0]["env"]}
    assert env["DASK_SCHEDULER_ADDRESS"] == f"tcp://shared-scheduler.{namespace}.svc.cluster.local:8786"
    assert get(plane, namespace, "daskcluster", "guest") is None  # no cluster of its own
    after = get(plane, namespace, "daskcluster", "shared")
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert "deletionTimestamp" not in after["metadata"] and not after["metadata"].get("ownerReferences")
    assert after["spec"] == before["spec"] and after["status"]["phase"] == "Running"
    assert len(pods(plane, namespace, "dask.org/cluster-name=shared,dask.org/component=scheduler")) == 1
