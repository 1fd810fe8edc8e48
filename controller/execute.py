"""The thin layer that carries out plans: pod creates and deletes, status writes, Events.

Invariant: every write here is idempotent under a stale cache: a create of an existing name and a delete
whose UID precondition no longer holds are both "already done", never errors; a status equal to the one
observed is not written; an Event is recorded only if the plan asked for it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

import structlog

from dask_operator.controller.expectations import Expectations
from dask_operator.controller.metadata import EventSpec
from dask_operator.controller.plans import STATUS_FIELD_MANAGER, Obj, PodDeletion
from dask_operator.controller.runtime.applier import Applier
from dask_operator.controller.runtime.client import ApiError, Client
from dask_operator.controller.runtime.kinds import POD

log = structlog.get_logger("dask_operator.controller")


def create_pods(
    client: Client, pods: Iterable[Obj], expectations: Expectations, owner: str, now: float
) -> int:
    created = 0
    for pod in pods:
        name = pod["metadata"]["name"]
        expectations.created(owner, name, now)
        try:
            client.create(pod)
            created += 1
        except ApiError as error:
            if not error.already_exists:
                raise
    return created


def delete_pods(
    client: Client, deletions: Iterable[PodDeletion], expectations: Expectations, owner: str, now: float
) -> int:
    deleted = 0
    for d in deletions:
        expectations.deleted(owner, d.uid, now)
        try:
            if client.delete(POD, d.namespace, d.name, uid=d.uid):
                deleted += 1
                log.info("deleted pod", pod=d.name, why=d.reason)
        except ApiError as error:
            if not error.conflict:  # 409: the UID precondition failed, that pod is already gone
                raise
    return deleted


class StatusWriter:
    """Writes status through the status field manager and remembers what it wrote.

    The cache may still show the previous status for a moment after a write; `observed()` then returns the
    written one, so a second reconcile neither rewrites it nor repeats the Events of the same transition.
    """

    def __init__(self, applier: Applier) -> None:
        self.applier = applier
        # namespace/name -> (uid, resourceVersion before the write, status)
        self._written: dict[str, tuple[str, str, Obj]] = {}
        self._lock = threading.Lock()

    def observed(self, obj: Mapping[str, Any]) -> Obj:
        meta = obj["metadata"]
        with self._lock:
            entry = self._written.get(f"{meta['namespace']}/{meta['name']}")
        if (
            entry is not None
            and entry[0] == meta.get("uid")
            and _older(meta.get("resourceVersion"), entry[1])
        ):
            return entry[2]
        return dict(obj.get("status") or {})

    def write(self, obj: Mapping[str, Any], status: Obj) -> bool:
        if self.observed(obj) == status:
            return False
        meta = obj["metadata"]
        written = self.applier.apply_status(
            {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "status": status,
            },
            STATUS_FIELD_MANAGER,
        )
        with self._lock:
            self._written[f"{meta['namespace']}/{meta['name']}"] = (
                meta["uid"],
                str((written or obj)["metadata"].get("resourceVersion")),
                status,
            )
        return True

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._written.pop(f"{namespace}/{name}", None)


def _older(cached: str | None, written: str) -> bool:
    """Whether the cached object predates our status write. resourceVersions are etcd revisions; compared
    as numbers only to recognise a cache that has not caught up yet (anything unparsable: not older)."""
    try:
        return int(cached or "") < int(written)
    except ValueError:
        return False


def record_events(recorder: Any, obj: Mapping[str, Any], events: Iterable[EventSpec], enabled: bool) -> None:
    for event in events:
        log.info("event", type=event.type, reason=event.reason, message=event.message)
        if enabled:
            recorder.event(dict(obj), event.type, event.reason, event.message)
