"""The benchmarks' shared workload: a DaskCluster whose pods the process node simulates, and RSS reads.

Invariant: every benchmark that compares operators builds its clusters here, so they measure the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WORKERS = 2
SIMULATED = {"localkube/simulated": "true"}


def manifest(name: str) -> dict[str, Any]:
    container = {"name": "c", "image": "ghcr.io/dask/dask:latest", "args": ["dask", "scheduler"]}
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name},
        "spec": {
            "scheduler": {
                "metadata": {"annotations": SIMULATED},
                "spec": {"containers": [container]},
                "service": {
                    "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [{"name": "tcp-comm", "port": 8786}, {"name": "http-dashboard", "port": 8787}],
                },
            },
            "worker": {
                "replicas": WORKERS,
                "metadata": {"annotations": SIMULATED},
                "spec": {"containers": [{**container, "args": ["dask", "worker"]}]},
            },
        },
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
