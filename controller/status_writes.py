"""When a planned status is written: at once when it settles or says something a user must hear, otherwise
after a short window that coalesces the pod-level transitions arriving within it.

Invariant: pure (time passed in). An unchanged status is never written; a changed one is written at once
when the observedGeneration it already showed moved, when a condition change deserves an Event (Degraded either
way, Ready becoming True), when its plan emits an Event (the status is the record that it was emitted: a loss's
Event is produced only for a loss the stored message does not name yet), when the phase becomes one clients wait for (Running, Error, Suspended: the reference's
`KubeCluster` polls for Running), or when it is settled (Ready True and nothing Progressing); any other change
waits at most `window` seconds after the first unwritten change, and what is then written is the newest plan.
So a status lags the world by at most `window`, and never hides a change that emits an Event.
Held by test/unit/test_status_writes.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dask_operator.api.v1.types import (
    CONDITION_PROGRESSING,
    CONDITION_READY,
    PHASE_ERROR,
    PHASE_RUNNING,
    PHASE_SUSPENDED,
)
from dask_operator.controller.contract.conditions import condition_events, find_condition

# Status changes of one object within this many seconds of the first are written as one.
DEFAULT_WINDOW = 1.0

# Phases a client or `kubectl wait` waits for: reaching one is never held back.
AWAITED_PHASES = frozenset({PHASE_RUNNING, PHASE_ERROR, PHASE_SUSPENDED})


@dataclass(frozen=True)
class StatusWrite:
    """Write now, or not; if not and a change is held back, when to look again and since when it waits."""

    write: bool
    wake_in: float | None = None
    pending_since: float | None = None


def decide(
    previous: Mapping[str, Any],
    planned: Mapping[str, Any],
    pending_since: float | None,
    now: float,
    window: float = DEFAULT_WINDOW,
    emits: bool = False,
) -> StatusWrite:
    """`previous` is the status as cached, `pending_since` when the first change still unwritten was planned;
    `emits`: the plan that carries `planned` emits an Event."""
    if dict(previous) == dict(planned):
        return StatusWrite(False)
    if window <= 0 or emits or urgent(previous, planned) or settled(planned):
        return StatusWrite(True)
    since = now if pending_since is None else pending_since
    waited = now - since
    if waited >= window:
        return StatusWrite(True)
    return StatusWrite(False, wake_in=window - waited, pending_since=since)


def urgent(previous: Mapping[str, Any], planned: Mapping[str, Any]) -> bool:
    """A change that must not wait: a new generation observed, a phase clients wait for, or a condition change
    worth an Event."""
    before = previous.get("observedGeneration")
    if before is not None and before != planned.get("observedGeneration"):
        return True
    phase = planned.get("phase")
    if phase != previous.get("phase") and phase in AWAITED_PHASES:
        return True
    return bool(condition_events(previous.get("conditions"), planned.get("conditions") or []))


def settled(status: Mapping[str, Any]) -> bool:
    """Ready and nothing in progress: the state a status converges to, written as soon as it is reached."""
    conditions = status.get("conditions")
    ready = find_condition(conditions, CONDITION_READY)
    progressing = find_condition(conditions, CONDITION_PROGRESSING)
    return (
        ready is not None
        and ready.get("status") == "True"
        and (progressing is None or progressing.get("status") != "True")
    )
