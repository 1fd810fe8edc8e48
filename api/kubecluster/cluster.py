"""`KubeCluster`: create (or connect to) a DaskCluster and drive it from Python, as `dask_kubernetes.operator`.

Invariant: a KubeCluster deletes only the DaskCluster it created (when start-up fails, and when it is closed)
or, with an explicit `shutdown_on_close=True`, the one it connected to; every delete names that object's UID,
so a cluster of the same name created by someone else is never deleted; nothing else it does deletes one. Kubernetes is reached only through the
runtime REST client and the scheduler only through the comm `distributed.deploy.Cluster` manages.
Every operation has one async implementation (`_start`, `_scale`, `_close`, ...; the blocking REST calls run
in a thread); the public methods run it through `Cluster.sync`, so the same code serves `asynchronous=True`
(awaitables) and ordinary code (blocking calls on the cluster's loop thread). Held by
test/e2e/test_kubecluster.py.
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
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Generator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from distributed.core import Status, rpc
from distributed.deploy.cluster import Cluster
from distributed.utils import Log, Logs, NoOpAwaitable, format_dashboard_link

from dask_operator.api.kubecluster.kinds import (
    DASK_AUTOSCALER_KIND,
    DASK_CLUSTER_KIND,
    DASK_WORKER_GROUP_KIND,
    NODE,
    POD,
    SERVICE,
    Kind,
)
from dask_operator.api.kubecluster.options import (
    DEFAULT_CLIENT_SCHEDULER_COMMAND,
    DEFAULT_CLIENT_WORKER_COMMAND,
    DEFAULT_NAME_TEMPLATE,
    DEFAULT_RESOURCE_TIMEOUT,
    ClusterOptions,
    ClusterSuspendedError,
    CreateMode,
    SchedulerStartupError,
    SchedulerUnreachableError,
    autoscaler_manifest,
    autoscaler_name,
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
    scheduler_pod_selector,
    service_port,
    status_summary,
    suspended_message,
    validate_name,
    validate_resources,
    validate_service_type,
    validate_worker_group_name,
    worker_group_manifest,
)
from dask_operator.api.kubecluster.portforward import PortForward, SchedulerPodTarget, pod_port
from dask_operator.api.pods import is_pod_ready, pod_failure
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
from dask_operator.runtime.client import ApiError
from dask_operator.runtime.client import Client as RestClient
from dask_operator.runtime.credentials import context_namespace

logger = logging.getLogger(__name__)
T = TypeVar("T")

FIELD_MANAGER = "dask-operator-kubecluster"
POLL_SECONDS = 0.5
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

# Open clusters that delete their DaskCluster on close; closed at interpreter exit (as the reference).
_live: weakref.WeakSet[KubeCluster] = weakref.WeakSet()


class KubeCluster(Cluster):
    """A Dask cluster on Kubernetes, run by the Dask operator: one DaskCluster, its scheduler and workers.

    Construction creates the DaskCluster (or connects to an existing one, see `create_mode`), waits up to
    `resource_timeout` seconds for the operator to report it `Running` and its scheduler pod to be ready, and
    connects to the scheduler::

        cluster = KubeCluster(name="demo", n_workers=2)
        client = Client(cluster)
        cluster.scale(5)
        cluster.close()  # deletes the DaskCluster it created (shutdown_on_close)

    With ``asynchronous=True`` every method returns an awaitable::

        async with KubeCluster(name="demo", asynchronous=True) as cluster:
            await cluster.scale(3)

    Every argument is keyword-only and falls back to the dask config key `kubernetes.<name>` (dashes for
    underscores), as in `dask_kubernetes.operator.KubeCluster`.

    The scheduler is reached through its Service: its DNS name (inside the cluster), its ClusterIP when
    routable from here, its LoadBalancer ingress or a node's NodePort. When none answers (a laptop outside the
    cluster), or with ``port_forward_cluster_ip=True``, the client forwards local ports to the scheduler pod
    through the API server (in this process; no kubectl needed), re-targeting a replaced scheduler pod;
    ``scheduler_forward_port`` fixes the local dashboard port.

    Differences from the reference, all deliberate:

    * `worker_command` defaults to ``"dask worker"`` and the new `scheduler_command` to ``"dask scheduler"``:
      distributed 2026.6 removed the `dask-worker`/`dask-scheduler` scripts the reference runs. Pass
      ``worker_command="dask-worker", scheduler_command="dask-scheduler"`` for images older than 2022.10.
    * `create_mode` also accepts the mode's name as a string; `adapt()` requires `maximum`.
    * `shutdown_on_close` defaults to "only if this object created the DaskCluster": connecting to an
      existing cluster by name (a colleague's, say) and closing it, or leaving the interpreter, leaves that
      cluster running. The reference deletes it. Pass ``shutdown_on_close=True`` to delete a cluster you
      connected to.
    * `kube_client` (our addition) injects a `dask_operator.runtime.client.Client`; by default
      the in-cluster service account or $KUBECONFIG / ~/.kube/config is used.
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
        # -- everything that can be wrong with the arguments fails here, before any API call --------------
        self.port_forward_cluster_ip = bool(
            config_value("port-forward-cluster-ip", port_forward_cluster_ip, False)
        )
        self.create_mode = create_mode_of(
            config_value("create-mode", create_mode, CreateMode.CREATE_OR_CONNECT)
        )
        # None: delete on close only the DaskCluster this object created (never a colleague's of the same name).
        chosen = config_value("shutdown-on-close", shutdown_on_close, None)
        self._shutdown_choice: bool | None = None if chosen is None else bool(chosen)
        self.resource_timeout = float(
            config_value("resource-timeout", resource_timeout, DEFAULT_RESOURCE_TIMEOUT)
        )
        forward_port = config_value("scheduler-forward-port", scheduler_forward_port, None)
        if forward_port is not None and (
            isinstance(forward_port, bool)
            or not isinstance(forward_port, int)
            or not 0 <= forward_port < 65536
        ):
            raise ValueError(f"scheduler_forward_port must be a TCP port number; got {forward_port!r}")
        self.scheduler_forward_port: int | None = forward_port
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
        self._uid: str | None = None  # the DaskCluster this object created or connected to: deletes name it
        self._scheduler_address = ""
        self._dashboard_host = ""
        self._dashboard_port: int | None = None
        self.forwarded_dashboard_port: str | None = None
        self._forwards: list[PortForward] = []
        super().__init__(asynchronous=asynchronous, loop=loop, quiet=quiet, name=cluster_name, **kwargs)
        if not self.called_from_running_loop:
            self._loop_runner.start()
            try:
                self.sync(self._start)
            except BaseException:
                with contextlib.suppress(BaseException):
                    self.sync(self._abort_start)
                self._loop_runner.stop()
                raise

    def __await__(self) -> Generator[Any, Any, KubeCluster]:
        async def start() -> KubeCluster:
            if self.status == Status.created:
                try:
                    await self._start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await self._abort_start()
                    raise
            return self

        return start().__await__()

    # -- construction helpers -------------------------------------------------------------------------

    @classmethod
    def from_name(cls, name: str, **kwargs: Any) -> KubeCluster:
        """Connect to the existing DaskCluster `name` without owning it (closing leaves it running).

        A suspended cluster (`spec.suspend: true`) raises ClusterSuspendedError at once, saying how to resume
        it: it runs no scheduler, and waiting for one would only end in a timeout."""
        kwargs.setdefault("create_mode", CreateMode.CONNECT_ONLY)
        kwargs.setdefault("shutdown_on_close", False)
        return cls(name=name, **kwargs)

    @property
    def cluster_name(self) -> str:
        return self._options.name

    async def _kube(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A blocking REST call, run in a thread so the loop (and a notebook's) stays responsive."""
        return await asyncio.to_thread(call, *args, **kwargs)

    async def _start(self) -> None:
        self.status = Status.starting
        deadline = time.monotonic() + self.resource_timeout
        await self._create_or_connect()
        cluster = await self._wait_running(deadline)
        pod = await self._wait_scheduler_pod(deadline)
        await self._locate_scheduler(cluster, pod)
        self.scheduler_comm = rpc(self._scheduler_address)
        answer_by = time.monotonic() + max(self.resource_timeout, 10.0)
        while True:
            try:
                await asyncio.wait_for(self.scheduler_comm.identity(), timeout=10)
                break
            except (TimeoutError, OSError) as error:
                if time.monotonic() >= answer_by:
                    raise SchedulerUnreachableError(
                        f"The scheduler of DaskCluster {self.namespace}/{self.cluster_name} does not answer at "
                        f"{self._scheduler_address}: {error}"
                    ) from error
                await asyncio.sleep(POLL_SECONDS)
        await super()._start()
        if self.shutdown_on_close:
            _live.add(self)
        self._log(f"Ready, dashboard available at {self.dashboard_link}")

    async def _create_or_connect(self) -> None:
        name, namespace = self.cluster_name, self.namespace
        existing = await self._kube(
            self._checked, "get", DASK_CLUSTER_KIND, self.api.get, DASK_CLUSTER_KIND, namespace, name
        )
        if existing is None:
            if self.create_mode is CreateMode.CONNECT_ONLY:
                raise ValueError(f"DaskCluster {namespace}/{name} does not exist (create_mode=CONNECT_ONLY)")
            manifest = self._custom_spec or cluster_manifest(self._options, namespace)
            self._log(f"Creating DaskCluster {namespace}/{name}")
            try:
                created = await self._kube(
                    self._checked, "create", DASK_CLUSTER_KIND, self.api.create, manifest
                )
                self._created = True
                self._uid = str((created or {}).get("metadata", {}).get("uid") or "") or None
            except ApiError as error:
                if error.not_found:
                    raise RuntimeError(
                        f"Cannot create DaskCluster {namespace}/{name}: {error.message or error}. "
                        "The Dask Custom Resource Definitions are not installed in this Kubernetes cluster; "
                        "ask its admin to install them (kubectl apply -k manifests/crd)."
                    ) from error
                if not (error.already_exists and self.create_mode is CreateMode.CREATE_OR_CONNECT):
                    raise
                existing = await self._kube(self.api.get, DASK_CLUSTER_KIND, namespace, name)  # lost a race
        if existing is not None:
            if self.create_mode is CreateMode.CREATE_ONLY:
                raise ValueError(f"DaskCluster {namespace}/{name} already exists (create_mode=CREATE_ONLY)")
            suspended = suspended_message(existing)
            if suspended is not None:
                raise ClusterSuspendedError(suspended)
            self._log(f"Connecting to existing DaskCluster {namespace}/{name}")
            self._options = options_from_cluster(existing)
            self._uid = str(existing.get("metadata", {}).get("uid") or "") or None

    def _checked(self, verb: str, kind: Kind, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)`, turning the API server's 403 into a PermissionError naming the verb and resource."""
        try:
            return call(*args)
        except ApiError as error:
            if error.status == 403:
                raise PermissionError(
                    forbidden_message(verb, f"{kind.plural}.{kind.group}", self.namespace, error.message)
                ) from error
            raise

    async def _wait_running(self, deadline: float) -> dict[str, Any]:
        """The DaskCluster once its status says Running; TimeoutError or SchedulerStartupError after the timeout."""
        while True:
            cluster = await self._kube(self.api.get, DASK_CLUSTER_KIND, self.namespace, self.cluster_name)
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
                await self._raise_startup_timeout(cluster)
            await asyncio.sleep(POLL_SECONDS)

    async def _wait_scheduler_pod(self, deadline: float) -> dict[str, Any]:
        """The scheduler pod once Ready. Operators that report Running before the scheduler is ready (the
        reference's meaning of the phase) are waited on here; a crash loop surfaces at the deadline."""
        while True:
            pods, _ = await self._kube(
                self.api.list, POD, self.namespace, label_selector=scheduler_pod_selector(self.cluster_name)
            )
            ready = [pod for pod in pods if is_pod_ready(pod)]
            if ready:
                return dict(ready[0])
            if time.monotonic() >= deadline:
                cluster = await self._kube(self.api.get, DASK_CLUSTER_KIND, self.namespace, self.cluster_name)
                await self._raise_startup_timeout(cluster or {})
            await asyncio.sleep(POLL_SECONDS)

    async def _raise_startup_timeout(self, cluster: Mapping[str, Any]) -> None:
        seconds = f"{self.resource_timeout:g}"
        pods, _ = await self._kube(
            self.api.list, POD, self.namespace, label_selector=scheduler_pod_selector(self.cluster_name)
        )
        for pod in pods:
            failure = pod_failure(pod, since_start=True)
            if failure:
                logs = await self._kube(self._pod_log, pod)
                raise SchedulerStartupError(
                    f"Scheduler failed to start ({failure} after {seconds} s).\nScheduler Pod logs:\n{logs}"
                )
        if not cluster.get("status"):
            raise TimeoutError(
                f"Dask Cluster resource not actioned after {seconds} seconds, is the Dask Operator running? "
                f"(DaskCluster {self.namespace}/{self.cluster_name} has no status yet: start the operator, "
                "e.g. kubectl apply -k manifests/, or ask the cluster's admin.)"
            )
        raise TimeoutError(
            f"DaskCluster {self.namespace}/{self.cluster_name} is not ready after {seconds} seconds "
            f"({status_summary(cluster)}). Raise resource_timeout if the images are slow to pull."
        )

    async def _locate_scheduler(self, cluster: Mapping[str, Any], pod: Mapping[str, Any]) -> None:
        """Pick the scheduler address this process can reach (see the class docstring)."""
        service = await self._kube(
            self.api.get, SERVICE, self.namespace, scheduler_service_name(self.cluster_name)
        )
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
        host: str | None = None
        use_node_ports = False
        if self.port_forward_cluster_ip:
            host = None
        elif kind == "LoadBalancer":
            host = load_balancer_host(service)
        elif kind == "NodePort":
            nodes, _ = await self._kube(self.api.list, NODE)
            host, use_node_ports = node_host(nodes), True
        else:
            status_host = str((cluster.get("status") or {}).get("schedulerAddress", "")).split("://")[-1]
            names = [status_host.rsplit(":", 1)[0], f"{service['metadata']['name']}.{self.namespace}"]
            host = next((n for n in names if n and _resolves(n)), None)
            cluster_ip = (service.get("spec") or {}).get("clusterIP")
            if host is None and cluster_ip and cluster_ip != "None":
                budget = max(self.resource_timeout, 10.0)
                if await self._kube(_tcp_reachable, cluster_ip, int(comm["port"]), budget):
                    host = cluster_ip
        if host is None:
            await self._forward(pod, comm, dashboard)
            return
        comm_port = comm.get("nodePort") if use_node_ports else comm["port"]
        self._scheduler_address = f"tcp://{host}:{comm_port}"
        self._dashboard_host = host
        if dashboard is not None:
            self._dashboard_port = int(dashboard["nodePort"] if use_node_ports else dashboard["port"])
            self.forwarded_dashboard_port = str(self._dashboard_port)

    async def _forward(
        self, pod: Mapping[str, Any], comm: Mapping[str, Any], dashboard: Mapping[str, Any] | None
    ) -> None:
        """Forward a free local port to the scheduler's comm port, and the dashboard (to
        `scheduler_forward_port` when given), through the API server."""
        target = SchedulerPodTarget(self.api, self.namespace, scheduler_pod_selector(self.cluster_name))
        comm_forward = PortForward(target, pod_port(pod, comm.get("targetPort") or comm["port"]))
        self._forwards.append(comm_forward)
        local = await comm_forward.start()
        self._scheduler_address = f"tcp://localhost:{local}"
        self._dashboard_host = "localhost"
        if dashboard is not None:
            remote = pod_port(pod, dashboard.get("targetPort") or dashboard["port"])
            dashboard_forward = PortForward(target, remote, self.scheduler_forward_port or 0)
            self._forwards.append(dashboard_forward)
            self._dashboard_port = await dashboard_forward.start()
            self.forwarded_dashboard_port = str(self._dashboard_port)
        self._log(
            f"Port-forwarding the scheduler of {self.namespace}/{self.cluster_name} through the API server"
        )

    async def _abort_start(self) -> None:
        with contextlib.suppress(Exception):
            await Cluster._close(self)
        await self._stop_forwards()
        if self._created and not self._deleted:
            with contextlib.suppress(Exception):
                await self._kube(self._delete_own)
                self._deleted = True

    async def _stop_forwards(self) -> None:
        forwards, self._forwards = self._forwards, []
        for forward in forwards:
            with contextlib.suppress(Exception):
                await forward.close()

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

    def scale(self, n: int, worker_group: str = "default") -> Any:
        """Set worker group `worker_group` to `n` workers, turning its adaptive scaling (its DaskAutoscaler) off.

        Returns once the DaskWorkerGroup says so (an awaitable when asynchronous); the operator then starts or
        retires workers.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"scale() needs a non-negative integer; got {n!r}")
        group = validate_worker_group_name(self.cluster_name, worker_group)
        return self.sync(self._scale, n, worker_group, group)

    async def _scale(self, n: int, worker_group: str, group: str) -> None:
        autoscaler = autoscaler_name(self.cluster_name, worker_group)
        await self._kube(self.api.delete, DASK_AUTOSCALER_KIND, self.namespace, autoscaler)
        patch = {"spec": {"worker": {"replicas": n}}}
        try:
            await self._kube(self.api.patch_merge, DASK_WORKER_GROUP_KIND, self.namespace, group, patch)
        except ApiError as error:
            if not error.not_found:
                raise
            if worker_group != "default":
                raise ValueError(
                    f"DaskCluster {self.cluster_name} has no worker group {worker_group!r}"
                ) from error
            # The operator has not made the default group yet: the DaskCluster's count is copied onto it.
            await self._kube(
                self.api.patch_merge, DASK_CLUSTER_KIND, self.namespace, self.cluster_name, patch
            )
        if worker_group == "default":
            self._options = dataclasses.replace(self._options, n_workers=n)

    def adapt(  # type: ignore[override]
        self, minimum: int | None = None, maximum: int | None = None, worker_group: str = "default"
    ) -> Autoscaling:
        """Let the operator scale worker group `worker_group` between `minimum` and `maximum` (a DaskAutoscaler
        per group). A group grows only for the tasks its workers' resources serve: with a group added by
        `add_worker_group("gpu", worker_command="dask worker --resources GPU=1", ...)`,
        `adapt(0, 3, worker_group="gpu")` starts GPU workers only while tasks submitted with
        `resources={"GPU": 1}` wait, and retires them (their data moved) once idle.

        Returns the bounds set (awaitable when asynchronous). When asynchronous the write starts at once, awaited
        or not: the JupyterLab Dask panel calls adapt() without awaiting it and reads `.minimum`/`.maximum`.
        """
        manifest = autoscaler_manifest(self.cluster_name, self.namespace, minimum, maximum, worker_group)
        bounds = manifest["spec"]
        if self.asynchronous:
            write = asyncio.ensure_future(self._kube(self.api.apply, manifest, FIELD_MANAGER))
            return Autoscaling(bounds["minimum"], bounds["maximum"], write)
        self.sync(self._kube, self.api.apply, manifest, FIELD_MANAGER)
        return Autoscaling(bounds["minimum"], bounds["maximum"], None)

    def add_worker_group(
        self,
        name: str,
        n_workers: int | None = 3,
        image: str | None = None,
        resources: Mapping[str, Any] | None = None,
        worker_command: str | Sequence[str] | None = None,
        env: Mapping[str, str] | Sequence[Mapping[str, Any]] | None = None,
        custom_spec: Mapping[str, Any] | None = None,
    ) -> Any:
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
        return self.sync(self._add_worker_group, manifest)

    async def _add_worker_group(self, manifest: dict[str, Any]) -> None:
        try:
            await self._kube(self.api.create, manifest)
        except ApiError as error:
            if error.already_exists:
                raise ValueError(f"worker group {manifest['metadata']['name']} already exists") from error
            raise

    def delete_worker_group(self, name: str) -> Any:
        """Delete DaskWorkerGroup `<cluster>-<name>` (its workers stop without being retired first)."""
        group = validate_worker_group_name(self.cluster_name, name)
        return self.sync(self._delete_worker_group, name, group)

    async def _delete_worker_group(self, name: str, group: str) -> None:
        if not await self._kube(self.api.delete, DASK_WORKER_GROUP_KIND, self.namespace, group):
            raise ValueError(f"DaskCluster {self.cluster_name} has no worker group {name!r}")

    async def _get_logs(
        self, cluster: bool = True, scheduler: bool = True, workers: bool | Collection[str] = True
    ) -> Logs:
        """Pod name -> log text of the scheduler pod and worker pods (`workers` may list pod names).

        `cluster` is accepted for compatibility with `distributed.deploy.Cluster.get_logs` and ignored.
        """
        return await self._kube(self._pod_logs, scheduler, workers)

    def _pod_logs(self, scheduler: bool, workers: bool | Collection[str]) -> Logs:
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
        return pod_log(self.api, self.namespace, pod)

    @property
    def shutdown_on_close(self) -> bool:
        """Whether `close()` (or interpreter exit) deletes the DaskCluster: as chosen, else only when this
        object created it. The reference deletes any cluster it connected to unless told otherwise."""
        return self._created if self._shutdown_choice is None else self._shutdown_choice

    @shutdown_on_close.setter
    def shutdown_on_close(self, value: bool) -> None:
        self._shutdown_choice = bool(value)

    def _delete_own(self) -> bool:
        """Delete the DaskCluster this object created or connected to, by UID: one deleted and re-created
        under the same name by someone else is theirs, and a 409 leaves it alone."""
        try:
            return self.api.delete(DASK_CLUSTER_KIND, self.namespace, self.cluster_name, uid=self._uid)
        except ApiError as error:
            if error.status == 409:
                logger.warning(
                    "DaskCluster %s/%s was replaced by another one of the same name; left alone",
                    self.namespace,
                    self.cluster_name,
                )
                return False
            raise

    def close(self, timeout: float | None = 3600) -> Any:
        """Disconnect; with `shutdown_on_close`, delete the DaskCluster and wait until it is gone."""
        if self.status == Status.closed and (self._deleted or not self.shutdown_on_close):
            return NoOpAwaitable() if self.asynchronous else None
        if self.asynchronous:
            return self.sync(self._close, callback_timeout=timeout)
        try:
            return self.sync(self._close, callback_timeout=timeout)
        finally:
            self._loop_runner.stop()

    async def _close(self) -> None:
        _live.discard(self)
        if self.status not in (Status.closed, Status.closing):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(Cluster._close(self), 30)
        self.status = Status.closed
        await self._stop_forwards()
        if self.shutdown_on_close and not self._deleted:
            self._deleted = True
            await self._delete_and_wait()

    async def _delete_and_wait(self) -> None:
        if not await self._kube(self._delete_own):
            logger.warning(
                "DaskCluster %s/%s was not deleted by this client", self.namespace, self.cluster_name
            )
            return
        while True:
            current = await self._kube(self.api.get, DASK_CLUSTER_KIND, self.namespace, self.cluster_name)
            if current is None or current.get("metadata", {}).get("uid") != self._uid:
                return
            await asyncio.sleep(POLL_SECONDS)

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


class Autoscaling:
    """What `KubeCluster.adapt` set: the DaskAutoscaler's bounds; awaiting it waits for the write."""

    def __init__(self, minimum: int, maximum: int, write: asyncio.Future[Any] | None) -> None:
        self.minimum, self.maximum, self._write = minimum, maximum, write

    def __await__(self) -> Generator[Any, Any, Autoscaling]:
        if self._write is not None:
            yield from self._write.__await__()
        return self

    def __repr__(self) -> str:
        return f"Autoscaling(minimum={self.minimum}, maximum={self.maximum})"


def forbidden_message(verb: str, resource: str, namespace: str, detail: str | None) -> str:
    """What a user reads when Kubernetes RBAC refuses a call, and what to ask for."""
    return (
        f"Kubernetes RBAC does not allow you to {verb} {resource} in namespace {namespace}"
        + (f" ({detail})" if detail else "")
        + f". Ask your cluster admin for a Role in {namespace} granting {verb} on {resource} "
        "(manifests/rbac has the Dask user role), or use a namespace where you have it."
    )


def pod_log(api: RestClient, namespace: str, pod: Mapping[str, Any], tail_lines: int | None = None) -> str:
    """The first container's log; the previous run's when the current one has none (crash loops)."""
    name = str(pod["metadata"]["name"])
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    path = POD.object_path(namespace, name, "log")
    params = {"container": str(containers[0].get("name", ""))}
    if tail_lines is not None:
        params["tailLines"] = str(tail_lines)
    text = ""
    for extra in ({}, {"previous": "true"}):
        try:
            text = str(api.request("GET", path, params={**params, **extra}) or "")
        except ApiError as error:
            text = f"(no logs: {error.message or error})"
            continue
        if text.strip():
            return text
    return text


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


def current_namespace(config_file: str | None = None) -> str:
    """The pod's namespace inside a cluster, else the kubeconfig context's, else `default`."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    try:
        return context_namespace(config_file or kubeconfig_path()) or "default"
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
    endpoints are ready); a timeout or an unreachable network gives up at once: the scheduler pod is already
    Ready, so silence means no route from here (a laptop), and the caller port-forwards instead."""
    deadline = time.monotonic() + budget
    while True:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return True
        except ConnectionRefusedError:
            pass
        except OSError as error:
            if isinstance(error, TimeoutError) or error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


async def discover() -> AsyncIterator[tuple[str, type[KubeCluster]]]:
    """`(name, KubeCluster)` for every DaskCluster in the current namespace (dask config `kubernetes.namespace`,
    else the kubeconfig context's): dask-ctl's discovery contract. dask-ctl attaches with
    `KubeCluster.from_name(name)`, which looks in the same namespace.

    Any failure (no credentials, no RBAC to list across namespaces) ends the listing silently, as dask-ctl
    expects of a discovery plugin.
    """
    try:
        api = default_kube_client()
        namespace = str(config_value("namespace", None, None) or current_namespace())
        items, _ = await asyncio.to_thread(api.list, DASK_CLUSTER_KIND, namespace)
    except Exception:  # noqa: BLE001 - see docstring
        return
    for item in items:
        yield str(item["metadata"]["name"]), KubeCluster


@atexit.register
def _close_live_clusters() -> None:
    """Delete the DaskClusters of clusters left open (their loops may be gone: a plain REST delete)."""
    for cluster in list(_live):
        if cluster._deleted:
            continue
        cluster._deleted = True
        with contextlib.suppress(Exception):
            cluster._delete_own()
