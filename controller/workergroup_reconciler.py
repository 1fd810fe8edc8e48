"""The DaskWorkerGroup reconciler: fetch from the cache, plan_group (asking the scheduler for its workers
only when a worker must go), execute (the retirement included), requeue; and its wiring.

Invariant: the only pods ever deleted are this group's: finished ones, ones that never joined the scheduler,
ones the scheduler confirmed it retired, or (after the cluster's force timeout, with a Warning Event) ones a
scale-down has waited for too long because the scheduler could not be reached. Held by
test/e2e/test_cluster.py and test/unit/test_workergroup.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import structlog

from dask_operator.api.v1.names import scheduler_service_name
from dask_operator.controller import indexes, operator_metrics
from dask_operator.controller.children import is_terminating
from dask_operator.controller.hold import hold_of
from dask_operator.controller.kinds import DASK_CLUSTER_KIND, DASK_WORKER_GROUP_KIND, WORKLOAD
from dask_operator.controller.kueue_access import queueing_of
from dask_operator.controller.objects import Obj
from dask_operator.controller.plans import Question, Retire
from dask_operator.controller.reconciler import DaskReconciler
from dask_operator.controller.runtime.builder import ControllerBuilder
from dask_operator.controller.runtime.kinds import POD, SERVICE
from dask_operator.controller.runtime.predicate import (
    AnnotationsChanged,
    GenerationChanged,
    LabelsChanged,
    Or,
)
from dask_operator.controller.runtime.reconcile import Request, Result, remaining_time
from dask_operator.controller.scheduler import SchedulerClient, SchedulerUnreachable, scheduler_endpoint
from dask_operator.controller.settings import OperatorSettings
from dask_operator.controller.workergroup import (
    FORCE_SCALE_DOWN_ANNOTATION,
    GroupObservation,
    GroupSettings,
    SchedulerView,
    plan_group,
)

log = structlog.get_logger("dask_operator.controller.workergroup")


class DaskWorkerGroupReconciler(DaskReconciler):
    def reconcile(self, request: Request) -> Result:
        group = self.cache.get(DASK_WORKER_GROUP_KIND, request.namespace, request.name)
        if group is None or is_terminating(group):
            operator_metrics.forget_group_named(request.namespace, request.name)
            return Result()
        now = self.clock()
        cluster = self.cache.get(DASK_CLUSTER_KIND, request.namespace, group["spec"].get("cluster", ""))
        if cluster is not None and is_terminating(cluster):
            return Result()  # the garbage collector is removing everything
        observation = GroupObservation(
            group=group,
            cluster=cluster,
            pods=self.cache.by_owner(POD, group["metadata"]["uid"]),
            queue=queueing_of(self.cache, self.settings.kueue, cluster) if cluster is not None else None,
            hold=hold_of(cluster) if cluster is not None else None,
        )
        settings = self.group_settings(cluster)
        plan = plan_group(observation, now, settings)
        if plan.question is Question.WORKERS and cluster is not None:
            observation = dataclasses.replace(observation, scheduler=self.scheduler_view(cluster))
            plan = plan_group(observation, now, settings)
        _, result = self.execute(group, plan, now, lambda retire: self.retire_workers(group, retire))
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
        )

    def scheduler_view(self, cluster: Obj) -> SchedulerView:
        meta = cluster["metadata"]
        scheduler = self._scheduler(meta["namespace"], meta["name"])
        if scheduler is None:
            return SchedulerView(None, "the scheduler Service does not exist")
        try:
            view = SchedulerView(tuple(scheduler.get_workers()))
        except SchedulerUnreachable as error:
            view = SchedulerView(None, str(error))
        operator_metrics.SCHEDULER_REACHABLE.labels(meta["namespace"], meta["name"]).set(
            int(view.workers is not None)
        )
        return view

    def retire_workers(self, group: Obj, retire: Retire) -> set[str]:
        scheduler = self._scheduler(group["metadata"]["namespace"], group["spec"]["cluster"])
        if scheduler is None:
            raise SchedulerUnreachable("the scheduler Service does not exist")
        retired = scheduler.retire_workers(retire.workers)
        operator_metrics.RETIREMENTS.labels(group["metadata"]["namespace"], "retired").inc(len(retired))
        return retired

    def _scheduler(self, namespace: str, cluster: str) -> SchedulerClient | None:
        service = self.cache.get(SERVICE, namespace, scheduler_service_name(cluster))
        if service is None:
            return None
        retire_timeout = self.settings.retire_timeout
        left = remaining_time()
        if left is not None:
            retire_timeout = max(1.0, min(retire_timeout, left - 2.0))
        return SchedulerClient(
            scheduler_endpoint(service),
            timeout=self.settings.scheduler_timeout,
            retire_timeout=retire_timeout,
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
    """DaskWorkerGroups; their worker Pods; the DaskCluster they name (its spec, labels and annotations,
    e.g. the force timeout, matter to its groups; its status does not)."""
    builder = (
        ControllerBuilder(manager)
        .named("daskworkergroup")
        .for_(DASK_WORKER_GROUP_KIND)
        .owns(POD)
        .watches(
            DASK_CLUSTER_KIND,
            groups_of_cluster(manager),
            predicates=[Or(GenerationChanged(), LabelsChanged(), AnnotationsChanged())],
        )
    )
    if settings.kueue.workloads:
        builder = builder.watches(WORKLOAD, groups_of_workload_owner(manager))
    builder.with_options(
        max_concurrent_reconciles=concurrency, reconcile_timeout=settings.retire_timeout + 60.0
    ).complete(DaskWorkerGroupReconciler(manager, settings))
