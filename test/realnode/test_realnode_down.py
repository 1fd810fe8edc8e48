"""`localkube down` of a plane of real nodes leaves nothing on the host: no process, mount, cgroup, network
namespace, bridge or KUBE-/CNI- iptables chain, with pods running on every node when it is taken down; host
settings it changed (IP forwarding) are restored.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from support.wait import wait_for

from .conftest import own_real_plane


def test_down_leaves_nothing() -> None:
    if os.environ.get("K8S_TEST_BACKEND") == "containerd":
        pytest.skip("a second plane of real nodes would share the session plane's iptables (kube-proxy)")
    from kubeplane import nodes, realnode
    from kubeplane.plane import Plane

    before = realnode.read_sysctls()
    with own_real_plane(f"pytest-{os.getpid()}-realdown", 2) as kp:
        plane = kp.plane
        state = Plane.load(plane.state_dir).state
        for spec in nodes.plane_nodes(state):
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"p-{spec.name}"},
                "spec": {
                    "nodeName": spec.name,
                    "containers": [
                        {
                            "name": "c",
                            "image": "ghcr.io/dask/dask:latest",
                            "imagePullPolicy": "IfNotPresent",
                            "args": ["sleep", "3600"],
                        }
                    ],
                },
            }
            kp.kubectl("apply", "-n", "default", "-f", "-", input=json.dumps(pod))

        def all_running() -> bool:
            items = json.loads(kp.kubectl("get", "pods", "-n", "default", "-o", "json").stdout)["items"]
            return len(items) == 2 and all(p["status"].get("phase") == "Running" for p in items)

        wait_for(all_running, timeout=120, interval=0.5, message="a running pod on each node")
        state = Plane.load(plane.state_dir).state
        pids = [(r.pid, r.start_time) for r in state.processes.values()]
        layouts = [realnode.layout(state, s) for s in nodes.plane_nodes(state)]
        root = plane.state_dir
        data = realnode.data_dir(state)
    from kubeplane.state import proc_start_time

    left = [f"process {pid}" for pid, start in pids if proc_start_time(pid) == start]
    left += realnode.leftovers([root, data], [n.bridge for n in layouts], [n.cgroup_root for n in layouts])
    left += [f"directory {d}" for d in (root, data) if d.exists()]
    assert not left, f"`localkube down` left behind: {', '.join(left)}"
    assert realnode.read_sysctls() == before


def test_down_stops_a_node_another_process_restarted() -> None:
    """`Plane.down()` on an object loaded before `localkube node stop|start` ran in another process (the
    session fixtures hold one for the whole run) stops the restarted kubelet too. Before, it ran on, orphaned:
    four of them were found after this stop's real-node runs, one per run that restarted a node."""
    if os.environ.get("K8S_TEST_BACKEND") == "containerd":
        pytest.skip("a second plane of real nodes would share the session plane's iptables (kube-proxy)")
    from kubeplane import realnode
    from kubeplane.plane import Plane, UpOptions
    from kubeplane.state import PlaneState, is_same_process
    from support.fixtures import REPO, _bin_dir

    name = f"pytest-{os.getpid()}-realrestart"
    plane = Plane.up(
        UpOptions(name=name, bin_dir=_bin_dir(), force=True, runtime="containerd", nodes=1, timeout=180.0)
    )
    try:
        (node,) = plane.node_names
        env = {k: v for k, v in os.environ.items() if k != "LOCALKUBE_STATE"}
        for verb in ("stop", "start"):
            argv = [str(REPO / "hack" / "localkube"), "node", verb, node, "--name", name]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)
            assert proc.returncode == 0, proc.stderr
        kubelet = PlaneState.load(plane.state_dir).processes[realnode.kubelet_component(node)]
        assert is_same_process(kubelet)
    finally:
        plane.down()  # the object loaded before the restart
    assert not is_same_process(kubelet), "the kubelet `node start` began outlived `down`"
