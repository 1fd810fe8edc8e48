"""Desired state of a DaskJob: its DaskCluster, its runner Pod, and the job status they add up to.

Invariant: pure functions of the observed objects and `now`. jobStatus only moves forward
(JobCreated -> ClusterCreated -> Running -> Successful | Failed) and a terminal status is final: from then on
a plan never creates anything, it only deletes the job's own cluster (UID precondition) until it is gone.
The one way back is a hold (a job behind Kueue not admitted, or evicted): no cluster and no runner exist while
it lasts, and the job is JobCreated again until admitted.
The terminal state is derived from the runner pod's phase, not from the cluster, so a cluster already deleted
can never block completion (an upstream dead end). Every write a plan asks for is idempotent.

Deliberate choices:
* The cluster and the runner are created once from the job's spec (like a Job's pods), never re-applied:
  `kubectl scale daskcluster <job>` on a job's cluster is respected, as in the reference.
* `spec.cluster.spec.idleTimeout` is NOT copied to the job's cluster: the cluster
  lives exactly as long as the runner, and an idle timeout would delete it under a runner that is between
  computations, failing the job. `spec.cluster.metadata` is honoured (our CRD keeps it; the reference's
  schema pruned it).
* A runner pod that disappears after it started fails the job (reason RunnerLost) instead of being re-run.
Held by test/unit/test_job.py.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dask_operator.api.v1.group import API_VERSION
from dask_operator.api.v1.names import (
    COMPONENT_JOB_RUNNER,
    DASK_CLUSTER,
    DASK_JOB,
    DEFAULT_CLUSTER_DOMAIN,
    ISTIO_SIDECAR_INJECT_VALUE,
    LABEL_CLUSTER_NAME,
    LABEL_COMPONENT,
    LABEL_ISTIO_SIDECAR_INJECT,
    job_cluster_name,
    job_runner_pod_name,
)
from dask_operator.api.v1.types import (
    CONDITION_COMPLETE,
    CONDITION_DEGRADED,
    CONDITION_FAILED,
    CONDITION_PROGRESSING,
    CONDITION_READY,
    JOB_STATUS_CLUSTER_CREATED,
    JOB_STATUS_FAILED,
    JOB_STATUS_JOB_CREATED,
    JOB_STATUS_RUNNING,
    JOB_STATUS_SUCCESSFUL,
    JOB_TERMINAL_STATUSES,
)
from dask_operator.controller.children import (
    adoption,
    child_metadata,
    is_controlled_by,
    is_terminating,
    owned_child,
    with_env_defaults,
)
from dask_operator.controller.cluster import cluster_scheduler_address
from dask_operator.controller.conditions import (
    CONDITION_REPLICA_FAILURE,
    Condition,
    EventSpec,
    condition_events,
    find_condition,
    merge_conditions,
)
from dask_operator.controller.kueue import (
    Queueing,
    admission_events,
    admitted_condition,
    desired_workload,
    job_pod_sets,
    workload_steps,
)
from dask_operator.controller.objects import Obj, parse_rfc3339, rfc3339
from dask_operator.controller.plans import (
    ADOPTION_FIELD_MANAGER,
    Apply,
    Cause,
    Create,
    Delete,
    Emit,
    Plan,
    Ref,
    SetStatus,
    Step,
)
from dask_operator.controller.pods import pod_failure
from dask_operator.controller.workergroup import SCHEDULER_ADDRESS_ENV

# How soon to look again while waiting for an object this job does not own to go away.
WAIT_SECONDS = 2.0
# A runner the API server keeps refusing (a quota, admission) fails the job after this long, so the job's
# cluster is not left running for a runner that never comes.
RUNNER_REFUSED_TIMEOUT = 600.0

_RANK = {
    None: 0,
    JOB_STATUS_JOB_CREATED: 1,
    JOB_STATUS_CLUSTER_CREATED: 2,
    JOB_STATUS_RUNNING: 3,
    JOB_STATUS_SUCCESSFUL: 4,
    JOB_STATUS_FAILED: 4,
}


# -- children ------------------------------------------------------------------------------------------


def desired_job_cluster(job: Mapping[str, Any], queue: Queueing | None = None) -> Obj:
    """DaskCluster `<job>`: `spec.cluster.spec`'s scheduler and worker (no idleTimeout), owned by the job.

    Labels: the job's, then `spec.cluster.metadata.labels`, then `dask.org/cluster-name`; annotations: the
    job's (minus kubectl/kopf bookkeeping), then `spec.cluster.metadata.annotations`. Behind Kueue, the
    scheduler and worker pods get the node selectors and tolerations of their admitted flavors.
    """
    meta = job["metadata"]
    name = job_cluster_name(meta["name"])
    cluster = job["spec"]["cluster"]
    labels, annotations = child_metadata(job, cluster.get("metadata"), {LABEL_CLUSTER_NAME: name})
    spec = cluster["spec"]
    return owned_child(
        job,
        API_VERSION,
        DASK_CLUSTER.kind,
        name,
        (labels, annotations),
        _placed(
            {"scheduler": copy.deepcopy(spec["scheduler"]), "worker": copy.deepcopy(spec["worker"])}, queue
        ),
    )


def _placed(cluster_spec: Obj, queue: Queueing | None) -> Obj:
    if queue is None:
        return cluster_spec
    for part, pod_set in (("scheduler", "scheduler"), ("worker", "worker")):
        cluster_spec[part]["spec"] = queue.placement(pod_set).apply_to(cluster_spec[part]["spec"])
    return cluster_spec


def desired_runner_pod(
    job: Mapping[str, Any], cluster_domain: str = DEFAULT_CLUSTER_DOMAIN, queue: Queueing | None = None
) -> Obj:
    """Pod `<job>-runner` from `spec.job.spec`; each container gets DASK_SCHEDULER_ADDRESS unless it sets it
    (init containers do not: the scheduler is not up before the runner starts)."""
    meta = job["metadata"]
    name = meta["name"]
    runner = job["spec"]["job"]
    labels, annotations = child_metadata(
        job,
        runner.get("metadata"),
        {
            LABEL_CLUSTER_NAME: job_cluster_name(name),
            LABEL_COMPONENT: COMPONENT_JOB_RUNNER,
            LABEL_ISTIO_SIDECAR_INJECT: ISTIO_SIDECAR_INJECT_VALUE,
        },
    )
    spec = copy.deepcopy(runner["spec"])
    address = cluster_scheduler_address(desired_job_cluster(job), cluster_domain)
    spec["containers"] = with_env_defaults(spec.get("containers") or [], {SCHEDULER_ADDRESS_ENV: address})
    if queue is not None:
        spec = queue.placement("runner").apply_to(spec)
    return owned_child(job, "v1", "Pod", job_runner_pod_name(name), (labels, annotations), spec)


# -- the plan --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobObservation:
    """What the cache shows about one DaskJob: the job (its status as last written), the DaskCluster and the
    Pod that carry the job's names (whoever owns them)."""

    job: Obj
    cluster: Obj | None = None
    runner: Obj | None = None
    queue: Queueing | None = None  # None: not behind Kueue (no queue label)
    pods_left: int = 0  # pods (terminating or not) labelled with the job's cluster name, runner included
    priority_classes: Mapping[str, Obj] = field(default_factory=dict)  # Kueue's, by name


