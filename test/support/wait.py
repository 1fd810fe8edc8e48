"""Waiting on conditions with a deadline: the only way tests synchronise (no bare sleeps).

Invariant: `wait_for` returns the first truthy value of `predicate` or raises `WaitTimeout` naming what
it waited for and the last value or exception seen; it never waits longer than `timeout` plus one poll.
`holds_for` asserts that something stays true over a window (what must not happen, e.g. a second request).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not hold in time (an AssertionError, so pytest shows it as a test failure)."""


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `predicate` until it returns something truthy; exceptions in `ignore` count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except ignore as e:
            last = e
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.1f} s waiting for {message} (last: {last!r})")
        time.sleep(interval)


def holds_for(
    predicate: Callable[[], object], seconds: float, interval: float = 0.5, message: str = "condition"
) -> None:
    """Assert that `predicate` stays truthy for `seconds` (checked every `interval`): an observation window
    for something that must not happen (a second request), not a way to wait for something that should."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if not value:
            raise AssertionError(f"{message} stopped holding (got {value!r})")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)
