"""`KubeCluster`: create (or connect to) a DaskCluster and drive it from Python, as `dask_kubernetes.operator`.

Invariant: a KubeCluster that created its DaskCluster deletes it when start-up fails, and when it is closed
with `shutdown_on_close`; nothing else it does deletes a DaskCluster. Kubernetes is reached only through the
runtime REST client and the scheduler only through the comm `distributed.deploy.Cluster` manages. The
Kubernetes calls are synchronous: the object is used from ordinary (non-async) code.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import errno
import html
import logging
import os
import socket
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from distributed.core import Status, rpc
from distributed.deploy.cluster import Cluster
from distributed.utils import Log, Logs, format_dashboard_link

from dask_operator.api.kubecluster.options import (
    DEFAULT_CLIENT_SCHEDULER_COMMAND,
    DEFAULT_CLIENT_WORKER_COMMAND,
    DEFAULT_NAME_TEMPLATE,
    DEFAULT_RESOURCE_TIMEOUT,
    PORT_FORWARD_UNSUPPORTED,
    ClusterOptions,
    CreateMode,
    SchedulerStartupError,
    SchedulerUnreachableError,
    autoscaler_manifest,
    cluster_manifest,
    cluster_phase,
    config_value,
    create_mode_of,
    default_cluster_name,
    is_running,
    load_balancer_host,
    load_custom_spec,
    node_host,
    options_from_cluster,
    pod_failure,
    scheduler_pod_selector,
    service_port,
    status_summary,
    unreachable_message,
    validate_name,
    validate_resources,
    validate_service_type,
    validate_worker_group_name,
    worker_group_manifest,
)
from dask_operator.api.v1 import (
    COMPONENT_SCHEDULER,
    COMPONENT_WORKER,
    DEFAULT_IMAGE,
    DEFAULT_SERVICE_TYPE,
    LABEL_CLUSTER_NAME,
    LABEL_COMPONENT,
    PHASE_ERROR,
    PORT_NAME_COMM,
    PORT_NAME_DASHBOARD,
    scheduler_service_name,
)
from dask_operator.controller.kinds import DASK_AUTOSCALER_KIND, DASK_CLUSTER_KIND, DASK_WORKER_GROUP_KIND
from dask_operator.controller.runtime.client import ApiError
from dask_operator.controller.runtime.client import Client as RestClient
from dask_operator.controller.runtime.kinds import NODE, POD, SERVICE

logger = logging.getLogger(__name__)

FIELD_MANAGER = "dask-operator-kubecluster"
POLL_SECONDS = 0.5
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

# Open clusters that delete their DaskCluster on close; closed at interpreter exit (as the reference).
_live: weakref.WeakSet[KubeCluster] = weakref.WeakSet()


class KubeCluster(Cluster):
    """A Dask cluster on Kubernetes, run by the Dask operator: one DaskCluster, its scheduler and workers.

    Construction creates the DaskCluster (or connects to an existing one, see `create_mode`), waits up to
    `resource_timeout` seconds for the operator to report it `Running` and connects to the scheduler::

        cluster = KubeCluster(name="demo", n_workers=2)
        client = Client(cluster)
        cluster.scale(5)
        cluster.close()  # deletes the DaskCluster (shutdown_on_close)

    Every argument is keyword-only and falls back to the dask config key `kubernetes.<name>` (dashes for
    underscores), as in `dask_kubernetes.operator.KubeCluster`.

    Differences from the reference, all deliberate:

    * `worker_command` defaults to ``"dask worker"`` and the new `scheduler_command` to ``"dask scheduler"``:
      distributed 2026.6 removed the `dask-worker`/`dask-scheduler` scripts the reference runs. Pass
      ``worker_command="dask-worker", scheduler_command="dask-scheduler"`` for images older than 2022.10.
    * No port-forwarding. The scheduler is reached through its Service: its DNS name (inside the cluster),
      else its ClusterIP when routable from here, its LoadBalancer ingress or a node's NodePort. If none is
      reachable, start-up fails with `SchedulerUnreachableError` saying what to do;
      `port_forward_cluster_ip=True` is refused with ValueError; `scheduler_forward_port` only warns.
    * `create_mode` also accepts the mode's name as a string; `adapt()` requires `maximum`.
    * `kube_client` (our addition) injects a `dask_operator.controller.runtime.client.Client`; by default
      the in-cluster service account or $KUBECONFIG / ~/.kube/config is used.
    * Only synchronous use: `asynchronous=True` raises NotImplementedError.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        namespace: str | None = None,
        image: str | None = None,
        n_workers: int | None = None,
        resources: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | Sequence[Mapping[str, Any]] | None = None,
        worker_command: str | Sequence[str] | None = None,
        scheduler_command: str | Sequence[str] | None = None,
        port_forward_cluster_ip: bool | None = None,
        create_mode: CreateMode | str | None = None,
        shutdown_on_close: bool | None = None,
        idle_timeout: int | None = None,
        resource_timeout: float | None = None,
        scheduler_service_type: str | None = None,
        custom_cluster_spec: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        scheduler_forward_port: int | None = None,
        jupyter: bool | None = None,
        kube_client: RestClient | None = None,
        loop: Any = None,
        asynchronous: bool = False,
        quiet: bool = False,
        **kwargs: Any,
    ) -> None:
        if asynchronous:
            raise NotImplementedError(
                "dask-operator's KubeCluster is synchronous; create it with asynchronous=False "
                "(a distributed.Client on it may still be asynchronous)"
            )
        # -- everything that can be wrong with the arguments fails here, before any API call --------------
        if config_value("port-forward-cluster-ip", port_forward_cluster_ip, None):
            raise ValueError(PORT_FORWARD_UNSUPPORTED)
        self.create_mode = create_mode_of(
            config_value("create-mode", create_mode, CreateMode.CREATE_OR_CONNECT)
        )
        self.shutdown_on_close = bool(config_value("shutdown-on-close", shutdown_on_close, True))
        self.resource_timeout = float(
            config_value("resource-timeout", resource_timeout, DEFAULT_RESOURCE_TIMEOUT)
        )
        self.scheduler_forward_port = config_value("scheduler-forward-port", scheduler_forward_port, None)
        custom = config_value("custom-cluster-spec", custom_cluster_spec, None)
        self._custom_spec = load_custom_spec(custom) if custom is not None else None
        if self._custom_spec is not None:
            cluster_name = str(self._custom_spec["metadata"]["name"])
        else:
            cluster_name = default_cluster_name(str(config_value("name", name, DEFAULT_NAME_TEMPLATE)))
        validate_name(cluster_name)
        count = config_value("count.start", n_workers, 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"n_workers must be a non-negative integer; got {count!r}")
        self._options = ClusterOptions(
            name=cluster_name,
            image=str(config_value("image", image, DEFAULT_IMAGE)),
            n_workers=count,
            resources=validate_resources(config_value("resources", resources, None)),
            env=config_value("env", env, None) or None,
            worker_command=config_value("worker-command", worker_command, DEFAULT_CLIENT_WORKER_COMMAND),
            scheduler_command=config_value(
                "scheduler-command", scheduler_command, DEFAULT_CLIENT_SCHEDULER_COMMAND
            ),
            scheduler_service_type=validate_service_type(
                str(config_value("scheduler-service-type", scheduler_service_type, DEFAULT_SERVICE_TYPE))
            ),
            idle_timeout=int(config_value("idle-timeout", idle_timeout, 0) or 0),
            jupyter=bool(config_value("scheduler-jupyter", jupyter, False)),
        )
        custom_namespace = (self._custom_spec or {}).get("metadata", {}).get("namespace")
        self.namespace: str = str(
            namespace or custom_namespace or config_value("namespace", None, None) or current_namespace()
        )
        if self._custom_spec is not None:
            self._custom_spec["metadata"]["namespace"] = self.namespace

        self.api = kube_client if kube_client is not None else default_kube_client()
        self._created = False
        self._deleted = False
        self._scheduler_address = ""
        self._dashboard_host = ""
        self._dashboard_port: int | None = None
        self.forwarded_dashboard_port: str | None = None
        super().__init__(asynchronous=False, loop=loop, quiet=quiet, name=cluster_name, **kwargs)
        self._loop_runner.start()
        try:
            self._create_or_connect()
            self.sync(self._start)
        except BaseException:
            self._abort_start()
            raise
        if self.shutdown_on_close:
            _live.add(self)
        self._log(f"Ready, dashboard available at {self.dashboard_link}")

    # -- construction helpers -------------------------------------------------------------------------

    @classmethod
    def from_name(cls, name: str, **kwargs: Any) -> KubeCluster:
        """Connect to the existing DaskCluster `name` without owning it (closing leaves it running)."""
        kwargs.setdefault("create_mode", CreateMode.CONNECT_ONLY)
        kwargs.setdefault("shutdown_on_close", False)
        return cls(name=name, **kwargs)

    @property
    def cluster_name(self) -> str:
        return self._options.name

    def _create_or_connect(self) -> None:
        name, namespace = self.cluster_name, self.namespace
        existing = self.api.get(DASK_CLUSTER_KIND, namespace, name)
        if existing is None:
            if self.create_mode is CreateMode.CONNECT_ONLY:
                raise ValueError(f"DaskCluster {namespace}/{name} does not exist (create_mode=CONNECT_ONLY)")
            manifest = self._custom_spec or cluster_manifest(self._options, namespace)
            self._log(f"Creating DaskCluster {namespace}/{name}")
            try:
                self.api.create(manifest)
                self._created = True
            except ApiError as error:
                if error.not_found:
                    raise RuntimeError(
                        f"Cannot create DaskCluster {namespace}/{name}: {error.message or error}. "
                        "Are the Dask Custom Resource Definitions installed? (kubectl apply -k manifests/crd)"
                    ) from error
                if not (error.already_exists and self.create_mode is CreateMode.CREATE_OR_CONNECT):
                    raise
                existing = self.api.get(DASK_CLUSTER_KIND, namespace, name)  # lost a race: connect
        if existing is not None:
            if self.create_mode is CreateMode.CREATE_ONLY:
                raise ValueError(f"DaskCluster {namespace}/{name} already exists (create_mode=CREATE_ONLY)")
            self._log(f"Connecting to existing DaskCluster {namespace}/{name}")
            self._options = options_from_cluster(existing)
        cluster = self._wait_running()
        self._locate_scheduler(cluster)

    def _wait_running(self) -> dict[str, Any]:
        """The DaskCluster once its status says Running; TimeoutError or SchedulerStartupError after the timeout."""
        deadline = time.monotonic() + self.resource_timeout
        while True:
            cluster = self.api.get(DASK_CLUSTER_KIND, self.namespace, self.cluster_name)
            if cluster is None:
                raise RuntimeError(
                    f"DaskCluster {self.namespace}/{self.cluster_name} was deleted while starting"
                )
            if is_running(cluster):
                return cluster
            if cluster_phase(cluster) == PHASE_ERROR:
                raise RuntimeError(
                    f"DaskCluster {self.namespace}/{self.cluster_name} failed: {status_summary(cluster)}"
                )
            if time.monotonic() >= deadline:
                self._raise_startup_timeout(cluster)
            time.sleep(POLL_SECONDS)

    def _raise_startup_timeout(self, cluster: Mapping[str, Any]) -> None:
        seconds = f"{self.resource_timeout:g}"
        pods, _ = self.api.list(POD, self.namespace, label_selector=scheduler_pod_selector(self.cluster_name))
        for pod in pods:
            failure = pod_failure(pod)
            if failure:
                raise SchedulerStartupError(
                    f"Scheduler failed to start ({failure} after {seconds} s).\n"
                    f"Scheduler Pod logs:\n{self._pod_log(pod)}"
                )
        if not cluster.get("status"):
            raise TimeoutError(
                f"Dask Cluster resource not actioned after {seconds} seconds, is the Dask Operator running? "
                f"(DaskCluster {self.namespace}/{self.cluster_name} has no status yet.)"
            )
        raise TimeoutError(
            f"DaskCluster {self.namespace}/{self.cluster_name} is not Running after {seconds} seconds "
            f"({status_summary(cluster)}). Raise resource_timeout if the images are slow to pull."
        )

    def _locate_scheduler(self, cluster: Mapping[str, Any]) -> None:
        """Pick the scheduler address this process can reach, from the Service (see the class docstring)."""
        service = self.api.get(SERVICE, self.namespace, scheduler_service_name(self.cluster_name))
        if service is None:
            raise RuntimeError(
                f"the scheduler Service of DaskCluster {self.namespace}/{self.cluster_name} is gone"
            )
        comm = service_port(service, PORT_NAME_COMM)
        try:
            dashboard: dict[str, Any] | None = service_port(service, PORT_NAME_DASHBOARD)
        except ValueError:
            dashboard = None
        kind = (service.get("spec") or {}).get("type", "ClusterIP")
        tried: list[str] = []
        host: str | None = None
        use_node_ports = False
        if kind == "LoadBalancer":
            host = load_balancer_host(service)
        elif kind == "NodePort":
            nodes, _ = self.api.list(NODE)
            host, use_node_ports = node_host(nodes), True
        else:
            status_host = str((cluster.get("status") or {}).get("schedulerAddress", "")).split("://")[-1]
            names = [status_host.rsplit(":", 1)[0], f"{service['metadata']['name']}.{self.namespace}"]
            host = next((n for n in names if n and _resolves(n)), None)
            tried += [n for n in names if n]
            cluster_ip = (service.get("spec") or {}).get("clusterIP")
            if host is None and cluster_ip and cluster_ip != "None":
                tried.append(f"{cluster_ip}:{comm['port']}")
                if _tcp_reachable(cluster_ip, int(comm["port"]), max(self.resource_timeout, 10.0)):
                    host = cluster_ip
        if host is None:
            raise SchedulerUnreachableError(
                unreachable_message(self.cluster_name, self.namespace, service, tried)
            )
        comm_port = comm.get("nodePort") if use_node_ports else comm["port"]
        self._scheduler_address = f"tcp://{host}:{comm_port}"
        self._dashboard_host = host
        if dashboard is not None:
            self._dashboard_port = int(dashboard["nodePort"] if use_node_ports else dashboard["port"])
            self.forwarded_dashboard_port = str(self._dashboard_port)
        if self.scheduler_forward_port is not None:
            warnings.warn(
                f"scheduler_forward_port={self.scheduler_forward_port} is ignored: dask-operator's KubeCluster "
                f"does not port-forward; the dashboard is at {self.dashboard_link}",
                UserWarning,
                stacklevel=4,
            )

    async def _start(self) -> None:
        self.scheduler_comm = rpc(self._scheduler_address)
        deadline = time.monotonic() + max(self.resource_timeout, 10.0)
        while True:
            try:
                await asyncio.wait_for(self.scheduler_comm.identity(), timeout=10)
                break
            except (TimeoutError, OSError) as error:
                if time.monotonic() >= deadline:
                    raise SchedulerUnreachableError(
                        f"The scheduler of DaskCluster {self.namespace}/{self.cluster_name} does not answer at "
                        f"{self._scheduler_address}: {error}"
                    ) from error
                await asyncio.sleep(POLL_SECONDS)
        await super()._start()

    def _abort_start(self) -> None:
        with contextlib.suppress(Exception):
            Cluster.close(self, timeout=10)
        self._loop_runner.stop()
        if self._created:
            with contextlib.suppress(Exception):
                self.api.delete(DASK_CLUSTER_KIND, self.namespace, self.cluster_name)
                self._deleted = True

    # -- the Cluster interface ----------------------------------------------------------------------------

    @property
    def scheduler_address(self) -> str:
        return self._scheduler_address or "<Not Connected>"

    @property
    def dashboard_link(self) -> str:
        if not self._dashboard_port:
            return ""
        return str(format_dashboard_link(self._dashboard_host, self._dashboard_port))

    @property
    def jupyter_link(self) -> str:
        if not self._options.jupyter:
            raise RuntimeError(
                "Jupyter is not running on the scheduler: create the cluster with jupyter=True"
            )
        return self.dashboard_link.replace("/status", "/jupyter/lab")

    def scale(self, n: int, worker_group: str = "default") -> None:
        """Set worker group `worker_group` to `n` workers, turning adaptive scaling (a DaskAutoscaler) off.

        Returns once the DaskWorkerGroup says so; the operator then starts or retires workers.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"scale() needs a non-negative integer; got {n!r}")
        group = validate_worker_group_name(self.cluster_name, worker_group)
        self.api.delete(DASK_AUTOSCALER_KIND, self.namespace, self.cluster_name)
        patch = {"spec": {"worker": {"replicas": n}}}
        try:
            self.api.patch_merge(DASK_WORKER_GROUP_KIND, self.namespace, group, patch)
        except ApiError as error:
            if not error.not_found:
                raise
            if worker_group != "default":
                raise ValueError(
                    f"DaskCluster {self.cluster_name} has no worker group {worker_group!r}"
                ) from error
            # The operator has not made the default group yet: the DaskCluster's count is copied onto it.
            self.api.patch_merge(DASK_CLUSTER_KIND, self.namespace, self.cluster_name, patch)
        if worker_group == "default":
            self._options = dataclasses.replace(self._options, n_workers=n)

    def adapt(  # type: ignore[override]
        self, minimum: int | None = None, maximum: int | None = None
    ) -> None:
        """Let the operator scale the default worker group between `minimum` and `maximum` (a DaskAutoscaler)."""
        manifest = autoscaler_manifest(self.cluster_name, self.namespace, minimum, maximum)
        self.api.apply(manifest, FIELD_MANAGER)

    def add_worker_group(
        self,
        name: str,
        n_workers: int | None = 3,
        image: str | None = None,
        resources: Mapping[str, Any] | None = None,
        worker_command: str | Sequence[str] | None = None,
        env: Mapping[str, str] | Sequence[Mapping[str, Any]] | None = None,
        custom_spec: Mapping[str, Any] | None = None,
    ) -> None:
        """Create DaskWorkerGroup `<cluster>-<name>`; omitted arguments take the cluster's values."""
        manifest = worker_group_manifest(
            self.cluster_name,
            self.namespace,
            name,
            self._options,
            n_workers=n_workers,
            image=image,
            resources=resources,
            worker_command=worker_command,
            env=env,
            custom_spec=custom_spec,
        )
        try:
            self.api.create(manifest)
        except ApiError as error:
            if error.already_exists:
                raise ValueError(f"worker group {manifest['metadata']['name']} already exists") from error
            raise

    def delete_worker_group(self, name: str) -> None:
        """Delete DaskWorkerGroup `<cluster>-<name>` (its workers stop without being retired first)."""
        group = validate_worker_group_name(self.cluster_name, name)
        if not self.api.delete(DASK_WORKER_GROUP_KIND, self.namespace, group):
            raise ValueError(f"DaskCluster {self.cluster_name} has no worker group {name!r}")

    def get_logs(
        self, cluster: bool = True, scheduler: bool = True, workers: bool | Collection[str] = True
    ) -> Logs:
        """Pod name -> log text of the scheduler pod and worker pods (`workers` may list pod names).

        `cluster` is accepted for compatibility with `distributed.deploy.Cluster.get_logs` and ignored.
        """
        pods, _ = self.api.list(
            POD, self.namespace, label_selector=f"{LABEL_CLUSTER_NAME}={self.cluster_name}"
        )
        logs = Logs()
        for pod in sorted(pods, key=lambda p: str(p["metadata"]["name"])):
            pod_name = str(pod["metadata"]["name"])
            component = (pod["metadata"].get("labels") or {}).get(LABEL_COMPONENT)
            wanted = (component == COMPONENT_SCHEDULER and scheduler) or (
                component == COMPONENT_WORKER
                and (workers is True or (not isinstance(workers, bool) and pod_name in workers))
            )
            if not wanted:
                continue
            phase = (pod.get("status") or {}).get("phase")
            if phase != "Running":
                logs[pod_name] = Log(f"Cannot find logs. Pod is {phase}.")
            else:
                logs[pod_name] = Log(self._pod_log(pod))
        return logs

    def _pod_log(self, pod: Mapping[str, Any]) -> str:
        """The first container's log; the previous run's when the current one has none (crash loops)."""
        name = str(pod["metadata"]["name"])
        containers = (pod.get("spec") or {}).get("containers") or [{}]
        path = POD.object_path(self.namespace, name, "log")
        params = {"container": str(containers[0].get("name", ""))}
        text = ""
        for extra in ({}, {"previous": "true"}):
            try:
                text = str(self.api.request("GET", path, params={**params, **extra}) or "")
            except ApiError as error:
                text = f"(no logs: {error.message or error})"
                continue
            if text.strip():
                return text
        return text

    def close(self, timeout: float | None = 3600) -> None:
        """Disconnect; with `shutdown_on_close`, delete the DaskCluster and wait until it is gone."""
        if self.status not in (Status.closed, Status.closing):
            with contextlib.suppress(Exception):
                Cluster.close(self, timeout=30)
        self._loop_runner.stop()
        _live.discard(self)
        if self.shutdown_on_close and not self._deleted:
            self._deleted = True
            self._delete_and_wait(timeout)

    def _delete_and_wait(self, timeout: float | None) -> None:
        if not self.api.delete(DASK_CLUSTER_KIND, self.namespace, self.cluster_name):
            logger.warning("DaskCluster %s/%s was already deleted", self.namespace, self.cluster_name)
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.api.get(DASK_CLUSTER_KIND, self.namespace, self.cluster_name) is not None:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"DaskCluster {self.namespace}/{self.cluster_name} still exists {timeout:g} s after deletion"
                )
            time.sleep(POLL_SECONDS)

    def _repr_html_(self, cluster_status: str | None = None) -> str:
        rows = [
            ("Namespace", self.namespace),
            ("DaskCluster", self.cluster_name),
            ("Image", self._options.image),
            ("Scheduler", self.scheduler_address),
        ]
        table = "".join(
            f'<tr><td style="text-align: left;"><strong>{html.escape(k)}:</strong> {html.escape(str(v))}</td></tr>'
            for k, v in rows
        )
        return str(super()._repr_html_(cluster_status=(cluster_status or "") + table))


