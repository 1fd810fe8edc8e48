"""The one executor: runs any plan's steps in order, writes the status last whether or not a step failed,
and turns every refused write into a status condition and a Warning Event.

Invariant: every step is idempotent under a stale cache (a create of an existing name and a delete whose
UID precondition no longer holds are "already done"); a write the API server refuses (a ResourceQuota,
Pod Security admission, a webhook, RBAC) never hides in a log: the object's status gets a `ReplicaFailure`
condition and `Degraded` with the server's message and what to do, and a Warning Event says the same; the
status is compared with the cached one and written only when it differs. Held by
test/unit/test_executor.py and test/e2e/test_cluster.py::test_resource_quota_refusal_shows_in_status.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from dask_operator.api.v1.types import CONDITION_DEGRADED
from dask_operator.controller import operator_metrics
from dask_operator.controller.conditions import (
    CONDITION_REPLICA_FAILURE,
    Condition,
    EventSpec,
    merge_conditions,
)
from dask_operator.controller.objects import Obj, rfc3339
from dask_operator.controller.plans import (
    STATUS_FIELD_MANAGER,
    Apply,
    Create,
    Delete,
    Emit,
    PatchStatus,
    Plan,
    Retire,
    SetStatus,
    Step,
)
from dask_operator.controller.runtime.applier import Applier
from dask_operator.controller.runtime.client import ApiError, Client
from dask_operator.controller.runtime.kinds import lookup
from dask_operator.controller.scheduler import SchedulerUnreachable

log = structlog.get_logger("dask_operator.controller")

# A refused write is tried again this often (a quota lifted or a webhook fixed converges without a restart).
REFUSED_WRITE_RETRY_SECONDS = 5.0

# Retire -> names of the workers the scheduler retired; raises SchedulerUnreachable.
RetireWorkers = Callable[[Retire], set[str]]


@dataclass(frozen=True)
class Refusal:
    """A write the API server refused: which step, the server's message, and what to do."""

    reason: str  # FailedCreate, FailedDelete, FailedApply
    message: str


@dataclass
class Outcome:
    refusals: list[Refusal] = field(default_factory=list)
    requeue_after: float | None = None
    status_written: bool = False

    def wake_in(self, seconds: float | None) -> None:
        if seconds is not None:
            self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


class Executor:
    def __init__(self, client: Client, applier: Applier, recorder: Any, events_enabled: bool = True) -> None:
        self.client = client
        self.applier = applier
        self.recorder = recorder
        self.events_enabled = events_enabled

    def run(self, obj: Obj, plan: Plan, now: float, retire_workers: RetireWorkers | None = None) -> Outcome:
        """Run `plan` for the reconciled object `obj`; the status step is held back and written last."""
        outcome = Outcome()
        outcome.wake_in(plan.requeue_after)
        if plan.notes:
            log.info("planned", notes=list(plan.notes))
        status: Obj | None = None
        for step in plan.steps:
            if isinstance(step, SetStatus):
                status = step.status
            elif isinstance(step, Emit):
                self.emit(obj, step.event)
            else:
                refusal = self._write(obj, step, retire_workers)
                if refusal is not None:
                    outcome.refusals.append(refusal)
        if outcome.refusals:
            outcome.wake_in(REFUSED_WRITE_RETRY_SECONDS)
            if status is not None:
                status = with_refusals(
                    status, outcome.refusals, obj.get("status") or {}, now, obj["metadata"].get("generation")
                )
        if status is not None:
            outcome.status_written = self.write_status(obj, status)
        for refusal in outcome.refusals:
            self.emit(obj, EventSpec("Warning", refusal.reason, refusal.message))
        return outcome

    # -- steps -----------------------------------------------------------------------------------------

    def _write(self, obj: Obj, step: Step, retire_workers: RetireWorkers | None) -> Refusal | None:
        try:
            if isinstance(step, Apply):
                self.applier.apply(step.obj, step.field_manager)
            elif isinstance(step, Create):
                self.create(step.obj)
            elif isinstance(step, Delete):
                self.delete(step)
            elif isinstance(step, Retire):
                return self.retire(obj, step, retire_workers)
            elif isinstance(step, PatchStatus):
                self.patch_status(step)
        except ApiError as error:
            return refusal_of(step, error)
        return None

    def create(self, obj: Obj) -> None:
        try:
            self.client.create(obj)
            log.info("created", kind=obj["kind"], object=obj["metadata"]["name"])
        except ApiError as error:
            if not error.already_exists:  # a stale cache: it exists, the next reconcile sees it
                raise

    def delete(self, step: Delete) -> None:
        ref = step.ref
        try:
            deleted = self.client.delete(
                lookup(ref.api_version, ref.kind),
                ref.namespace,
                ref.name,
                uid=ref.uid,
                propagation="Foreground" if step.foreground else "Background",
            )
        except ApiError as error:
            if not error.conflict:  # 409: the UID precondition failed, that object is already gone
                raise
            deleted = False
        if deleted:
            log.info("deleted", kind=ref.kind, object=ref.name, why=step.cause.sentence)
            how = step.cause.retirement_metric
            if how is not None:
                operator_metrics.RETIREMENTS.labels(ref.namespace, how).inc()

    def patch_status(self, step: PatchStatus) -> None:
        ref = step.ref
        patch = {**step.patch, "metadata": {"resourceVersion": step.resource_version}}
        try:
            self.client.patch_merge(
                lookup(ref.api_version, ref.kind), ref.namespace, ref.name, patch, subresource="status"
            )
        except ApiError as error:
            if not (error.conflict or error.not_found):  # newer or gone: the next reconcile sees it
                raise
            return
        log.info("status patched", kind=ref.kind, object=ref.name)

    def retire(self, obj: Obj, step: Retire, retire_workers: RetireWorkers | None) -> Refusal | None:
        """Ask the scheduler to retire the workers, then delete the pods all of whose workers it retired.
        A retirement that did not complete (scheduler unreachable, or workers it kept) is reported like a
        refused write, naming the workers, and tried again."""
        namespace = obj["metadata"]["namespace"]
        names = [w.name for w in step.workers]
        if retire_workers is None:
            return Refusal("RetirementFailed", "No scheduler to retire workers through.")
        log.info("retiring workers", workers=names)
        try:
            retired = retire_workers(step)
        except SchedulerUnreachable as error:
            log.warning("retirement failed; will retry", error=str(error))
            operator_metrics.RETIREMENTS.labels(namespace, "failed").inc(len(names))
            return Refusal(
                "RetirementFailed",
                f"Retiring workers {', '.join(names)} failed: {error}. Their pods are kept; the operator "
                f"retries every {int(REFUSED_WRITE_RETRY_SECONDS)} s.",
            )
        for pod in step.pods:
            if all(w.name in retired for w in pod.workers):
                self.delete(pod.delete)
        kept = [n for n in names if n not in retired]
        if kept:
            return Refusal(
                "RetirementIncomplete",
                f"The scheduler kept workers {', '.join(kept)} (their data could not move yet); their pods "
                f"are kept and the retirement is tried again every {int(REFUSED_WRITE_RETRY_SECONDS)} s.",
            )
        return None

    def write_status(self, obj: Obj, status: Obj) -> bool:
        if dict(obj.get("status") or {}) == status:
            return False
        meta = obj["metadata"]
        self.applier.apply_status(
            {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "status": status,
            },
            STATUS_FIELD_MANAGER,
        )
        return True

    def emit(self, obj: Obj, event: EventSpec) -> None:
        log.info("event", type=event.type, reason=event.reason, message=event.message)
        if self.events_enabled:
            self.recorder.event(dict(obj), event.type, event.reason, event.message)


