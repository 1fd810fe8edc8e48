"""Benchmark: how well autoscaling serves a bursty workload, against a fixed cluster at the maximum size.

Real scheduler and worker processes on the process node, 1-thread workers. Workload: BENCH_BURSTS (3) bursts
of BENCH_TASKS (400) tasks of 0.5 s, BENCH_GAP (90) seconds apart. Compared in one run: this operator's
DaskAutoscaler (minimum 0, maximum 10, default intervals) and a fixed cluster of 10 workers (the ideal
makespan). Printed, never asserted: per burst, seconds from submission to the first worker connected and to
all warranted workers connected, and the makespan; over the run, worker-seconds (worker pods that exist,
sampled every second over [first submission, last submission + gap]), scale decisions and reversals (a
decision against the previous one's direction within 30 s), keys lost or recomputed (the scheduler's
transition log, kept long enough for the whole run).

    hack/test test/bench/bench_autoscale.py -m bench -s       (BENCH_GAP=30 for a shorter run; BENCH_ONLY=ours)
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
from support.objects import DaskAutoscalerBuilder
from support.operator import OperatorProcess, apply, cluster_manifest, dask_client, get, wait_running
from support.wait import wait_for

BURSTS = int(os.environ.get("BENCH_BURSTS", "3"))
TASKS = int(os.environ.get("BENCH_TASKS", "400"))
TASK_SECONDS = 0.5
GAP = float(os.environ.get("BENCH_GAP", "90"))
MAXIMUM = 10
LOG_LENGTH = "200000"  # the scheduler's transition log: every transition of the run, to count recomputes

pytestmark = [pytest.mark.bench, pytest.mark.timeout(int(1800 + 2 * BURSTS * GAP))]


@dataclass
class Samples:
    """(seconds since the first submission, worker pods existing, workers connected), every second."""

    rows: list[tuple[float, int, int]] = field(default_factory=list)

    def first(self, since: float, until: float, at_least: int) -> float | None:
        return next((t - since for t, _, n in self.rows if since <= t <= until and n >= at_least), None)

    def worker_seconds(self, start: float, end: float) -> float:
        rows = [r for r in self.rows if start <= r[0] <= end]
        return sum((b[0] - a[0]) * a[1] for a, b in itertools.pairwise(rows))


@contextmanager
def sampling(plane: Any, namespace: str, cluster: str, client: Any, t0: float) -> Iterator[Samples]:
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(plane.api_client())
    samples, stop = Samples(), threading.Event()
    selector = f"dask.org/cluster-name={cluster},dask.org/component=worker"

    def run() -> None:
        while not stop.is_set():
            pods = core.list_namespaced_pod(namespace, label_selector=selector).items
            existing = sum(1 for p in pods if p.metadata.deletion_timestamp is None)
            connected = len(client.scheduler_info(n_workers=-1)["workers"])
            samples.rows.append((time.monotonic() - t0, existing, connected))
            stop.wait(1.0)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(timeout=10)


def decisions(plane: Any, namespace: str, autoscaler: str) -> list[tuple[float, str, int, int]]:
    events = get(plane, namespace, "events", "--field-selector", f"involvedObject.name={autoscaler}")
    found = []
    for e in (events or {}).get("items", []):
        m = re.search(r"from (\d+) to (\d+) workers", e["message"])
        if e["involvedObject"]["kind"] == "DaskAutoscaler" and m:
            at = datetime.fromisoformat(e.get("firstTimestamp") or e["eventTime"]).timestamp()
            found.append((at, e["reason"], int(m[1]), int(m[2])))
    return sorted(found)


def reversals(steps: list[tuple[float, str, int, int]], within: float = 30.0) -> int:
    return sum(1 for a, b in itertools.pairwise(steps) if a[1] != b[1] and b[0] - a[0] < within)


def with_long_log(manifest: dict[str, Any]) -> dict[str, Any]:
    container = manifest["spec"]["scheduler"]["spec"]["containers"][0]
    container["env"] = [{"name": "DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH", "value": LOG_LENGTH}]
    return manifest


def run_workload(plane: Any, namespace: str, cluster: str, warranted: int) -> dict[str, Any]:
    with dask_client(plane, namespace, cluster) as client:
        t0 = time.monotonic()
        wall0 = time.time()
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
        counts = client.run_on_scheduler(
            lambda dask_scheduler, keys=keys: [
                sum(1 for t in dask_scheduler.story(k) if t[0] == k and t[2] == "memory") for k in keys
            ]
        )
    return {
        "bursts": bursts,
        "worker_seconds": samples.worker_seconds(0.0, end),
        "lost": lost,
        "recomputed": sum(1 for c in counts if c > 1),
        "unlogged": sum(1 for c in counts if c == 0),
        "removals": removals,
        "wall0": wall0,
    }


def mean(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{sum(known) / len(known):.1f}" if len(known) == len(values) and known else "n/a"


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = [
        ("first worker (s, mean per burst)", lambda r: mean([b["first_worker"] for b in r["bursts"]])),
        ("all warranted workers (s, mean)", lambda r: mean([b["all_warranted"] for b in r["bursts"]])),
        ("makespan per burst (s, mean)", lambda r: mean([b["makespan"] for b in r["bursts"]])),
        ("makespans (s)", lambda r: " ".join(f"{b['makespan']:.1f}" for b in r["bursts"])),
        ("worker-seconds", lambda r: f"{r['worker_seconds']:.0f}"),
        ("scale decisions", lambda r: str(r.get("decisions", "-"))),
        ("reversals", lambda r: str(r.get("reversals", "-"))),
        ("keys lost / recomputed", lambda r: f"{r['lost']} / {r['recomputed']}"),
    ]
    names = list(results)
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':{width}}  " + "  ".join(f"{n:>18}" for n in names)]
    lines += [f"{label:{width}}  " + "  ".join(f"{fn(results[n]):>18}" for n in names) for label, fn in rows]
    fixed, ours = results.get("fixed at 10"), results.get("ours")
    if fixed and ours:
        span = [float(mean([b["makespan"] for b in r["bursts"]])) for r in (ours, fixed)]
        lines.append(f"{'ours / fixed':{width}}  makespan {span[0] / span[1]:.2f}x, "
                     f"worker-seconds {ours['worker_seconds'] / fixed['worker_seconds']:.2f}x")  # fmt: skip
    return "\n".join(lines)


def test_bursts_ours_against_a_fixed_cluster(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    results: dict[str, dict[str, Any]] = {}

    if os.environ.get("BENCH_ONLY", "") in ("", "fixed"):
        apply(plane, namespace, with_long_log(cluster_manifest("fixed", MAXIMUM)))
        wait_running(plane, namespace, "fixed", timeout=180)
        results["fixed at 10"] = run_workload(plane, namespace, "fixed", MAXIMUM)
        plane.kubectl("delete", "-n", namespace, "daskcluster", "fixed", "--wait=true", timeout=180)

    apply(plane, namespace, with_long_log(cluster_manifest("elastic", 0)))
    apply(
        plane, namespace, DaskAutoscalerBuilder("", "elastic", "elastic").with_bounds(0, MAXIMUM).manifest()
    )
    wait_running(plane, namespace, "elastic", timeout=180)
    ours = run_workload(plane, namespace, "elastic", MAXIMUM)
    steps = [s for s in decisions(plane, namespace, "elastic") if s[0] >= ours["wall0"] - 1]
    ours.update(decisions=len(steps), reversals=reversals(steps))
    results["ours"] = ours

    print("\nBENCH " + json.dumps(results, indent=1, default=str))
    print(f"\n{BURSTS} bursts of {TASKS} tasks of {TASK_SECONDS} s, {GAP:g} s apart, 1-thread workers, "
          f"minimum 0, maximum {MAXIMUM}; load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(table(results))
