"""controller/contract/conditions.py: a condition's lastTransitionTime moves only when its status or reason
does, and only changes a user must know about become Events."""

from __future__ import annotations

from dask_operator.controller.contract.conditions import (
    Condition,
    EventSpec,
    condition_events,
    merge_conditions,
)


def test_transition_time_moves_with_status_or_reason_only() -> None:
    first = merge_conditions(None, [Condition("Ready", False, "Starting", "a")], "t1", 1)
    assert first == [{"type": "Ready", "status": "False", "reason": "Starting", "message": "a",
                      "lastTransitionTime": "t1", "observedGeneration": 1}]  # fmt: skip
    same = merge_conditions(first, [Condition("Ready", False, "Starting", "b")], "t2", 2)
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["message"] == "b"
    reason = merge_conditions(first, [Condition("Ready", False, "Waiting")], "t3", None)
    assert reason[0]["lastTransitionTime"] == "t3" and "observedGeneration" not in reason[0]


def test_events_for_degraded_recovered_and_ready() -> None:
    degraded = merge_conditions(None, [Condition("Degraded", True, "Broken", "fix it")], "t", None)
    assert condition_events(None, degraded) == [EventSpec("Warning", "Broken", "fix it")]
    assert condition_events(degraded, degraded) == []
    fine = merge_conditions(degraded, [Condition("Degraded", False, "AsExpected")], "t", None)
    assert condition_events(degraded, fine) == [
        EventSpec("Normal", "Recovered", "No longer degraded (Broken).")
    ]
    ready = merge_conditions(None, [Condition("Ready", True, "Running", "up")], "t", None)
    assert condition_events(None, ready) == [EventSpec("Normal", "Running", "up")]
    assert condition_events(None, ready, ready_events=False) == []
