"""Demand per worker group as tables: what a group's spec offers, where each restriction set goes, and how
many workers it warrants."""

from __future__ import annotations

from typing import Any

import pytest

from dask_operator.controller.contract.demand import (
    GroupProfile,
    Holding,
    Need,
    SchedulerDemand,
    data_floor,
    group_profile,
    restrictions,
    route,
    slots_per_pod,
    unroutable,
    warranted_workers,
)


def worker_group(
    name: str, args: list[str] | None = None, env: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "worker", "args": args or ["dask", "worker"]}
    if env is not None:
        container["env"] = env
    return {
        "metadata": {"name": name},
        "spec": {"cluster": "c", "worker": {"spec": {"containers": [container]}}},
    }


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["dask", "worker"], None, GroupProfile("g", {}, 1, 1)),
        (["dask", "worker", "--resources", "GPU=1", "--nthreads", "2"], None, GroupProfile("g", {"GPU": 1.0}, 2, 1)),
        (["dask", "worker", "--resources=GPU=2,MEM=1e9", "--nworkers=3"], None, GroupProfile("g", {"GPU": 2.0, "MEM": 1e9}, 1, 3)),
        (["sh", "-c", "dask worker --resources 'GPU=1 TPU=4'"], None, GroupProfile("g", {"GPU": 1.0, "TPU": 4.0}, 1, 1)),
        # Dask lowercases names it reads from the environment.
        (["dask", "worker"], [{"name": "DASK_DISTRIBUTED__WORKER__RESOURCES__GPU", "value": "1"}], GroupProfile("g", {"gpu": 1.0}, 1, 1)),
        (["dask", "worker", "--resources", "GPU=x FOO=-1 BAR=2", "--nthreads", "many"], None, GroupProfile("g", {"BAR": 2.0}, 1, 1)),
    ],
)  # fmt: skip
def test_group_profile(args: list[str], env: list[dict[str, Any]] | None, expected: GroupProfile) -> None:
    assert group_profile(worker_group("g", args, env)) == expected


CPU = GroupProfile("c-default", {}, 1)
GPU = GroupProfile("c-gpu", {"GPU": 1.0}, 1)
BIG_GPU = GroupProfile("c-big", {"GPU": 4.0, "MEM": 64.0}, 4)


@pytest.mark.parametrize(
    ("need", "groups", "expected"),
    [
        ({}, [CPU, GPU], "c-default"),  # plain tasks never grow the GPU group while a plain group exists
        ({}, [GPU, CPU], "c-default"),
        ({}, [GPU], "c-gpu"),  # ... but run where they can
        ({"GPU": 1}, [CPU, GPU], "c-gpu"),
        ({"GPU": 2}, [CPU, GPU], None),  # nobody offers two
        ({"GPU": 2}, [CPU, GPU, BIG_GPU], "c-big"),
        ({"GPU": 1}, [GPU, BIG_GPU], "c-gpu"),  # the group with the fewest other resources
        ({"TPU": 1}, [CPU, GPU], None),
    ],
)
def test_route(need: dict[str, float], groups: list[GroupProfile], expected: str | None) -> None:
    assert route(restrictions(need), groups) == expected


def test_slots_are_threads_limited_by_resources() -> None:
    assert slots_per_pod(BIG_GPU, restrictions({})) == 4
    assert slots_per_pod(BIG_GPU, restrictions({"GPU": 2})) == 2
    assert slots_per_pod(BIG_GPU, restrictions({"GPU": 1, "MEM": 32})) == 2
    assert slots_per_pod(GroupProfile("n", {}, 2, 3), restrictions({})) == 6  # --nworkers 3 --nthreads 2


def demand(*needs: tuple[dict[str, float], int, float]) -> SchedulerDemand:
    return SchedulerDemand(tuple(Need(restrictions(r), n, s) for r, n, s in needs))


@pytest.mark.parametrize(
    ("needs", "expected_cpu", "expected_gpu"),
    [
        ((), 0, 0),
        ((({"GPU": 1}, 3, 1.5),), 0, 1),  # a little GPU work: one GPU worker, no CPU worker
        ((({"GPU": 1}, 300, 150.0),), 0, 30),  # 150 s of work, 5 s per worker: 30 (the bounds clamp it)
        ((({}, 2000, 1000.0),), 200, 0),  # a burst of unknown tasks (0.5 s each): all at once
        ((({}, 3, 300.0),), 3, 0),  # three long tasks: no more workers than tasks
        ((({}, 10, 5.0), ({"GPU": 1}, 10, 5.0)), 1, 1),
        ((({"TPU": 1}, 10, 5.0),), 0, 0),  # nobody can run them
    ],
)
def test_warranted_workers(
    needs: tuple[tuple[dict[str, float], int, float], ...], expected_cpu: int, expected_gpu: int
) -> None:
    d = demand(*needs)
    assert (warranted_workers(d, [CPU, GPU], "c-default"), warranted_workers(d, [CPU, GPU], "c-gpu")) == (
        expected_cpu,
        expected_gpu,
    )


def test_unroutable_names_the_needs_no_group_serves() -> None:
    d = demand(({"TPU": 1}, 4, 2.0), ({}, 1, 1.0))
    assert unroutable(d, [CPU, GPU]) == [Need((("TPU", 1.0),), 4, 2.0)]
    assert warranted_workers(d, [CPU, GPU], "c-unknown") == 0


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        ((), 0),
        ((Holding("g-worker-a", 0),), 0),  # no data: nothing to keep
        ((Holding("g-worker-a", 10),), 1),  # the only workers hold data: keep one
        ((Holding("g-worker-a-0", 10), Holding("g-worker-a-1", 0)), 1),  # --nworkers names
        ((Holding("g-worker-a", 10), Holding("h-worker-b", 0)), 0),  # another group's worker can take it
    ],
)
def test_data_floor(workers: tuple[Holding, ...], expected: int) -> None:
    assert data_floor(SchedulerDemand(workers=workers), {"g-worker-a"}) == expected
