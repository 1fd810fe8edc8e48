"""The one vocabulary every planner speaks: a plan is a sequence of typed steps, a requeue, and at most one
question for the scheduler.

Invariant: plain frozen data, no behaviour and no I/O; a plan holds every write a reconcile will issue, in
the order the executor issues them. Held by test/unit/test_plans.py and each planner's table tests.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from dask_operator.controller.contract.conditions import EventSpec
from dask_operator.controller.contract.objects import Obj
from dask_operator.controller.contract.scheduler_api import DaskWorker

# Field managers, one per concern, so each owns only its fields.
FIELD_MANAGER = "dask-operator"
STATUS_FIELD_MANAGER = "dask-operator-status"
REPLICAS_FIELD_MANAGER = "dask-operator-replicas"
ADOPTION_FIELD_MANAGER = "dask-operator-adoption"
AUTOSCALER_FIELD_MANAGER = "dask-operator-autoscaler"  # default groups' replicas, the cooldown annotation


class Cause(enum.Enum):
    """Why an object is deleted; the value is the sentence logged, the metric label is `how`."""

    TEMPLATE_CHANGED = ("template changed", None)
    POD_FINISHED = ("pod finished; replacing it", None)
    OLD_TEMPLATE_NEVER_STARTED = ("old template, never started", None)
    NEVER_STARTED = ("scale-down, never started", "never_joined")
    NEVER_JOINED = ("scale-down, never joined the scheduler", "never_joined")
    LAST_WORKERS = ("scale-down to zero: no worker left to take the data", "last_workers")
    FORCED = ("scale-down forced: scheduler unreachable", "forced")
    RETIRED = ("retired by the scheduler", "retired")
    JOB_FINISHED = ("the job finished", None)
    IDLE_TIMEOUT = ("the scheduler was idle for longer than spec.idleTimeout", None)
    HELD = ("held: spec.suspend, or not admitted by Kueue (or evicted by it)", None)
    WORKLOAD_CHANGED = ("the pod sets changed while the Workload held no quota", None)
    RUNNER_RETRY = ("the runner failed and is retried (spec.backoffLimit)", None)
    DEADLINE_EXCEEDED = ("the job ran longer than spec.activeDeadlineSeconds", None)
    TTL_EXPIRED = ("the job finished longer than spec.ttlSecondsAfterFinished ago", None)
    BUDGET_REMOVED = ("spec.worker.disruptionBudget removed", None)

    @property
    def sentence(self) -> str:
        return str(self.value[0])

    @property
    def retirement_metric(self) -> str | None:
        """The `how` label of dask_operator_worker_retirements_total, for scale-down causes."""
        return self.value[1]  # type: ignore[no-any-return]


def earliest(*seconds: float | None) -> float | None:
    """The soonest of several requeues (None: no requeue asked); the one way every planner and the executor
    merge them."""
    given = [s for s in seconds if s is not None]
    return min(given) if given else None


class Question(enum.Enum):
    """What a planner may ask the scheduler before planning again."""

    WORKERS = "workers"  # the scheduler's workers (to choose whom to retire)
    ADAPTIVE_TARGET = "adaptive_target"  # how many workers it wants
    IDLE_SINCE = "idle_since"  # since when it has been idle
    DEMAND = "demand"  # its work per resource-restriction set (else its adaptive target)


@dataclass(frozen=True)
class Ref:
    """An object by identity: a delete carries the UID it was planned for (a precondition)."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, obj: Obj) -> Ref:
        meta = obj["metadata"]
        return cls(
            obj.get("apiVersion", "v1"), obj.get("kind", "Pod"), meta["namespace"], meta["name"], meta["uid"]
        )


@dataclass(frozen=True)
class Apply:
    """Server-side apply of `obj` (the fields this manager owns) as `field_manager`, force=true."""

    obj: Obj
    field_manager: str = FIELD_MANAGER


@dataclass(frozen=True)
class Create:
    """Create `obj`; an existing name is already done."""

    obj: Obj


@dataclass(frozen=True)
class Delete:
    """Delete `ref` if it is still the same object (UID precondition); gone already is done."""

    ref: Ref
    cause: Cause
    # Foreground: the object stays (terminating) until the garbage collector has removed its children, so
    # a successor of the same name never meets the predecessor's pods or Service.
    foreground: bool = False


@dataclass(frozen=True)
class RetiringPod:
    """A pod to delete once every Dask worker it runs has been retired (`--nworkers` runs several)."""

    delete: Delete
    workers: tuple[DaskWorker, ...]
    restarts: int = (
        0  # the pod's container restarts when asked: more later means its workers' processes ended
    )


@dataclass(frozen=True)
class Retire:
    """Retire every worker of these pods through the scheduler; delete a pod only once all of its workers
    were retired, so no worker's data goes with a pod."""

    pods: tuple[RetiringPod, ...]

    @property
    def workers(self) -> tuple[DaskWorker, ...]:
        return tuple(w for pod in self.pods for w in pod.workers)


@dataclass(frozen=True)
class ReleaseFields:
    """Drop `field_manager`'s entry from the object's managedFields, and the `annotation` that marked it:
    the fields keep their values, now owned by their other managers or by no one, so whoever applies them
    next owns them without a conflict."""

    ref: Ref
    field_manager: str
    annotation: str


@dataclass(frozen=True)
class SetStatus:
    """Write the reconciled object's status (status field manager); always written last, failed or not."""

    status: Obj


@dataclass(frozen=True)
class PatchStatus:
    """Merge-patch the status of another object (`ref`, e.g. a Kueue Workload this object owns), guarded by the
    resourceVersion it was planned from; a conflict means a newer object the next reconcile sees."""

    ref: Ref
    resource_version: str
    patch: Obj


@dataclass(frozen=True)
class Emit:
    """Record an Event on the reconciled object."""

    event: EventSpec


Step = Apply | Create | Delete | Retire | ReleaseFields | PatchStatus | SetStatus | Emit
S = TypeVar("S", Apply, Create, Delete, Retire, ReleaseFields, PatchStatus, SetStatus, Emit)


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...] = ()
    requeue_after: float | None = None
    question: Question | None = None  # ask the scheduler, then plan again with the answer
    asked_after: float | None = (
        None  # the answer must have been asked at or after this (the reconciler's clock)
    )
    notes: tuple[str, ...] = field(default=())  # what the plan does, for logs

    def of_type(self, kind: type[S]) -> Iterator[S]:
        return (s for s in self.steps if isinstance(s, kind))

    # Read-only views, for tests and logs.
    @property
    def creates(self) -> tuple[Obj, ...]:
        return tuple(s.obj for s in self.of_type(Create))

    @property
    def applies(self) -> tuple[Obj, ...]:
        return tuple(s.obj for s in self.of_type(Apply))

    @property
    def deletes(self) -> tuple[Delete, ...]:
        return tuple(self.of_type(Delete))

    @property
    def retire(self) -> Retire | None:
        return next(self.of_type(Retire), None)

    @property
    def status(self) -> Obj | None:
        return next((s.status for s in self.of_type(SetStatus)), None)

    @property
    def events(self) -> tuple[EventSpec, ...]:
        return tuple(s.event for s in self.of_type(Emit))
