"""The DaskAutoscaler reconciler: cache -> plan_autoscaler (asking the scheduler only when it is Ready)
-> adopt -> default group's replicas -> cooldown annotation -> status -> look again in POLL_SECONDS.

Invariant: reads only from the cache; the only object it scales is `<cluster>-default`, with its own field
manager; a cooldown it wrote holds even before the cache shows the annotation (remembered here per UID).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from dask_operator.api.v1.names import (
    ANNOTATION_COOLDOWN_UNTIL,
    default_worker_group_name,
    scheduler_service_name,
)
from dask_operator.controller import operator_metrics
from dask_operator.controller.autoscaler import (
    AutoscalerObservation,
    AutoscalerPlan,
    SchedulerTarget,
    plan_autoscaler,
    scheduler_pods_of,
)
from dask_operator.controller.execute import record_events
from dask_operator.controller.kinds import DASK_AUTOSCALER_KIND, DASK_CLUSTER_KIND, DASK_WORKER_GROUP_KIND
from dask_operator.controller.metadata import is_terminating
from dask_operator.controller.plans import ADOPTION_FIELD_MANAGER, AUTOSCALER_FIELD_MANAGER, Obj
from dask_operator.controller.reconciler import DaskReconciler
from dask_operator.controller.runtime.kinds import POD, SERVICE
from dask_operator.controller.runtime.reconcile import Request, Result
from dask_operator.controller.scheduler import SchedulerClient, SchedulerUnreachable, scheduler_endpoint
from dask_operator.controller.settings import OperatorSettings

log = structlog.get_logger("dask_operator.controller.autoscaler")


class DaskAutoscalerReconciler(DaskReconciler):
    def __init__(
        self, manager: Any, settings: OperatorSettings, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(manager, settings, clock)
        self._cooldowns: dict[tuple[str, str], tuple[str, float]] = {}  # (ns, name) -> (uid, until)
        self._lock = threading.Lock()

    def reconcile(self, request: Request) -> Result:
        autoscaler = self.cache.get(DASK_AUTOSCALER_KIND, request.namespace, request.name)
        if autoscaler is None or is_terminating(autoscaler):
            self._forget(request)
            return Result()  # the group keeps its last replicas (7D-48)
        now = self.clock()
        observation = self.observe(autoscaler)
        plan = plan_autoscaler(observation, now)
        if plan.needs_scheduler and observation.service is not None:
            target = self.scheduler_target(autoscaler, observation.service)
            plan = plan_autoscaler(dataclasses.replace(observation, scheduler=target), now)
        self.apply(autoscaler, plan)
        self.update_status(autoscaler, plan)
        return Result(requeue_after=plan.requeue_after)

    # -- steps -----------------------------------------------------------------------------------------

    def observe(self, autoscaler: Obj) -> AutoscalerObservation:
        meta = autoscaler["metadata"]
        namespace, cluster_name = meta["namespace"], autoscaler["spec"]["cluster"]
        cluster = self.cache.get(DASK_CLUSTER_KIND, namespace, cluster_name)
        scheduler_pods: list[Obj] = []
        if cluster is not None:
            scheduler_pods = scheduler_pods_of(self.cache.by_owner(POD, cluster["metadata"]["uid"]))
        with self._lock:
            remembered = self._cooldowns.get((namespace, meta["name"]))
        return AutoscalerObservation(
            autoscaler={**autoscaler, "status": self.status.observed(autoscaler)},
            cluster=cluster,
            scheduler_pods=scheduler_pods,
            service=self.cache.get(SERVICE, namespace, scheduler_service_name(cluster_name)),
            default_group=self.cache.get(
                DASK_WORKER_GROUP_KIND, namespace, default_worker_group_name(cluster_name)
            ),
            cooldown_until=remembered[1] if remembered and remembered[0] == meta["uid"] else None,
        )

    def scheduler_target(self, autoscaler: Obj, service: Obj) -> SchedulerTarget:
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

    def apply(self, autoscaler: Obj, plan: AutoscalerPlan) -> None:
        """The replicas before the cooldown: a lost cooldown delays nothing, a lost change would."""
        meta = autoscaler["metadata"]
        if plan.adopt is not None:
            self.applier.apply(plan.adopt, ADOPTION_FIELD_MANAGER)
        if plan.replicas_apply is not None:
            self.applier.apply(plan.replicas_apply, AUTOSCALER_FIELD_MANAGER)
        if plan.cooldown_apply is not None:
            self.applier.apply(plan.cooldown_apply, AUTOSCALER_FIELD_MANAGER)
            until = float(plan.cooldown_apply["metadata"]["annotations"][ANNOTATION_COOLDOWN_UNTIL])
            with self._lock:
                self._cooldowns[(meta["namespace"], meta["name"])] = (meta["uid"], until)
        if plan.scaled is not None:
            before, after = plan.scaled
            log.info("scaled", group=plan.replicas_apply and plan.replicas_apply["metadata"]["name"],
                     before=before, after=after)  # fmt: skip
            operator_metrics.AUTOSCALER_SCALINGS.labels(
                meta["namespace"], "up" if after > before else "down"
            ).inc()

    def update_status(self, autoscaler: Obj, plan: AutoscalerPlan) -> None:
        meta = autoscaler["metadata"]
        if plan.status is not None:
            self.status.write(autoscaler, plan.status)
            if "desiredWorkers" in plan.status:
                operator_metrics.AUTOSCALER_DESIRED.labels(meta["namespace"], meta["name"]).set(
                    plan.status["desiredWorkers"]
                )
        record_events(self.recorder, autoscaler, plan.events, self.settings.events_enabled)

    def _forget(self, request: Request) -> None:
        with self._lock:
            self._cooldowns.pop((request.namespace, request.name), None)
        self.status.forget(request.namespace, request.name)
        operator_metrics.forget_autoscaler(request.namespace, request.name)
