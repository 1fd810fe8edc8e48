"""The Node object, its status, and the heartbeat (a Lease in kube-node-lease plus periodic status).

Invariant: the Node is Ready while this process runs: the Lease is renewed every 10 s (or the
configured heartbeat) and the status (conditions with lastHeartbeatTime) every 60 s; a failed renewal
is retried on the next tick and never stops the node. The InternalIP is the node IP on the bridge,
which is where the kubelet endpoint (logs) listens. Configured taints are set only when the Node is
created, as the kubelet's --register-with-taints: a restarted node keeps a cordon or taints set since.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import threading
import time
from typing import Any

from .context import NodeConfig
from .kubeapi import MERGE_PATCH, STRATEGIC_PATCH, ApiError, KubeClient
from .podstatus import rfc3339

log = logging.getLogger(__name__)

JSON = dict[str, Any]
LEASE_SECONDS = 40
LEASE_EVERY = 10.0
STATUS_EVERY = 60.0
KUBELET_VERSION = "v1.37.2-localkube"


def micro_time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def memory_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


def node_labels(cfg: NodeConfig) -> dict[str, str]:
    return {
        "kubernetes.io/hostname": cfg.node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64" if platform.machine() in ("x86_64", "amd64") else platform.machine(),
        "node.kubernetes.io/instance-type": "localkube-simulated" if cfg.simulated else "localkube-process",
        **dict(cfg.labels),
    }


def node_taints(cfg: NodeConfig) -> list[JSON]:
    return [{"key": k, "effect": e, **({"value": v} if v else {})} for k, v, e in cfg.taints]


SIMULATED_MAX_PODS = 30_000


def capacity(cfg: NodeConfig) -> dict[str, str]:
    st = os.statvfs(cfg.state_dir)
    cap = {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_kib()}Ki",
        # Simulated pods cost no process and take addresses from a /16 (65,534): room for the pods of
        # 1,000+ clusters next to 10,000 unrelated ones. Real pods share the node's /24.
        "pods": str(SIMULATED_MAX_PODS) if cfg.simulated else "250",
        "ephemeral-storage": f"{st.f_blocks * st.f_frsize // 1024}Ki",
    }
    if cfg.gpus:
        cap["nvidia.com/gpu"] = str(cfg.gpus)
    cap.update(dict(cfg.capacity))
    return cap


def node_status(cfg: NodeConfig, now: float, started: float) -> JSON:
    beat = rfc3339(now)
    since = rfc3339(started)

    def cond(ctype: str, status: str, reason: str, message: str) -> JSON:
        return {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": beat,
            "lastTransitionTime": since,
        }

    cap = capacity(cfg)
    return {
        "conditions": [
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "localkube process node is posting ready status"),
        ],
        "addresses": [
            {"type": "InternalIP", "address": cfg.node_ip},
            {"type": "Hostname", "address": cfg.node_name},
        ],
        "capacity": cap,
        "allocatable": dict(cap),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.kubelet_port}},
        "nodeInfo": {
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": platform.release(),
            "osImage": "localkube process node",
            "containerRuntimeVersion": "process://1.0",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": node_labels(cfg)["kubernetes.io/arch"],
        },
        "phase": "Running",
    }


class Registration:
    def __init__(self, cfg: NodeConfig, client: KubeClient) -> None:
        self.cfg = cfg
        self.client = client
        self.started = time.time()
        self.node_uid = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def register(self) -> None:
        body: JSON = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.cfg.node_name, "labels": node_labels(self.cfg)},
            "spec": {"podCIDR": self.cfg.pod_cidr, "podCIDRs": [self.cfg.pod_cidr]},
        }
        if self.cfg.taints:
            body["spec"]["taints"] = node_taints(self.cfg)
        path = f"/api/v1/nodes/{self.cfg.node_name}"
        try:
            node = self.client.request("POST", "/api/v1/nodes", body=body)
        except ApiError as e:
            if e.status != 409:
                raise
            node = self.client.request(
                "PATCH", path, body={"metadata": {"labels": node_labels(self.cfg)}}, content_type=MERGE_PATCH
            )
        self.node_uid = node["metadata"]["uid"]
        self._post_status()
        self._renew_lease()

    def _post_status(self) -> None:
        self.client.request(
            "PATCH",
            f"/api/v1/nodes/{self.cfg.node_name}/status",
            body={"status": node_status(self.cfg, time.time(), self.started)},
            content_type=STRATEGIC_PATCH,
        )

    def _renew_lease(self) -> None:
        ns_path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
        now = micro_time(time.time())
        spec = {"holderIdentity": self.cfg.node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now}
        try:
            self.client.request(
                "PATCH", f"{ns_path}/{self.cfg.node_name}", body={"spec": spec}, content_type=MERGE_PATCH
            )
        except ApiError as e:
            if e.status != 404:
                raise
            owner = {"apiVersion": "v1", "kind": "Node", "name": self.cfg.node_name, "uid": self.node_uid}
            self.client.request(
                "POST",
                ns_path,
                body={
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.cfg.node_name, "ownerReferences": [owner]},
                    "spec": spec,
                },
            )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        last_status = time.monotonic()
        while not self._stop.wait(min(LEASE_EVERY, self.cfg.heartbeat_seconds)):
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= STATUS_EVERY:
                    self._post_status()
                    last_status = time.monotonic()
            except ApiError as e:
                log.warning("heartbeat failed: %s", e)
