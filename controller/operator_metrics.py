"""`dask_operator_*` metrics: what a scaling decision or an alert needs about each Dask cluster.

Invariant: registered once in the runtime's registry; per-cluster series are removed when the cluster or
group is gone, so the registry's size follows the number of live objects.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge

from dask_operator.controller.runtime.metrics import REGISTRY

WORKERS_DESIRED = Gauge(
    "dask_operator_workers_desired",
    "spec.worker.replicas of a DaskWorkerGroup",
    ["namespace", "cluster", "workergroup"],
    registry=REGISTRY,
)
WORKERS_READY = Gauge(
    "dask_operator_workers_ready",
    "Ready worker pods of a DaskWorkerGroup",
    ["namespace", "cluster", "workergroup"],
    registry=REGISTRY,
)
WORKERS_UPDATED = Gauge(
    "dask_operator_workers_updated",
    "Worker pods of a DaskWorkerGroup built from its current template",
    ["namespace", "cluster", "workergroup"],
    registry=REGISTRY,
)
RETIREMENTS = Counter(
    "dask_operator_worker_retirements_total",
    "Workers removed on scale-down, by how: retired (graceful), never_joined, forced, failed (not retired)",
    ["namespace", "how"],
    registry=REGISTRY,
)
SCHEDULER_REACHABLE = Gauge(
    "dask_operator_scheduler_reachable",
    "1 when the last call to the cluster's scheduler succeeded, 0 when it failed",
    ["namespace", "cluster"],
    registry=REGISTRY,
)
CLUSTER_RUNNING = Gauge(
    "dask_operator_cluster_running",
    "1 when the DaskCluster's phase is Running",
    ["namespace", "cluster"],
    registry=REGISTRY,
)


def forget_group(namespace: str, cluster: str, group: str) -> None:
    for gauge in (WORKERS_DESIRED, WORKERS_READY, WORKERS_UPDATED):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, cluster, group)


def forget_cluster(namespace: str, cluster: str) -> None:
    for gauge in (SCHEDULER_REACHABLE, CLUSTER_RUNNING):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, cluster)
