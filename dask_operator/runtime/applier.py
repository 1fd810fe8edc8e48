"""Server-side apply that skips writes which cannot change anything (Cluster API's SSA cache, in Python).

Invariant: an apply is skipped only when the same field manager already applied an identical intent (same
hash) and the live object cannot have moved away from it since: either the cache holds exactly a
resourceVersion at which the intent was seen to hold (the one its apply produced, or one a later write of
ours produced whose answer still showed every field of the intent), or, for a custom resource, its
generation is the one the intent last held at (every spec change bumps it; status writes do not) and its
metadata still carries the intent's labels, annotations and owners. Any other change to the live object or
to the intent forces a real apply, so a converged controller issues zero writes and a drifted one is repaired.
What is remembered per object is small (a 16-byte digest, a few resourceVersions as numbers, strings shared
with the cache), since it is kept for every child of every cluster.
Held by test/integration/test_runtime_client.py, test/unit/test_runtime_applier.py,
test/unit/test_runtime_handlers.py.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from dask_operator.runtime.cache import Cache
from dask_operator.runtime.client import Client, status_intent
from dask_operator.runtime.kinds import Kind, kind_of
from dask_operator.runtime.objects import Obj

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


def intent_hash(intent: Obj) -> bytes:
    """A 16-byte digest of the intent (the same for equal intents whatever their keys' order)."""
    data = json.dumps(intent, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.blake2b(data, digest_size=16).digest()


# Built-in API groups: their generation need not move with every spec change (it does for every custom resource).
_BUILTIN_GROUP_SUFFIX = ".k8s.io"
_EXTENSION_GROUP_SUFFIX = ".x-k8s.io"  # CRDs of Kubernetes SIGs (Kueue, Cluster API)
# How many objects' recent intents are kept whole, so a write of ours moments later can be checked against them.
RECENT_INTENTS = 256
# resourceVersions remembered per intent (the newest matter: the cache only moves forward).
MAX_RESOURCE_VERSIONS = 8


def generation_tracks_spec(kind: Kind) -> bool:
    """Custom resources: metadata.generation moves with every change outside metadata and status."""
    group = kind.group
    if not group or "." not in group:
        return False
    return not group.endswith(_BUILTIN_GROUP_SUFFIX) or group.endswith(_EXTENSION_GROUP_SUFFIX)


def holds(live: Any, intent: Any) -> bool:
    """Every field the intent sets has the intent's value in `live` (maps are compared key by key, so a live
    map may hold more keys; lists and scalars are compared whole)."""
    if isinstance(intent, dict):
        return isinstance(live, dict) and all(k in live and holds(live[k], v) for k, v in intent.items())
    return bool(live == intent)


def _owned_metadata(intent: Obj) -> Obj:
    meta = intent.get("metadata") or {}
    return {k: meta[k] for k in ("labels", "annotations", "ownerReferences", "finalizers") if k in meta}


ResourceVersion = int | str  # a number when it is one (etcd's revisions are): smaller than its string


def _resource_version(value: Any) -> ResourceVersion:
    text = str(value if value is not None else "")
    return int(text) if text.isascii() and text.isdigit() else sys.intern(text)


class _Applied:
    """The last intent one field manager applied to one object, and the evidence that it still holds."""

    __slots__ = ("digest", "generation", "metadata", "resource_versions", "uid")

    def __init__(
        self,
        digest: bytes,
        resource_versions: tuple[ResourceVersion, ...],
        generation: int | None = None,  # custom resources: the generation at which the intent last held
        metadata: Obj | None = None,  # with it: the intent's labels, annotations, owners and finalizers
        uid: str = "",
    ) -> None:
        self.digest = digest
        self.resource_versions = resource_versions
        self.generation = generation
        self.metadata = metadata
        self.uid = sys.intern(uid)  # the cache's copy of it, when it holds the object

    def held_at(self, resource_version: ResourceVersion) -> None:
        """The intent holds at `resource_version` too (the newest MAX_RESOURCE_VERSIONS are kept)."""
        if resource_version not in self.resource_versions:
            kept = self.resource_versions[-(MAX_RESOURCE_VERSIONS - 1) :]
            self.resource_versions = (*kept, resource_version)


class Applier:
    def __init__(self, client: Client, cache: Cache, max_entries: int = 100_000) -> None:
        self.client = client
        self.cache = cache
        self.max_entries = max_entries
        # least recently used first (a key used again is moved to the end)
        self._applied: dict[tuple[str, ...], _Applied] = {}
        self._recent: OrderedDict[tuple[str, ...], dict[tuple[str, ...], Obj]] = OrderedDict()
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
        # interned: the strings are the cache's own copies when it holds the object
        target = (kind.api_version, kind.kind, sys.intern(namespace or ""), sys.intern(meta["name"]))
        key = (*target, sys.intern(field_manager), "status" if status else "")
        digest = intent_hash(intent)
        live = self.cache.metadata(kind, namespace, meta["name"])
        live_rv = None if live is None else live.get("resourceVersion")
        with self._lock:
            entry = self._applied.get(key)
            if (
                entry is not None
                and entry.digest == digest
                and live is not None
                and _still_holds(entry, live)
            ):
                self._applied[key] = self._applied.pop(key)  # the most recently used
                return None
        if status:
            result = self.client.apply_status(intent, field_manager, force)
        else:
            result = self.client.apply(intent, field_manager, force)
        answer = result["metadata"]
        new_rv = _resource_version(answer.get("resourceVersion"))
        tracked = not status and generation_tracks_spec(kind) and answer.get("generation") is not None
        # the intent holds for the RV it was computed against (a lagging cache) and for the RV it produced
        held_at = tuple(dict.fromkeys(_resource_version(rv) for rv in (live_rv, new_rv) if rv))
        with self._lock:
            self._applied.pop(key, None)  # a new entry goes last: the most recently used
            self._applied[key] = _Applied(
                digest,
                held_at,
                generation=int(answer["generation"]) if tracked else None,
                metadata=_owned_metadata(intent) if tracked else None,
                uid=str(answer.get("uid", "")),
            )
            while len(self._applied) > self.max_entries:
                del self._applied[next(iter(self._applied))]
            self._carry_over(target, key, result, new_rv)
            if not status:
                recent = self._recent.setdefault(target, {})
                recent[key] = intent
                self._recent.move_to_end(target)
                while len(self._recent) > RECENT_INTENTS:
                    self._recent.popitem(last=False)
        return result

    def _carry_over(
        self, target: tuple[str, ...], written: tuple[str, ...], answer: Obj, new_rv: ResourceVersion
    ) -> None:
        """Under the lock: our write to `target` answered with the object at `new_rv`; every other intent of ours
        on it that this answer still shows in full holds at `new_rv` too (so our own writes in a row, such as a
        group and then its replicas, or a status, cost no extra apply)."""
        for other, intent in (self._recent.get(target) or {}).items():
            entry = self._applied.get(other)
            if other == written or entry is None or not holds(answer, intent):
                continue
            entry.held_at(new_rv)
            if entry.generation is not None:
                entry.generation = int(answer["metadata"].get("generation") or 0)


def _still_holds(entry: _Applied, live: Mapping[str, Any]) -> bool:
    """The live object (its cached metadata) cannot have moved away from the entry's intent."""
    if _resource_version(live.get("resourceVersion")) in entry.resource_versions:
        return True
    return (
        entry.generation is not None
        and live.get("generation") == entry.generation
        and live.get("uid") == entry.uid
        and holds(live, entry.metadata)
    )
