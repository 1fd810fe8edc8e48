"""What `KubeCluster` decides without talking to anything: options, validation, manifests, status reading.

Invariant: every function here is pure (dicts and values in, dicts and values out; the dask config is the
only thing read), so a bad name, bad `resources` or an impossible option fails before any API call, and
the objects the client writes are the ones the unit tests see.
"""

from __future__ import annotations

import copy
import enum
import getpass
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.config
import yaml

from dask_operator.api.v1 import (
    API_VERSION,
    COMPONENT_AUTOSCALER,
    COMPONENT_SCHEDULER,
    COMPONENT_WORKER,
    DASK_AUTOSCALER,
    DASK_CLUSTER,
    DASK_WORKER_GROUP,
    DEFAULT_IMAGE,
    DEFAULT_SERVICE_TYPE,
    LABEL_CLUSTER_NAME,
    LABEL_COMPONENT,
    MAX_RESOURCE_NAME_LENGTH,
    PHASE_RUNNING,
    ValidationError,
    make_cluster_spec,
    make_worker_spec,
    validate_cluster_name,
    worker_group_name,
)
from dask_operator.runtime.objects import Obj

# Commands that exist in every distributed since 2022.10. The reference's `dask-worker`/`dask-scheduler`
# scripts were removed in distributed 2026.6 (dask/distributed#9335), so its defaults no longer start.
DEFAULT_CLIENT_WORKER_COMMAND = "dask worker"
DEFAULT_CLIENT_SCHEDULER_COMMAND = "dask scheduler"
DEFAULT_NAME_TEMPLATE = "dask-{user}-{uuid}"
DEFAULT_RESOURCE_TIMEOUT = 60.0
RESOURCE_KEYS = frozenset({"limits", "requests"})
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
_GROUP_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class CreateMode(enum.Enum):
    """What to do about an existing DaskCluster of the same name."""

    CREATE_ONLY = "CREATE_ONLY"  # error if it exists
    CREATE_OR_CONNECT = "CREATE_OR_CONNECT"  # create it, or connect to it if it exists
    CONNECT_ONLY = "CONNECT_ONLY"  # error if it does not exist


class SchedulerStartupError(Exception):
    """The scheduler pod kept failing for longer than `resource_timeout`; the message carries its logs."""


class SchedulerUnreachableError(ConnectionError):
    """The scheduler runs but does not answer, directly or through the port-forward."""


class ClusterSuspendedError(RuntimeError):
    """The DaskCluster exists but `spec.suspend` is true: it runs no scheduler to connect to."""


def suspended_message(cluster: Mapping[str, Any]) -> str | None:
    """Why connecting to `cluster` cannot work (it is suspended), or None."""
    if not ((cluster.get("spec") or {}).get("suspend") is True):
        return None
    meta = cluster["metadata"]
    name, namespace = meta["name"], meta.get("namespace", "default")
    return (
        f"DaskCluster {namespace}/{name} is suspended (spec.suspend: true), so it runs no scheduler. Resume it "
        f"with: kubectl -n {namespace} patch daskcluster {name} --type merge -p "
        """'{"spec":{"suspend":false}}' and connect again."""
    )


# -- options ------------------------------------------------------------------------------------------------


def config_value(key: str, value: Any, default: Any) -> Any:
    """An argument, else the reference's dask config key `kubernetes.<key>`, else our default."""
    if value is not None:
        return value
    return dask.config.get(f"kubernetes.{key}", default=default)


def create_mode_of(value: CreateMode | str) -> CreateMode:
    """The enum, or its name in any case with '-' or '_' (the reference ignores strings; we accept them)."""
    if isinstance(value, CreateMode):
        return value
    key = str(value).strip().upper().replace("-", "_")
    try:
        return CreateMode[key]
    except KeyError:
        allowed = ", ".join(mode.name for mode in CreateMode)
        raise ValueError(f"create_mode must be one of {allowed}; got {value!r}") from None


