"""The DaskCluster reconciler: cache -> plan_cluster -> apply children -> status -> idle check -> requeue.

Invariant: reads only from the cache and writes only what differs (applies go through the manager's
applier, which skips intents already applied at the cached resourceVersion); talks to the scheduler only
when `spec.idleTimeout` is set; never adds a finalizer, so deleting a DaskCluster never waits for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
from dask_operator.controller.cluster import ClusterObservation, ClusterPlan, idle_decision, plan_cluster
from dask_operator.controller.execute import create_pods, delete_pods, record_events
from dask_operator.controller.expectations import Expectations
from dask_operator.controller.indexes import groups_of_cluster
from dask_operator.controller.kinds import DASK_CLUSTER_KIND
from dask_operator.controller.metadata import is_terminating
from dask_operator.controller.plans import FIELD_MANAGER, REPLICAS_FIELD_MANAGER, Obj
from dask_operator.controller.reconciler import DaskReconciler
from dask_operator.controller.runtime.client import ApiError
from dask_operator.controller.runtime.kinds import POD, SERVICE
from dask_operator.controller.runtime.reconcile import Request, Result
from dask_operator.controller.scheduler import SchedulerClient, SchedulerUnreachable, scheduler_endpoint
from dask_operator.controller.settings import OperatorSettings

log = structlog.get_logger("dask_operator.controller.cluster")


class DaskClusterReconciler(DaskReconciler):
    def __init__(
        self, manager: Any, settings: OperatorSettings, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(manager, settings, clock)
        self.expectations = Expectations()

    def reconcile(self, request: Request) -> Result:
        cluster = self.cache.get(DASK_CLUSTER_KIND, request.namespace, request.name)
        if cluster is None or is_terminating(cluster):
            self._forget(request, cluster)
            return Result()
        now = self.clock()
        observation = self.observe(cluster, now)
        plan = plan_cluster(observation, now, self.settings.cluster_domain)
        self.apply_children(cluster, plan, now)
        self.update_status(cluster, plan)
        return Result(requeue_after=self.check_idle(cluster, observation, plan, now))

    # -- steps -----------------------------------------------------------------------------------------

    def observe(self, cluster: Obj, now: float) -> ClusterObservation:
        meta = cluster["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta["uid"]
        owned = self.cache.by_owner(POD, uid)
        scheduler_pods = [
            p for p in owned if p["metadata"].get("labels", {}).get(LABEL_COMPONENT) == COMPONENT_SCHEDULER
        ]
        workers = [
            p
            for p in self.cache.by_label(POD, LABEL_CLUSTER_NAME, name, namespace)
            if p["metadata"].get("labels", {}).get(LABEL_COMPONENT) == COMPONENT_WORKER
        ]
        groups = groups_of_cluster(self.cache, namespace, name)
        _, gone = self.expectations.pending(uid, (), [p["metadata"]["uid"] for p in scheduler_pods], now)
        observed = {**cluster, "status": self.status.observed(cluster)}
        return ClusterObservation(
            cluster=observed,
            scheduler_pods=scheduler_pods,
            service=self.cache.get(SERVICE, namespace, scheduler_service_name(name)),
            groups=groups,
            worker_pods=workers,
            expected_gone=gone,
        )

    def apply_children(self, cluster: Obj, plan: ClusterPlan, now: float) -> None:
        uid = cluster["metadata"]["uid"]
        for intent in plan.applies:
            self.applier.apply(intent, FIELD_MANAGER)
        if plan.replicas_apply is not None:
            self.applier.apply(plan.replicas_apply, REPLICAS_FIELD_MANAGER)
        delete_pods(self.client, plan.delete_pods, self.expectations, uid, now)
        create_pods(self.client, plan.create_pods, self.expectations, uid, now)

    def update_status(self, cluster: Obj, plan: ClusterPlan) -> None:
        meta = cluster["metadata"]
        if plan.status is not None:
            self.status.write(cluster, plan.status)
            operator_metrics.CLUSTER_RUNNING.labels(meta["namespace"], meta["name"]).set(
                1 if plan.status.get("phase") == PHASE_RUNNING else 0
            )
        record_events(self.recorder, cluster, plan.events, self.settings.events_enabled)

    def check_idle(
        self, cluster: Obj, obs: ClusterObservation, plan: ClusterPlan, now: float
    ) -> float | None:
        """Ask the scheduler whether it is idle (only with spec.idleTimeout); delete the cluster when it
        has been idle for longer. Returns when to look again."""
        if not int(cluster.get("spec", {}).get("idleTimeout") or 0):
            return None
        meta = cluster["metadata"]
        running = plan.status is not None and plan.status.get("phase") == PHASE_RUNNING
        idle_since, reachable = None, False
        if running and obs.service is not None:
            scheduler = SchedulerClient(
                scheduler_endpoint(obs.service), timeout=self.settings.scheduler_timeout
            )
            try:
                idle_since, reachable = scheduler.check_idle(), True
            except SchedulerUnreachable as error:
                log.info("scheduler unreachable; not idle", error=str(error))
            operator_metrics.SCHEDULER_REACHABLE.labels(meta["namespace"], meta["name"]).set(int(reachable))
        decision = idle_decision(cluster, idle_since, reachable, now)
        if decision.delete:
            if decision.event is not None:
                record_events(self.recorder, cluster, [decision.event], self.settings.events_enabled)
            try:
                self.client.delete(DASK_CLUSTER_KIND, meta["namespace"], meta["name"], uid=meta["uid"])
            except ApiError as error:
                if not error.conflict:
                    raise
        return decision.requeue_after

    def _forget(self, request: Request, cluster: Obj | None) -> None:
        if cluster is not None:
            self.expectations.forget(cluster["metadata"]["uid"])
        self.status.forget(request.namespace, request.name)
        operator_metrics.forget_cluster(request.namespace, request.name)
