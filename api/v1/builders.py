"""Spec builders with the reference client's signatures and output (`dask_kubernetes.operator` 3.4).

Invariant: the dicts returned here are the ones the reference `make_cluster_spec`, `make_worker_spec` and
`make_scheduler_spec` return for the same arguments, including their `None` values (`replicas`, `env`,
`resources`), which the API server prunes before applying the CRD defaults. They are pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dask_operator.api.v1.defaults import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_IMAGE,
    DEFAULT_PORT_PROTOCOL,
    DEFAULT_SCHEDULER_COMMAND,
    DEFAULT_SERVICE_TYPE,
    DEFAULT_WORKER_COMMAND,
)
from dask_operator.api.v1.group import API_VERSION
from dask_operator.api.v1.names import (
    COMPONENT_SCHEDULER,
    DASK_CLUSTER,
    LABEL_CLUSTER_NAME,
    LABEL_COMPONENT,
    PORT_NAME_COMM,
    PORT_NAME_DASHBOARD,
    SCHEDULER_COMM_PORT,
    SCHEDULER_DASHBOARD_PORT,
    WORKER_DASHBOARD_PORT,
)

EnvArg = Mapping[str, str] | Sequence[Mapping[str, Any]] | None


def _env_list(env: EnvArg) -> list[dict[str, Any]] | None:
    """A `{name: value}` mapping becomes an EnvVar list; a list is taken as EnvVars already."""
    if env is None:
        return None
    if isinstance(env, Mapping):
        return [{"name": key, "value": value} for key, value in env.items()]
    return [dict(item) for item in env]


def _command(command: str | Sequence[str]) -> list[str]:
    """A command given as one string is split on spaces, as the reference does."""
    return command.split(" ") if isinstance(command, str) else list(command)


def _port(name: str, number: int) -> dict[str, Any]:
    return {"name": name, "containerPort": number, "protocol": DEFAULT_PORT_PROTOCOL}


def _health_probe(**timing: int) -> dict[str, Any]:
    return {"httpGet": {"port": PORT_NAME_DASHBOARD, "path": "/health"}, **timing}


def make_worker_spec(
    image: str = DEFAULT_IMAGE,
    n_workers: int | None = 3,
    resources: Mapping[str, Any] | None = None,
    env: EnvArg = None,
    worker_command: str | Sequence[str] = DEFAULT_WORKER_COMMAND,
) -> dict[str, Any]:
    """`spec.worker` of a DaskCluster (or DaskWorkerGroup): `{replicas, spec}`.

    The worker is started with `--name $(DASK_WORKER_NAME)` so that the Dask worker name equals the
    name the operator gave it, which is how scale-down finds the pod of a retired worker.
    """
    args = [
        *_command(worker_command),
        "--name",
        "$(DASK_WORKER_NAME)",
        "--dashboard",
        "--dashboard-address",
        str(WORKER_DASHBOARD_PORT),
    ]
    return {
        "replicas": n_workers,
        "spec": {
            "containers": [
                {
                    "name": "worker",
                    "image": image,
                    "args": args,
                    "env": _env_list(env),
                    "resources": dict(resources) if resources is not None else None,
                    "ports": [_port(PORT_NAME_DASHBOARD, WORKER_DASHBOARD_PORT)],
                }
            ]
        },
    }


def make_scheduler_spec(
    cluster_name: str,
    env: EnvArg = None,
    resources: Mapping[str, Any] | None = None,
    image: str = DEFAULT_IMAGE,
    scheduler_service_type: str = DEFAULT_SERVICE_TYPE,
    jupyter: bool = False,
    scheduler_command: str | Sequence[str] = DEFAULT_SCHEDULER_COMMAND,
) -> dict[str, Any]:
    """`spec.scheduler` of a DaskCluster: `{spec, service}` with the comm and dashboard ports.

    `scheduler_command` is our addition (last, so positional calls are unaffected): the reference always runs
    `dask-scheduler`, which distributed >= 2026.6 no longer installs; pass "dask scheduler" for those images.
    """
    args = [*_command(scheduler_command), "--host", "0.0.0.0"]
    if jupyter:
        args.append("--jupyter")
    return {
        "spec": {
            "containers": [
                {
                    "name": "scheduler",
                    "image": image,
                    "args": args,
                    "env": _env_list(env),
                    "resources": dict(resources) if resources is not None else None,
                    "ports": [
                        _port(PORT_NAME_COMM, SCHEDULER_COMM_PORT),
                        _port(PORT_NAME_DASHBOARD, SCHEDULER_DASHBOARD_PORT),
                    ],
                    # Ready as soon as the scheduler answers; the long timeout tolerates a busy event loop.
                    "readinessProbe": _health_probe(
                        initialDelaySeconds=0, periodSeconds=1, timeoutSeconds=300
                    ),
                    "livenessProbe": _health_probe(initialDelaySeconds=15, periodSeconds=20),
                }
            ]
        },
        "service": {
            "type": scheduler_service_type,
            "selector": {LABEL_CLUSTER_NAME: cluster_name, LABEL_COMPONENT: COMPONENT_SCHEDULER},
            "ports": [
                {
                    "name": PORT_NAME_COMM,
                    "protocol": DEFAULT_PORT_PROTOCOL,
                    "port": SCHEDULER_COMM_PORT,
                    "targetPort": PORT_NAME_COMM,
                },
                {
                    "name": PORT_NAME_DASHBOARD,
                    "protocol": DEFAULT_PORT_PROTOCOL,
                    "port": SCHEDULER_DASHBOARD_PORT,
                    "targetPort": PORT_NAME_DASHBOARD,
                },
            ],
        },
    }


def make_cluster_spec(
    name: str,
    image: str = DEFAULT_IMAGE,
    n_workers: int | None = None,
    resources: Mapping[str, Any] | None = None,
    env: EnvArg = None,
    worker_command: str | Sequence[str] = DEFAULT_WORKER_COMMAND,
    scheduler_service_type: str = DEFAULT_SERVICE_TYPE,
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT,
    jupyter: bool = False,
    scheduler_command: str | Sequence[str] = DEFAULT_SCHEDULER_COMMAND,
) -> dict[str, Any]:
    """A whole DaskCluster manifest named `name` (no namespace: the caller's context decides).

    `n_workers=None` leaves `replicas: None`, which the API server prunes so the CRD default (1) applies.
    """
    return {
        "apiVersion": API_VERSION,
        "kind": DASK_CLUSTER.kind,
        "metadata": {"name": name},
        "spec": {
            "idleTimeout": idle_timeout,
            "worker": make_worker_spec(
                env=env,
                resources=resources,
                worker_command=worker_command,
                n_workers=n_workers,
                image=image,
            ),
            "scheduler": make_scheduler_spec(
                cluster_name=name,
                env=env,
                resources=resources,
                image=image,
                scheduler_service_type=scheduler_service_type,
                jupyter=jupyter,
                scheduler_command=scheduler_command,
            ),
        },
    }
