"""The dask-cluster chart (manifests/helm/dask-cluster) installed by the real helm onto the local plane, run by
the operator: a notebook executed inside the chart's Jupyter pod (`jupyter nbconvert --execute` through
`kubectl exec`) computes on the cluster's workers with no address in its code; `helm upgrade` from 3 workers to 1
loses and recomputes no persisted key and loses no scattered one (the scheduler's transition log, as in
test/chaos); `helm uninstall` leaves nothing in the namespace.

One release does all three, so the cluster starts once. Waits have deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
import requests
from support.chaos_workload import data_cost, hold_data
from support.helm import CLUSTER_CHART, Helm, helm_binary
from support.operator import OperatorProcess, dask_client, get, pods, wait_running, wait_workers, worker_pods
from support.wait import wait_for

# ~70 s with its plane: deselected by default (marker `chart`), run with
# `hack/test test/e2e/test_dask_cluster_chart.py -m chart`.
pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.chart,
    pytest.mark.skipif(
        os.environ.get("K8S_TEST_BACKEND") == "containerd",
        reason="real nodes run only the images hack/build-images.sh builds, and it builds no Jupyter image "
        "(ghcr.io/dask/dask-notebook); the process node runs Jupyter from the test environment",
    ),
]

RELEASE = "nb"
CLUSTER = "nb-dask-cluster"

# What a user types into a fresh notebook: no address, no dashboard URL; the pod's environment has them.
CELL = """\
import socket
import dask.array as da
from dask.distributed import Client

client = Client()
client.wait_for_workers(3, timeout=120)
hosts = client.gather(client.map(lambda i: socket.gethostname(), range(30), pure=False))
print("total", int(da.ones((600, 600), chunks=(100, 100)).sum().compute()))
print("hosts", " ".join(sorted(set(hosts))))
print("dashboard", client.dashboard_link)
"""


def notebook(source: str) -> str:
    cell = {"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {}, "outputs": [],
            "source": source}  # fmt: skip
    return json.dumps({
        "cells": [cell], "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                     "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    })  # fmt: skip


def printed(executed: dict[str, Any]) -> dict[str, str]:
    """`key value` lines the notebook's cell printed."""
    text = "".join(
        "".join(out.get("text", ""))
        for out in executed["cells"][0]["outputs"]
        if out["output_type"] == "stream"
    )
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def leftovers(plane: Any, namespace: str) -> list[str]:
    """Every namespaced object left in `namespace` but those each namespace has (and Events)."""
    kinds = plane.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout.split()
    kinds = [k for k in kinds if not k.startswith("events")]
    out = plane.kubectl("get", "-n", namespace, ",".join(kinds), "-o", "name", "--ignore-not-found").stdout
    usual = {"configmap/kube-root-ca.crt", "serviceaccount/default"}
    return [name for name in out.split() if name not in usual]


def test_a_notebook_computes_on_the_charts_cluster_upgrade_scales_down_losing_nothing_uninstall_cleans_up(
    plane: Any, namespace: str, dask_operator: OperatorProcess, tmp_path: Path
) -> None:
    helm = Helm(helm_binary(), tmp_path / "helm")
    kube = f"--kubeconfig={plane.kubeconfig}"
    helm("install", RELEASE, str(CLUSTER_CHART), "-n", namespace, kube, "--set", "worker.replicas=3")
    wait_running(plane, namespace, CLUSTER, timeout=120)

    def jupyter_ready() -> str | None:
        for pod in pods(
            plane, namespace, f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=jupyter"
        ):
            ready = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}.get("Ready")
            if ready == "True":
                return str(pod["metadata"]["name"])
        return None

    jupyter = wait_for(jupyter_ready, timeout=120, interval=0.5, message="the Jupyter pod Ready")
    run = plane.kubectl(
        "exec", "-i", "-n", namespace, jupyter, "--", "jupyter", "nbconvert", "--to", "notebook", "--execute",
        "--stdin", "--stdout", "--ExecutePreprocessor.timeout=180",
        input=notebook(CELL), check=False, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = printed(json.loads(run.stdout))
    assert out["total"] == "360000", out
    workers = {p["metadata"]["name"] for p in worker_pods(plane, namespace, f"{CLUSTER}-default")}
    assert set(out["hosts"].split()) <= workers and len(workers) == 3, (out, workers)
    scheduler_host = f"{CLUSTER}-scheduler.{namespace}.svc.cluster.local"
    assert out["dashboard"] == f"/proxy/{scheduler_host}:8787/status", out

    # The dashboard link works in the browser: through the Jupyter server's proxy, with the release's token.
    secret = get(plane, namespace, "secret", f"{CLUSTER}-jupyter")
    token = base64.b64decode(secret["data"]["token"]).decode()
    service = get(plane, namespace, "service", f"{CLUSTER}-jupyter")
    page = requests.get(f"http://{service['spec']['clusterIP']}:80{out['dashboard']}",
                        headers={"Authorization": f"token {token}"}, timeout=60)  # fmt: skip
    assert page.status_code == 200 and "Dask" in page.text, page.status_code

    # notebooks may create clusters of their own (KubeCluster, the Dask panel) with the chart's ServiceAccount
    account = f"--as=system:serviceaccount:{namespace}:{CLUSTER}-jupyter"
    for verb, resource in (
        ("create", "daskclusters.kubernetes.dask.org"),
        ("patch", "daskworkergroups.kubernetes.dask.org"),
        ("create", "daskautoscalers.kubernetes.dask.org"),
        ("get", "pods/log"),
        ("list", "services"),
    ):
        allowed = plane.kubectl("auth", "can-i", verb, resource, "-n", namespace, account, check=False)
        assert allowed.stdout.strip() == "yes", (verb, resource, allowed.stdout, allowed.stderr)

    with dask_client(plane, namespace, CLUSTER) as client:
        wait_workers(client, 3)
        held = hold_data(client, blocks=30, scattered=9)
        helm("upgrade", RELEASE, str(CLUSTER_CHART), "-n", namespace, kube, "--reuse-values",
             "--set", "worker.replicas=1")  # fmt: skip
        wait_for(lambda: len(worker_pods(plane, namespace, f"{CLUSTER}-default")) == 1, timeout=180,
                 interval=0.5, message="1 worker pod after helm upgrade")  # fmt: skip
        wait_workers(client, 1)
        cost = data_cost(client, held)
        print(cost.line())
        assert not cost.recomputed and not cost.scattered_lost and not cost.erred, cost
    # the token survives the upgrade (made once, kept)
    kept = get(plane, namespace, "secret", f"{CLUSTER}-jupyter")
    assert base64.b64decode(kept["data"]["token"]).decode() == token

    helm("uninstall", RELEASE, "-n", namespace, kube)
    wait_for(lambda: not leftovers(plane, namespace), timeout=120, interval=1,
             message="nothing left in the namespace after helm uninstall")  # fmt: skip
