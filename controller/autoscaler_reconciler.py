"""The DaskAutoscaler reconciler: fetch from the cache, plan_autoscaler (asking the scheduler for its
adaptive target only when it is Ready), execute, look again in POLL_SECONDS; and its wiring.

Invariant: reads only from the cache; the only object it scales is `<cluster>-default`, with its own field
manager; a cooldown it wrote holds before the next decision because the runtime does not reconcile again
until the cache shows that write. Held by test/e2e/test_autoscaler.py and test/unit/test_autoscaler.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import structlog

from dask_operator.api.v1.names import default_worker_group_name, scheduler_service_name
from dask_operator.controller import indexes, operator_metrics
from dask_operator.controller.autoscaler import (
    AutoscalerObservation,
    SchedulerTarget,
    plan_autoscaler,
    scheduler_pods_of,
)
from dask_operator.controller.children import is_terminating
from dask_operator.controller.kinds import DASK_AUTOSCALER_KIND, DASK_CLUSTER_KIND, DASK_WORKER_GROUP_KIND
from dask_operator.controller.objects import Obj
from dask_operator.controller.plans import AUTOSCALER_FIELD_MANAGER, Apply, Question
from dask_operator.controller.reconciler import DaskReconciler
from dask_operator.controller.runtime.builder import ControllerBuilder
from dask_operator.controller.runtime.kinds import POD, SERVICE
from dask_operator.controller.runtime.predicate import GenerationChanged
from dask_operator.controller.runtime.reconcile import Request, Result
from dask_operator.controller.scheduler import SchedulerClient, SchedulerUnreachable, scheduler_endpoint
from dask_operator.controller.settings import OperatorSettings

log = structlog.get_logger("dask_operator.controller.autoscaler")


class DaskAutoscalerReconciler(DaskReconciler):
    def reconcile(self, request: Request) -> Result:
        autoscaler = self.cache.get(DASK_AUTOSCALER_KIND, request.namespace, request.name)
        if autoscaler is None or is_terminating(autoscaler):
            operator_metrics.forget_autoscaler(request.namespace, request.name)
            return Result()  # the group keeps its last replicas
        now = self.clock()
        observation = self.observe(autoscaler)
        plan = plan_autoscaler(observation, now)
        if plan.question is Question.ADAPTIVE_TARGET and observation.service is not None:
            target = self.ask_target(autoscaler, observation.service)
            plan = plan_autoscaler(dataclasses.replace(observation, scheduler=target), now)
        _, result = self.execute(autoscaler, plan, now)
        self.count(autoscaler, observation, plan.of_type(Apply), (plan.status or {}).get("desiredWorkers"))
        return result

    def observe(self, autoscaler: Obj) -> AutoscalerObservation:
        namespace, cluster_name = autoscaler["metadata"]["namespace"], autoscaler["spec"]["cluster"]
        cluster = self.cache.get(DASK_CLUSTER_KIND, namespace, cluster_name)
        pods = self.cache.by_owner(POD, cluster["metadata"]["uid"]) if cluster is not None else []
        return AutoscalerObservation(
            autoscaler=autoscaler,
            cluster=cluster,
            scheduler_pods=scheduler_pods_of(pods),
            service=self.cache.get(SERVICE, namespace, scheduler_service_name(cluster_name)),
            default_group=self.cache.get(
                DASK_WORKER_GROUP_KIND, namespace, default_worker_group_name(cluster_name)
            ),
        )

    def ask_target(self, autoscaler: Obj, service: Obj) -> SchedulerTarget:
        meta = autoscaler["metadata"]
        scheduler = SchedulerClient(scheduler_endpoint(service), timeout=self.settings.scheduler_timeout)
        try:
            target = SchedulerTarget(scheduler.adaptive_target())
        except SchedulerUnreachable as error:
            log.info("scheduler unreachable; not autoscaling", error=str(error))
            target = SchedulerTarget(None, str(error))
        reachable = operator_metrics.SCHEDULER_REACHABLE.labels(
            meta["namespace"], autoscaler["spec"]["cluster"]
        )
        reachable.set(int(target.workers is not None))
        if target.workers is not None:
            operator_metrics.AUTOSCALER_TARGET.labels(meta["namespace"], meta["name"]).set(target.workers)
        return target

    def count(self, autoscaler: Obj, obs: AutoscalerObservation, applies: Any, desired: int | None) -> None:
        meta = autoscaler["metadata"]
        if desired is not None:
            operator_metrics.AUTOSCALER_DESIRED.labels(meta["namespace"], meta["name"]).set(desired)
        current = int(((obs.default_group or {}).get("spec") or {}).get("worker", {}).get("replicas", 1))
        for step in applies:
            replicas = step.obj.get("spec", {}).get("worker", {}).get("replicas")
            if (
                step.field_manager == AUTOSCALER_FIELD_MANAGER
                and replicas is not None
                and replicas != current
            ):
                direction = "up" if replicas > current else "down"
                operator_metrics.AUTOSCALER_SCALINGS.labels(meta["namespace"], direction).inc()
                log.info("scaled", group=step.obj["metadata"]["name"], before=current, after=replicas)


def autoscalers_of_cluster(manager: Any) -> Any:
    """Map a DaskCluster to the DaskAutoscalers that name it in spec.cluster."""

    def mapper(cluster: Obj) -> list[Request]:
        meta = cluster["metadata"]
        return [
            Request(meta["namespace"], a["metadata"]["name"])
            for a in indexes.autoscalers_of_cluster(manager.cache, meta["namespace"], meta["name"])
        ]

    return mapper


def setup_with_manager(manager: Any, settings: OperatorSettings, concurrency: int) -> None:
    """DaskAutoscalers; the DaskCluster they name (its appearance lets a waiting autoscaler adopt it; the
    rest is polled every few seconds)."""
    (
        ControllerBuilder(manager)
        .named("daskautoscaler")
        .for_(DASK_AUTOSCALER_KIND)
        .watches(DASK_CLUSTER_KIND, autoscalers_of_cluster(manager), predicates=[GenerationChanged()])
        .with_options(max_concurrent_reconciles=concurrency, reconcile_timeout=60.0)
        .complete(DaskAutoscalerReconciler(manager, settings))
    )
