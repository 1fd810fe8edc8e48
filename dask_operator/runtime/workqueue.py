"""A deduplicating, delaying, rate-limited work queue of keys (client-go's workqueue, c-r's merge rules).

Invariant: a key is never handed to a second worker before `done()` for the first; any number of adds while
it is processing collapse into exactly one more run after `done()`; a waiting delay only ever moves earlier,
and an immediate add makes a waiting key ready at once. Ready keys leave by priority, then oldest first: by
the time of the add that made them dirty, so a key added again while it was processing keeps its place
in line from that add rather than going behind every key added until its run ended (c-r's priority queue).
Held by test/unit/test_runtime_handlers.py, test/unit/test_runtime_workqueue.py.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from dask_operator.runtime import metrics
from dask_operator.runtime.ratelimiter import RateLimiter, default_controller_rate_limiter

K = TypeVar("K", bound=Hashable)

LOW_PRIORITY = -100  # c-r: initial-list adds and resync/relist updates wait behind real changes


class WorkQueue(Generic[K]):
    """Thread-safe; `get()` blocks. Metrics are labelled with `name` when one is given."""

    def __init__(
        self,
        name: str | None = None,
        *,
        rate_limiter: RateLimiter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._limiter = rate_limiter or default_controller_rate_limiter()
        self._clock = clock
        self._lock = threading.Lock()
        self._ready_cond = threading.Condition(self._lock)
        self._timer_cond = threading.Condition(self._lock)
        self._drain_cond = threading.Condition(self._lock)
        self._seq = itertools.count()
        # ready heap of (-priority, seq, key); _queued names the one valid entry per ready key
        self._ready: list[tuple[int, int, K]] = []
        self._queued: dict[K, tuple[int, int]] = {}
        self._dirty: dict[K, int] = {}
        self._order: dict[K, int] = {}  # per dirty key, the sequence number of the add that dirtied it
        self._processing: dict[K, float] = {}
        self._first_add: dict[K, float] = {}
        # waiting heap of (ready_at, seq, key); _waiting names the one valid entry per waiting key
        self._delayed: list[tuple[float, int, K]] = []
        self._waiting: dict[K, tuple[float, int, int]] = {}
        self._timer: threading.Thread | None = None
        self._shutting_down = False
        self._draining = False
        self._depth: Tally[int] = Tally()
        if name is not None:
            self._adds = metrics.WORKQUEUE_ADDS.labels(name, name)
            self._retries = metrics.WORKQUEUE_RETRIES.labels(name, name)
            self._queue_duration = metrics.WORKQUEUE_QUEUE_DURATION.labels(name, name)
            self._work_duration = metrics.WORKQUEUE_WORK_DURATION.labels(name, name)
            metrics.WORKQUEUE_UNFINISHED_WORK.labels(name, name).set_function(self.unfinished_work_seconds)
            metrics.WORKQUEUE_LONGEST_RUNNING.labels(name, name).set_function(self.longest_running_seconds)
            metrics.WORKQUEUE_DEPTH.labels(name, name, "0").set(0)

    # -- adding ---------------------------------------------------------------------------------------

    def add(self, key: K, priority: int = 0) -> None:
        """Make key ready now (cancelling any waiting delay); a no-op for a key that is already dirty."""
        with self._lock:
            if self._shutting_down:
                return
            self._waiting.pop(key, None)
            self._add_locked(key, priority)

    def add_after(self, key: K, delay: float, priority: int = 0) -> None:
        """Make key ready after delay seconds; for a key already waiting only an earlier time wins."""
        with self._lock:
            if self._shutting_down:
                return
            if delay <= 0:
                self._waiting.pop(key, None)
                self._add_locked(key, priority)
                return
            if self.name is not None:
                self._retries.inc()
            ready_at = self._clock() + delay
            current = self._waiting.get(key)
            if current is not None and current[0] <= ready_at:
                if priority > current[1]:
                    self._waiting[key] = (current[0], priority, current[2])
                return
            seq = next(self._seq)
            self._waiting[key] = (ready_at, priority, seq)
            heapq.heappush(self._delayed, (ready_at, seq, key))
            if self._timer is None:
                self._timer = threading.Thread(
                    target=self._run_timer, name=f"workqueue-{self.name}", daemon=True
                )
                self._timer.start()
            elif self._delayed[0][1] == seq:
                self._timer_cond.notify()

    def add_rate_limited(self, key: K, priority: int = 0) -> None:
        """add_after(key, the rate limiter's next delay for key)."""
        self.add_after(key, self._limiter.when(key), priority)

    def forget(self, key: K) -> None:
        """Reset key's backoff (it stays queued if it is)."""
        self._limiter.forget(key)

    def num_requeues(self, key: K) -> int:
        return self._limiter.num_requeues(key)

    def _add_locked(self, key: K, priority: int) -> None:
        now = self._clock()
        current = self._dirty.get(key)
        if current is not None:
            if priority > current:
                self._dirty[key] = priority
                if key in self._queued:
                    self._push_ready(key, priority)
            return
        self._dirty[key] = priority
        self._order[key] = next(self._seq)
        self._first_add[key] = now
        if self.name is not None:
            self._adds.inc()
        if key not in self._processing:
            self._push_ready(key, priority)

    def _push_ready(self, key: K, priority: int) -> None:
        old = self._queued.get(key)
        if old is not None:
            self._depth_change(old[0], -1)
        seq = self._order[key]
        self._queued[key] = (priority, seq)
        heapq.heappush(self._ready, (-priority, seq, key))
        self._depth_change(priority, +1)
        self._ready_cond.notify()

    def _depth_change(self, priority: int, delta: int) -> None:
        self._depth[priority] += delta
        if self.name is not None:
            metrics.WORKQUEUE_DEPTH.labels(self.name, self.name, str(priority)).set(self._depth[priority])

    def _run_timer(self) -> None:
        with self._lock:
            while not self._shutting_down:
                now = self._clock()
                while self._delayed and self._delayed[0][0] <= now:
                    _, seq, key = heapq.heappop(self._delayed)
                    entry = self._waiting.get(key)
                    if entry is None or entry[2] != seq:
                        continue  # superseded by an earlier delay or an immediate add
                    del self._waiting[key]
                    self._add_locked(key, entry[1])
                while (
                    self._delayed
                    and self._waiting.get(self._delayed[0][2], (0.0, 0, -1))[2] != self._delayed[0][1]
                ):
                    heapq.heappop(self._delayed)
                timeout = (self._delayed[0][0] - now) if self._delayed else 10.0
                self._timer_cond.wait(max(timeout, 0.0))

    # -- handing out ------------------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> tuple[K | None, bool]:
        """(key, False) for the next ready key; (None, True) once shut down and empty; (None, False) on timeout."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._lock:
            while not self._queued and not self._shutting_down:
                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    return None, False
                self._ready_cond.wait(remaining)
            while self._ready:
                neg_priority, seq, key = heapq.heappop(self._ready)
                if self._queued.get(key) != (-neg_priority, seq):
                    continue
                del self._queued[key]
                self._depth_change(-neg_priority, -1)
                del self._dirty[key]
                del self._order[key]
                now = self._clock()
                self._processing[key] = now
                first = self._first_add.pop(key, now)
                if self.name is not None:
                    self._queue_duration.observe(now - first)
                return key, False
            return None, True

    def done(self, key: K) -> None:
        """Finish key; if it was added meanwhile it becomes ready again (exactly once)."""
        with self._lock:
            start = self._processing.pop(key, None)
            if start is not None and self.name is not None:
                self._work_duration.observe(self._clock() - start)
            priority = self._dirty.get(key)
            if priority is not None and key not in self._queued:
                self._push_ready(key, priority)
            if not self._processing:
                self._drain_cond.notify_all()

    # -- shutting down ----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Refuse new adds; blocked getters wake; queued keys are still handed out until none is left."""
        with self._lock:
            self._shutting_down = True
            self._draining = False
            self._ready_cond.notify_all()
            self._timer_cond.notify_all()
            self._drain_cond.notify_all()

    def shutdown_with_drain(self, timeout: float | None = None) -> bool:
        """shutdown(), then wait until every in-flight key called done(); False if timeout came first."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._lock:
            self._shutting_down = True
            self._draining = True
            self._ready_cond.notify_all()
            self._timer_cond.notify_all()
            while self._processing and self._draining:
                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    return False
                self._drain_cond.wait(remaining)
            return not self._processing

    # -- introspection ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Ready keys that are not in flight (informational)."""
        with self._lock:
            return len(self._queued)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def processing(self) -> int:
        with self._lock:
            return len(self._processing)

    def unfinished_work_seconds(self) -> float:
        with self._lock:
            now = self._clock()
            return sum(now - start for start in self._processing.values())

    def longest_running_seconds(self) -> float:
        with self._lock:
            now = self._clock()
            return max((now - start for start in self._processing.values()), default=0.0)
