"""Status conditions and the Events their changes deserve.

Invariant: pure functions; a condition's lastTransitionTime moves only when its status or reason does, and
an Event is produced only for a change a user must know about. Held by test/unit/test_conditions.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dask_operator.controller.contract.objects import Obj

# Set by the executor while the API server refuses a write (ReplicaSet's condition of the same name).
CONDITION_REPLICA_FAILURE = "ReplicaFailure"
# On a DaskCluster: True when the operator talks to the scheduler through its HTTP API, False when only
# through the comm RPC (the user's routes left alone); the reason says which routes the scheduler got.
CONDITION_SCHEDULER_API = "SchedulerAPI"


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


def merge_conditions(
    previous: Iterable[Mapping[str, Any]] | None,
    wanted: Iterable[Condition],
    now: str,
    generation: int | None,
) -> list[Obj]:
    """Conditions as stored: lastTransitionTime moves when status *or reason* changes (so it also tells
    since when a reason has held, which timeouts read), otherwise it is kept from `previous`."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for cond in wanted:
        status = "True" if cond.status else "False"
        old = before.get(cond.type)
        unchanged = old is not None and old.get("status") == status and old.get("reason") == cond.reason
        entry: Obj = {
            "type": cond.type,
            "status": status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": old.get("lastTransitionTime", now) if unchanged and old else now,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    return out


def find_condition(conditions: Iterable[Mapping[str, Any]] | None, kind: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == kind), None)


@dataclass(frozen=True)
class EventSpec:
    """An Event to record on the reconciled object: type Normal/Warning, a CamelCase reason, a sentence."""

    type: str
    reason: str
    message: str


def condition_events(
    previous: Iterable[Mapping[str, Any]] | None, current: Iterable[Obj], ready_events: bool = True
) -> list[EventSpec]:
    """Events for condition changes a user must know about; nothing when nothing changed.

    Degraded -> Warning (and Normal when it clears); becoming Ready -> Normal, if `ready_events`.
    """
    before = {c.get("type"): c for c in previous or []}
    events = []
    for cond in current:
        old = before.get(cond["type"]) or {}
        if old.get("status") == cond["status"] and old.get("reason") == cond["reason"]:
            continue
        if cond["type"] == "Degraded" and cond["status"] == "True":
            events.append(EventSpec("Warning", cond["reason"], cond["message"]))
        elif cond["type"] == "Degraded" and old.get("status") == "True":
            events.append(EventSpec("Normal", "Recovered", f"No longer degraded ({old.get('reason')})."))
        elif cond["type"] == "Ready" and cond["status"] == "True" and ready_events:
            events.append(EventSpec("Normal", cond["reason"], cond["message"]))
    return events
