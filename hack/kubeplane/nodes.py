"""The process nodes of a plane: their names, networks, labels, taints and capacity, and their argv.

Invariant: node 0 is the plane's own network (`localkube-<i>`, 10.244.<i>.0/24, bridge dkbr<i>), so a
one-node plane is exactly what it always was. Every further node holds a network index of its own
(recorded in state.json, so no other plane takes it) for its pod CIDR and node IP, and all nodes of a
plane share the bridge dkbr<i>: pods get an on-link route to 10.244.0.0/16 and reach each other over
the bridge with IP forwarding still off; their Service proxies pass each other their pods' connections
through unix sockets in the plane's `proxy/` directory. Per-node settings come from flags `NODE=...`, where NODE is
a node name or its ordinal (0 for the first). Held by test/unit/test_plane_nodes.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubeplane.state import Network, PlaneState

NODE = "node"  # the process key of the first node (kept from the one-node plane)
CLUSTER_CIDR = "10.244.0.0/16"  # every node's pod CIDR lies inside it
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?")
CAPACITY_KEYS = ("cpu", "memory", "pods", "ephemeral-storage", "nvidia.com/gpu")


class NodeFlagError(ValueError):
    """A --node-* flag the user must fix; the message names the flag and the expected form."""


@dataclass(frozen=True)
class NodeSpec:
    name: str
    index: int  # network index: pod CIDR 10.244.<index>.0/24, node IP 10.244.<index>.1
    ordinal: int  # 0 for the plane's first node
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)
    capacity: dict[str, str] = field(default_factory=dict)

    @property
    def component(self) -> str:
        """The process key in state.json and the log file name."""
        return NODE if self.ordinal == 0 else f"{NODE}-{self.name}"

    @property
    def network(self) -> Network:
        return Network(self.index)

    @property
    def pod_cidr(self) -> str:
        return self.network.pod_cidr

    def state_dir(self, plane_root: Path) -> Path:
        """Node 0 keeps the plane's state dir (as before); others get their own under nodes/."""
        return plane_root if self.ordinal == 0 else plane_root / "nodes" / self.name

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "ordinal": self.ordinal,
            "labels": dict(self.labels),
            "taints": [dict(t) for t in self.taints],
            "capacity": dict(self.capacity),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeSpec:
        return cls(
            name=str(data["name"]),
            index=int(data["index"]),
            ordinal=int(data["ordinal"]),
            labels=dict(data.get("labels") or {}),
            taints=[dict(t) for t in data.get("taints") or []],
            capacity=dict(data.get("capacity") or {}),
        )


# --- flags ------------------------------------------------------------------------------------------


def parse_labels(text: str) -> dict[str, str]:
    """`k=v,k2=v2` -> dict (a value may be empty)."""
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise NodeFlagError(f"label {item!r}: expected key=value")
        out[key] = value
    return out


def parse_taints(text: str) -> list[dict[str, str]]:
    """`key[=value]:Effect,...` (kubectl taint syntax) -> Node spec.taints entries."""
    out: list[dict[str, str]] = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        kv, colon, effect = item.rpartition(":")
        if not colon or effect not in TAINT_EFFECTS or not kv:
            raise NodeFlagError(f"taint {item!r}: expected key[=value]:Effect, Effect one of {TAINT_EFFECTS}")
        key, _, value = kv.partition("=")
        taint = {"key": key, "effect": effect}
        if value:
            taint["value"] = value
        out.append(taint)
    return out


def parse_capacity(text: str) -> dict[str, str]:
    out = parse_labels(text)
    unknown = [k for k in out if k not in CAPACITY_KEYS]
    if unknown:
        raise NodeFlagError(f"capacity {', '.join(unknown)}: known resources are {', '.join(CAPACITY_KEYS)}")
    return out


def split_selector(flag: str, value: str) -> tuple[str, str]:
    """`NODE=rest` -> (NODE, rest); NODE is a node name or ordinal."""
    node, eq, rest = value.partition("=")
    if not eq or not node:
        raise NodeFlagError(f"{flag} {value!r}: expected NODE=..., NODE a node name or ordinal (0 = first)")
    return node, rest


def node_names(count: int, plane_index: int, explicit: Sequence[str] = ()) -> list[str]:
    """Given names, else `localkube-<i>` (the one-node plane's name) then `localkube-<i>-<ordinal>`."""
    if explicit and len(explicit) != count:
        raise NodeFlagError(f"--node-names names {len(explicit)} nodes but --nodes is {count}")
    first = Network(plane_index).node_name
    names = list(explicit) or [first, *(f"{first}-{k}" for k in range(1, count))]
    bad = [n for n in names if not NODE_NAME.fullmatch(n)]
    if bad:
        raise NodeFlagError(f"node names must be DNS labels (a-z, 0-9, '-', '.'): {', '.join(bad)}")
    if len(set(names)) != len(names):
        raise NodeFlagError(f"node names must be distinct: {', '.join(names)}")
    return names


