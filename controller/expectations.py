"""What this operator just wrote but its cache may not show yet (client-go's ControllerExpectations).

Invariant: a pod name created (or UID deleted) by a reconcile counts as present (or gone) for the owner's
next reconciles until the cache shows it or `ttl` passes, so a stale cache can never make the operator
create a worker twice or retire one more worker than asked. Lost on restart, where the cache is fresh.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class Expectations:
    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._created: dict[str, dict[str, float]] = {}  # owner key -> pod name -> when
        self._deleted: dict[str, dict[str, float]] = {}  # owner key -> pod uid -> when
        self._lock = threading.Lock()
        self._last_sweep = 0.0

    def created(self, owner: str, name: str, now: float) -> None:
        with self._lock:
            self._created.setdefault(owner, {})[name] = now

    def deleted(self, owner: str, uid: str, now: float) -> None:
        with self._lock:
            self._deleted.setdefault(owner, {})[uid] = now

    def pending(
        self, owner: str, observed_names: Iterable[str], live_uids: Iterable[str], now: float
    ) -> tuple[frozenset[str], frozenset[str]]:
        """(names expected present, UIDs expected gone) after dropping what the cache now shows."""
        names = set(observed_names)
        uids = set(live_uids)
        with self._lock:
            if now - self._last_sweep > self.ttl:
                self._sweep(now)
            created = {
                n: t for n, t in self._created.get(owner, {}).items() if n not in names and now - t < self.ttl
            }
            deleted = {
                u: t for u, t in self._deleted.get(owner, {}).items() if u in uids and now - t < self.ttl
            }
            self._store(self._created, owner, created)
            self._store(self._deleted, owner, deleted)
            return frozenset(created), frozenset(deleted)

    def forget(self, owner: str) -> None:
        with self._lock:
            self._created.pop(owner, None)
            self._deleted.pop(owner, None)

    def _sweep(self, now: float) -> None:
        """Drop expired entries of owners that are no longer reconciled (e.g. deleted ones)."""
        self._last_sweep = now
        for table in (self._created, self._deleted):
            for owner in list(table):
                self._store(table, owner, {k: t for k, t in table[owner].items() if now - t < self.ttl})

    @staticmethod
    def _store(table: dict[str, dict[str, float]], owner: str, entries: dict[str, float]) -> None:
        if entries:
            table[owner] = entries
        else:
            table.pop(owner, None)
