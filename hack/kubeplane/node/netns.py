"""Host networking for pods: the bridge, one network namespace + veth per pod, ClusterIP addresses.

Invariant: every name created here is derived from the bridge name (netns `<bridge>-<uid8>`, host veth
`<bridge-index>v<uid8>`), so what a node made is recognisable; removal is idempotent (removing what is
already gone succeeds). A bridge's MAC address is set once, derived from its name (`bridge_mac`), so it never
changes: a Linux bridge left to itself takes the lowest MAC of its ports, and deleting that pod would move the
gateway's and the ClusterIPs' MAC under every other pod, cutting their traffic to the node (the Service proxy,
DNS) until their ARP entries expire, long enough for a proxied connection to time out; and a new pod's address
is forgotten in the node's neighbour table (it may be a deleted pod's, whose MAC the node would keep using).
Everything is done with `ip` (iproute2); it needs root. Held by test/e2e/test_process_node.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

ETC_NETNS = Path("/etc/netns")


class NetworkError(Exception):
    pass


def _ip(args: Sequence[str], stdin: str | None = None, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip"]
    if netns:
        argv += ["-n", netns]
    argv += list(args)
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {done.stderr.strip()} {stdin or ''}".strip())
    return done.stdout


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def pod_netns_name(bridge: str, uid: str) -> str:
    return f"{bridge}-{uid.replace('-', '')[:8]}"


def pod_veth_name(bridge: str, uid: str) -> str:
    index = bridge.removeprefix("dkbr")
    return f"dk{index}v{uid.replace('-', '')[:8]}"[:15]


def bridge_mac(bridge: str) -> str:
    """The bridge's fixed MAC: locally administered, unicast, from the bridge's name (the same on every node
    that shares the bridge)."""
    digest = hashlib.sha256(bridge.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _add_bridge(bridge: str) -> None:
    """A new bridge whose MAC is fixed from the start (see the module's invariant)."""
    _ip(["link", "add", bridge, "address", bridge_mac(bridge), "type", "bridge"])


def ensure_bridge(bridge: str, gateway: str, prefixlen: int) -> None:
    """Creates the bridge with the node IP; an existing one (a crashed run) is flushed and reused."""
    if link_exists(bridge):
        _ip(["addr", "flush", "dev", bridge])
        _ip(["link", "set", bridge, "address", bridge_mac(bridge)])
    else:
        _add_bridge(bridge)
    _ip(["addr", "add", f"{gateway}/{prefixlen}", "dev", bridge])
    _ip(["link", "set", bridge, "up"])


def join_bridge(bridge: str, gateway: str, prefixlen: int) -> None:
    """Adds this node's IP to a bridge other nodes share, creating it if this node is the first.

    Never flushes: the other nodes' IPs and the ClusterIPs on it stay.
    """
    if not link_exists(bridge):
        try:
            _add_bridge(bridge)
        except NetworkError:
            if not link_exists(bridge):  # another node created it meanwhile: that is fine
                raise
    _ip(["addr", "replace", f"{gateway}/{prefixlen}", "dev", bridge])
    _ip(["link", "set", bridge, "up"])


def delete_bridge(bridge: str) -> None:
    if link_exists(bridge):
        _ip(["link", "del", bridge], check=False)


def add_address(bridge: str, ip: str) -> None:
    _ip(["addr", "replace", f"{ip}/32", "dev", bridge])


def delete_address(bridge: str, ip: str) -> None:
    _ip(["addr", "del", f"{ip}/32", "dev", bridge], check=False)


def create_pod_network(
    netns: str,
    veth: str,
    bridge: str,
    ip: str,
    prefixlen: int,
    gateway: str,
    hosts: str,
    resolv: str,
    routed: tuple[tuple[str, str], ...] = (),
) -> None:
    """A fresh netns with `eth0` = ip on the bridge, loopback up and a default route via `gateway` (none when
    empty); `routed` adds (cidr, via) routes, e.g. the Service range through the node when there is no
    default route."""
    delete_pod_network(netns, veth)  # a leftover from a crash would make `netns add` fail
    etc = ETC_NETNS / netns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text(hosts)
    (etc / "resolv.conf").write_text(resolv)
    _ip(
        ["-b", "-"],
        stdin=(
            f"netns add {netns}\n"
            f"link add {veth} type veth peer name eth0 netns {netns}\n"
            f"link set {veth} master {bridge}\n"
            f"link set {veth} up\n"
            # The address may be a deleted pod's: forget that pod's MAC, or the node would keep sending this
            # pod's traffic (probes, proxied Service connections) to it until the entry expired.
            f"neigh flush to {ip}\n"
        ),
    )
    _ip(
        ["-b", "-"],
        netns=netns,
        stdin=(
            "link set lo up\n"
            f"addr add {ip}/{prefixlen} dev eth0\n"
            "link set eth0 up\n"
            + (f"route add default via {gateway} dev eth0\n" if gateway else "")
            + "".join(f"route add {cidr} via {via} dev eth0\n" for cidr, via in routed)
        ),
    )


def netns_pids(netns: str) -> list[int]:
    if not netns_exists(netns):
        return []
    out = _ip(["netns", "pids", netns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def delete_pod_network(netns: str, veth: str | None = None) -> None:
    if netns_exists(netns):
        _ip(["netns", "del", netns], check=False)
    if veth and link_exists(veth):
        _ip(["link", "del", veth], check=False)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(ETC_NETNS / netns)


def hosts_file(pod_ip: str, hostname: str, fqdn: str = "", extra: Sequence[tuple[str, str]] = ()) -> str:
    lines = [
        "# Kubernetes-managed hosts file (localkube process node).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pod_ip}\t{fqdn + chr(9) if fqdn else ''}{hostname}",
    ]
    lines += [f"{ip}\t{name}" for ip, name in extra]
    return "\n".join(lines) + "\n"


def resolv_file(nameserver: str, namespace: str, domain: str = "cluster.local") -> str:
    return (
        f"nameserver {nameserver}\nsearch {namespace}.svc.{domain} svc.{domain} {domain}\noptions ndots:5\n"
    )
