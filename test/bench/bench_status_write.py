"""Benchmark: what one status write costs the API server, by request kind, on the same objects.

On FLEET_N DaskClusters (bench_fleet.py's namespace, its operator stopped), each kind of request below
writes every cluster's status with a new observedGeneration (in the status and its conditions, as the
operator's planner does), from SENDERS threads, and reports requests/s, client-side p50/p99 and the API
server's CPU seconds per 1,000 writes (from /proc, the plane runs on this machine):

- `apply`: server-side apply of the whole status with the operator's status field manager (what it sends);
- `merge`: a merge patch of the whole status, same field manager;
- `merge-changed`: a merge patch of only what changed (observedGeneration, and the conditions list);
- `merge-generation`: a merge patch of observedGeneration alone (what the limit's client sends).

    K8S_TEST_BACKEND=external KUBECONFIG=... FLEET_NAMESPACE=fleet-100 FLEET_N=100 \
        python -m pytest test/bench/bench_status_write.py -m bench -s
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from bench.bench_latency import SENDERS, percentile
from support.bench_workload import APPLY, GROUP, MERGE, TightClient, cluster_path

N = int(os.environ.get("FLEET_N", "100"))
NAMESPACE = os.environ.get("FLEET_NAMESPACE", f"fleet-{N}")
ROUNDS = int(os.environ.get("STATUS_WRITE_ROUNDS", "3"))
FIELD_MANAGER = "dask-operator-status"
pytestmark = pytest.mark.timeout(1800)


def _apiserver_cpu() -> float:
    pid = subprocess.run(["pgrep", "-f", "kube-apiserver"], capture_output=True, text=True).stdout.split()
    total = 0.0
    for p in pid:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _bumped(status: dict[str, Any], generation: int) -> dict[str, Any]:
    conditions = [{**c, "observedGeneration": generation} for c in status.get("conditions") or []]
    return {**status, "observedGeneration": generation, "conditions": conditions}


def _run(client: TightClient, clusters: list[dict[str, Any]], how: str, generation: int) -> dict[str, Any]:
    times: list[float] = []
    lock = threading.Lock()

    def one(cluster: dict[str, Any]) -> None:
        name = cluster["metadata"]["name"]
        status = _bumped(cluster.get("status") or {}, generation)
        path = f"{cluster_path(NAMESPACE, name)}/status"
        started = time.monotonic()
        if how == "apply":
            body = {"apiVersion": cluster["apiVersion"], "kind": cluster["kind"],
                    "metadata": {"name": name, "namespace": NAMESPACE}, "status": status}  # fmt: skip
            query = {"fieldManager": FIELD_MANAGER, "force": "true"}
            client.client.request("PATCH", path, body, query=query, content_type=APPLY, timeout=120)
        else:
            if how == "merge":
                patch = status
            elif how == "merge-changed":
                patch = {"observedGeneration": generation, "conditions": status["conditions"]}
            else:
                patch = {"observedGeneration": generation}
            client.client.request("PATCH", path, {"status": patch}, query={"fieldManager": FIELD_MANAGER},
                                  content_type=MERGE, timeout=120)  # fmt: skip
        with lock:
            times.append(time.monotonic() - started)

    cpu = _apiserver_cpu()
    started = time.monotonic()
    with ThreadPoolExecutor(SENDERS) as pool:
        list(pool.map(one, clusters))
    took = time.monotonic() - started
    cpu = _apiserver_cpu() - cpu
    return {
        "writes_per_second": round(len(times) / took, 1),
        "p50": round(percentile(times, 0.5) or 0, 3),
        "p99": round(percentile(times, 0.99) or 0, 3),
        "apiserver_cpu_seconds_per_1000": round(cpu * 1000 / len(times), 2),
    }


def test_status_write_cost() -> None:
    client = TightClient(os.environ["KUBECONFIG"], SENDERS)  # type: ignore[arg-type]
    report: dict[str, Any] = {"clusters": N, "load_average": Path("/proc/loadavg").read_text().split()[:3]}
    generation = 1_000_000
    for _ in range(ROUNDS):
        for how in ("apply", "merge", "merge-changed", "merge-generation"):
            clusters = client.list(f"{GROUP}/namespaces/{NAMESPACE}/daskclusters")[:N]
            generation += 1
            report.setdefault(how, []).append(_run(client, clusters, how, generation))
    report["load_average_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print("\nSTATUS_WRITE " + json.dumps(report, indent=1))
