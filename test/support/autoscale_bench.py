"""What the autoscaling benchmarks (test/bench/bench_autoscale*.py) share: sampling a cluster's pods and workers
every second, reading each operator's scale decisions from its log, and the table's number formats.

Invariant: read-only towards the cluster (list, Dask client questions); decisions are read from the operators'
own logs at the times they stamped, so ours and the reference's are counted the same way.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dask_operator.controller.contract.scheduler_api import HTTP_ROUTES_ENV, HTTP_ROUTES_VALUE
from support.operator import apply, get, pods, scheduler_ready
from support.reference_operator import (
    REFERENCE_POD,
    reference_pod,
    reference_venv,
    reference_versions,
    status_subresource,
)
from support.wait import wait_for

LOG_LENGTH = "200000"  # the scheduler's transition log: every transition of the run, to count recomputes


@dataclass
class Samples:
    """(seconds since t0, worker pods existing, workers connected, wall time, probe's answer), every second."""

    rows: list[tuple[float, int, int, float, Any]] = field(default_factory=list)

    def first(self, since: float, until: float, at_least: int) -> float | None:
        return next((r[0] - since for r in self.rows if since <= r[0] <= until and r[2] >= at_least), None)

    def worker_seconds(self, start: float, end: float) -> float:
        rows = [r for r in self.rows if start <= r[0] <= end]
        return sum((b[0] - a[0]) * a[1] for a, b in itertools.pairwise(rows))


@contextmanager
def sampling(
    plane: Any,
    namespace: str,
    cluster: str,
    client: Any,
    t0: float,
    probe: Callable[[Any], Any] | None = None,
    selector: str = "",
) -> Iterator[Samples]:
    """Every second: the cluster's worker pods (not terminating; `selector` narrows them), the scheduler's
    workers, and `probe(client)` if given."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(plane.api_client())
    samples, stop = Samples(), threading.Event()
    selector = selector or f"dask.org/cluster-name={cluster},dask.org/component=worker"

    def run() -> None:
        while not stop.is_set():
            found = core.list_namespaced_pod(namespace, label_selector=selector).items
            existing = sum(1 for p in found if p.metadata.deletion_timestamp is None)
            connected = len(client.scheduler_info(n_workers=-1)["workers"])
            extra = probe(client) if probe is not None else None
            samples.rows.append((time.monotonic() - t0, existing, connected, time.time(), extra))
            stop.wait(1.0)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(timeout=10)


@dataclass(frozen=True)
class Decision:
    at: float  # epoch seconds
    direction: str  # "up" or "down"
    old: int
    new: int
    group: str = ""


def decision(at: float, old: int, new: int, group: str = "") -> Decision:
    return Decision(at, "up" if new > old else "down", old, new, group)


def decisions(log: Path) -> list[Decision]:
    """Ours: from its log, the `scaled` line of each decision (after=, before=, group=, ts=). Its Events say
    the same but the API server folds repeated messages into one Event with a count, which loses the times."""
    found = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace")).splitlines():
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        if fields.get("msg") == "scaled" and {"after", "before", "ts"} <= fields.keys():
            old, new = int(fields["before"]), int(fields["after"])
            found.append(decision(float(fields["ts"]), old, new, fields.get("group", "")))
    return sorted(found, key=lambda d: d.at)


def reference_decisions(plane: Any, namespace: str, group: str = "") -> list[Decision]:
    """The reference's: from its log, "Autoscaler updated <cluster> worker count from 0 to 10" (kopf posts a
    timer's log lines as no Event), at the time the node stamped on the line. It scales only the default
    group; `group` names it."""
    logs = plane.kubectl("logs", "-n", namespace, REFERENCE_POD, "--timestamps", check=False).stdout
    found = []
    for line in logs.splitlines():
        m = re.match(r"(\S+?)(?:\.\d+)?Z .*Autoscaler updated \S+ worker count from (\d+) to (\d+)", line)
        if m:
            at = datetime.fromisoformat(m[1] + "+00:00").timestamp()
            found.append(decision(at, int(m[2]), int(m[3]), group))
    return sorted(found, key=lambda d: d.at)


def reversals(steps: list[Decision], within: float = 30.0) -> int:
    """Decisions against the previous one's direction (same group) within `within` seconds."""
    count = 0
    for _, group in itertools.groupby(sorted(steps, key=lambda d: (d.group, d.at)), key=lambda d: d.group):
        count += sum(
            1 for a, b in itertools.pairwise(group) if a.direction != b.direction and b.at - a.at < within
        )
    return count


def with_long_log(manifest: dict[str, Any], http_api: bool = False) -> dict[str, Any]:
    """The scheduler keeps every transition of the run; with http_api, its HTTP API route is on (ours adds
    it to the schedulers it makes; the reference's user has to)."""
    container = manifest["spec"]["scheduler"]["spec"]["containers"][0]
    container["env"] = [{"name": "DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH", "value": LOG_LENGTH}]
    if http_api:
        container["env"].append({"name": HTTP_ROUTES_ENV, "value": HTTP_ROUTES_VALUE})
    return manifest


def memory_counts(client: Any, keys: list[str]) -> list[int]:
    """How many times the scheduler put each key in memory (more than once: recomputed; 0: not in its log)."""
    return client.run_on_scheduler(
        lambda dask_scheduler, keys=keys: [
            sum(1 for t in dask_scheduler.story(k) if t[0] == k and t[2] == "memory") for k in keys
        ]
    )


def mean(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{sum(known) / len(known):.1f}" if len(known) == len(values) and known else "n/a"


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def wait_scheduler_ready(plane: Any, namespace: str, cluster: str, timeout: float = 180) -> None:
    """The scheduler pod Ready and its Service there: the reference may leave the DaskCluster's phase Pending."""

    def ready() -> bool:
        service = get(plane, namespace, "service", f"{cluster}-scheduler")
        return service is not None and scheduler_ready(plane, namespace, cluster)

    wait_for(ready, timeout=timeout, interval=0.5, message=f"{cluster}'s scheduler pod Ready")


def reference_phase(plane: Any, namespace: str) -> str | None:
    found = pods(plane, namespace, f"app={REFERENCE_POD}")
    phase = found[0].get("status", {}).get("phase") if found else None
    assert phase not in ("Failed", "Succeeded"), f"the reference operator's pod exited: {phase}"
    return phase


def new_namespace(plane: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    plane.kubectl("create", "namespace", name)
    wait_for(lambda: get(plane, name, "serviceaccount", "default") is not None, timeout=30,
             message=f"ServiceAccount {name}/default")  # fmt: skip
    return name


def with_reference(plane: Any, namespace: str, drive: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`drive()` with the reference operator running as a pod in `namespace` (deleted afterwards), our CRDs
    without the status subresources it does not expect for that time; its result gains the reference's
    versions. BENCH_KEEP_LOGS=DIR keeps the reference's log."""
    venv = reference_venv()
    status_subresource(plane, False)
    try:
        for obj in reference_pod(venv, namespace):
            apply(plane, namespace, obj)
        wait_for(lambda: reference_phase(plane, namespace) == "Running", timeout=120, interval=0.5,
                 message="the reference operator's pod Running")  # fmt: skip
        try:
            result = drive()
        except BaseException:
            logs = plane.kubectl("logs", "-n", namespace, REFERENCE_POD, "--tail=60", check=False)
            print(f"--- reference operator log tail ---\n{logs.stdout}{logs.stderr}")
            raise
        keep = os.environ.get("BENCH_KEEP_LOGS")
        if keep:
            logs = plane.kubectl("logs", "-n", namespace, REFERENCE_POD, "--timestamps", check=False).stdout
            (Path(keep) / f"reference-{os.getpid()}.log").write_text(logs)
        result["versions"] = reference_versions(venv)
        return result
    finally:
        plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        status_subresource(plane, True)


def keep_pod_logs(plane: Any, namespace: str, cluster: str, why: str) -> None:
    """With BENCH_KEEP_LOGS=DIR: every pod of the cluster's log (and its previous container's) in DIR, named
    for `why`: what the workers and the scheduler said when keys were lost or recomputed."""
    keep = os.environ.get("BENCH_KEEP_LOGS")
    if not keep:
        return
    out = Path(keep) / f"{namespace}-{cluster}-{why}"
    out.mkdir(parents=True, exist_ok=True)
    for pod in pods(plane, namespace, f"dask.org/cluster-name={cluster}"):
        name = pod["metadata"]["name"]
        for previous in ("", "--previous"):
            args = ["logs", "-n", namespace, name, "--timestamps", *([previous] if previous else [])]
            logs = plane.kubectl(*args, check=False)
            if logs.returncode == 0:
                (out / f"{name}{previous.replace('--', '.')}.log").write_text(logs.stdout)
