"""hack/kubeplane/realnode_config.py: what containerd, the kubelet, CNI and kube-proxy of a real node are told."""

from __future__ import annotations

import tomllib
from pathlib import Path

from kubeplane.nodes import heartbeat_seconds
from kubeplane.realnode_config import (
    RealNodeLayout,
    cni_conflist,
    containerd_toml,
    kube_proxy_config,
    kubelet_config,
    pull_policy_objects,
)


def node(name: str, index: int) -> RealNodeLayout:
    return RealNodeLayout(
        plane="p",
        name=name,
        root=Path(f"/dev/shm/plane/realnodes/{name}"),
        node_ip=f"10.244.{index}.1",
        bridge=f"dkbr{index}",
        pod_cidr=f"10.244.{index}.0/24",
        kubelet_port=10250,
        bin_dir=Path("/cache/node/bin"),
        cni_bin_dir=Path("/cache/node/cni"),
        sandbox_image="registry.k8s.io/pause:3.10.2",
    )


def paths_in(value: object) -> list[str]:
    if isinstance(value, dict):
        return [p for v in value.values() for p in paths_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in paths_in(v)]
    return [value] if isinstance(value, str) and value.startswith("/") else []


def test_everything_a_node_writes_is_under_its_own_directory() -> None:
    a = node("a", 3)
    written = [
        *paths_in({k: v for k, v in tomllib.loads(containerd_toml(a)).items()}),
        *paths_in(cni_conflist(a)["plugins"][0]["ipam"]),
        *paths_in(kubelet_config(a, Path("/dev/shm/plane/pki/ca.crt"), a.node_ip)),
    ]
    reads = ("/cache/node/", "/dev/shm/plane/pki/", "/localkube-p-a")
    assert written
    for path in written:
        assert path.startswith(str(a.root) + "/") or path.startswith(reads), path


def test_two_nodes_share_no_socket_root_bridge_or_cgroup() -> None:
    a, b = node("a", 3), node("b", 4)
    ca, cb = tomllib.loads(containerd_toml(a)), tomllib.loads(containerd_toml(b))
    for key in ("root", "state", "temp"):
        assert ca[key] != cb[key]
    grpc = lambda c: c["plugins"]["io.containerd.server.v1.grpc"]["address"]
    assert grpc(ca) == str(a.containerd_socket) and grpc(cb) == str(b.containerd_socket)
    runc = lambda c: c["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["runc"]["options"]
    assert runc(ca)["Root"] != runc(cb)["Root"]
    assert cni_conflist(a)["plugins"][0]["bridge"] != cni_conflist(b)["plugins"][0]["bridge"]
    assert a.cgroup_root != b.cgroup_root


def test_the_kubelet_runs_on_cgroup_v1_with_cgroupfs_and_serves_on_its_node_ip() -> None:
    a = node("a", 3)
    cfg = kubelet_config(a, Path("/ca.crt"), a.node_ip)
    assert cfg["failCgroupV1"] is False
    assert cfg["cgroupDriver"] == "cgroupfs"
    assert cfg["cgroupRoot"] == "/localkube-p-a"
    assert cfg["address"] == "10.244.3.1"
    assert cfg["readOnlyPort"] == 0 and cfg["healthzPort"] == 0
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["clusterDNS"] == ["10.244.3.1"]
    assert cfg["containerRuntimeEndpoint"] == f"unix://{a.containerd_socket}"


def test_the_kubelet_renews_its_lease_at_the_planes_heartbeat() -> None:
    a = node("a", 3)
    default = kubelet_config(a, Path("/ca.crt"), a.node_ip)
    assert default["nodeLeaseDurationSeconds"] == 40 and default["nodeStatusUpdateFrequency"] == "10s"
    # A 12 s node-monitor grace period: the Lease is renewed every 3 s (a quarter of its 12 s duration).
    short = kubelet_config(a, Path("/ca.crt"), a.node_ip, heartbeat_seconds(12.0))
    assert short["nodeLeaseDurationSeconds"] == 12 and short["nodeStatusUpdateFrequency"] == "3s"


def test_containerd_uses_the_pause_image_built_here_and_runc_with_cgroupfs() -> None:
    cfg = tomllib.loads(containerd_toml(node("a", 3)))
    assert cfg["version"] == 4
    assert (
        cfg["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
        == "registry.k8s.io/pause:3.10.2"
    )
    runtime = cfg["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert runtime["cni"]["bin_dirs"] == ["/cache/node/cni"]


def test_kube_proxy_programs_iptables_for_the_cluster_cidr() -> None:
    cfg = kube_proxy_config(Path("/k"), "n", "10.244.0.0/16", 1, 2)
    assert cfg["mode"] == "iptables"
    assert cfg["clusterCIDR"] == "10.244.0.0/16"
    assert cfg["healthzBindAddress"] == "127.0.0.1:1"


def test_imported_images_are_never_pulled_and_others_are_left_alone() -> None:
    (policy_path, policy), (binding_path, binding) = pull_policy_objects(["ghcr.io/dask/dask:latest"])
    assert policy_path.endswith("/mutatingadmissionpolicies") and binding_path.endswith(
        "/mutatingadmissionpolicybindings"
    )
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    expression = policy["spec"]["mutations"][0]["applyConfiguration"]["expression"]
    assert 'c.image in ["ghcr.io/dask/dask:latest"]' in expression
    assert 'imagePullPolicy: "IfNotPresent"' in expression
    assert policy["spec"]["failurePolicy"] == "Ignore", "a broken policy must never block pod creation"
