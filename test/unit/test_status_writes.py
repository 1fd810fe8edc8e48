"""status_writes.decide: the coalescing rule for status writes, with time passed in."""

from __future__ import annotations

from typing import Any

from dask_operator.controller.status_writes import StatusWrite, decide

T = 1_700_000_000.0


def status(ready: str, progressing: str, reason: str = "WorkersNotReady", message: str = "",
           degraded: str = "False", generation: int = 1, **fields: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "observedGeneration": generation,
        "conditions": [
            {"type": "Ready", "status": ready, "reason": reason, "message": message},
            {"type": "Progressing", "status": progressing, "reason": "ScalingUp", "message": ""},
            {
                "type": "Degraded",
                "status": degraded,
                "reason": "AsExpected" if degraded == "False" else "X",
                "message": "",
            },
        ],
        **fields,
    }


def test_an_unchanged_status_is_never_written_and_forgets_a_pending_change() -> None:
    same = status("False", "True")
    assert decide(same, same, pending_since=T - 0.5, now=T) == StatusWrite(False)


def test_a_progress_change_waits_for_the_window_from_the_first_change_then_writes_the_newest() -> None:
    before = {}
    first = decide(before, status("False", "True", readyReplicas=0), None, T)
    assert first == StatusWrite(False, wake_in=1.0, pending_since=T)
    # another pod transition 0.4 s later: still one pending change, the window is not extended
    second = decide(before, status("False", "True", readyReplicas=1), first.pending_since, T + 0.4)
    assert second.write is False and second.pending_since == T
    assert abs((second.wake_in or 0) - 0.6) < 1e-6
    assert decide(before, status("False", "True", readyReplicas=1), T, T + 1.0).write  # bounded: 1 s


def test_a_settled_status_is_written_at_once() -> None:
    assert decide({}, status("True", "False", reason="ClusterReady"), None, T).write
    ready = status("True", "False", reason="ClusterReady", readyReplicas=2)
    # Ready stays True, counts move, nothing progressing: still settled
    assert decide(ready, {**ready, "readyReplicas": 3}, None, T).write


def test_changes_that_deserve_an_event_or_a_new_generation_are_written_at_once() -> None:
    progressing = status("False", "True")
    assert decide(progressing, status("False", "True", degraded="True"), None, T).write
    assert decide(status("False", "True", degraded="True"), progressing, None, T).write  # recovered
    assert decide(progressing, status("False", "True", generation=2), None, T).write
    # the first status an object gets has no generation to compare with: it may wait
    assert not decide({}, progressing, None, T).write


def test_a_zero_window_writes_every_change() -> None:
    assert decide({}, status("False", "True"), None, T, window=0.0).write


def test_reaching_a_phase_clients_wait_for_is_written_at_once_other_phases_wait() -> None:
    pending = status("False", "True", phase="Pending")
    assert decide(pending, status("False", "True", phase="Running"), None, T).write
    assert decide(pending, status("False", "True", phase="Error"), None, T).write
    assert not decide({}, pending, None, T).write  # Created -> Pending may be coalesced
    running = status("False", "True", phase="Running")
    assert not decide(running, {**running, "readyReplicas": 1}, None, T).write  # counts under Running wait
