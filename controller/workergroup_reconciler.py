"""The DaskWorkerGroup reconciler: fetch from the cache, plan_group (asking the scheduler for its workers
only when a worker must go), execute (starting a retirement, whose answer a later reconcile reads),
requeue; and its wiring. No reconcile waits for a scheduler: one that hangs holds a thread of
SchedulerCalls, never a controller worker.

Invariant: the only pods ever deleted are this group's: finished ones, ones that never joined the scheduler,
ones the scheduler confirmed it retired, or (after the cluster's force timeout, with a Warning Event) ones a
scale-down has waited for too long because the scheduler could not be reached. Held by
test/e2e/test_cluster.py and test/unit/test_workergroup.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any

import structlog

from dask_operator.api.v1.names import default_worker_group_name, scheduler_service_name
from dask_operator.controller import indexes, operator_metrics
from dask_operator.controller.children import is_terminating
from dask_operator.controller.hold import hold_of
from dask_operator.controller.kinds import (
    DASK_AUTOSCALER_KIND,
    DASK_CLUSTER_KIND,
    DASK_WORKER_GROUP_KIND,
    WORKLOAD,
)
from dask_operator.controller.kueue_access import queueing_of
from dask_operator.controller.objects import Obj
from dask_operator.controller.plans import Question, Retire
from dask_operator.controller.reconciler import DaskReconciler
from dask_operator.controller.runtime.builder import ControllerBuilder
from dask_operator.controller.runtime.kinds import POD, PODDISRUPTIONBUDGET, SERVICE
from dask_operator.controller.runtime.predicate import (
    AnnotationsChanged,
    GenerationChanged,
    LabelsChanged,
    Or,
)
from dask_operator.controller.runtime.reconcile import Request, Result
from dask_operator.controller.scheduler import SchedulerClient, SchedulerUnreachable, scheduler_endpoint
from dask_operator.controller.scheduler_calls import SchedulerCalls
from dask_operator.controller.settings import OperatorSettings
from dask_operator.controller.status_writes import DEFAULT_WINDOW
from dask_operator.controller.workergroup import (
    FORCE_SCALE_DOWN_ANNOTATION,
    GroupObservation,
    GroupSettings,
    RetirementView,
    SchedulerView,
    plan_group,
)

log = structlog.get_logger("dask_operator.controller.workergroup")

# A reconcile never waits for a scheduler (calls run in SchedulerCalls), so it is short.
RECONCILE_TIMEOUT_SECONDS = 60.0


# A scheduler's worker list is used for this long after it arrived; older, it is asked for again.
WORKERS_ANSWER_MAX_AGE = 5.0
WORKERS, RETIRE = "workers", "retire"


class DaskWorkerGroupReconciler(DaskReconciler):
    """Scheduler calls (the worker list, a retirement) run in `calls`, off the controller's workers; their
    answers are observed inputs of the next reconcile, which their arrival enqueues."""

    # pod-level transitions (each pod created, scheduled, Ready) within 1 s are one status write
    status_window = DEFAULT_WINDOW

    def __init__(self, manager: Any, settings: OperatorSettings, calls: SchedulerCalls | None = None) -> None:
        super().__init__(manager, settings)
        self.calls = calls or SchedulerCalls(self.clock)

    def reconcile(self, request: Request) -> Result:
        group = self.cache.get(DASK_WORKER_GROUP_KIND, request.namespace, request.name)
        if group is None or is_terminating(group):
            operator_metrics.forget_group_named(request.namespace, request.name)
            self.calls.forget(request)
            return Result()
        now = self.clock()
        cluster = self.cache.get(DASK_CLUSTER_KIND, request.namespace, group["spec"].get("cluster", ""))
        if cluster is not None and is_terminating(cluster):
            return Result()  # the garbage collector is removing everything
        uid = group["metadata"]["uid"]
        observation = GroupObservation(
            group=group,
            cluster=cluster,
            pods=self.cache.by_owner(POD, uid),
            retirement=self.retirement_view(request),
            autoscaled=bool(
                indexes.autoscalers_of_cluster(
                    self.cache, request.namespace, group["spec"].get("cluster", "")
                )
            ),
            queue=queueing_of(self.cache, self.settings.kueue, cluster) if cluster is not None else None,
            hold=hold_of(cluster) if cluster is not None else None,
            disruption_budgets=self.cache.by_owner(PODDISRUPTIONBUDGET, uid),
        )
        settings = self.group_settings(cluster)
        plan = plan_group(observation, now, settings)
        if plan.question is Question.WORKERS and cluster is not None:
            view = self.scheduler_view(request, cluster, now)
            if view is None:  # asked; its answer enqueues the group
                return Result(requeue_after=2 * self.settings.scheduler_timeout + 5.0)
            observation = dataclasses.replace(observation, scheduler=view)
            plan = plan_group(observation, now, settings)
        _, result = self.execute(
            group, plan, now, lambda retire: self.start_retirement(request, group, retire)
        )
        operator_metrics.count_losses(request.namespace, group["spec"].get("cluster", ""), plan.events)
        if plan.status is not None:
            operator_metrics.set_group(group, plan.status)
        return result

    def group_settings(self, cluster: Obj | None) -> GroupSettings:
        force = self.settings.force_scale_down_after
        if cluster is not None:
            value = cluster["metadata"].get("annotations", {}).get(FORCE_SCALE_DOWN_ANNOTATION)
            try:
                force = float(value) if value is not None else force
            except ValueError:
                log.warning(
                    "ignoring invalid annotation", annotation=FORCE_SCALE_DOWN_ANNOTATION, value=value
                )
        return GroupSettings(
            batch_size=self.settings.batch_size,
            batch_delay=self.settings.batch_delay,
            force_timeout=force,
            cluster_domain=self.settings.cluster_domain,
            worker_grace=self.settings.worker_grace,
        )

    def scheduler_view(self, request: Request, cluster: Obj, now: float) -> SchedulerView | None:
        """The scheduler's workers if a recent answer is at hand; else ask (once) and return None."""
        answer = self.calls.answer(request, WORKERS)
        if answer is not None and not answer.in_flight:
            assert answer.answered is not None
            if now - answer.answered <= WORKERS_ANSWER_MAX_AGE:
                view = (
                    SchedulerView(tuple(answer.value))
                    if answer.error is None
                    else SchedulerView(None, str(answer.error))
                )
                meta = cluster["metadata"]
                operator_metrics.SCHEDULER_REACHABLE.labels(meta["namespace"], meta["name"]).set(
                    int(view.workers is not None)
                )
                return view
        meta = cluster["metadata"]
        scheduler = self._scheduler(meta["namespace"], meta["name"])
        if scheduler is None:
            return SchedulerView(None, "the scheduler Service does not exist")
        self.calls.ask(request, WORKERS, scheduler.get_workers)
        return None

    def retirement_view(self, request: Request) -> RetirementView | None:
        answer = self.calls.answer(request, RETIRE)
        if answer is None:
            return None
        retire, attempt = answer.attached
        error = answer.error
        return RetirementView(
            retire=retire,
            attempt=attempt,
            asked=answer.asked,
            answered=answer.answered,
            retired=frozenset(answer.value or ()),
            error=str(error) if error is not None else "",
            acted=bool(getattr(error, "acted", False)),
        )

    def start_retirement(self, request: Request, group: Obj, retire: Retire) -> None:
        """Ask the scheduler to retire the workers, on a thread of its own; the answer enqueues the group."""
        namespace = group["metadata"]["namespace"]
        scheduler = self._scheduler(namespace, group["spec"]["cluster"])
        previous = self.retirement_view(request)
        troubled = previous is not None and (bool(previous.error) or bool(previous.kept))
        attempt = previous.attempt + 1 if previous is not None and troubled else 1

        def call() -> set[str]:
            if scheduler is None:
                raise SchedulerUnreachable("the scheduler Service does not exist")
            try:
                retired = scheduler.retire_workers(retire.workers)
            except SchedulerUnreachable:
                operator_metrics.RETIREMENTS.labels(namespace, "failed").inc(len(retire.workers))
                raise
            kept = [w for w in retire.workers if w.name not in retired]
            if kept:
                operator_metrics.RETIREMENTS.labels(namespace, "failed").inc(len(kept))
            return retired

        self.calls.discard(request, WORKERS)  # the workers' state changes with this request
        self.calls.ask(request, RETIRE, call, attached=(retire, attempt))

    def _scheduler(self, namespace: str, cluster: str) -> SchedulerClient | None:
        service = self.cache.get(SERVICE, namespace, scheduler_service_name(cluster))
        if service is None:
            return None
        return SchedulerClient(
            scheduler_endpoint(service),
            timeout=self.settings.scheduler_timeout,
            retire_timeout=self.settings.retire_timeout,
        )


