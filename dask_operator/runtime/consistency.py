"""Read your own writes: the resourceVersion of every write a reconcile makes, and whether the cache has
caught up with it (Cluster API's and Kubernetes' consistency check, one mechanism for every controller).

Invariant: a write made while reconciling request R raises R's watermark for that kind to the write's
resourceVersion; R is reconciled again only once the informer of that kind has seen a resourceVersion at
least as new (or after `max_wait`, so a broken watch cannot stall R forever). A reconcile therefore never
acts on a cache older than its own writes, and a refused write records nothing (no phantom to wait for).
A status write made while reconciling, with `recording(status_writes)`, is also remembered per object
(`OwnStatusWrites`), from before it is sent until the informer delivers that object at or past the write's
resourceVersion, so the watch event that only shows it can be told apart (predicate.NotOwnStatusEcho). An
event that cannot be told apart yet (its write still awaits its reply) is held, never waited for, and handed
back to be judged again when that object's last write in flight ends, whichever way it ends.
The watermarks are bounded: one the cache has reached, or older than `max_wait`, is dropped by the first
write a sweep interval later, even if its key is never reconciled again.
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
# where the reconcile running in this context remembers its status writes (None: nowhere)
_status_writes: contextvars.ContextVar[OwnStatusWrites | None] = contextvars.ContextVar(
    "own_status_writes", default=None
)

DEFAULT_MAX_WAIT = 30.0
# How often the writes of keys not reconciled since are checked against the cache (and dropped once seen).
DEFAULT_SWEEP_INTERVAL = 1.0
_note_lock = threading.Lock()


def note_write(kind: Kind, written: Any, subresource: str | None = None) -> None:
    """Called by the client for every successful write: remember the resourceVersion it produced (and, for a
    write to the status subresource, which object's status it was)."""
    writes = _writes.get()
    if writes is None or not isinstance(written, dict):
        return
    meta = written.get("metadata") or {}
    rv = _as_int(meta.get("resourceVersion"))
    if rv is None or written.get("kind") == "Status":
        return
    with _note_lock:  # one reconcile's writes may run on several threads (a plan's independent writes)
        writes[kind] = max(writes.get(kind, 0), rv)
    status_writes = _status_writes.get()
    if subresource == "status" and status_writes is not None:
        status_writes.wrote(kind, str(meta.get("namespace") or ""), str(meta.get("name")), rv)


@contextmanager
def status_write(kind: Kind, namespace: str | None, name: str) -> Iterator[None]:
    """Around a write to a status subresource (the client's): while it is in flight, its echo waits for it."""
    status_writes = _status_writes.get()
    if status_writes is None:
        yield
        return
    status_writes.begin(kind, namespace or "", name)
    try:
        yield
    finally:
        status_writes.end(kind, namespace or "", name)


@contextmanager
def recording(status_writes: OwnStatusWrites | None = None) -> Iterator[dict[Kind, int]]:
    """Within the block, writes through any client are collected into the yielded dict, and status writes
    into `status_writes` (as they happen, so their watch echo finds them)."""
    writes: dict[Kind, int] = {}
    token = _writes.set(writes)
    status_token = _status_writes.set(status_writes)
    try:
        yield writes
    finally:
        _status_writes.reset(status_token)
        _writes.reset(token)


class OwnStatusWrites:
    """Per object of `kind` (by namespace and name), the status writes of ours in flight and the
    resourceVersion of the newest one the informer has not delivered yet.

    An entry lives from the write until the first event at or past its resourceVersion (or the object's
    delete), so it holds only writes in flight: at most one per object this controller reconciles. The echo
    can overtake the write's own response (the watch and the reply race): `delivered` then holds the event
    and hands it back (`redeliver`) once the write has ended. It never waits: a handler that waited for a
    reply would hold up every later event of its watch behind it (at 75 updates/s, seconds of queue).
    """

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self._written: dict[tuple[str, str], int] = {}
        self._in_flight: dict[tuple[str, str], int] = {}
        self._held: dict[tuple[str, str], list[Callable[[], None]]] = {}
        self._lock = threading.Lock()

    def begin(self, kind: Kind, namespace: str, name: str) -> None:
        if kind == self.kind:  # another kind's status (a Workload's): its watch keeps every event
            with self._lock:
                self._in_flight[(namespace, name)] = self._in_flight.get((namespace, name), 0) + 1

    def end(self, kind: Kind, namespace: str, name: str) -> None:
        """A write has its reply (or failed): once none of that object's is in flight, the events held for
        it are judged again (on this thread, after `wrote` recorded what the write produced)."""
        if kind != self.kind:
            return
        key = (namespace, name)
        with self._lock:
            left = self._in_flight.pop(key, 1) - 1
            if left:
                self._in_flight[key] = left
                return
            held = self._held.pop(key, [])
        for redeliver in held:
            redeliver()

    def wrote(self, kind: Kind, namespace: str, name: str, resource_version: int) -> None:
        if kind == self.kind:
            with self._lock:
                key = (namespace, name)
                self._written[key] = max(resource_version, self._written.get(key, 0))

    def delivered(
        self, namespace: str, name: str, resource_version: Any, redeliver: Callable[[], None] | None = None
    ) -> bool:
        """The informer delivers the object at `resource_version`: whether that is exactly a status write of
        ours (an entry the delivery reaches or passes is dropped). While a write of that object awaits its
        reply and no write of ours is known to reach that version, it cannot be told: with `redeliver` the
        event is held (True: not now) and `redeliver()` is called when the object's last write in flight
        ends; without it, the event is not taken for an echo."""
        rv = _as_int(resource_version)
        if rv is None:
            return False
        key = (namespace, name)
        with self._lock:
            written = self._written.get(key)
            if self._in_flight.get(key) and (written is None or written < rv):
                if redeliver is None:
                    return False
                self._held.setdefault(key, []).append(redeliver)
                return True
            if written is None or rv < written:
                return False
            del self._written[key]
        return rv == written

    def passed(self, namespace: str, name: str, resource_version: Any) -> None:
        """The informer delivers the object at `resource_version` (not an echo): drop what it passes."""
        rv = _as_int(resource_version)
        with self._lock:
            written = self._written.get((namespace, name))
            if written is not None and rv is not None and rv >= written:
                del self._written[(namespace, name)]

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._written.pop((namespace, name), None)

    def held(self) -> int:
        """Events held until a write in flight ends."""
        with self._lock:
            return sum(len(v) for v in self._held.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._written)


class OwnWrites:
    """Per key, the newest resourceVersion written for each kind and when; asks `seen(kind)` for the cache's.

    A key's entry goes when the key is next reconciled (`behind`), and otherwise, for a key never reconciled
    again (a deleted object, or one whose own write's echo is filtered out), at the first `wrote` at least
    `sweep_interval` later that finds the cache caught up with it or the entry older than `max_wait`: the table
    holds only keys whose writes the cache has not shown yet, and those of the last sweep interval.
    """

    def __init__(
        self,
        seen: Callable[[Kind], int | None],
        max_wait: float = DEFAULT_MAX_WAIT,
        clock: Callable[[], float] = time.monotonic,
        sweep_interval: float = DEFAULT_SWEEP_INTERVAL,
    ) -> None:
        self._seen = seen
        self.max_wait = max_wait
        self.sweep_interval = sweep_interval
        self._clock = clock
        self._pending: dict[Hashable, tuple[float, dict[Kind, int]]] = {}
        self._swept = clock()
        self._lock = threading.Lock()

    def wrote(self, key: Hashable, writes: dict[Kind, int]) -> None:
        if not writes:
            return
        now = self._clock()
        with self._lock:
            _, before = self._pending.get(key, (0.0, {}))
            merged = {**before, **{k: max(v, before.get(k, 0)) for k, v in writes.items()}}
            self._pending[key] = (now, merged)
            if now - self._swept < self.sweep_interval:
                return
            self._swept = now
            entries = list(self._pending.items())
        self._sweep(entries, now)

    def _sweep(self, entries: list[tuple[Hashable, tuple[float, dict[Kind, int]]]], now: float) -> None:
        """Drop the entries the cache has caught up with or that are older than max_wait (asking `seen`
        outside the lock, once per kind)."""
        seen: dict[Kind, int | None] = {}

        def caught_up(writes: dict[Kind, int]) -> bool:
            for kind, rv in writes.items():
                if kind not in seen:
                    seen[kind] = self._seen(kind)
                cached = seen[kind]
                if cached is not None and cached < rv:
                    return False
            return True

        done = [
            (key, entry) for key, entry in entries if now - entry[0] > self.max_wait or caught_up(entry[1])
        ]
        with self._lock:
            for key, entry in done:
                if self._pending.get(key) is entry:  # not written again meanwhile
                    del self._pending[key]

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

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


def _as_int(value: Any) -> int | None:
    """resourceVersions are etcd revisions; compared as numbers only here (anything unparsable: ignored)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
