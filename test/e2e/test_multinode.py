"""Several nodes: placement by kube-scheduler, drain with PodDisruptionBudgets, node loss.

One 3-node plane for the module (`three_node_plane`: node 1 in zone-b with 4 nvidia.com/gpu, node 2 tainted
dedicated=batch:NoSchedule, short node-failure timing). On process nodes (the default) its teardown checks
that `localkube down` leaves no process, mount, network namespace or bridge behind; with
K8S_TEST_BACKEND=containerd K8S_TEST_NODES=3 it is the session's real nodes, running the images built here.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubeplane.node import netns as net
from support.fixtures import REPO, KubePlane
from support.wait import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="process nodes need root for network namespaces")

LOCALKUBE = REPO / "hack" / "localkube"
HTTP = ["python", "-m", "http.server", "8080"]
IMAGE = "ghcr.io/dask/dask:latest"  # has Python; imported on real nodes (hack/build-images.sh), ignored by process nodes
TOLERATE_NODE_2 = [{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}]


@pytest.fixture
def ns(three_node_plane: KubePlane) -> Iterator[str]:
    name = f"multinode-{uuid.uuid4().hex[:6]}"
    three_node_plane.kubectl("create", "namespace", name)
    wait_for(
        lambda: three_node_plane.kubectl("-n", name, "get", "sa", "default", check=False).returncode == 0,
        timeout=30,
        message=f"ServiceAccount {name}/default",
    )
    yield name
    three_node_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def nodes_of(kp: KubePlane) -> list[str]:
    assert kp.plane is not None
    return list(kp.plane.node_names)


def pods(kp: KubePlane, ns: str, selector: str) -> list[dict[str, Any]]:
    out = kp.kubectl("-n", ns, "get", "pods", "-l", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def running_on(kp: KubePlane, ns: str, selector: str) -> dict[str, str]:
    """Ready pods that are not being deleted: pod name -> node name."""
    placed = {}
    for p in pods(kp, ns, selector):
        conds = {c["type"]: c["status"] for c in (p.get("status") or {}).get("conditions") or []}
        if not p["metadata"].get("deletionTimestamp") and conds.get("Ready") == "True":
            placed[p["metadata"]["name"]] = p["spec"]["nodeName"]
    return placed


def wait_ready(
    kp: KubePlane, ns: str, app: str, count: int, timeout: float = 90, without: str = ""
) -> dict[str, str]:
    """Wait for exactly `count` Ready pods of `app` (none of them named `without`); pod -> node."""

    def placed() -> dict[str, str] | None:
        now = running_on(kp, ns, f"app={app}")
        return now if len(now) == count and without not in now else None

    return wait_for(placed, timeout=timeout, message=f"{count} Ready {app} pods")


def deployment(name: str, replicas: int, pod_spec: dict[str, Any]) -> str:
    spec = {"containers": [{"name": "web", "image": IMAGE, "command": HTTP}], **pod_spec}
    spec["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 8080}, "periodSeconds": 1}
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
            },
        }
    )


def one_per_node(app: str) -> dict[str, Any]:
    term = {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"}
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


def web_deployment() -> str:
    """2 replicas on 2 different nodes, allowed on all 3: one node is always free for a replacement."""
    return deployment("web", 2, {"affinity": one_per_node("web"), "tolerations": TOLERATE_NODE_2})


def localkube(kp: KubePlane, *args: str) -> subprocess.CompletedProcess[str]:
    assert kp.plane is not None
    env = {k: v for k, v in os.environ.items() if k != "LOCALKUBE_STATE"}
    argv = [str(LOCALKUBE), *args, "--name", kp.plane.name]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr}"
    return proc


def test_pods_land_where_node_selector_anti_affinity_and_taints_say_and_reach_each_other(
    three_node_plane: KubePlane, ns: str
) -> None:
    kp = three_node_plane
    node0, node1, node2 = nodes_of(kp)
    kp.kubectl(
        "-n", ns, "apply", "-f", "-",
        input=deployment("spread", 3, {"affinity": one_per_node("spread"), "tolerations": TOLERATE_NODE_2}),
    )  # fmt: skip
    # Without the toleration node 2 is out, so the third replica finds no node.
    kp.kubectl("-n", ns, "apply", "-f", "-", input=deployment("shy", 3, {"affinity": one_per_node("shy")}))
    kp.kubectl(
        "-n", ns, "apply", "-f", "-",
        input=deployment("zoned", 1, {"nodeSelector": {"topology.kubernetes.io/zone": "zone-b"}}),
    )  # fmt: skip
    spread = wait_ready(kp, ns, "spread", 3, timeout=90)
    assert sorted(spread.values()) == sorted([node0, node1, node2]), spread
    zoned = wait_for(lambda: running_on(kp, ns, "app=zoned"), timeout=60, message="zoned pod Ready")
    assert list(zoned.values()) == [node1]
    shy = wait_ready(kp, ns, "shy", 2, timeout=60)
    assert sorted(shy.values()) == sorted([node0, node1])
    # Pods asking for an extended resource land only on the node that advertises it (node 1's GPUs), even
    # with every node open to them.
    gpu = json.loads(deployment("gpu", 2, {"tolerations": TOLERATE_NODE_2}))
    gpu["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    kp.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(gpu))
    assert set(wait_ready(kp, ns, "gpu", 2, timeout=60).values()) == {node1}

    def unschedulable() -> str | None:
        for p in pods(kp, ns, "app=shy"):
            for c in (p.get("status") or {}).get("conditions") or []:
                if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable":
                    return str(c.get("message"))
        return None

    message = wait_for(unschedulable, timeout=30, message="the third shy pod reported Unschedulable")
    assert "untolerated taint" in message and "anti-affinity" in message, message

    # Pod networking across nodes: a pod on node 1 fetches from the pod on node 2 and the Service;
    # its log comes through node 1's kubelet endpoint.
    target = next(p for p in pods(kp, ns, "app=spread") if p["spec"]["nodeName"] == node2)
    kp.kubectl("-n", ns, "expose", "deployment", "spread", "--port=80", "--target-port=8080")
    fetch = (  # retries: the Service was created a moment ago
        "import sys, time, urllib.request\n"
        "for url in sys.argv[1:]:\n"
        "    for _ in range(50):\n"
        "        try:\n"
        "            if urllib.request.urlopen(url, timeout=2).status == 200:\n"
        "                print('ok', url)\n"
        "                break\n"
        "        except OSError:\n"
        "            time.sleep(0.2)\n"
        "    else:\n"
        "        sys.exit(f'cannot reach {url}')\n"
    )
    client = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"kubernetes.io/hostname": node1},
            "containers": [
                {
                    "name": "client",
                    "image": IMAGE,
                    "command": ["python", "-c", fetch],
                    "args": [f"http://{target['status']['podIP']}:8080/", "http://spread/"],
                }
            ],
        },
    }
    kp.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(client))

    def finished() -> str | None:
        out = kp.kubectl("-n", ns, "get", "pod", "client", "-o", "jsonpath={.status.phase}").stdout
        return out if out in ("Succeeded", "Failed") else None

    phase = wait_for(finished, timeout=60, message="client pod finished")
    logs = kp.kubectl("-n", ns, "logs", "client", check=False)
    assert phase == "Succeeded", logs.stdout + logs.stderr
    assert logs.stdout.count("ok ") == 2


def test_drain_is_blocked_by_a_pdb_then_evicts_the_nodes_pods(three_node_plane: KubePlane, ns: str) -> None:
    kp = three_node_plane
    kp.kubectl("-n", ns, "apply", "-f", "-", input=web_deployment())
    placed = wait_ready(kp, ns, "web", 2, timeout=90)
    victim_pod, victim = min(placed.items())
    kp.kubectl("-n", ns, "create", "pdb", "web", "--selector=app=web", "--max-unavailable=0")
    wait_for(
        lambda: (
            kp.kubectl("-n", ns, "get", "pdb", "web", "-o", "jsonpath={.status.observedGeneration}").stdout
        ),
        timeout=30,
        message="the disruption controller to observe the PDB",
    )
    try:
        blocked = kp.kubectl("drain", victim, "--timeout=8s", check=False, timeout=60)
        assert blocked.returncode != 0
        assert "global timeout reached" in blocked.stderr, blocked.stderr
        assert "disruption budget" in blocked.stdout + blocked.stderr
        assert running_on(kp, ns, "app=web").get(victim_pod) == victim, "the PDB kept the pod"

        kp.kubectl("-n", ns, "delete", "pdb", "web")
        kp.kubectl("drain", victim, "--timeout=60s", timeout=90)
        assert not any(p["spec"]["nodeName"] == victim for p in pods(kp, ns, "app=web")), (
            "drained node keeps pods"
        )
        after = wait_ready(kp, ns, "web", 2, timeout=60)
        assert victim not in after.values() and victim_pod not in after
    finally:
        kp.kubectl("uncordon", victim, check=False)


def test_a_stopped_nodes_pods_are_evicted_and_recreated_elsewhere(
    three_node_plane: KubePlane, ns: str
) -> None:
    kp = three_node_plane
    kp.kubectl("-n", ns, "apply", "-f", "-", input=web_deployment())
    placed = wait_ready(kp, ns, "web", 2, timeout=90)
    lost_pod, lost = min(placed.items())
    lost_uid = next(
        p["metadata"]["uid"] for p in pods(kp, ns, "app=web") if p["metadata"]["name"] == lost_pod
    )
    assert kp.plane is not None
    # The process node names each pod's network namespace; a real node's are containerd's (CNI) own.
    netns = (
        None if kp.backend == "containerd" else net.pod_netns_name(kp.plane.state.network.bridge, lost_uid)
    )
    assert netns is None or net.netns_exists(netns)

    localkube(kp, "node", "stop", lost)
    try:
        # A node lost: its pod processes and network namespace are gone at once; the API still lists them.
        assert netns is None or not net.netns_exists(netns)
        assert lost_pod in {p["metadata"]["name"] for p in pods(kp, ns, "app=web")}

        def node_ready() -> str:
            out = kp.kubectl(
                "get", "node", lost, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
            )
            return out.stdout

        wait_for(lambda: node_ready() == "Unknown", timeout=60, message=f"{lost} NotReady (Unknown)")
        after = wait_ready(kp, ns, "web", 2, without=lost_pod)
        assert lost not in after.values()
        evicted = next(p for p in pods(kp, ns, "app=web") if p["metadata"]["name"] == lost_pod)
        assert evicted["metadata"].get("deletionTimestamp"), "taint-based eviction deleted the lost pod"
    finally:
        localkube(kp, "node", "start", lost)
    # Back again: the node finishes deleting the pod it lost, as a rebooted kubelet does.
    wait_for(
        lambda: lost_pod not in {p["metadata"]["name"] for p in pods(kp, ns, "app=web")},
        timeout=60,
        message="the evicted pod finally deleted by its returning node",
    )
    with contextlib.suppress(AssertionError):
        kp.kubectl("-n", ns, "delete", "deployment", "web", "--wait=false")
