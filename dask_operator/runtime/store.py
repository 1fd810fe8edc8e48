"""A thread-safe store of plain-dict Kubernetes objects keyed by namespace/name, with indexes.

Invariant: every index is updated under the same lock as the store, so an index lookup always agrees with
a brute-force filter over the store at the same instant. Stored dicts are shared: never mutate them. An index
value held by one object (an owner's UID, a cluster's label) costs a string, not a set.
Held by test/unit/test_runtime_store.py.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dask_operator.runtime.objects import Obj

IndexFunc = Callable[[Obj], Iterable[str]]

NAMESPACE_INDEX = "namespace"
OWNER_INDEX = "owner"  # controller owner's UID
LABEL_INDEX_PREFIX = "label:"


def object_key(obj: Mapping[str, Any]) -> str:
    """namespace/name, or name for cluster-scoped objects (client-go's MetaNamespaceKeyFunc)."""
    meta = obj["metadata"]
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


def index_by_namespace(obj: Obj) -> Iterable[str]:
    namespace = obj["metadata"].get("namespace")
    return (namespace,) if namespace else ()


def index_by_controller_owner(obj: Obj) -> Iterable[str]:
    for ref in obj["metadata"].get("ownerReferences") or ():
        if ref.get("controller"):
            return (ref["uid"],)
    return ()


def index_by_label(label: str) -> IndexFunc:
    def index(obj: Obj) -> Iterable[str]:
        value = (obj["metadata"].get("labels") or {}).get(label)
        return (value,) if value is not None else ()

    return index


def strip_managed_fields(obj: Obj) -> Obj:
    """The cache keeps no managedFields: they are most of an object's bytes and nothing reads them."""
    meta = obj.get("metadata")
    if meta is not None and "managedFields" in meta:
        del meta["managedFields"]
    return obj


class Store:
    def __init__(self, indexers: Mapping[str, IndexFunc] | None = None) -> None:
        self._lock = threading.RLock()
        self._items: dict[str, Obj] = {}
        self._indexers: dict[str, IndexFunc] = dict(indexers or {})
        # per index, value -> the key holding it (a str: most values, such as an owner's UID, have one) or keys
        self._indices: dict[str, dict[str, str | set[str]]] = {name: {} for name in self._indexers}

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def add_indexer(self, name: str, func: IndexFunc) -> None:
        with self._lock:
            if name in self._indexers:
                return
            self._indexers[name] = func
            self._indices[name] = {}
            for key, obj in self._items.items():
                self._index_one(name, func, key, obj)

    def has_indexer(self, name: str) -> bool:
        with self._lock:
            return name in self._indexers

    def upsert(self, obj: Obj) -> Obj | None:
        """Insert or replace by key; returns the previous object."""
        key = object_key(obj)
        with self._lock:
            old = self._items.get(key)
            if old is not None:
                self._unindex(key, old)
            self._items[key] = obj
            self._index(key, obj)
            return old

    def delete(self, key: str) -> Obj | None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._unindex(key, old)
            return old

    def replace(self, objs: Iterable[Obj]) -> dict[str, Obj]:
        """Swap the whole content; returns the previous content by key."""
        with self._lock:
            old = self._items
            self._items = {object_key(obj): obj for obj in objs}
            self._indices = {name: {} for name in self._indexers}
            for key, obj in self._items.items():
                self._index(key, obj)
            return old

    def get(self, key: str) -> Obj | None:
        with self._lock:
            return self._items.get(key)

    def list(self) -> builtins.list[Obj]:
        with self._lock:
            return list(self._items.values())

    def keys(self) -> builtins.list[str]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def by_index(self, index: str, value: str, namespace: str | None = None) -> builtins.list[Obj]:
        """Objects whose index function yields value, optionally only in one namespace."""
        with self._lock:
            keys = _keys(self._indices[index].get(value))
            if namespace is None:
                return [self._items[key] for key in keys]
            prefix = f"{namespace}/"
            return [self._items[key] for key in keys if key.startswith(prefix)]

    def _index(self, key: str, obj: Obj) -> None:
        for name, func in self._indexers.items():
            self._index_one(name, func, key, obj)

    def _index_one(self, name: str, func: IndexFunc, key: str, obj: Obj) -> None:
        index = self._indices[name]
        for value in func(obj):
            keys = index.get(value)
            if keys is None:
                index[value] = key
            elif isinstance(keys, str):
                if keys != key:
                    index[value] = {keys, key}
            else:
                keys.add(key)

    def _unindex(self, key: str, obj: Obj) -> None:
        for name, func in self._indexers.items():
            index = self._indices[name]
            for value in func(obj):
                keys = index.get(value)
                if keys is None:
                    continue
                if isinstance(keys, str):
                    if keys == key:
                        del index[value]
                    continue
                keys.discard(key)
                if len(keys) == 1:
                    index[value] = next(iter(keys))
                elif not keys:
                    del index[value]


def _keys(keys: str | set[str] | None) -> Iterable[str]:
    """An index entry's keys: one key is kept as the string itself (a set would cost ~200 bytes more)."""
    if keys is None:
        return ()
    return (keys,) if isinstance(keys, str) else keys
