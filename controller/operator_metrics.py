"""`dask_operator_*` metrics: what a scaling decision or an alert needs about each Dask cluster.

Invariant: registered once in the runtime's registry; per-cluster series are removed when the cluster or
group is gone, so the registry's size follows the number of live objects.
Held by test/integration/test_manifests.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge

from dask_operator.runtime.metrics import REGISTRY

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
JOBS_FINISHED = Counter(
    "dask_operator_jobs_finished_total",
    "DaskJobs that reached a terminal jobStatus, by result: Successful or Failed",
    ["namespace", "result"],
    registry=REGISTRY,
)
AUTOSCALER_TARGET = Gauge(
    "dask_operator_autoscaler_scheduler_target",
    "Workers the scheduler last asked for (adaptive_target), before the autoscaler's bounds",
    ["namespace", "autoscaler"],
    registry=REGISTRY,
)
AUTOSCALER_DESIRED = Gauge(
    "dask_operator_autoscaler_desired_workers",
    "Workers the DaskAutoscaler last requested of its cluster's default worker group",
    ["namespace", "autoscaler"],
    registry=REGISTRY,
)
AUTOSCALER_SCALINGS = Counter(
    "dask_operator_autoscaler_scalings_total",
    "Changes the DaskAutoscalers made to default worker groups, by direction: up or down",
    ["namespace", "direction"],
    registry=REGISTRY,
)
WORKERS_LOST = Counter(
    "dask_operator_workers_lost_total",
    "Worker containers killed while holding data (SIGKILL, OOMKilled, evicted): their in-memory data was lost",
    ["namespace", "cluster"],
    registry=REGISTRY,
)
SCHEDULER_STATE_LOST = Counter(
    "dask_operator_scheduler_state_lost_total",
    "Scheduler restarts: each one lost the cluster's state (tasks, futures, persisted and scattered data)",
    ["namespace", "cluster"],
    registry=REGISTRY,
)

# Event reasons (controller/contract/losses.py) -> the counter each one's occurrence increments.
_LOSS_COUNTERS = {"WorkerLost": WORKERS_LOST, "SchedulerStateLost": SCHEDULER_STATE_LOST}


def count_losses(namespace: str, cluster: str, events: Iterable[Any]) -> None:
    """Count the losses a plan reported: each loss has exactly one Event (controller/contract/losses.py)."""
    for event in events:
        counter = _LOSS_COUNTERS.get(event.reason)
        if counter is not None:
            counter.labels(namespace, cluster).inc()


def forget_autoscaler(namespace: str, autoscaler: str) -> None:
    for gauge in (AUTOSCALER_TARGET, AUTOSCALER_DESIRED):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, autoscaler)


# (namespace, group) -> its cluster, so a deleted group's series can be removed by the group's name alone.
_cluster_of_group: dict[tuple[str, str], str] = {}


def set_group(group: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    """The worker gauges of one DaskWorkerGroup from the status just planned for it."""
    meta = group["metadata"]
    cluster = group["spec"]["cluster"]
    _cluster_of_group[(meta["namespace"], meta["name"])] = cluster
    labels = (meta["namespace"], cluster, meta["name"])
    WORKERS_DESIRED.labels(*labels).set(int(group["spec"]["worker"].get("replicas", 1)))
    WORKERS_READY.labels(*labels).set(status.get("readyReplicas", 0))
    WORKERS_UPDATED.labels(*labels).set(status.get("updatedReplicas", 0))


def forget_group_named(namespace: str, group: str) -> None:
    cluster = _cluster_of_group.pop((namespace, group), None)
    if cluster is None:
        return
    for gauge in (WORKERS_DESIRED, WORKERS_READY, WORKERS_UPDATED):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, cluster, group)


def forget_cluster(namespace: str, cluster: str) -> None:
    for gauge in (SCHEDULER_REACHABLE, CLUSTER_RUNNING, WORKERS_LOST, SCHEDULER_STATE_LOST):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, cluster)
