"""What the operator may use of Kueue, found once at start-up, and the cache reads that give a planner its
`Queueing`.

Invariant: informers for Kueue's kinds exist only when Kueue's API is served (and, for its cluster-scoped
ResourceFlavors and WorkloadPriorityClasses, only when the operator may list them), so an operator on a
cluster without Kueue starts and runs exactly as before; a labelled object then gets a KueueUnavailable hold
instead of running around the quota. A transient answer (429, 5xx, a broken connection) while detecting is
asked again, never taken for "Kueue is absent". Held by test/unit/test_kueue_access.py, test/e2e/test_kueue.py
and the e2e tests without Kueue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from dask_operator.controller.contract.kueue import (
    KueueAccess,
    Queueing,
    flavors_by_name,
    queue_name,
    queueing,
    workload_name,
)
from dask_operator.controller.contract.names import KUEUE_GROUP, KUEUE_VERSION
from dask_operator.controller.contract.objects import Obj
from dask_operator.controller.kinds import RESOURCE_FLAVOR, WORKLOAD, WORKLOAD_PRIORITY_CLASS
from dask_operator.runtime.client import ApiError, Client
from dask_operator.runtime.kinds import Kind

log = structlog.get_logger("dask_operator.controller.kueue")
T = TypeVar("T")

SELF_SUBJECT_ACCESS_REVIEW = Kind(
    "authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", namespaced=False
)


# Answers that say nothing about Kueue: the API server (or the path to it) is busy or failing right now.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.5, 30.0


def transient(error: Exception) -> bool:
    """An error worth asking again: a throttled or failing API server, or a broken connection."""
    if isinstance(error, ApiError):
        return error.status in TRANSIENT_STATUSES
    return isinstance(error, OSError | TimeoutError)


def until_answered(ask: Callable[[], T], what: str, sleep: Callable[[float], None] = time.sleep) -> T:
    """`ask()` again, with a doubling pause (capped), for as long as it fails transiently: a 429 at start-up
    must not be taken for "Kueue is absent" (which would hold every labelled object until a restart)."""
    delay = RETRY_FIRST_SECONDS
    while True:
        try:
            return ask()
        except Exception as error:
            if not transient(error):
                raise
            log.warning("transient error; asking again", what=what, error=str(error), retry_in=delay)
            sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)


def _may_list(client: Client, resource: str) -> bool:
    review = {
        "apiVersion": SELF_SUBJECT_ACCESS_REVIEW.api_version,
        "kind": SELF_SUBJECT_ACCESS_REVIEW.kind,
        "metadata": {},
        "spec": {"resourceAttributes": {"group": KUEUE_GROUP, "resource": resource, "verb": "list"}},
    }
    try:
        answer = until_answered(lambda: client.create(review), f"access review of {resource}")
    except ApiError as error:
        log.info("cannot review own access; assuming no access", resource=resource, error=str(error))
        return False
    return bool((answer.get("status") or {}).get("allowed"))


def detect(client: Client) -> KueueAccess:
    """Ask discovery whether Kueue's API is served, and the API server whether the operator may list Kueue's
    cluster-scoped kinds (a single-namespace install may not)."""
    try:
        served = until_answered(
            lambda: client.request("GET", f"/apis/{KUEUE_GROUP}/{KUEUE_VERSION}", retry=False),
            "Kueue discovery",
        )
    except ApiError as error:
        if not error.not_found:
            log.warning("Kueue discovery failed; running without Kueue", error=str(error))
        return KueueAccess()
    names = {r.get("name") for r in (served or {}).get("resources") or []}
    if WORKLOAD.plural not in names:
        return KueueAccess()
    access = KueueAccess(
        workloads=True,
        flavors=RESOURCE_FLAVOR.plural in names and _may_list(client, RESOURCE_FLAVOR.plural),
        priority_classes=WORKLOAD_PRIORITY_CLASS.plural in names
        and _may_list(client, WORKLOAD_PRIORITY_CLASS.plural),
    )
    log.info("Kueue found", flavors=access.flavors, priority_classes=access.priority_classes)
    return access


def register(cache: Any, access: KueueAccess) -> None:
    """Informers for the Kueue kinds the operator reads (before the cache starts)."""
    if access.workloads:
        cache.informer(WORKLOAD)
    if access.flavors:
        cache.informer(RESOURCE_FLAVOR)
    if access.priority_classes:
        cache.informer(WORKLOAD_PRIORITY_CLASS)


def queueing_of(cache: Any, access: KueueAccess, owner: Obj) -> Queueing | None:
    """The owner's `Queueing` from the cache (None when it carries no queue label)."""
    if queue_name(owner) is None:
        return None
    if not access.workloads:
        return queueing(owner, None, {}, kueue_available=False)
    meta = owner["metadata"]
    workload = cache.get(WORKLOAD, meta["namespace"], workload_name(owner))
    if workload is not None and not any(
        r.get("controller") and r.get("uid") == meta["uid"]
        for r in workload["metadata"].get("ownerReferences") or []
    ):
        workload = None  # left by a deleted namesake; the garbage collector removes it
    flavors = flavors_by_name(cache.list(RESOURCE_FLAVOR)) if access.flavors else {}
    return queueing(owner, workload, flavors)


def priority_classes(cache: Any, access: KueueAccess) -> dict[str, Obj]:
    if not access.priority_classes:
        return {}
    return {p["metadata"]["name"]: p for p in cache.list(WORKLOAD_PRIORITY_CLASS)}
