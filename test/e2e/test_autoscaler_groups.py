"""Per-group autoscaling end to end: a CPU group and a GPU group of one cluster, each with its own
DaskAutoscaler, driven by the demand the scheduler reports per resource-restriction set (the extension the
operator preloads into the scheduler); and a burst from zero that gets every pod in one decision.

Real scheduler and worker processes on the process node; "GPU" is a Dask worker resource
(`--resources GPU=1`), nothing about GPUs is real here. Waits have deadlines; nothing sleeps to
synchronise. Slow (about two minutes together): marker `elastic`, run with
`hack/test test/e2e/test_autoscaler_groups.py -m elastic`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from support.objects import DaskAutoscalerBuilder
from support.operator import (
    WORKER_ARGS,
    OperatorProcess,
    apply,
    cluster_manifest,
    condition,
    dask_client,
    get,
    group_manifest,
    wait_running,
    worker_pods,
)
from support.wait import wait_for

pytestmark = [pytest.mark.elastic, pytest.mark.timeout(420)]


def replicas(plane: Any, namespace: str, group: str) -> int | None:
    obj = get(plane, namespace, "daskworkergroup", group)
    return None if obj is None else int(obj["spec"]["worker"]["replicas"])


def scalings(plane: Any, namespace: str, autoscaler: str) -> list[tuple[str, int, int]]:
    """(reason, from, to) of this autoscaler's scaling Events, oldest first."""
    events = get(plane, namespace, "events", "--field-selector", f"involvedObject.name={autoscaler}")
    found = sorted(
        (e.get("firstTimestamp") or e.get("eventTime") or "", e["reason"], e["message"])
        for e in (events or {}).get("items", [])
        if e["involvedObject"]["kind"] == "DaskAutoscaler" and e["reason"] in ("ScaledUp", "ScaledDown")
    )
    steps = [(reason, re.search(r"from (\d+) to (\d+) workers", message)) for _, reason, message in found]
    return [(reason, int(m[1]), int(m[2])) for reason, m in steps if m]


def demand_reported(plane: Any, namespace: str, name: str) -> dict[str, Any] | None:
    obj = get(plane, namespace, "daskautoscaler", name)
    ready = condition(obj, "Ready").get("status") == "True"
    return obj if ready and condition(obj, "DemandPerGroup").get("status") == "True" else None


def watching(check: Callable[[], None], until: Callable[[], Any], timeout: float, message: str) -> Any:
    """Wait for `until()` while `check()` holds at every look (it asserts)."""

    def look() -> Any:
        check()
        return until()

    return wait_for(look, timeout=timeout, interval=0.5, message=message)


def memory_transitions(client: Any, keys: list[str]) -> list[int]:
    """How many times the scheduler put each key in memory, from its transition log (more than once: the
    key was recomputed). The test is the user here, so it may ask over the comm."""
    return client.run_on_scheduler(
        lambda dask_scheduler, keys=keys: [
            sum(1 for t in dask_scheduler.story(k) if t[0] == k and t[2] == "memory") for k in keys
        ]
    )


