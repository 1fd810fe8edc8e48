"""The state directory of one plane, its ports and network index, and process identity.

Invariant: state.json is the only record of what a plane owns. A process is ours only if its PID *and*
its /proc start time match what state.json recorded, so a recycled PID is never signalled. Each live
plane holds a distinct network index `i` (bridge dkbr<i>, 10.244.<i>.0/24) and a Service range that
overlaps no other live plane's (by default the i-th /20 of 10.96.0.0/12: 4,094 ClusterIPs; or
`--service-cidr`), allocated under a lock by scanning existing state dirs and bridges; each further node
of a plane holds one more index (its pod CIDR), recorded in state.json under node.nodes. Held by
test/unit/test_plane_state.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_ROOT = Path("/dev/shm")
STATE_PREFIX = "dask-operator-kube-"
LOCK_FILE = STATE_ROOT / "dask-operator-kube.lock"
MAX_INDEX = 255
# Services of all planes: one /20 per network index (256 x 4,096 addresses fill the /12), so a plane holds
# thousands of Services (one per Dask cluster and more) and side-by-side planes never share an address.
SERVICE_SUPERNET = ipaddress.ip_network("10.96.0.0/12")
SERVICE_PREFIX = 20
# What the API server accepts for a Service range, and what is useful: at least 14 ClusterIPs.
SERVICE_PREFIX_RANGE = (12, 28)


class ServiceRangeError(ValueError):
    pass


def default_service_cidr(index: int) -> str:
    """The index-th /20 of 10.96.0.0/12: 10.96.0.0/20, 10.96.16.0/20, ..., 10.111.240.0/20."""
    size = 1 << (32 - SERVICE_PREFIX)
    return f"{ipaddress.ip_address(int(SERVICE_SUPERNET.network_address) + index * size)}/{SERVICE_PREFIX}"


def legacy_service_cidr(index: int) -> str:
    """The /24 planes used before ranges were sized for thousands of Services (state.json without one)."""
    return f"10.96.{index}.0/24"


def parse_service_cidr(text: str) -> str:
    """An IPv4 network of /12 to /28 in canonical form, or ServiceRangeError saying what is wrong."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise ServiceRangeError(f"--service-cidr {text!r}: not a network address/prefix ({e})") from e
    lo, hi = SERVICE_PREFIX_RANGE
    if net.version != 4 or not lo <= net.prefixlen <= hi:
        raise ServiceRangeError(f"--service-cidr {text!r}: an IPv4 range from /{lo} to /{hi} is needed")
    return str(net)


def overlapping(cidr: str, others: dict[str, str]) -> list[str]:
    """Names (keys of `others`, name -> CIDR) whose range shares an address with `cidr`."""
    net = ipaddress.ip_network(cidr)
    return sorted(name for name, other in others.items() if net.overlaps(ipaddress.ip_network(other)))


def default_state_dir(name: str) -> Path:
    """`$LOCALKUBE_STATE` if set, else /dev/shm/dask-operator-kube-<name>."""
    env = os.environ.get("LOCALKUBE_STATE")
    return Path(env) if env else STATE_ROOT / f"{STATE_PREFIX}{name}"


@dataclass(frozen=True)
class Network:
    """Addresses derived from a plane's index; the process node builds its bridge from these."""

    index: int
    service_range: str = ""  # empty: default_service_cidr(index)

    @property
    def bridge(self) -> str:
        return f"dkbr{self.index}"

    @property
    def bridge_ip(self) -> str:
        return f"10.244.{self.index}.1"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def service_cidr(self) -> str:
        return self.service_range or default_service_cidr(self.index)

    @property
    def first_service_ip(self) -> str:
        """The `kubernetes` Service's ClusterIP: the range's first host (the API server's cert names it)."""
        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))

    @property
    def node_name(self) -> str:
        return f"localkube-{self.index}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "bridge": self.bridge,
            "bridge_ip": self.bridge_ip,
            "pod_cidr": self.pod_cidr,
            "service_cidr": self.service_cidr,
            "node_name": self.node_name,
        }


@dataclass
class ProcessRecord:
    """One process we started: enough to find it again, and to know it is still the same one."""

    pid: int
    start_time: int  # field 22 of /proc/<pid>/stat (clock ticks since boot)
    argv: list[str]
    log: str


