"""Scheduler calls off the controller's workers: a retirement may take minutes and a scheduler may hang, so
a reconcile never waits for one. It starts a call here and returns; the answer, when it arrives, is kept as
an observed input for the next reconcile of the same key, which the arrival enqueues.

Invariant: at most one call in flight per (key, topic); a call never runs on the caller's thread; every
answer is kept (with when it was asked and answered, and what the caller attached to it) until a new call
on the same (key, topic) replaces it or the key is forgotten; `notify(key)` runs after each answer is
stored. Concurrency is bounded per topic. Held by test/unit/test_scheduler_calls.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("dask_operator.controller.scheduler_calls")

# Calls of one topic running at once, over all clusters (a hanging scheduler holds one of them).
DEFAULT_CONCURRENCY = 32


@dataclass(frozen=True)
class Answer:
    """A call and, once it ended, its value or error."""

    asked: float
    attached: Any = None  # what the caller attached when asking (e.g. the request it made)
    answered: float | None = None  # None: still in flight
    value: Any = None
    error: BaseException | None = None

    @property
    def in_flight(self) -> bool:
        return self.answered is None


class SchedulerCalls:
    def __init__(self, clock: Callable[[], float], concurrency: int = DEFAULT_CONCURRENCY) -> None:
        self.clock = clock
        self.notify: Callable[[Hashable], None] = lambda key: None
        self._concurrency = concurrency
        self._lock = threading.Lock()
        self._answers: dict[tuple[Hashable, str], Answer] = {}
        self._slots: dict[str, threading.BoundedSemaphore] = {}

    def ask(self, key: Hashable, topic: str, call: Callable[[], Any], attached: Any = None) -> bool:
        """Start `call` on its own thread unless one is in flight for (key, topic); True if started."""
        with self._lock:
            current = self._answers.get((key, topic))
            if current is not None and current.in_flight:
                return False
            asked = Answer(asked=self.clock(), attached=attached)
            self._answers[(key, topic)] = asked
            slots = self._slots.setdefault(topic, threading.BoundedSemaphore(self._concurrency))
        thread = threading.Thread(
            target=self._run, args=(key, topic, call, asked, slots), name=f"scheduler-{topic}", daemon=True
        )
        thread.start()
        return True

    def answer(self, key: Hashable, topic: str) -> Answer | None:
        with self._lock:
            return self._answers.get((key, topic))

    def discard(self, key: Hashable, topic: str) -> None:
        """Drop a finished answer (a call in flight is kept: its answer still arrives)."""
        with self._lock:
            current = self._answers.get((key, topic))
            if current is not None and not current.in_flight:
                del self._answers[(key, topic)]

    def forget(self, key: Hashable) -> None:
        """Drop every finished answer of `key` (its object is gone)."""
        with self._lock:
            for k in [k for k, a in self._answers.items() if k[0] == key and not a.in_flight]:
                del self._answers[k]

    def _run(
        self,
        key: Hashable,
        topic: str,
        call: Callable[[], Any],
        asked: Answer,
        slots: threading.BoundedSemaphore,
    ) -> None:
        value: Any = None
        error: BaseException | None = None
        with slots:
            try:
                value = call()
            except Exception as e:  # noqa: BLE001  (the answer carries it to the reconcile)
                error = e
        done = Answer(asked.asked, asked.attached, self.clock(), value, error)
        with self._lock:
            if self._answers.get((key, topic)) is asked:
                self._answers[(key, topic)] = done
        try:
            self.notify(key)
        except Exception:  # a failing notify must not lose the answer
            log.exception("notify failed", key=str(key), topic=topic)
