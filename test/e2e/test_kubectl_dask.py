"""`kubectl dask` (api/kubectl_dask.py) run through the real kubectl, and `dask cluster list` (dask-ctl)
finding the same cluster through our discovery entry point, against one DaskCluster on the local plane.

The cluster is made by `kubectl apply` as a user would; every command is typed as a user would type it.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from support.operator import (
    OperatorProcess,
    apply,
    cluster_manifest,
    dask_client,
    get,
    wait_running,
    worker_pods,
)
from support.user_shell import BIN, kubectl
from support.wait import wait_for

pytestmark = pytest.mark.timeout(300)

# dask-ctl 2024.1.0 (its latest release) imports distributed.cli.utils.install_signal_handlers, which
# distributed removed; without it `dask cluster` does not load at all. This restores a no-op for the dask-ctl
# process only, so the test exercises the real CLI and our discovery entry point.
DASK_CTL_SHIM = """
import distributed.cli.utils as _utils
if not hasattr(_utils, "install_signal_handlers"):
    _utils.install_signal_handlers = lambda loop=None, cleanup=None: None
"""


@pytest.fixture
def running_cluster(plane: Any, namespace: str, dask_operator: OperatorProcess) -> Iterator[str]:
    apply(plane, namespace, cluster_manifest("demo", 1))
    wait_running(plane, namespace, "demo", timeout=120)
    with dask_client(plane, namespace, "demo") as client:
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, timeout=120, message="1 worker")
    yield "demo"


def test_list_scale_logs_describe_dashboard_and_mistakes(
    plane: Any, namespace: str, running_cluster: str, user_env: dict[str, str]
) -> None:
    listed = kubectl(user_env, "dask", "list", "-n", namespace)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "PHASE", "READY", "WORKERS"]
    assert row.split()[:2] == ["demo", "Running"]
    everywhere = kubectl(user_env, "dask", "list", "-A")
    assert any(line.split()[:2] == [namespace, "demo"] for line in everywhere.stdout.splitlines())

    scaled = kubectl(user_env, "dask", "scale", "demo", "2", "-n", namespace)
    assert scaled.returncode == 0, scaled.stderr
    assert scaled.stdout.strip() == "daskcluster.kubernetes.dask.org/demo scaled to 2 workers"
    group = get(plane, namespace, "daskworkergroup", "demo-default")
    assert group["spec"]["worker"]["replicas"] == 2
    with dask_client(plane, namespace, "demo") as client:
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, timeout=120, message="2 workers")
        assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6

    logs = kubectl(user_env, "dask", "logs", "demo", "-n", namespace)
    assert logs.returncode == 0 and "Scheduler at" in logs.stdout, logs.stderr
    worker = min(p["metadata"]["name"] for p in worker_pods(plane, namespace, "demo-default"))
    worker_logs = kubectl(user_env, "dask", "logs", "demo", "--worker", worker, "-n", namespace)
    assert worker_logs.returncode == 0 and "Start worker" in worker_logs.stdout, worker_logs.stderr

    described = kubectl(user_env, "dask", "describe", "demo", "-n", namespace)
    assert described.returncode == 0, described.stderr
    assert "Phase:       Running" in described.stdout
    assert "Ready=True" in described.stdout
    assert "demo-default: " in described.stdout and "/2 ready" in described.stdout
    worker_lines = [
        line for line in described.stdout.splitlines() if line.strip().startswith("demo-default-worker-")
    ]
    assert len(worker_lines) == 2, described.stdout
    assert all("iB" in line for line in worker_lines)  # memory, as the scheduler reports it

    # mistakes exit non-zero with a message
    missing = kubectl(user_env, "dask", "scale", "nosuch", "2", "-n", namespace)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f'error: daskcluster "nosuch" not found in namespace {namespace} (kubectl dask list)'
    )
    no_worker = kubectl(user_env, "dask", "logs", "demo", "--worker", "nosuch", "-n", namespace)
    assert no_worker.returncode == 1 and "demo-default-worker-" in no_worker.stderr
    usage = kubectl(user_env, "dask", "scale", "demo", "-1", "-n", namespace)
    assert usage.returncode == 2 and "negative" in usage.stderr
    empty = kubectl(user_env, "dask", "list", "-n", "kube-public")
    assert empty.returncode == 0 and "No DaskClusters found in namespace kube-public" in empty.stderr

    dashboard = subprocess.Popen(
        ["kubectl", "dask", "dashboard", "demo", "--port", "0", "-n", namespace],
        env=user_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert dashboard.stdout is not None
        first = dashboard.stdout.readline()
        link = first.split(": ", 1)[1].split()[0]
        assert link.startswith("http://localhost:") and link.endswith("/status"), first
        assert requests.get(link, timeout=30).status_code == 200
    finally:
        dashboard.send_signal(signal.SIGINT)
        code = dashboard.wait(timeout=30)
    assert code == 0, dashboard.stderr.read() if dashboard.stderr else ""


def test_dask_ctl_lists_the_cluster(
    namespace: str, running_cluster: str, user_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "sitecustomize.py").write_text(DASK_CTL_SHIM)
    env = {
        **user_env,
        "PYTHONPATH": str(tmp_path),
        "DASK_KUBERNETES__NAMESPACE": namespace,
        "COLUMNS": "250",
    }
    methods = subprocess.run(
        [str(BIN / "dask"), "cluster", "discovery", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "dask-operator" in methods.stdout, methods.stdout + methods.stderr
    listed = subprocess.run(
        [str(BIN / "dask"), "cluster", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    row = next((line for line in listed.stdout.splitlines() if " demo " in f" {line} "), None)
    assert row is not None, listed.stdout + listed.stderr
    assert "KubeCluster" in row and "dask-operator" in row and "running" in row.lower()
