"""The scheduler-side half of per-group autoscaling: a Dask preload that adds one JSON route to the
scheduler's HTTP server, reporting the work waiting or running per resource-restriction set and the
workers with their resources.

The operator ships this file's text into every scheduler pod it makes, as the value of
`DASK_DISTRIBUTED__SCHEDULER__PRELOAD` (distributed imports a preload given as source text), so it works
with any Dask image and needs no volume. It therefore imports nothing of dask_operator and only what every
Dask image has (distributed, tornado).

Invariant: the route only reads the scheduler's state, on the scheduler's event loop, and answers plain
JSON: `{"version": 1, "demand": [{"resources": {name: amount}, "tasks": n, "seconds": s}], "workers":
[{"name", "nthreads", "nbytes", "resources"}], "truncated": bool}`, one demand entry per distinct restriction set
(`{}`: tasks that need no resource), counting tasks queued, unrunnable (no worker can take them),
processing on a worker, and next up: waiting only on tasks of those three states, so a group whose tasks come
next in the graph (GPU work after a CPU stage) is started while that stage runs, not after it. At most
MAX_TASKS tasks are looked at per answer, so a huge graph costs the scheduler a bounded pause. Held by test/unit/test_demand_extension.py (a real scheduler and workers).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from typing import Any

from tornado import web

DEMAND_PATH = "/dask-operator/v1/demand"
VERSION = 1
MAX_TASKS = 200_000  # tasks looked at per answer; beyond this the answer says `truncated`
UNKNOWN_SECONDS = 0.5  # distributed's default for a task prefix it has not seen run


def _restriction_key(task: Any) -> tuple[tuple[str, float], ...]:
    restrictions = getattr(task, "resource_restrictions", None) or {}
    return tuple(sorted((str(k), float(v)) for k, v in restrictions.items()))


def _seconds(scheduler: Any, task: Any) -> float:
    """The expected run time of `task`, as the scheduler estimates it for its own adaptive target."""
    estimate = getattr(scheduler, "_get_prefix_duration", None)
    prefix = getattr(task, "prefix", None)
    if estimate is None or prefix is None:
        return UNKNOWN_SECONDS
    try:
        return max(0.0, float(estimate(prefix)))
    except Exception:  # noqa: BLE001  (a private API of distributed: never let it break the answer)
        return UNKNOWN_SECONDS


PENDING_STATES = frozenset({"queued", "no-worker", "processing"})


def _pending_tasks(scheduler: Any) -> Iterator[Any]:
    """Tasks that want a thread now: queued, unrunnable (no worker can take them), processing."""
    yield from getattr(scheduler, "queued", ())
    yield from getattr(scheduler, "unrunnable", {})
    for worker in scheduler.workers.values():
        yield from worker.processing


def _next_up(pending: Iterable[Any]) -> Iterator[Any]:
    """Dependents of `pending` that wait only on pending tasks: runnable once the work now queued or running
    ends. Each dependent is looked at once."""
    seen: set[int] = set()
    for task in pending:
        for dependent in getattr(task, "dependents", None) or ():
            if id(dependent) in seen:
                continue
            seen.add(id(dependent))
            waiting_on = getattr(dependent, "waiting_on", None) or ()
            if getattr(dependent, "state", None) == "waiting" and all(
                getattr(d, "state", None) in PENDING_STATES for d in waiting_on
            ):
                yield dependent


def demand_report(scheduler: Any, max_tasks: int = MAX_TASKS) -> dict[str, Any]:
    """The route's answer for `scheduler` (a distributed.Scheduler)."""
    counts: dict[tuple[tuple[str, float], ...], list[float]] = {}
    pending = list(itertools.islice(_pending_tasks(scheduler), max_tasks + 1))
    room = max(0, max_tasks - len(pending))
    tasks = [*pending, *itertools.islice(_next_up(pending[:max_tasks]), room + 1)]
    truncated = len(tasks) > max_tasks
    for task in tasks[:max_tasks]:
        entry = counts.setdefault(_restriction_key(task), [0, 0.0])
        entry[0] += 1
        entry[1] += _seconds(scheduler, task)
    return {
        "version": VERSION,
        "demand": [
            {"resources": dict(key), "tasks": int(n), "seconds": round(s, 3)}
            for key, (n, s) in sorted(counts.items())
        ],
        "workers": list(_workers(scheduler.workers.values())),
        "truncated": truncated,
    }


def _workers(workers: Iterable[Any]) -> Iterator[dict[str, Any]]:
    for worker in workers:
        yield {
            "name": str(worker.name),
            "nthreads": int(worker.nthreads),
            "nbytes": int(getattr(worker, "nbytes", 0) or 0),
            "resources": {str(k): float(v) for k, v in (worker.resources or {}).items()},
        }


class DemandHandler(web.RequestHandler):
    def initialize(self, dask_server: Any = None) -> None:
        self.scheduler = dask_server

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(demand_report(self.scheduler)))


def dask_setup(scheduler: Any) -> None:
    """distributed's preload hook: add the route to the scheduler's HTTP server (absent: nothing to add)."""
    application = getattr(scheduler, "http_application", None)
    if application is None:
        return
    application.add_handlers(r".*$", [(DEMAND_PATH, DemandHandler, {"dask_server": scheduler})])