def test_gpu_tasks_grow_only_the_gpu_group_from_zero_and_it_returns_to_zero(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, cluster_manifest("mixed", 1))
    apply(plane, namespace, group_manifest("mixed-gpu", "mixed", 0, [*WORKER_ARGS, "--resources", "GPU=1"]))
    quick = {"cooldown": 3, "scale_down_delay": 5}
    cpu = DaskAutoscalerBuilder("", "cpu", "mixed").with_bounds(1, 6).with_intervals(**quick)
    gpu = (
        DaskAutoscalerBuilder("", "gpu", "mixed")
        .with_bounds(0, 3)
        .with_group("mixed-gpu")
        .with_intervals(**quick)
    )
    apply(plane, namespace, cpu.manifest())
    apply(plane, namespace, gpu.manifest())
    wait_running(plane, namespace, "mixed")
    for name in ("cpu", "gpu"):
        wait_for(lambda n=name: demand_reported(plane, namespace, n), timeout=60, interval=0.5,
                 message=f"autoscaler {name} Ready, with the scheduler's demand per group")  # fmt: skip

    def gpu_group_stays_at_zero() -> None:
        assert replicas(plane, namespace, "mixed-gpu") == 0, "plain tasks grew the GPU group"

    with dask_client(plane, namespace, "mixed") as client:
        # Plain tasks: the CPU group grows, the GPU group never does.
        plain = client.map(time.sleep, [0.5] * 40, pure=False)
        watching(gpu_group_stays_at_zero, lambda: (replicas(plane, namespace, "mixed-default") or 0) > 1,
                 timeout=60, message="plain tasks grew the CPU group")  # fmt: skip
        watching(gpu_group_stays_at_zero, lambda: all(f.done() for f in plain), timeout=120,
                 message="plain tasks done")  # fmt: skip
        watching(gpu_group_stays_at_zero, lambda: replicas(plane, namespace, "mixed-default") == 1,
                 timeout=90, message="the CPU group back at its minimum")  # fmt: skip
        wait_for(lambda: len(worker_pods(plane, namespace, "mixed-default")) == 1, timeout=90, interval=0.5,
                 message="the CPU group's extra pods gone")  # fmt: skip
        cpu_pods = {p["metadata"]["uid"] for p in worker_pods(plane, namespace, "mixed-default")}
        cpu_steps = scalings(plane, namespace, "cpu")

        # GPU tasks: only the GPU group grows, from zero, within its maximum; then back to zero.
        def cpu_group_untouched() -> None:
            assert replicas(plane, namespace, "mixed-default") == 1, "GPU tasks scaled the CPU group"
            assert (replicas(plane, namespace, "mixed-gpu") or 0) <= 3
            uids = {p["metadata"]["uid"] for p in worker_pods(plane, namespace, "mixed-default")}
            assert cpu_pods <= uids, "a CPU worker pod went while the GPU group scaled"

        accelerated = client.map(time.sleep, [0.5] * 24, resources={"GPU": 1}, pure=False)
        watching(cpu_group_untouched, lambda: (replicas(plane, namespace, "mixed-gpu") or 0) > 0, timeout=60,
                 message="GPU tasks grew the GPU group from zero")  # fmt: skip
        watching(cpu_group_untouched, lambda: all(f.done() for f in accelerated), timeout=120,
                 message="GPU tasks done")  # fmt: skip
        watching(cpu_group_untouched, lambda: replicas(plane, namespace, "mixed-gpu") == 0, timeout=90,
                 message="the idle GPU group back at zero")  # fmt: skip
        wait_for(lambda: worker_pods(plane, namespace, "mixed-gpu") == [], timeout=90, interval=0.5,
                 message="the GPU group's pods gone (retired)")  # fmt: skip
        cpu_group_untouched()
        assert scalings(plane, namespace, "cpu") == cpu_steps  # the CPU autoscaler did nothing meanwhile
        gpu_steps = scalings(plane, namespace, "gpu")
        assert gpu_steps[0][:2] == ("ScaledUp", 0) and gpu_steps[-1][0::2] == ("ScaledDown", 0), gpu_steps

        # Nothing lost (every result still there, moved off the retired GPU workers) or recomputed.
        futures = plain + accelerated
        assert all(f.status == "finished" for f in futures)
        client.gather(futures)
        assert set(memory_transitions(client, [f.key for f in futures])) == {1}


def _created(pod: dict[str, Any]) -> float:
    return datetime.fromisoformat(pod["metadata"]["creationTimestamp"]).timestamp()


def test_a_burst_from_zero_gets_every_pod_in_the_first_decision(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, cluster_manifest("burst", 0))
    apply(plane, namespace, DaskAutoscalerBuilder("", "burst", "burst").with_bounds(0, 10).manifest())
    wait_running(plane, namespace, "burst")
    wait_for(lambda: demand_reported(plane, namespace, "burst"), timeout=60, interval=0.5,
             message="autoscaler Ready, with the scheduler's demand")  # fmt: skip
    assert replicas(plane, namespace, "burst-default") == 0

    with dask_client(plane, namespace, "burst") as client:
        submitted = time.time()
        burst = client.map(time.sleep, [0.05] * 2000, pure=False)
        wait_for(lambda: len(worker_pods(plane, namespace, "burst-default")) == 10, timeout=90, interval=0.5,
                 message="ten worker pods")  # fmt: skip
        steps = scalings(plane, namespace, "burst")
        assert steps[0] == ("ScaledUp", 0, 10), steps  # one decision, every pod the burst warrants
        created = sorted(_created(p) for p in worker_pods(plane, namespace, "burst-default"))
        assert created[-1] - created[0] <= 2.0, created  # created together, not one after another
        client.gather(burst)
        done = time.time()
    print(f"\nburst of 2,000: 10 pods created {created[0] - submitted:.1f}..{created[-1] - submitted:.1f} s "
          f"after submission (second resolution), all done after {done - submitted:.1f} s")  # fmt: skip
