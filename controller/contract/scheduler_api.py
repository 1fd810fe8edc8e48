"""What the operator and a Dask scheduler agree on, as values: the HTTP routes the operator enables on the
schedulers it makes, the demand extension it preloads into them, and a worker as the scheduler names it.

Invariant: constants and frozen data only (planners import this; they never import the scheduler client);
the one file read is the demand extension's own source, shipped verbatim. Held by test/unit/test_scheduler.py
and test/unit/test_demand_extension.py.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# What a scheduler without the API route costs. The comm RPC is never a fallback: its messages may carry pickles,
# and the scheduler pod belongs to the tenant.
_WITHOUT_API = (
    "Without the scheduler's HTTP API the operator cannot retire workers gracefully (a scale-down waits, then "
    "is forced after the force timeout), check idleness or read an adaptive target."
)


@dataclass(frozen=True)
class RoutesDecision:
    """How the operator reaches a scheduler it makes: the routes value to set (None: leave the container's
    environment alone) and a sentence for the DaskCluster's SchedulerAPI condition."""

    value: str | None
    http_api: bool  # False: the operator cannot ask this scheduler anything (it never uses the comm RPC)
    reason: str
    message: str


def routes_decision(container: Mapping[str, Any]) -> RoutesDecision:
    """Never override routes the user gave: add the API route to Dask's defaults when none are given; leave
    routes the user set (or may set through envFrom) as they are; without the API route the operator
    cannot ask that scheduler anything."""
    env = {e.get("name"): e for e in container.get("env") or []}
    given = env.get(HTTP_ROUTES_ENV)
    if given is None:
        if container.get("envFrom"):
            return RoutesDecision(
                None,
                False,
                "NoHTTPAPI",
                f"The scheduler container takes variables from envFrom, which may set {HTTP_ROUTES_ENV}; "
                "the operator leaves its routes alone. " + _WITHOUT_API + " Set "
                f"{HTTP_ROUTES_ENV} in env (with {API_ROUTE}) to use the HTTP API.",
            )
        return RoutesDecision(
            HTTP_ROUTES_VALUE,
            True,
            "RouteAdded",
            f"Dask's default routes plus {API_ROUTE} (set by the operator).",
        )
    if "valueFrom" in given or not isinstance(given.get("value"), str):
        return RoutesDecision(
            None,
            False,
            "NoHTTPAPI",
            f"{HTTP_ROUTES_ENV} comes from a reference the operator does not read; it is left alone. "
            + _WITHOUT_API,
        )
    routes = _parse_routes(given["value"])
    if routes is None:
        return RoutesDecision(
            None,
            False,
            "NoHTTPAPI",
            f"{HTTP_ROUTES_ENV} is not a list of module names; it is left alone. " + _WITHOUT_API,
        )
    if API_ROUTE in routes:
        return RoutesDecision(None, True, "RoutesGiven", f"Your routes include {API_ROUTE}.")
    # Routes listed explicitly are a choice about what the dashboard port exposes (the API can retire
    # workers, unauthenticated): the operator does not add to them.
    return RoutesDecision(
        None,
        False,
        "NoHTTPAPI",
        f"Your {HTTP_ROUTES_ENV} does not include {API_ROUTE}; the operator leaves it as you set it. "
        + _WITHOUT_API
        + " Add the route to use the HTTP API.",
    )


def _parse_routes(value: str) -> list[str] | None:
    """The routes list as Dask reads the variable (a Python literal), or None if it is not a list of str."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return None
    if isinstance(parsed, list | tuple) and all(isinstance(r, str) for r in parsed):
        return list(parsed)
    return None


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


# The demand extension (controller/demand_extension.py) runs inside the scheduler as a preload. Its source
# goes in this variable as a one-item list literal: Dask parses the variable as a Python literal, and
# distributed imports a preload given as source text, so any Dask image runs it without a volume.
PRELOAD_ENV = "DASK_DISTRIBUTED__SCHEDULER__PRELOAD"
DEMAND_PATH = "/dask-operator/v1/demand"  # the extension's route (same constant there; a test holds it)
_EXTENSION = Path(__file__).resolve().parents[1] / "demand_extension.py"


@functools.cache
def preload_value() -> str:
    """The value of PRELOAD_ENV that loads the demand extension."""
    return repr([_EXTENSION.read_text(encoding="utf-8")])


def preload_wanted(container: Mapping[str, Any]) -> bool:
    """Whether the operator adds the extension's preload to this scheduler container: not when the user
    sets preloads (in env, possibly through envFrom, or `--preload` on the command line, which replaces the
    configured ones), so a user's preload is never overridden. Without it the autoscaler falls back to the
    scheduler's adaptive target, for the default group only."""
    names = {e.get("name") for e in container.get("env") or []}
    words = [*(container.get("command") or []), *(container.get("args") or [])]
    return (
        PRELOAD_ENV not in names
        and not container.get("envFrom")
        and not any(str(w).startswith("--preload") for w in words)
    )
