"""Detecting Kueue at start-up (controller/kueue_access.py): a transient answer is asked again, never taken for
"Kueue is absent"; a definite one (404, 403) is believed at once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dask_operator.controller.kueue_access import until_answered
from dask_operator.runtime.client import ApiError


def answers(*outcomes: object) -> tuple[list[str], Callable[[], object]]:
    calls: list[str] = []
    queue = list(outcomes)

    def ask() -> object:
        calls.append("asked")
        outcome = queue.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return calls, ask


def test_a_throttled_or_failing_api_server_is_asked_again_with_growing_pauses() -> None:
    """Regression: one 429 during start-up switched Kueue support off until the next restart."""
    pauses: list[float] = []
    calls, ask = answers(
        ApiError(429, "GET", "/apis/kueue.x-k8s.io/v1beta2", retry_after=1),
        ApiError(503, "GET", "/apis/kueue.x-k8s.io/v1beta2"),
        ConnectionResetError("reset by peer"),
        {"resources": [{"name": "workloads"}]},
    )
    assert until_answered(ask, "Kueue discovery", sleep=pauses.append) == {
        "resources": [{"name": "workloads"}]
    }
    assert len(calls) == 4 and pauses == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("status", [404, 403, 401])
def test_a_definite_answer_is_believed_at_once(status: int) -> None:
    pauses: list[float] = []
    calls, ask = answers(ApiError(status, "GET", "/apis/kueue.x-k8s.io/v1beta2"))
    with pytest.raises(ApiError):
        until_answered(ask, "Kueue discovery", sleep=pauses.append)
    assert len(calls) == 1 and pauses == []


def test_pauses_are_capped() -> None:
    pauses: list[float] = []
    calls, ask = answers(*[ApiError(500, "GET", "/x")] * 10, "ok")
    assert until_answered(ask, "x", sleep=pauses.append) == "ok"
    assert max(pauses) == 30.0 and len(calls) == 11
