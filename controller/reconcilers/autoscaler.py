"""The DaskAutoscaler reconciler on the template (controller/reconciler.py): observe the autoscaler, its
cluster's scheduler pod and Service and its worker groups from the cache; plan_autoscaler, asking the
scheduler's demand (off-thread) only when it is Ready; execute; look again in POLL_SECONDS; and its
wiring.

Invariant: reads only from the cache; the only object it scales is its target group (`spec.workerGroup`,
else `<cluster>-default`), with its own field manager; a cooldown it wrote holds before the next decision because the runtime does not reconcile again
until the cache shows that write. Held by test/e2e/test_autoscaler.py, test/unit/test_autoscaler.py and
test/unit/test_reconciler.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import structlog

from dask_operator.api.v1.names import scheduler_service_name
from dask_operator.controller import indexes, operator_metrics
from dask_operator.controller.contract.demand import DemandAnswer
from dask_operator.controller.contract.objects import Obj
from dask_operator.controller.contract.plans import AUTOSCALER_FIELD_MANAGER, Apply, Plan, Question
from dask_operator.controller.executor import Outcome
from dask_operator.controller.kinds import DASK_AUTOSCALER_KIND, DASK_CLUSTER_KIND, DASK_WORKER_GROUP_KIND
from dask_operator.controller.planners.autoscaler import (
    AutoscalerObservation,
    SchedulerTarget,
    demand_warrant,
    plan_autoscaler,
    scheduler_pods_of,
    target_group_name,
)
from dask_operator.controller.reconciler import (
    DaskReconciler,
    Mapper,
    enqueue_answers,
    namespace_and_name,
    requests_for,
)
from dask_operator.controller.scheduler_calls import Answer
from dask_operator.controller.settings import OperatorSettings
from dask_operator.runtime.builder import ControllerBuilder
from dask_operator.runtime.kinds import POD, SERVICE
from dask_operator.runtime.predicate import GenerationChanged
from dask_operator.runtime.reconcile import Request

log = structlog.get_logger("dask_operator.controller.autoscaler")


class DaskAutoscalerReconciler(DaskReconciler[AutoscalerObservation]):
    kind = DASK_AUTOSCALER_KIND

    def observe(self, autoscaler: Obj) -> AutoscalerObservation:
        namespace, cluster_name = autoscaler["metadata"]["namespace"], self.cluster_name(autoscaler)
        cluster = self.cache.get(DASK_CLUSTER_KIND, namespace, cluster_name)
        pods = self.cache.by_owner(POD, cluster["metadata"]["uid"]) if cluster is not None else []
        group = self.cache.get(DASK_WORKER_GROUP_KIND, namespace, target_group_name(autoscaler))
        return AutoscalerObservation(
            autoscaler=autoscaler,
            cluster=cluster,
            scheduler_pods=scheduler_pods_of(pods),
            service=self.cache.get(SERVICE, namespace, scheduler_service_name(cluster_name)),
            group=group,
            group_pods=self.cache.by_owner(POD, group["metadata"]["uid"]) if group is not None else [],
            groups=indexes.groups_of_cluster(self.cache, namespace, cluster_name),
        )

    def plan(self, observed: AutoscalerObservation, now: float) -> Plan:
        return plan_autoscaler(observed, now)

    def with_answer(
        self, observed: AutoscalerObservation, question: Question, answer: Answer
    ) -> AutoscalerObservation:
        if answer.error is not None:
            return dataclasses.replace(observed, scheduler=SchedulerTarget(None, str(answer.error)))
        said: DemandAnswer = answer.value
        target = SchedulerTarget(said.adaptive_target, demand=said.demand, why_no_demand=said.why_no_demand)
        return dataclasses.replace(observed, scheduler=target)

    def forget(self, request: Request) -> None:
        operator_metrics.forget_autoscaler(request.namespace, request.name)  # the group keeps its replicas
        super().forget(request)

    def record(self, autoscaler: Obj, observed: AutoscalerObservation, plan: Plan, outcome: Outcome) -> None:
        meta = autoscaler["metadata"]
        scheduler, target = observed.scheduler, None
        if scheduler is not None and scheduler.demand is not None and observed.group is not None:
            target = demand_warrant(observed, observed.group, scheduler.demand)
        elif scheduler is not None:
            target = scheduler.workers
        if target is not None:
            operator_metrics.AUTOSCALER_TARGET.labels(meta["namespace"], meta["name"]).set(target)
        desired = (plan.status or {}).get("desiredWorkers")
        if desired is not None:
            operator_metrics.AUTOSCALER_DESIRED.labels(meta["namespace"], meta["name"]).set(desired)
        group = observed.group or {}
        current = int((group.get("spec") or {}).get("worker", {}).get("replicas", 1))
        for step in plan.of_type(Apply):
            replicas = step.obj.get("spec", {}).get("worker", {}).get("replicas")
            if (
                step.field_manager == AUTOSCALER_FIELD_MANAGER
                and replicas is not None
                and replicas != current
            ):
                direction = "up" if replicas > current else "down"
                operator_metrics.AUTOSCALER_SCALINGS.labels(meta["namespace"], direction).inc()
                log.info("scaled", group=step.obj["metadata"]["name"], before=current, after=replicas)


def autoscalers_of_cluster(manager: Any) -> Mapper:
    """Map a DaskCluster to the DaskAutoscalers that name it in spec.cluster."""
    return requests_for(
        lambda cluster: indexes.autoscalers_of_cluster(manager.cache, *namespace_and_name(cluster))
    )


def setup_with_manager(manager: Any, settings: OperatorSettings, concurrency: int) -> None:
    """DaskAutoscalers; the DaskCluster they name (its appearance lets a waiting autoscaler adopt it; the
    rest is polled every few seconds)."""
    reconciler = DaskAutoscalerReconciler(manager, settings)
    controller = (
        ControllerBuilder(manager)
        .named("daskautoscaler")
        .for_(DASK_AUTOSCALER_KIND)
        .ignoring_own_status_echoes()  # its planner is a fixed point of its own status
        .watches(DASK_CLUSTER_KIND, autoscalers_of_cluster(manager), predicates=[GenerationChanged()])
        .with_options(max_concurrent_reconciles=concurrency, reconcile_timeout=60.0)
        .complete(reconciler)
    )
    enqueue_answers(reconciler, controller)