def groups_of_cluster(manager: Any) -> Any:
    """Map a DaskCluster to the DaskWorkerGroups that name it in spec.cluster (adopted or not yet)."""

    def mapper(cluster: Obj) -> list[Request]:
        meta = cluster["metadata"]
        return [
            Request(meta["namespace"], g["metadata"]["name"])
            for g in indexes.groups_of_cluster(manager.cache, meta["namespace"], meta["name"])
        ]

    return mapper


def default_group_of_autoscaler(autoscaler: Obj) -> list[Request]:
    """A DaskAutoscaler's coming and going matters to the group it scales (its replicas' ownership)."""
    meta = autoscaler["metadata"]
    cluster = (autoscaler.get("spec") or {}).get("cluster")
    return [Request(meta["namespace"], default_worker_group_name(cluster))] if cluster else []


def groups_of_workload_owner(manager: Any) -> Any:
    """Map a Kueue Workload a DaskCluster controls to that cluster's DaskWorkerGroups."""

    def mapper(workload: Obj) -> list[Request]:
        meta = workload["metadata"]
        owners = [
            r["name"]
            for r in meta.get("ownerReferences") or []
            if r.get("controller") and r.get("kind") == DASK_CLUSTER_KIND.kind
        ]
        return [
            Request(meta["namespace"], g["metadata"]["name"])
            for owner in owners
            for g in indexes.groups_of_cluster(manager.cache, meta["namespace"], owner)
        ]

    return mapper