def default_cluster_name(template: str, user: str | None = None, unique: str | None = None) -> str:
    """`template` formatted with `user` (made DNS-safe), a 10-character `uuid` and the environment.

    A template that does not format (a stray brace) is returned as it is, for validation to reject.
    """
    login = user if user is not None else _login()
    safe_user = re.sub(r"[^a-z0-9-]+", "-", login.lower()).strip("-") or "user"
    try:
        return template.format(**{**os.environ, "user": safe_user, "uuid": unique or str(uuid.uuid4())[:10]})
    except (KeyError, IndexError, ValueError):
        return template


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (e.g. an arbitrary uid in a container)
        return "user"


def validate_resources(resources: Any) -> dict[str, Any] | None:
    """A copy of `resources` as container resources: only `limits` and `requests`, each a mapping.

    Unknown keys raise ValueError; a non-mapping raises TypeError (as the reference).
    """
    if resources is None:
        return None
    if not isinstance(resources, Mapping):
        raise TypeError(f"resources must be a dict with 'limits' and/or 'requests'; got {resources!r}")
    unknown = sorted(set(resources) - RESOURCE_KEYS)
    if unknown:
        raise ValueError(
            f"resources may only have the keys 'limits' and 'requests'; got {', '.join(map(repr, unknown))}. "
            "Example: {'requests': {'cpu': '1', 'memory': '2Gi'}, 'limits': {'memory': '2Gi'}}"
        )
    for key, value in resources.items():
        if not isinstance(value, Mapping):
            raise TypeError(f"resources[{key!r}] must be a dict such as {{'cpu': '1'}}; got {value!r}")
    return {key: dict(value) for key, value in resources.items()}


def validate_service_type(service_type: str) -> str:
    if service_type not in SERVICE_TYPES:
        raise ValueError(
            f"scheduler_service_type must be one of {', '.join(SERVICE_TYPES)}; got {service_type!r}"
        )
    return service_type


def validate_worker_group_name(cluster: str, group: str) -> str:
    """The DaskWorkerGroup name `<cluster>-<group>`, or ValidationError saying why it cannot be one."""
    full = worker_group_name(cluster, group)
    if not group or not _GROUP_NAME.match(full) or len(full) > MAX_RESOURCE_NAME_LENGTH:
        raise ValidationError(
            f"Invalid worker group name {group!r}: {full!r} must be at most {MAX_RESOURCE_NAME_LENGTH} "
            "lowercase letters, digits and '-', starting and ending with a letter or digit."
        )
    return full


def load_custom_spec(spec: Mapping[str, Any] | str | os.PathLike[str]) -> Obj:
    """A DaskCluster manifest given as a dict or as the path of a YAML file."""
    obj = copy.deepcopy(dict(spec)) if isinstance(spec, Mapping) else yaml.safe_load(Path(spec).read_text())
    if not isinstance(obj, dict) or obj.get("kind") != DASK_CLUSTER.kind:
        raise ValueError("custom_cluster_spec must be a DaskCluster manifest (kind: DaskCluster)")
    obj.setdefault("apiVersion", API_VERSION)
    obj.setdefault("metadata", {})
    if not obj["metadata"].get("name"):
        raise ValueError("custom_cluster_spec needs metadata.name")
    return obj


@dataclass(frozen=True)
class ClusterOptions:
    """The resolved spec arguments of a KubeCluster; also the defaults of `add_worker_group`."""

    name: str
    image: str = DEFAULT_IMAGE
    n_workers: int = 0
    resources: dict[str, Any] | None = None
    env: Mapping[str, str] | Sequence[Mapping[str, Any]] | None = None
    worker_command: str | Sequence[str] = DEFAULT_CLIENT_WORKER_COMMAND
    scheduler_command: str | Sequence[str] = DEFAULT_CLIENT_SCHEDULER_COMMAND
    scheduler_service_type: str = DEFAULT_SERVICE_TYPE
    idle_timeout: int = 0
    jupyter: bool = False


