"""The scheduler's ledger of what a test's data cost: how often each key was computed (processing -> memory in
the scheduler's transition log) and how many tasks erred. Read on the scheduler through
`client.run_on_scheduler(transitions, keys)`, by e2e and chaos tests alike.

Invariant: functions here run on the scheduler, which cannot import test code, so this module is pickled by
value. Held by test/e2e/test_cluster.py and test/support/chaos_workload.py's scenarios (test/chaos).
"""

from __future__ import annotations

import sys
from typing import Any

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def transitions(keys: list[str], dask_scheduler: Any = None) -> tuple[dict[str, int], int]:
    """On the scheduler: how often each key was computed (processing -> memory) and how many tasks erred."""
    wanted = set(keys)
    computed = dict.fromkeys(keys, 0)
    erred = 0
    for entry in dask_scheduler.transition_log:
        key, start, finish = entry[0], entry[1], entry[2]
        if key in wanted and start == "processing" and finish == "memory":
            computed[key] += 1
        if finish == "erred":
            erred += 1
    return computed, erred


def stories(keys: list[str], dask_scheduler: Any = None) -> dict[str, list[tuple[str, str, str]]]:
    """On the scheduler: each key's transitions (start, finish, stimulus), to say in a failed test's message
    how a key came to be computed again."""
    wanted = set(keys)
    told: dict[str, list[tuple[str, str, str]]] = {k: [] for k in keys}
    for entry in dask_scheduler.transition_log:
        if entry[0] in wanted:
            told[entry[0]].append((str(entry[1]), str(entry[2]), str(entry[4])))
    return told
