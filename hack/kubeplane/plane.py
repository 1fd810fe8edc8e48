"""Bring a plane up, take it down, stop and start its components.

Invariant: state.json is written before the first process starts and updated after each spawn, so
`down` can always find everything `up` started, even after `kill -9` of every process or of `up`
itself. `down` stops the nodes first (they own pods, netns and the bridge), then kube-scheduler and the
control plane in reverse start order, and removes the state dir only once no recorded process is
left. `node stop` is a node lost: its process is killed and its pods' processes and netns with it,
while its Node and pods stay in the API for the node-lifecycle controller to handle.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kubeplane import components as comp
from kubeplane import nodes, realnode
from kubeplane import pki as pkimod
from kubeplane.state import (
    PlaneState,
    ProcessRecord,
    ServiceRangeError,
    allocate_indexes,
    allocate_ports,
    default_service_cidr,
    default_state_dir,
    parse_service_cidr,
    port_is_free,
    registry_lock,
)

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.37.2")
ETCD_VERSION = os.environ.get("ETCD_VERSION", "v3.6.16")
REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "build-control-plane.sh"
NODE_BUILD_SCRIPT = REPO / "hack" / "build-node.sh"
IMAGES_BUILD_SCRIPT = REPO / "hack" / "build-images.sh"
RUNTIMES = ("process", realnode.RUNTIME)
BINARIES = ("etcd", comp.APISERVER, comp.KCM)
PORT_NAMES = ["etcd", "etcd_peer", "apiserver", "kcm", "kubelet", "scheduler"]
REAL_NODE_PORT_NAMES = ["kube_proxy_healthz", "kube_proxy_metrics"]

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class PlaneError(RuntimeError):
    """A situation the user must act on; the message says what to do."""


@dataclass(frozen=True)
class ComponentStatus:
    pid: int
    running: bool
    healthy: bool
    rss_kib: int
    log: str


@dataclass(frozen=True)
class UpOptions:
    name: str = "default"
    state_dir: Path | None = None
    bin_dir: Path | None = None
    node: bool = True  # start the process node when kubeplane.node exists
    simulated_node: bool = False
    gpus: int = 0
    force: bool = False  # clean a stale state dir first
    apiserver_port: int | None = None
    timeout: float = 60.0  # per component
    nodes: int = 1
    service_cidr: str = ""  # empty: the index's /20 of 10.96.0.0/12 (state.default_service_cidr)
    node_names: tuple[str, ...] = ()
    node_labels: tuple[str, ...] = ()  # each NODE=k=v[,k=v]; NODE a name or ordinal
    node_taints: tuple[str, ...] = ()  # each NODE=key[=value]:Effect[,...]
    node_capacity: tuple[str, ...] = ()  # each NODE=cpu=2,memory=4Gi,pods=20
    scheduler: bool | None = None  # None: kube-scheduler runs when there are several nodes
    # Node failure timing (None keeps Kubernetes' defaults: 50 s, 300 s, 300 s).
    node_monitor_grace_period: float | None = None
    default_not_ready_toleration_seconds: int | None = None
    default_unreachable_toleration_seconds: int | None = None
    # "process" (our kubelet, the default) or "containerd" (upstream kubelet, containerd, runc, kube-proxy)
    runtime: str = "process"
    node_bin_dir: Path | None = None  # real nodes: default $DASK_OPERATOR_NODE_BIN or hack/build-node.sh
    images_dir: Path | None = None  # real nodes: default $DASK_OPERATOR_IMAGES or build-images.sh's cache


def default_bin_dir() -> Path:
    cache = os.environ.get("DASK_OPERATOR_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dask-operator"
    )
    return Path(cache) / "control-plane" / f"k8s-{K8S_VERSION}_etcd-{ETCD_VERSION}" / "bin"


def resolve_bin_dir(explicit: Path | None = None) -> Path:
    """--bin-dir, else $DASK_OPERATOR_BIN, else the build script's cache dir; all binaries must exist."""
    env = os.environ.get("DASK_OPERATOR_BIN")
    bin_dir = explicit or (Path(env) if env else default_bin_dir())
    return _check_binaries(bin_dir, BINARIES)


