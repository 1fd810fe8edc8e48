"""The DaskJob reconciler on the template (controller/reconciler.py): observe the job, its cluster and runner
from the cache; plan_job (it asks no scheduler anything); execute; and its wiring.

Invariant: reads only from the cache; the plan derives completion from the runner pod, so an error anywhere
is repaired by the next reconcile, and a terminal jobStatus is final. Deletes only the DaskCluster this job
controls, by UID (never the one spec.clusterRef names), and the job itself once its TTL has passed; never a
finalizer. Held by test/e2e/test_job.py, test/unit/test_job.py and
test/unit/test_reconciler.py.
"""

from __future__ import annotations

from typing import Any

from dask_operator.api.v1.names import LABEL_CLUSTER_NAME, job_cluster_name, job_runner_pod_name
from dask_operator.api.v1.types import JOB_TERMINAL_STATUSES
from dask_operator.controller import operator_metrics
from dask_operator.controller.contract.hold import hold_of
from dask_operator.controller.contract.objects import Obj
from dask_operator.controller.contract.plans import Plan
from dask_operator.controller.executor import Outcome
from dask_operator.controller.kinds import DASK_CLUSTER_KIND, DASK_JOB_KIND, WORKLOAD
from dask_operator.controller.kueue_access import priority_classes, queueing_of
from dask_operator.controller.planners.job import JobObservation, plan_job
from dask_operator.controller.reconciler import DaskReconciler, Mapper, namespace_and_name, requests_for
from dask_operator.controller.settings import OperatorSettings
from dask_operator.runtime.builder import ControllerBuilder
from dask_operator.runtime.kinds import POD
from dask_operator.runtime.predicate import GenerationChanged


class DaskJobReconciler(DaskReconciler[JobObservation]):
    kind = DASK_JOB_KIND

    def observe(self, job: Obj) -> JobObservation:
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        queue = queueing_of(self.cache, self.settings.kueue, job)
        ref = job["spec"].get("clusterRef") or {}
        cluster_pods = self.cache.by_label(POD, LABEL_CLUSTER_NAME, job_cluster_name(name), namespace)
        return JobObservation(
            job=job,
            cluster=self.cache.get(DASK_CLUSTER_KIND, namespace, ref.get("name") or job_cluster_name(name)),
            runner=self.cache.get(POD, namespace, job_runner_pod_name(name)),
            queue=queue,
            pods_left=len(cluster_pods) if queue is not None else 0,
            priority_classes=priority_classes(self.cache, self.settings.kueue) if queue is not None else {},
            hold=hold_of(job),
        )

    def plan(self, observed: JobObservation, now: float) -> Plan:
        return plan_job(observed, now, self.settings.cluster_domain)

    def record(self, job: Obj, observed: JobObservation, plan: Plan, outcome: Outcome) -> None:
        after = (plan.status or {}).get("jobStatus")
        finished = after in JOB_TERMINAL_STATUSES and after != (job.get("status") or {}).get("jobStatus")
        if outcome.status_written and finished:
            operator_metrics.JOBS_FINISHED.labels(job["metadata"]["namespace"], str(after)).inc()


def jobs_on_cluster(manager: Any) -> Mapper:
    """Map a DaskCluster to the DaskJobs whose spec.clusterRef names it (they do not own it)."""

    def jobs(cluster: Obj) -> list[Obj]:
        namespace, name = namespace_and_name(cluster)
        return [
            j
            for j in manager.cache.list(DASK_JOB_KIND, namespace)
            if (j.get("spec", {}).get("clusterRef") or {}).get("name") == name
        ]

    return requests_for(jobs)


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