# -- refusals as status --------------------------------------------------------------------------------


def refusal_of(step: Step, error: ApiError) -> Refusal:
    """The condition-worthy sentence for a refused write: what was refused, the server's words, what to do."""
    if isinstance(step, Create):
        reason, verb, target = "FailedCreate", "Creating", _describe(step.obj)
    elif isinstance(step, Delete):
        reason, verb, target = "FailedDelete", "Deleting", f"{step.ref.kind} {step.ref.name}"
    elif isinstance(step, Retire):
        reason, verb, target = "FailedDelete", "Deleting", "retired worker pods"
    elif isinstance(step, PatchStatus):
        reason, verb, target = "FailedApply", "Updating the status of", f"{step.ref.kind} {step.ref.name}"
    else:
        obj = step.obj if isinstance(step, Apply) else {}
        reason, verb, target = "FailedApply", "Applying", _describe(obj)
    server = error.message or str(error)
    return Refusal(reason, f"{verb} {target} was refused by the API server: {server}. {_what_to_do(error)}")


def _describe(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind', 'object')} {obj.get('metadata', {}).get('name', '')}".strip()


def _what_to_do(error: ApiError) -> str:
    if error.status == 403:
        return (
            "Check the namespace's ResourceQuota, Pod Security admission and the operator's RBAC; "
            f"the operator retries every {int(REFUSED_WRITE_RETRY_SECONDS)} s."
        )
    if error.status in (400, 422):
        return "Fix the spec this object is built from (or the admission webhook that rejects it)."
    return f"The operator retries every {int(REFUSED_WRITE_RETRY_SECONDS)} s."


def with_refusals(
    status: Obj, refusals: list[Refusal], previous: Obj, now: float, generation: int | None
) -> Obj:
    """`status` with ReplicaFailure=True and Degraded=True carrying the first refusal (ReplicaSet's way);
    `previous` is the status as cached, whose transition times are kept while the refusal lasts."""
    first = refusals[0]
    more = f" ({len(refusals) - 1} more writes refused)" if len(refusals) > 1 else ""
    wanted = [
        Condition(kind, True, first.reason, first.message + more)
        for kind in (CONDITION_REPLICA_FAILURE, CONDITION_DEGRADED)
    ]
    replaced = merge_conditions(previous.get("conditions"), wanted, rfc3339(now), generation)
    kept = [c for c in status.get("conditions") or [] if c.get("type") not in {c.type for c in wanted}]
    return {**status, "conditions": kept + replaced}
