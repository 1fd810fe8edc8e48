"""Benchmark: the whole performance table in one command, on one plane with simulated pods.

For each N in BENCH_SIZES (default 100,300), one after the other: our operator converging N DaskClusters x 2
workers (bench_clusters.run_operator), the API server's limit writing the same converged objects with no
operator (bench_clusters.run_limit), and, for N up to BENCH_KOPF_MAX (300; 0 = never), the kopf-based reference
(bench_vs_kopf.run_one). Then one cluster scaled 0 -> BENCH_SCALE_WORKERS (100) -> 0 workers under our
operator. Prints one table per N with the ratios ours/kopf and ours/limit, and the scale timings. The
test's timeout grows with the sizes. Run it explicitly:

    BENCH_SIZES=100,300,1000 hack/test test/bench/bench_table.py -m bench -s   (~21 min on 2 cores)
    BENCH_SIZES=1000 hack/test test/bench/bench_table.py -m bench -s           (~6 min, no kopf)
    BENCH_SIZES=100,1000,10000 hack/test test/bench/bench_table.py -m bench -s

Each latency phase also reports the API server's own mutating-request p99 (apiserver_latency.py). The
clusters are polled every N/2000 s (a LIST of 10,000 is ~25 MB), and the last size's namespaces are deleted
without waiting for them.

The kopf operator takes 0.3-1.4 s a cluster here (the more, the busier the machine), so it is left out above
300 clusters.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from bench.bench_clusters import MINIMUM_WRITES, operator_process, run_limit, run_operator
from bench.bench_vs_kopf import run_one
from kubeplane.node.kubeapi import ApiError
from support.bench_workload import GROUP, MERGE, WORKERS, TightClient, cluster_path, manifest, pod_ready
from support.reference_operator import reference_cmd, reference_venv, status_subresource
from support.wait import WaitTimeout, wait_for

REPO = Path(__file__).resolve().parents[2]
SIZES = [int(n) for n in os.environ.get("BENCH_SIZES", "100,300").split(",") if n.strip()]
# One scheduler Service per cluster: above the plane's default /20 (4,094 ClusterIPs) the plane this module's
# tests get is given a /16 (read by the kube_plane fixture, which starts after collection).
WIDE_SERVICE_CIDR = "10.64.0.0/16"
if max(SIZES, default=0) > 4000:
    os.environ.setdefault("K8S_TEST_SERVICE_CIDR", WIDE_SERVICE_CIDR)
KOPF_MAX = int(os.environ.get("BENCH_KOPF_MAX", "300"))
SCALE_WORKERS = int(os.environ.get("BENCH_SCALE_WORKERS", "100"))
QUIET_SECONDS = float(os.environ.get("BENCH_QUIET_SECONDS", "30"))
# per N: ours ~1 s/cluster at worst, the limit less, kopf up to ~3 s/cluster on a busy machine, then waiting
# for the size's namespaces to go (up to 120 s + 0.5 s/cluster); plus quiet periods and the scale run
pytestmark = pytest.mark.timeout(int(900 + sum((2.5 + (4 if n <= KOPF_MAX else 0)) * n + 420 for n in SIZES)))


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "-"
    return f"{a / b:.2f}" if b else ("-" if not a else "inf")


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".") if value < 100 else f"{value:.0f}"
    return str(value)


def _api_p99(latency: dict[str, Any]) -> float | None:
    value = (latency.get("apiserver_mutating") or {}).get("p99_seconds_at_most")
    return float(value) if value is not None else None


def table(n: int, ours: dict[str, Any], limit: dict[str, Any], kopf: dict[str, Any] | None) -> str:
    kopf = kopf or {}
    per = ours["seconds_per_cluster_create_to_ready"]
    quiet_minutes = QUIET_SECONDS / 60
    ours_writes = ours["writes_per_cluster"]
    rows: list[tuple[str, Any, Any, Any]] = [
        ("seconds to all Running", ours["seconds_to_all_running"], kopf.get("seconds_to_all_running"),
         limit["seconds_to_all_running"]),
        ("seconds to all pods Ready", ours["seconds_to_all_workers_ready"], kopf.get("seconds_to_all_pods_ready"),
         limit["seconds_to_all_pods_ready"]),
        ("  per cluster p50 (create->Ready)", per.get("p50"), None, None),
        ("  per cluster p99", per.get("p99"), None, None),
        ("requests / cluster", ours["requests_per_cluster"], kopf.get("requests_per_cluster"),
         sum(limit["requests_per_cluster_by_method"].values())),
    ]  # fmt: skip
    methods = sorted(
        set(ours["requests_per_cluster_by_method"]) | set(kopf.get("requests_per_cluster_by_method", {}))
    )
    for m in methods:
        rows.append(
            (
                f"  {m} / cluster",
                ours["requests_per_cluster_by_method"].get(m, 0.0),
                kopf.get("requests_per_cluster_by_method", {}).get(m) if kopf else None,
                limit["requests_per_cluster_by_method"].get(m),
            )
        )
    rows += [
        ("writes / cluster", ours_writes, kopf.get("writes_per_cluster"), limit["operator_writes_per_cluster"]),
        (f"writes / cluster / minimum ({MINIMUM_WRITES})", ours_writes / MINIMUM_WRITES,
         (kopf["writes_per_cluster"] / MINIMUM_WRITES) if kopf else None,
         limit["operator_writes_per_cluster"] / MINIMUM_WRITES),
        ("  of which Events / cluster", ours.get("event_writes_per_cluster"), None, None),
        ("CPU seconds (operator, whole run)", ours["operator_cpu_seconds_total"], kopf.get("cpu_seconds"), None),
        ("  CPU ms / converged cluster", ours.get("operator_cpu_ms_per_converged_cluster"), None, None),
        ("peak RSS MiB", ours["operator_peak_rss_mib"], kopf.get("peak_rss_mib"), None),
        ("  RSS KiB / cluster above idle", ours.get("operator_rss_kib_per_cluster_above_idle"), None, None),
        ("writes / min once idle", ours[f"writes_in_{int(QUIET_SECONDS)}s_once_converged"] / quiet_minutes,
         (kopf["quiet_writes"] / quiet_minutes) if kopf else None, None),
    ]  # fmt: skip
    floors = limit.get("update_latency") or []
    for i, latency in enumerate(ours.get("update_latency") or []):
        floor = floors[i] if i < len(floors) else {}
        rows += [
            (f"updates / s asked {latency['rate_asked_per_second']:g}: achieved", latency["rate_achieved_per_second"],
             None, floor.get("rate_achieved_per_second")),
            ("  update -> reconciled p50 s", latency["latency_seconds_p50"], None, floor.get("latency_seconds_p50")),
            ("  update -> reconciled p99 s", latency["latency_seconds_p99"], None, floor.get("latency_seconds_p99")),
            ("  updates never reconciled", latency["never_observed"], None, floor.get("never_observed")),
            ("  writes / update (limit: 1)", latency["operator_writes_per_update"], None, 1.0),
            ("  API server mutating p99 s (at most)", _api_p99(latency), None, _api_p99(floor)),
        ]  # fmt: skip
    if kopf and kopf.get("seconds_to_all_running") is None:
        rows.append(("(kopf: some clusters never showed Running)", None, None, None))
    lines = [
        f"N={n} DaskClusters x {WORKERS} workers (simulated pods); limit = tight client, no operator",
        f"{'':40} {'ours':>9} {'kopf':>9} {'limit':>9} {'ours/kopf':>10} {'ours/limit':>11}",
    ]
    for name, a, k, lim in rows:
        lines.append(f"{name:40} {fmt(a):>9} {fmt(k):>9} {fmt(lim):>9} {ratio(a, k):>10} {ratio(a, lim):>11}")
    return "\n".join(lines)


def scale_one_cluster(kube_plane: Any, tmp_path: Path, client: TightClient, workers: int) -> dict[str, Any]:
    """One cluster under our operator: 0 -> workers -> 0. The simulated scheduler cannot retire workers,
    so the cluster's scale-down force timeout is 0 s: back-to-0 times pod deletion, not Dask retirement."""
    namespace = f"bench-scale-{uuid.uuid4().hex[:6]}"
    kube_plane.kubectl("create", "namespace", namespace)
    name = "scale"
    body = manifest(name)
    body["metadata"]["annotations"] = {"kubernetes.dask.org/scale-down-force-timeout": "0"}
    body["spec"]["worker"]["replicas"] = 0
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    selector = f"dask.org/cluster-name={name},dask.org/component=worker"

    def worker_pods() -> list[dict[str, Any]]:
        return [
            p
            for p in client.list(pods_path, labelSelector=selector)
            if "deletionTimestamp" not in p["metadata"]
        ]

    def replicas(n: int) -> None:
        client.client.request("PATCH", cluster_path(namespace, name), {"spec": {"worker": {"replicas": n}}},
                              content_type=MERGE, timeout=60)  # fmt: skip

    try:
        with operator_process(kube_plane, namespace, tmp_path / "scale-operator.log") as _:
            client.apply([(cluster_path(namespace, name), body)])
            wait_for(
                lambda: (
                    client.client.request("GET", f"{GROUP}/namespaces/{namespace}/daskclusters/{name}")
                    .get("status", {})
                    .get("phase")
                    == "Running"
                ),
                timeout=120,
                message="scale cluster Running",
            )
            started = time.monotonic()
            replicas(workers)
            wait_for(lambda: len(worker_pods()) >= workers, timeout=600, interval=0.25, message="pod objects")
            objects = time.monotonic() - started
            wait_for(lambda: sum(1 for p in worker_pods() if pod_ready(p)) >= workers, timeout=600,
                     interval=0.25, message="pods Ready")  # fmt: skip
            ready = time.monotonic() - started
            started = time.monotonic()
            replicas(0)
            wait_for(lambda: not client.list(pods_path, labelSelector=selector), timeout=600, interval=0.25,
                     message="no worker pods")  # fmt: skip
            gone = time.monotonic() - started
    finally:
        kube_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return {
        "workers": workers,
        "seconds_to_pod_objects": round(objects, 1),
        "seconds_to_ready": round(ready, 1),
        "seconds_back_to_0_pods": round(gone, 1),
    }