def setup_with_manager(manager: Any, settings: OperatorSettings, concurrency: int) -> None:
    """DaskWorkerGroups; their worker Pods and PodDisruptionBudget; the DaskCluster they name (its spec, labels
    and annotations, e.g. the force timeout, matter to its groups; its status does not)."""
    reconciler = DaskWorkerGroupReconciler(manager, settings)
    builder = (
        ControllerBuilder(manager)
        .named("daskworkergroup")
        .for_(DASK_WORKER_GROUP_KIND)
        .owns(POD)
        .owns(PODDISRUPTIONBUDGET)
        .watches(
            DASK_CLUSTER_KIND,
            groups_of_cluster(manager),
            predicates=[Or(GenerationChanged(), LabelsChanged(), AnnotationsChanged())],
        )
        .watches(DASK_AUTOSCALER_KIND, default_group_of_autoscaler, predicates=[GenerationChanged()])
    )
    if settings.kueue.workloads:
        builder = builder.watches(WORKLOAD, groups_of_workload_owner(manager))
    controller = builder.with_options(
        max_concurrent_reconciles=concurrency, reconcile_timeout=RECONCILE_TIMEOUT_SECONDS
    ).complete(reconciler)

    def answered(key: Hashable) -> None:
        if isinstance(key, Request):
            controller.queue.add(key)

    reconciler.calls.notify = answered
