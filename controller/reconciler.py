"""What every Dask reconciler holds: the manager's cache, one executor for its plans, the operator's
settings and a clock; and the one shape of a reconcile: fetch, plan (asking the scheduler at most one
question), execute, requeue.

Invariant: reconcilers read the world only through `cache` and write it only through `executor`; time
comes from `clock`, so tests drive it. Held by the e2e tests in test/e2e/.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dask_operator.controller.executor import Executor, Outcome, RetireWorkers
from dask_operator.controller.objects import Obj
from dask_operator.controller.plans import Plan
from dask_operator.controller.runtime.reconcile import Result
from dask_operator.controller.settings import OperatorSettings


class DaskReconciler:
    # Seconds within which status changes are coalesced into one write (0: every change at once).
    status_window = 0.0

    def __init__(
        self, manager: Any, settings: OperatorSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.cache = manager.cache
        self.executor = Executor(
            manager.client,
            manager.applier,
            manager.recorder,
            settings.events_enabled,
            status_window=self.status_window,
        )
        self.settings = settings
        self.clock = clock

    def execute(
        self, obj: Obj, plan: Plan, now: float, retire_workers: RetireWorkers | None = None
    ) -> tuple[Outcome, Result]:
        outcome = self.executor.run(obj, plan, now, retire_workers)
        return outcome, Result(requeue_after=outcome.requeue_after)
