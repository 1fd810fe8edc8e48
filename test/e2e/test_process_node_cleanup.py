"""Crash cleanup of the process node: from resources.json alone, everything the node made goes away.

Runs as root against the host's real network stack (it creates a bridge, a netns and a process, as a
node would), without an API server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
from kubeplane.node import netns as net
from kubeplane.node.cleanup import cleanup
from kubeplane.node.process import proc_start_time
from kubeplane.node.resources import ResourceRecord, resources_path
from support.wait import wait_for

BRIDGE = "dkbr249"  # an index no test plane takes in practice (planes take the lowest free one)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
def test_cleanup_after_kill_removes_recorded_processes_netns_mounts_and_bridge(tmp_path: Path) -> None:
    record = ResourceRecord(tmp_path)
    record.set_bridge(BRIDGE)
    net.ensure_bridge(BRIDGE, "10.249.0.1", 24)
    ns, veth = net.pod_netns_name(BRIDGE, "cafe0001"), net.pod_veth_name(BRIDGE, "cafe0001")
    record.add_netns(ns, veth)
    hosts = net.hosts_file("10.249.0.2", "p")
    net.create_pod_network(
        ns, veth, BRIDGE, "10.249.0.2", 24, "10.249.0.1", hosts, net.resolv_file("10.249.0.1", "d")
    )
    # A pod process that ignores SIGTERM, plus a child in a new session inside the netns.
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            "trap '' TERM; setsid sleep 600 & while true; do sleep 0.2; done",
        ],
        start_new_session=True,
    )
    record.add_process("pod/c/1", proc.pid, proc_start_time(proc.pid) or 0)
    tmpfs = tmp_path / "pods" / "p" / "volumes" / "mem"  # an emptyDir with medium: Memory
    tmpfs.mkdir(parents=True)
    record.add_mount(str(tmpfs))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmpfs)], check=True)
    wait_for(lambda: len(net.netns_pids(ns)) >= 2, timeout=10, message="pod processes in the netns")
    inside = net.netns_pids(ns)
    try:
        cleanup(tmp_path)  # what `localkube down` does after `kill -9` of the node
        wait_for(lambda: proc.poll() is not None, timeout=10, message="pod process reaped")
        assert all(proc_start_time(p) is None for p in inside)
        assert not net.netns_exists(ns) and not net.link_exists(veth) and not net.link_exists(BRIDGE)
        assert not (net.ETC_NETNS / ns).exists()
        assert f" {tmpfs} " not in Path("/proc/self/mountinfo").read_text()
        assert not resources_path(tmp_path).exists()
        cleanup(tmp_path)  # idempotent
    finally:
        for pid in inside:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        net.delete_pod_network(ns, veth)
        net.delete_bridge(BRIDGE)
        subprocess.run(["umount", "-l", str(tmpfs)], capture_output=True, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
def test_without_a_default_route_a_pod_still_reaches_the_service_range_through_the_node() -> None:
    """With net.ipv4.ip_forward=1 (a real-node plane beside this one) pods get no default route; before, they
    got no route at all and every ClusterIP was unreachable."""
    ns, veth = net.pod_netns_name(BRIDGE, "cafe0002"), net.pod_veth_name(BRIDGE, "cafe0002")
    net.ensure_bridge(BRIDGE, "10.249.0.1", 24)
    try:
        net.create_pod_network(
            ns, veth, BRIDGE, "10.249.0.3", 24, "", net.hosts_file("10.249.0.3", "p"),
            net.resolv_file("10.249.0.1", "d"), routed=(("10.96.0.0/20", "10.249.0.1"),),
        )  # fmt: skip
        routes = subprocess.run(
            ["ip", "netns", "exec", ns, "ip", "route"], capture_output=True, text=True, check=True
        ).stdout
        assert "10.96.0.0/20 via 10.249.0.1 dev eth0" in routes and "default" not in routes, routes
    finally:
        net.delete_pod_network(ns, veth)
        net.delete_bridge(BRIDGE)