def cluster_manifest(options: ClusterOptions, namespace: str) -> Obj:
    """The DaskCluster `KubeCluster` creates: `make_cluster_spec` output in `namespace`."""
    obj = make_cluster_spec(
        name=options.name,
        image=options.image,
        n_workers=options.n_workers,
        resources=options.resources,
        env=options.env,
        worker_command=options.worker_command,
        scheduler_service_type=options.scheduler_service_type,
        idle_timeout=options.idle_timeout,
        jupyter=options.jupyter,
        scheduler_command=options.scheduler_command,
    )
    obj["metadata"]["namespace"] = namespace
    return obj


def options_from_cluster(cluster: Mapping[str, Any]) -> ClusterOptions:
    """What an existing DaskCluster was made with, as far as its first containers tell (connect path)."""
    spec = cluster.get("spec") or {}
    worker = spec.get("worker") or {}
    worker_container = _first_container(worker.get("spec"))
    scheduler_container = _first_container((spec.get("scheduler") or {}).get("spec"))
    worker_args = list(worker_container.get("args") or [])
    command = worker_args[: worker_args.index("--name")] if "--name" in worker_args else worker_args
    scheduler_args = list(scheduler_container.get("args") or [])
    scheduler_command = (
        scheduler_args[: scheduler_args.index("--host")] if "--host" in scheduler_args else scheduler_args
    )
    service = (spec.get("scheduler") or {}).get("service") or {}
    return ClusterOptions(
        name=cluster["metadata"]["name"],
        image=str(worker_container.get("image") or DEFAULT_IMAGE),
        n_workers=int(worker.get("replicas", 1)),
        resources=worker_container.get("resources") or None,
        env=worker_container.get("env") or None,
        worker_command=command or DEFAULT_CLIENT_WORKER_COMMAND,
        scheduler_command=scheduler_command or DEFAULT_CLIENT_SCHEDULER_COMMAND,
        scheduler_service_type=str(service.get("type") or DEFAULT_SERVICE_TYPE),
        idle_timeout=int(spec.get("idleTimeout") or 0),
        jupyter="--jupyter" in scheduler_args,
    )


def _first_container(pod_spec: Any) -> Obj:
    containers = (pod_spec or {}).get("containers") or [{}]
    return dict(containers[0])


def worker_group_manifest(
    cluster: str,
    namespace: str,
    group: str,
    options: ClusterOptions,
    *,
    n_workers: int | None = None,
    image: str | None = None,
    resources: Mapping[str, Any] | None = None,
    worker_command: str | Sequence[str] | None = None,
    env: Mapping[str, str] | Sequence[Mapping[str, Any]] | None = None,
    custom_spec: Mapping[str, Any] | None = None,
) -> Obj:
    """DaskWorkerGroup `<cluster>-<group>`; each omitted argument takes the cluster's value."""
    name = validate_worker_group_name(cluster, group)
    if custom_spec is not None:
        worker = copy.deepcopy(dict(custom_spec))
    else:
        worker = make_worker_spec(
            image=image or options.image,
            n_workers=options.n_workers if n_workers is None else n_workers,
            resources=validate_resources(resources) if resources is not None else options.resources,
            env=env if env is not None else options.env,
            worker_command=worker_command or options.worker_command,
        )
    return {
        "apiVersion": API_VERSION,
        "kind": DASK_WORKER_GROUP.kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_CLUSTER_NAME: cluster, LABEL_COMPONENT: COMPONENT_WORKER},
        },
        "spec": {"cluster": cluster, "worker": worker},
    }


def autoscaler_name(cluster: str, worker_group: str = "default") -> str:
    """The DaskAutoscaler KubeCluster makes for a group: `<cluster>` for the default group (as the reference
    names it), `<cluster>-<group>` for another."""
    return cluster if worker_group == "default" else validate_worker_group_name(cluster, worker_group)


