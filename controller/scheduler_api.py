"""What the operator and a Dask scheduler agree on, as values: the HTTP routes the operator enables on the
schedulers it makes, and a worker as the scheduler names it.

Invariant: constants and frozen data only (planners import this; they never import the scheduler client).
Held by test/unit/test_scheduler.py.
"""

from __future__ import annotations

from dataclasses import dataclass

# The scheduler's HTTP API (distributed.http.scheduler.api) is off by default (dask/distributed#6407).
# Scheduler pods made by this operator get it through this configuration variable, next to the defaults.
HTTP_ROUTES_ENV = "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES"
DEFAULT_HTTP_ROUTES = (
    "distributed.http.scheduler.prometheus",
    "distributed.http.scheduler.info",
    "distributed.http.scheduler.json",
    "distributed.http.health",
    "distributed.http.proxy",
    "distributed.http.statics",
)
API_ROUTE = "distributed.http.scheduler.api"
HTTP_ROUTES_VALUE = repr([*DEFAULT_HTTP_ROUTES, API_ROUTE])


# A worker's status while the scheduler retires it (distributed.core.Status.closing_gracefully).
RETIRING_STATUS = "closing_gracefully"


@dataclass(frozen=True)
class DaskWorker:
    """A worker as the scheduler knows it: its name (= the worker pod's name) and its comm address; as it
    last reported (heartbeat): the bytes of data it holds, its status, and its incoming transfers."""

    name: str
    address: str
    nbytes: int = 0
    status: str = "running"
    incoming: int = 0  # data transfers to this worker in flight

    @property
    def retiring(self) -> bool:
        return self.status == RETIRING_STATUS
