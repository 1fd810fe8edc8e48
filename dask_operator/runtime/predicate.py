"""Predicates: which watch events may enqueue a reconcile (c-r's predicate package).

Invariant: a predicate only filters; it never changes what is enqueued, and an event passes a watch only if
every predicate of that watch (and every controller-wide filter) lets it through. NotOwnStatusEcho drops an
update only when the new object is exactly what a status write of this controller produced and nothing but
the status differs from the object before it; any other writer's change, to the status too, passes.
Held by test/unit/test_runtime_handlers.py and test/integration/test_runtime_status_echo.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dask_operator.runtime.consistency import OwnStatusWrites
from dask_operator.runtime.objects import Obj


@dataclass(frozen=True)
class CreateEvent:
    obj: Obj
    is_in_initial_list: bool = False


@dataclass(frozen=True)
class UpdateEvent:
    old: Obj
    new: Obj
    # hands the same update to the watch again later (a predicate that cannot judge it yet keeps it)
    redeliver: Callable[[], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class DeleteEvent:
    obj: Obj
    delete_state_unknown: bool = False  # synthesised by a relist; obj is the last known state


class Predicate:
    """Lets everything through; subclasses override the event types they filter."""

    def create(self, event: CreateEvent) -> bool:
        return True

    def update(self, event: UpdateEvent) -> bool:
        return True

    def delete(self, event: DeleteEvent) -> bool:
        return True


class Funcs(Predicate):
    def __init__(
        self,
        create: Callable[[CreateEvent], bool] | None = None,
        update: Callable[[UpdateEvent], bool] | None = None,
        delete: Callable[[DeleteEvent], bool] | None = None,
    ) -> None:
        self._create, self._update, self._delete = create, update, delete

    def create(self, event: CreateEvent) -> bool:
        return self._create(event) if self._create else True

    def update(self, event: UpdateEvent) -> bool:
        return self._update(event) if self._update else True

    def delete(self, event: DeleteEvent) -> bool:
        return self._delete(event) if self._delete else True


def _meta(obj: Obj) -> dict[str, Any]:
    return obj.get("metadata") or {}


class GenerationChanged(Predicate):
    """Updates pass only when metadata.generation changed: spec edits and the start of deletion, not status."""

    def update(self, event: UpdateEvent) -> bool:
        return _meta(event.old).get("generation") != _meta(event.new).get("generation")


class ResourceVersionChanged(Predicate):
    """Drops resync updates (same resourceVersion)."""

    def update(self, event: UpdateEvent) -> bool:
        return _meta(event.old).get("resourceVersion") != _meta(event.new).get("resourceVersion")


class LabelsChanged(Predicate):
    def update(self, event: UpdateEvent) -> bool:
        return _meta(event.old).get("labels") != _meta(event.new).get("labels")


class AnnotationsChanged(Predicate):
    def update(self, event: UpdateEvent) -> bool:
        return _meta(event.old).get("annotations") != _meta(event.new).get("annotations")


class NotOwnStatusEcho(Predicate):
    """Drops the watch's echo of a status write this controller made (the builder puts it on the For watch).

    The echo is the update whose new object has exactly the resourceVersion the write returned (so its
    status is what the write left) and whose old object differs from it in `status` alone (resourceVersion
    and managedFields aside): a reconcile planned that status, so running again on it would plan nothing
    new, provided the planner is a fixed point of its own status (test/unit/test_planner_properties.py).
    A relist's update (its old object may be several versions back) is dropped only if nothing but the status
    moved across all of them; the write, forced, had set every status field it owns. A status-only update
    that arrives while a status write of the same object is still awaiting its reply is held and judged
    again once that write has ended (`event.redeliver`); the handler never waits for the reply.
    """

    def __init__(self, written: OwnStatusWrites) -> None:
        self.written = written

    def update(self, event: UpdateEvent) -> bool:
        meta = _meta(event.new)
        namespace, name, rv = (
            str(meta.get("namespace") or ""),
            str(meta.get("name")),
            meta.get("resourceVersion"),
        )
        if not only_status_differs(event.old, event.new):
            self.written.passed(namespace, name, rv)
            return True
        return not self.written.delivered(namespace, name, rv, event.redeliver)

    def delete(self, event: DeleteEvent) -> bool:
        meta = _meta(event.obj)
        self.written.forget(str(meta.get("namespace") or ""), str(meta.get("name")))
        return True


_VOLATILE_META = frozenset({"resourceVersion", "managedFields"})


def only_status_differs(old: Obj, new: Obj) -> bool:
    """Whether `old` and `new` are equal outside `status`, metadata.resourceVersion and managedFields."""
    if old.keys() - {"status"} != new.keys() - {"status"}:
        return False
    for key, value in new.items():
        if key not in ("status", "metadata") and old[key] != value:
            return False
    before, after = _meta(old), _meta(new)
    return all(before.get(k) == after.get(k) for k in (before.keys() | after.keys()) - _VOLATILE_META)


class And(Predicate):
    def __init__(self, *predicates: Predicate) -> None:
        self.predicates = predicates

    def create(self, event: CreateEvent) -> bool:
        return all(p.create(event) for p in self.predicates)

    def update(self, event: UpdateEvent) -> bool:
        return all(p.update(event) for p in self.predicates)

    def delete(self, event: DeleteEvent) -> bool:
        return all(p.delete(event) for p in self.predicates)


class Or(Predicate):
    def __init__(self, *predicates: Predicate) -> None:
        self.predicates = predicates

    def create(self, event: CreateEvent) -> bool:
        return any(p.create(event) for p in self.predicates)

    def update(self, event: UpdateEvent) -> bool:
        return any(p.update(event) for p in self.predicates)

    def delete(self, event: DeleteEvent) -> bool:
        return any(p.delete(event) for p in self.predicates)


class Not(Predicate):
    def __init__(self, predicate: Predicate) -> None:
        self.predicate = predicate

    def create(self, event: CreateEvent) -> bool:
        return not self.predicate.create(event)

    def update(self, event: UpdateEvent) -> bool:
        return not self.predicate.update(event)

    def delete(self, event: DeleteEvent) -> bool:
        return not self.predicate.delete(event)
