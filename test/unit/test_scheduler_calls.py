"""SchedulerCalls: slow calls run off the caller's thread, one in flight per (key, topic), answers kept."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

from support.wait import wait_for

from dask_operator.controller.scheduler_calls import SchedulerCalls


def test_a_hanging_call_holds_only_its_own_key_and_answers_wake_their_key() -> None:
    calls = SchedulerCalls(time.monotonic)
    woken: list[Hashable] = []
    calls.notify = woken.append
    release = threading.Event()
    caller = threading.get_ident()
    ran_on: list[int] = []

    def hanging() -> str:
        ran_on.append(threading.get_ident())
        release.wait(30)
        return "slow"

    assert calls.ask("a", "retire", hanging, attached="request-a")
    assert not calls.ask("a", "retire", lambda: "second")  # one in flight per (key, topic)
    assert calls.ask("b", "retire", lambda: "quick")
    wait_for(lambda: "b" in woken, timeout=10, message="b answered while a hangs")
    b = calls.answer("b", "retire")
    assert b is not None and b.value == "quick" and not b.in_flight
    a = calls.answer("a", "retire")
    assert a is not None and a.in_flight and a.attached == "request-a"
    release.set()
    wait_for(lambda: "a" in woken, timeout=10, message="a answered")
    a = calls.answer("a", "retire")
    assert a is not None and a.value == "slow" and a.attached == "request-a"
    assert ran_on and ran_on[0] != caller


def test_errors_are_answers_and_forget_keeps_calls_in_flight() -> None:
    calls = SchedulerCalls(time.monotonic)

    def failing() -> None:
        raise RuntimeError("scheduler said no")

    calls.ask("k", "workers", failing)
    wait_for(lambda: not calls.answer("k", "workers").in_flight, timeout=10, message="answered")  # type: ignore[union-attr]
    answer = calls.answer("k", "workers")
    assert answer is not None and isinstance(answer.error, RuntimeError)
    calls.forget("k")
    assert calls.answer("k", "workers") is None
    release = threading.Event()
    calls.ask("k", "workers", lambda: release.wait(30))
    calls.forget("k")
    calls.discard("k", "workers")
    assert calls.answer("k", "workers") is not None  # in flight: its answer still arrives
    release.set()
