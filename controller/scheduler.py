"""Talking to a Dask scheduler: its HTTP API on the dashboard port, with the Dask comm RPC as fallback.

Invariant: every call is bounded by a timeout and either returns the scheduler's answer or raises
`SchedulerUnreachable` (naming both transports' failures); nothing here retries, sleeps or touches the
Kubernetes API. Retirement always names the workers explicitly, so it never picks workers of another group.
Held by test/unit/test_scheduler.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3

from dask_operator.controller.scheduler_api import DaskWorker

COMM_PORT_NAME = "tcp-comm"
DASHBOARD_PORT_NAME = "http-dashboard"

T = TypeVar("T")

_POOL = urllib3.PoolManager(num_pools=64, maxsize=4, retries=False)


class SchedulerUnreachable(Exception):
    """Neither the HTTP API nor the RPC answered; the message says why for each. `acted`: the request may
    have reached the scheduler (it timed out or broke after being sent), so it may still be carried out."""

    def __init__(self, message: str, acted: bool = False) -> None:
        super().__init__(message)
        self.acted = acted


class HTTPStatusError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _may_have_acted(error: Exception) -> bool:
    """Whether a failed HTTP request may have reached the scheduler: it answered with an error other than
    "no such route", or the connection broke or timed out after the request was sent."""
    if isinstance(error, HTTPStatusError):
        return error.status != 404
    return isinstance(error, urllib3.exceptions.ReadTimeoutError | urllib3.exceptions.ProtocolError)


@dataclass(frozen=True)
class SchedulerEndpoint:
    """Where the scheduler of one cluster listens, as seen from the operator."""

    comm_address: str | None  # tcp://host:port of the comm port (RPC)
    http_url: str | None  # http://host:port of the dashboard (HTTP API)


def _port(service: Mapping[str, Any], wanted: str) -> int | None:
    """The Service port named `wanted` (or named like the Service itself, as upstream accepts)."""
    name = service.get("metadata", {}).get("name")
    matches = [
        p
        for p in service.get("spec", {}).get("ports") or []
        if p.get("name") in (wanted, name) and "port" in p
    ]
    return int(matches[0]["port"]) if len(matches) == 1 else None


def scheduler_endpoint(service: Mapping[str, Any]) -> SchedulerEndpoint:
    """The scheduler's addresses behind its Service: the ClusterIP when it has one, else the DNS name.

    A Service without the named ports yields None for that transport instead of failing.
    """
    meta = service.get("metadata", {})
    cluster_ip = service.get("spec", {}).get("clusterIP")
    host = (
        cluster_ip if cluster_ip and cluster_ip != "None" else f"{meta.get('name')}.{meta.get('namespace')}"
    )
    comm = _port(service, COMM_PORT_NAME)
    http = _port(service, DASHBOARD_PORT_NAME)
    return SchedulerEndpoint(
        comm_address=f"tcp://{host}:{comm}" if comm else None,
        http_url=f"http://{host}:{http}" if http else None,
    )


def workers_of_identity(identity: Mapping[str, Any]) -> list[DaskWorker]:
    """The workers in a scheduler's `identity()` answer."""
    workers = []
    for address, info in (identity.get("workers") or {}).items():
        metrics = info.get("metrics") or {}
        transfer = metrics.get("transfer") or {}
        workers.append(
            DaskWorker(
                str(info.get("name", address)),
                str(address),
                nbytes=int(metrics.get("managed_bytes") or 0),
                status=str(info.get("status") or "running"),
                incoming=int(transfer.get("incoming_count") or 0),
            )
        )
    return workers


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
        its status and its incoming transfers: the scheduler's identity (JSON route, else RPC)."""

        async def from_rpc(rpc: Any) -> list[DaskWorker]:
            return workers_of_identity(await rpc.identity())

        return self._call("GET", "/json/identity.json", None, workers_of_identity, from_rpc, self.timeout)

    def retire_workers(self, workers: Collection[DaskWorker]) -> set[str]:
        """Retire exactly these workers gracefully; return the names the scheduler retired.

        A worker is missing from the answer when its data could not be moved (e.g. no other worker).
        """
        if not workers:
            return set()
        names_by_address = {w.address: w.name for w in workers}

        def names_of(retired: Mapping[str, Any]) -> set[str]:
            return {
                names_by_address.get(addr, str(info.get("name", "")) if isinstance(info, dict) else "")
                for addr, info in retired.items()
            } - {""}

        async def from_rpc(rpc: Any) -> set[str]:
            return names_of(await rpc.retire_workers(names=[w.name for w in workers]))

        body = {"workers": sorted(names_by_address)}
        return self._call(
            "POST", "/api/v1/retire_workers", body, names_of, from_rpc, self.retire_timeout, idempotent=False
        )

    def check_idle(self) -> float | None:
        """Since when (scheduler clock, epoch seconds) the scheduler has been idle; None when busy."""

        def from_http(body: Any) -> float | None:
            since = body.get("idle_since")
            return float(since) if since is not None else None

        async def from_rpc(rpc: Any) -> float | None:
            since = await rpc.check_idle()
            return float(since) if since is not None else None

        return self._call("GET", "/api/v1/check_idle", None, from_http, from_rpc, self.timeout)

    def adaptive_target(self) -> int:
        """How many workers the scheduler would like, from its task backlog."""

        async def from_rpc(rpc: Any) -> int:
            return int(await rpc.adaptive_target())

        return self._call(
            "GET", "/api/v1/adaptive_target", None, lambda b: int(b["workers"]), from_rpc, self.timeout
        )

    # -- transports ----------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Any,
        parse: Callable[[Any], T],
        rpc_call: Callable[[Any], Awaitable[T]],
        timeout: float,
        idempotent: bool = True,
    ) -> T:
        errors = []
        if self.endpoint.http_url:
            try:
                return parse(self._http(method, path, body, timeout))
            except Exception as e:  # any failure means: try the other transport (unless it may have acted)
                if not idempotent and _may_have_acted(e):
                    # A retirement the scheduler may be carrying out must not be asked for a second time.
                    raise SchedulerUnreachable(
                        f"HTTP {path}: {e} (not repeated over RPC: the scheduler may still be acting on it)",
                        acted=True,
                    ) from e
                errors.append(f"HTTP {path}: {e}")
        else:
            errors.append("HTTP: the scheduler Service has no port named http-dashboard")
        if self.endpoint.comm_address:
            try:
                return asyncio.run(self._rpc(rpc_call, timeout))
            except Exception as e:  # noqa: BLE001  (reported in SchedulerUnreachable)
                errors.append(f"RPC {self.endpoint.comm_address}: {type(e).__name__}: {e}")
        else:
            errors.append("RPC: the scheduler Service has no port named tcp-comm")
        raise SchedulerUnreachable("; ".join(errors))

    def _http(self, method: str, path: str, body: Any, timeout: float) -> Any:
        response = _POOL.request(
            method,
            f"{self.endpoint.http_url}{path}",
            body=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"} if body is not None else None,
            timeout=urllib3.Timeout(connect=min(timeout, 3.0), read=timeout),
            retries=False,
        )
        if response.status >= 300:
            raise HTTPStatusError(response.status, f"status {response.status}: {response.data[:200]!r}")
        return json.loads(response.data)

    async def _rpc(self, call: Callable[[Any], Awaitable[T]], timeout: float) -> T:
        from distributed.core import rpc  # imported lazily: distributed is heavy and only needed here

        async def run() -> T:
            async with rpc(self.endpoint.comm_address, timeout=min(timeout, 3.0)) as r:  # type: ignore[no-untyped-call]
                return await call(r)

        return await asyncio.wait_for(run(), timeout)