def _check_binaries(bin_dir: Path, binaries: tuple[str, ...]) -> Path:
    missing = [b for b in binaries if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise PlaneError(
            f"control-plane binaries missing in {bin_dir}: {', '.join(missing)}.\n"
            f"Build them once with {BUILD_SCRIPT} (it needs Go; cached afterwards, it prints the bin dir "
            "on its last line), or point DASK_OPERATOR_BIN / --bin-dir at an existing bin dir."
        )
    return bin_dir


def resolve_node_bin_dir(explicit: Path | None) -> Path:
    """--node-bin-dir, else $DASK_OPERATOR_NODE_BIN, else what hack/build-node.sh prints (~0 s once built)."""
    env = os.environ.get("DASK_OPERATOR_NODE_BIN")
    if explicit or env:
        bin_dir = explicit or Path(str(env))
    else:
        proc = subprocess.run([str(NODE_BUILD_SCRIPT)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise PlaneError(f"{NODE_BUILD_SCRIPT} failed:\n{proc.stderr.strip()[-3000:]}")
        bin_dir = Path(proc.stdout.strip().splitlines()[-1])
    missing = [b for b in realnode.NODE_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing or not (bin_dir.parent / "images" / "pause.name").is_file():
        raise PlaneError(
            f"real-node parts missing in {bin_dir}: {', '.join(missing) or 'the pause image'}. "
            f"Build them once with {NODE_BUILD_SCRIPT}, or point DASK_OPERATOR_NODE_BIN / --node-bin-dir at its bin dir."
        )
    return bin_dir


def resolve_images_dir(explicit: Path | None) -> Path:
    """--images-dir, else $DASK_OPERATOR_IMAGES, else hack/build-images.sh's output in the cache."""
    env = os.environ.get("DASK_OPERATOR_IMAGES")
    cache = Path(os.environ.get("DASK_OPERATOR_CACHE") or default_bin_dir().parents[2])
    images = explicit or (Path(env) if env else cache / "images" / "tarballs")
    if not list(images.glob("*.tar")):
        raise PlaneError(
            f"no image tarballs in {images}: build them with {IMAGES_BUILD_SCRIPT} (prints the dir)"
        )
    return images


def node_available() -> bool:
    """True once the process node package (hack/kubeplane/node/__main__.py) exists."""
    try:
        spec = importlib.util.find_spec("kubeplane.node")
    except (ImportError, ValueError):
        return False
    locations = list(spec.submodule_search_locations or []) if spec else []
    return any((Path(loc) / "__main__.py").is_file() for loc in locations)


class Plane:
    """A handle on one plane's state dir; every method re-reads nothing but state.json."""

    def __init__(self, state: PlaneState) -> None:
        self.state = state

    # --- facts ------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def state_dir(self) -> Path:
        return self.state.root

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return self.state.server

    @property
    def pki(self) -> pkimod.PkiPaths:
        return pkimod.PkiPaths(self.state_dir / "pki")

    @property
    def node_name(self) -> str:
        """The first node's name (the only one on a one-node plane)."""
        specs = nodes.plane_nodes(self.state)
        return specs[0].name if specs else self.state.network.node_name

    @property
    def node_names(self) -> list[str]:
        return [s.name for s in nodes.plane_nodes(self.state)]

    @property
    def has_node(self) -> bool:
        return comp.NODE in self.state.processes

    def write_kubeconfig(self, server: str, path: Path) -> Path:
        return pkimod.write_kubeconfig(path, server, self.pki, cluster=f"localkube-{self.name}")

    # --- lifecycle --------------------------------------------------------------------------------

    @classmethod
    def load(cls, state_dir: Path) -> Plane:
        if not (state_dir / "state.json").is_file():
            raise PlaneError(f"no plane at {state_dir} (no state.json)")
        return cls(PlaneState.load(state_dir))

    @classmethod
    def up(cls, opts: UpOptions, say: Say = _quiet) -> Plane:
        t0 = time.monotonic()
        state_dir = (opts.state_dir or default_state_dir(opts.name)).absolute()
        _check_no_stale_state(state_dir, opts, say)
        bin_dir = resolve_bin_dir(opts.bin_dir)
        real = opts.runtime == realnode.RUNTIME
        if opts.runtime not in RUNTIMES:
            raise PlaneError(f"--runtime {opts.runtime!r}: one of {', '.join(RUNTIMES)}")
        with_node = opts.node and (real or node_available())
        if real and (opts.simulated_node or opts.gpus or opts.node_capacity):
            raise PlaneError(
                "--simulated-node, --gpus and --node-capacity are process-node flags: a real kubelet reports this machine"
            )
        node_bin = resolve_node_bin_dir(opts.node_bin_dir) if real and with_node else None
        images = resolve_images_dir(opts.images_dir) if real and with_node else None
        if opts.nodes < 1 or (opts.nodes > 1 and not with_node):
            raise PlaneError(
                f"--nodes {opts.nodes}: a plane runs 1 or more process nodes (and not with --no-node)"
            )
        scheduler = with_node and (opts.scheduler if opts.scheduler is not None else opts.nodes > 1 or real)
        if scheduler:
            _check_binaries(bin_dir, (comp.SCHEDULER,))
        fixed: dict[str, int] = {}
        if opts.apiserver_port is not None:
            if not port_is_free(opts.apiserver_port):
                raise PlaneError(
                    f"port 127.0.0.1:{opts.apiserver_port} is taken (see `ss -ltnp 'sport = :"
                    f"{opts.apiserver_port}'`); choose another --apiserver-port or omit it for a free one"
                )
            fixed["apiserver"] = opts.apiserver_port
        try:
            service_cidr = parse_service_cidr(opts.service_cidr) if opts.service_cidr else ""
        except ServiceRangeError as e:
            raise PlaneError(str(e)) from e
        with registry_lock():
            try:
                indexes, taken = allocate_indexes(state_dir, opts.nodes if with_node else 1, service_cidr)
            except ServiceRangeError as e:
                raise PlaneError(str(e)) from e
            index = indexes[0]
            node_opts: dict[str, object] = {}
            if with_node:
                try:
                    names = nodes.node_names(opts.nodes, index, opts.node_names)
                    specs = nodes.build_specs(
                        indexes, names, opts.node_labels, opts.node_taints, opts.node_capacity
                    )
                except nodes.NodeFlagError as e:
                    raise PlaneError(str(e)) from e
                node_opts = {
                    "simulated": opts.simulated_node,
                    "gpus": opts.gpus,
                    "nodes": [s.to_json() for s in specs],
                    "scheduler": scheduler,
                    "node_monitor_grace_period": opts.node_monitor_grace_period,
                    "default_not_ready_toleration_seconds": opts.default_not_ready_toleration_seconds,
                    "default_unreachable_toleration_seconds": opts.default_unreachable_toleration_seconds,
                }
                if node_bin is not None and images is not None:
                    node_opts |= {
                        "runtime": realnode.RUNTIME,
                        "data_dir": str(realnode.default_data_dir(opts.name)),
                        "node_bin_dir": str(node_bin),
                        "images_dir": str(images),
                        "sandbox_image": (node_bin.parent / "images" / "pause.name").read_text().strip(),
                    }
            ports = allocate_ports(PORT_NAMES + REAL_NODE_PORT_NAMES * real, taken, fixed)
            state_dir.mkdir(parents=True)
            os.chmod(state_dir, 0o700)
            st = PlaneState(
                name=opts.name,
                state_dir=str(state_dir),
                bin_dir=str(bin_dir),
                index=index,
                ports=ports,
                node=node_opts,
                created=time.time(),
                service_cidr=service_cidr or default_service_cidr(index),
            )
            st.save()
        plane = cls(st)
        try:
            plane._start_all(opts, say, t0)
        except (comp.ComponentDied, TimeoutError) as e:
            plane._stop_processes(_quiet)
            st.phase = "failed"
            st.save()
            raise PlaneError(
                f"{e}\nThe plane was stopped; its logs stay in {state_dir}/logs. "
                f"`hack/localkube down --name {opts.name}` removes them."
            ) from e
        except BaseException:
            plane._stop_processes(_quiet)  # Ctrl-C or a bug: leave no process behind
            st.phase = "failed"
            st.save()
            raise
        st.phase = "up"
        st.save()
        return plane

    def _start_all(self, opts: UpOptions, say: Say, t0: float) -> None:
        st = self.state
        net = st.network
        say(f"localkube: plane {st.name!r} (index {net.index}, services {net.service_cidr}) in {st.root}")
        pkimod.generate(
            self.pki, first_service_ip=net.first_service_ip, node_ip=net.bridge_ip, node_name=self.node_name
        )
        pkimod.write_kubeconfig(self.kubeconfig, self.server, self.pki, cluster=f"localkube-{st.name}")
        if realnode.is_real(st):
            realnode.prepare_bridges(st)
        for component in comp.CONTROL_PLANE:
            comp.spawn(st, component)
            if component == comp.KCM and nodes.runs_scheduler(st):
                comp.spawn(st, comp.SCHEDULER)  # both need only the API server: start them together
            comp.wait_healthy(st, component, opts.timeout)
            if component == comp.APISERVER:
                say(f"localkube: API ready at {self.server} in {time.monotonic() - t0:.1f} s")
        if nodes.runs_scheduler(st):
            comp.wait_healthy(st, comp.SCHEDULER, opts.timeout)
        say(f"localkube: controller manager healthy at {time.monotonic() - t0:.1f} s")
        specs = nodes.plane_nodes(st)
        if realnode.is_real(st):
            try:
                realnode.start_nodes(st, say, t0, opts.timeout)
            except realnode.RealNodeError as e:
                raise TimeoutError(str(e)) from e
            return
        for spec in specs:
            comp.spawn(st, spec.component)
        for spec in specs:
            comp.wait_healthy(st, spec.component, opts.timeout)
            say(f"localkube: node {spec.name} ({spec.pod_cidr}) Ready at {time.monotonic() - t0:.1f} s")
        if not specs and opts.node:
            say("localkube: no process node yet (hack/kubeplane/node/__main__.py missing); skipped")

    def down(self, say: Say = _quiet) -> float:
        """Stop everything recorded and remove the state dir. Returns the seconds it took.

        What is recorded is read again first: `localkube node stop|start`, run by another process while this
        object lived, records the processes it starts only in state.json (a node started that way outlived
        `down` before: its kubelet ran on, orphaned)."""
        t0 = time.monotonic()
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.state = PlaneState.load(self.state_dir)
        problems = self._stop_processes(say)
        left = [c for c, rec in self.state.processes.items() if comp.alive(rec)]
        if left:
            raise PlaneError(
                f"still running after SIGKILL: {', '.join(left)}; state kept in {self.state_dir}"
            )
        if problems:
            raise PlaneError("; ".join(problems) + f"; state kept in {self.state_dir}")
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if self.state_dir.exists():
            raise PlaneError(f"could not remove {self.state_dir}")
        return time.monotonic() - t0

    def _stop_processes(self, say: Say) -> list[str]:
        problems: list[str] = []
        procs = self.state.processes
        real_procs: list[str] = []
        if realnode.is_real(self.state):
            problems += realnode.stop_plane(self.state, say)
            real_procs = [c for c in procs if realnode.is_component(c)]
        node_procs = [c for c in procs if nodes.is_node_component(c)]
        # Nodes stop in parallel: each waits for its pods' graceful shutdown.
        with ThreadPoolExecutor(max_workers=max(1, len(node_procs))) as pool:
            outcomes = list(pool.map(lambda c: comp.terminate(procs[c]), node_procs))
        for component, outcome in zip(node_procs, outcomes, strict=True):
            say(f"localkube: {component} {outcome}")
        cleanup = None if real_procs else _node_cleanup()
        if cleanup is not None:
            for node_dir in self._node_dirs():
                try:
                    cleanup(node_dir)
                except Exception as e:  # noqa: BLE001 - report it, but still stop the control plane
                    problems.append(f"node cleanup of {node_dir} failed: {e!r}")
            if nodes.multi_node(self.state):
                problems += _delete_shared_bridge(self.state.network.bridge)
        order = [c for c in (comp.SCHEDULER,) if c in procs]
        order += [c for c in reversed(comp.CONTROL_PLANE) if c in procs]
        order += [c for c in procs if c not in order and c not in node_procs and c not in real_procs]
        for component in order:
            say(f"localkube: {component} {comp.terminate(procs[component])}")
        return problems

    def _node_dirs(self) -> list[Path]:
        specs = nodes.plane_nodes(self.state)
        return [s.state_dir(self.state_dir) for s in specs] if specs else [self.state_dir]

    # --- nodes: loss and return --------------------------------------------------------------------

    def _node(self, name: str) -> nodes.NodeSpec:
        spec = nodes.find_node(self.state, name)
        if spec is None:
            known = ", ".join(self.node_names) or "none"
            raise PlaneError(f"no node {name!r} in plane {self.name!r} (nodes: {known})")
        return spec

    def stop_node(self, name: str) -> str:
        """Lose a node as a machine would: kill -9 the node, then its pods' processes and netns.

        The Node and its pods stay in the API: the node's Lease lapses, the node-lifecycle controller
        marks it NotReady and taint-based eviction deletes its pods (their controllers recreate them
        on other nodes).
        """
        spec = self._node(name)
        if realnode.is_real(self.state):
            outcome = realnode.stop_node(self.state, spec, kubelet_grace=0.0)
            return "killed" if outcome != "not running" else outcome
        rec = self.state.processes.get(spec.component)
        outcome = "not running"
        if rec is not None and comp.alive(rec):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while comp.alive(rec) and time.monotonic() < deadline:
                time.sleep(0.05)
            outcome = "killed"
        cleanup = _node_cleanup()
        if cleanup is not None:
            cleanup(spec.state_dir(self.state_dir))
        return outcome

    def start_node(self, name: str, timeout: float = 60.0) -> float:
        """Start a stopped node again; returns seconds until it is Ready (and schedulable)."""
        spec = self._node(name)
        if realnode.is_real(self.state):
            return self._start_real_node(spec, timeout)
        rec = self.state.processes.get(spec.component)
        if rec is not None and comp.alive(rec):
            raise PlaneError(f"node {spec.name} is already running")
        since = time.time()
        comp.spawn(self.state, spec.component)
        t0 = time.monotonic()
        # The Node may still read Ready from before the loss: wait for a heartbeat of this process too.
        while not _lease_renewed_since(self.state, spec.name, since):
            if time.monotonic() - t0 > timeout:
                raise PlaneError(f"node {spec.name} renewed no Lease within {timeout:.0f} s; see its log")
            time.sleep(0.1)
        comp.wait_healthy(self.state, spec.component, max(1.0, timeout - (time.monotonic() - t0)))
        return time.monotonic() - t0

    def _start_real_node(self, spec: nodes.NodeSpec, timeout: float) -> float:
        rec = self.state.processes.get(realnode.kubelet_component(spec.name))
        if rec is not None and comp.alive(rec):
            raise PlaneError(f"node {spec.name} is already running")
        since, t0 = time.time(), time.monotonic()
        try:
            realnode.prepare_node(self.state, spec)
            realnode.start_containerd(self.state, spec, timeout)
            realnode.start_kubelet(self.state, spec)
            realnode.wait_node_ready(self.state, spec, timeout, since=since)
        except realnode.RealNodeError as e:
            raise PlaneError(str(e)) from e
        return time.monotonic() - t0

    # --- single components (tests that break the plane on purpose) ----------------------------------

    def stop(self, component: str, grace: float = 10.0) -> str:
        return comp.terminate(self._record(component), grace)

    def start(self, component: str, timeout: float = 60.0) -> float:
        if comp.alive(self._record(component)):
            raise PlaneError(f"{component} is already running")
        comp.spawn(self.state, component)
        return comp.wait_healthy(self.state, component, timeout)

    def restart(self, component: str, timeout: float = 60.0) -> float:
        self.stop(component)
        return self.start(component, timeout)

    def _record(self, component: str) -> ProcessRecord:
        if component not in self.state.processes:
            raise PlaneError(
                f"{component!r} is not a process of this plane ({', '.join(self.state.processes)})"
            )
        return self.state.processes[component]

    def status(self) -> dict[str, ComponentStatus]:
        out: dict[str, ComponentStatus] = {}
        for component, rec in self.state.processes.items():
            running = comp.alive(rec)
            out[component] = ComponentStatus(
                pid=rec.pid,
                running=running,
                healthy=running and comp.healthy(self.state, component),
                rss_kib=_rss_kib(rec.pid) if running else 0,
                log=rec.log,
            )
        return out


def _node_cleanup() -> Callable[[Path], object] | None:
    if not node_available():
        return None
    try:
        if importlib.util.find_spec("kubeplane.node.cleanup") is None:
            return None
        module = importlib.import_module("kubeplane.node.cleanup")
    except ImportError:
        return None
    fn = getattr(module, "cleanup", None)
    return fn if callable(fn) else None


def _lease_renewed_since(st: PlaneState, node: str, since: float) -> bool:
    status, body = comp.api_get(st, f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}")
    if status != 200:
        return False
    renew = json.loads(body).get("spec", {}).get("renewTime") or ""
    try:
        renewed = datetime.datetime.strptime(renew, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return False
    return renewed.timestamp() >= since - 1.0  # renewTime has microseconds; allow clock rounding


def _delete_shared_bridge(bridge: str) -> list[str]:
    """The bridge the nodes of a multi-node plane shared; no node removes it on its own."""
    try:
        from kubeplane.node import netns
    except ImportError:
        return []
    try:
        netns.delete_bridge(bridge)
    except Exception as e:  # noqa: BLE001 - report it with the other problems of `down`
        return [f"could not delete bridge {bridge}: {e!r}"]
    return [f"bridge {bridge} still exists"] if netns.link_exists(bridge) else []


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _check_no_stale_state(state_dir: Path, opts: UpOptions, say: Say) -> None:
    if not state_dir.exists():
        return
    down = f"hack/localkube down --name {opts.name}"
    if (state_dir / "state.json").is_file():
        old = Plane.load(state_dir)
        running = [c for c, rec in old.state.processes.items() if comp.alive(rec)]
        if opts.force:
            say(f"localkube: --force: taking down the previous plane in {state_dir}")
            old.down(say)
            return
        if running and old.state.phase == "up":
            raise PlaneError(f"plane {opts.name!r} is already up ({state_dir}); `{down}` first")
        raise PlaneError(
            f"stale state dir {state_dir} (a plane that crashed or was not taken down; "
            f"running: {', '.join(running) or 'nothing'}). Run `{down}` first, or `up --force`."
        )
    if opts.force:
        shutil.rmtree(state_dir)
        return
    raise PlaneError(f"{state_dir} exists but holds no state.json; remove it, run `{down}`, or `up --force`")
