"""Service ranges of side-by-side planes (hack/kubeplane/state.py): sized for thousands of Services."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from kubeplane import state
from kubeplane.cli import parser
from kubeplane.state import Network, PlaneState


def saved_plane(root: Path, name: str, index: int, service_cidr: str) -> None:
    d = root / f"{state.STATE_PREFIX}{name}"
    d.mkdir()
    PlaneState(name, str(d), "/bin", index, {"apiserver": 1}, service_cidr=service_cidr).save()


def test_default_ranges_hold_thousands_of_services_and_never_overlap() -> None:
    nets = [ipaddress.ip_network(state.default_service_cidr(i)) for i in range(state.MAX_INDEX + 1)]
    assert nets[0] == ipaddress.ip_network("10.96.0.0/20") and nets[1] == ipaddress.ip_network(
        "10.96.16.0/20"
    )
    assert all(n.num_addresses - 2 >= 4000 and n.subnet_of(state.SERVICE_SUPERNET) for n in nets)
    assert sum(n.num_addresses for n in nets) == state.SERVICE_SUPERNET.num_addresses  # disjoint, all fit
    assert Network(1).first_service_ip == "10.96.16.1", "the kubernetes Service: first host of the range"
    assert Network(1, "10.200.0.0/16").first_service_ip == "10.200.0.1"


def test_a_state_file_without_a_range_keeps_the_range_it_was_started_with(tmp_path: Path) -> None:
    data = PlaneState("t", str(tmp_path), "/bin", 7, {"apiserver": 1}).to_json()
    data.pop("service_cidr")
    assert PlaneState.from_json(data).network.service_cidr == "10.96.7.0/24"


def test_service_cidr_flag_is_validated_with_a_clear_error() -> None:
    assert parser().parse_args(["up", "--service-cidr", "10.100.0.0/16"]).service_cidr == "10.100.0.0/16"
    assert state.parse_service_cidr(" 10.100.0.0/16") == "10.100.0.0/16"
    for bad, match in [
        ("10.100.0.1/16", "not a network"),
        ("10.0.0.0/8", "/12 to /28"),
        ("fd00::/112", "IPv4"),
    ]:
        with pytest.raises(state.ServiceRangeError, match=match):
            state.parse_service_cidr(bad)


def test_a_new_plane_skips_indexes_whose_range_overlaps_another_plane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    saved_plane(tmp_path, "old", 3, "10.96.3.0/24")  # a plane started before the /20 ranges
    saved_plane(tmp_path, "new", 1, state.default_service_cidr(1))
    mine = tmp_path / f"{state.STATE_PREFIX}mine"
    indexes, _ = state.allocate_indexes(mine, 1)
    # Live planes on this machine may hold more indexes (their bridges): only the skipped ones are certain.
    assert indexes[0] not in {0, 1, 3}, "0 holds 10.96.0.0/20, which contains the old plane's 10.96.3.0/24"
    with pytest.raises(state.ServiceRangeError, match="plane\\(s\\) new"):
        state.allocate_indexes(mine, 1, "10.96.16.0/24")
    explicit, _ = state.allocate_indexes(mine, 1, "10.200.0.0/16")
    assert explicit[0] <= indexes[0], "an explicit range frees the index from the overlap rule"


def test_a_simulated_node_has_room_for_its_addresses_and_ten_thousand_extra_pods(tmp_path: Path) -> None:
    from kubeplane.node.context import NodeConfig
    from kubeplane.node.registration import capacity

    cfg = NodeConfig(
        tmp_path, "k", "n", "dkbr7", "10.244.7.0/24", "10.96.112.0/20", 1, "c", "k", "ca", simulated=True
    )
    pods = int(capacity(cfg)["pods"])
    assert 13_000 <= pods <= ipaddress.ip_network(cfg.simulated_cidr).num_addresses - 2
