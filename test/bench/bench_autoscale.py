"""Benchmark: how well autoscaling serves a bursty workload: this operator's autoscaler, the reference's, and a
fixed cluster at the maximum size.

Real scheduler and worker processes on the process node, 1-thread workers. Workload: BENCH_BURSTS (3) bursts
of BENCH_TASKS (400) tasks of 0.5 s, BENCH_GAP (90) seconds apart. Compared in one run, one after the other,
each in its own namespace and never two operators at once: a fixed cluster of 10 workers (the ideal makespan),
this operator's DaskAutoscaler (minimum 0, maximum 10, default intervals), and the reference operator's
DaskAutoscaler (dask-kubernetes from PyPI, kopf; same manifests and bounds). Printed, never asserted: per
burst, seconds from submission to the first worker connected and to all warranted workers connected, and the
makespan; over the run, worker-seconds (worker pods that exist, sampled every second over [first submission,
last submission + gap]), scale decisions and reversals (a decision against the previous one's direction within
30 s; each operator's from its own log), keys lost or
recomputed (the scheduler's transition log, kept long enough for the whole run); and the ratios to the fixed
cluster and ours / reference.

The reference runs in-cluster, as a pod on the process node (test/support/reference_operator.py says why:
its autoscaler reaches schedulers through the Service's DNS name, which resolves in a pod and not on the host).
Its workers are the same real Dask workers (image, args) as ours; the Deployments it makes for them are turned
into pods by the plane's kube-controller-manager. Its scheduler gets Dask's HTTP API route (the reference asks
`/api/v1/adaptive_target` and `/api/v1/retire_workers` first, the comm RPC only if that fails), as ours adds
itself. Our CRDs lose the status subresource of DaskCluster and DaskWorkerGroup for its run, as in
bench_vs_kopf.

    hack/test test/bench/bench_autoscale.py -m bench -s       (BENCH_GAP=30 for a shorter run;
                                                               BENCH_ONLY=ours,reference: a subset;
                                                               BENCH_KEEP_LOGS=DIR: the operators' logs)
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
    decisions,
    keep_pod_logs,
    mean,
    memory_counts,
    new_namespace,
    ratio,
    reference_decisions,
    reversals,
    sampling,
    seconds,
    wait_scheduler_ready,
    with_long_log,
    with_reference,
)
from support.objects import DaskAutoscalerBuilder
from support.operator import OperatorProcess, apply, cluster_manifest, dask_client, wait_running
from support.wait import wait_for

BURSTS = int(os.environ.get("BENCH_BURSTS", "3"))
TASKS = int(os.environ.get("BENCH_TASKS", "400"))
TASK_SECONDS = 0.5
GAP = float(os.environ.get("BENCH_GAP", "90"))
MAXIMUM = 10
FIXED = "fixed at 10"

pytestmark = [pytest.mark.bench, pytest.mark.timeout(int(2400 + 3 * BURSTS * GAP))]


def run_workload(plane: Any, namespace: str, cluster: str, warranted: int) -> dict[str, Any]:
    with dask_client(plane, namespace, cluster) as client:
        t0 = time.monotonic()
        wall0 = time.time()
        load0 = os.getloadavg()[0]
        with sampling(plane, namespace, cluster, client, t0) as samples:
            bursts, futures = [], []
            for i in range(BURSTS):
                start = i * GAP
                if start > time.monotonic() - t0:
                    wait_for(lambda start=start: time.monotonic() - t0 >= start, timeout=GAP + 5, interval=0.2,
                             message=f"burst {i + 1} due")  # fmt: skip
                submitted = time.monotonic() - t0
                batch = client.map(time.sleep, [TASK_SECONDS] * TASKS, pure=False)
                futures += batch
                client.gather(batch)
                done = time.monotonic() - t0
                bursts.append(
                    {
                        "first_worker": samples.first(submitted, done, 1),
                        "all_warranted": samples.first(submitted, done + GAP, warranted),
                        "makespan": done - submitted,
                    }
                )
            end = (BURSTS - 1) * GAP + GAP
            wait_for(
                lambda: time.monotonic() - t0 >= end, timeout=GAP + 600, interval=0.5, message="run over"
            )
        keys = [f.key for f in futures]
        lost = sum(1 for f in futures if f.status != "finished")
        removals = client.run_on_scheduler(
            lambda dask_scheduler: [
                (round(t, 1), e.get("worker"), e.get("stimulus_id"), len(e.get("lost-computed-tasks") or ()))
                for t, e in dask_scheduler.get_events("all")
                if isinstance(e, dict) and e.get("action") == "remove-worker"
            ]
        )
        counts = memory_counts(client, keys)
        if any(c > 1 for c in counts) or lost:
            keep_pod_logs(plane, namespace, cluster, "recomputed")
    return {
        "bursts": bursts,
        "worker_seconds": samples.worker_seconds(0.0, end),
        "lost": lost,
        "recomputed": sum(1 for c in counts if c > 1),
        "unlogged": sum(1 for c in counts if c == 0),
        "removals": removals,
        "wall0": wall0,
        "load": (load0, os.getloadavg()[0]),
    }


def mean_makespan(result: dict[str, Any]) -> float:
    return sum(float(b["makespan"]) for b in result["bursts"]) / len(result["bursts"])


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        ("first worker (s, mean per burst)", lambda r: mean([b["first_worker"] for b in r["bursts"]])),
        ("all warranted workers (s, mean)", lambda r: mean([b["all_warranted"] for b in r["bursts"]])),
        ("all warranted workers (s)", lambda r: " ".join(seconds(b["all_warranted"]) for b in r["bursts"])),
        ("makespan per burst (s, mean)", lambda r: mean([b["makespan"] for b in r["bursts"]])),
        ("makespans (s)", lambda r: " ".join(f"{b['makespan']:.1f}" for b in r["bursts"])),
        ("worker-seconds", lambda r: f"{r['worker_seconds']:.0f}"),
        ("scale decisions", lambda r: str(r.get("decisions", "-"))),
        ("reversals", lambda r: str(r.get("reversals", "-"))),
        ("keys lost / recomputed", lambda r: f"{r['lost']} / {r['recomputed']}"),
        ("load (1-min, at start / end)", lambda r: "{:.1f} / {:.1f}".format(*r["load"])),
    ]
    names = list(results)
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  " + "  ".join(f"{n:>18}" for n in names)]
    lines += [f"{label:{width}}  " + "  ".join(f"{fn(results[n]):>18}" for n in names) for label, fn in rows]
    pairs = [("ours", FIXED), ("reference", FIXED), ("ours", "reference")]
    for a, b in pairs:
        if a in results and b in results:
            x, y = results[a], results[b]
            lines.append(f"{f'{a} / {b}':{width}}  makespan {ratio(mean_makespan(x), mean_makespan(y))}, "
                         f"worker-seconds {ratio(x['worker_seconds'], y['worker_seconds'])}")  # fmt: skip
    return "\n".join(lines)


def autoscaled(
    plane: Any,
    namespace: str,
    name: str,
    read_decisions: Callable[[], list[Decision]],
    http_api: bool = False,
) -> dict[str, Any]:
    """The cluster from zero under a DaskAutoscaler (whichever operator is running), through the workload."""
    apply(plane, namespace, with_long_log(cluster_manifest(name, 0), http_api))
    apply(plane, namespace, DaskAutoscalerBuilder("", name, name).with_bounds(0, MAXIMUM).manifest())
    wait_scheduler_ready(plane, namespace, name)
    result = run_workload(plane, namespace, name, MAXIMUM)
    steps = [s for s in read_decisions() if s.at >= result["wall0"] - 1]
    result.update(decisions=len(steps), reversals=reversals(steps))
    return result


def reference_run(plane: Any, namespace: str) -> dict[str, Any]:
    """The reference operator as a pod in `namespace`, driving the same autoscaled cluster."""
    return with_reference(
        plane,
        namespace,
        lambda: autoscaled(
            plane, namespace, "elastic", lambda: reference_decisions(plane, namespace), http_api=True
        ),
    )


def test_bursts_ours_reference_and_a_fixed_cluster(plane: Any, namespace: str, tmp_path: Path) -> None:
    only = {w for w in os.environ.get("BENCH_ONLY", "").split(",") if w}
    wanted = only or {"fixed", "ours", "reference"}
    results: dict[str, dict[str, Any]] = {}

    logs = Path(os.environ.get("BENCH_KEEP_LOGS") or tmp_path)  # a directory that outlives pytest's rotation
    logs.mkdir(parents=True, exist_ok=True)
    ours_operator = OperatorProcess(plane, namespace, logs / f"operator-{os.getpid()}.log").start()
    try:
        if "fixed" in wanted:
            apply(plane, namespace, with_long_log(cluster_manifest("fixed", MAXIMUM)))
            wait_running(plane, namespace, "fixed", timeout=180)
            results[FIXED] = run_workload(plane, namespace, "fixed", MAXIMUM)
            plane.kubectl("delete", "-n", namespace, "daskcluster", "fixed", "--wait=true", timeout=180)
        if "ours" in wanted:
            results["ours"] = autoscaled(
                plane, namespace, "elastic", lambda: decisions(ours_operator.log_path)
            )
            plane.kubectl("delete", "-n", namespace, "daskcluster", "elastic", "--wait=true", timeout=180)
    except BaseException:
        print(f"--- operator log tail ---\n{ours_operator.tail()}")
        raise
    finally:
        ours_operator.stop()  # before the reference starts: never two operators at once

    if "reference" in wanted:
        results["reference"] = reference_run(plane, new_namespace(plane, "bench-reference"))

    print("\nBENCH " + json.dumps(results, indent=1, default=str))
    print(f"\n{BURSTS} bursts of {TASKS} tasks of {TASK_SECONDS} s, {GAP:g} s apart, 1-thread workers, "
          f"minimum 0, maximum {MAXIMUM}, process node; load {os.getloadavg()[0]:.1f} "
          f"(1-min average at the end){'; reference: ' + results['reference']['versions'] if 'reference' in results else ''}")  # fmt: skip
    print(table(results))