def build_specs(
    indexes: Sequence[int],
    names: Sequence[str],
    labels: Sequence[str] = (),
    taints: Sequence[str] = (),
    capacity: Sequence[str] = (),
) -> list[NodeSpec]:
    """One spec per node from the repeated `--node-labels/--node-taints/--node-capacity NODE=...` flags."""
    per: list[dict[str, Any]] = [{"labels": {}, "taints": [], "capacity": {}} for _ in names]

    def target(flag: str, value: str) -> tuple[dict[str, Any], str]:
        node, rest = split_selector(flag, value)
        if node.isdigit() and int(node) < len(names):
            return per[int(node)], rest
        if node in names:
            return per[names.index(node)], rest
        raise NodeFlagError(
            f"{flag} {value!r}: no node {node!r} (nodes: 0..{len(names) - 1}, {', '.join(names)})"
        )

    for value in labels:
        slot, rest = target("--node-labels", value)
        slot["labels"].update(parse_labels(rest))
    for value in taints:
        slot, rest = target("--node-taints", value)
        slot["taints"].extend(parse_taints(rest))
    for value in capacity:
        slot, rest = target("--node-capacity", value)
        slot["capacity"].update(parse_capacity(rest))
    return [
        NodeSpec(name=n, index=i, ordinal=k, **per[k])
        for k, (n, i) in enumerate(zip(names, indexes, strict=True))
    ]


# --- a plane's nodes --------------------------------------------------------------------------------


def plane_nodes(st: PlaneState) -> list[NodeSpec]:
    """The nodes recorded in state.json; a plane from before multi-node support has one."""
    if not st.node:
        return []
    recorded = st.node.get("nodes")
    if recorded:
        return [NodeSpec.from_json(d) for d in recorded]
    return [NodeSpec(name=st.network.node_name, index=st.index, ordinal=0)]


def is_node_component(component: str) -> bool:
    return component == NODE or component.startswith(f"{NODE}-")


def spec_for(st: PlaneState, component: str) -> NodeSpec:
    for spec in plane_nodes(st):
        if spec.component == component:
            return spec
    raise KeyError(f"no node process {component!r} in this plane")


def find_node(st: PlaneState, name: str) -> NodeSpec | None:
    return next((s for s in plane_nodes(st) if s.name == name or str(s.ordinal) == name), None)


def multi_node(st: PlaneState) -> bool:
    return len(plane_nodes(st)) > 1


def runs_scheduler(st: PlaneState) -> bool:
    return bool(st.node.get("scheduler"))


def grace_period(st: PlaneState) -> float | None:
    """The plane's node-monitor grace period in seconds, when it was given one (`--node-monitor-grace-period`)."""
    grace = st.node.get("node_monitor_grace_period")
    return None if grace is None else float(grace)


def heartbeat_seconds(grace_seconds: float | None) -> float:
    """How often a node renews its Lease: the kubelet's 10 s, or a quarter of a shorter grace period."""
    if grace_seconds is None:
        return 10.0
    return max(1.0, min(10.0, grace_seconds / 4))


def handover_dir(plane_root: Path) -> Path:
    """Where each node's unix socket takes the Service connections of its pods that another node accepted."""
    return plane_root / "proxy"


def _replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    prefix = f"--{flag}="
    return [f"{prefix}{value}" if a.startswith(prefix) else a for a in argv]


def node_argv(st: PlaneState, component: str, base: list[str]) -> list[str]:
    """The first node's argv (`base`, from components.node_argv) adapted to node `component`."""
    spec = spec_for(st, component)
    argv = list(base)
    argv = _replace_flag(argv, "node-name", spec.name)
    argv = _replace_flag(argv, "pod-cidr", spec.pod_cidr)
    argv = _replace_flag(argv, "state-dir", str(spec.state_dir(st.root)))
    if multi_node(st):
        argv += [
            "--shared-bridge",
            f"--cluster-cidr={CLUSTER_CIDR}",
            f"--proxy-handover-dir={handover_dir(st.root)}",
        ]
    if runs_scheduler(st):
        argv.append("--no-bind")
    grace = grace_period(st)
    if grace is not None:
        argv.append(f"--heartbeat-seconds={heartbeat_seconds(grace)}")
    argv += [f"--label={k}={v}" for k, v in spec.labels.items()]
    for t in spec.taints:
        kv = f"{t['key']}={t['value']}" if t.get("value") else t["key"]
        argv.append(f"--taint={kv}:{t['effect']}")
    argv += [f"--capacity={k}={v}" for k, v in spec.capacity.items()]
    return argv
