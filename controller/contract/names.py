"""The operator's own names that several planners and reconcilers share: annotations and environment
variables it sets or reads, the Kueue API it speaks, and where a cluster's scheduler is reached. The names a
user of kubernetes.dask.org/v1 meets are in `dask_operator.api.v1.names`.

Invariant: constants and pure functions of a DaskCluster's spec only, so every planner may import this and
none needs another planner for a name. Held by test/unit/test_cluster.py and test/unit/test_layers.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dask_operator.api.v1.group import GROUP
from dask_operator.api.v1.names import (
    DEFAULT_CLUSTER_DOMAIN,
    PORT_NAME_COMM,
    PORT_NAME_DASHBOARD,
    SCHEDULER_COMM_PORT,
    SCHEDULER_DASHBOARD_PORT,
    scheduler_service_name,
)

# On the default DaskWorkerGroup: the DaskCluster's spec.worker.replicas last copied onto it. The cluster's
# value is copied again only when it differs from this, so `kubectl scale` of the cluster resizes the
# default group while a direct scale of the group (or the autoscaler's) is not undone (as upstream).
PROPAGATED_REPLICAS_ANNOTATION = f"{GROUP}/propagated-replicas"

# On a DaskCluster a DaskJob created: that job's UID. A job adopts (takes back as controller) only a cluster
# carrying its own UID here, never a standalone DaskCluster that happens to have the job's name.
CREATED_BY_JOB_ANNOTATION = f"{GROUP}/created-by-job"

WORKER_NAME_ENV = "DASK_WORKER_NAME"
SCHEDULER_ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"

# On a DaskCluster: seconds a scale-down waits for an unreachable scheduler before deleting workers without
# retiring them (their in-memory data is lost; a Warning Event says so).
FORCE_SCALE_DOWN_ANNOTATION = f"{GROUP}/scale-down-force-timeout"
DEFAULT_FORCE_SCALE_DOWN_SECONDS = 300.0

# Kueue's API, whose Workloads the operator writes and whose flavors and priority classes it reads.
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = "v1beta2"


def cluster_port(cluster: Mapping[str, Any], port_name: str, default: int) -> int:
    """The port named `port_name` in the cluster's scheduler Service spec (the user's), else `default`."""
    for port in cluster.get("spec", {}).get("scheduler", {}).get("service", {}).get("ports") or []:
        if port.get("name") == port_name and "port" in port:
            return int(port["port"])
    return default


def _service_url(cluster: Mapping[str, Any], scheme: str, port: int, cluster_domain: str) -> str:
    meta = cluster["metadata"]
    return (
        f"{scheme}://{scheduler_service_name(meta['name'])}.{meta['namespace']}.svc.{cluster_domain}:{port}"
    )


def cluster_scheduler_address(
    cluster: Mapping[str, Any], cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
) -> str:
    return _service_url(
        cluster, "tcp", cluster_port(cluster, PORT_NAME_COMM, SCHEDULER_COMM_PORT), cluster_domain
    )


def cluster_dashboard_address(
    cluster: Mapping[str, Any], cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
) -> str:
    port = cluster_port(cluster, PORT_NAME_DASHBOARD, SCHEDULER_DASHBOARD_PORT)
    return _service_url(cluster, "http", port, cluster_domain)
