"""Benchmark: a mixed CPU/GPU graph on a cluster with a CPU group and a GPU group: this operator's two
autoscalers (one per group, demand routed by the tasks' resource restrictions), the reference's autoscaler
(it scales the default group only, so its GPU group is fixed at its maximum, as its users must run it), and a
fixed cluster at both maxima (the ideal makespan).

Real scheduler and worker processes on the process node, 1-thread workers; "GPU" is a Dask worker resource
(`--resources GPU=1`). Each of BENCH_ROUNDS (2) rounds, BENCH_GAP (90) s apart: PREP (120) CPU tasks of 0.5 s,
then TRAIN (30) GPU-restricted tasks of 1 s, each needing four preps, then one CPU task that reads every
train. CPU group 0..6, GPU group 0..3. Printed, never asserted: makespan per round; worker-seconds, in all and
of the GPU group (pods that exist, sampled every second over the run); scale decisions and reversals per group
(each operator's own log); wrong-group scale-ups: a group grown while none of its tasks (restricted or not)
was queued, waiting for a worker, processing or next up (waiting only on such tasks) during the three seconds
before the decision (sampled from the scheduler every second); keys lost or recomputed (the scheduler's transition log).

    hack/test test/bench/bench_autoscale_groups.py -m bench -s     (BENCH_GAP=30 for a shorter run;
                                                                   BENCH_ONLY=ours,reference: a subset)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.autoscale_bench import (
    Decision,
    Samples,
    decisions,
    keep_pod_logs,
    memory_counts,
    new_namespace,
    ratio,
    reference_decisions,
    reversals,
    sampling,
    wait_scheduler_ready,
    with_long_log,
    with_reference,
)
from support.objects import DaskAutoscalerBuilder
from support.operator import (
    WORKER_ARGS,
    OperatorProcess,
    apply,
    cluster_manifest,
    dask_client,
    group_manifest,
    wait_running,
)
from support.wait import wait_for

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
GAP = float(os.environ.get("BENCH_GAP", "90"))
PREP, PREP_SECONDS = 120, 0.5
TRAIN, TRAIN_SECONDS, FAN_IN = 30, 1.0, 4
CPU_MAX, GPU_MAX = 6, 3
GPU_ARGS = [*WORKER_ARGS, "--resources", "GPU=1"]
FIXED = f"fixed at {CPU_MAX}+{GPU_MAX}"
CLUSTER = "mixed"
CPU_GROUP, GPU_GROUP = f"{CLUSTER}-default", f"{CLUSTER}-gpu"
WINDOW = 3.0  # seconds before a scale-up in which the group's tasks must have been waiting or running

pytestmark = [pytest.mark.bench, pytest.mark.timeout(int(2400 + 3 * ROUNDS * GAP))]


def task_functions() -> tuple[
    Callable[..., int], Callable[..., int], Callable[..., int], Callable[[Any], Any]
]:
    """prep, train, report, and `runnable` (for the scheduler: (CPU, GPU) tasks queued, waiting for a worker,
    processing, or next up: waiting only on tasks in those states). Defined here, not at module level, so
    Dask pickles them by value: the workers cannot import this module."""

    def prep(i: int) -> int:
        time.sleep(PREP_SECONDS)
        return i

    def train(*inputs: int) -> int:
        time.sleep(TRAIN_SECONDS)
        return sum(inputs)

    def report(*trained: int) -> int:
        return sum(trained)

    def runnable(dask_scheduler: Any) -> tuple[int, int]:
        pending = ("queued", "no-worker", "processing")
        counts = [0, 0]
        for ts in dask_scheduler.tasks.values():
            next_up = ts.state == "waiting" and all(d.state in pending for d in ts.waiting_on)
            if ts.state in pending or next_up:
                counts[1 if ts.resource_restrictions else 0] += 1
        return counts[0], counts[1]

    return prep, train, report, runnable


def wrong_group_scale_ups(steps: list[Decision], samples: Samples) -> int:
    """Scale-ups of a group while none of its tasks was runnable in the WINDOW before (GPU group: restricted
    tasks; the CPU group: the others)."""
    rows = [(r[3], r[4]) for r in samples.rows if r[4] is not None]
    wrong = 0
    for step in (s for s in steps if s.direction == "up"):
        before = [counts for at, counts in rows if step.at - WINDOW <= at <= step.at]
        before = before or [counts for at, counts in rows if at <= step.at][-1:]
        which = 1 if step.group == GPU_GROUP else 0
        if before and all(counts[which] == 0 for counts in before):
            wrong += 1
    return wrong


def cluster(cpu: int, gpu: int, http_api: bool = False) -> list[dict[str, Any]]:
    return [
        with_long_log(cluster_manifest(CLUSTER, cpu), http_api),
        group_manifest(GPU_GROUP, CLUSTER, gpu, GPU_ARGS),
    ]


def run_workload(plane: Any, namespace: str) -> dict[str, Any]:
    prep, train, report, runnable = task_functions()
    with dask_client(plane, namespace, CLUSTER) as client:
        t0, wall0, load0 = time.monotonic(), time.time(), os.getloadavg()[0]
        gpu_selector = f"dask.org/cluster-name={CLUSTER},dask.org/workergroup-name={GPU_GROUP}"
        with (
            sampling(
                plane, namespace, CLUSTER, client, t0, lambda c: c.run_on_scheduler(runnable)
            ) as samples,
            sampling(plane, namespace, CLUSTER, client, t0, selector=gpu_selector) as gpu_samples,
        ):
            rounds, futures = [], []
            for i in range(ROUNDS):
                start = i * GAP
                wait_for(lambda start=start: time.monotonic() - t0 >= start, timeout=GAP + 600, interval=0.2,
                         message=f"round {i + 1} due")  # fmt: skip
                submitted = time.monotonic() - t0
                preps = client.map(prep, range(PREP), pure=False)
                trains = [
                    client.submit(
                        train, *preps[j * FAN_IN : (j + 1) * FAN_IN], resources={"GPU": 1}, pure=False
                    )
                    for j in range(TRAIN)
                ]
                last = client.submit(report, *trains, pure=False)
                futures += [*preps, *trains, last]
                last.result()
                rounds.append(time.monotonic() - t0 - submitted)
            end = ROUNDS * GAP
            wait_for(
                lambda: time.monotonic() - t0 >= end, timeout=GAP + 600, interval=0.5, message="run over"
            )
        counts = memory_counts(client, [f.key for f in futures])
        lost = sum(1 for f in futures if f.status != "finished")
        if any(c > 1 for c in counts) or lost:
            keep_pod_logs(plane, namespace, CLUSTER, "recomputed")
    return {
        "makespans": rounds,
        "worker_seconds": samples.worker_seconds(0.0, end),
        "gpu_worker_seconds": gpu_samples.worker_seconds(0.0, end),
        "lost": lost,
        "recomputed": sum(1 for c in counts if c > 1),
        "samples": samples,
        "wall0": wall0,
        "load": (load0, os.getloadavg()[0]),
    }


def autoscaled(
    plane: Any,
    namespace: str,
    autoscalers: list[dict[str, Any]],
    gpu_replicas: int,
    read_decisions: Callable[[], list[Decision]],
    http_api: bool = False,
) -> dict[str, Any]:
    for obj in [*cluster(0, gpu_replicas, http_api), *autoscalers]:
        apply(plane, namespace, obj)
    wait_scheduler_ready(plane, namespace, CLUSTER)
    result = run_workload(plane, namespace)
    steps = [s for s in read_decisions() if s.at >= result["wall0"] - 1]
    result.update(
        decisions=len(steps),
        reversals=reversals(steps),
        wrong_group=wrong_group_scale_ups(steps, result["samples"]),
        steps=[(round(s.at - result["wall0"], 1), s.group, s.old, s.new) for s in steps],
    )
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("makespan per round (s, mean)", lambda r: f"{sum(r['makespans']) / len(r['makespans']):.1f}"),
        ("makespans (s)", lambda r: " ".join(f"{m:.1f}" for m in r["makespans"])),
        ("worker-seconds, all", lambda r: f"{r['worker_seconds']:.0f}"),
        ("worker-seconds, GPU group", lambda r: f"{r['gpu_worker_seconds']:.0f}"),
        ("scale decisions", lambda r: str(r.get("decisions", "-"))),
        ("reversals", lambda r: str(r.get("reversals", "-"))),
        ("wrong-group scale-ups", lambda r: str(r.get("wrong_group", "-"))),
        ("keys lost / recomputed", lambda r: f"{r['lost']} / {r['recomputed']}"),
        ("load (1-min, at start / end)", lambda r: "{:.1f} / {:.1f}".format(*r["load"])),
    ]
    names = list(results)
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  " + "  ".join(f"{n:>18}" for n in names)]
    lines += [f"{label:{width}}  " + "  ".join(f"{fn(results[n]):>18}" for n in names) for label, fn in rows]
    for a, b in [("ours", FIXED), ("reference", FIXED), ("ours", "reference")]:
        if a in results and b in results:
            x, y = results[a], results[b]
            lines.append(f"{f'{a} / {b}':{width}}  makespan {ratio(sum(x['makespans']), sum(y['makespans']))}, "
                         f"worker-seconds {ratio(x['worker_seconds'], y['worker_seconds'])}, GPU worker-seconds "
                         f"{ratio(x['gpu_worker_seconds'], y['gpu_worker_seconds'])}")  # fmt: skip
    return "\n".join(lines)


def test_a_mixed_graph_ours_reference_and_a_fixed_cluster(plane: Any, namespace: str, tmp_path: Path) -> None:
    wanted = {w for w in os.environ.get("BENCH_ONLY", "").split(",") if w} or {"fixed", "ours", "reference"}
    results: dict[str, dict[str, Any]] = {}
    logs = Path(os.environ.get("BENCH_KEEP_LOGS") or tmp_path)
    logs.mkdir(parents=True, exist_ok=True)
    ours_operator = OperatorProcess(plane, namespace, logs / f"operator-groups-{os.getpid()}.log").start()
    try:
        if "fixed" in wanted:
            for obj in cluster(CPU_MAX, GPU_MAX):
                apply(plane, namespace, obj)
            wait_running(plane, namespace, CLUSTER, timeout=180)
            results[FIXED] = run_workload(plane, namespace)
            plane.kubectl("delete", "-n", namespace, "daskcluster", CLUSTER, "--wait=true", timeout=180)
        if "ours" in wanted:
            scalers = [
                DaskAutoscalerBuilder("", "cpu", CLUSTER).with_bounds(0, CPU_MAX).manifest(),
                DaskAutoscalerBuilder("", "gpu", CLUSTER)
                .with_group(GPU_GROUP)
                .with_bounds(0, GPU_MAX)
                .manifest(),
            ]
            results["ours"] = autoscaled(
                plane, namespace, scalers, 0, lambda: decisions(ours_operator.log_path)
            )
            plane.kubectl("delete", "-n", namespace, "daskcluster", CLUSTER, "--wait=true", timeout=180)
    except BaseException:
        print(f"--- operator log tail ---\n{ours_operator.tail()}")
        raise
    finally:
        ours_operator.stop()  # before the reference starts: never two operators at once

    if "reference" in wanted:
        where = new_namespace(plane, "bench-groups-ref")
        scaler = DaskAutoscalerBuilder("", "cpu", CLUSTER).with_bounds(0, CPU_MAX).manifest()
        results["reference"] = with_reference(
            plane,
            where,
            lambda: autoscaled(
                plane, where, [scaler], GPU_MAX, lambda: reference_decisions(plane, where, CPU_GROUP), True
            ),
        )

    for result in results.values():
        result.pop("samples", None)
    print("\nBENCH " + json.dumps(results, indent=1, default=str))
    print(f"\n{ROUNDS} rounds, {GAP:g} s apart, of {PREP} CPU tasks of {PREP_SECONDS} s -> {TRAIN} GPU tasks of "
          f"{TRAIN_SECONDS} s (each reads {FAN_IN}) -> 1 CPU task; CPU group 0..{CPU_MAX}, GPU group 0..{GPU_MAX} "
          f"(the reference: GPU group fixed at {GPU_MAX}); process node; load {os.getloadavg()[0]:.1f} at the end"
          f"{'; reference: ' + results['reference']['versions'] if 'reference' in results else ''}")  # fmt: skip
    print(table(results))
