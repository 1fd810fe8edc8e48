"""Talking to a Dask scheduler: its JSON HTTP API on the dashboard port, and nothing else.

Invariant: every call is bounded by a timeout and either returns the scheduler's answer, parsed strictly, or
raises `SchedulerUnreachable`; nothing here retries, sleeps or touches the Kubernetes API. The scheduler pod
belongs to the tenant, so its answers are data: never the Dask comm RPC (whose messages may carry pickles that
`distributed` unpickles on receipt), never a redirect, never more than `MAX_BYTES`. Retirement always names the
workers explicitly, so it never picks workers of another group. Held by test/unit/test_scheduler.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from dask_operator.api.scheduler_http import SchedulerHTTPError, json_count, json_object, request_json
from dask_operator.api.v1.names import (
    LABEL_CLUSTER_NAME,
    PORT_NAME_DASHBOARD,
    label_selector_string,
    scheduler_selector_labels,
)
from dask_operator.controller.contract.demand import (
    DemandAnswer,
    Holding,
    Need,
    SchedulerDemand,
    restrictions,
)
from dask_operator.controller.contract.scheduler_api import (
    API_ROUTE,
    DEMAND_PATH,
    HTTP_ROUTES_ENV,
    PRELOAD_ENV,
    DaskWorker,
)

T = TypeVar("T")

IDENTITY_PATH = "/json/identity.json"  # Dask's default route: workers with their data and status
WORKERS_PATH = "/api/v1/get_workers"  # the API route: names and addresses
IDENTITY_ATTEMPTS = 3  # the identity route is asked this often, IDENTITY_RETRY_SECONDS apart, before the list
IDENTITY_RETRY_SECONDS = 0.6  # a little over a small cluster's heartbeat interval (0.5 s)


class SchedulerUnreachable(Exception):
    """The scheduler's HTTP API gave no usable answer; the message says why. `acted`: the request may have
    reached the scheduler (it timed out or broke after being sent), so it may still be carried out."""

    def __init__(
        self, message: str, acted: bool = False, missing_route: bool = False, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.acted = acted
        self.missing_route = missing_route  # the scheduler answered 404: it does not serve that path
        self.status = status  # the HTTP status, when the scheduler answered with an error


class UnexpectedAnswer(Exception):
    """A scheduler answered with JSON of the wrong shape."""


@dataclass(frozen=True)
class SchedulerEndpoint:
    """Where the scheduler of one cluster serves its HTTP API, as seen from the operator, or why the operator
    will not ask it (`refused`)."""

    http_url: str | None  # http://host:port of the dashboard port; None: not asked (see `refused`)
    refused: str | None = None


def _port(service: Mapping[str, Any], wanted: str) -> int | None:
    """The Service port named `wanted` (or named like the Service itself, as upstream accepts)."""
    name = service.get("metadata", {}).get("name")
    matches = [
        p
        for p in service.get("spec", {}).get("ports") or []
        if p.get("name") in (wanted, name) and isinstance(p.get("port"), int)
    ]
    return int(matches[0]["port"]) if len(matches) == 1 else None


def _cluster_of(service: Mapping[str, Any]) -> str:
    meta = service.get("metadata", {})
    labelled = (meta.get("labels") or {}).get(LABEL_CLUSTER_NAME)
    name = str(meta.get("name", ""))
    return str(labelled) if labelled else name.removesuffix("-scheduler")


def service_refusal(service: Mapping[str, Any]) -> str | None:
    """Why the operator will not send requests through this scheduler Service, or None.

    The Service's spec is the tenant's (`spec.scheduler.service`): it could send the operator's requests to
    an address of the tenant's choosing. Only a Service that selects this cluster's scheduler pods, in its own
    namespace, is used: no ExternalName (a DNS name anywhere), no Service without a selector (endpoints
    written by hand can name any address)."""
    spec = service.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer"):
        return f"the scheduler Service is of type {kind}, which can point anywhere"
    selector = spec.get("selector") or {}
    wanted = scheduler_selector_labels(_cluster_of(service))
    if any(selector.get(key) != value for key, value in wanted.items()):
        return (
            "the scheduler Service does not select this cluster's scheduler pods "
            f"(its selector must include {label_selector_string(wanted)})"
        )
    return None


def scheduler_endpoint(service: Mapping[str, Any]) -> SchedulerEndpoint:
    """The scheduler's HTTP API behind its Service: the ClusterIP when it has one, else (headless) the DNS
    name, which resolves to the pods the selector picks.

    A Service without the dashboard port, or one the operator refuses (`service_refusal`), yields no URL.
    """
    refused = service_refusal(service)
    if refused is not None:
        return SchedulerEndpoint(None, refused)
    meta = service.get("metadata", {})
    cluster_ip = service.get("spec", {}).get("clusterIP")
    host = (
        cluster_ip if cluster_ip and cluster_ip != "None" else f"{meta.get('name')}.{meta.get('namespace')}"
    )
    http = _port(service, PORT_NAME_DASHBOARD)
    if not http:
        return SchedulerEndpoint(
            None,
            f"the scheduler Service has no port named {PORT_NAME_DASHBOARD}: the operator talks to "
            "schedulers over their JSON HTTP API only (never the comm port, whose messages may carry pickles)",
        )
    return SchedulerEndpoint(http_url=f"http://{host}:{http}")


def workers_of_identity(identity: Any) -> list[DaskWorker]:
    """The workers in a scheduler's identity answer; entries of the wrong shape are skipped."""
    workers = identity.get("workers") if isinstance(identity, dict) else None
    if not isinstance(workers, dict):
        raise UnexpectedAnswer("the identity answer has no workers mapping")
    found = []
    for address, info in workers.items():
        if not isinstance(info, dict):
            continue
        metrics = json_object(info.get("metrics"))
        transfer = json_object(metrics.get("transfer"))
        name, status = info.get("name", address), info.get("status", "running")
        found.append(
            DaskWorker(
                str(name) if isinstance(name, str | int) else str(address),
                str(address),
                nbytes=json_count(metrics.get("managed_bytes")),
                status=status if isinstance(status, str) else "running",
                incoming=json_count(transfer.get("incoming_count")),
            )
        )
    return found


