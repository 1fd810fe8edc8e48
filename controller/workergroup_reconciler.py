"""The DaskWorkerGroup reconciler: cache -> plan_group (asking the scheduler only when a worker must go)
-> adopt, create, delete, retire -> status -> requeue.

Invariant: the only pods ever deleted are this group's: finished ones, ones that never joined the scheduler,
ones the scheduler confirmed it retired, or (after the cluster's force timeout, with a Warning Event) ones a
scale-down has waited for too long because the scheduler could not be reached.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import structlog

from dask_operator.api.v1.names import scheduler_service_name
from dask_operator.controller import operator_metrics
from dask_operator.controller.execute import create_pods, delete_pods, record_events
from dask_operator.controller.expectations import Expectations
from dask_operator.controller.kinds import DASK_CLUSTER_KIND, DASK_WORKER_GROUP_KIND
from dask_operator.controller.metadata import is_terminating
from dask_operator.controller.plans import ADOPTION_FIELD_MANAGER, Obj
from dask_operator.controller.reconciler import DaskReconciler
from dask_operator.controller.runtime.kinds import POD, SERVICE
from dask_operator.controller.runtime.reconcile import Request, Result, remaining_time
from dask_operator.controller.scheduler import SchedulerClient, SchedulerUnreachable, scheduler_endpoint
from dask_operator.controller.settings import OperatorSettings
from dask_operator.controller.workergroup import (
    FORCE_SCALE_DOWN_ANNOTATION,
    GroupObservation,
    GroupPlan,
    GroupSettings,
    SchedulerView,
    plan_group,
    retired_deletions,
)

log = structlog.get_logger("dask_operator.controller.workergroup")

RETRY_RETIREMENT_SECONDS = 5.0


class DaskWorkerGroupReconciler(DaskReconciler):
    def __init__(
        self, manager: Any, settings: OperatorSettings, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(manager, settings, clock)
        self.expectations = Expectations()
        self._cluster_of: dict[tuple[str, str], str] = {}  # for removing metrics of deleted groups

    def reconcile(self, request: Request) -> Result:
        group = self.cache.get(DASK_WORKER_GROUP_KIND, request.namespace, request.name)
        if group is None or is_terminating(group):
            self._forget(request, group)
            return Result()
        now = self.clock()
        observation = self.observe(group, now)
        if observation.cluster is not None and is_terminating(observation.cluster):
            return Result()  # the garbage collector is removing everything
        settings = self.group_settings(observation.cluster)
        plan = plan_group(observation, now, settings)
        if plan.needs_scheduler and observation.cluster is not None:
            view = self.scheduler_view(observation.cluster)
            plan = plan_group(dataclasses.replace(observation, scheduler=view), now, settings)
        requeue = self.apply(group, plan, now)
        self.update_status(group, plan)
        delays = [d for d in (plan.requeue_after, requeue) if d is not None]
        return Result(requeue_after=min(delays) if delays else None)

    # -- steps -----------------------------------------------------------------------------------------

    def observe(self, group: Obj, now: float) -> GroupObservation:
        meta = group["metadata"]
        pods = self.cache.by_owner(POD, meta["uid"])
        live_uids = [p["metadata"]["uid"] for p in pods if not is_terminating(p)]
        present, gone = self.expectations.pending(
            meta["uid"], [p["metadata"]["name"] for p in pods], live_uids, now
        )
        cluster = self.cache.get(
            DASK_CLUSTER_KIND, meta["namespace"], group.get("spec", {}).get("cluster", "")
        )
        status = self.status.observed(group)
        return GroupObservation(
            group=group,
            cluster=cluster,
            pods=pods,
            expected_present=present,
            expected_gone=gone,
            previous_conditions=status.get("conditions"),
        )

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
        service = self.cache.get(SERVICE, meta["namespace"], scheduler_service_name(meta["name"]))
        if service is None:
            return SchedulerView(None, "the scheduler Service does not exist")
        try:
            workers = self._scheduler(service).get_workers()
            view = SchedulerView(tuple(workers))
        except SchedulerUnreachable as error:
            view = SchedulerView(None, str(error))
        operator_metrics.SCHEDULER_REACHABLE.labels(meta["namespace"], meta["name"]).set(
            int(view.workers is not None)
        )
        return view

    def apply(self, group: Obj, plan: GroupPlan, now: float) -> float | None:
        """Carry out the plan; returns a requeue delay when a retirement could not be completed."""
        meta = group["metadata"]
        owner = meta["uid"]
        if plan.adopt is not None:
            self.applier.apply(plan.adopt, ADOPTION_FIELD_MANAGER)
        forced = sum(1 for d in plan.delete_pods if d.reason.startswith("scale-down forced"))
        never = sum(1 for d in plan.delete_pods if d.reason.startswith("scale-down,"))
        delete_pods(self.client, plan.delete_pods, self.expectations, owner, now)
        if forced:
            operator_metrics.RETIREMENTS.labels(meta["namespace"], "forced").inc(forced)
        if never:
            operator_metrics.RETIREMENTS.labels(meta["namespace"], "never_joined").inc(never)
        create_pods(self.client, plan.create_pods, self.expectations, owner, now)
        if plan.notes:
            log.info("planned", group=meta["name"], notes=list(plan.notes))
        if plan.retire is None:
            return None
        return self.retire(group, plan, now)

    def retire(self, group: Obj, plan: GroupPlan, now: float) -> float | None:
        assert plan.retire is not None
        meta = group["metadata"]
        cluster = self.cache.get(DASK_CLUSTER_KIND, meta["namespace"], group["spec"]["cluster"])
        service = (
            self.cache.get(SERVICE, meta["namespace"], scheduler_service_name(group["spec"]["cluster"]))
            if cluster is not None
            else None
        )
        if service is None:
            return RETRY_RETIREMENT_SECONDS
        names = [w.name for w in plan.retire.workers]
        log.info("retiring workers", group=meta["name"], workers=names)
        try:
            retired = self._scheduler(service).retire_workers(plan.retire.workers)
        except SchedulerUnreachable as error:
            log.warning("retirement failed; will retry", group=meta["name"], error=str(error))
            operator_metrics.RETIREMENTS.labels(meta["namespace"], "failed").inc(len(names))
            return RETRY_RETIREMENT_SECONDS
        operator_metrics.RETIREMENTS.labels(meta["namespace"], "retired").inc(len(retired))
        delete_pods(self.client, retired_deletions(plan.retire, retired), self.expectations, meta["uid"], now)
        if len(retired) < len(names):
            log.info("scheduler kept some workers (data not movable yet)", kept=sorted(set(names) - retired))
            return RETRY_RETIREMENT_SECONDS
        return None

    def update_status(self, group: Obj, plan: GroupPlan) -> None:
        meta = group["metadata"]
        if plan.status is not None:
            self.status.write(group, plan.status)
            labels = (meta["namespace"], group["spec"]["cluster"], meta["name"])
            self._cluster_of[(meta["namespace"], meta["name"])] = group["spec"]["cluster"]
            operator_metrics.WORKERS_DESIRED.labels(*labels).set(
                int(group["spec"]["worker"].get("replicas", 1))
            )
            operator_metrics.WORKERS_READY.labels(*labels).set(plan.status.get("readyReplicas", 0))
            operator_metrics.WORKERS_UPDATED.labels(*labels).set(plan.status.get("updatedReplicas", 0))
        record_events(self.recorder, group, plan.events, self.settings.events_enabled)

    # -- helpers ---------------------------------------------------------------------------------------

    def _scheduler(self, service: Obj) -> SchedulerClient:
        retire_timeout = self.settings.retire_timeout
        left = remaining_time()
        if left is not None:
            retire_timeout = max(1.0, min(retire_timeout, left - 2.0))
        return SchedulerClient(
            scheduler_endpoint(service),
            timeout=self.settings.scheduler_timeout,
            retire_timeout=retire_timeout,
        )

    def _forget(self, request: Request, group: Obj | None) -> None:
        if group is not None:
            self.expectations.forget(group["metadata"]["uid"])
        cluster = self._cluster_of.pop((request.namespace, request.name), None)
        if cluster is not None:
            operator_metrics.forget_group(request.namespace, cluster, request.name)
        self.status.forget(request.namespace, request.name)
