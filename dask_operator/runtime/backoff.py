"""Jittered exponential backoff for loops that talk to a possibly unhealthy API server (client-go's reflector).

Invariant: consecutive delays grow initial * factor**n (each stretched by up to `jitter` of itself), never
beyond the cap; after `reset_after` seconds without a backoff the next delay starts again from the initial value.
Held by test/integration/test_runtime_reflector.py, test/unit/test_runtime_workqueue.py.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        initial: float = 0.8,
        factor: float = 2.0,
        jitter: float = 1.0,
        cap: float = 30.0,
        reset_after: float = 120.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = initial
        self.factor = factor
        self.jitter = jitter
        self.cap = cap
        self.reset_after = reset_after
        self._clock = clock
        self._rng = rng or random.Random()
        self._current = initial
        self._last: float | None = None

    def next(self) -> float:
        """The delay to wait now; advances the sequence."""
        now = self._clock()
        if self._last is not None and now - self._last > self.reset_after:
            self._current = self.initial
        self._last = now
        base = self._current
        self._current = min(self._current * self.factor, self.cap)
        return min(base + self._rng.random() * self.jitter * base, self.cap)

    def reset(self) -> None:
        self._current = self.initial
        self._last = None
