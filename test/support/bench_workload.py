"""The benchmarks' shared workload: a DaskCluster whose pods the process node simulates, the objects a
converged cluster consists of, a tight client that writes them, and RSS/CPU reads.

Invariant: every benchmark that compares operators (or an operator with the API server's own limit)
builds its objects here, so they measure the same thing; the tight client issues exactly one request per
object write (server-side apply or a status merge patch), from a thread pool, so creating N clusters is
bounded by the API server, not by the client. Held by test/bench/bench_clusters.py.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

WORKERS = 2
SIMULATED = {"localkube/simulated": "true"}
GROUP = "/apis/kubernetes.dask.org/v1"
APPLY = "application/apply-patch+yaml"  # a JSON body is YAML
MERGE = "application/merge-patch+json"
CLIENT_THREADS = 16

JSON = dict[str, Any]


def _container(role: str) -> JSON:
    return {"name": "c", "image": "ghcr.io/dask/dask:latest", "args": ["dask", role]}


def manifest(name: str) -> JSON:
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name},
        "spec": {
            "scheduler": {
                "metadata": {"annotations": SIMULATED},
                "spec": {"containers": [_container("scheduler")]},
                "service": {
                    "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [{"name": "tcp-comm", "port": 8786}, {"name": "http-dashboard", "port": 8787}],
                },
            },
            "worker": {
                "replicas": WORKERS,
                "metadata": {"annotations": SIMULATED},
                "spec": {"containers": [_container("worker")]},
            },
        },
    }


def cluster_path(namespace: str, name: str) -> str:
    return f"{GROUP}/namespaces/{namespace}/daskclusters/{name}"


def converged_objects(namespace: str, name: str) -> list[tuple[str, JSON]]:
    """(path, object) of everything a converged cluster holds besides statuses: the DaskCluster, its
    scheduler Pod and Service, its default DaskWorkerGroup and WORKERS worker Pods."""
    cluster = manifest(name)
    labels = {"dask.org/cluster-name": name}
    sched_labels = {**labels, "dask.org/component": "scheduler"}
    group = f"{name}-default"
    pod = {"apiVersion": "v1", "kind": "Pod"}
    objs: list[tuple[str, JSON]] = [
        (cluster_path(namespace, name), cluster),
        (
            f"/api/v1/namespaces/{namespace}/pods/{name}-scheduler",
            {
                **pod,
                "metadata": {"name": f"{name}-scheduler", "labels": sched_labels, "annotations": SIMULATED},
                "spec": {"containers": [_container("scheduler")]},
            },
        ),
        (
            f"/api/v1/namespaces/{namespace}/services/{name}-scheduler",
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"{name}-scheduler", "labels": labels},
                "spec": cluster["spec"]["scheduler"]["service"],
            },
        ),
        (
            f"{GROUP}/namespaces/{namespace}/daskworkergroups/{group}",
            {
                "apiVersion": "kubernetes.dask.org/v1",
                "kind": "DaskWorkerGroup",
                "metadata": {"name": group, "labels": labels},
                "spec": {"cluster": name, "worker": cluster["spec"]["worker"]},
            },
        ),
    ]
    worker_labels = {**labels, "dask.org/component": "worker", "dask.org/workergroup-name": group}
    for w in range(WORKERS):
        objs.append(
            (
                f"/api/v1/namespaces/{namespace}/pods/{group}-worker-{w}",
                {
                    **pod,
                    "metadata": {
                        "name": f"{group}-worker-{w}",
                        "labels": worker_labels,
                        "annotations": SIMULATED,
                    },
                    "spec": {"containers": [_container("worker")]},
                },
            )
        )
    return objs


def converged_statuses(namespace: str, name: str) -> list[tuple[str, JSON]]:
    """(status path, merge patch) of the cluster's and its group's settled status: the last two writes."""
    group = f"{name}-default"
    return [
        (
            f"{GROUP}/namespaces/{namespace}/daskworkergroups/{group}/status",
            {"status": {"replicas": WORKERS, "readyReplicas": WORKERS}},
        ),
        (
            f"{cluster_path(namespace, name)}/status",
            {"status": {"phase": "Running", "replicas": WORKERS, "readyReplicas": WORKERS}},
        ),
    ]


class TightClient:
    """Keep-alive HTTPS connections from a thread pool; counts its requests by verb."""

    def __init__(self, kubeconfig: Path, threads: int = CLIENT_THREADS) -> None:
        from kubeplane.node.kubeapi import KubeClient, load_connection

        self.client = KubeClient(load_connection(str(kubeconfig)), maxsize=threads)
        self.threads = threads
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, verb: str) -> None:
        with self._lock:
            self.requests[verb] += 1

    def apply(self, items: Iterable[tuple[str, JSON]]) -> None:
        """Server-side apply of every (path, object), concurrently."""

        def one(item: tuple[str, JSON]) -> None:
            self._count("PATCH")
            query = {"fieldManager": "bench", "force": "true"}
            self.client.request("PATCH", item[0], item[1], query=query, content_type=APPLY, timeout=120)

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(one, items))

    def patch_status(self, items: Iterable[tuple[str, JSON]]) -> None:
        def one(item: tuple[str, JSON]) -> None:
            self._count("PATCH")
            self.client.request("PATCH", item[0], item[1], content_type=MERGE, timeout=120)

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(one, items))

    def list(self, path: str, **query: Any) -> list[JSON]:
        self._count("LIST")
        items: list[JSON] = self.client.request("GET", path, query=query, timeout=120).get("items") or []
        return items


def pod_ready(pod: JSON) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