def _controller_ref(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)


def _runner_times(pod: Mapping[str, Any], now: float) -> tuple[str, str]:
    """(started, finished) of the runner's containers, from the pod's container states; `now` when the pod
    does not say (so an operator that was down during the job still records when it really ran)."""
    starts: list[float] = []
    ends: list[float] = []
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        state = cs.get("state") or {}
        for key in ("running", "terminated"):
            started = parse_rfc3339((state.get(key) or {}).get("startedAt"))
            if started is not None:
                starts.append(started)
        finished = parse_rfc3339((state.get("terminated") or {}).get("finishedAt"))
        if finished is not None:
            ends.append(finished)
    return rfc3339(min(starts) if starts else now), rfc3339(max(ends) if ends else now)


def plan_job(obs: JobObservation, now: float, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> Plan:
    job = obs.job
    meta = job["metadata"]
    uid = meta["uid"]
    previous: Obj = dict(job.get("status") or {})
    before = previous.get("jobStatus")

    if before is None:
        # First sight: record JobCreated before creating anything (the reference's sequence, 7E-50).
        status = _status(job, previous, JOB_STATUS_JOB_CREATED, now, _conditions(JOB_STATUS_JOB_CREATED))
        return Plan(steps=(SetStatus(status), *(Emit(e) for e in _transition_events(job, before, status))))

    cluster, runner = obs.cluster, obs.runner
    own_cluster = cluster is not None and is_controlled_by(cluster, uid)
    own_runner = runner is not None and is_controlled_by(runner, uid)
    steps: list[Step] = []
    requeue: float | None = None
    degraded: str | None = None
    failed_reason: str | None = None

    phase = (runner or {}).get("status", {}).get("phase") if own_runner else None
    queue = obs.queue
    if queue is not None and queue.hold is not None and runner is not None and is_terminating(runner):
        phase = None  # a runner the hold is deleting fails as it stops: that is not the job's outcome
    finished_now = before in JOB_TERMINAL_STATUSES or phase in ("Succeeded", "Failed")
    if queue is not None and queue.hold is not None and not finished_now:
        return _held_plan(obs, queue, now)
    if before in JOB_TERMINAL_STATUSES:
        after = before
    elif phase in ("Succeeded", "Failed"):
        after = JOB_STATUS_SUCCESSFUL if phase == "Succeeded" else JOB_STATUS_FAILED
    elif before == JOB_STATUS_RUNNING and runner is None:
        after = JOB_STATUS_FAILED  # the runner was deleted while it ran: nothing can report its outcome
    elif runner is None and _refused_for(previous, now) > RUNNER_REFUSED_TIMEOUT:
        after = JOB_STATUS_FAILED  # the runner could not be created for too long: do not keep a cluster up
        refusal = find_condition(previous.get("conditions"), CONDITION_REPLICA_FAILURE) or {}
        degraded = f"The runner pod could not be created for {int(RUNNER_REFUSED_TIMEOUT)} s: {refusal.get('message')}"
        failed_reason = "RunnerNotCreated"
    elif before == JOB_STATUS_RUNNING and own_runner and (cluster is None or is_terminating(cluster)):
        # The cluster went while the runner ran: never make a new one under it, the job has lost its Dask.
        after = JOB_STATUS_FAILED
        degraded = (
            f"DaskCluster {job_cluster_name(meta['name'])} was deleted while the runner was running; the "
            "runner pod is kept for its logs"
        )
        failed_reason = "ClusterLost"
    else:
        after, waiting, degraded = _advance(job, obs, own_cluster, own_runner, steps, cluster_domain)
        if queue is not None:
            steps += _workload_steps(obs, queue, None, now)
        if waiting:
            requeue = WAIT_SECONDS
        after = after if _RANK[after] >= _RANK[before] else before

    terminal = after in JOB_TERMINAL_STATUSES
    if terminal and own_cluster and cluster is not None and not is_terminating(cluster):
        steps.append(Delete(Ref.of(cluster), Cause.JOB_FINISHED))
    if terminal and queue is not None:
        outcome = "Succeeded" if after == JOB_STATUS_SUCCESSFUL else "Failed"
        steps += _workload_steps(obs, queue, (outcome, f"The DaskJob {after.lower()}."), now)

    if before in JOB_TERMINAL_STATUSES and previous.get("conditions"):
        # Final: what the job ended with stays, even once the runner pod is deleted.
        status = {**previous, "observedGeneration": meta.get("generation", 0)}
        return Plan(steps=(*steps, SetStatus(status)), requeue_after=requeue)
    conditions = _conditions(after, obs, degraded, failed_reason)
    if queue is not None:
        conditions.append(admitted_condition(queue))
    status = _status(job, previous, after, now, conditions)
    if after == JOB_STATUS_RUNNING and not previous.get("startTime") and runner is not None:
        status["startTime"] = _runner_times(runner, now)[0]
    if terminal and before not in JOB_TERMINAL_STATUSES:
        started, finished = _runner_times(runner, now) if runner is not None else (rfc3339(now),) * 2
        status.setdefault("startTime", started)
        status["endTime"] = finished
    events = _transition_events(job, before, status)
    events += condition_events(previous.get("conditions"), status["conditions"], ready_events=False)
    if queue is not None:
        events += admission_events(previous.get("conditions"), queue, "")
    return Plan(steps=(*steps, SetStatus(status), *(Emit(e) for e in events)), requeue_after=requeue)


def _workload_steps(
    obs: JobObservation, queue: Queueing, finished: tuple[str, str] | None, now: float
) -> list[Step]:
    desired = desired_workload(obs.job, job_pod_sets(obs.job), obs.priority_classes)
    return workload_steps(desired, queue, obs.pods_left > 0, finished, now)


def _held_plan(obs: JobObservation, queue: Queueing, now: float) -> Plan:
    """Not admitted by Kueue, or evicted: no cluster and no runner. What ran is deleted (its progress and the
    cluster's in-memory data are lost, and said so); the job goes back to JobCreated and starts from the
    beginning once Kueue admits it again."""
    job = obs.job
    meta = job["metadata"]
    uid = meta["uid"]
    previous: Obj = dict(job.get("status") or {})
    steps: list[Step] = []
    lost: list[str] = []
    for child in (obs.runner, obs.cluster):
        if child is not None and is_controlled_by(child, uid) and not is_terminating(child):
            steps.append(Delete(Ref.of(child), Cause.HELD))
            lost.append(f"{child['kind']} {child['metadata']['name']}")
    steps += _workload_steps(obs, queue, None, now)
    hold = queue.hold
    assert hold is not None
    message = hold.message
    conditions = [
        Condition(CONDITION_READY, False, hold.reason, message),
        Condition(CONDITION_PROGRESSING, False, hold.reason, message),
        Condition(CONDITION_DEGRADED, False, "AsExpected", ""),
        Condition(CONDITION_COMPLETE, False, "NotFinished", ""),
        Condition(CONDITION_FAILED, False, "NotFinished", ""),
        admitted_condition(queue),
    ]
    status = _status(job, previous, JOB_STATUS_JOB_CREATED, now, conditions)
    cost = (
        f"Deleted {' and '.join(lost)}: the runner's progress and the cluster's in-memory data are lost; the "
        "job starts again from the beginning when Kueue admits it again."
        if lost
        else ""
    )
    events = admission_events(previous.get("conditions"), queue, cost)
    if lost and not any(e.reason == "Evicted" for e in events):
        events.append(EventSpec("Warning", "Evicted", f"{message} {cost}"))
    requeue = WAIT_SECONDS if obs.pods_left else None  # pods going away are not watched by the job
    return Plan(steps=(*steps, SetStatus(status), *(Emit(e) for e in events)), requeue_after=requeue)


def _advance(
    job: Obj,
    obs: JobObservation,
    own_cluster: bool,
    own_runner: bool,
    steps: list[Step],
    cluster_domain: str,
) -> tuple[str, bool, str | None]:
    """A job that has not finished: make sure its cluster and runner exist. Returns (jobStatus, waiting for
    something to go away, why the job is stuck or None)."""
    uid = job["metadata"]["uid"]
    cluster, runner = obs.cluster, obs.runner
    waiting = False
    degraded = None

    cluster_ready = False
    if cluster is None:
        steps.append(Create(desired_job_cluster(job, obs.queue)))
        cluster_ready = True  # created in this plan, before the runner
    elif is_terminating(cluster):
        waiting = True  # a predecessor (or a cluster deleted by hand) must go before ours can be made
    elif own_cluster:
        cluster_ready = True
    else:
        ref = _controller_ref(cluster)
        adopt = adoption(cluster, job)  # only when nobody controls it (ref is None)
        if adopt is not None:
            steps.append(Apply(adopt, ADOPTION_FIELD_MANAGER))
            cluster_ready = True
        elif ref is not None and ref.get("kind") == DASK_JOB.kind and ref.get("uid") != uid:
            waiting = True  # left by a deleted DaskJob of the same name; the garbage collector removes it
        else:
            cluster_ready = True  # someone else's DaskCluster of this name: used, never deleted by the job

    if runner is None:
        if cluster_ready:
            steps.append(Create(desired_runner_pod(job, cluster_domain, obs.queue)))
        return JOB_STATUS_CLUSTER_CREATED if cluster_ready else JOB_STATUS_JOB_CREATED, waiting, degraded
    if not own_runner:
        waiting = True
        if not is_terminating(runner):
            degraded = (
                f"Pod {runner['metadata']['name']} exists and does not belong to this DaskJob; delete it so "
                "that the job's runner can be created."
            )
        return JOB_STATUS_JOB_CREATED, waiting, degraded
    if runner.get("status", {}).get("phase") == "Running":
        return JOB_STATUS_RUNNING, waiting, degraded
    return JOB_STATUS_CLUSTER_CREATED, waiting, degraded


def _refused_for(previous: Obj, now: float) -> float:
    """How long the executor has reported a refused create on this job (0 when it has not)."""
    cond = find_condition(previous.get("conditions"), CONDITION_REPLICA_FAILURE)
    if not cond or cond.get("status") != "True" or cond.get("reason") != "FailedCreate":
        return 0.0
    since = parse_rfc3339(cond.get("lastTransitionTime"))
    return 0.0 if since is None else now - since


def _status(job: Obj, previous: Obj, job_status: str, now: float, conditions: Sequence[Condition]) -> Obj:
    meta = job["metadata"]
    status: Obj = {"observedGeneration": meta.get("generation", 0), "jobStatus": job_status}
    if job_status != JOB_STATUS_JOB_CREATED or previous.get("clusterName"):
        status["clusterName"] = job_cluster_name(meta["name"])
        status["jobRunnerPodName"] = job_runner_pod_name(meta["name"])
    for key in ("startTime", "endTime"):
        if previous.get(key):
            status[key] = previous[key]
    status["conditions"] = merge_conditions(
        previous.get("conditions"), conditions, rfc3339(now), meta.get("generation")
    )
    return status


def _conditions(
    job_status: str,
    obs: JobObservation | None = None,
    degraded: str | None = None,
    failed_reason: str | None = None,
) -> list[Condition]:
    runner = obs.runner if obs is not None else None
    pod = runner["metadata"]["name"] if runner is not None else "the runner pod"
    failure = pod_failure(runner) if runner is not None else None
    not_done = [
        Condition(CONDITION_COMPLETE, False, "NotFinished", ""),
        Condition(CONDITION_FAILED, False, "NotFinished", ""),
    ]
    if job_status == JOB_STATUS_SUCCESSFUL:
        return [
            Condition(CONDITION_READY, False, "Completed", "The job has finished."),
            Condition(CONDITION_PROGRESSING, False, "Completed", "The job has finished."),
            Condition(CONDITION_DEGRADED, False, "AsExpected", ""),
            Condition(CONDITION_COMPLETE, True, "RunnerSucceeded", f"{pod} succeeded."),
            Condition(CONDITION_FAILED, False, "RunnerSucceeded", ""),
        ]
    if job_status == JOB_STATUS_FAILED:
        why = degraded if failed_reason else failure or f"{pod} is gone: it was deleted while the job ran."
        reason = failed_reason or ("RunnerFailed" if runner is not None else "RunnerLost")
        return [
            Condition(CONDITION_READY, False, "Failed", "The job has finished."),
            Condition(CONDITION_PROGRESSING, False, "Failed", "The job has finished."),
            Condition(CONDITION_DEGRADED, False, "AsExpected", ""),
            Condition(CONDITION_COMPLETE, False, "RunnerFailed", ""),
            Condition(
                CONDITION_FAILED,
                True,
                reason,
                str(why).rstrip(".") + ".",
            ),
        ]
    if degraded is not None:
        degraded_condition = Condition(CONDITION_DEGRADED, True, "RunnerNameTaken", degraded)
    elif failure is not None:
        # restartPolicy OnFailure: the kubelet restarts the runner in place and the pod never fails.
        degraded_condition = Condition(
            CONDITION_DEGRADED,
            True,
            "RunnerFailing",
            f"{failure}. With restartPolicy OnFailure the job never ends; fix the runner, or use "
            "restartPolicy Never to let the job fail.",
        )
    else:
        degraded_condition = Condition(CONDITION_DEGRADED, False, "AsExpected", "")
    if job_status == JOB_STATUS_RUNNING:
        ready = Condition(CONDITION_READY, True, "RunnerRunning", f"{pod} is running.")
        progressing = Condition(CONDITION_PROGRESSING, True, "Running", f"{pod} is running.")
    elif job_status == JOB_STATUS_CLUSTER_CREATED:
        ready = Condition(CONDITION_READY, False, "RunnerStarting", f"{pod} is starting.")
        progressing = Condition(CONDITION_PROGRESSING, True, "RunnerStarting", f"{pod} is starting.")
    else:
        ready = Condition(CONDITION_READY, False, "Creating", "Creating the cluster and the runner pod.")
        progressing = Condition(
            CONDITION_PROGRESSING, True, "Creating", "Creating the cluster and the runner pod."
        )
    return [ready, progressing, degraded_condition, *not_done]


def _transition_events(job: Obj, before: str | None, status: Obj) -> list[EventSpec]:
    """One Event per jobStatus transition (none when it did not change)."""
    after = status["jobStatus"]
    if after == before:
        return []
    name = job["metadata"]["name"]
    cluster, runner = job_cluster_name(name), job_runner_pod_name(name)
    events = []
    if after == JOB_STATUS_JOB_CREATED:
        events.append(EventSpec("Normal", "JobCreated", f"Creating DaskCluster {cluster} and pod {runner}."))
    if _RANK[before] < _RANK[JOB_STATUS_CLUSTER_CREATED] <= _RANK[after]:
        events.append(EventSpec("Normal", "ClusterCreated", f"DaskCluster {cluster} and pod {runner} exist."))
    if _RANK[before] < _RANK[JOB_STATUS_RUNNING] and after == JOB_STATUS_RUNNING:
        events.append(EventSpec("Normal", "Started", f"The runner pod {runner} is running."))
    if after == JOB_STATUS_SUCCESSFUL:
        events.append(
            EventSpec(
                "Normal", "Completed", f"The runner pod {runner} succeeded; deleting DaskCluster {cluster}."
            )
        )
    if after == JOB_STATUS_FAILED:
        failed: Obj = next((c for c in status["conditions"] if c["type"] == CONDITION_FAILED), {})
        events.append(
            EventSpec(
                "Warning",
                "Failed",
                f"The job failed: {failed.get('message', '')} Deleting DaskCluster {cluster}; the runner pod "
                "is kept for its logs.",
            )
        )
    return events
