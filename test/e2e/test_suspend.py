"""spec.suspend end to end: a DaskCluster and a DaskJob held and resumed, with real Dask processes.

Each test has its own namespace and operator (support/operator.py). Waits have deadlines; nothing sleeps.
"""

from __future__ import annotations

import json
import operator
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
    pods,
    wait_running,
    wait_workers,
    worker_pods,
)
from support.wait import wait_for

from dask_operator import ClusterSuspendedError, KubeCluster
from dask_operator.runtime.client import Client as RestClient

pytestmark = pytest.mark.timeout(240)


def patch_suspend(plane: Any, namespace: str, kind: str, name: str, value: bool) -> None:
    body = json.dumps({"spec": {"suspend": value}})
    plane.kubectl("patch", "-n", namespace, kind, name, "--type", "merge", "-p", body)


def event_reasons(plane: Any, namespace: str, name: str) -> list[str]:
    events = get(plane, namespace, "events", "--field-selector", f"involvedObject.name={name}") or {}
    return [e.get("reason") for e in events.get("items", [])]


def test_a_suspended_cluster_runs_nothing_and_resumes_with_its_worker_count(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, cluster_manifest("held", 2))
    wait_running(plane, namespace, "held")
    wait_for(lambda: len(worker_pods(plane, namespace, "held-default")) == 2, timeout=60, message="2 workers")

    patch_suspend(plane, namespace, "daskcluster", "held", True)

    def suspended() -> dict[str, Any] | None:
        cluster = get(plane, namespace, "daskcluster", "held")
        if not cluster or cluster.get("status", {}).get("phase") != "Suspended":
            return None
        if pods(plane, namespace, "dask.org/cluster-name=held") or get(
            plane, namespace, "service", "held-scheduler"
        ):
            return None
        return dict(cluster)

    cluster = wait_for(suspended, timeout=90, interval=0.5, message="no pod and no Service, phase Suspended")
    assert condition(cluster, "Suspended")["status"] == "True"
    assert condition(cluster, "Suspended")["reason"] == "Suspended"
    group = get(plane, namespace, "daskworkergroup", "held-default")
    assert group["spec"]["worker"]["replicas"] == 2  # the object, its groups and spec are kept
    assert "Suspended" in event_reasons(plane, namespace, "held")

    api = RestClient.from_kubeconfig(str(plane.kubeconfig))
    with pytest.raises(ClusterSuspendedError, match="is suspended"):
        KubeCluster.from_name("held", namespace=namespace, kube_client=api, quiet=True)

    patch_suspend(plane, namespace, "daskcluster", "held", False)
    wait_running(plane, namespace, "held")
    wait_for(
        lambda: len(worker_pods(plane, namespace, "held-default")) == 2, timeout=90, message="2 workers back"
    )
    with dask_client(plane, namespace, "held") as client:
        wait_workers(client, 2)
        assert client.submit(operator.add, 40, 2).result(timeout=60) == 42
    cluster = get(plane, namespace, "daskcluster", "held")
    assert condition(cluster, "Suspended")["status"] == "False"
    assert condition(cluster, "Suspended")["reason"] == "Resumed"
    assert "Resumed" in event_reasons(plane, namespace, "held")


# Connects to the job's cluster and waits until the test says "go" through the scheduler's metadata.
WAITS_FOR_GO = """
import time
from dask.distributed import Client
with Client(timeout=120) as client:
    while not client.get_metadata("go", False):
        time.sleep(0.2)
print("done", flush=True)
"""


def job_status(plane: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict((get(plane, namespace, "daskjob", name) or {}).get("status") or {})


def test_a_suspended_job_runs_nothing_and_resumes_to_success(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, job_manifest("pause", ["python", "-c", WAITS_FOR_GO], workers=0))
    wait_for(lambda: job_status(plane, namespace, "pause").get("jobStatus") == "Running", timeout=90,
             interval=0.5, message="runner running")  # fmt: skip
    first = get(plane, namespace, "pod", "pause-runner")["metadata"]["uid"]

    patch_suspend(plane, namespace, "daskjob", "pause", True)

    def suspended() -> dict[str, Any] | None:
        status = job_status(plane, namespace, "pause")
        if status.get("jobStatus") != "Suspended":
            return None
        if pods(plane, namespace, "dask.org/cluster-name=pause") or get(
            plane, namespace, "daskcluster", "pause"
        ):
            return None
        return status if condition({"status": status}, "Progressing")["status"] == "False" else None

    status = wait_for(suspended, timeout=90, interval=0.5, message="runner and cluster gone, Suspended")
    assert condition({"status": status}, "Suspended")["status"] == "True"
    assert "failed" not in status  # a stop by suspend is no failure
    assert "Suspended" in event_reasons(plane, namespace, "pause")

    patch_suspend(plane, namespace, "daskjob", "pause", False)
    wait_for(lambda: job_status(plane, namespace, "pause").get("jobStatus") == "Running", timeout=90,
             interval=0.5, message="a new runner running")  # fmt: skip
    assert get(plane, namespace, "pod", "pause-runner")["metadata"]["uid"] != first
    wait_running(plane, namespace, "pause")
    with dask_client(plane, namespace, "pause") as client:
        client.set_metadata("go", True)
    status = wait_for(
        lambda: (
            (s := job_status(plane, namespace, "pause")).get("jobStatus") in ("Successful", "Failed") and s
        ),
        timeout=90,
        interval=0.5,
        message="job finished",
    )
    assert status["jobStatus"] == "Successful", status
    assert status["attempts"] == 2 and "failed" not in status, status
    assert condition({"status": status}, "Suspended")["reason"] == "Resumed"
    assert "Resumed" in event_reasons(plane, namespace, "pause")
