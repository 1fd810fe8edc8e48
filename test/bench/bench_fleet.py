"""Benchmark: a fleet of N DaskClusters (simulated pods) and the status latency at a fixed update rate, the
narrow cut of bench_table.py that iterates in minutes.

One namespace holds N converged clusters (created once; with FLEET_NAMESPACE set, a later run reuses them).
The operator starts on it; the run reports its RSS once synced on the fleet and per cluster above an empty
namespace's (when the clusters were created in this run), then sends FLEET_RATE updates/s for
FLEET_SECONDS (bench_latency.update_latency) and reports update -> observedGeneration p50/p99, updates never
observed, the operator's writes and reconciles (per controller) per update and CPU seconds, and the API server's own mutating-request
latency over the phase (apiserver_latency). Then, with the operator stopped, the same clusters and rate
with the sender answering its own updates: the limit, in the same run, so ratios hold. FLEET_PROFILE=path
records the operator under py-spy during the phase (when py-spy is installed). Run it explicitly:

    FLEET_N=1000 hack/test test/bench/bench_fleet.py -m bench -s
    K8S_TEST_BACKEND=external KUBECONFIG=... FLEET_NAMESPACE=fleet-1000 ...   (a plane kept up between runs)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from bench.apiserver_latency import histogram, mutating_latency
from bench.apiserver_latency import scrape as scrape_apiserver
from bench.bench_clusters import converge_timeout, operator_process, poll_interval, scrape, writes
from bench.bench_latency import SENDERS, update_latency
from kubeplane.node.kubeapi import ApiError
from support.bench_workload import WORKERS, TightClient, cluster_path, cpu_seconds, manifest, rss_mib
from support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
N = int(os.environ.get("FLEET_N", "1000"))
RATE = float(os.environ.get("FLEET_RATE", "100"))
SECONDS = float(os.environ.get("FLEET_SECONDS", "30"))
NAMESPACE = os.environ.get("FLEET_NAMESPACE")
LIMIT = os.environ.get("FLEET_LIMIT", "1") == "1"
PROFILE = os.environ.get("FLEET_PROFILE")
pytestmark = pytest.mark.timeout(int(900 + 3 * converge_timeout(N)))

GROUP = "/apis/kubernetes.dask.org/v1"


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def names(n: int) -> list[str]:
    return [f"f{i:05d}" for i in range(n)]


def _settled(client: TightClient, namespace: str, n: int) -> bool:
    clusters = client.list(f"{GROUP}/namespaces/{namespace}/daskclusters")
    groups = client.list(f"{GROUP}/namespaces/{namespace}/daskworkergroups")
    return (
        len(clusters) >= n
        and sum(1 for c in clusters if (c.get("status") or {}).get("phase") == "Running") >= n
        and sum(1 for g in groups if (g.get("status") or {}).get("readyReplicas") == WORKERS) >= n
    )


def _operator_histograms(port: int) -> dict[str, dict[float, float]]:
    """The daskcluster controller's work-queue wait and reconcile time, by bucket."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    ours = lambda t: 'name="daskcluster"' in t or 'controller="daskcluster"' in t
    return {
        "queue_wait": histogram(text, "workqueue_queue_duration_seconds", ours),
        "reconcile": histogram(text, "controller_runtime_reconcile_time_seconds", ours),
    }


