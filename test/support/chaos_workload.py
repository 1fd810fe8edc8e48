"""The chaos matrix's shared workload: real Dask data held on every worker, and the ledger that says what a
fault cost (persisted keys lost and recomputed, scattered keys lost), plus the figures each scenario prints.

Invariant: a scenario puts data on workers with `hold_data` before its fault and reads the cost with
`data_cost` after convergence; the cost counts each persisted key's processing->memory transitions on the
scheduler (1 = computed once, never recomputed) and checks each scattered key is still in memory there.
Held by every module of test/chaos (run with `hack/test test/chaos -m chaos`).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from support.ledger import transitions

# Functions shipped to the scheduler by value: the scheduler cannot import this module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class HeldData:
    """Futures the client keeps, so the scheduler keeps their keys: persisted blocks and scattered values."""

    blocks: list[Any]
    scattered: list[Any]

    @property
    def block_keys(self) -> list[str]:
        return [str(b.key) for b in self.blocks]

    @property
    def scattered_keys(self) -> list[str]:
        return [str(s.key) for s in self.scattered]


@dataclass
class DataCost:
    """What a fault cost the workload; `recomputed` maps a persisted key to its extra computations."""

    persisted: int
    scattered: int
    recomputed: dict[str, int] = field(default_factory=dict)
    scattered_lost: list[str] = field(default_factory=list)
    erred: int = 0

    def line(self) -> str:
        return (
            f"persisted keys {self.persisted}: recomputed {len(self.recomputed)} "
            f"({sum(self.recomputed.values())} extra computations); scattered keys {self.scattered}: "
            f"lost {len(self.scattered_lost)}; erred tasks {self.erred}"
        )


def hold_data(client: Any, blocks: int = 40, scattered: int = 12) -> HeldData:
    """Persist `blocks` computed lists and scatter `scattered` values, spread round-robin over every worker.

    Each block is pinned to its worker only for placement: once in memory its restrictions are cleared, so
    a recomputation after that worker is lost goes to any live worker, not back to a dead address."""
    from distributed import wait

    addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
    assert addresses, "hold_data needs at least one worker"
    futures = [
        client.submit(
            list,
            range(i * 100, (i + 1) * 100),
            workers=[addresses[i % len(addresses)]],
            allow_other_workers=True,
            pure=False,
        )
        for i in range(blocks)
    ]
    values = [
        client.scatter(f"scattered-{i}", workers=[addresses[i % len(addresses)]]) for i in range(scattered)
    ]
    wait(futures + values, timeout=60)
    client.run_on_scheduler(_unpin, [str(f.key) for f in futures])
    return HeldData(futures, values)


def _unpin(keys: list[str], dask_scheduler: Any = None) -> None:
    """On the scheduler: the tasks of `keys` may run anywhere from now on (TaskState's restriction fields)."""
    for key in keys:
        task = dask_scheduler.tasks.get(key)
        if task is None:
            continue
        task.worker_restrictions = None
        task.host_restrictions = None
        task.resource_restrictions = None
        task.loose_restrictions = False


def data_cost(client: Any, held: HeldData) -> DataCost:
    """The ledger after a fault, read on the scheduler (the persisted keys are first gathered, so a key
    that was lost has been recomputed by the time it is counted)."""
    from distributed import wait

    wait(held.blocks, timeout=120)  # gather() has no deadline of its own
    assert client.gather(held.blocks, errors="raise") == [
        list(range(i * 100, (i + 1) * 100)) for i in range(len(held.blocks))
    ]
    computed, in_memory, erred = client.run_on_scheduler(_ledger, held.block_keys, held.scattered_keys)
    return DataCost(
        persisted=len(held.blocks),
        scattered=len(held.scattered),
        recomputed={k: n - 1 for k, n in computed.items() if n > 1},
        scattered_lost=[k for k in held.scattered_keys if not in_memory.get(k)],
        erred=erred,
    )


def _ledger(
    blocks: list[str], scattered: list[str], dask_scheduler: Any = None
) -> tuple[dict[str, int], dict[str, bool], int]:
    """On the scheduler: computations per persisted key, whether each scattered key is in memory, erred tasks."""
    computed, erred = transitions(blocks, dask_scheduler)
    in_memory = {}
    for key in scattered:
        task = dask_scheduler.tasks.get(key)
        in_memory[key] = bool(task is not None and task.state == "memory" and task.who_has)
    return computed, in_memory, erred


class Stopwatch:
    """Seconds since a fault was injected; scenarios print these as their convergence figures."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def seconds(self) -> float:
        return round(time.monotonic() - self.t0, 1)


# A Warning Event that says in-memory data (or the scheduler's state) was lost, not only that a process
# restarted: what a user needs to know that persisted data must be recomputed and scattered data re-sent.
DATA_LOSS_WORDS = re.compile(
    r"\b(data|state|keys?)\b.*\blost\b|\blost\b.*\b(data|state|keys?)\b", re.IGNORECASE
)


def says_data_lost(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == "Warning" and DATA_LOSS_WORDS.search(e.get("message", ""))]


def figure(scenario: str, **values: Any) -> None:
    """One line a reviewer greps from `-s` output: CHAOS <scenario> key=value ..."""
    print(f"CHAOS {scenario} " + " ".join(f"{k}={v}" for k, v in values.items()), flush=True)
