"""Benchmark: many DaskClusters at once with simulated pods (no Dask processes).

Prints: time for N DaskClusters with 2 workers each to reach phase Running, API requests per converged
cluster by method next to the minimum the objects require, writes issued over a quiet period once
converged (target 0), and the operator's RSS. Run it explicitly:

    python -m pytest test/bench/bench_clusters.py -m bench -s      (BENCH_CLUSTERS=200 BENCH_QUIET_SECONDS=60)
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from support.bench_workload import WORKERS, manifest, rss_mib
from support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = int(os.environ.get("BENCH_CLUSTERS", "200"))
QUIET_SECONDS = float(os.environ.get("BENCH_QUIET_SECONDS", "60"))

# Writes a converged cluster needs at least: scheduler Pod, Service, default DaskWorkerGroup (+ its
# replicas), 2 worker Pods, the cluster's status (Created -> Running can be one write at best) and the
# group's status: 8.
MINIMUM_WRITES = 4 + WORKERS + 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """rest_client_requests_total summed by method."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"rest_client_requests_total\{(.*)\} ([0-9.e+]+)$", line)
        if m:
            method = re.search(r'method="([A-Z]+)"', m.group(1))
            if method:
                totals[method.group(1)] = totals.get(method.group(1), 0.0) + float(m.group(2))
    return totals


def writes(totals: dict[str, float]) -> float:
    return sum(v for k, v in totals.items() if k not in ("GET", "LIST", "WATCH"))


def _ts(value: str | None) -> float:
    from datetime import UTC, datetime

    return datetime.strptime(value or "", "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def timeline(kube_plane: Any, namespace: str) -> dict[str, list[float]]:
    """Where the time went, per cluster (second precision): operator (cluster -> scheduler pod created),
    node (pod created -> Ready), operator again (scheduler Ready -> cluster Ready)."""
    clusters = json.loads(kube_plane.kubectl("get", "-n", namespace, "daskclusters", "-o", "json").stdout)[
        "items"
    ]
    pods = json.loads(kube_plane.kubectl("get", "-n", namespace, "pods", "-o", "json", timeout=120).stdout)[
        "items"
    ]
    by_name = {p["metadata"]["name"]: p for p in pods}

    def ready_at(obj: dict[str, Any]) -> float:
        cond = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        return _ts(cond["lastTransitionTime"])

    spans: dict[str, list[float]] = {
        "cluster_to_scheduler_pod": [],
        "pod_to_ready": [],
        "ready_to_cluster_ready": [],
    }
    for c in clusters:
        pod = by_name.get(f"{c['metadata']['name']}-scheduler")
        if pod is None:
            continue
        created = _ts(pod["metadata"]["creationTimestamp"])
        spans["cluster_to_scheduler_pod"].append(created - _ts(c["metadata"]["creationTimestamp"]))
        spans["pod_to_ready"].append(ready_at(pod) - created)
        spans["ready_to_cluster_ready"].append(ready_at(c) - ready_at(pod))

    def p50_max(values: list[float]) -> list[float]:
        values = sorted(values)
        return [values[len(values) // 2], values[-1]] if values else []

    return {k: p50_max(v) for k, v in spans.items()}


def test_many_clusters_converge(kube_plane: Any, namespace: str, tmp_path: Path) -> None:
    kube_plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "crd"))
    wait_for(
        lambda: (
            "Established"
            in kube_plane.kubectl(
                "get",
                "crd/daskclusters.kubernetes.dask.org",
                "-o",
                "jsonpath={.status.conditions[*].type}",
                check=False,
            ).stdout
        ),
        timeout=60,
        message="CRDs established",
    )
    metrics_port, health_port = _free_port(), _free_port()
    log = (tmp_path / "operator.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dask_operator.controller",
            "run",
            f"--kubeconfig={kube_plane.kubeconfig}",
            f"--namespace={namespace}",
            f"--metrics-bind-address=127.0.0.1:{metrics_port}",
            f"--health-probe-bind-address=127.0.0.1:{health_port}",
            "--concurrency=8",
            "--log-level=warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout=60, message="operator ready")
        before = scrape(metrics_port)
        body = "\n---\n".join(yaml.safe_dump(manifest(f"b{i:03d}")) for i in range(CLUSTERS))
        started = time.monotonic()
        kube_plane.kubectl("apply", "-n", namespace, "-f", "-", input=body, timeout=300)
        applied = time.monotonic() - started  # kubectl creates the objects one by one

        def running() -> int | None:
            out = kube_plane.kubectl("get", "-n", namespace, "daskclusters", "-o", "json", timeout=60)
            items = json.loads(out.stdout)["items"]
            n = sum(1 for c in items if c.get("status", {}).get("phase") == "Running")
            return n if n == CLUSTERS else None

        wait_for(running, timeout=900, interval=1.0, message=f"{CLUSTERS} clusters Running")
        to_running = time.monotonic() - started

        def settled() -> bool:
            # converged: every group reports its workers ready and the operator stopped writing
            out = kube_plane.kubectl("get", "-n", namespace, "daskworkergroups", "-o", "json", timeout=60)
            groups = json.loads(out.stdout)["items"]
            return len(groups) == CLUSTERS and all(
                g.get("status", {}).get("readyReplicas") == WORKERS for g in groups
            )

        wait_for(settled, timeout=600, interval=1.0, message="worker groups ready")
        converged_at = time.monotonic() - started
        first = scrape(metrics_port)
        wait_for(lambda: writes(scrape(metrics_port)) == writes(first) or None, timeout=60, interval=5,
                 message="no more writes")  # fmt: skip
        settled_totals = scrape(metrics_port)
        t0 = time.monotonic()
        while time.monotonic() - t0 < QUIET_SECONDS:  # measuring a quiet period, not synchronising
            time.sleep(5)
        after = scrape(metrics_port)
        quiet_writes = writes(after) - writes(settled_totals)
        used = {k: settled_totals.get(k, 0) - before.get(k, 0) for k in settled_totals}
        rss = rss_mib(proc.pid)
        latencies = timeline(kube_plane, namespace)
        report = {
            "clusters": CLUSTERS,
            "workers_per_cluster": WORKERS,
            "seconds_kubectl_apply_of_all_clusters": round(applied, 1),
            "seconds_to_all_running": round(to_running, 1),
            "seconds_to_all_workers_ready": round(converged_at, 1),
            "requests_per_cluster_by_method": {k: round(v / CLUSTERS, 2) for k, v in sorted(used.items())},
            "writes_per_cluster": round(writes(used) / CLUSTERS, 2),
            "minimum_writes_per_cluster": MINIMUM_WRITES,
            f"writes_in_{int(QUIET_SECONDS)}s_once_converged": quiet_writes,
            "operator_rss_mib": round(rss, 1),
            "latency_seconds_p50_max": latencies,
        }
        print("\nBENCH " + json.dumps(report, indent=2))
        assert quiet_writes == 0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