def _reconciles(port: int) -> dict[str, float]:
    """controller_runtime_reconcile_total per controller (every result: an early requeue counts too)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r'controller_runtime_reconcile_total\{.*controller="([^"]+)".*\} ([0-9.e+]+)$', line)
        if m:
            totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(2))
    return totals


def _phase(
    kubeconfig: Path, client: TightClient, namespace: str, answer: bool, operator: Any = None
) -> dict[str, Any]:
    """One latency phase; with `operator` (process, metrics port), its writes and CPU over the phase."""
    sender = TightClient(kubeconfig, SENDERS)
    api_before = scrape_apiserver(client.client)
    ops_before = scrape(operator[1]) if operator else {}
    hist_before = _operator_histograms(operator[1]) if operator else {}
    reconciles_before = _reconciles(operator[1]) if operator else {}
    cpu_before = cpu_seconds(operator[0].pid) if operator else 0.0
    profiler = None
    if operator and PROFILE and shutil.which("py-spy"):
        profiler = subprocess.Popen(
            ["py-spy", "record", "-o", PROFILE, "-f", "speedscope" if PROFILE.endswith(".json") else "flamegraph",
             "-d", str(int(SECONDS)), "-r", "100", "--gil", "-p", str(operator[0].pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
    result = update_latency(sender, namespace, names(N), RATE, SECONDS, answer=answer)
    result["apiserver_mutating"] = mutating_latency(api_before, scrape_apiserver(client.client))
    if operator:
        made = writes(scrape(operator[1])) - writes(ops_before)
        result["operator_writes_per_update"] = round(made / max(result["new_generations"], 1), 2)
        updates = max(result["new_generations"], 1)
        result["reconciles_per_update"] = {
            name: round((total - reconciles_before.get(name, 0.0)) / updates, 2)
            for name, total in _reconciles(operator[1]).items()
        }
        result["operator_cpu_seconds"] = round(cpu_seconds(operator[0].pid) - cpu_before, 1)
        result["operator_rss_mib"] = round(rss_mib(operator[0].pid), 1)
        hist_after = _operator_histograms(operator[1])
        for key, after in hist_after.items():
            result[f"daskcluster_{key}"] = mutating_latency(hist_before[key], after)
    if profiler is not None:
        profiler.wait(60)
    result["load_average"] = load_average()
    return result


def test_fleet_latency(kube_plane: Any, tmp_path: Path) -> None:
    from support.operator import CRD_PLURALS, crd_established

    kube_plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "crd"))
    for crd in CRD_PLURALS:
        wait_for(lambda crd=crd: crd_established(kube_plane, crd), timeout=60, message=f"CRD {crd}")
    client = TightClient(kube_plane.kubeconfig)
    namespace = NAMESPACE or f"fleet-{N}-{uuid.uuid4().hex[:6]}"
    try:
        client.client.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
    except ApiError as e:
        if e.status != 409:  # an existing namespace is a fleet kept from an earlier run
            raise
    report: dict[str, Any] = {"clusters": N, "namespace": namespace, "load_average_at_start": load_average()}

    def listed() -> tuple[int] | None:
        try:
            return (len(client.list(f"{GROUP}/namespaces/{namespace}/daskclusters")),)
        except ApiError as e:
            if e.status == 429:  # a CRD just established: its storage is still initialising
                return None
            raise

    (existing,) = wait_for(listed, timeout=60, interval=1.0, message="DaskClusters listable")
    try:
        with operator_process(kube_plane, namespace, tmp_path / "operator.log") as (proc, port):
            rss_empty = rss_mib(proc.pid)
            started = time.monotonic()
            if existing < N:
                client.apply((cluster_path(namespace, n), manifest(n)) for n in names(N)[existing:])
            wait_for(lambda: _settled(client, namespace, N), timeout=converge_timeout(N), interval=poll_interval(N),
                     message=f"{N} clusters settled")  # fmt: skip
            # idle too: a restarted operator first repairs what the last run's limit phase left (each status's
            # conditions behind its observedGeneration), and those writes must not fall into the phase
            quiet_since, last = time.monotonic(), writes(scrape(port))
            while time.monotonic() - quiet_since < 5 and time.monotonic() - started < converge_timeout(N):
                time.sleep(1)  # measuring when the operator's writes stop, bounded by the convergence timeout
                now = writes(scrape(port))
                if now != last:
                    quiet_since, last = time.monotonic(), now
            report["seconds_to_settled"] = round(time.monotonic() - started, 1)
            report["operator_rss_mib_settled"] = round(rss_mib(proc.pid), 1)
            if existing == 0:
                report["operator_rss_mib_empty"] = round(rss_empty, 1)
                report["operator_rss_kib_per_cluster"] = round((rss_mib(proc.pid) - rss_empty) * 1024 / N, 1)
            report["operator_cpu_seconds_to_settle"] = round(cpu_seconds(proc.pid), 1)
            report["load_average_settled"] = load_average()
            report["ours"] = _phase(kube_plane.kubeconfig, client, namespace, False, (proc, port))
        if LIMIT:
            report["limit"] = _phase(kube_plane.kubeconfig, client, namespace, True)
    finally:
        if not NAMESPACE:
            kube_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    print("\nFLEET " + json.dumps(report, indent=2))
    ours, limit = report["ours"], report.get("limit") or {}
    p99, floor = ours["latency_seconds_p99"], limit.get("latency_seconds_p99")
    print(
        f"\nN={N} at {RATE:g}/s: ours p50 {ours['latency_seconds_p50']} p99 {p99} s "
        f"(limit p50 {limit.get('latency_seconds_p50')} p99 {floor}; "
        f"ratio p99 {round(p99 / floor, 2) if p99 and floor else '-'}), "
        f"never observed {ours['never_observed']}, writes/update {ours['operator_writes_per_update']}, "
        f"daskcluster reconciles/update {ours['reconciles_per_update'].get('daskcluster')}, "
        f"apiserver mutating p99 <= {ours['apiserver_mutating']['p99_seconds_at_most']} s, "
        f"RSS {report['operator_rss_mib_settled']} MiB, load {ours['load_average']}"
    )
