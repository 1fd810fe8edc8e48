"""dask-operator: a level-triggered Kubernetes operator for Dask.

The public Python API lives here; `dask_operator.api` holds the kubernetes.dask.org/v1 contract
and `dask_operator.controller` the operator itself. The client names below are imported on first
use, so `import dask_operator` stays cheap (no distributed, no Kubernetes client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from dask_operator.api.kubecluster import (
        ClusterSuspendedError,
        CreateMode,
        KubeCluster,
        SchedulerStartupError,
        SchedulerUnreachableError,
        ValidationError,
        discover,
        make_cluster_spec,
        make_scheduler_spec,
        make_worker_spec,
    )

# name -> module that defines it
_LAZY = {
    "ClusterSuspendedError": "dask_operator.api.kubecluster",
    "KubeCluster": "dask_operator.api.kubecluster",
    "CreateMode": "dask_operator.api.kubecluster",
    "SchedulerStartupError": "dask_operator.api.kubecluster",
    "SchedulerUnreachableError": "dask_operator.api.kubecluster",
    "discover": "dask_operator.api.kubecluster",
    "ValidationError": "dask_operator.api.v1",
    "make_cluster_spec": "dask_operator.api.v1",
    "make_scheduler_spec": "dask_operator.api.v1",
    "make_worker_spec": "dask_operator.api.v1",
}

__all__ = [
    "ClusterSuspendedError",
    "CreateMode",
    "KubeCluster",
    "SchedulerStartupError",
    "SchedulerUnreachableError",
    "ValidationError",
    "__version__",
    "discover",
    "make_cluster_spec",
    "make_scheduler_spec",
    "make_worker_spec",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dask_operator' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
