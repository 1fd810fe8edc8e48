"""Per-key retry delays for the work queue (client-go's rate limiters, c-r's defaults).

Invariant: `when(key)` returns base * 2**n for the n-th consecutive failure of that key (capped), and
`forget(key)` resets n to 0; the token bucket, when used, never lets requeues exceed its sustained rate.
Held by test/unit/test_runtime_controller.py, test/unit/test_runtime_workqueue.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Protocol


class RateLimiter(Protocol):
    def when(self, key: Hashable) -> float: ...
    def forget(self, key: Hashable) -> None: ...
    def num_requeues(self, key: Hashable) -> int: ...


class ItemExponentialFailureRateLimiter:
    """delay = base * 2**failures(key), capped at max_delay; c-r uses 5 ms .. 1000 s."""

    def __init__(self, base_delay: float = 0.005, max_delay: float = 1000.0) -> None:
        self._base = base_delay
        self._max = max_delay
        self._failures: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def when(self, key: Hashable) -> float:
        with self._lock:
            exp = self._failures.get(key, 0)
            self._failures[key] = exp + 1
        if exp > 62:  # 2**63 overflows any useful delay; the cap has long been reached
            return self._max
        return float(min(self._base * (2**exp), self._max))

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def num_requeues(self, key: Hashable) -> int:
        with self._lock:
            return self._failures.get(key, 0)


class BucketRateLimiter:
    """A token bucket over all keys (qps sustained, burst tokens); `when` reserves a token."""

    def __init__(
        self, qps: float = 10.0, burst: int = 100, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._qps = qps
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def when(self, key: Hashable) -> float:
        with self._lock:
            now = self._clock()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._qps)
            self._last = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self._qps

    def forget(self, key: Hashable) -> None:
        pass

    def num_requeues(self, key: Hashable) -> int:
        return 0


class MaxOfRateLimiter:
    """The largest delay of several limiters; requeue counts come from the largest as well."""

    def __init__(self, *limiters: RateLimiter) -> None:
        self._limiters = limiters

    def when(self, key: Hashable) -> float:
        return max(limiter.when(key) for limiter in self._limiters)

    def forget(self, key: Hashable) -> None:
        for limiter in self._limiters:
            limiter.forget(key)

    def num_requeues(self, key: Hashable) -> int:
        return max(limiter.num_requeues(key) for limiter in self._limiters)


def default_controller_rate_limiter() -> RateLimiter:
    """c-r's default since v0.23 (priority queue): per-item exponential 5 ms .. 1000 s, no token bucket."""
    return ItemExponentialFailureRateLimiter(0.005, 1000.0)


def bucketed_controller_rate_limiter() -> RateLimiter:
    """client-go's DefaultTypedControllerRateLimiter: max(exponential(5 ms, 1000 s), bucket(10 qps, 100))."""
    return MaxOfRateLimiter(ItemExponentialFailureRateLimiter(0.005, 1000.0), BucketRateLimiter(10.0, 100))
