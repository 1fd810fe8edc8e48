"""The reconciler contract: a Request names one object, a Result says when to look again.

Invariant: a reconcile is level-based (it gets only namespace/name, never "what changed"); a TerminalError
is never retried until a new event arrives; a reconcile deadline is cooperative and is observed by every
client call made from the reconciling thread, which raises ReconcileTimeout once it has passed.
Held by test/unit/test_runtime_controller.py, test/unit/test_runtime_handlers.py.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, order=True)
class Request:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class Result:
    """requeue_after: look again after this many seconds (resets backoff); requeue: retry with backoff."""

    requeue_after: float | None = None
    requeue: bool = False


class TerminalError(Exception):
    """A failure retrying cannot fix (bad spec, ...): counted, logged, not requeued."""


class ReconcileTimeout(Exception):
    """The reconcile's deadline passed; raised by deadline checks and by client calls."""


class Reconciler(Protocol):
    def reconcile(self, request: Request) -> Result: ...


_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("reconcile_deadline", default=None)


@contextmanager
def deadline_after(seconds: float | None) -> Iterator[None]:
    """Within the block, reconcile deadline checks (and client calls) fail after `seconds`."""
    token = _deadline.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining_time() -> float | None:
    """Seconds left before this thread's reconcile deadline; None without one."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def check_deadline() -> None:
    """Raise ReconcileTimeout if this thread's reconcile deadline has passed; call it between long steps."""
    remaining = remaining_time()
    if remaining is not None and remaining <= 0:
        raise ReconcileTimeout("reconcile deadline exceeded")
