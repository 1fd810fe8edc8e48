"""Bring a plane up, take it down, stop and start its components.

Invariant: state.json is written before the first process starts and updated after each spawn, so
`down` can always find everything `up` started, even after `kill -9` of every process or of `up`
itself. `down` stops the node first (it owns pods, netns and the bridge), then the control plane in
reverse start order, and removes the state dir only once no recorded process is left.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kubeplane import components as comp
from kubeplane import pki as pkimod
from kubeplane.state import (
    PlaneState,
    ProcessRecord,
    allocate_index,
    allocate_ports,
    default_state_dir,
    port_is_free,
    registry_lock,
)

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.37.2")
ETCD_VERSION = os.environ.get("ETCD_VERSION", "v3.6.16")
REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "hack" / "build-control-plane.sh"
BINARIES = ("etcd", comp.APISERVER, comp.KCM)
PORT_NAMES = ["etcd", "etcd_peer", "apiserver", "kcm", "kubelet"]

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


def default_bin_dir() -> Path:
    cache = os.environ.get("DASK_OPERATOR_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dask-operator"
    )
    return Path(cache) / "control-plane" / f"k8s-{K8S_VERSION}_etcd-{ETCD_VERSION}" / "bin"


def resolve_bin_dir(explicit: Path | None = None) -> Path:
    """--bin-dir, else $DASK_OPERATOR_BIN, else the build script's cache dir; all binaries must exist."""
    env = os.environ.get("DASK_OPERATOR_BIN")
    bin_dir = explicit or (Path(env) if env else default_bin_dir())
    missing = [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise PlaneError(
            f"control-plane binaries missing in {bin_dir}: {', '.join(missing)}.\n"
            f"Build them once with {BUILD_SCRIPT} (it needs Go; cached afterwards, it prints the bin dir "
            "on its last line), or point DASK_OPERATOR_BIN / --bin-dir at an existing bin dir."
        )
    return bin_dir


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
        return f"https://127.0.0.1:{self.state.ports['apiserver']}"

    @property
    def pki(self) -> pkimod.PkiPaths:
        return pkimod.PkiPaths(self.state_dir / "pki")

    @property
    def node_name(self) -> str:
        return self.state.network.node_name

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
        fixed: dict[str, int] = {}
        if opts.apiserver_port is not None:
            if not port_is_free(opts.apiserver_port):
                raise PlaneError(
                    f"port 127.0.0.1:{opts.apiserver_port} is taken (see `ss -ltnp 'sport = :"
                    f"{opts.apiserver_port}'`); choose another --apiserver-port or omit it for a free one"
                )
            fixed["apiserver"] = opts.apiserver_port
        with registry_lock():
            index, taken = allocate_index(state_dir)
            ports = allocate_ports(PORT_NAMES, taken, fixed)
            state_dir.mkdir(parents=True)
            os.chmod(state_dir, 0o700)
            node_opts: dict[str, object] = {}
            if opts.node and node_available():
                node_opts = {"simulated": opts.simulated_node, "gpus": opts.gpus}
            st = PlaneState(
                name=opts.name,
                state_dir=str(state_dir),
                bin_dir=str(bin_dir),
                index=index,
                ports=ports,
                node=node_opts,
                created=time.time(),
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
            self.pki, first_service_ip=net.first_service_ip, node_ip=net.bridge_ip, node_name=net.node_name
        )
        pkimod.write_kubeconfig(self.kubeconfig, self.server, self.pki, cluster=f"localkube-{st.name}")
        for component in comp.CONTROL_PLANE:
            comp.spawn(st, component)
            comp.wait_healthy(st, component, opts.timeout)
            if component == comp.APISERVER:
                say(f"localkube: API ready at {self.server} in {time.monotonic() - t0:.1f} s")
        say(f"localkube: controller manager healthy at {time.monotonic() - t0:.1f} s")
        if st.node:
            comp.spawn(st, comp.NODE)
            comp.wait_healthy(st, comp.NODE, opts.timeout)
            say(f"localkube: node {net.node_name} Ready at {time.monotonic() - t0:.1f} s")
        elif opts.node:
            say("localkube: no process node yet (hack/kubeplane/node/__main__.py missing); skipped")

    def down(self, say: Say = _quiet) -> float:
        """Stop everything recorded and remove the state dir. Returns the seconds it took."""
        t0 = time.monotonic()
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
        if comp.NODE in procs:
            say(f"localkube: node {comp.terminate(procs[comp.NODE])}")
        cleanup = _node_cleanup()
        if cleanup is not None:
            try:
                cleanup(self.state_dir)
            except Exception as e:  # noqa: BLE001 - report it, but still stop the control plane
                problems.append(f"node cleanup failed: {e!r}")
        order = [c for c in reversed(comp.CONTROL_PLANE) if c in procs]
        order += [c for c in procs if c not in order and c != comp.NODE]
        for component in order:
            say(f"localkube: {component} {comp.terminate(procs[component])}")
        return problems

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
