"""The one executor: runs any plan's steps in order, writes the status last whether or not a step failed,
and turns every refused write into a status condition and a Warning Event.

Invariant: steps run in plan order, except that consecutive writes to distinct objects run concurrently
(write_waves); every step is idempotent under a stale cache (a create of an existing name and a delete whose
UID precondition no longer holds are "already done"); a write the API server refuses (a ResourceQuota,
Pod Security admission, a webhook, RBAC) never hides in a log: the object's status gets a `ReplicaFailure`
condition and `Degraded` with the server's message and what to do, and a Warning Event says the same; the
status is compared with the cached one and written only when it differs (and, with a status window, when
status_writes.decide says so: at once if it settled or deserves an Event, else within the window). Held by
test/unit/test_executor.py and test/e2e/test_cluster.py::test_resource_quota_refusal_shows_in_status.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from dask_operator.api.v1.types import CONDITION_DEGRADED
from dask_operator.controller import operator_metrics
from dask_operator.controller.contract.children import relabel_patch
from dask_operator.controller.contract.conditions import (
    CONDITION_REPLICA_FAILURE,
    Condition,
    EventSpec,
    merge_conditions,
)
from dask_operator.controller.contract.objects import Obj, rfc3339
from dask_operator.controller.contract.plans import (
    STATUS_FIELD_MANAGER,
    Apply,
    Create,
    Delete,
    Emit,
    PatchStatus,
    Plan,
    ReleaseFields,
    Retire,
    SetStatus,
    Step,
    earliest,
)
from dask_operator.controller.status_writes import decide
from dask_operator.runtime.applier import Applier
from dask_operator.runtime.client import ApiError, Client
from dask_operator.runtime.kinds import kind_of, lookup

log = structlog.get_logger("dask_operator.controller")

# A refused write is tried again this often (a quota lifted or a webhook fixed converges without a restart).
REFUSED_WRITE_RETRY_SECONDS = 5.0

# At most this many writes of one plan in flight at once (per executor, i.e. per reconciler).
WRITE_CONCURRENCY = 8

# Starts the retirement a Retire step asks for, without waiting for it.
RetireWorkers = Callable[[Retire], None]


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
        self.requeue_after = earliest(self.requeue_after, seconds)


class Executor:
    def __init__(
        self,
        client: Client,
        applier: Applier,
        recorder: Any,
        events_enabled: bool = True,
        status_window: float = 0.0,
    ) -> None:
        self.client = client
        self.applier = applier
        self.recorder = recorder
        self.events_enabled = events_enabled
        # status changes within this many seconds are written as one (status_writes.decide); 0: at once
        self.status_window = status_window
        self._status_pending: dict[str, float] = {}  # object UID -> since when a status change waits
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # for the independent writes of one plan

    def run(self, obj: Obj, plan: Plan, now: float, retire_workers: RetireWorkers | None = None) -> Outcome:
        """Run `plan` for the reconciled object `obj`; the status step is held back and written last."""
        outcome = Outcome()
        outcome.wake_in(plan.requeue_after)
        if plan.notes:
            log.info("planned", notes=list(plan.notes))
        status: Obj | None = None
        for wave in write_waves(plan.steps):
            step = wave[0]
            if isinstance(step, SetStatus):
                status = step.status
            elif isinstance(step, Emit):
                self.emit(obj, step.event)
            else:
                refusals = self._write_wave(obj, wave, retire_workers)
                outcome.refusals += [r for r in refusals if r is not None]
        if outcome.refusals:
            outcome.wake_in(REFUSED_WRITE_RETRY_SECONDS)
            if status is not None:
                status = with_refusals(
                    status, outcome.refusals, obj.get("status") or {}, now, obj["metadata"].get("generation")
                )
        if status is not None:
            emitted = next(plan.of_type(Emit), None) is not None
            outcome.status_written = self.write_status(obj, status, now, outcome, emitted=emitted)
        for refusal in outcome.refusals:
            self.emit(obj, EventSpec("Warning", refusal.reason, refusal.message))
        return outcome

    # -- steps -----------------------------------------------------------------------------------------

    def _write_wave(
        self, obj: Obj, wave: tuple[Step, ...], retire_workers: RetireWorkers | None
    ) -> list[Refusal | None]:
        """One write inline; several (on distinct objects) concurrently, each in a copy of this reconcile's
        context (its deadline, its record of own writes, its log bindings); refusals in plan order."""
        if len(wave) == 1:
            return [self._write(obj, wave[0], retire_workers)]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(WRITE_CONCURRENCY, thread_name_prefix="plan-writes")
            pool = self._pool
        futures = [
            pool.submit(contextvars.copy_context().run, self._write, obj, step, retire_workers)
            for step in wave
        ]
        return [future.result() for future in futures]

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
            elif isinstance(step, ReleaseFields):
                self.release(step)
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
            self.relabel(obj)

    def relabel(self, obj: Obj) -> None:
        """An existing child the cache cannot see lost the label the cache selects by: put it back (only if
        the same owner controls it), so it comes back into view instead of being created again forever."""
        operations = relabel_patch(obj)
        if operations is None:
            return
        meta = obj["metadata"]
        try:
            self.client.patch_json(kind_of(obj), meta["namespace"], meta["name"], operations)
            log.info("relabelled", kind=obj["kind"], object=meta["name"])
        except ApiError as error:  # not ours (another owner) or gone meanwhile: leave it alone
            log.info("not relabelled", kind=obj["kind"], object=meta["name"], error=str(error))

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
        """Start the retirement of the workers; it runs off this thread, and its answer (which pods may go,
        which workers the scheduler kept) is an input of the next plan, not something waited for here."""
        names = [w.name for w in step.workers]
        if retire_workers is None:
            return Refusal("RetirementFailed", "No scheduler to retire workers through.")
        log.info("retiring workers", workers=names)
        retire_workers(step)
        return None

    def release(self, step: ReleaseFields) -> None:
        """Read the object's managedFields (the cache keeps none), then remove the manager's entry and the
        annotation in one patch guarded by the UID and the entry's position."""
        ref = step.ref
        kind = lookup(ref.api_version, ref.kind)
        live = self.client.get(kind, ref.namespace, ref.name)
        if live is None or live["metadata"].get("uid") != ref.uid:
            return
        meta = live["metadata"]
        operations: list[Obj] = [{"op": "test", "path": "/metadata/uid", "value": ref.uid}]
        entries = meta.get("managedFields") or []
        for index in reversed(range(len(entries))):  # from the end: earlier indexes stay valid
            if entries[index].get("manager") == step.field_manager:
                path = f"/metadata/managedFields/{index}"
                operations += [
                    {"op": "test", "path": f"{path}/manager", "value": step.field_manager},
                    {"op": "remove", "path": path},
                ]
        if step.annotation in (meta.get("annotations") or {}):
            key = step.annotation.replace("~", "~0").replace("/", "~1")
            operations.append({"op": "remove", "path": f"/metadata/annotations/{key}"})
        if len(operations) == 1:
            return
        try:
            self.client.patch_json(kind, ref.namespace, ref.name, operations)
        except ApiError as error:
            if error.status not in (404, 409, 422):  # gone, or changed meanwhile: the next plan looks again
                raise
            return
        log.info("released fields", kind=ref.kind, object=ref.name, field_manager=step.field_manager)

    def write_status(
        self,
        obj: Obj,
        status: Obj,
        now: float = 0.0,
        outcome: Outcome | None = None,
        *,
        emitted: bool = False,
    ) -> bool:
        """Write `status` if it differs from the cached one and status_writes.decide says now (`emitted`: its
        plan emitted an Event); a change held back wakes the reconcile (through `outcome`) when its window ends."""
        meta = obj["metadata"]
        uid = str(meta.get("uid", ""))
        with self._lock:
            pending_since = self._status_pending.get(uid)
        decision = decide(obj.get("status") or {}, status, pending_since, now, self.status_window, emitted)
        with self._lock:
            if decision.pending_since is None:
                self._status_pending.pop(uid, None)
            else:
                self._status_pending[uid] = decision.pending_since
        if not decision.write:
            if outcome is not None:
                outcome.wake_in(decision.wake_in)
            return False
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