@dataclass
class PlaneState:
    name: str
    state_dir: str
    bin_dir: str
    index: int
    ports: dict[str, int]
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    node: dict[str, Any] = field(default_factory=dict)  # node options (simulated, gpus); empty = no node
    created: float = 0.0
    phase: str = "starting"  # starting -> up | failed
    service_cidr: str = ""  # recorded at `up`; empty only in a state.json written before it was

    @property
    def network(self) -> Network:
        return Network(self.index, self.service_cidr or legacy_service_cidr(self.index))

    @property
    def root(self) -> Path:
        return Path(self.state_dir)

    @property
    def api_host(self) -> str:
        """Where the API server listens: loopback, or on a plane of real nodes the first node's bridge address,
        which pods (and the `kubernetes` Service's endpoints) reach as well as this host does."""
        return self.network.bridge_ip if self.node.get("runtime") == "containerd" else "127.0.0.1"

    @property
    def server(self) -> str:
        return f"https://{self.api_host}:{self.ports['apiserver']}"

    def network_indexes(self) -> set[int]:
        """The plane's own index and those its further nodes hold."""
        return {self.index, *(int(n["index"]) for n in self.node.get("nodes") or [])}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["network"] = self.network.as_dict()
        data["kubeconfig"] = str(self.root / "admin.kubeconfig")
        data["server"] = self.server
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlaneState:
        procs = {k: ProcessRecord(**v) for k, v in data.get("processes", {}).items()}
        return cls(
            name=data["name"],
            state_dir=data["state_dir"],
            bin_dir=data["bin_dir"],
            index=int(data["index"]),
            ports={k: int(v) for k, v in data["ports"].items()},
            processes=procs,
            node=dict(data.get("node", {})),
            created=float(data.get("created", 0.0)),
            phase=str(data.get("phase", "starting")),
            service_cidr=str(data.get("service_cidr", "")),
        )

    def save(self) -> None:
        path = self.root / "state.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)  # atomic: a crash never leaves a half-written state file

    @classmethod
    def load(cls, state_dir: Path) -> PlaneState:
        return cls.from_json(json.loads((state_dir / "state.json").read_text()))


# --- process identity -------------------------------------------------------------------------------


def proc_start_time(pid: int) -> int | None:
    """Start time of a live (non-zombie) process, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # state (field 3): a zombie is dead for our purposes
        return None
    return int(fields[19])  # field 22


def is_same_process(rec: ProcessRecord) -> bool:
    return proc_start_time(rec.pid) == rec.start_time


# --- ports --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def allocate_ports(names: list[str], taken: set[int], fixed: dict[str, int]) -> dict[str, int]:
    """Distinct free loopback ports; `taken` holds ports other planes recorded (they may be down)."""
    ports: dict[str, int] = {}
    for name in names:
        if name in fixed:
            ports[name] = fixed[name]
            continue
        while True:
            p = free_port()
            if p not in taken and p not in ports.values() and p not in fixed.values():
                ports[name] = p
                break
    return ports


# --- other planes and the network index -----------------------------------------------------------


def known_state_dirs(extra: Path | None = None) -> list[Path]:
    dirs = set(STATE_ROOT.glob(f"{STATE_PREFIX}*"))
    if extra is not None and extra.parent.is_dir():
        dirs.update(p for p in extra.parent.iterdir() if (p / "state.json").is_file())
    return sorted(d for d in dirs if (d / "state.json").is_file())


def other_planes(state_dir: Path) -> list[PlaneState]:
    planes = []
    for d in known_state_dirs(state_dir):
        if d.resolve() == state_dir.resolve():
            continue
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            planes.append(PlaneState.load(d))
    return planes


def allocate_index(state_dir: Path) -> tuple[int, set[int]]:
    """The lowest network index used by no other state dir and no existing dkbr<i> bridge.

    Returns it with the set of ports the other planes recorded. Call under `registry_lock()`.
    """
    indexes, ports = allocate_indexes(state_dir, 1)
    return indexes[0], ports


NET_DEVICES = Path("/sys/class/net")


def allocate_indexes(state_dir: Path, count: int, service_cidr: str = "") -> tuple[list[int], set[int]]:
    """`count` distinct free network indexes, as `allocate_index`: the plane's own (the lowest free)
    first, then its further nodes' from the top of the range, far from the planes' own indexes.

    The plane's own index is also one whose default Service range overlaps no other plane's; an
    explicit `service_cidr` that overlaps one is refused (ServiceRangeError)."""
    others = other_planes(state_dir)
    ranges = {p.name: p.network.service_cidr for p in others}
    if service_cidr and (clash := overlapping(service_cidr, ranges)):
        raise ServiceRangeError(
            f"--service-cidr {service_cidr} overlaps the Service range of plane(s) {', '.join(clash)}"
        )
    used = {i for p in others for i in p.network_indexes()}
    if NET_DEVICES.is_dir():  # bridges of planes whose state is gone (or another state root's)
        for link in NET_DEVICES.glob("dkbr*"):
            with contextlib.suppress(ValueError):
                used.add(int(link.name[4:]))
    ports = {port for p in others for port in p.ports.values()}
    free = [i for i in range(MAX_INDEX + 1) if i not in used]
    own = [i for i in free if service_cidr or not overlapping(default_service_cidr(i), ranges)]
    if own and len(free) >= count:
        rest = [i for i in free if i != own[0]]
        return [own[0], *reversed(rest[len(rest) - count + 1 :] if count > 1 else [])], ports
    raise RuntimeError(f"all {MAX_INDEX + 1} network indexes are in use; run `localkube down` on old planes")


@contextlib.contextmanager
def registry_lock() -> Iterator[None]:
    """Serialises index and port allocation between concurrent `up` calls."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
