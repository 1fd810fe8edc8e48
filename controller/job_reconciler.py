"""The DaskJob reconciler: cache -> plan_job -> create cluster and runner -> status -> delete the cluster.

Invariant: reads only from the cache; the status is written before the job's cluster is deleted, and the
plan derives completion from the runner pod, so an error anywhere in between is repaired by the next
reconcile (no #975 dead end). Deletes only the DaskCluster this job controls, by UID; never a finalizer.
"""

from __future__ import annotations

import structlog

from dask_operator.api.v1.names import job_cluster_name, job_runner_pod_name
from dask_operator.api.v1.types import JOB_STATUS_FAILED, JOB_STATUS_SUCCESSFUL
from dask_operator.controller import operator_metrics
from dask_operator.controller.execute import record_events
from dask_operator.controller.job import JobObservation, JobPlan, plan_job
from dask_operator.controller.kinds import DASK_CLUSTER_KIND, DASK_JOB_KIND
from dask_operator.controller.metadata import is_terminating
from dask_operator.controller.plans import ADOPTION_FIELD_MANAGER, Obj
from dask_operator.controller.reconciler import DaskReconciler
from dask_operator.controller.runtime.client import ApiError
from dask_operator.controller.runtime.kinds import POD
from dask_operator.controller.runtime.reconcile import Request, Result

log = structlog.get_logger("dask_operator.controller.job")


class DaskJobReconciler(DaskReconciler):
    def reconcile(self, request: Request) -> Result:
        job = self.cache.get(DASK_JOB_KIND, request.namespace, request.name)
        if job is None or is_terminating(job):
            self.status.forget(request.namespace, request.name)
            return Result()  # the garbage collector deletes the runner and the cluster
        now = self.clock()
        plan = plan_job(self.observe(job), now, self.settings.cluster_domain)
        self.create_children(plan)
        self.update_status(job, plan)
        self.delete_cluster(plan)
        return Result(requeue_after=plan.requeue_after)

    # -- steps -----------------------------------------------------------------------------------------

    def observe(self, job: Obj) -> JobObservation:
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        return JobObservation(
            job={**job, "status": self.status.observed(job)},
            cluster=self.cache.get(DASK_CLUSTER_KIND, namespace, job_cluster_name(name)),
            runner=self.cache.get(POD, namespace, job_runner_pod_name(name)),
        )

    def create_children(self, plan: JobPlan) -> None:
        """The cluster first (the runner's scheduler address names it), then the runner; both idempotent."""
        if plan.adopt_cluster is not None:
            self.applier.apply(plan.adopt_cluster, ADOPTION_FIELD_MANAGER)
        for obj in (plan.create_cluster, plan.create_runner):
            if obj is None:
                continue
            try:
                self.client.create(obj)
                log.info("created", kind=obj["kind"], object=obj["metadata"]["name"])
            except ApiError as error:
                if not error.already_exists:  # a stale cache: it exists, the next reconcile sees it
                    raise

    def update_status(self, job: Obj, plan: JobPlan) -> None:
        meta = job["metadata"]
        before = self.status.observed(job).get("jobStatus")
        if plan.status is not None and self.status.write(job, plan.status):
            after = plan.status.get("jobStatus")
            if after != before and after in (JOB_STATUS_SUCCESSFUL, JOB_STATUS_FAILED):
                operator_metrics.JOBS_FINISHED.labels(meta["namespace"], str(after)).inc()
        record_events(self.recorder, job, plan.events, self.settings.events_enabled)

    def delete_cluster(self, plan: JobPlan) -> None:
        deletion = plan.delete_cluster
        if deletion is None:
            return
        try:
            if self.client.delete(DASK_CLUSTER_KIND, deletion.namespace, deletion.name, uid=deletion.uid):
                log.info("deleted the job's cluster", cluster=deletion.name)
        except ApiError as error:
            if not error.conflict:  # 409: the UID precondition failed, that cluster is already gone
                raise
