"""What a real node's upstream programs are told: containerd's TOML, the kubelet's and kube-proxy's
configuration files, and the CNI network list. Pure functions of a node's layout.

Invariant: everything a node writes lives under its own directories (containerd root/state/socket, runc
root, kubelet root, pod logs, CNI IPAM data, cgroup root `/localkube-<plane>-<node>`), so two nodes on one
host never see, or garbage-collect, each other's containers; the kubelet is told the cgroup v1 facts of
this machine (cgroupfs driver, `failCgroupV1: false`) and serves on its node IP only. Held by
test/unit/test_realnode_config.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class RealNodeLayout:
    """Where one real node keeps everything, and the addresses it answers on."""

    plane: str
    name: str
    root: Path  # the node's directory; nothing of the node lives outside it but its cgroups
    node_ip: str  # the node's bridge address, its InternalIP and its kubelet's bind address
    bridge: str
    pod_cidr: str
    kubelet_port: int
    bin_dir: Path  # kubelet, containerd, runc, crictl, ...
    cni_bin_dir: Path
    sandbox_image: str

    @property
    def containerd_dir(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_socket(self) -> Path:
        """In the node's directory itself: unix socket paths (and `.ttrpc` after them) stop at 104 bytes."""
        return self.root / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.containerd_dir / "config.toml"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet-config.yaml"

    @property
    def pod_logs_dir(self) -> Path:
        return self.root / "pod-logs"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def serving_crt(self) -> Path:
        return self.root / "kubelet.crt"

    @property
    def serving_key(self) -> Path:
        return self.root / "kubelet.key"

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroupRoot: kubepods and every pod cgroup of this node live below it."""
        return f"/localkube-{self.plane}-{self.name}"

    @property
    def runtime_endpoint(self) -> str:
        return f"unix://{self.containerd_socket}"


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for the characters used here


def containerd_toml(node: RealNodeLayout) -> str:
    """containerd 2.4 (config version 4): own root, state, sockets and runc root; CRI with our CNI and pause."""
    d = node.containerd_dir
    s = _toml_str
    return f"""version = 4
root = {s(str(d / "root"))}
state = {s(str(d / "state"))}
temp = {s(str(d / "tmp"))}

[plugins."io.containerd.server.v1.grpc"]
  address = {s(str(node.containerd_socket))}

[plugins."io.containerd.server.v1.ttrpc"]
  address = {s(str(node.containerd_socket) + ".ttrpc")}

[plugins."io.containerd.server.v1.debug"]
  address = ""

[plugins."io.containerd.server.v1.metrics"]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {s(str(d / "opt"))}

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = {s(node.sandbox_image)}

[plugins."io.containerd.cri.v1.runtime"]
  # Pod network namespaces under the node's state, not /var/run/netns: `down` finds them there.
  netns_mounts_under_state_dir = true
  # This machine withholds CAP_SYS_RESOURCE: no process may lower its oom_score_adj (pause asks for -998).
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = {s(str(node.bin_dir / "runc"))}
        Root = {s(str(d / "runc"))}
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{s(str(node.cni_bin_dir))}]
    conf_dir = {s(str(node.cni_conf_dir))}
    max_conf_num = 1
"""


def cni_conflist(node: RealNodeLayout) -> dict[str, Any]:
    """A bridge on the node's own Linux bridge, host-local addresses from its pod CIDR, and port mappings."""
    return {
        "cniVersion": "1.0.0",
        "name": f"localkube-{node.plane}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": node.bridge,
                "isGateway": True,
                # Pods of different nodes see each other's addresses: only traffic leaving the cluster CIDR
                # is masqueraded, by one plane-wide rule (realnode.egress_rule), not per node subnet.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.node_ip}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node.cni_ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(
    node: RealNodeLayout, client_ca: Path, cluster_dns: str, heartbeat_seconds: float = 10.0
) -> dict[str, Any]:
    """KubeletConfiguration: cgroupfs on cgroup v1, serving on the node IP with the plane's CA for clients.

    The node renews its Lease every `heartbeat_seconds` (the kubelet renews at a quarter of the Lease's
    duration) and posts its status as often: a plane with a short node-monitor grace period must not see
    a healthy node go NotReady between two renewals.
    """
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.node_ip,
        "port": node.kubelet_port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "tlsCertFile": str(node.serving_crt),
        "tlsPrivateKeyFile": str(node.serving_key),
        # The API server presents a client certificate from the plane's CA (exec, logs, port-forward).
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": node.runtime_endpoint,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "cgroupsPerQOS": True,
        "failCgroupV1": False,  # this machine has cgroup v1 only (KEP-5573)
        "failSwapOn": False,
        "podCIDR": node.pod_cidr,
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [cluster_dns],
        "podLogsDir": str(node.pod_logs_dir),
        "staticPodPath": "",
        "serializeImagePulls": False,
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": False,
        # Several nodes share one disk: only a nearly full one evicts.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "enforceNodeAllocatable": ["pods"],
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "shutdownGracePeriod": "0s",
        "nodeStatusUpdateFrequency": f"{heartbeat_seconds:g}s",
        "nodeLeaseDurationSeconds": max(4, round(heartbeat_seconds * 4)),
    }


def kube_proxy_config(
    kubeconfig: Path, hostname: str, cluster_cidr: str, healthz_port: int, metrics_port: int
) -> dict[str, Any]:
    """iptables mode for the whole host: every node of the plane shares the host's network namespace."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": hostname,
        "clusterCIDR": cluster_cidr,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # NodePorts on 127.0.0.1 would need route_localnet=1 host-wide and a KUBE-FIREWALL chain: not here.
        "iptables": {"localhostNodePorts": False},
        # No conntrack table changes on a shared machine.
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


PULL_POLICY = "localkube-imported-images"


def pull_policy_objects(images: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """A MutatingAdmissionPolicy (and its binding) setting `imagePullPolicy: IfNotPresent` on every container
    naming one of `images`: there is no registry, and a `:latest` image defaults to Always (the Python
    KubeCluster's default spec, `kubectl create deployment`). Images not imported here are left alone."""
    listed = ", ".join(json.dumps(i) for i in images)
    keep = (
        "Object{spec: Object.spec{containers: object.spec.containers"
        f".filter(c, c.image in [{listed}])"
        '.map(c, Object.spec.containers{name: c.name, imagePullPolicy: "IfNotPresent"})}}'
    )
    base = "/apis/admissionregistration.k8s.io/v1"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": PULL_POLICY},
        "spec": {
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ]
            },
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "Never",
            "mutations": [{"patchType": "ApplyConfiguration", "applyConfiguration": {"expression": keep}}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": PULL_POLICY},
        "spec": {"policyName": PULL_POLICY},
    }
    return [
        (f"{base}/mutatingadmissionpolicies", policy),
        (f"{base}/mutatingadmissionpolicybindings", binding),
    ]
