"""The DaskCluster reconciler on the template (controller/reconciler.py): observe the cluster, its scheduler
pod and Service, its groups and worker pods from the cache; plan_cluster, asking the scheduler since when it
is idle only with `spec.idleTimeout` (off-thread, like every scheduler question); execute; and the wiring that
says what it watches.

Invariant: reads only from the cache and writes only through the executor; never adds a finalizer, so
deleting a DaskCluster never waits for it; a stalled scheduler delays only its own cluster's idle check.
Held by test/e2e/test_cluster.py and test/unit/test_reconciler.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dask_operator.api.v1.names import (
    COMPONENT_SCHEDULER,
    COMPONENT_WORKER,
    LABEL_CLUSTER_NAME,
    LABEL_COMPONENT,
    scheduler_service_name,
)
from dask_operator.api.v1.types import PHASE_RUNNING
from dask_operator.controller import operator_metrics
from dask_operator.controller.contract.hold import hold_of
from dask_operator.controller.contract.objects import Obj
from dask_operator.controller.contract.plans import Plan, Question
from dask_operator.controller.executor import Outcome
from dask_operator.controller.indexes import autoscalers_of_cluster, groups_of_cluster
from dask_operator.controller.kinds import DASK_CLUSTER_KIND, DASK_WORKER_GROUP_KIND, WORKLOAD
from dask_operator.controller.kueue_access import priority_classes, queueing_of
from dask_operator.controller.planners.cluster import ClusterObservation, IdleAnswer, plan_cluster
from dask_operator.controller.reconciler import DaskReconciler, enqueue_answers
from dask_operator.controller.scheduler_calls import Answer
from dask_operator.controller.settings import OperatorSettings
from dask_operator.controller.status_writes import DEFAULT_WINDOW
from dask_operator.runtime.builder import ControllerBuilder
from dask_operator.runtime.kinds import POD, SERVICE
from dask_operator.runtime.reconcile import Request


class DaskClusterReconciler(DaskReconciler[ClusterObservation]):
    kind = DASK_CLUSTER_KIND
    # pod-level transitions (each pod created, scheduled, Ready) within 1 s are one status write
    status_window = DEFAULT_WINDOW

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

    def plan(self, observed: ClusterObservation, now: float) -> Plan:
        return plan_cluster(observed, now, self.settings.cluster_domain)

    def with_answer(
        self, observed: ClusterObservation, question: Question, answer: Answer
    ) -> ClusterObservation:
        idle = IdleAnswer(answer.value, True) if answer.error is None else IdleAnswer(None, False)
        return dataclasses.replace(observed, idle=idle)

    def cluster_name(self, cluster: Obj) -> str:
        return str(cluster["metadata"]["name"])

    def record(self, cluster: Obj, observed: ClusterObservation, plan: Plan, outcome: Outcome) -> None:
        meta = cluster["metadata"]
        operator_metrics.count_losses(meta["namespace"], meta["name"], plan.events)
        if plan.status is not None:
            running = plan.status.get("phase") == PHASE_RUNNING
            operator_metrics.CLUSTER_RUNNING.labels(meta["namespace"], meta["name"]).set(int(running))

    def forget(self, request: Request) -> None:
        operator_metrics.forget_cluster(request.namespace, request.name)
        super().forget(request)


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
        .ignoring_own_status_echoes()  # its planner is a fixed point of its own status
        .owns(POD)
        .owns(SERVICE)
        .watches(DASK_WORKER_GROUP_KIND, cluster_of_group)
    )
    if settings.kueue.workloads:
        builder = builder.owns(WORKLOAD)
    reconciler = DaskClusterReconciler(manager, settings)
    controller = builder.with_options(max_concurrent_reconciles=concurrency, reconcile_timeout=60.0).complete(
        reconciler
    )
    enqueue_answers(reconciler, controller)
