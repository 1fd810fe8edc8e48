"""Pure parts of a plane's nodes (hack/kubeplane/nodes.py, state.py): flags, names, networks, argv."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from kubeplane import components as comp
from kubeplane import nodes, state
from kubeplane.node.__main__ import parse_args
from kubeplane.node.context import NodeConfig
from kubeplane.node.registration import capacity, node_labels, node_taints
from kubeplane.state import PlaneState


def plane(tmp_path: Path, specs: list[nodes.NodeSpec], **node_opts: object) -> PlaneState:
    return PlaneState(
        name="t",
        state_dir=str(tmp_path),
        bin_dir="/bin",
        index=specs[0].index if specs else 3,
        ports={"etcd": 1, "etcd_peer": 2, "apiserver": 3, "kcm": 4, "kubelet": 5, "scheduler": 6},
        node={"nodes": [s.to_json() for s in specs], **node_opts} if specs else {},
    )


def test_flags_select_nodes_by_name_or_ordinal() -> None:
    names = nodes.node_names(3, 4)
    assert names == ["localkube-4", "localkube-4-1", "localkube-4-2"]
    specs = nodes.build_specs(
        [4, 255, 254],
        names,
        labels=["1=zone=b,disk=ssd", "localkube-4=role="],
        taints=["2=dedicated=batch:NoSchedule,gpu:NoExecute"],
        capacity=["0=cpu=2,memory=4Gi"],
    )
    assert [s.component for s in specs] == ["node", "node-localkube-4-1", "node-localkube-4-2"]
    assert [s.pod_cidr for s in specs] == ["10.244.4.0/24", "10.244.255.0/24", "10.244.254.0/24"]
    assert specs[0].labels == {"role": ""} and specs[0].capacity == {"cpu": "2", "memory": "4Gi"}
    assert specs[1].labels == {"zone": "b", "disk": "ssd"}
    assert specs[2].taints == [
        {"key": "dedicated", "value": "batch", "effect": "NoSchedule"},
        {"key": "gpu", "effect": "NoExecute"},
    ]
    assert nodes.NodeSpec.from_json(specs[2].to_json()) == specs[2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": ["3=zone=b"]}, "no node '3'"),
        ({"labels": ["zone"]}, "expected NODE="),
        ({"labels": ["0=zone"]}, "expected key=value"),
        ({"taints": ["0=a=b:Sometimes"]}, "Effect one of"),
        ({"capacity": ["0=gpus=1"]}, "known resources"),
    ],
)
def test_bad_node_flags_say_what_is_expected(kwargs: dict[str, list[str]], message: str) -> None:
    with pytest.raises(nodes.NodeFlagError, match=message):
        nodes.build_specs([0, 1, 2], ["a", "b", "c"], **kwargs)


def test_node_names_must_be_distinct_dns_labels_one_per_node() -> None:
    with pytest.raises(nodes.NodeFlagError, match="distinct"):
        nodes.node_names(2, 0, ["a", "a"])
    with pytest.raises(nodes.NodeFlagError, match="DNS"):
        nodes.node_names(1, 0, ["Big_Node"])
    with pytest.raises(nodes.NodeFlagError, match="--nodes is 3"):
        nodes.node_names(3, 0, ["a"])


def test_extra_nodes_take_indexes_from_the_top_and_block_other_planes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    monkeypatch.setattr(state, "NET_DEVICES", tmp_path / "no-bridges")  # not this machine's live planes
    other = tmp_path / f"{state.STATE_PREFIX}other"
    other.mkdir()
    specs = nodes.build_specs([0, 255, 254], ["a", "b", "c"])
    plane(other, specs).save()
    mine = tmp_path / f"{state.STATE_PREFIX}mine"
    indexes, _ = state.allocate_indexes(mine, 3)
    assert indexes[0] not in {0, 254, 255}
    assert set(indexes[1:]) == {253, 252} and indexes[0] < 252


def test_extra_node_argv_changes_identity_and_adds_sharing_flags(tmp_path: Path) -> None:
    specs = nodes.build_specs([5, 255], ["localkube-5", "localkube-5-1"], labels=["1=zone=b"])
    st = plane(tmp_path, specs, scheduler=True, node_monitor_grace_period=12.0)
    base = comp.node_argv(st)
    argv = comp.argv_for(st, "node-localkube-5-1")
    assert "--node-name=localkube-5-1" in argv and "--pod-cidr=10.244.255.0/24" in argv
    assert f"--state-dir={tmp_path / 'nodes' / 'localkube-5-1'}" in argv
    assert "--bridge=dkbr5" in argv, "every node joins the plane's bridge"
    assert f"--proxy-handover-dir={tmp_path / 'proxy'}" in argv, "one hand-over directory for all nodes"
    assert {"--shared-bridge", "--cluster-cidr=10.244.0.0/16", "--no-bind", "--heartbeat-seconds=3.0"} <= set(
        argv
    )
    assert "--label=zone=b" in argv
    first = comp.argv_for(st, "node")
    assert f"--state-dir={tmp_path}" in first and "--pod-cidr=10.244.5.0/24" in first
    assert len(base) < len(first)
    kcm = comp.argv_for(st, comp.KCM)
    assert "--node-monitor-grace-period=12.0s" in kcm and "--node-monitor-period=2s" in kcm
    assert "--controllers=*" in kcm, "kube-controller-manager runs its default controller set"


def test_one_node_plane_argv_is_unchanged(tmp_path: Path) -> None:
    specs = nodes.build_specs([2], ["localkube-2"])
    st = plane(tmp_path, specs, scheduler=False)
    assert comp.argv_for(st, "node") == comp.node_argv(st), "one node: no sharing, it binds pods itself"


def test_node_flags_reach_labels_taints_capacity_and_the_pod_prefix(tmp_path: Path) -> None:
    cfg = parse_args(
        [
            f"--state-dir={tmp_path}",
            "--kubeconfig=k",
            "--node-name=n1",
            "--bridge=dkbr5",
            "--pod-cidr=10.244.255.0/24",
            "--service-cidr=10.96.5.0/24",
            "--kubelet-port=1",
            "--kubelet-cert=c",
            "--kubelet-key=k",
            "--client-ca=ca",
            "--shared-bridge",
            "--cluster-cidr=10.244.0.0/16",
            "--label=zone=b",
            "--taint=dedicated=batch:NoSchedule",
            "--taint=gpu:NoExecute",
            "--capacity=cpu=3",
        ]
    )
    assert node_labels(cfg)["zone"] == "b" and node_labels(cfg)["kubernetes.io/hostname"] == "n1"
    assert node_taints(cfg) == [
        {"key": "dedicated", "value": "batch", "effect": "NoSchedule"},
        {"key": "gpu", "effect": "NoExecute"},
    ]
    assert capacity(cfg)["cpu"] == "3"
    assert (cfg.node_ip, cfg.node_prefixlen, cfg.prefixlen) == ("10.244.255.1", 24, 16)
    assert cfg.simulated_cidr == "100.127.128.0/17", "keyed by the node's own index, not the shared bridge"
    one = NodeConfig(tmp_path, "k", "n", "dkbr7", "10.244.7.0/24", "10.96.7.0/24", 1, "c", "k", "ca")
    assert (one.prefixlen, one.routable_pod_cidr, one.simulated_cidr) == (
        24,
        "10.244.7.0/24",
        "10.135.0.0/16",
    )


def test_simulated_ranges_are_distinct_per_index_and_leave_the_hosts_resolvers_alone() -> None:
    ranges = [
        ipaddress.ip_network(
            NodeConfig(
                Path("/x"), "k", "n", "dkbr0", f"10.244.{i}.0/24", "10.96.0.0/24", 1, "c", "k", "ca"
            ).simulated_cidr
        )
        for i in range(256)
    ]
    assert all(a.num_addresses - 2 >= 30_000 for a in ranges)  # a simulated node holds 30,000 pods
    assert not any(a.overlaps(b) for k, a in enumerate(ranges) for b in ranges[k + 1 :])
    # further nodes (indexes from 255 down) never route 10.254/16 or 10.255/16, where resolvers often live
    resolver = ipaddress.ip_address("10.255.255.53")
    assert not any(resolver in r for r in ranges[128:])
