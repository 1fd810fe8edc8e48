"""The scheduler client against real Dask schedulers and workers run as subprocesses (no mocks).

One scheduler has the HTTP API route enabled the way the operator enables it in scheduler pods; the other
runs stock configuration (route disabled, 404): the operator then reports the missing route and never falls
back to the comm RPC, whose messages a hostile scheduler can fill with pickles (a comm server doing exactly
that is run here).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.wait import wait_for

from dask_operator.controller.contract.scheduler_api import HTTP_ROUTES_ENV, HTTP_ROUTES_VALUE, DaskWorker
from dask_operator.controller.scheduler import (
    SchedulerClient,
    SchedulerEndpoint,
    SchedulerUnreachable,
    UnexpectedAnswer,
    demand_of_report,
    scheduler_endpoint,
)

BIN = os.path.dirname(sys.executable)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningCluster:
    client: SchedulerClient
    processes: list[subprocess.Popen[bytes]]
    comm_address: str


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
    client = SchedulerClient(SchedulerEndpoint(f"http://127.0.0.1:{http}"), timeout=5)
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
    return RunningCluster(client, procs, address)


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


SELECTS_C = {"dask.org/cluster-name": "c", "dask.org/component": "scheduler"}


def test_endpoint_prefers_cluster_ip_and_the_dashboard_port() -> None:
    service = {
        "metadata": {"name": "c-scheduler", "namespace": "ns"},
        "spec": {
            "selector": SELECTS_C,
            "clusterIP": "10.0.0.7",
            "ports": [{"name": "tcp-comm", "port": 8786}, {"name": "http-dashboard", "port": 8787}],
        },
    }
    assert scheduler_endpoint(service) == SchedulerEndpoint("http://10.0.0.7:8787")
    headless = {**service, "spec": {**service["spec"], "clusterIP": "None"}}
    assert scheduler_endpoint(headless).http_url == "http://c-scheduler.ns:8787"


def test_endpoint_without_the_dashboard_port_is_none_not_an_error() -> None:
    service = {
        "metadata": {"name": "c-scheduler", "namespace": "ns"},
        "spec": {"selector": SELECTS_C, "ports": [{"port": 1}]},
    }
    assert scheduler_endpoint(service).http_url is None
    with pytest.raises(SchedulerUnreachable, match="no port named http-dashboard"):
        SchedulerClient(scheduler_endpoint(service)).get_workers()


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({"type": "ExternalName", "externalName": "kubernetes.default"}, "of type ExternalName"),
        ({}, "does not select this cluster's scheduler pods"),  # endpoints written by hand: any address
        ({"selector": {**SELECTS_C, "dask.org/cluster-name": "other"}}, "does not select"),
        ({"selector": {"app": "anything"}}, "dask.org/cluster-name=c,dask.org/component=scheduler"),
    ],
)
def test_a_service_that_could_send_the_operator_elsewhere_is_refused(
    spec: dict[str, object], why: str
) -> None:
    ports = [{"name": "http-dashboard", "port": 8787}]
    service = {
        "metadata": {"name": "c-scheduler", "namespace": "ns", "labels": {"dask.org/cluster-name": "c"}},
        "spec": {"clusterIP": "10.0.0.7", "ports": ports, **spec},
    }
    endpoint = scheduler_endpoint(service)
    assert endpoint.http_url is None and endpoint.refused is not None and why in endpoint.refused
    with pytest.raises(SchedulerUnreachable, match=why):
        SchedulerClient(endpoint).check_idle()


# A comm server that answers every RPC with a pickle which, once unpickled, writes a file: what a tenant's
# "scheduler" can send to whoever talks Dask's comm protocol to it.
PICKLING_SCHEDULER = """
import asyncio, pathlib, sys
from distributed.core import Server
from distributed.protocol.serialize import ToPickle

class Payload:
    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(sys.argv[1]), "pwned"))

async def answer(*args, **kwargs):
    return {"workers": ToPickle(Payload()), "idle_since": ToPickle(Payload())}

