"""The operator as a real `dask-operator run` subprocess, and what e2e tests do with it: manifests of real
Dask clusters for the process node, kubectl reads, waits on their state, a Dask client through the Service.

Invariant: every test gets its own namespace and its own operator watching only it (`dask_operator`), so a
test that kills or stops the operator affects nobody else. Waits have deadlines; nothing sleeps to
synchronise. Registered as a plugin in test/conftest.py, so e2e modules use `plane` and `dask_operator`
without importing them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.wait import WaitTimeout, wait_for

REPO = Path(__file__).resolve().parents[2]
CRD_PLURALS = ("daskclusters", "daskworkergroups", "daskjobs", "daskautoscalers")


# -- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plane(kube_plane: Any) -> Any:
    if kube_plane.backend == "local" and not kube_plane.has_node:
        pytest.skip("needs the process node of the local control plane (real Dask pods)")
    kube_plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "crd"))
    for crd in CRD_PLURALS:
        wait_for(
            lambda crd=crd: crd_established(kube_plane, crd), timeout=60, message=f"CRD {crd} Established"
        )
    return kube_plane


def crd_established(kube_plane: Any, plural: str) -> bool:
    out = kube_plane.kubectl("get", f"crd/{plural}.kubernetes.dask.org", "-o", "json", check=False)
    if out.returncode != 0:
        return False
    conditions = json.loads(out.stdout).get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`dask-operator run --namespace <ns>` as a subprocess, logging to a file the test prints on failure."""

    def __init__(
        self,
        plane: Any,
        namespace: str | None,
        log: Path,
        env: dict[str, str] | None = None,
        *,
        kubeconfig: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """namespace=None watches all namespaces; kubeconfig defaults to the plane's admin credentials."""
        self.plane, self.namespace, self.log_path = plane, namespace, log
        self.kubeconfig = kubeconfig or plane.kubeconfig
        self.extra_args = extra_args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_port = 0

    def start(self, wait_ready: bool = True) -> OperatorProcess:
        """Start it; with wait_ready, return once /readyz answers 200."""
        port = self.health_port = free_port()
        scope = f"--namespace={self.namespace}" if self.namespace else "--all-namespaces"
        cmd = [
            sys.executable, "-m", "dask_operator.controller", "run",
            f"--kubeconfig={self.kubeconfig}", scope,
            "--metrics-bind-address=0", f"--health-probe-bind-address=127.0.0.1:{port}",
            "--concurrency=4", "--scale-down-force-timeout=60", "--log-format=console", *self.extra_args,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"operator exited:\n{self.tail()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        if wait_ready:
            wait_for(ready, timeout=60, interval=0.2, message="operator /readyz")
        return self

    def readyz(self, check: str = "") -> tuple[int, str]:
        """/readyz?verbose (or /readyz/<check>, which gives the failure's reason): (HTTP status, body);
        (0, reason) while nothing answers."""
        url = f"http://127.0.0.1:{self.health_port}/readyz" + (f"/{check}" if check else "?verbose")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return int(r.status), r.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode(errors="replace")
        except OSError as error:
            return 0, str(error)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)  # graceful shutdown is the runtime's to test; here only stop acting
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@pytest.fixture
def dask_operator(
    plane: Any, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(plane, namespace, tmp_path / "operator.log").start()
    yield op
    op.stop()
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        print(f"--- operator log tail ---\n{op.tail()}")


# -- manifests and observation helpers -------------------------------------------------------------------

WORKER_ARGS = [
    "dask",
    "worker",
    "--name",
    "$(DASK_WORKER_NAME)",
    "--nthreads",
    "1",
    "--no-nanny",
    "--no-dashboard",
]


# Every image below says `imagePullPolicy: IfNotPresent`, as the samples do: on real nodes
# (K8S_TEST_BACKEND=containerd) the images are imported, there is no registry to pull `:latest` from.
def worker_spec(args: list[str] | None = None) -> dict[str, Any]:
    return {
        "containers": [
            {
                "name": "worker",
                "image": "ghcr.io/dask/dask:latest",
                "imagePullPolicy": "IfNotPresent",
                "args": args or WORKER_ARGS,
            }
        ]
    }


def cluster_manifest(
    name: str, replicas: int, worker_args: list[str] | None = None, **meta: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name, **meta},
        "spec": {
            "scheduler": {
                "spec": {
                    "containers": [
                        {
                            "name": "scheduler",
                            "image": "ghcr.io/dask/dask:latest",
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["dask", "scheduler", "--host", "0.0.0.0"],
                            "ports": [
                                {"name": "tcp-comm", "containerPort": 8786},
                                {"name": "http-dashboard", "containerPort": 8787},
                            ],
                            "readinessProbe": {
                                "httpGet": {"port": "http-dashboard", "path": "/health"},
                                "periodSeconds": 1,
                            },
                        }
                    ]
                },
                "service": {
                    "type": "ClusterIP",
                    "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [
                        {"name": "tcp-comm", "port": 8786, "targetPort": "tcp-comm"},
                        {"name": "http-dashboard", "port": 8787, "targetPort": "http-dashboard"},
                    ],
                },
            },
            "worker": {"replicas": replicas, "spec": worker_spec(worker_args)},
        },
    }


