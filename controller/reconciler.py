"""What every Dask reconciler holds: the manager's client, cache, applier and recorder, the operator's
settings, a clock, and a status writer.

Invariant: reconcilers read the world only through `cache` and write it only through `applier`, `client`
and `recorder`; time comes from `clock`, so tests drive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from dask_operator.controller.execute import StatusWriter
from dask_operator.controller.settings import OperatorSettings


class DaskReconciler:
    def __init__(
        self, manager: Any, settings: OperatorSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.client = manager.client
        self.cache = manager.cache
        self.applier = manager.applier
        self.recorder = manager.recorder
        self.settings = settings
        self.clock = clock
        self.status = StatusWriter(manager.applier)
