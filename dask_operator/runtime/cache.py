"""The shared cache: one informer per kind for the whole process, read through copies of plain dicts.

Invariant: each kind is watched at most once per cache (namespace-scoped or cluster-wide as configured,
and narrowed by that kind's label selector if one was given, so the store holds only matching objects: one
that loses the label leaves it as a delete); reads block until that kind's informer has synced, and return
copies, so a reconciler can neither see a half-filled store nor corrupt the shared one.
Held by test/integration/test_runtime_client.py, test/integration/test_runtime_cache_selector.py,
test/unit/test_runtime_store.py.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dask_operator.runtime.client import Client
from dask_operator.runtime.informer import Informer
from dask_operator.runtime.kinds import Kind
from dask_operator.runtime.objects import Obj
from dask_operator.runtime.reflector import DEFAULT_MIN_WATCH_TIMEOUT, DEFAULT_READ_TIMEOUT_MARGIN
from dask_operator.runtime.store import (
    LABEL_INDEX_PREFIX,
    NAMESPACE_INDEX,
    OWNER_INDEX,
    IndexFunc,
    index_by_controller_owner,
    index_by_label,
    index_by_namespace,
)

DEFAULT_SYNC_TIMEOUT = 120.0


class CacheNotSynced(Exception):
    """A kind's informer did not sync in time (missing CRD, missing RBAC, API server down)."""


def clone(value: Any) -> Any:
    """A deep copy of a JSON tree (dicts, lists, scalars): several times faster than copy.deepcopy."""
    if isinstance(value, dict):
        return {key: clone(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clone(item) for item in value]
    return value


class Cache:
    def __init__(
        self,
        client: Client,
        namespace: str | None = None,
        *,
        indexed_labels: Iterable[str] = (),
        label_selectors: Mapping[Kind, str] | None = None,
        sync_timeout: float = DEFAULT_SYNC_TIMEOUT,
        min_watch_timeout: int = DEFAULT_MIN_WATCH_TIMEOUT,
        read_timeout_margin: float = DEFAULT_READ_TIMEOUT_MARGIN,
        copy_on_read: bool = True,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.label_selectors = dict(label_selectors or {})  # kind -> labelSelector its informer watches with
        self.sync_timeout = sync_timeout
        self.min_watch_timeout = min_watch_timeout
        self.read_timeout_margin = read_timeout_margin
        self.copy_on_read = copy_on_read
        self._indexers: dict[str, IndexFunc] = {
            NAMESPACE_INDEX: index_by_namespace,
            OWNER_INDEX: index_by_controller_owner,
        }
        for label in indexed_labels:
            self._indexers[LABEL_INDEX_PREFIX + label] = index_by_label(label)
        self._informers: dict[Kind, Informer] = {}
        self._lock = threading.Lock()
        self._started = False
        self._stop = threading.Event()

    # -- informers --------------------------------------------------------------------------------------

    def informer(self, kind: Kind) -> Informer:
        """The kind's shared informer, created on first use (and started if the cache runs)."""
        with self._lock:
            informer = self._informers.get(kind)
            if informer is None:
                informer = Informer(
                    self.client,
                    kind,
                    namespace=self.namespace,
                    label_selector=self.label_selectors.get(kind),
                    indexers=self._indexers,
                    min_watch_timeout=self.min_watch_timeout,
                    read_timeout_margin=self.read_timeout_margin,
                )
                self._informers[kind] = informer
                if self._started:
                    informer.start()
            return informer

    def informers(self) -> Mapping[Kind, Informer]:
        with self._lock:
            return dict(self._informers)

    def start(self) -> None:
        with self._lock:
            self._started = True
            informers = list(self._informers.values())
        for informer in informers:
            informer.start()

    def stop(self) -> None:
        self._stop.set()
        for informer in self.informers().values():
            informer.stop()

    def has_synced(self) -> bool:
        return all(informer.has_synced() for informer in self.informers().values())

    def wait_for_sync(self, timeout: float | None = None, stop: threading.Event | None = None) -> bool:
        """True once every informer created so far has synced; False on timeout or stop."""
        return all(informer.wait_for_sync(timeout, stop) for informer in self.informers().values())

    def add_index(self, kind: Kind, name: str, func: IndexFunc) -> None:
        """Another index on one kind's store (see by_index)."""
        self.informer(kind).store.add_indexer(name, func)

    def add_transform(self, kind: Kind, transform: Callable[[Obj], Obj]) -> None:
        """Store one kind's objects as `transform` leaves them (c-r's per-object cache transform), e.g.
        without fields no reader uses; before the cache starts."""
        self.informer(kind).add_transform(transform)

    def add_label_index(self, kind: Kind, label: str) -> None:
        """Index one kind's store by a label's value, so by_label(kind, label, ...) needs no scan."""
        self.add_index(kind, LABEL_INDEX_PREFIX + label, index_by_label(label))

    def _synced_store(self, kind: Kind) -> Any:
        informer = self.informer(kind)
        if not informer.started:
            raise CacheNotSynced(f"the cache is not started; {kind} cannot be read yet")
        if not informer.has_synced_store() and not informer.wait_for_sync(self.sync_timeout, self._stop):
            raise CacheNotSynced(f"timed out waiting for the {kind} informer to sync")
        return informer.store

    def _out(self, objs: list[Obj]) -> builtins.list[Obj]:
        return [clone(obj) for obj in objs] if self.copy_on_read else objs

    # -- reads ------------------------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        store = self._synced_store(kind)
        obj = store.get(f"{namespace}/{name}" if kind.namespaced and namespace else name)
        if obj is None:
            return None
        return clone(obj) if self.copy_on_read else obj  # type: ignore[no-any-return]

    def resource_version(self, kind: Kind, namespace: str | None, name: str) -> str | None:
        """The cached object's resourceVersion without copying it; None if absent or the cache is not running."""
        meta = self.metadata(kind, namespace, name)
        return None if meta is None else str(meta.get("resourceVersion", ""))

    def metadata(self, kind: Kind, namespace: str | None, name: str) -> Mapping[str, Any] | None:
        """The cached object's metadata, not copied: read it, never change it. None if absent or not running."""
        with self._lock:
            if not self._started:
                return None
        obj = self._synced_store(kind).get(f"{namespace}/{name}" if kind.namespaced and namespace else name)
        return None if obj is None else obj["metadata"]

    def list(
        self, kind: Kind, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Obj]:
        """Objects of kind, optionally in one namespace and matching every label given (equality)."""
        store = self._synced_store(kind)
        objs = store.by_index(NAMESPACE_INDEX, namespace) if namespace and kind.namespaced else store.list()
        if labels:
            objs = [obj for obj in objs if _has_labels(obj, labels)]
        return self._out(objs)

    def by_owner(self, kind: Kind, owner_uid: str) -> builtins.list[Obj]:
        """Objects of kind whose controller ownerReference points at owner_uid."""
        return self._out(self._synced_store(kind).by_index(OWNER_INDEX, owner_uid))

    def by_label(
        self, kind: Kind, label: str, value: str, namespace: str | None = None
    ) -> builtins.list[Obj]:
        store = self._synced_store(kind)
        index = LABEL_INDEX_PREFIX + label
        if store.has_indexer(index):
            return self._out(store.by_index(index, value, namespace))
        return self.list(kind, namespace, {label: value})

    def by_index(
        self, kind: Kind, index: str, value: str, namespace: str | None = None
    ) -> builtins.list[Obj]:
        return self._out(self._synced_store(kind).by_index(index, value, namespace))


def _has_labels(obj: Obj, wanted: Mapping[str, str]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(key) == value for key, value in wanted.items())
