"""Chaos: the scheduler process SIGKILLed during a scale-down, while the cluster holds data.

Story: a 3-worker cluster holds persisted and scattered data; the user scales it to 1 and the scheduler dies
mid-retirement. A scheduler's state (tasks, who holds what) lives only in its memory, so all data is lost by
Dask's design; what the operator owes is convergence (scheduler back, exactly 1 worker, joined) and saying
so: a Warning Event on the DaskCluster that the scheduler restarted (exit code 137), and one (reason
SchedulerStateLost) that the cluster lost its state, which the SchedulerRestarted condition also says.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from support.chaos_workload import Stopwatch, figure, hold_data, says_data_lost
from support.hostpid import host_pid
from support.operator import (
    OperatorProcess,
    apply,
    cluster_manifest,
    condition,
    dask_client,
    get,
    pod_names,
    wait_running,
    wait_workers,
    worker_pods,
)
from support.wait import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]

NAME, GROUP = "held", "held-default"


def _kill_scheduler_during_scale_down(plane: Any, namespace: str) -> tuple[int, float]:
    """Hold data, scale 3 -> 1, SIGKILL the scheduler; returns (keys held, seconds to converge)."""
    apply(plane, namespace, cluster_manifest(NAME, 3))
    wait_running(plane, namespace, NAME, timeout=120)
    with dask_client(plane, namespace, NAME) as client:
        wait_workers(client, pod_names(worker_pods(plane, namespace, GROUP)), timeout=120)
        held = hold_data(client, blocks=30, scattered=9)
        pid = host_pid(get(plane, namespace, "pod", f"{NAME}-scheduler"), client.run_on_scheduler(os.getpid))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert "scheduler" in cmdline, f"pid {pid} is not the scheduler: {cmdline}"
        plane.kubectl("scale", "-n", namespace, f"daskcluster/{NAME}", "--replicas=1")
        os.kill(pid, signal.SIGKILL)
        clock = Stopwatch()
    wait_for(lambda: _converged(plane, namespace), timeout=180, interval=0.5,
             message="1 worker pod, scheduler ready, group status 1")  # fmt: skip
    with dask_client(plane, namespace, NAME) as client:
        wait_workers(client, pod_names(worker_pods(plane, namespace, GROUP)), timeout=120)
        assert client.submit(sum, range(10)).result(timeout=60) == 45  # the new scheduler computes
    return len(held.blocks) + len(held.scattered), clock.seconds()


def test_scheduler_killed_during_scale_down_converges(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    held, converged = _kill_scheduler_during_scale_down(plane, namespace)
    figure("scheduler-sigkill-scale-down", converged_s=converged, keys_lost=held, note="all by design")
    assert get(plane, namespace, "daskcluster", NAME)["status"]["phase"] == "Running"
    # the restart itself is reported: a Warning Event naming the scheduler pod and its exit code
    restarted = [e for e in _events(plane, namespace) if e.get("type") == "Warning" and f"{NAME}-scheduler" in
                 e.get("message", "") and "137" in e.get("message", "")]  # fmt: skip
    assert restarted, f"no Warning Event reports the scheduler's SIGKILL: {_events(plane, namespace)}"
    # and says the cluster lost its state, once; the status says so too, with the time (for 10 minutes)
    lost = [e for e in says_data_lost(_events(plane, namespace)) if e["reason"] == "SchedulerStateLost"]
    assert len(lost) == 1, f"not exactly one Event says the state was lost: {_events(plane, namespace)}"
    cond = condition(get(plane, namespace, "daskcluster", NAME), "SchedulerRestarted")
    assert cond.get("status") == "True" and cond["reason"] == "SchedulerStateLost", cond
    assert "lost its state" in cond["message"] and "137" in cond["message"], cond


def _events(plane: Any, namespace: str) -> list[dict[str, Any]]:
    listed = get(plane, namespace, "events", "--field-selector", f"involvedObject.name={NAME}") or {}
    return list(listed.get("items", []))


def _converged(plane: Any, namespace: str) -> bool:
    group = get(plane, namespace, "daskworkergroup", GROUP) or {}
    live = worker_pods(plane, namespace, GROUP)
    scheduler = get(plane, namespace, "pod", f"{NAME}-scheduler") or {}
    ready = any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in scheduler.get("status", {}).get("conditions", [])
    )
    return bool(ready and len(live) == 1 and group.get("status", {}).get("replicas") == 1)