def workers_of_listing(listing: Any) -> list[DaskWorker]:
    """The workers in the API's worker list (names and addresses only); entries of the wrong shape are
    skipped."""
    workers = listing.get("workers") if isinstance(listing, dict) else None
    if not isinstance(workers, list):
        raise UnexpectedAnswer("the worker list has no workers array")
    found = []
    for entry in workers:
        address = entry.get("address") if isinstance(entry, dict) else None
        if not isinstance(address, str):
            continue
        name = entry.get("name", address)
        found.append(DaskWorker(str(name) if isinstance(name, str | int) else address, address))
    return found


# Bounds on the demand report: more restriction sets than this, or longer names, is not a Dask scheduler.
MAX_DEMAND_ENTRIES = 1000
MAX_RESOURCES_PER_ENTRY = 32
MAX_NAME_LENGTH = 253


def _number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    raise UnexpectedAnswer(f"{value!r} is not a non-negative number")


def demand_of_report(body: Any) -> SchedulerDemand:
    """The demand extension's answer, strictly: any entry of the wrong shape rejects the whole answer (a
    scheduler that lies about one set cannot be trusted about the others)."""
    if not isinstance(body, dict) or body.get("version") != 1:
        raise UnexpectedAnswer("not a version 1 demand report")
    entries = body.get("demand")
    if not isinstance(entries, list) or len(entries) > MAX_DEMAND_ENTRIES:
        raise UnexpectedAnswer("demand is not a list of at most 1000 entries")
    needs = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise UnexpectedAnswer("a demand entry is not an object")
        resources, tasks = entry.get("resources"), entry.get("tasks")
        if not isinstance(resources, dict) or len(resources) > MAX_RESOURCES_PER_ENTRY:
            raise UnexpectedAnswer("a demand entry's resources are not an object")
        if any(not isinstance(k, str) or not 0 < len(k) <= MAX_NAME_LENGTH for k in resources):
            raise UnexpectedAnswer("a resource name is not a short string")
        if not isinstance(tasks, int) or isinstance(tasks, bool) or tasks < 0:
            raise UnexpectedAnswer("a demand entry's tasks is not a count")
        amounts = {k: _number(v) for k, v in resources.items()}
        needs.append(Need(restrictions(amounts), tasks, _number(entry.get("seconds"))))
    workers = body.get("workers")
    if not isinstance(workers, list):
        raise UnexpectedAnswer("workers is not a list")
    holdings = []
    for worker in workers:
        name = worker.get("name") if isinstance(worker, dict) else None
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
            raise UnexpectedAnswer("a worker has no short string name")
        holdings.append(Holding(name, json_count(worker.get("nbytes"))))
    return SchedulerDemand(tuple(needs), truncated=body.get("truncated") is True, workers=tuple(holdings))


