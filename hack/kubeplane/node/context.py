"""The node's configuration and the shared services every pod runtime uses.

Invariant: `NodeConfig` is immutable and derived only from command-line flags; everything mutable the
pod runtimes share (API client, IPAM, log pump, resource record) hangs off one `NodeContext`.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ipam import IPAM
from .kubeapi import ApiError, KubeClient
from .logfiles import LogPump
from .resources import ResourceRecord

JSON = dict[str, Any]

SIMULATED_ANNOTATION = "localkube/simulated"
BACKOFF_ANNOTATION = "localkube/restart-backoff-seconds"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class NodeConfig:
    state_dir: Path
    kubeconfig: str
    node_name: str
    bridge: str
    pod_cidr: str
    service_cidr: str
    kubelet_port: int
    kubelet_cert: str
    kubelet_key: str
    client_ca: str
    simulated: bool = False
    gpus: int = 0
    cluster_domain: str = "cluster.local"
    # Several nodes on one plane: they share the bridge (created by whichever starts first, removed by
    # `localkube down`), and pods reach every node's pods on-link inside `cluster_cidr`.
    shared_bridge: bool = False
    cluster_cidr: str = ""
    # Where the nodes of a plane pass each other the Service connections of their own pods (handover.py).
    handover_dir: Path | None = None
    self_bind: bool = True  # False while kube-scheduler places pods
    heartbeat_seconds: float = 10.0
    labels: tuple[tuple[str, str], ...] = ()
    taints: tuple[tuple[str, str, str], ...] = ()  # (key, value, effect)
    capacity: tuple[tuple[str, str], ...] = ()  # overrides of what the machine reports

    @property
    def node_ip(self) -> str:
        return str(next(ipaddress.ip_network(self.pod_cidr, strict=False).hosts()))

    @property
    def node_prefixlen(self) -> int:
        """The prefix of the node IP on the bridge: this node's pod CIDR."""
        return ipaddress.ip_network(self.pod_cidr, strict=False).prefixlen

    @property
    def prefixlen(self) -> int:
        """The prefix of a pod's address: on-link to every node's pods (the cluster CIDR, if any)."""
        return ipaddress.ip_network(self.cluster_cidr or self.pod_cidr, strict=False).prefixlen

    @property
    def routable_pod_cidr(self) -> str:
        """Pod IPs that live on this host's bridge: the cluster CIDR, else this node's pod CIDR."""
        return self.cluster_cidr or self.pod_cidr

    @property
    def simulated_cidr(self) -> str:
        """Addresses for simulated pods (no process, no netns), routed into the bridge: one range per node,
        keyed by the pod CIDR's third octet (the node's network index), so nodes sharing a bridge differ.

        Planes take indexes from 0 up: 10.<128+i>.0.0/16. Further nodes take them from 255 down: a /17 of the
        shared address space 100.64.0.0/10, never 10.254-255.x.x, where hosts keep their resolvers (routing
        those into a bridge cut this machine's DNS while a 3-node plane was up).
        """
        index = int(str(ipaddress.ip_network(self.pod_cidr, strict=False).network_address).split(".")[2])
        if index < 128:
            return f"10.{128 + index}.0.0/16"
        j = index - 128
        return f"100.{64 + j // 2}.{(j % 2) * 128}.0/17"

    @property
    def work_dir(self) -> Path:
        return self.state_dir / "node"

    @property
    def pods_dir(self) -> Path:
        return self.work_dir / "pods"


def venv_bin() -> str:
    """The project's Python environment: its bin directory goes first on every container's PATH."""
    return str(Path(sys.prefix) / "bin")


def container_path(user_path: str | None) -> str:
    parts = [venv_bin()]
    parts += (user_path or SYSTEM_PATH).split(":")
    seen: list[str] = []
    for p in parts:
        if p and p not in seen:
            seen.append(p)
    return ":".join(seen)


class NodeContext:
    def __init__(self, cfg: NodeConfig, client: KubeClient, record: ResourceRecord, pump: LogPump) -> None:
        self.cfg = cfg
        self.client = client
        self.record = record
        self.pump = pump
        self.ipam = IPAM(cfg.pod_cidr)
        self.simulated_ipam = IPAM(cfg.simulated_cidr, reserve_gateway=False)
        # Set by the node once the service informer runs: namespace -> docker-link variables.
        self.service_env: Callable[[str], Mapping[str, str]] = lambda ns: {}
        self.allocatable: dict[str, str] = {"cpu": str(os.cpu_count() or 1)}
        self.default_route = True  # off when the host forwards IP: pods must not reach beyond the machine
        self.event: Callable[..., None] = lambda pod, reason, message, kind="Normal": None

    def configmap(self, ns: str, name: str) -> dict[str, str] | None:
        try:
            obj = self.client.get(f"/api/v1/namespaces/{ns}/configmaps/{name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        data = dict(obj.get("data") or {})
        for k, v in (obj.get("binaryData") or {}).items():
            data[k] = base64.b64decode(v).decode(errors="replace")
        return data

    def secret(self, ns: str, name: str) -> dict[str, str] | None:
        try:
            obj = self.client.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        out = {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
        out.update(obj.get("stringData") or {})
        return out


def pod_key(pod: JSON) -> str:
    m = pod["metadata"]
    return f"{m['namespace']}/{m['name']}"


def is_simulated(cfg: NodeConfig, pod: JSON) -> bool:
    ann = pod["metadata"].get("annotations") or {}
    return cfg.simulated or str(ann.get(SIMULATED_ANNOTATION, "")).lower() == "true"
