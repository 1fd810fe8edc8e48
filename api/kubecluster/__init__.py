"""The Python client: `KubeCluster` creates and drives DaskClusters as `dask_kubernetes.operator` does.

`options` holds the pure part (argument resolution, validation, the manifests written, status reading);
`cluster` the `distributed.deploy.Cluster` subclass that talks to the API server and the scheduler.
"""

from __future__ import annotations

from dask_operator.api.kubecluster.cluster import KubeCluster, discover
from dask_operator.api.kubecluster.options import (
    ClusterSuspendedError,
    CreateMode,
    SchedulerStartupError,
    SchedulerUnreachableError,
)
from dask_operator.api.v1 import ValidationError, make_cluster_spec, make_scheduler_spec, make_worker_spec

__all__ = [
    "ClusterSuspendedError",
    "CreateMode",
    "KubeCluster",
    "SchedulerStartupError",
    "SchedulerUnreachableError",
    "ValidationError",
    "discover",
    "make_cluster_spec",
    "make_scheduler_spec",
    "make_worker_spec",
]