# -- the order of writes -------------------------------------------------------------------------------


def write_waves(steps: Sequence[Step]) -> list[tuple[Step, ...]]:
    """The plan's steps in order, consecutive applies, creates and deletes of distinct objects grouped into
    one wave (issued concurrently); a second write to an object already in the wave (a group's replicas after
    the group itself, a create after a delete of the same name) starts the next wave, and every other step
    (retire, status, event) stands alone, so whatever the plan orders stays ordered."""
    waves: list[tuple[Step, ...]] = []
    wave: list[Step] = []
    targets: set[tuple[str, str, str, str]] = set()
    for step in steps:
        if isinstance(step, Apply | Create | Delete):
            target = _target(step)
            if target in targets:
                waves.append(tuple(wave))
                wave, targets = [], set()
            wave.append(step)
            targets.add(target)
            continue
        if wave:
            waves.append(tuple(wave))
            wave, targets = [], set()
        waves.append((step,))
    if wave:
        waves.append(tuple(wave))
    return waves


def _target(step: Apply | Create | Delete) -> tuple[str, str, str, str]:
    if isinstance(step, Delete):
        ref = step.ref
        return (ref.api_version, ref.kind, ref.namespace, ref.name)
    meta = step.obj.get("metadata") or {}
    return (
        str(step.obj.get("apiVersion")),
        str(step.obj.get("kind")),
        str(meta.get("namespace")),
        str(meta.get("name")),
    )


# -- refusals as status --------------------------------------------------------------------------------


def refusal_of(step: Step, error: ApiError) -> Refusal:
    """The condition-worthy sentence for a refused write: what was refused, the server's words, what to do."""
    if isinstance(step, Create):
        reason, verb, target = "FailedCreate", "Creating", _describe(step.obj)
    elif isinstance(step, Delete):
        reason, verb, target = "FailedDelete", "Deleting", f"{step.ref.kind} {step.ref.name}"
    elif isinstance(step, Retire):
        reason, verb, target = "FailedDelete", "Deleting", "retired worker pods"
    elif isinstance(step, ReleaseFields):
        reason, verb, target = "FailedApply", f"Releasing {step.field_manager}'s fields of", step.ref.name
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
    if error.status == 403 and "being terminated" in (error.message or ""):
        return "The namespace is being deleted: nothing is created in it any more, and nothing needs doing."
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