def job_manifest(
    name: str, args: list[str], restart_policy: str = "Never", workers: int = 1, **spec: Any
) -> dict[str, Any]:
    """A DaskJob whose runner runs `args` on its own cluster of `workers` (or on spec.clusterRef's)."""
    job: dict[str, Any] = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskJob",
        "metadata": {"name": name, "labels": {"team": "e2e"}},
        "spec": {
            "job": {
                "metadata": {"labels": {"role": "runner"}},
                "spec": {
                    "restartPolicy": restart_policy,
                    "containers": [
                        {
                            "name": "job",
                            "image": "ghcr.io/dask/dask:latest",
                            "imagePullPolicy": "IfNotPresent",
                            "args": args,
                        }
                    ],
                },
            },
            **spec,
        },
    }
    if "clusterRef" not in spec:
        job["spec"]["cluster"] = {"spec": cluster_manifest(name, workers)["spec"]}
    return job


def group_manifest(
    name: str, cluster: str, replicas: int, worker_args: list[str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": {"name": name},
        "spec": {"cluster": cluster, "worker": {"replicas": replicas, "spec": worker_spec(worker_args)}},
    }


def apply(plane: Any, namespace: str, obj: dict[str, Any]) -> None:
    plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))


def get(plane: Any, namespace: str, *what: str) -> Any:
    out = plane.kubectl("get", "-n", namespace, *what, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def pods(plane: Any, namespace: str, selector: str) -> list[dict[str, Any]]:
    listed = get(plane, namespace, "pods", "-l", selector)
    return [p for p in (listed or {}).get("items", []) if not p["metadata"].get("deletionTimestamp")]


def worker_pods(plane: Any, namespace: str, group: str) -> list[dict[str, Any]]:
    return pods(plane, namespace, f"dask.org/component=worker,dask.org/workergroup-name={group}")


def phase(plane: Any, namespace: str, cluster: str) -> str | None:
    obj = get(plane, namespace, "daskcluster", cluster)
    return (obj or {}).get("status", {}).get("phase")


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    return next((c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == kind), {})


def scheduler_address(plane: Any, namespace: str, cluster: str) -> str:
    service = get(plane, namespace, "service", f"{cluster}-scheduler")
    return f"tcp://{service['spec']['clusterIP']}:8786"


def scheduler_ready(plane: Any, namespace: str, cluster: str) -> bool:
    """A live scheduler pod of the cluster is Ready: it listens (the phase Running says only that the scheduler
    Pod and Service exist, as the reference's does)."""
    selector = f"dask.org/cluster-name={cluster},dask.org/component=scheduler"
    return any(
        "deletionTimestamp" not in p["metadata"]
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p.get("status", {}).get("conditions") or []
        )
        for p in pods(plane, namespace, selector)
    )


@contextmanager
def dask_client(plane: Any, namespace: str, cluster: str, ready_timeout: float = 120) -> Iterator[Any]:
    """A client of the cluster's scheduler, once its pod is Ready (a scheduler starting on a loaded machine
    refuses connections for longer than a client's connect timeout); after `ready_timeout` it tries anyway."""
    from distributed import Client

    with contextlib.suppress(WaitTimeout):
        wait_for(lambda: scheduler_ready(plane, namespace, cluster), timeout=ready_timeout, interval=0.5,
                 message=f"{cluster}'s scheduler pod Ready")  # fmt: skip
    with Client(scheduler_address(plane, namespace, cluster), timeout=30) as client:
        yield client


def wait_running(plane: Any, namespace: str, cluster: str, timeout: float = 90) -> None:
    wait_for(lambda: phase(plane, namespace, cluster) == "Running", timeout=timeout, interval=0.5,
             message=f"DaskCluster {cluster} Running")  # fmt: skip


