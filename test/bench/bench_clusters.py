"""Benchmark: many DaskClusters at once with simulated pods (no Dask processes), next to the API
server's own limit in the same run.

A tight client (server-side applies from a thread pool, one request per object) creates N DaskClusters
with 2 workers each; the operator converges them. Then, with the operator stopped, the same client
writes what N converged clusters consist of itself (cluster, scheduler Pod and Service, worker group,
worker Pods, then both statuses once the pods are Ready): the physical limit. Prints, for both: time
from the first create to all Running (and per cluster p50/p99), requests per converged cluster by verb,
writes per cluster next to the minimum, operator CPU seconds and RSS, writes over a quiet period once
converged (target 0), and ours/limit ratios. The test's timeout grows with N. Run it explicitly:

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from bench.apiserver_latency import mutating_latency
from bench.apiserver_latency import scrape as scrape_apiserver
from bench.bench_latency import SENDERS, update_latency
from support.bench_workload import (
    WORKERS,
    TightClient,
    cluster_path,
    converged_objects,
    converged_statuses,
    cpu_seconds,
    manifest,
    peak_rss_mib,
    pod_ready,
    rss_mib,
)
from support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = int(os.environ.get("BENCH_CLUSTERS", "200"))
QUIET_SECONDS = float(os.environ.get("BENCH_QUIET_SECONDS", "60"))
# Once converged: updates per second spread over the clusters, and for how long (0 = no latency run).
# Several rates: 100/s is the figure and more than a 2-core API server takes with the operator's
# writes on top (it saturates); 20/s is one it sustains, where the operator's own latency shows.
LATENCY_RATES = [float(r) for r in os.environ.get("BENCH_LATENCY_RATES", "100,20").split(",") if r.strip()]
LATENCY_SECONDS = float(os.environ.get("BENCH_LATENCY_SECONDS", "30"))
# The operator's --concurrency; unset = its default, as deployed.
CONCURRENCY = os.environ.get("BENCH_CONCURRENCY")


# Convergence measured at ~0.1 s per cluster on a loaded 2-core machine: 1 s per cluster leaves room.
def converge_timeout(clusters: int) -> float:
    return 300 + 1.0 * clusters


def poll_interval(clusters: int) -> float:
    """Seconds between the benchmark's LISTs of every cluster while it waits: each LIST of 10,000 clusters is
    ~25 MB the API server encodes, so polling it twice a second would load the plane it measures."""
    return max(0.5, clusters / 2000)


def timed_latency(sender: TightClient, namespace: str, names: list[str], rate: float, answer: bool = False
                  ) -> dict[str, Any]:  # fmt: skip
    """bench_latency.update_latency, plus the API server's own mutating-request latency over the phase."""
    before = scrape_apiserver(sender.client)
    result = update_latency(sender, namespace, names, rate, LATENCY_SECONDS, answer=answer)
    result["apiserver_mutating"] = mutating_latency(before, scrape_apiserver(sender.client))
    return result


CONVERGE_TIMEOUT = converge_timeout(CLUSTERS)
pytestmark = pytest.mark.timeout(int(600 + QUIET_SECONDS + 3 * CONVERGE_TIMEOUT))

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


def percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {}
    return {"p50": values[len(values) // 2], "p99": values[min(len(values) - 1, int(len(values) * 0.99))]}


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


def _ready_condition_at(obj: dict[str, Any]) -> float | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready" and c.get("status") == "True":
            return _ts(c.get("lastTransitionTime"))
    return None


@contextmanager
def operator_process(kube_plane: Any, namespace: str, log_path: Path) -> Iterator[tuple[Any, int]]:
    """Our operator on one namespace, ready (caches synced); yields (process, metrics port)."""
    metrics_port, health_port = _free_port(), _free_port()
    log = log_path.open("wb")
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
            *([f"--concurrency={CONCURRENCY}"] if CONCURRENCY else []),
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
        yield proc, metrics_port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run_operator(
    kube_plane: Any,
    namespace: str,
    tmp_path: Path,
    client: TightClient,
    clusters: int = CLUSTERS,
    quiet_seconds: float = QUIET_SECONDS,
) -> dict[str, Any]:
    CLUSTERS, QUIET_SECONDS, CONVERGE_TIMEOUT = clusters, quiet_seconds, converge_timeout(clusters)
    with operator_process(kube_plane, namespace, tmp_path / f"operator-{namespace}.log") as (
        proc,
        metrics_port,
    ):
        before = scrape(metrics_port)
        cpu0 = cpu_seconds(proc.pid)
        idle_rss = rss_mib(proc.pid)  # synced on an empty namespace
        started = time.monotonic()
        client.apply((cluster_path(namespace, f"b{i:04d}"), manifest(f"b{i:04d}")) for i in range(CLUSTERS))
        submitted = time.monotonic() - started

        def running() -> int | None:
            items = client.list(f"/apis/kubernetes.dask.org/v1/namespaces/{namespace}/daskclusters")
            n = sum(1 for c in items if c.get("status", {}).get("phase") == "Running")
            return n if n == CLUSTERS else None

        poll = poll_interval(CLUSTERS)
        wait_for(running, timeout=CONVERGE_TIMEOUT, interval=poll, message=f"{CLUSTERS} clusters Running")
        to_running = time.monotonic() - started

        def settled() -> bool:
            groups = client.list(f"/apis/kubernetes.dask.org/v1/namespaces/{namespace}/daskworkergroups")
            return len(groups) == CLUSTERS and all(
                g.get("status", {}).get("readyReplicas") == WORKERS for g in groups
            )

        wait_for(settled, timeout=CONVERGE_TIMEOUT, interval=poll, message="worker groups ready")
        converged_at = time.monotonic() - started
        cpu_converged = cpu_seconds(proc.pid) - cpu0
        converged_rss = rss_mib(proc.pid)
        # Settled: no write for 5 s (bounded: an operator that never stops writing shows in the quiet count).
        settle_deadline = time.monotonic() + 60
        settled_totals = scrape(metrics_port)
        while time.monotonic() < settle_deadline:  # measuring, not synchronising: the count is reported
            time.sleep(5)
            now = scrape(metrics_port)
            if writes(now) == writes(settled_totals):
                break
            settled_totals = now
        t0 = time.monotonic()
        while time.monotonic() - t0 < QUIET_SECONDS:  # measuring a quiet period, not synchronising
            time.sleep(5)
        after = scrape(metrics_port)
        quiet_writes = writes(after) - writes(settled_totals)
        quiet_by_method = {
            k: v - settled_totals.get(k, 0) for k, v in after.items() if v != settled_totals.get(k, 0)
        }
        used = {k: settled_totals.get(k, 0) - before.get(k, 0) for k in settled_totals}
        # Events among the writes: count from the namespace's Events (an aggregated Event is one write per count)
        events = client.list(f"/api/v1/namespaces/{namespace}/events")
        event_writes = sum(max(1, int(e.get("count") or 1)) for e in events
                           if str(e.get("reportingComponent", "")).startswith("dask-operator"))  # fmt: skip
        latency = []
        names = [f"b{i:04d}" for i in range(CLUSTERS)]
        sender = TightClient(kube_plane.kubeconfig, SENDERS)
        for rate in LATENCY_RATES if LATENCY_SECONDS > 0 else []:
            before_updates = scrape(metrics_port)
            latency.append(timed_latency(sender, namespace, names, rate))
            made = writes(scrape(metrics_port)) - writes(before_updates)
            latency[-1]["operator_writes_per_update"] = round(
                made / max(latency[-1]["new_generations"], 1), 2
            )
        clusters = client.list(f"/apis/kubernetes.dask.org/v1/namespaces/{namespace}/daskclusters")
        per_cluster = [
            at - _ts(c["metadata"]["creationTimestamp"]) for c in clusters if (at := _ready_condition_at(c))
        ]
        return {
            "seconds_to_submit_all_clusters": round(submitted, 1),
            "submit_rate_clusters_per_second": round(CLUSTERS / submitted, 1),
            "seconds_to_all_running": round(to_running, 1),
            "seconds_to_all_workers_ready": round(converged_at, 1),
            "seconds_per_cluster_create_to_ready": percentiles(per_cluster),
            "requests_per_cluster_by_method": {k: round(v / CLUSTERS, 2) for k, v in sorted(used.items())},
            "requests_per_cluster": round(sum(used.values()) / CLUSTERS, 2),
            "writes_per_cluster": round(writes(used) / CLUSTERS, 2),
            "event_writes_per_cluster": round(event_writes / CLUSTERS, 2),
            f"writes_in_{int(QUIET_SECONDS)}s_once_converged": quiet_writes,
            "requests_while_quiet_by_method": quiet_by_method,
            "operator_cpu_seconds_to_converge": round(cpu_converged, 1),
            "operator_cpu_ms_per_converged_cluster": round(1000 * cpu_converged / CLUSTERS, 1),
            "operator_idle_rss_mib": round(idle_rss, 1),
            "operator_rss_kib_per_cluster_above_idle": round(1024 * (converged_rss - idle_rss) / CLUSTERS, 1),
            "operator_rss_mib": round(rss_mib(proc.pid), 1),
            "operator_peak_rss_mib": round(peak_rss_mib(proc.pid), 1),
            "operator_cpu_seconds_total": round(cpu_seconds(proc.pid), 1),
            "latency_seconds_p50_max": timeline(kube_plane, namespace),
            "update_latency": latency,
        }


def run_limit(
    namespace: str, client: TightClient, clusters: int = CLUSTERS, kubeconfig: Path | None = None
) -> dict[str, Any]:
    """No operator: the same objects a converged cluster holds, written as fast as the API server takes
    them, then both statuses once the node reports the pods Ready (polled every 0.5 s). Given the kubeconfig, it
    then measures the update latency's limit on those clusters (bench_latency.update_latency with answer=True)."""
    CLUSTERS, CONVERGE_TIMEOUT = clusters, converge_timeout(clusters)
    client.requests.clear()
    started = time.monotonic()
    client.apply(obj for i in range(CLUSTERS) for obj in converged_objects(namespace, f"l{i:04d}"))
    submitted = time.monotonic() - started

    def all_ready() -> bool:
        pods = client.list(f"/api/v1/namespaces/{namespace}/pods", labelSelector="dask.org/cluster-name")
        return sum(1 for p in pods if pod_ready(p)) == CLUSTERS * (WORKERS + 1)

    wait_for(
        all_ready, timeout=CONVERGE_TIMEOUT, interval=poll_interval(CLUSTERS), message="limit: pods Ready"
    )
    pods_ready = time.monotonic() - started
    client.patch_status(st for i in range(CLUSTERS) for st in converged_statuses(namespace, f"l{i:04d}"))
    to_running = time.monotonic() - started
    writes_made = client.requests["PATCH"]
    latency = []
    if kubeconfig is not None and LATENCY_SECONDS > 0:
        names = [f"l{i:04d}" for i in range(CLUSTERS)]
        sender = TightClient(kubeconfig, SENDERS)
        for rate in LATENCY_RATES:
            latency.append(timed_latency(sender, namespace, names, rate, answer=True))
    return {
        "seconds_to_write_all_objects": round(submitted, 1),
        "seconds_to_all_pods_ready": round(pods_ready, 1),
        "seconds_to_all_running": round(to_running, 1),
        "requests_per_cluster_by_method": {
            k: round(v / CLUSTERS, 2) for k, v in sorted(client.requests.items())
        },
        "writes_per_cluster": round(writes_made / CLUSTERS, 2),
        # what an operator would write: all but the DaskCluster, which the user creates
        "operator_writes_per_cluster": round((writes_made - CLUSTERS) / CLUSTERS, 2),
        "update_latency": latency,
    }


def test_many_clusters_converge(kube_plane: Any, tmp_path: Path) -> None:
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
    ours_ns, limit_ns = f"bench-ours-{os.getpid()}", f"bench-limit-{os.getpid()}"
    kube_plane.kubectl("create", "namespace", ours_ns)
    kube_plane.kubectl("create", "namespace", limit_ns)
    client = TightClient(kube_plane.kubeconfig)
    try:
        ours = run_operator(kube_plane, ours_ns, tmp_path, client)
        limit = run_limit(limit_ns, client)
    finally:
        for ns in (ours_ns, limit_ns):
            kube_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    report = {
        "clusters": CLUSTERS,
        "workers_per_cluster": WORKERS,
        "minimum_writes_per_cluster": MINIMUM_WRITES,
        "ours": ours,
        "limit": limit,
        "ratio_ours_to_limit": {
            "seconds_to_all_running": round(
                ours["seconds_to_all_running"] / limit["seconds_to_all_running"], 2
            ),
            "writes_per_cluster": round(ours["writes_per_cluster"] / limit["operator_writes_per_cluster"], 2),
            "writes_per_cluster_to_minimum": round(ours["writes_per_cluster"] / MINIMUM_WRITES, 2),
        },
    }
    print("\nBENCH " + json.dumps(report, indent=2))
    assert ours[f"writes_in_{int(QUIET_SECONDS)}s_once_converged"] == 0
    assert limit["operator_writes_per_cluster"] == WORKERS + 5, (
        "the limit client writes exactly what converges"
    )
