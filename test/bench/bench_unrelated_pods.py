"""Benchmark: what unrelated pods cost the operator (its informers watch every Pod and Service).

The operator runs cluster-wide (as its Deployment does); BENCH_UNRELATED_PODS simulated pods (default
10,000) that no DaskCluster owns are created in another namespace by the tight client. Prints the
operator's RSS and CPU seconds before and after (target: growth < 10 MiB). Run it explicitly:

    python -m pytest test/bench/bench_unrelated_pods.py -m bench -s -q     (BENCH_UNRELATED_PODS=10000)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.bench_workload import SIMULATED, TightClient, cpu_seconds, pod_ready, rss_mib
from support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
PODS = int(os.environ.get("BENCH_UNRELATED_PODS", "10000"))
SETTLE_SECONDS = 20.0
pytestmark = pytest.mark.timeout(int(600 + 0.3 * PODS))


def unrelated_pod(namespace: str, i: int) -> tuple[str, dict[str, Any]]:
    name = f"other-{i:05d}"
    return (
        f"/api/v1/namespaces/{namespace}/pods/{name}",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "unrelated"}, "annotations": SIMULATED},
            "spec": {"containers": [{"name": "c", "image": "busybox", "args": ["sleep", "inf"]}]},
        },
    )


def steady_rss(pid: int) -> float:
    """RSS after SETTLE_SECONDS of no workload (a measurement window, not synchronisation)."""
    time.sleep(SETTLE_SECONDS)
    return rss_mib(pid)


def test_unrelated_pods_cost_the_operator(kube_plane: Any, tmp_path: Path) -> None:
    kube_plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "crd"))
    namespace = f"bench-unrelated-{os.getpid()}"
    kube_plane.kubectl("create", "namespace", namespace)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        health_port = int(s.getsockname()[1])
    log = (tmp_path / "operator.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dask_operator.controller", "run", f"--kubeconfig={kube_plane.kubeconfig}",
         "--metrics-bind-address=0", f"--health-probe-bind-address=127.0.0.1:{health_port}",
         "--log-level=warning"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    client = TightClient(kube_plane.kubeconfig)
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout=60, message="operator ready")
        rss_before = steady_rss(proc.pid)
        cpu_before = cpu_seconds(proc.pid)
        started = time.monotonic()
        client.apply(unrelated_pod(namespace, i) for i in range(PODS))
        created = time.monotonic() - started

        def all_ready() -> bool:
            pods = client.list(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=unrelated")
            return sum(1 for p in pods if pod_ready(p)) == PODS

        wait_for(all_ready, timeout=120 + 0.2 * PODS, interval=5, message=f"{PODS} unrelated pods Ready")
        rss_after = steady_rss(proc.pid)
        report = {
            "unrelated_pods": PODS,
            "seconds_to_create_them": round(created, 1),
            "operator_rss_mib_before": round(rss_before, 1),
            "operator_rss_mib_after": round(rss_after, 1),
            "operator_rss_growth_mib": round(rss_after - rss_before, 1),
            "operator_cpu_seconds_spent_on_them": round(cpu_seconds(proc.pid) - cpu_before, 1),
        }
        print("\nBENCH " + json.dumps(report, indent=2))
        assert proc.poll() is None, "the operator survived the unrelated pods"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        kube_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