def wait_workers(client: Any, names: set[str] | int, timeout: float = 90) -> set[str]:
    """Until the scheduler's workers are exactly `names` (or that many); returns their names."""

    def connected() -> set[str] | None:
        current = {str(w["name"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()}
        ok = current == names if isinstance(names, set) else len(current) == names
        return current if ok else None

    return wait_for(connected, timeout=timeout, interval=0.5, message=f"scheduler workers == {names}")


def pod_names(items: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["name"] for p in items}


def pods_running(items: list[dict[str, Any]]) -> set[str]:
    """Names of the pods whose containers are running (on a real node a pod may wait seconds for that)."""
    return {
        p["metadata"]["name"]
        for p in items
        if any(
            (cs.get("state") or {}).get("running")
            for cs in (p.get("status") or {}).get("containerStatuses") or []
        )
    }


def set_pod_quota(plane: Any, namespace: str, pods: int | None, used: int = 0) -> None:
    """A ResourceQuota `pods` limiting the namespace to `pods` pods (None: delete it).

    The local plane runs no resourcequota controller, so the quota's status (which admission reads) is
    filled here the way that controller would, with `used` pods; the refusal itself comes from the real
    API server's ResourceQuota admission."""
    if pods is None:
        plane.kubectl("delete", "-n", namespace, "resourcequota", "pods", "--ignore-not-found")
        return
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods"},
             "spec": {"hard": {"pods": str(pods)}}}  # fmt: skip
    apply(plane, namespace, quota)
    status = {"status": {"hard": {"pods": str(pods)}, "used": {"pods": str(used)}}}
    plane.kubectl("patch", "-n", namespace, "resourcequota", "pods", "--subresource=status",
                  "--type=merge", "-p", json.dumps(status))  # fmt: skip
    wait_for(
        lambda: (
            ((get(plane, namespace, "resourcequota", "pods") or {}).get("status") or {}).get("hard")
            == {"pods": str(pods)}
        ),
        timeout=30,
        interval=0.3,
        message="the ResourceQuota's status",
    )


def wait_refused(plane: Any, namespace: str, kind: str, name: str, timeout: float = 60) -> dict[str, Any]:
    """The ReplicaFailure condition the operator sets when the API server refuses a create."""

    def refused() -> dict[str, Any] | None:
        cond = condition(get(plane, namespace, kind, name), "ReplicaFailure")
        return cond if cond.get("status") == "True" else None

    return wait_for(refused, timeout=timeout, interval=0.5, message=f"ReplicaFailure on {kind} {name}")


def warning_events(plane: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    events = get(plane, namespace, "events", "--field-selector", f"involvedObject.name={name}") or {}
    return [e for e in events.get("items", []) if e.get("type") == "Warning"]


def resource_version_now(plane: Any, namespace: str) -> str:
    """The namespace's pods' collection resourceVersion: a point from which a watch replays every change."""
    from dask_operator.runtime.client import Client
    from dask_operator.runtime.kinds import POD

    _, rv = Client.from_kubeconfig(str(plane.kubeconfig)).list(POD, namespace)
    return rv


def pods_added_since(plane: Any, namespace: str, resource_version: str, selector: str) -> list[str]:
    """Names of the pods matching `selector` created after `resource_version`, including pods already
    deleted again: a watch from that resourceVersion replays each ADDED event (the API server keeps them)."""
    from dask_operator.runtime.client import Client
    from dask_operator.runtime.kinds import POD

    api = Client.from_kubeconfig(str(plane.kubeconfig))
    stream = api.watch(POD, namespace, resource_version, 2, allow_bookmarks=False, label_selector=selector)
    try:
        return [e["object"]["metadata"]["name"] for e in stream if e.get("type") == "ADDED"]
    finally:
        stream.close()


@contextmanager
def operator_in_new_namespace(kp: Any, prefix: str, log: Path) -> Iterator[tuple[str, OperatorProcess]]:
    """On a plane of a module's own (e.g. the three-node plane): the CRDs, a new namespace `<prefix>-xxxxxx` with
    its default ServiceAccount, and an operator watching it. On the way out: the operator's log tail if the test
    failed, and the namespace deleted with every pod of it gone (the next scenario reuses names and nodes)."""
    import uuid

    kp.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "crd"))
    for crd in CRD_PLURALS:
        wait_for(lambda crd=crd: crd_established(kp, crd), timeout=60, message=f"CRD {crd} Established")
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kp.kubectl("create", "namespace", ns)
    wait_for(lambda: kp.kubectl("-n", ns, "get", "sa", "default", check=False).returncode == 0, timeout=30,
             message=f"ServiceAccount {ns}/default")  # fmt: skip
    op = OperatorProcess(kp, ns, log).start()
    try:
        yield ns, op
    except BaseException:
        print(f"--- operator log tail ---\n{op.tail(80)}")
        raise
    finally:
        op.stop()
        kp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        kp.kubectl(
            "wait", "-n", ns, "--for=delete", "pod", "--all", "--timeout=170s", check=False, timeout=180
        )
