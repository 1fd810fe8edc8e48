"""Read your own writes: the resourceVersion of every write a reconcile makes, and whether the cache has
caught up with it (Cluster API's and Kubernetes' consistency check, one mechanism for every controller).

Invariant: a write made while reconciling request R raises R's watermark for that kind to the write's
resourceVersion; R is reconciled again only once the informer of that kind has seen a resourceVersion at
least as new (or after `max_wait`, so a broken watch cannot stall R forever). A reconcile therefore never
acts on a cache older than its own writes, and a refused write records nothing (no phantom to wait for).
Held by test/unit/test_runtime_consistency.py and test/integration/test_runtime_manager.py.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

from dask_operator.runtime.kinds import Kind

# resourceVersion per kind written by the reconcile running in this context (None outside a reconcile).
_writes: contextvars.ContextVar[dict[Kind, int] | None] = contextvars.ContextVar("own_writes", default=None)

DEFAULT_MAX_WAIT = 30.0
_note_lock = threading.Lock()


def note_write(kind: Kind, written: Any) -> None:
    """Called by the client for every successful write: remember the resourceVersion it produced."""
    writes = _writes.get()
    if writes is None or not isinstance(written, dict):
        return
    rv = _as_int((written.get("metadata") or {}).get("resourceVersion"))
    if rv is not None and written.get("kind") != "Status":
        with _note_lock:  # one reconcile's writes may run on several threads (a plan's independent writes)
            writes[kind] = max(writes.get(kind, 0), rv)


@contextmanager
def recording() -> Iterator[dict[Kind, int]]:
    """Within the block, writes through any client are collected into the yielded dict."""
    writes: dict[Kind, int] = {}
    token = _writes.set(writes)
    try:
        yield writes
    finally:
        _writes.reset(token)


class OwnWrites:
    """Per key, the newest resourceVersion written for each kind and when; asks `seen(kind)` for the cache's."""

    def __init__(
        self,
        seen: Callable[[Kind], int | None],
        max_wait: float = DEFAULT_MAX_WAIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seen = seen
        self.max_wait = max_wait
        self._clock = clock
        self._pending: dict[Hashable, tuple[float, dict[Kind, int]]] = {}
        self._lock = threading.Lock()

    def wrote(self, key: Hashable, writes: dict[Kind, int]) -> None:
        if not writes:
            return
        with self._lock:
            _, before = self._pending.get(key, (0.0, {}))
            merged = {**before, **{k: max(v, before.get(k, 0)) for k, v in writes.items()}}
            self._pending[key] = (self._clock(), merged)

    def behind(self, key: Hashable) -> bool:
        """Whether the cache has not yet seen all of key's writes (and they are younger than max_wait)."""
        with self._lock:
            entry = self._pending.get(key)
        if entry is None:
            return False
        since, writes = entry
        if self._clock() - since > self.max_wait:
            self.forget(key)
            return False
        for kind, rv in writes.items():
            seen = self._seen(kind)
            if seen is not None and seen < rv:
                return True
        self.forget(key)
        return False

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._pending.pop(key, None)


def _as_int(value: Any) -> int | None:
    """resourceVersions are etcd revisions; compared as numbers only here (anything unparsable: ignored)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
