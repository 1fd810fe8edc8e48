"""hold_of decides alone whether an object is held; the Suspended condition and its Events follow it."""

from __future__ import annotations

from typing import Any

import pytest

from dask_operator.controller.contract.hold import (
    REASON_RESUMED,
    REASON_SUSPENDED,
    Hold,
    hold_events,
    hold_of,
    suspended_condition,
)


def obj(kind: str = "DaskJob", **spec: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": "x", "namespace": "ns"}, "spec": spec}


def stored(status: str, reason: str) -> list[dict[str, Any]]:
    return [{"type": "Suspended", "status": status, "reason": reason, "message": "m"}]


@pytest.mark.parametrize(
    ("spec", "held"),
    [({}, False), ({"suspend": False}, False), ({"suspend": True}, True), ({"suspend": "true"}, False)],
)
def test_only_spec_suspend_true_holds(spec: dict[str, Any], held: bool) -> None:
    hold = hold_of(obj(**spec))
    assert (hold is not None) is held
    if hold is not None:
        assert hold.reason == REASON_SUSPENDED
        assert "DaskJob" in hold.message and "spec.suspend" in hold.message


def test_an_object_without_spec_is_not_held() -> None:
    assert hold_of({"kind": "DaskCluster", "metadata": {}}) is None


def test_hold_is_a_frozen_value() -> None:
    hold = Hold("Queued", "waiting")
    with pytest.raises(AttributeError):
        hold.reason = "x"  # type: ignore[misc]
    assert hold == Hold("Queued", "waiting")


def test_suspended_condition_is_absent_until_the_first_hold() -> None:
    assert suspended_condition(None, None) is None
    assert suspended_condition(None, [{"type": "Ready", "status": "True", "reason": "R"}]) is None


def test_suspended_condition_true_with_the_hold_reason_then_false_resumed() -> None:
    held = suspended_condition(Hold("Queued", "waiting for a quota"), None)
    assert (
        held is not None and held.status and held.reason == "Queued" and held.message == "waiting for a quota"
    )
    resumed = suspended_condition(None, stored("True", "Queued"))
    assert resumed is not None and not resumed.status and resumed.reason == REASON_RESUMED


def test_events_on_each_transition_and_none_while_unchanged() -> None:
    suspended = stored("True", REASON_SUSPENDED)
    assert [e.reason for e in hold_events(None, suspended)] == [REASON_SUSPENDED]
    assert hold_events(suspended, suspended) == []
    assert [e.reason for e in hold_events(suspended, stored("True", "Queued"))] == ["Queued"]
    assert [(e.type, e.reason) for e in hold_events(suspended, stored("False", REASON_RESUMED))] == [
        ("Normal", REASON_RESUMED)
    ]
    assert hold_events(stored("False", REASON_RESUMED), stored("False", REASON_RESUMED)) == []
    assert hold_events(None, []) == []
