"""Chaos: a worker process SIGKILLed (what the OOM killer does) while it holds persisted and scattered data.

Story: a 3-worker cluster holds data on every worker; one worker's process gets SIGKILL. The kubelet restarts
its container, the worker rejoins, the cluster is back to 3 workers. Dask's own semantics decide the data:
exactly the persisted keys that lived only on the killed worker are recomputed (once each), exactly its
scattered keys are lost (they cannot be recomputed), nothing else. The operator must not hide it: the worker
group's Degraded condition names the pod and its exit code 137; its WorkerLost condition (surfaced on the
cluster too) and exactly one WorkerLost Warning Event say the worker's in-memory data was lost.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from support.chaos_workload import Stopwatch, data_cost, figure, hold_data, says_data_lost
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
    warning_events,
    worker_pods,
)
from support.wait import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300)]


NAME, GROUP = "oom", "oom-default"


@pytest.mark.chaos_smoke
def test_worker_sigkilled_while_holding_data_is_replaced_and_the_loss_is_reported(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    victim = _kill_a_worker_holding_data(plane, namespace)
    events = warning_events(plane, namespace, GROUP) + warning_events(plane, namespace, NAME)
    lost = [e for e in says_data_lost(events) if e["reason"] == "WorkerLost" and victim in e["message"]]
    assert len(lost) == 1, f"not exactly one WorkerLost Event names {victim} and its lost data: {events}"
    for kind, name in (("daskworkergroup", GROUP), ("daskcluster", NAME)):
        cond = condition(get(plane, namespace, kind, name), "WorkerLost")
        assert cond.get("status") == "True" and cond["reason"] == "WorkerKilled", (kind, cond)
        assert victim in cond["message"] and "137" in cond["message"], (kind, cond)


def _kill_a_worker_holding_data(plane: Any, namespace: str) -> str:
    """Kill one worker holding data, wait until it rejoined; returns its pod's name."""
    name, group = NAME, GROUP
    apply(plane, namespace, cluster_manifest(name, 3))
    wait_running(plane, namespace, name, timeout=120)
    with dask_client(plane, namespace, name) as client:
        wait_workers(client, pod_names(worker_pods(plane, namespace, group)), timeout=120)
        held = hold_data(client, blocks=30, scattered=9)
        who_has = client.who_has(held.blocks + held.scattered)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        victim_addr = min(workers)
        victim = str(workers[victim_addr]["name"])
        pod = next(p for p in worker_pods(plane, namespace, group) if p["metadata"]["name"] == victim)
        pid = host_pid(pod, client.run(os.getpid, workers=[victim_addr])[victim_addr])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert victim in cmdline, f"pid {pid} is not worker {victim}'s process: {cmdline}"
        on_victim = {k for k, holders in who_has.items() if list(holders) == [victim_addr]}
        assert on_victim, "the victim held no data of its own"

        os.kill(pid, signal.SIGKILL)
        clock = Stopwatch()
        wait_for(lambda: _restarted(plane, namespace, victim), timeout=120, interval=0.5,
                 message=f"pod {victim} restarted after the kill")  # fmt: skip
        # the operator reports it (while the restart counts as recent, 60 s): Degraded on the group naming the
        # pod and the exit code, and a Warning Event
        cond = wait_for(lambda: _degraded(plane, namespace, group), timeout=30, interval=0.5,
                        message="Degraded on the worker group")  # fmt: skip
        assert cond["reason"] == "WorkerFailing" and victim in cond["message"] and "137" in cond["message"], (
            cond
        )
        wait_workers(client, 3, timeout=120)
        rejoined = clock.seconds()
        cost = data_cost(client, held)
        figure("worker-sigkill", rejoined_s=rejoined, recomputed=len(cost.recomputed),
               scattered_lost=len(cost.scattered_lost), keys_on_victim=len(on_victim))  # fmt: skip
        print(cost.line())
        assert set(cost.recomputed) == on_victim & set(held.block_keys), cost
        assert all(n == 1 for n in cost.recomputed.values()), cost
        assert set(cost.scattered_lost) == on_victim & set(held.scattered_keys), cost

    events = warning_events(plane, namespace, group) + warning_events(plane, namespace, name)
    assert any(victim in e["message"] for e in events), f"no Warning Event names {victim}: {events}"
    assert len(worker_pods(plane, namespace, group)) == 3
    return victim


def _degraded(plane: Any, namespace: str, group: str) -> dict[str, Any] | None:
    cond = condition(get(plane, namespace, "daskworkergroup", group), "Degraded")
    return cond if cond.get("status") == "True" else None


def _restarted(plane: Any, namespace: str, pod: str) -> bool:
    obj = get(plane, namespace, "pod", pod) or {}
    statuses = obj.get("status", {}).get("containerStatuses") or []
    return any(int(cs.get("restartCount") or 0) >= 1 and cs.get("ready") for cs in statuses)
