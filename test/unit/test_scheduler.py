"""The scheduler client against real Dask schedulers and workers run as subprocesses (no mocks).

One scheduler has the HTTP API route enabled the way the operator enables it in scheduler pods; the other
runs stock configuration (route disabled, 404) so every call must fall back to the comm RPC.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from support.wait import wait_for

from dask_operator.controller.scheduler import (
    SchedulerClient,
    SchedulerEndpoint,
    SchedulerUnreachable,
    scheduler_endpoint,
)
from dask_operator.controller.scheduler_api import HTTP_ROUTES_ENV, HTTP_ROUTES_VALUE, DaskWorker

BIN = os.path.dirname(sys.executable)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningCluster:
    client: SchedulerClient
    processes: list[subprocess.Popen[bytes]]


def _start(api: bool, workers: list[str]) -> RunningCluster:
    comm, http = _free_port(), _free_port()
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    if api:
        env[HTTP_ROUTES_ENV] = HTTP_ROUTES_VALUE
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [
        subprocess.Popen(
            [
                f"{BIN}/dask",
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(comm),
                "--dashboard-address",
                f"127.0.0.1:{http}",
            ],
            env=env,
            **quiet,
        )
    ]
    address = f"tcp://127.0.0.1:{comm}"
    for name in workers:
        procs.append(
            subprocess.Popen(
                [
                    f"{BIN}/dask",
                    "worker",
                    address,
                    "--name",
                    name,
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--no-nanny",
                    "--host",
                    "127.0.0.1",
                ],
                env=env,
                **quiet,
            )
        )
    client = SchedulerClient(SchedulerEndpoint(address, f"http://127.0.0.1:{http}"), timeout=5)
    try:
        wait_for(
            lambda: len(client.get_workers()) == len(workers),
            timeout=60,
            interval=0.3,
            message="workers to connect",
            ignore=(SchedulerUnreachable,),
        )
    except BaseException:
        _stop(procs)
        raise
    return RunningCluster(client, procs)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:  # throwaway processes: no graceful shutdown needed
        p.kill()
    for p in procs:
        p.wait()


@pytest.fixture(scope="module")
def with_api() -> Iterator[RunningCluster]:
    cluster = _start(api=True, workers=["g-worker-a", "g-worker-b", "h-worker-c"])
    yield cluster
    _stop(cluster.processes)


@pytest.fixture(scope="module")
def stock() -> Iterator[RunningCluster]:
    cluster = _start(api=False, workers=["g-worker-x", "g-worker-y"])
    yield cluster
    _stop(cluster.processes)


def test_endpoint_prefers_cluster_ip_and_named_ports() -> None:
    service = {
        "metadata": {"name": "c-scheduler", "namespace": "ns"},
        "spec": {
            "clusterIP": "10.0.0.7",
            "ports": [{"name": "tcp-comm", "port": 8786}, {"name": "http-dashboard", "port": 8787}],
        },
    }
    assert scheduler_endpoint(service) == SchedulerEndpoint("tcp://10.0.0.7:8786", "http://10.0.0.7:8787")
    headless = {**service, "spec": {**service["spec"], "clusterIP": "None"}}
    assert scheduler_endpoint(headless).comm_address == "tcp://c-scheduler.ns:8786"


def test_endpoint_without_named_ports_is_none_not_an_error() -> None:
    service = {"metadata": {"name": "c-scheduler", "namespace": "ns"}, "spec": {"ports": [{"port": 1}]}}
    assert scheduler_endpoint(service) == SchedulerEndpoint(None, None)
    with pytest.raises(SchedulerUnreachable, match="no port named"):
        SchedulerClient(scheduler_endpoint(service)).get_workers()


def test_http_api_lists_workers_and_answers_idle_and_target(with_api: RunningCluster) -> None:
    names = {w.name for w in with_api.client.get_workers()}
    assert names == {"g-worker-a", "g-worker-b", "h-worker-c"}
    since = with_api.client.check_idle()
    assert since is None or since <= time.time() + 1
    assert with_api.client.adaptive_target() >= 0


def test_workers_come_with_the_data_they_hold_and_their_status(with_api: RunningCluster) -> None:
    """What the choice of pods to remove reads: bytes held (as last reported by the worker's heartbeat)."""
    from distributed import Client

    with Client(with_api.client.endpoint.comm_address, timeout=30) as dask:
        address = next(w.address for w in with_api.client.get_workers() if w.name == "h-worker-c")
        data = dask.scatter(b"x" * 1_000_000, workers=[address])

        def held() -> dict[str, int] | None:
            workers = {w.name: w for w in with_api.client.get_workers()}
            return {n: w.nbytes for n, w in workers.items()} if workers["h-worker-c"].nbytes else None

        nbytes = wait_for(held, timeout=30, interval=0.3, message="the worker reports its data")
        assert nbytes["h-worker-c"] >= 1_000_000 > nbytes["g-worker-a"]
        assert all(w.status == "running" and not w.retiring for w in with_api.client.get_workers())
        del data


def test_rpc_fallback_when_http_route_is_disabled(stock: RunningCluster) -> None:
    only_rpc = SchedulerClient(SchedulerEndpoint(stock.client.endpoint.comm_address, None))
    assert {w.name for w in stock.client.get_workers()} == {"g-worker-x", "g-worker-y"}
    assert {w.name for w in only_rpc.get_workers()} == {"g-worker-x", "g-worker-y"}
    assert isinstance(stock.client.adaptive_target(), int)


def test_unreachable_scheduler_raises_with_both_reasons() -> None:
    port = _free_port()
    client = SchedulerClient(
        SchedulerEndpoint(f"tcp://127.0.0.1:{port}", f"http://127.0.0.1:{port}"), timeout=1.0
    )
    started = time.monotonic()
    with pytest.raises(SchedulerUnreachable, match=r"HTTP .*RPC"):
        client.check_idle()
    assert time.monotonic() - started < 10


def test_retire_named_workers_only(with_api: RunningCluster) -> None:
    workers = {w.name: w for w in with_api.client.get_workers()}
    retired = with_api.client.retire_workers([workers["g-worker-b"]])
    assert retired == {"g-worker-b"}
    remaining = {w.name for w in with_api.client.get_workers()}
    assert remaining == {"g-worker-a", "h-worker-c"}


def test_retire_through_rpc(stock: RunningCluster) -> None:
    workers = {w.name: w for w in stock.client.get_workers()}
    assert stock.client.retire_workers([workers["g-worker-y"]]) == {"g-worker-y"}
    assert {w.name for w in stock.client.get_workers()} == {"g-worker-x"}
    assert stock.client.retire_workers([]) == set()
    assert stock.client.retire_workers([DaskWorker("gone", "tcp://127.0.0.1:1")]) == set()


def test_a_retirement_whose_http_request_timed_out_is_not_repeated_over_rpc() -> None:
    """The HTTP API accepted the request and did not answer in time (a long retirement): asking again over
    the comm RPC would retire the workers twice. Idempotent reads still fall back."""
    silent = socket.socket()  # accepts HTTP connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    comm = socket.socket()  # counts RPC connection attempts
    comm.bind(("127.0.0.1", 0))
    comm.listen(8)
    comm.settimeout(0.5)
    endpoint = SchedulerEndpoint(
        f"tcp://127.0.0.1:{comm.getsockname()[1]}", f"http://127.0.0.1:{silent.getsockname()[1]}"
    )
    client = SchedulerClient(endpoint, timeout=1.0, retire_timeout=1.0)
    try:
        with pytest.raises(SchedulerUnreachable, match="not repeated over RPC"):
            client.retire_workers([DaskWorker("w", "tcp://10.0.0.1:1")])
        with pytest.raises(TimeoutError):
            comm.accept()  # no RPC connection was attempted
        with pytest.raises(SchedulerUnreachable, match=r"HTTP .*RPC"):
            client.get_workers()  # a read falls back (and the silent comm port fails it too)
        connection, _ = comm.accept()
        connection.close()
    finally:
        silent.close()
        comm.close()
