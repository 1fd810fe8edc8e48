"""Benchmark: this operator side by side with the kopf-based reference (dask-kubernetes) on one workload.

Each operator runs alone (one after the other, never both: they reconcile the same kinds), in its own
namespace, talking to the API server only through its own HTTP-mode fault proxy, so every request it makes
is seen and counted by method. Workload: N DaskClusters x 2 workers with simulated pods (the process node
reports them Running+Ready without a process). Printed per operator: seconds until every cluster is Running
and every worker pod Ready, requests per cluster by method during convergence, requests and writes during a
quiet period once converged, Events created per cluster, RSS; and the ratios ours / reference.

The reference runs out of the cluster from its own virtualenv (test/support/reference_operator.py: created on
first use under ~/.cache/dask-operator/kopf-venv, then reused; DASK_KUBERNETES_VENV overrides).

    python -m pytest test/bench/bench_vs_kopf.py -m bench -s -q     (BENCH_CLUSTERS=50 BENCH_QUIET_SECONDS=60)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.bench_workload import (
    WORKERS,
    TightClient,
    cluster_path,
    cpu_seconds,
    manifest,
    peak_rss_mib,
    rss_mib,
)
from support.reference_operator import reference_cmd, reference_venv, reference_versions, status_subresource
from support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = int(os.environ.get("BENCH_CLUSTERS", "50"))
QUIET_SECONDS = float(os.environ.get("BENCH_QUIET_SECONDS", "60"))
PHASE_GRACE = 30.0


def convergence_timeout(clusters: int) -> float:
    """Per operator; BENCH_TIMEOUT overrides."""
    return float(os.environ.get("BENCH_TIMEOUT", str(300 + 3 * clusters)))


TIMEOUT = convergence_timeout(CLUSTERS)
pytestmark = pytest.mark.timeout(int(1800 + 3 * TIMEOUT))
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


# -- workload and observation ------------------------------------------------------------------------------


def proxy_kubeconfig(url: str, path: Path) -> Path:
    """No credentials: the HTTP-mode proxy authenticates upstream with the admin certificate."""
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "proxy", "cluster": {"server": url}}],
        "users": [{"name": "proxy", "user": {}}],
        "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
        "current-context": "proxy",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def verb(method: str, target: str) -> str:
    """HTTP method, with GET split into WATCH, LIST (a collection) and GET (one object)."""
    if method != "GET":
        return method
    path, _, query = target.partition("?")
    if "watch=true" in query or "watch=1" in query:
        return "WATCH"
    parts = [p for p in path.split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]  # /api/v1/... or /apis/<group>/<version>/...
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    return "LIST" if len(rest) == 1 else "GET"


def tally(requests: list[Any]) -> Counter[str]:
    return Counter(verb(r.method, r.target) for r in requests)


def events_posted(requests: list[Any]) -> int:
    return sum(1 for r in requests if r.method == "POST" and r.target.partition("?")[0].endswith("/events"))


def get_items(kube_plane: Any, namespace: str, *what: str) -> list[dict[str, Any]]:
    out = kube_plane.kubectl("get", "-n", namespace, *what, "-o", "json", timeout=120)
    return list(json.loads(out.stdout)["items"])


def ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


# -- one run -----------------------------------------------------------------------------------------------


def run_one(
    kube_plane: Any,
    label: str,
    namespace: str,
    argv: list[str],
    tmp_path: Path,
    clusters: int = CLUSTERS,
    quiet_seconds: float = QUIET_SECONDS,
) -> dict[str, Any]:
    from support.runtime_plane import http_proxy

    CLUSTERS, QUIET_SECONDS, TIMEOUT = clusters, quiet_seconds, convergence_timeout(clusters)

    kube_plane.kubectl("create", "namespace", namespace)
    proxy = http_proxy(kube_plane)
    kubeconfig = proxy_kubeconfig(proxy.url, tmp_path / f"{label}.kubeconfig")
    log_path = tmp_path / f"{label}.log"
    log = log_path.open("wb")
    cmd = [a.replace("{ns}", namespace).replace("{kubeconfig}", str(kubeconfig)) for a in argv]
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(kubeconfig)}
    )

    def tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])

    try:

        def watching() -> bool:
            assert proc.poll() is None, f"{label} operator exited {proc.returncode}:\n{tail()}"
            return any(
                verb(r.method, r.target) == "WATCH" and "daskclusters" in r.target for r in proxy.requests
            )

        wait_for(watching, timeout=120, interval=0.2, message=f"{label} operator watching daskclusters")
        time.sleep(3)  # its other watches and startup lists: part of startup, not of the workload
        mark = len(proxy.requests)
        client = TightClient(kube_plane.kubeconfig)  # straight to the API server: not through the proxy
        started = time.monotonic()
        client.apply((cluster_path(namespace, f"b{i:04d}"), manifest(f"b{i:04d}")) for i in range(CLUSTERS))
        applied = time.monotonic() - started
        times: dict[str, float] = {}  # seconds since apply: "running" (every phase), "pods" (every pod Ready)
        marks: dict[str, int] = {}  # requests seen by then
        seen = [""]

        def converged() -> bool:
            assert proc.poll() is None, f"{label} operator exited {proc.returncode}:\n{tail()}"
            clusters = get_items(kube_plane, namespace, "daskclusters")
            phases = Counter(str((c.get("status") or {}).get("phase")) for c in clusters)
            pods = get_items(kube_plane, namespace, "pods", "-l", "dask.org/cluster-name")
            n_ready = sum(1 for p in pods if ready(p))
            now, n = time.monotonic() - started, len(proxy.requests)
            if phases.get("Running") == CLUSTERS and "running" not in times:
                times["running"], marks["running"] = now, n
            if n_ready == CLUSTERS * (WORKERS + 1) and "pods" not in times:
                times["pods"], marks["pods"] = now, n
            seen[0] = f"phases {dict(phases)}, {n_ready}/{len(pods)} pods Ready"
            # a phase that never reaches Running (the reference can leave it Pending) is reported, not
            # waited on forever: PHASE_GRACE seconds after every pod is Ready, the run goes on without it
            return "pods" in times and ("running" in times or now - times["pods"] >= PHASE_GRACE)

        try:
            wait_for(
                converged, timeout=TIMEOUT, interval=1.0, message=f"{label}: clusters Running, pods Ready"
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{seen[0]}\n--- {label} operator log tail ---\n{tail()}") from None
        converged_at = max(times["pods"], times.get("running", 0.0))
        at_convergence = max(marks["pods"], marks.get("running", 0))
        final_phases = seen[0]

        # settle: the writes still in flight when convergence was observed (bounded: a steady writer
        # never settles, and its writes then show in the quiet window)
        def no_writes_for(seconds: float) -> bool:
            latest = max((r.at for r in proxy.requests[mark:] if r.method in WRITE_METHODS), default=0.0)
            return time.monotonic() - latest >= seconds

        settled = True
        try:
            wait_for(lambda: no_writes_for(5.0), timeout=60, interval=0.5, message="settled")
        except AssertionError:
            settled = False
        quiet_from = len(proxy.requests)
        t0 = time.monotonic()
        while time.monotonic() - t0 < QUIET_SECONDS:  # measuring a quiet period, not synchronising
            time.sleep(1)
        quiet_to = len(proxy.requests)
        rss = rss_mib(proc.pid)
        during = proxy.requests[mark:at_convergence]
        # convergence's requests: up to its last write before the quiet window (pollers' reads included)
        last_write = max(
            (i for i in range(mark, quiet_from) if proxy.requests[i].method in WRITE_METHODS), default=mark
        )
        through_settle = proxy.requests[mark : last_write + 1]
        quiet = proxy.requests[quiet_from:quiet_to]
        deployments = len(get_items(kube_plane, namespace, "deployments"))
        pods = len(get_items(kube_plane, namespace, "pods"))
        by_method = tally(through_settle)
        return {
            "namespace": namespace,
            "seconds_to_submit": round(applied, 1),
            "seconds_to_all_running": round(times["running"], 1) if "running" in times else None,
            "seconds_to_all_pods_ready": round(times["pods"], 1),
            "seconds_to_converged": round(converged_at, 1),
            "state_at_convergence": final_phases,
            "requests_per_cluster_by_method": {
                k: round(v / CLUSTERS, 2) for k, v in sorted(by_method.items())
            },
            "requests_per_cluster": round(sum(by_method.values()) / CLUSTERS, 2),
            "writes_per_cluster": round(sum(by_method[m] for m in WRITE_METHODS) / CLUSTERS, 2),
            "requests_per_cluster_until_converged": round(len(during) / CLUSTERS, 2),
            "settled_within_60s": settled,
            "quiet_requests": dict(sorted(tally(quiet).items())),
            "quiet_requests_total": len(quiet),
            "quiet_writes": sum(1 for r in quiet if r.method in WRITE_METHODS),
            "events_per_cluster": round(events_posted(through_settle) / CLUSTERS, 2),
            "quiet_events": events_posted(quiet),
            "rss_mib": round(rss, 1),
            "peak_rss_mib": round(peak_rss_mib(proc.pid), 1),
            "cpu_seconds": round(cpu_seconds(proc.pid), 1),
            "deployments": deployments,
            "pods": pods,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        proxy.close()


# -- the comparison ----------------------------------------------------------------------------------------


def table(ours: dict[str, Any], ref: dict[str, Any]) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b else ("-" if not a else "inf")

    rows: list[tuple[str, float | None, float | None]] = [
        ("seconds to all Running", ours["seconds_to_all_running"], ref["seconds_to_all_running"]),
        ("seconds to all pods Ready", ours["seconds_to_all_pods_ready"], ref["seconds_to_all_pods_ready"]),
        ("requests / cluster (to last write)", ours["requests_per_cluster"], ref["requests_per_cluster"]),
    ]
    methods = sorted(set(ours["requests_per_cluster_by_method"]) | set(ref["requests_per_cluster_by_method"]))
    rows += [
        (f"  {m} / cluster", ours["requests_per_cluster_by_method"].get(m, 0.0),
         ref["requests_per_cluster_by_method"].get(m, 0.0))
        for m in methods
    ]  # fmt: skip
    rows += [
        ("writes / cluster", ours["writes_per_cluster"], ref["writes_per_cluster"]),
        ("Events created / cluster", ours["events_per_cluster"], ref["events_per_cluster"]),
        (
            f"requests in {int(QUIET_SECONDS)}s converged",
            ours["quiet_requests_total"],
            ref["quiet_requests_total"],
        ),
        (f"writes in {int(QUIET_SECONDS)}s converged", ours["quiet_writes"], ref["quiet_writes"]),
        (f"Events in {int(QUIET_SECONDS)}s converged", ours["quiet_events"], ref["quiet_events"]),
        ("operator RSS MiB", ours["rss_mib"], ref["rss_mib"]),
    ]
    lines = [f"{'':34} {'ours':>10} {'reference':>10} {'ours/ref':>9}"]
    for name, a, b in rows:
        shown = ratio(float(a), float(b)) if a is not None and b is not None else "-"
        lines.append(
            f"{name:34} {'never' if a is None else a:>10} {'never' if b is None else b:>10} {shown:>9}"
        )
    return "\n".join(lines)


def test_ours_vs_kopf_reference(kube_plane: Any, tmp_path: Path) -> None:
    from support.operator import CRD_PLURALS, crd_established

    venv = reference_venv()
    kube_plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "crd"))
    for crd in CRD_PLURALS:
        wait_for(lambda crd=crd: crd_established(kube_plane, crd), timeout=60, message=f"CRD {crd}")

    ours_cmd = [
        sys.executable, "-m", "dask_operator.controller", "run", "--kubeconfig={kubeconfig}", "--namespace={ns}",
        "--metrics-bind-address=0", "--health-probe-bind-address=0", "--concurrency=8", "--log-level=warning",
    ]  # fmt: skip

    # one after the other, never both at once: they reconcile the same kinds; each in its own namespace
    namespaces = {label: f"bench-{label}-{uuid.uuid4().hex[:6]}" for label in ("reference", "ours")}
    try:
        status_subresource(kube_plane, False)
        ref = run_one(kube_plane, "reference", namespaces["reference"], reference_cmd(venv), tmp_path)
        status_subresource(kube_plane, True)
        ours = run_one(kube_plane, "ours", namespaces["ours"], ours_cmd, tmp_path)
    finally:
        status_subresource(kube_plane, True)
        for ns in namespaces.values():
            kube_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    report = {"clusters": CLUSTERS, "workers_per_cluster": WORKERS, "reference": reference_versions(venv),
              "ours": ours, "ref": ref}  # fmt: skip
    print("\nBENCH " + json.dumps(report, indent=2))
    print(f"\n{CLUSTERS} DaskClusters x {WORKERS} workers, simulated pods; reference: {report['reference']}")
    print(table(ours, ref))
