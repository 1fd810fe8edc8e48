"""A fixed pool of threads running keyed API writes (bindings, simulated pod status, events, deletes).

Invariant: a key is queued at most once; submitting it again while queued replaces the task (the latest
intent wins) and a key never runs on two threads at once. A failing task is logged and, when it asks
for it by raising `Retry`, queued again after its delay. The pool's size bounds the node's API
concurrency however many pods there are.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

Task = Callable[[], None]


class Retry(Exception):
    def __init__(self, delay: float = 1.0) -> None:
        super().__init__(f"retry in {delay}s")
        self.delay = delay


class WorkPool:
    def __init__(self, workers: int, name: str = "api") -> None:
        self._cond = threading.Condition()
        self._queue: OrderedDict[Hashable, Task] = OrderedDict()
        self._running: set[Hashable] = set()
        self._delayed: list[tuple[float, int, Hashable, Task]] = []
        self._seq = itertools.count()
        self._stop = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, key: Hashable, task: Task, delay: float = 0.0) -> None:
        with self._cond:
            if delay > 0:
                heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), key, task))
            else:
                self._queue[key] = task
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._running) + len(self._delayed)

    def _next(self) -> tuple[Hashable, Task] | None:
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, _, key, task = heapq.heappop(self._delayed)
                    self._queue.setdefault(key, task)
                for key in self._queue:
                    if key not in self._running:
                        task = self._queue.pop(key)
                        self._running.add(key)
                        return key, task
                timeout = self._delayed[0][0] - now if self._delayed else None
                self._cond.wait(timeout)
            return None

    def _work(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            key, task = item
            try:
                task()
            except Retry as r:
                self.submit(key, task, delay=r.delay)
            except Exception:
                log.exception("task %s failed", key)
            finally:
                with self._cond:
                    self._running.discard(key)
                    self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
