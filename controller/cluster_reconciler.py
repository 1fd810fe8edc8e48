"""The DaskCluster reconciler: fetch from the cache, plan_cluster (asking the scheduler since when it is
idle only with `spec.idleTimeout`), execute, requeue; and the wiring that says what it watches.

Invariant: reads only from the cache and writes only through the executor; never adds a finalizer, so
deleting a DaskCluster never waits for it. Held by test/e2e/test_cluster.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import structlog

from dask_operator.api.v1.names import (
    COMPONENT_SCHEDULER,
    COMPONENT_WORKER,
    LABEL_CLUSTER_NAME,
    LABEL_COMPONENT,
    scheduler_service_name,
)
from dask_operator.api.v1.types import PHASE_RUNNING
from dask_operator.controller import operator_metrics
from dask_operator.controller.children import is_terminating
from dask_operator.controller.cluster import ClusterObservation, IdleAnswer, plan_cluster
from dask_operator.controller.hold import hold_of
from dask_operator.controller.indexes import autoscalers_of_cluster, groups_of_cluster
from dask_operator.controller.kinds import DASK_CLUSTER_KIND, DASK_WORKER_GROUP_KIND, WORKLOAD
from dask_operator.controller.kueue_access import priority_classes, queueing_of
from dask_operator.controller.objects import Obj
from dask_operator.controller.plans import Question
from dask_operator.controller.reconciler import DaskReconciler
from dask_operator.controller.runtime.builder import ControllerBuilder
from dask_operator.controller.runtime.kinds import POD, SERVICE
from dask_operator.controller.runtime.reconcile import Request, Result
from dask_operator.controller.scheduler import SchedulerClient, SchedulerUnreachable, scheduler_endpoint
from dask_operator.controller.settings import OperatorSettings
from dask_operator.controller.status_writes import DEFAULT_WINDOW

log = structlog.get_logger("dask_operator.controller.cluster")


class DaskClusterReconciler(DaskReconciler):
    # pod-level transitions (each pod created, scheduled, Ready) within 1 s are one status write
    status_window = DEFAULT_WINDOW

    def reconcile(self, request: Request) -> Result:
        cluster = self.cache.get(DASK_CLUSTER_KIND, request.namespace, request.name)
        if cluster is None or is_terminating(cluster):
            operator_metrics.forget_cluster(request.namespace, request.name)
            return Result()
        now = self.clock()
        observation = self.observe(cluster)
        plan = plan_cluster(observation, now, self.settings.cluster_domain)
        if plan.question is Question.IDLE_SINCE:
            observation = dataclasses.replace(observation, idle=self.ask_idle(cluster, observation.service))
            plan = plan_cluster(observation, now, self.settings.cluster_domain)
        _, result = self.execute(cluster, plan, now)
        operator_metrics.count_losses(request.namespace, request.name, plan.events)
        if plan.status is not None:
            running = plan.status.get("phase") == PHASE_RUNNING
            operator_metrics.CLUSTER_RUNNING.labels(request.namespace, request.name).set(int(running))
        return result

    def observe(self, cluster: Obj) -> ClusterObservation:
        meta = cluster["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        queue = queueing_of(self.cache, self.settings.kueue, cluster)
        return ClusterObservation(
            cluster=cluster,
            queue=queue,
            autoscalers=autoscalers_of_cluster(self.cache, namespace, name) if queue is not None else (),
            priority_classes=priority_classes(self.cache, self.settings.kueue) if queue is not None else {},
            scheduler_pods=_with_component(self.cache.by_owner(POD, meta["uid"]), COMPONENT_SCHEDULER),
            service=self.cache.get(SERVICE, namespace, scheduler_service_name(name)),
            groups=groups_of_cluster(self.cache, namespace, name),
            worker_pods=_with_component(
                self.cache.by_label(POD, LABEL_CLUSTER_NAME, name, namespace), COMPONENT_WORKER
            ),
            hold=hold_of(cluster),
        )

    def ask_idle(self, cluster: Obj, service: Obj | None) -> IdleAnswer:
        meta = cluster["metadata"]
        if service is None:
            return IdleAnswer(None, False)
        scheduler = SchedulerClient(scheduler_endpoint(service), timeout=self.settings.scheduler_timeout)
        try:
            answer = IdleAnswer(scheduler.check_idle(), True)
        except SchedulerUnreachable as error:
            log.info("scheduler unreachable; not idle", error=str(error))
            answer = IdleAnswer(None, False)
        operator_metrics.SCHEDULER_REACHABLE.labels(meta["namespace"], meta["name"]).set(
            int(answer.reachable)
        )
        return answer


def _with_component(pods: list[Obj], component: str) -> list[Obj]:
    return [p for p in pods if p["metadata"].get("labels", {}).get(LABEL_COMPONENT) == component]


def cluster_of_group(group: Obj) -> list[Request]:
    cluster = group.get("spec", {}).get("cluster")
    return [Request(group["metadata"]["namespace"], cluster)] if cluster else []


def setup_with_manager(manager: Any, settings: OperatorSettings, concurrency: int) -> None:
    """DaskClusters; their scheduler Pod and Service; the DaskWorkerGroups that name them."""
    builder = (
        ControllerBuilder(manager)
        .named("daskcluster")
        .for_(DASK_CLUSTER_KIND)
        .owns(POD)
        .owns(SERVICE)
        .watches(DASK_WORKER_GROUP_KIND, cluster_of_group)
    )
    if settings.kueue.workloads:
        builder = builder.owns(WORKLOAD)
    builder.with_options(
        max_concurrent_reconciles=concurrency, reconcile_timeout=settings.retire_timeout + 60.0
    ).complete(DaskClusterReconciler(manager, settings))
