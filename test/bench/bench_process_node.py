"""Benchmark: 1,000 simulated pods on the process node reach Ready; prints the time and the node's RSS.

Run with `python -m pytest test/bench -m bench -s`. The pods are created straight through the API (8
client threads), so the figure measures the node's binding and status path, not a controller's.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support.wait import wait_for

PODS = 1000


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _node_pid(kube_plane: Any) -> int:
    state = json.loads((Path(kube_plane.state_dir) / "state.json").read_text())
    return int(state["processes"]["node"]["pid"])


def test_bench_1000_simulated_pods_reach_ready(kube_plane: Any, namespace: str) -> None:
    if not kube_plane.has_node:
        pytest.skip("needs the process node (local plane)")
    from kubernetes import client

    core = client.CoreV1Api(kube_plane.api_client())
    node_pid = _node_pid(kube_plane)
    rss_before = _rss_kib(node_pid)

    def pod(i: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"sim-{i:04d}",
                "labels": {"bench": "sim"},
                "annotations": {"localkube/simulated": "true"},
            },
            "spec": {
                "containers": [
                    {"name": "worker", "image": "ghcr.io/dask/dask:latest", "args": ["dask", "worker"]}
                ]
            },
        }

    def ready_count() -> int:
        resp = core.list_namespaced_pod(namespace, label_selector="bench=sim", _preload_content=False)
        items = json.loads(resp.data)["items"]
        return sum(
            1
            for p in items
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
        )

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as ex:
        list(
            ex.map(
                lambda i: core.create_namespaced_pod(namespace, pod(i), _preload_content=False), range(PODS)
            )
        )
    created = time.monotonic() - t0
    wait_for(lambda: ready_count() == PODS, timeout=300, interval=1.0, message=f"{PODS} simulated pods Ready")
    ready = time.monotonic() - t0
    rss_ready = _rss_kib(node_pid)
    t1 = time.monotonic()
    core.delete_collection_namespaced_pod(namespace, label_selector="bench=sim", _preload_content=False)
    wait_for(
        lambda: (
            not json.loads(
                core.list_namespaced_pod(namespace, label_selector="bench=sim", _preload_content=False).data
            )["items"]
        ),
        timeout=300,
        interval=1.0,
        message="simulated pods deleted",
    )
    deleted = time.monotonic() - t1
    print(
        f"\nprocess node bench: {PODS} simulated pods created in {created:.1f} s, all Ready after {ready:.1f} s "
        f"({ready - created:.1f} s after the last create); "
        f"deleted in {deleted:.1f} s; node RSS {rss_before / 1024:.0f} MiB before, {rss_ready / 1024:.0f} MiB at "
        f"{PODS} pods, {_rss_kib(node_pid) / 1024:.0f} MiB after"
    )
