"""Defaults the API server applies to the four kinds, and the same defaulting as a pure function.

Invariant: `with_defaults(obj)` returns exactly what the API server stores for `obj` (nulls pruned, CRD
defaults applied); the generator writes these constants into the CRD schemas, and an integration test
compares this function with the server's answer for every sample manifest.
"""

from __future__ import annotations

import copy
from typing import Any

from dask_operator.api.v1.names import DASK_AUTOSCALER, DASK_CLUSTER, DASK_JOB, DASK_WORKER_GROUP

DEFAULT_REPLICAS = 1
DEFAULT_IDLE_TIMEOUT = 0
DEFAULT_PORT_PROTOCOL = "TCP"
DEFAULT_JOB_RESTART_POLICY = "OnFailure"
# imagePullSecrets is a list-map keyed by `name`, and a CRD list-map key must be required or defaulted;
# Kubernetes declares the same default.
DEFAULT_IMAGE_PULL_SECRET_NAME = ""

DEFAULT_IMAGE = "ghcr.io/dask/dask:latest"
DEFAULT_WORKER_COMMAND = "dask-worker"
# The reference hard-codes this; distributed 2026.6 removed the `dask-scheduler` script (`dask scheduler` remains).
DEFAULT_SCHEDULER_COMMAND = "dask-scheduler"
DEFAULT_SERVICE_TYPE = "ClusterIP"

# Pod spec lists whose items are containers carrying `ports`.
_CONTAINER_LISTS = ("containers", "initContainers")


def prune_nulls(value: Any) -> Any:
    """Drop null-valued object fields recursively, as the API server does for non-nullable fields."""
    if isinstance(value, dict):
        return {key: prune_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [prune_nulls(item) for item in value]
    return value


def default_pod_spec(pod_spec: dict[str, Any]) -> None:
    """Apply the embedded PodSpec defaults in place: container port protocol, pull-secret name."""
    for list_name in _CONTAINER_LISTS:
        for container in pod_spec.get(list_name) or []:
            if isinstance(container, dict):
                for port in container.get("ports") or []:
                    if isinstance(port, dict):
                        port.setdefault("protocol", DEFAULT_PORT_PROTOCOL)
    for secret in pod_spec.get("imagePullSecrets") or []:
        if isinstance(secret, dict):
            secret.setdefault("name", DEFAULT_IMAGE_PULL_SECRET_NAME)


def default_service_spec(service_spec: dict[str, Any]) -> None:
    for port in service_spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", DEFAULT_PORT_PROTOCOL)


def default_worker(worker: dict[str, Any]) -> None:
    worker.setdefault("replicas", DEFAULT_REPLICAS)
    if isinstance(worker.get("spec"), dict):
        default_pod_spec(worker["spec"])


def default_cluster_spec(spec: dict[str, Any]) -> None:
    """Apply DaskCluster spec defaults in place (also used for a DaskJob's `spec.cluster.spec`)."""
    spec.setdefault("idleTimeout", DEFAULT_IDLE_TIMEOUT)
    scheduler = spec.get("scheduler")
    if isinstance(scheduler, dict):
        if isinstance(scheduler.get("spec"), dict):
            default_pod_spec(scheduler["spec"])
        if isinstance(scheduler.get("service"), dict):
            default_service_spec(scheduler["service"])
    if isinstance(spec.get("worker"), dict):
        default_worker(spec["worker"])


def default_job_spec(spec: dict[str, Any]) -> None:
    job = spec.get("job")
    if isinstance(job, dict) and isinstance(job.get("spec"), dict):
        job["spec"].setdefault("restartPolicy", DEFAULT_JOB_RESTART_POLICY)
        default_pod_spec(job["spec"])
    cluster = spec.get("cluster")
    if isinstance(cluster, dict) and isinstance(cluster.get("spec"), dict):
        default_cluster_spec(cluster["spec"])


def with_defaults(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of a kubernetes.dask.org/v1 object as the API server would store its spec."""
    result: dict[str, Any] = prune_nulls(copy.deepcopy(obj))
    spec = result.get("spec")
    if not isinstance(spec, dict):
        return result
    kind = result.get("kind")
    if kind == DASK_CLUSTER.kind:
        default_cluster_spec(spec)
    elif kind == DASK_WORKER_GROUP.kind:
        if isinstance(spec.get("worker"), dict):
            default_worker(spec["worker"])
    elif kind == DASK_JOB.kind:
        default_job_spec(spec)
    elif kind == DASK_AUTOSCALER.kind:
        pass  # no defaults: cluster, minimum and maximum are all required
    return result