async def main():
    handlers = {name: answer for name in ("identity", "retire_workers", "check_idle", "adaptive_target")}
    server = Server(handlers)
    await server.listen("tcp://127.0.0.1:0")
    print(server.port, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_a_scheduler_offering_only_its_comm_port_is_never_asked_over_rpc(tmp_path: Path) -> None:
    """Regression: the operator fell back to the comm RPC when the Service had no dashboard port, and an
    identity answer carrying a pickle ran code in the operator's process."""
    marker = tmp_path / "unpickled"
    proc = subprocess.Popen(
        [sys.executable, "-c", PICKLING_SCHEDULER, str(marker)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        service = {
            "metadata": {"name": "evil-scheduler", "namespace": "ns"},
            "spec": {
                "selector": {"dask.org/cluster-name": "evil", "dask.org/component": "scheduler"},
                "clusterIP": "127.0.0.1",
                "ports": [{"name": "tcp-comm", "port": port}],
            },
        }
        client = SchedulerClient(scheduler_endpoint(service), timeout=2)
        for call in (client.get_workers, client.check_idle, client.adaptive_target):
            with pytest.raises(SchedulerUnreachable, match="never the comm port"):
                call()
        with pytest.raises(SchedulerUnreachable):
            client.retire_workers([DaskWorker("w", "tcp://127.0.0.1:1")])
        # The payload works: a Dask comm client that does talk to this server is executed by it.
        probe = subprocess.run(
            [sys.executable, "-c", _RPC_PROBE, f"tcp://127.0.0.1:{port}"], capture_output=True, timeout=60
        )
        assert probe.returncode == 0, probe.stderr.decode()[-2000:]
        assert marker.exists()
    finally:
        proc.kill()
        proc.wait()


_RPC_PROBE = """
import asyncio, sys
from distributed.core import rpc

async def main():
    async with rpc(sys.argv[1], timeout=10) as r:
        await r.identity()

asyncio.run(main())
"""


def test_http_api_lists_workers_and_answers_idle_and_target(with_api: RunningCluster) -> None:
    names = {w.name for w in with_api.client.get_workers()}
    assert names == {"g-worker-a", "g-worker-b", "h-worker-c"}
    since = with_api.client.check_idle()
    assert since is None or since <= time.time() + 1
    assert with_api.client.adaptive_target() >= 0


def test_workers_come_with_the_data_they_hold_and_their_status(with_api: RunningCluster) -> None:
    """What the choice of pods to remove reads: bytes held (as last reported by the worker's heartbeat)."""
    from distributed import Client

    with Client(with_api.comm_address, timeout=30) as dask:
        address = next(w.address for w in with_api.client.get_workers() if w.name == "h-worker-c")
        data = dask.scatter(b"x" * 1_000_000, workers=[address])

        def held() -> dict[str, int] | None:
            workers = {w.name: w for w in with_api.client.get_workers()}
            return {n: w.nbytes for n, w in workers.items()} if workers["h-worker-c"].nbytes else None

        nbytes = wait_for(held, timeout=30, interval=0.3, message="the worker reports its data")
        assert nbytes["h-worker-c"] >= 1_000_000 > nbytes["g-worker-a"]
        assert all(w.status == "running" and not w.retiring for w in with_api.client.get_workers())
        del data


def test_a_scheduler_without_the_api_route_is_reported_not_asked_over_rpc(stock: RunningCluster) -> None:
    """Stock routes: the identity route is Dask's default and answers; the API routes say what is missing."""
    assert {w.name for w in stock.client.get_workers()} == {"g-worker-x", "g-worker-y"}
    with pytest.raises(SchedulerUnreachable, match=r"no such route .*distributed.http.scheduler.api") as err:
        stock.client.adaptive_target()
    assert not err.value.acted
    workers = {w.name: w for w in stock.client.get_workers()}
    with pytest.raises(SchedulerUnreachable, match="no such route") as err:
        stock.client.retire_workers([workers["g-worker-y"]])
    assert not err.value.acted  # a 404: nothing was retired, so the operator may act otherwise
    assert {w.name for w in stock.client.get_workers()} == {"g-worker-x", "g-worker-y"}


def test_unreachable_scheduler_raises_within_the_timeout() -> None:
    port = _free_port()
    client = SchedulerClient(SchedulerEndpoint(f"http://127.0.0.1:{port}"), timeout=1.0)
    started = time.monotonic()
    with pytest.raises(SchedulerUnreachable, match=r"HTTP /api/v1/check_idle: .*Connection refused"):
        client.check_idle()
    assert time.monotonic() - started < 10


def test_retire_named_workers_only(with_api: RunningCluster) -> None:
    workers = {w.name: w for w in with_api.client.get_workers()}
    retired = with_api.client.retire_workers([workers["g-worker-b"]])
    assert retired == {"g-worker-b"}
    remaining = {w.name for w in with_api.client.get_workers()}
    assert remaining == {"g-worker-a", "h-worker-c"}


def test_a_retirement_whose_http_request_timed_out_may_have_acted() -> None:
    """The HTTP API accepted the request and did not answer in time (a long retirement): the operator must
    treat the workers as possibly retiring, never as untouched."""
    silent = socket.socket()  # accepts HTTP connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    client = SchedulerClient(
        SchedulerEndpoint(f"http://127.0.0.1:{silent.getsockname()[1]}"), timeout=1.0, retire_timeout=1.0
    )
    try:
        with pytest.raises(SchedulerUnreachable, match="no complete answer within 1 s") as err:
            client.retire_workers([DaskWorker("w", "tcp://10.0.0.1:1")])
        assert err.value.acted
        with pytest.raises(SchedulerUnreachable) as err:
            client.get_workers()
        assert not err.value.acted
    finally:
        silent.close()


def test_workers_are_listed_while_they_run_tasks(with_api: RunningCluster) -> None:
    """Dask's identity route answers 500 while a worker's last heartbeat carries metrics keyed by tuples (it
    ran tasks since the one before). Before the fallback to the API's list, a scale-down of a busy cluster
    saw its scheduler as unreachable, waited, and was forced after the timeout."""
    from distributed import Client

    with Client(with_api.comm_address, timeout=30) as dask:
        workers = len(dask.scheduler_info()["workers"])  # (another test of this module may retire one)
        stop = time.monotonic() + 6
        listed: list[int] = []
        while time.monotonic() < stop:
            dask.gather(dask.map(lambda x: x * x, range(30), pure=False))
            listed.append(len(with_api.client.get_workers()))
        assert workers >= 2 and listed and set(listed) == {workers}, listed


def test_the_api_worker_list_is_read_strictly() -> None:
    from dask_operator.controller.scheduler import UnexpectedAnswer, workers_of_listing

    listing = {"num_workers": 4, "workers": [
        {"name": "a", "address": "tcp://10.0.0.1:1"}, {"name": 7, "address": "tcp://10.0.0.2:1"},
        {"name": {"x": 1}, "address": "tcp://10.0.0.3:1"}, {"name": "no-address"}, "junk",
    ]}  # fmt: skip
    assert [(w.name, w.address, w.nbytes) for w in workers_of_listing(listing)] == [
        ("a", "tcp://10.0.0.1:1", 0),
        ("7", "tcp://10.0.0.2:1", 0),
        ("tcp://10.0.0.3:1", "tcp://10.0.0.3:1", 0),
    ]
    for bad in ([], {"workers": {}}, {"workers": None}):
        with pytest.raises(UnexpectedAnswer):
            workers_of_listing(bad)


def test_a_scheduler_without_the_demand_extension_answers_with_its_adaptive_target(
    with_api: RunningCluster,
) -> None:
    answer = with_api.client.demand()
    assert answer.demand is None and answer.adaptive_target is not None and answer.adaptive_target >= 0
    assert "no demand route" in answer.why_no_demand


GOOD = {"version": 1, "demand": [{"resources": {"GPU": 1}, "tasks": 2, "seconds": 1.0}], "workers": []}


@pytest.mark.parametrize(
    "body",
    [
        [],
        {**GOOD, "version": 2},
        {**GOOD, "demand": {}},
        {**GOOD, "demand": [{"resources": {"GPU": -1}, "tasks": 2, "seconds": 1.0}]},
        {**GOOD, "demand": [{"resources": {"GPU": True}, "tasks": 2, "seconds": 1.0}]},
        {**GOOD, "demand": [{"resources": {"": 1}, "tasks": 2, "seconds": 1.0}]},
        {**GOOD, "demand": [{"resources": {"x" * 300: 1}, "tasks": 2, "seconds": 1.0}]},
        {**GOOD, "demand": [{"resources": {}, "tasks": 2.5, "seconds": 1.0}]},
        {**GOOD, "demand": [{"resources": {}, "tasks": 2, "seconds": "1"}]},
        {**GOOD, "demand": [{"resources": {}, "tasks": 1, "seconds": 0}] * 1001},
    ],
)
def test_a_demand_report_of_the_wrong_shape_is_refused_whole(body: object) -> None:
    with pytest.raises(UnexpectedAnswer):
        demand_of_report(body)


def test_a_demand_report_parses_into_needs() -> None:
    parsed = demand_of_report(GOOD)
    assert parsed.tasks_needing({"GPU": 1}) == 2 and parsed.truncated is False


def test_identity_500s_are_asked_again_before_the_list_without_details() -> None:
    """A quiet worker's next heartbeat clears the metrics that break Dask's identity route: the operator asks
    it again (and keeps the data held and the retiring status) before settling for the API's bare list. In
    the suite, a stuck retirement's pods were once chosen from the bare list: the worker holding the data was
    asked to retire while the other was still retiring."""
    import http.server
    import json as jsonlib
    import threading

    from dask_operator.controller import scheduler as scheduler_module

    identity = {"workers": {"tcp://10.0.0.1:1": {"name": "w", "status": "closing_gracefully",
                                                 "metrics": {"managed_bytes": 7}}}}  # fmt: skip
    listing = {"workers": [{"name": "w", "address": "tcp://10.0.0.1:1"}]}
    asked: list[str] = []
    failures = {"left": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            asked.append(self.path)
            if self.path == "/json/identity.json" and failures["left"] > 0:
                failures["left"] -= 1
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = jsonlib.dumps(identity if self.path == "/json/identity.json" else listing).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = SchedulerClient(SchedulerEndpoint(f"http://127.0.0.1:{server.server_address[1]}"), timeout=5)
    try:
        failures["left"] = scheduler_module.IDENTITY_ATTEMPTS - 1
        (worker,) = client.get_workers()
        assert (worker.nbytes, worker.retiring) == (7, True)
        assert asked == ["/json/identity.json"] * scheduler_module.IDENTITY_ATTEMPTS
        asked.clear()
        failures["left"] = scheduler_module.IDENTITY_ATTEMPTS
        (bare,) = client.get_workers()
        assert (bare.name, bare.nbytes, bare.retiring) == ("w", 0, False)
        assert asked == ["/json/identity.json"] * scheduler_module.IDENTITY_ATTEMPTS + ["/api/v1/get_workers"]
    finally:
        server.shutdown()
        server.server_close()