def wait_namespaces_gone(client: TightClient, namespaces: list[str], timeout: float) -> float | None:
    """Seconds until these namespaces are gone, or None past the timeout. The next size waits for it, so it
    never shares the API server and the node with this size's deletions. The kopf operator, stopped by now,
    leaves its finalizers on its objects: they are lifted, as its own cleanup would."""
    started = time.monotonic()
    for ns in namespaces:
        for plural in ("daskclusters", "daskworkergroups", "daskjobs", "daskautoscalers"):
            for obj in client.list(f"{GROUP}/namespaces/{ns}/{plural}"):
                if obj["metadata"].get("finalizers"):
                    path = f"{GROUP}/namespaces/{ns}/{plural}/{obj['metadata']['name']}"
                    try:
                        client.client.request(
                            "PATCH", path, {"metadata": {"finalizers": None}}, content_type=MERGE
                        )
                    except ApiError as error:
                        if error.status != 404:  # gone already is what we want
                            raise

    def gone() -> bool:
        return not {ns["metadata"]["name"] for ns in client.list("/api/v1/namespaces")} & set(namespaces)

    try:
        wait_for(gone, timeout=timeout, interval=1.0, message="the last size's namespaces deleted")
    except WaitTimeout:
        return None
    return round(time.monotonic() - started, 1)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def test_performance_table(kube_plane: Any, tmp_path: Path) -> None:
    from support.operator import CRD_PLURALS, crd_established

    venv = reference_venv() if any(n <= KOPF_MAX for n in SIZES) else None
    kube_plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "crd"))
    for crd in CRD_PLURALS:
        wait_for(lambda crd=crd: crd_established(kube_plane, crd), timeout=60, message=f"CRD {crd}")
    client = TightClient(kube_plane.kubeconfig)
    report: dict[str, Any] = {"load_average_at_start": load_average(), "sizes": {}}
    tables: list[str] = []
    started = time.monotonic()
    for n in SIZES:
        names = {k: f"bench-{k}-{n}-{uuid.uuid4().hex[:6]}" for k in ("ours", "limit", "kopf")}
        for key in ("ours", "limit"):
            kube_plane.kubectl("create", "namespace", names[key])
        try:
            ours = run_operator(kube_plane, names["ours"], tmp_path, client, n, QUIET_SECONDS)
            ours["load_average"] = load_average()
            limit = run_limit(names["limit"], client, n, kube_plane.kubeconfig)
            limit["load_average"] = load_average()
            kopf = None
            if venv is not None and n <= KOPF_MAX:
                try:
                    status_subresource(kube_plane, False)
                    kopf = run_one(
                        kube_plane, "kopf", names["kopf"], reference_cmd(venv), tmp_path, n, QUIET_SECONDS
                    )
                    kopf["load_average"] = load_average()
                finally:
                    status_subresource(kube_plane, True)
        finally:
            for ns in names.values():
                kube_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        report["sizes"][n] = {"ours": ours, "limit": limit, "kopf": kopf}
        # the next size waits for this one's deletions; after the last one (or the only one) nothing does
        last = n == SIZES[-1] and not SCALE_WORKERS
        report["sizes"][n]["seconds_to_delete_namespaces"] = (
            None if last else wait_namespaces_gone(client, list(names.values()), 120 + 0.5 * n)
        )
        tables.append(table(n, ours, limit, kopf))
        deleted = report["sizes"][n]["seconds_to_delete_namespaces"]
        took = f"{deleted} s" if deleted is not None else "(not waited for, or more than the timeout)"
        footer = f"(load average: {ours['load_average']}; this size's namespaces deleted in {took} before the next)"
        print(f"\n{tables[-1]}\n{footer}", flush=True)
    scale = scale_one_cluster(kube_plane, tmp_path, client, SCALE_WORKERS) if SCALE_WORKERS else None
    report["scale"] = scale
    report["seconds_in_all"] = round(time.monotonic() - started, 1)
    report["load_average_at_end"] = load_average()
    print("\nBENCH " + json.dumps(report, indent=2))
    print("\n" + "\n\n".join(tables))
    if scale:
        print(f"\none cluster 0 -> {scale['workers']} -> 0 workers: {scale['seconds_to_pod_objects']} s to "
              f"{scale['workers']} pod objects, {scale['seconds_to_ready']} s to all Ready, "
              f"{scale['seconds_back_to_0_pods']} s back to 0 pods")  # fmt: skip
    print(f"whole run {report['seconds_in_all']} s; load average {report['load_average_at_start']} -> "
          f"{report['load_average_at_end']}")  # fmt: skip
    for size in report["sizes"].values():
        assert size["ours"][f"writes_in_{int(QUIET_SECONDS)}s_once_converged"] == 0