class SchedulerClient:
    """Calls one scheduler. `timeout` bounds ordinary calls; `retire_timeout` bounds a retirement,
    which returns only once the retiring workers' data has moved elsewhere."""

    def __init__(self, endpoint: SchedulerEndpoint, timeout: float = 5.0, retire_timeout: float = 120.0):
        self.endpoint = endpoint
        self.timeout = timeout
        self.retire_timeout = retire_timeout

    # -- public calls --------------------------------------------------------------------------------

    def get_workers(self) -> list[DaskWorker]:
        """All workers connected to the scheduler (every group of the cluster), with the data each holds,
        its status and its incoming transfers: the scheduler's identity."""
        # Dask's identity route answers 500 while a worker's last heartbeat carries metrics keyed by tuples
        # (it ran tasks since the one before). The next heartbeat of a quiet worker clears them, so it is
        # asked again a few times; a busy cluster's then comes from the API's list, names and addresses
        # only: the choice of pods ignores the data they hold and which workers are already retiring, which
        # costs time (Dask moves every retiring worker's data, and refuses what it cannot move), never data.
        for attempt in range(IDENTITY_ATTEMPTS):
            try:
                return self._call("GET", IDENTITY_PATH, None, workers_of_identity, self.timeout)
            except SchedulerUnreachable as error:
                if error.status != 500:
                    raise
            if attempt + 1 < IDENTITY_ATTEMPTS:
                time.sleep(
                    IDENTITY_RETRY_SECONDS
                )  # on the call's own thread (SchedulerCalls), never a reconcile
        return self._call("GET", WORKERS_PATH, None, workers_of_listing, self.timeout)

    def retire_workers(self, workers: Collection[DaskWorker]) -> set[str]:
        """Retire exactly these workers gracefully; return the names the scheduler retired.

        A worker is missing from the answer when its data could not be moved (e.g. no other worker).
        """
        if not workers:
            return set()
        names_by_address = {w.address: w.name for w in workers}

        def names_of(retired: Any) -> set[str]:
            if not isinstance(retired, dict):
                raise UnexpectedAnswer("the retire_workers answer is not a mapping")
            # Only workers that were asked for count: a scheduler cannot make the operator delete others.
            return {names_by_address[addr] for addr in retired if addr in names_by_address}

        body = {"workers": sorted(names_by_address)}
        return self._call(
            "POST", "/api/v1/retire_workers", body, names_of, self.retire_timeout, idempotent=False
        )

    def check_idle(self) -> float | None:
        """Since when (scheduler clock, epoch seconds) the scheduler has been idle; None when busy."""

        def idle_since(body: Any) -> float | None:
            since = body.get("idle_since") if isinstance(body, dict) else None
            if since is None:
                return None
            if isinstance(since, int | float) and not isinstance(since, bool):
                return float(since)
            raise UnexpectedAnswer("idle_since is not a number")

        return self._call("GET", "/api/v1/check_idle", None, idle_since, self.timeout)

    def adaptive_target(self) -> int:
        """How many workers the scheduler would like, from its task backlog."""

        def target(body: Any) -> int:
            workers = body.get("workers") if isinstance(body, dict) else None
            if isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0:
                return workers
            raise UnexpectedAnswer("workers is not a non-negative integer")

        return self._call("GET", "/api/v1/adaptive_target", None, target, self.timeout)

    def demand(self) -> DemandAnswer:
        """The work per resource-restriction set, from the demand extension the operator preloads into the
        schedulers it makes; from a scheduler without it (a user's own preload), its adaptive target."""
        try:
            return DemandAnswer(self._call("GET", DEMAND_PATH, None, demand_of_report, self.timeout))
        except SchedulerUnreachable as error:
            if not error.missing_route:
                raise
        why = (
            f"The scheduler has no demand route (the operator adds it through {PRELOAD_ENV} unless the "
            "scheduler sets its own preloads)"
        )
        return DemandAnswer(None, self.adaptive_target(), why)

    # -- transport -----------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Any,
        parse: Callable[[Any], T],
        timeout: float,
        idempotent: bool = True,
    ) -> T:
        if not self.endpoint.http_url:
            raise SchedulerUnreachable(self.endpoint.refused or "no address for the scheduler's HTTP API")
        try:
            answer = request_json(method, f"{self.endpoint.http_url}{path}", body, timeout=timeout)
        except SchedulerHTTPError as error:
            if error.status == 404:
                raise SchedulerUnreachable(
                    f"HTTP {path}: the scheduler has no such route (is {API_ROUTE} in its "
                    f"{HTTP_ROUTES_ENV}?); the operator never falls back to the comm RPC",
                    missing_route=True,
                    status=404,
                ) from None
            # A retirement the scheduler may be carrying out must not be taken for one that never started.
            raise SchedulerUnreachable(
                f"HTTP {path}: {error}", acted=not idempotent and error.sent, status=error.status
            ) from None
        try:
            return parse(answer)
        except UnexpectedAnswer as error:
            raise SchedulerUnreachable(
                f"HTTP {path}: unexpected answer: {error}", acted=not idempotent
            ) from None
