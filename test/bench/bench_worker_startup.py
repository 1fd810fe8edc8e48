"""Benchmark: a DaskCluster of 20 workers from `kubectl apply` to every worker pod Ready and joined, on the
node kind the run uses: the process node (`hack/test test/bench/bench_worker_startup.py -m bench -s`) or real
nodes (the same with `K8S_TEST_BACKEND=containerd`: kubelet, containerd and runc, images from
hack/build-images.sh). Prints per-pod create -> Ready p50 / p99 (seen by polling every 0.2 s), the time to
all 20 Ready and to 20 workers at the scheduler, and the node's resident memory (the process node's process;
kubelets and containerds) before and after. Figures only; nothing here is asserted about time.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from support.operator import (
    OperatorProcess,
    apply,
    cluster_manifest,
    condition,
    dask_client,
    get,
    pods,
    wait_workers,
)
from support.wait import wait_for

pytestmark = [pytest.mark.bench, pytest.mark.timeout(900)]

WORKERS = 20


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _node_rss_mib(plane: Any) -> float:
    """The node side's resident memory: the process node, or every kubelet and containerd of the plane."""
    if plane.state_dir is None:
        return 0.0
    processes = json.loads((Path(plane.state_dir) / "state.json").read_text()).get("processes", {})
    pids = [
        int(p["pid"])
        for name, p in processes.items()
        if name == "node" or name.startswith(("node-", "kubelet-", "containerd-"))
    ]
    return sum(_rss_kib(pid) for pid in pids) / 1024


def _ready_at(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or []
    )


def test_bench_twenty_workers_from_apply_to_ready(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    rss_before = _node_rss_mib(plane)
    seen: dict[str, float] = {}
    ready: dict[str, float] = {}
    started = time.monotonic()
    apply(plane, namespace, cluster_manifest("burst", WORKERS))

    def all_ready() -> bool:
        now = time.monotonic()
        for pod in pods(plane, namespace, "dask.org/cluster-name=burst,dask.org/component=worker"):
            name = pod["metadata"]["name"]
            seen.setdefault(name, now)
            if _ready_at(pod):
                ready.setdefault(name, now)
        return len(ready) == WORKERS

    wait_for(all_ready, timeout=600, interval=0.2, message=f"{WORKERS} worker pods Ready")
    all_ready_s = time.monotonic() - started
    wait_for(lambda: condition(get(plane, namespace, "daskcluster", "burst"), "Ready").get("status") == "True",
             timeout=300, interval=0.5, message="the cluster Ready")  # fmt: skip
    with dask_client(plane, namespace, "burst") as client:
        wait_workers(client, WORKERS, timeout=300)
    joined_s = time.monotonic() - started
    rss_after = _node_rss_mib(plane)
    delays = sorted(ready[n] - seen[n] for n in ready)
    p99 = delays[min(len(delays) - 1, round(0.99 * (len(delays) - 1)))]
    print(
        f"\nWORKER STARTUP backend={plane.backend} workers={WORKERS}: pod create -> Ready "
        f"p50 {statistics.median(delays):.1f} s / p99 {p99:.1f} s; all Ready {all_ready_s:.1f} s after apply; "
        f"all joined the scheduler {joined_s:.1f} s; node RSS {rss_before:.0f} -> {rss_after:.0f} MiB"
    )