def kubeconfig_path() -> str | None:
    """$KUBECONFIG's first file, read now (the kubernetes package reads it once, at import), else None."""
    first = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return os.path.expanduser(first) if first else None


def default_kube_client() -> RestClient:
    """The pod's service account inside a cluster, else $KUBECONFIG / ~/.kube/config."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        with contextlib.suppress(Exception):
            return RestClient.in_cluster()
    return RestClient.from_kubeconfig(kubeconfig_path())


def current_namespace() -> str:
    """The pod's namespace inside a cluster, else the kubeconfig context's, else `default`."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    try:
        from kubernetes import config as k8s_config

        _, active = k8s_config.list_kube_config_contexts(config_file=kubeconfig_path())
        return str((active or {}).get("context", {}).get("namespace") or "default")
    except Exception:  # noqa: BLE001 - no kubeconfig: the API client will say so when it is built
        return "default"


def _resolves(host: str, timeout: float = 2.0) -> bool:
    """Whether `host` resolves within `timeout` (a resolver without network must not hang start-up)."""
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=lookup, daemon=True, name=f"resolve {host}")
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _tcp_reachable(host: str, port: int, budget: float) -> bool:
    """Whether a TCP connection opens. Refusals are retried for `budget` seconds (a Service refuses until its
    endpoints are ready); timeouts and unreachable networks give up after three tries (no route from here)."""
    deadline = time.monotonic() + budget
    silent = 0
    while True:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return True
        except ConnectionRefusedError:
            pass
        except OSError as error:
            if isinstance(error, TimeoutError) or error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                silent += 1
                if silent >= 3:
                    return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


async def discover() -> AsyncIterator[tuple[str, type[KubeCluster]]]:
    """`(name, KubeCluster)` for every DaskCluster in every namespace: dask-ctl's discovery contract.

    Any failure (no credentials, no RBAC to list across namespaces) ends the listing silently, as dask-ctl
    expects of a discovery plugin.
    """
    try:
        api = default_kube_client()
        items, _ = await asyncio.to_thread(api.list, DASK_CLUSTER_KIND, None)
    except Exception:  # noqa: BLE001 - see docstring
        return
    for item in items:
        yield str(item["metadata"]["name"]), KubeCluster


@atexit.register
def _close_live_clusters() -> None:
    for cluster in list(_live):
        with contextlib.suppress(Exception):
            cluster.close(timeout=10)
