"""The scheduler-side demand route, loaded the way the operator loads it (its source text as the scheduler's
preload, through the configuration variable), on a real scheduler with real workers, read over HTTP with
the operator's strict reader."""

from __future__ import annotations

import asyncio
import operator
from types import SimpleNamespace
from typing import Any

import dask

from dask_operator.api.scheduler_http import request_json
from dask_operator.controller.contract.scheduler_api import DEMAND_PATH, PRELOAD_ENV, preload_value
from dask_operator.controller.scheduler import demand_of_report


async def _read(url: str) -> Any:
    return await asyncio.to_thread(request_json, "GET", url, timeout=5.0)


async def _until(url: str, done: Any) -> Any:
    """The route's answer once `done(answer)` holds (within 20 s)."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        body = await _read(url)
        if done(body) or asyncio.get_running_loop().time() > deadline:
            return body
        await asyncio.sleep(0.05)


def preloaded_scheduler() -> Any:
    """A scheduler with the route, its preload configured exactly as Dask reads it from the scheduler pod's
    environment."""
    from distributed import Scheduler

    preload = dask.config.collect_env({PRELOAD_ENV: preload_value()})["distributed"]["scheduler"]["preload"]
    with dask.config.set({"distributed.scheduler.preload": preload}):
        return Scheduler(port=0, dashboard_address="127.0.0.1:0")


def test_the_preload_reports_demand_per_restriction_set_and_workers_with_their_resources() -> None:
    from distributed import Client, Worker

    async def scenario() -> dict[str, Any]:
        async with preloaded_scheduler() as s, Client(s.address, asynchronous=True) as client:
            url = f"http://127.0.0.1:{s.http_server.port}{DEMAND_PATH}"
            # No worker yet: every task waits, the GPU ones and the others.
            cpu = client.map(operator.neg, range(5), pure=False)
            gpu = client.map(operator.neg, range(3), resources={"GPU": 1}, pure=False)
            waiting = await _until(url, lambda b: sum(d["tasks"] for d in b["demand"]) == 8)
            async with Worker(s.address, nthreads=1, name="gpu-0", resources={"GPU": 1}):
                await client.gather(cpu + gpu)
                done = await _until(url, lambda b: b["demand"] == [] and b["workers"])
        return {"waiting": waiting, "done": done}

    answers = asyncio.run(scenario())
    waiting = answers["waiting"]
    assert waiting["version"] == 1 and waiting["truncated"] is False
    assert {(tuple(sorted(d["resources"].items())), d["tasks"]) for d in waiting["demand"]} == {
        ((), 5),
        ((("GPU", 1.0),), 3),
    }
    assert answers["done"]["demand"] == []
    (worker,) = answers["done"]["workers"]
    assert worker | {"nbytes": None} == {
        "name": "gpu-0",
        "nthreads": 1,
        "resources": {"GPU": 1.0},
        "nbytes": None,
    }
    assert worker["nbytes"] > 0  # it holds the eight results
    assert demand_of_report(answers["done"]).workers[0].nbytes == worker["nbytes"]
    parsed = demand_of_report(waiting)
    assert parsed.tasks_needing({"GPU": 1.0}) == 3 and parsed.tasks_needing({}) == 5


def test_the_route_is_the_one_the_operator_asks() -> None:
    from dask_operator.controller import demand_extension

    assert demand_extension.DEMAND_PATH == DEMAND_PATH


def test_the_report_is_bounded() -> None:
    from dask_operator.controller.demand_extension import demand_report

    # A scheduler's shape only: the bound is about counting, not about Dask.
    task = SimpleNamespace(resource_restrictions={}, prefix=None)
    scheduler = SimpleNamespace(queued=[task] * 50, unrunnable={}, workers={})
    report = demand_report(scheduler, max_tasks=10)
    assert report["truncated"] is True and report["demand"][0]["tasks"] == 10


def test_tasks_next_up_count_for_their_group_while_the_stage_before_them_runs() -> None:
    from distributed import Client

    async def scenario() -> dict[str, Any]:
        async with preloaded_scheduler() as s, Client(s.address, asynchronous=True) as client:
            url = f"http://127.0.0.1:{s.http_server.port}{DEMAND_PATH}"
            # No worker: the CPU stage waits; the GPU stage waits on it, and a last stage on the GPU one.
            cpu = client.map(operator.neg, range(4), pure=False)
            gpu = [
                client.submit(operator.add, a, b, resources={"GPU": 1}, pure=False)
                for a, b in zip(cpu[::2], cpu[1::2], strict=True)
            ]
            last = client.submit(sum, gpu, pure=False)
            body = await _until(url, lambda b: sum(d["tasks"] for d in b["demand"]) >= 6)
            del last
            return body

    answer = asyncio.run(scenario())
    # The GPU tasks are next up (they wait only on queued tasks); `sum` waits on waiting tasks: not yet.
    assert {(tuple(sorted(d["resources"].items())), d["tasks"]) for d in answer["demand"]} == {
        ((), 4),
        ((("GPU", 1.0),), 2),
    }
    assert demand_of_report(answer).tasks_needing({"GPU": 1.0}) == 2


def test_next_up_tasks_count_toward_the_bound() -> None:
    from dask_operator.controller.demand_extension import demand_report

    after = SimpleNamespace(resource_restrictions={"GPU": 1}, prefix=None, state="waiting", waiting_on=())
    task = SimpleNamespace(resource_restrictions={}, prefix=None, state="queued", dependents=[after])
    after.waiting_on = [task]
    scheduler = SimpleNamespace(queued=[task] * 10, unrunnable={}, workers={})
    assert demand_report(scheduler, max_tasks=11)["truncated"] is False
    assert demand_report(scheduler, max_tasks=10)["truncated"] is True
    counted = {tuple(d["resources"]): d["tasks"] for d in demand_report(scheduler, max_tasks=11)["demand"]}
    assert counted == {(): 10, ("GPU",): 1}
