"""The DaskJob reconciler: fetch the job, its cluster and runner from the cache, plan_job, execute,
requeue; and its wiring.

Invariant: reads only from the cache; the plan derives completion from the runner pod, so an error anywhere
is repaired by the next reconcile, and a terminal jobStatus is final. Deletes only the DaskCluster this job
controls, by UID (never the one spec.clusterRef names), and the job itself once its TTL has passed; never a
finalizer. Held by test/e2e/test_job.py and test/unit/test_job.py.
"""

from __future__ import annotations

from typing import Any

from dask_operator.api.v1.names import LABEL_CLUSTER_NAME, job_cluster_name, job_runner_pod_name
from dask_operator.api.v1.types import JOB_TERMINAL_STATUSES
from dask_operator.controller import operator_metrics
from dask_operator.controller.children import is_terminating
from dask_operator.controller.hold import hold_of
from dask_operator.controller.job import JobObservation, plan_job
from dask_operator.controller.kinds import DASK_CLUSTER_KIND, DASK_JOB_KIND, WORKLOAD
from dask_operator.controller.kueue_access import priority_classes, queueing_of
from dask_operator.controller.objects import Obj
from dask_operator.controller.reconciler import DaskReconciler
from dask_operator.controller.runtime.builder import ControllerBuilder
from dask_operator.controller.runtime.kinds import POD
from dask_operator.controller.runtime.predicate import GenerationChanged
from dask_operator.controller.runtime.reconcile import Request, Result
from dask_operator.controller.settings import OperatorSettings


class DaskJobReconciler(DaskReconciler):
    def reconcile(self, request: Request) -> Result:
        job = self.cache.get(DASK_JOB_KIND, request.namespace, request.name)
        if job is None or is_terminating(job):
            return Result()  # the garbage collector deletes the runner and the cluster
        now = self.clock()
        queue = queueing_of(self.cache, self.settings.kueue, job)
        ref = job["spec"].get("clusterRef") or {}
        observation = JobObservation(
            job=job,
            cluster=self.cache.get(
                DASK_CLUSTER_KIND, request.namespace, ref.get("name") or job_cluster_name(request.name)
            ),
            runner=self.cache.get(POD, request.namespace, job_runner_pod_name(request.name)),
            queue=queue,
            pods_left=len(
                self.cache.by_label(
                    POD, LABEL_CLUSTER_NAME, job_cluster_name(request.name), request.namespace
                )
            )
            if queue is not None
            else 0,
            priority_classes=priority_classes(self.cache, self.settings.kueue) if queue is not None else {},
            hold=hold_of(job),
        )
        plan = plan_job(observation, now, self.settings.cluster_domain)
        outcome, result = self.execute(job, plan, now)
        after = (plan.status or {}).get("jobStatus")
        finished = after in JOB_TERMINAL_STATUSES and after != (job.get("status") or {}).get("jobStatus")
        if outcome.status_written and finished:
            operator_metrics.JOBS_FINISHED.labels(request.namespace, str(after)).inc()
        return result


def jobs_on_cluster(manager: Any) -> Any:
    """Map a DaskCluster to the DaskJobs whose spec.clusterRef names it (they do not own it)."""

    def mapper(cluster: Obj) -> list[Request]:
        meta = cluster["metadata"]
        return [
            Request(meta["namespace"], j["metadata"]["name"])
            for j in manager.cache.list(DASK_JOB_KIND, meta["namespace"])
            if (j.get("spec", {}).get("clusterRef") or {}).get("name") == meta["name"]
        ]

    return mapper


def setup_with_manager(manager: Any, settings: OperatorSettings, concurrency: int) -> None:
    """DaskJobs; their runner Pod; their DaskCluster, or the one spec.clusterRef names (when it appears,
    goes, starts terminating or its spec changes, not on each of its status changes); their Kueue Workload."""
    builder = (
        ControllerBuilder(manager)
        .named("daskjob")
        .for_(DASK_JOB_KIND)
        .owns(POD)
        .owns(DASK_CLUSTER_KIND, predicates=[GenerationChanged()])
        .watches(DASK_CLUSTER_KIND, jobs_on_cluster(manager), predicates=[GenerationChanged()])
    )
    if settings.kueue.workloads:
        builder = builder.owns(WORKLOAD)  # admission, eviction
    builder.with_options(max_concurrent_reconciles=concurrency).complete(DaskJobReconciler(manager, settings))