def autoscaler_manifest(
    cluster: str, namespace: str, minimum: int | None, maximum: int | None, worker_group: str = "default"
) -> Obj:
    """DaskAutoscaler `autoscaler_name(cluster, worker_group)` with its labels under metadata.labels (the
    reference drops them); for a group other than the default one, `spec.workerGroup` names it."""
    low = 0 if minimum is None else minimum
    if maximum is None:
        raise ValueError(
            "adapt() needs maximum: DaskAutoscaler.spec.maximum is a required integer, e.g. "
            "cluster.adapt(minimum=1, maximum=10)"
        )
    if isinstance(low, bool) or isinstance(maximum, bool) or not (0 <= int(low) <= int(maximum)):
        raise ValueError(f"adapt() needs 0 <= minimum <= maximum; got minimum={minimum}, maximum={maximum}")
    spec: Obj = {"cluster": cluster, "minimum": int(low), "maximum": int(maximum)}
    if worker_group != "default":
        spec["workerGroup"] = validate_worker_group_name(cluster, worker_group)
    return {
        "apiVersion": API_VERSION,
        "kind": DASK_AUTOSCALER.kind,
        "metadata": {
            "name": autoscaler_name(cluster, worker_group),
            "namespace": namespace,
            "labels": {LABEL_CLUSTER_NAME: cluster, LABEL_COMPONENT: COMPONENT_AUTOSCALER},
        },
        "spec": spec,
    }


def validate_name(name: str) -> str:
    validate_cluster_name(name)
    return name


# -- reading status -----------------------------------------------------------------------------------------


def cluster_phase(cluster: Mapping[str, Any] | None) -> str | None:
    return ((cluster or {}).get("status") or {}).get("phase")


def is_running(cluster: Mapping[str, Any] | None) -> bool:
    return cluster_phase(cluster) == PHASE_RUNNING


def status_summary(cluster: Mapping[str, Any] | None) -> str:
    """`phase P: <Ready condition message>` for error messages."""
    status = (cluster or {}).get("status") or {}
    conditions: dict[str, Mapping[str, Any]] = {c.get("type"): c for c in status.get("conditions") or []}
    ready, degraded = conditions.get("Ready", {}), conditions.get("Degraded", {})
    messages = [str(ready["message"])] if ready.get("message") else []
    if degraded.get("status") == "True" and degraded.get("message"):
        messages.append(str(degraded["message"]))
    return f"phase {status.get('phase') or 'unset'}" + (": " + "; ".join(messages) if messages else "")


def scheduler_pod_selector(cluster: str) -> str:
    return f"{LABEL_CLUSTER_NAME}={cluster},{LABEL_COMPONENT}={COMPONENT_SCHEDULER}"


# -- reaching the scheduler ---------------------------------------------------------------------------------


def service_port(service: Mapping[str, Any], port_name: str) -> Obj:
    """The Service port named `port_name` (or named like the Service); exactly one must match."""
    name = (service.get("metadata") or {}).get("name")
    ports = [p for p in (service.get("spec") or {}).get("ports") or [] if p.get("name") in (port_name, name)]
    if len(ports) != 1:
        raise ValueError(
            f"Service {name} must have exactly one port named {port_name!r}; it has {len(ports)}"
        )
    return dict(ports[0])


def load_balancer_host(service: Mapping[str, Any]) -> str | None:
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    if not ingress:
        return None
    host = ingress[0].get("hostname") or ingress[0].get("ip")
    return str(host) if host else None


def node_host(nodes: Sequence[Mapping[str, Any]]) -> str | None:
    """An address of the first node: ExternalIP, else InternalIP, else any."""
    for node in nodes:
        addresses = (node.get("status") or {}).get("addresses") or []
        for kind in ("ExternalIP", "InternalIP", None):
            for address in addresses:
                if kind is None or address.get("type") == kind:
                    return str(address["address"])
    return None
