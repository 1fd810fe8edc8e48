"""What the cache does to an object between the API server and the store (controller-runtime's cache
transforms), so a fleet of thousands of clusters fits in a small process.

Invariant: `decode_for_cache(json)` equals `json.loads(json)` minus every ObjectMeta's `managedFields` (a
dict holding both `resourceVersion` and `managedFields`), with every dict key and every string value of at
most `INTERNED_MAX` characters interned: objects parsed apart share one copy of "metadata", "Running" or
an owner's UID. Equal parts of objects (an ownerReferences list, labels, a pod condition, a Service port,
`{}`) parsed close together are one object too (`SharedParts`, a bounded table of the parts added last):
the cache's objects are read-only, every read of the cache gets a copy (Cache.copy_on_read).
An object (a dict with `metadata`), an ObjectMeta and a dict holding `managedFields` are never shared:
transforms, and the client's list (it sets each item's kind), change them.
Built as it is parsed, so a LIST of thousands never exists in memory with its managedFields
(a process's RSS keeps its peak). `for_cache(obj)` then drops kubectl's last-applied-configuration
annotation (children never inherit kubectl's bookkeeping: contract/children.inheritable_annotations) and any
managedFields left. No planner reads either. Interned strings are freed with the last object holding them
(runtime-interned strings are mortal in CPython), so the shared set never outgrows the cache.
Held by test/unit/test_runtime_transform.py.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from dask_operator.runtime.objects import Obj

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# Longer strings (messages, certificates, scripts) are rarely shared between objects.
INTERNED_MAX = 128

_intern = sys.intern


# How many distinct shareable parts are remembered (each costs ~200 bytes; older ones are forgotten first).
SHARED_PARTS = 1024
_SHARED = object()  # in a part's key: the next item is the id() of a shared part


class SharedParts:
    """The JSON object hook of the cache's decoder: strings interned, and equal parts one object.

    A part is shareable when every value in it is a short string, another scalar or a shared part (the table
    never keeps a long string alive). Its key lists its items: a string or null as it is, a number or boolean
    after its type (1, 1.0 and true are equal in Python), a nested part after `_SHARED` by identity (alive
    while the table holds their parent, so an id is never reused under a key); read from the start, a key
    gives back its part, so unequal parts never share one. The table keeps the `size` parts added last.
    """

    def __init__(self, size: int = SHARED_PARTS) -> None:
        self.size = size
        self._parts: dict[tuple[Any, ...], Any] = {}  # the oldest first
        self._ids: set[int] = set()  # id() of every part in the table
        self._lock = threading.Lock()  # informers decode on threads of their own

    def compact_pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        """json's object_pairs_hook: one JSON object as a dict of interned strings (shared when it can be),
        an ObjectMeta without managedFields."""
        intern, ids, shared = _intern, self._ids, _SHARED
        obj: dict[str, Any] = {}
        key: list[Any] | None = []
        for name, value in pairs:
            name = intern(name)
            kind = type(value)
            if kind is str:
                if len(value) > INTERNED_MAX:
                    key = None  # a long string (a message, a certificate, a script): rarely equal, kept short
                else:
                    value = intern(value)
                    if key is not None:
                        key.append(name)
                        key.append(value)
            elif kind is list or kind is dict:
                if kind is list:
                    value = self._share_list(value)
                if key is not None and id(value) in ids:
                    key += (name, shared, id(value))
                else:
                    key = None  # a part not shared: neither is this one
            elif key is not None:
                key += (name, kind, value)  # typed: 1, 1.0 and true are equal in Python
            obj[name] = value
        if "managedFields" in obj and "resourceVersion" in obj:
            del obj["managedFields"]
            return obj
        if (
            key is None
            or "resourceVersion" in obj
            or "creationTimestamp" in obj
            or "managedFields" in obj
            or "metadata" in obj
        ):
            return obj
        return self._share(tuple(key), obj)  # type: ignore[no-any-return]

    def _share_list(self, items: list[Any]) -> list[Any]:
        """A JSON array (its short strings interned in place), shared when it can be."""
        key: list[Any] = [list]
        for index, item in enumerate(items):
            kind = type(item)
            if kind is str:
                if len(item) > INTERNED_MAX:
                    return items
                items[index] = item = _intern(item)
                key.append(item)
            elif kind is list or kind is dict:
                if id(item) not in self._ids:
                    return items
                key += (_SHARED, id(item))
            else:
                key += (kind, item)
        return self._share(tuple(key), items)  # type: ignore[no-any-return]

    def _share(self, key: tuple[Any, ...], part: Any) -> Any:
        found = self._parts.get(key)  # without the lock: a dict read is atomic
        if found is not None:
            return found
        with self._lock:
            found = self._parts.setdefault(key, part)
            if found is part:
                self._ids.add(id(part))
                while len(self._parts) > self.size:  # the oldest goes first
                    self._ids.discard(id(self._parts.pop(next(iter(self._parts)))))
            return found

    def __len__(self) -> int:
        return len(self._parts)


_shared_parts = SharedParts()
compact_pairs = _shared_parts.compact_pairs


def decode_for_cache(data: bytes | str) -> Any:
    """Parse a list page or a watch event for the cache."""
    return json.loads(data, object_pairs_hook=compact_pairs)


def for_cache(obj: Obj) -> Obj:
    """`obj` without what no reader of the cache uses (changed in place and returned)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        annotations = meta.get("annotations")
        if isinstance(annotations, dict) and LAST_APPLIED in annotations:
            meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return obj
