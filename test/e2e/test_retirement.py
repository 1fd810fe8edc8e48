"""Retirements that end, with real Dask: a scheduler that refuses to retire a worker, a retirement that
hangs (its only recipient is stopped with SIGSTOP), and what the operator does meanwhile for other clusters.

Requests are counted at the scheduler (its "Retire worker addresses" log line, one per request); data is
counted with the scheduler's transition log. Waits have deadlines; `holds_for` watches for a second request.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from support.hostpid import host_pid
from support.operator import (
    WORKER_ARGS,
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
from support.wait import holds_for, wait_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(300)

# No memory limit: nothing but the test pauses or resumes a worker.
UNLIMITED_WORKER_ARGS = [*WORKER_ARGS, "--memory-limit", "0"]


@contextmanager
def operator_with(plane: Any, namespace: str, tmp_path: Path, *args: str) -> Iterator[OperatorProcess]:
    op = OperatorProcess(plane, namespace, tmp_path / "operator.log", extra_args=args).start()
    try:
        yield op
    except BaseException:
        print(f"--- operator log tail ---\n{op.tail()}")
        raise
    finally:
        op.stop()


def _retire_requests(dask_scheduler: Any = None) -> int:
    """On the scheduler: how many retire_workers requests it received (one log line each)."""
    return sum("Retire worker" in message for _, message in dask_scheduler.get_logs())


def _set_status(status: str, dask_worker: Any = None) -> None:
    """On a worker: pause or resume it the way memory pressure would (the scheduler learns it)."""
    from distributed.core import Status

    dask_worker.status = Status[status]


def _managed_bytes(client: Any) -> dict[str, int]:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {str(w["name"]): int(w.get("metrics", {}).get("managed_bytes", 0)) for w in workers.values()}


def _two_workers_one_heavier(client: Any, pods: set[str]) -> tuple[dict[str, str], list[Any]]:
    """Pods' workers by name -> address, the lighter one first; scattered data, more on the heavier one.
    Waits until the workers reported it (the operator reads it from their heartbeats)."""
    light, heavy = sorted(pods)
    workers = client.scheduler_info(n_workers=-1)["workers"]
    address = {str(w["name"]): a for a, w in workers.items()}
    data = [client.scatter(f"light-{i}", workers=[address[light]]) for i in range(2)]
    data += [client.scatter(f"heavy-{i}-" + "x" * 100_000, workers=[address[heavy]]) for i in range(8)]
    wait_for(lambda: _managed_bytes(client)[heavy] > _managed_bytes(client)[light] + 500_000, timeout=30,
             interval=0.3, message="the heavier worker reports its data")  # fmt: skip
    return {light: address[light], heavy: address[heavy]}, data


def _degraded(plane: Any, namespace: str, group: str, reason: str) -> dict[str, Any] | None:
    cond = condition(get(plane, namespace, "daskworkergroup", group), "Degraded")
    return cond if cond.get("status") == "True" and cond.get("reason") == reason else None


def test_a_refused_retirement_is_named_and_converges_once_the_worker_is_free(
    plane: Any, namespace: str, tmp_path: Path
) -> None:
    """The only worker that could take the data is paused: the scheduler refuses to retire the other.
    The group says which worker was kept (condition and Event), keeps both pods, and once the paused worker
    resumes the next (backed-off) request retires it: one pod left, nothing lost."""
    with operator_with(plane, namespace, tmp_path):
        apply(plane, namespace, cluster_manifest("refuse", 2, worker_args=UNLIMITED_WORKER_ARGS))
        wait_running(plane, namespace, "refuse")
        wait_for(lambda: len(worker_pods(plane, namespace, "refuse-default")) == 2, timeout=60,
                 message="2 worker pods")  # fmt: skip
        pods = pod_names(worker_pods(plane, namespace, "refuse-default"))
        with dask_client(plane, namespace, "refuse") as client:
            wait_workers(client, pods)
            address, data = _two_workers_one_heavier(client, pods)
            light, heavy = address
            client.run(_set_status, "paused", workers=[address[heavy]])
            wait_for(lambda: any(w["status"] == "paused" for w in client.scheduler_info(n_workers=-1)[
                "workers"].values()), timeout=30, interval=0.3, message="paused")  # fmt: skip

            plane.kubectl("scale", "-n", namespace, "daskcluster/refuse", "--replicas=1")
            kept = wait_for(lambda: _degraded(plane, namespace, "refuse-default", "RetirementIncomplete"),
                            timeout=60, interval=0.5, message="Degraded=RetirementIncomplete")  # fmt: skip
            assert light in kept["message"] and heavy not in kept["message"]
            failure = condition(get(plane, namespace, "daskworkergroup", "refuse-default"), "ReplicaFailure")
            assert failure["reason"] == "RetirementIncomplete" and light in failure["message"]
            assert any(e["reason"] == "RetirementIncomplete" and light in e["message"]
                       for e in warning_events(plane, namespace, "refuse-default"))  # fmt: skip
            assert pod_names(worker_pods(plane, namespace, "refuse-default")) == pods

            client.run(_set_status, "running", workers=[address[heavy]])
            wait_for(lambda: pod_names(worker_pods(plane, namespace, "refuse-default")) == {heavy},
                     timeout=90, interval=0.5, message="the light pod retired once the other resumed")  # fmt: skip
            wait_workers(client, {heavy})
            assert client.gather(data)[:2] == ["light-0", "light-1"]
            wait_for(lambda: condition(get(plane, namespace, "daskworkergroup", "refuse-default"),
                                       "Degraded").get("status") == "False", timeout=30, interval=0.5,
                     message="Degraded cleared")  # fmt: skip
            assert (
                condition(get(plane, namespace, "daskworkergroup", "refuse-default"), "ReplicaFailure") == {}
            )
            requests = client.run_on_scheduler(_retire_requests)
            assert 2 <= requests <= 4, (
                requests
            )  # refused, then retried after 5 s, 10 s ...: not every reconcile


def test_a_stuck_retirement_holds_up_no_other_cluster_and_is_asked_once(
    plane: Any, namespace: str, tmp_path: Path
) -> None:
    """The worker that must take the retiring worker's data is stopped (SIGSTOP): the retirement hangs.
    With one reconcile worker, another cluster still scales down while it hangs; when the request times
    out the operator says so and never asks again while the scheduler is retiring; once the stopped worker
    runs again the retirement completes and the pod goes, nothing lost (if the retired worker's container
    restarted and joined again first, that worker is retired too before the pod goes)."""
    with operator_with(plane, namespace, tmp_path, "--concurrency=1", "--retire-timeout=25"):
        for name in ("stuck", "quick"):
            apply(plane, namespace, cluster_manifest(name, 2, worker_args=UNLIMITED_WORKER_ARGS))
        for name in ("stuck", "quick"):
            wait_running(plane, namespace, name)
            wait_for(lambda name=name: len(worker_pods(plane, namespace, f"{name}-default")) == 2,
                     timeout=60, message=f"2 {name} worker pods")  # fmt: skip
        with dask_client(plane, namespace, "quick") as quick:  # joined: its scale-down needs a retirement
            wait_workers(quick, pod_names(worker_pods(plane, namespace, "quick-default")))
        pods = pod_names(worker_pods(plane, namespace, "stuck-default"))
        with dask_client(plane, namespace, "stuck") as client:
            wait_workers(client, pods)
            address, data = _two_workers_one_heavier(client, pods)
            light, heavy = address
            pod = next(
                p for p in worker_pods(plane, namespace, "stuck-default") if p["metadata"]["name"] == heavy
            )
            pid = host_pid(pod, client.run(os.getpid, workers=[address[heavy]])[address[heavy]])
            os.kill(pid, signal.SIGSTOP)
            try:
                plane.kubectl("scale", "-n", namespace, "daskcluster/stuck", "--replicas=1")

                def retiring() -> bool:
                    group = get(plane, namespace, "daskworkergroup", "stuck-default")
                    return condition(group, "Progressing").get("reason") == "RetiringWorkers"

                wait_for(retiring, timeout=60, interval=0.3, message="the retirement in flight")
                asked = time.monotonic()
                plane.kubectl("scale", "-n", namespace, "daskcluster/quick", "--replicas=1")
                wait_for(lambda: len(worker_pods(plane, namespace, "quick-default")) == 1, timeout=60,
                         interval=0.3, message="the other cluster scaled down")  # fmt: skip
                took = time.monotonic() - asked
                assert retiring() and took < 25, (
                    f"quick took {took:.1f} s; stuck still retiring: {retiring()}"
                )
                print(f"other cluster scaled down in {took:.1f} s while a retirement hung")

                timed_out = wait_for(lambda: _degraded(plane, namespace, "stuck-default", "RetirementTimedOut"),
                                     timeout=60, interval=0.5, message="Degraded=RetirementTimedOut")  # fmt: skip
                assert light in timed_out["message"]
                assert pod_names(worker_pods(plane, namespace, "stuck-default")) == pods
                holds_for(lambda: client.run_on_scheduler(_retire_requests) == 1, 15, interval=1.0,
                          message="one retire request at the scheduler")  # fmt: skip
            finally:
                os.kill(pid, signal.SIGCONT)
            wait_for(lambda: pod_names(worker_pods(plane, namespace, "stuck-default")) == {heavy}, timeout=90,
                     interval=0.5, message="the retired pod deleted once the retirement completed")  # fmt: skip
            wait_workers(client, {heavy})
            assert client.gather(data)[:2] == ["light-0", "light-1"]
            logs = [m for _, m in client.get_scheduler_logs(n=400) if "etir" in m or "worker" in m.lower()]
            # One request while the scheduler retired; a second only if the retired worker's container
            # restarted and its new worker joined before the pod went: that worker is retired in turn (it
            # may have been given data), never deleted unasked.
            assert client.run_on_scheduler(_retire_requests) in (1, 2), "\n".join(reversed(logs))
            events = get(plane, namespace, "events", "--field-selector",
                         "involvedObject.name=stuck-default")["items"]  # fmt: skip
            assert any(e["reason"] == "RetirementTimedOut" for e in events)
