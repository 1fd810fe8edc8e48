"""The DaskWorkerGroup reconciler on the template (controller/reconciler.py): observe the group, its cluster,
pods, budgets and retirement from the cache; plan_group, asking the scheduler for its workers only when a
worker must go; execute, starting a retirement whose answer a later reconcile reads; and its wiring.

Invariant: the only pods ever deleted are this group's: finished ones, ones that never joined the scheduler,
ones the scheduler confirmed it retired, or (after the cluster's force timeout, with a Warning Event) ones a
scale-down has waited for too long because the scheduler could not be reached. Held by
test/e2e/test_cluster.py, test/unit/test_workergroup.py and test/unit/test_reconciler.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import structlog

from dask_operator.api.v1.names import autoscaled_group_name, default_worker_group_name
from dask_operator.controller import indexes, operator_metrics
from dask_operator.controller.contract.hold import hold_of
from dask_operator.controller.contract.names import FORCE_SCALE_DOWN_ANNOTATION
from dask_operator.controller.contract.objects import Obj
from dask_operator.controller.contract.plans import Plan, Question, Retire
from dask_operator.controller.contract.pods import is_terminating
from dask_operator.controller.executor import Outcome, RetireWorkers
from dask_operator.controller.kinds import (
    DASK_AUTOSCALER_KIND,
    DASK_CLUSTER_KIND,
    DASK_WORKER_GROUP_KIND,
    WORKLOAD,
)
from dask_operator.controller.kueue_access import queueing_of
from dask_operator.controller.planners.workergroup import (
    GroupObservation,
    GroupSettings,
    RetirementView,
    SchedulerView,
    plan_group,
)
from dask_operator.controller.reconciler import (
    NO_SERVICE,
    DaskReconciler,
    Mapper,
    enqueue_answers,
    namespace_and_name,
    requests_for,
)
from dask_operator.controller.scheduler import SchedulerUnreachable
from dask_operator.controller.scheduler_calls import Answer
from dask_operator.controller.settings import OperatorSettings
from dask_operator.controller.status_writes import DEFAULT_WINDOW
from dask_operator.runtime.builder import ControllerBuilder
from dask_operator.runtime.kinds import POD, PODDISRUPTIONBUDGET
from dask_operator.runtime.predicate import (
    AnnotationsChanged,
    GenerationChanged,
    LabelsChanged,
    Or,
)
from dask_operator.runtime.reconcile import Request

log = structlog.get_logger("dask_operator.controller.workergroup")

# A reconcile never waits for a scheduler (calls run in SchedulerCalls), so it is short.
RECONCILE_TIMEOUT_SECONDS = 60.0
RETIRE = "retire"


class DaskWorkerGroupReconciler(DaskReconciler[GroupObservation]):
    kind = DASK_WORKER_GROUP_KIND
    # pod-level transitions (each pod created, scheduled, Ready) within 1 s are one status write
    status_window = DEFAULT_WINDOW

    def observe(self, group: Obj) -> GroupObservation | None:
        meta = group["metadata"]
        namespace, cluster_name = meta["namespace"], self.cluster_name(group)
        cluster = self.cache.get(DASK_CLUSTER_KIND, namespace, cluster_name)
        if cluster is not None and is_terminating(cluster):
            return None  # the garbage collector is removing everything
        return GroupObservation(
            group=group,
            cluster=cluster,
            pods=self.cache.by_owner(POD, meta["uid"]),
            retirement=self.retirement_view(Request(namespace, meta["name"])),
            autoscaled=any(
                autoscaled_group_name(a) == meta["name"]
                for a in indexes.autoscalers_of_cluster(self.cache, namespace, cluster_name)
            ),
            queue=queueing_of(self.cache, self.settings.kueue, cluster) if cluster is not None else None,
            hold=hold_of(cluster) if cluster is not None else None,
            disruption_budgets=self.cache.by_owner(PODDISRUPTIONBUDGET, meta["uid"]),
        )

    def plan(self, observed: GroupObservation, now: float) -> Plan:
        return plan_group(observed, now, self.group_settings(observed.cluster))

    def with_answer(self, observed: GroupObservation, question: Question, answer: Answer) -> GroupObservation:
        view = (
            SchedulerView(tuple(answer.value), asked=answer.asked)
            if answer.error is None
            else SchedulerView(None, str(answer.error), asked=answer.asked)
        )
        return dataclasses.replace(observed, scheduler=view)

    def record(self, group: Obj, observed: GroupObservation, plan: Plan, outcome: Outcome) -> None:
        operator_metrics.count_losses(group["metadata"]["namespace"], self.cluster_name(group), plan.events)
        if plan.status is not None:
            operator_metrics.set_group(group, plan.status)

    def forget(self, request: Request) -> None:
        operator_metrics.forget_group_named(request.namespace, request.name)
        super().forget(request)

    def retire_workers(self, request: Request, group: Obj) -> RetireWorkers | None:
        return lambda retire: self.start_retirement(request, group, retire)

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
        scheduler = self.scheduler(namespace, self.cluster_name(group))
        previous = self.retirement_view(request)
        troubled = previous is not None and (bool(previous.error) or bool(previous.kept))
        attempt = previous.attempt + 1 if previous is not None and troubled else 1

        def call() -> set[str]:
            if scheduler is None:
                raise SchedulerUnreachable(NO_SERVICE)
            try:
                retired = scheduler.retire_workers(retire.workers)
            except SchedulerUnreachable:
                operator_metrics.RETIREMENTS.labels(namespace, "failed").inc(len(retire.workers))
                raise
            kept = [w for w in retire.workers if w.name not in retired]
            if kept:
                operator_metrics.RETIREMENTS.labels(namespace, "failed").inc(len(kept))
            return retired

        self.calls.discard(request, Question.WORKERS.value)  # the workers' state changes with this request
        self.calls.ask(request, RETIRE, call, attached=(retire, attempt))


def groups_of_cluster(manager: Any) -> Mapper:
    """Map a DaskCluster to the DaskWorkerGroups that name it in spec.cluster (adopted or not yet)."""
    return requests_for(
        lambda cluster: indexes.groups_of_cluster(manager.cache, *namespace_and_name(cluster))
    )


def default_group_of_autoscaler(autoscaler: Obj) -> list[Request]:
    """A DaskAutoscaler's coming and going matters to the group it scales (its replicas' ownership)."""
    meta = autoscaler["metadata"]
    cluster = (autoscaler.get("spec") or {}).get("cluster")
    return [Request(meta["namespace"], default_worker_group_name(cluster))] if cluster else []


def groups_of_workload_owner(manager: Any) -> Mapper:
    """Map a Kueue Workload a DaskCluster controls to that cluster's DaskWorkerGroups."""

    def groups(workload: Obj) -> list[Obj]:
        namespace = workload["metadata"]["namespace"]
        owners = [
            r["name"]
            for r in workload["metadata"].get("ownerReferences") or []
            if r.get("controller") and r.get("kind") == DASK_CLUSTER_KIND.kind
        ]
        return [g for owner in owners for g in indexes.groups_of_cluster(manager.cache, namespace, owner)]

    return requests_for(groups)


def setup_with_manager(manager: Any, settings: OperatorSettings, concurrency: int) -> None:
    """DaskWorkerGroups; their worker Pods and PodDisruptionBudget; the DaskCluster they name (its spec, labels
    and annotations, e.g. the force timeout, matter to its groups; its status does not)."""
    reconciler = DaskWorkerGroupReconciler(manager, settings)
    builder = (
        ControllerBuilder(manager)
        .named("daskworkergroup")
        .for_(DASK_WORKER_GROUP_KIND)
        .ignoring_own_status_echoes()  # its planner is a fixed point of its own status
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
    enqueue_answers(reconciler, controller)
