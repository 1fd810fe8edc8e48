"""Server-side apply that skips writes which cannot change anything (Cluster API's SSA cache, in Python).

Invariant: an apply is skipped only when the same field manager already applied an identical intent (same
hash) to the object at exactly the resourceVersion the cache now holds; any change to the live object or to
the intent forces a real apply, so a converged controller issues zero writes and a drifted one is repaired.
Held by test/integration/test_runtime_client.py, test/unit/test_runtime_handlers.py.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from dask_operator.controller.runtime.cache import Cache
from dask_operator.controller.runtime.client import Client, status_intent
from dask_operator.controller.runtime.kinds import kind_of

Obj = dict[str, Any]

# Server-owned metadata an intent never carries (uid may be pinned on purpose and is kept).
_SERVER_METADATA = (
    "managedFields",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
)


def apply_intent(obj: Obj) -> Obj:
    """The body to apply: obj without status and without server-owned metadata."""
    intent = {key: value for key, value in obj.items() if key != "status"}
    intent["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _SERVER_METADATA}
    return intent


def intent_hash(intent: Obj) -> str:
    return hashlib.sha256(json.dumps(intent, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class _Applied:
    digest: str
    resource_versions: set[str]


class Applier:
    def __init__(self, client: Client, cache: Cache, max_entries: int = 100_000) -> None:
        self.client = client
        self.cache = cache
        self.max_entries = max_entries
        self._applied: OrderedDict[tuple[str, ...], _Applied] = OrderedDict()
        self._lock = threading.Lock()

    def apply(self, obj: Obj, field_manager: str, force: bool = True) -> Obj | None:
        """Apply obj's intent as field_manager; None when skipped (nothing could change)."""
        return self._apply(apply_intent(obj), field_manager, force, status=False)

    def apply_status(self, obj: Obj, field_manager: str, force: bool = True) -> Obj | None:
        """Apply obj's status to /status as field_manager; None when skipped."""
        return self._apply(status_intent(obj), field_manager, force, status=True)

    def _apply(self, intent: Obj, field_manager: str, force: bool, status: bool) -> Obj | None:
        kind = kind_of(intent)
        meta = intent["metadata"]
        namespace = meta.get("namespace")
        key = (
            kind.api_version,
            kind.kind,
            namespace or "",
            meta["name"],
            field_manager,
            "status" if status else "",
        )
        digest = intent_hash(intent)
        live_rv = self.cache.resource_version(kind, namespace, meta["name"])
        with self._lock:
            entry = self._applied.get(key)
            if (
                entry is not None
                and live_rv is not None
                and entry.digest == digest
                and live_rv in entry.resource_versions
            ):
                self._applied.move_to_end(key)
                return None
        if status:
            result = self.client.apply_status(intent, field_manager, force)
        else:
            result = self.client.apply(intent, field_manager, force)
        new_rv = str(result["metadata"].get("resourceVersion", ""))
        with self._lock:
            # the intent holds for the RV it was computed against (a lagging cache) and for the RV it produced
            self._applied[key] = _Applied(digest, {rv for rv in (live_rv, new_rv) if rv})
            self._applied.move_to_end(key)
            while len(self._applied) > self.max_entries:
                self._applied.popitem(last=False)
        return result
