"""Event handlers: turn an informer notification into the reconcile Requests it concerns.

Invariant: handlers only filter (predicates) and enqueue keys, never block (an update a predicate cannot judge
yet, NotOwnStatusEcho's echo that overtook its write's reply, comes back through `redeliver` instead of being
waited for); an update enqueues the requests
of both the old and the new object (so a removed owner is still reconciled); real changes enqueue at normal
priority, the initial list and resync/relist no-ops at low priority.
Held by test/unit/test_runtime_controller.py, test/unit/test_runtime_handlers.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from dask_operator.runtime.kinds import Kind
from dask_operator.runtime.objects import Obj
from dask_operator.runtime.predicate import CreateEvent, DeleteEvent, Predicate, UpdateEvent
from dask_operator.runtime.reconcile import Request
from dask_operator.runtime.workqueue import LOW_PRIORITY

RequestMapper = Callable[[Obj], Iterable[Request]]


class Enqueuer(Protocol):
    def add(self, key: Request, priority: int = 0) -> None: ...


def request_for_object(obj: Obj) -> Iterable[Request]:
    """The object itself (c-r's EnqueueRequestForObject)."""
    meta = obj["metadata"]
    return (Request(meta.get("namespace") or "", meta["name"]),)


def requests_for_owner(owner: Kind, only_controller: bool = True) -> RequestMapper:
    """The owner(s) of kind `owner` named in ownerReferences (group and kind match; the version is ignored).

    The request's namespace is the child's, or empty when the owner kind is cluster-scoped.
    """

    def mapper(obj: Obj) -> Iterable[Request]:
        meta = obj["metadata"]
        namespace = (meta.get("namespace") or "") if owner.namespaced else ""
        found = []
        for ref in meta.get("ownerReferences") or ():
            if only_controller and not ref.get("controller"):
                continue
            group = ref.get("apiVersion", "").rpartition("/")[0]
            if ref.get("kind") == owner.kind and group == owner.group:
                found.append(Request(namespace, ref["name"]))
        return found

    return mapper


class EnqueueHandler:
    """The informer-facing handler of one watch of one controller."""

    def __init__(self, queue: Enqueuer, mapper: RequestMapper, predicates: Sequence[Predicate] = ()) -> None:
        self.queue = queue
        self.mapper = mapper
        self.predicates = tuple(predicates)

    def on_add(self, obj: Obj, is_in_initial_list: bool) -> None:
        event = CreateEvent(obj, is_in_initial_list)
        if all(p.create(event) for p in self.predicates):
            self._enqueue(self.mapper(obj), LOW_PRIORITY if is_in_initial_list else 0)

    def on_update(self, old: Obj, new: Obj) -> None:
        event = UpdateEvent(old, new, lambda: self.on_update(old, new))
        if all(p.update(event) for p in self.predicates):
            same = old["metadata"].get("resourceVersion") == new["metadata"].get("resourceVersion")
            requests = dict.fromkeys([*self.mapper(new), *self.mapper(old)])
            self._enqueue(requests, LOW_PRIORITY if same else 0)

    def on_delete(self, obj: Obj, state_unknown: bool) -> None:
        event = DeleteEvent(obj, state_unknown)
        if all(p.delete(event) for p in self.predicates):
            self._enqueue(self.mapper(obj), 0)

    def _enqueue(self, requests: Iterable[Request], priority: int) -> None:
        for request in requests:
            self.queue.add(request, priority)
