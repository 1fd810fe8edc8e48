"""Whether a DaskCluster or DaskJob is held (must run nothing), and why: one value every planner takes.

Invariant: `hold_of(obj)` is the only place that decides whether an object is held. Reconcilers pass the hold of
the object they reconcile to its planner as an input (no planner reads `spec.suspend` itself); the job planner
also asks `hold_of` about a cluster the job only refers to (spec.clusterRef), to wait for it. A held object keeps
its spec and its own object; the planners remove what runs (pods, the scheduler Service, a job's runner and
cluster) and restore it from the unchanged spec once the hold is lifted. Two sources: `spec.suspend: true`
here, and Kueue (controller/contract/kueue.py: a labelled object whose Workload is not admitted, or evicted),
whose `Queueing.hold` the planners take as the hold when spec.suspend gives none. Held by
test/unit/test_hold.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dask_operator.api.v1.types import (
    CONDITION_DEGRADED,
    CONDITION_PROGRESSING,
    CONDITION_READY,
    CONDITION_SUSPENDED,
)
from dask_operator.controller.contract.conditions import Condition, EventSpec, find_condition

# The reason of a hold set by the user through spec.suspend (and of the Suspended condition it causes).
REASON_SUSPENDED = "Suspended"
# The reason the Suspended condition takes once a hold is lifted.
REASON_RESUMED = "Resumed"


@dataclass(frozen=True)
class Hold:
    """Why an object must run nothing: a CamelCase `reason` (the Suspended condition's) and a sentence."""

    reason: str
    message: str


def hold_of(obj: Mapping[str, Any]) -> Hold | None:
    """The hold on a DaskCluster or DaskJob, or None when it may run."""
    kind = obj.get("kind", "object")
    if (obj.get("spec") or {}).get("suspend") is True:
        return Hold(
            REASON_SUSPENDED,
            f"spec.suspend is true: the {kind} runs nothing until it is set to false.",
        )
    return None


def held_conditions(hold: Hold, removing: str | None, quiet: str) -> list[Condition]:
    """Ready, Progressing and Degraded of a held object: not Ready for the hold's reason, Progressing
    ("Suspending", saying `removing`) while something still goes, else at rest with `quiet`; never Degraded."""
    progressing = (
        Condition(CONDITION_PROGRESSING, True, "Suspending", removing)
        if removing
        else Condition(CONDITION_PROGRESSING, False, hold.reason, quiet)
    )
    return [
        Condition(CONDITION_READY, False, hold.reason, hold.message),
        progressing,
        Condition(CONDITION_DEGRADED, False, "AsExpected", ""),
    ]


def suspended_condition(hold: Hold | None, previous: Iterable[Mapping[str, Any]] | None) -> Condition | None:
    """The `Suspended` condition: True with the hold's reason while held; False `Resumed` once a hold was
    lifted; absent on an object that was never held (as batch/v1 Job does)."""
    if hold is not None:
        return Condition(CONDITION_SUSPENDED, True, hold.reason, hold.message)
    if find_condition(previous, CONDITION_SUSPENDED) is None:
        return None
    return Condition(CONDITION_SUSPENDED, False, REASON_RESUMED, "The hold was lifted; running again.")


def hold_events(
    previous: Iterable[Mapping[str, Any]] | None, current: Iterable[Mapping[str, Any]]
) -> list[EventSpec]:
    """One Normal Event per change of the Suspended condition (held, held for another reason, resumed)."""
    before = find_condition(previous, CONDITION_SUSPENDED) or {}
    now = find_condition(current, CONDITION_SUSPENDED)
    if now is None or (before.get("status"), before.get("reason")) == (now.get("status"), now.get("reason")):
        return []
    if now.get("status") == "True":
        return [EventSpec("Normal", str(now.get("reason")), str(now.get("message")))]
    if before.get("status") == "True":
        return [EventSpec("Normal", REASON_RESUMED, str(now.get("message")))]
    return []
