"""Desired state of a DaskJob: its DaskCluster, its runner Pod, and the job status they add up to.

Invariant: pure functions of the observed objects, the hold (`hold_of(job)`, an input) and `now`. jobStatus
only moves forward (JobCreated -> ClusterCreated -> Running -> Successful | Failed), except that a hold sends
an unfinished job to Suspended (runner and own cluster deleted) from where a lift starts it again; a terminal
status is final: from then on a plan never creates anything, it only deletes the job's own cluster (UID
precondition) until it is gone, and the job itself once spec.ttlSecondsAfterFinished has passed.
The terminal state is derived from the runner pod's phase, not from the cluster, so a cluster already deleted
can never block completion (an upstream dead end). Every write a plan asks for is idempotent.

Runner attempts are counted in the status (`attempts`: pods created, `failed`/`failures`: pods that failed):
a failure is recorded (by pod UID) before its pod is deleted for a retry, so it is counted exactly once; a
runner counted as created whose pod is gone unseen (deleted after it finished while the operator was down)
fails the job (RunnerLost) and is never run a second time. `requeue_after` is never later than the
activeDeadlineSeconds or TTL expiry, both computed from `now`.

Deliberate choices:
* The cluster and the runner are created once from the job's spec (like a Job's pods), never re-applied:
  `kubectl scale daskcluster <job>` on a job's cluster is respected, as in the reference.
* `spec.cluster.spec.idleTimeout` is NOT copied to the job's cluster: the cluster
  lives exactly as long as the runner, and an idle timeout would delete it under a runner that is between
  computations, failing the job. `spec.cluster.metadata` is honoured (our CRD keeps it; the reference's
  schema pruned it).
* A runner pod that disappears after it started fails the job (reason RunnerLost) instead of being re-run.
* With spec.clusterRef the job neither creates, suspends nor deletes that cluster; it waits while it is
  missing or suspended, and fails (ClusterLost) if it goes under a running runner.
Held by test/unit/test_job.py.
"""

from __future__ import annotations

import copy
import dataclasses
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
from dask_operator.api.v1.schema import MAX_RECORDED_FAILURES
from dask_operator.api.v1.types import (
    CONDITION_COMPLETE,
    CONDITION_DEGRADED,
    CONDITION_FAILED,
    CONDITION_PROGRESSING,
    CONDITION_READY,
    CONDITION_SUSPENDED,
    JOB_STATUS_CLUSTER_CREATED,
    JOB_STATUS_FAILED,
    JOB_STATUS_JOB_CREATED,
    JOB_STATUS_RUNNING,
    JOB_STATUS_SUCCESSFUL,
    JOB_STATUS_SUSPENDED,
    JOB_TERMINAL_STATUSES,
)
from dask_operator.controller.contract.children import (
    adoption,
    child_metadata,
    is_controlled_by,
    owned_child,
    with_env_defaults,
)
from dask_operator.controller.contract.conditions import (
    CONDITION_REPLICA_FAILURE,
    Condition,
    EventSpec,
    condition_events,
    find_condition,
    merge_conditions,
)
from dask_operator.controller.contract.hold import Hold, hold_events, hold_of, suspended_condition
from dask_operator.controller.contract.kueue import (
    KUEUE_HOLD_REASONS,
    Queueing,
    admission_events,
    admitted_condition,
    desired_workload,
    job_pod_sets,
    workload_steps,
)
from dask_operator.controller.contract.names import SCHEDULER_ADDRESS_ENV, cluster_scheduler_address
from dask_operator.controller.contract.objects import Obj, parse_rfc3339, rfc3339
from dask_operator.controller.contract.plans import (
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
from dask_operator.controller.contract.pods import is_pod_finished, is_terminating, pod_failure

# How soon to look again while waiting for an object this job does not own to go away.
WAIT_SECONDS = 2.0
# A runner the API server keeps refusing (a quota, admission) fails the job after this long, so the job's
# cluster is not left running for a runner that never comes.
RUNNER_REFUSED_TIMEOUT = 600.0

_RANK = {
    None: 0,
    JOB_STATUS_SUSPENDED: 0,  # a lifted hold starts again from the beginning
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
    for part in ("scheduler", "worker"):  # the pod sets of job_pod_sets have these names
        cluster_spec[part]["spec"] = queue.placement(part).apply_to(cluster_spec[part]["spec"])
    return cluster_spec


def desired_runner_pod(
    job: Mapping[str, Any],
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
    cluster: Mapping[str, Any] | None = None,
    queue: Queueing | None = None,
) -> Obj:
    """Pod `<job>-runner` from `spec.job.spec`; each container gets DASK_SCHEDULER_ADDRESS unless it sets it
    (init containers do not: the scheduler is not up before the runner starts). The address is that of
    `cluster` with spec.clusterRef (the existing cluster as observed), else of the job's own cluster."""
    meta = job["metadata"]
    name = meta["name"]
    runner = job["spec"]["job"]
    labels, annotations = child_metadata(
        job,
        runner.get("metadata"),
        {
            LABEL_CLUSTER_NAME: _cluster_name(job),
            LABEL_COMPONENT: COMPONENT_JOB_RUNNER,
            LABEL_ISTIO_SIDECAR_INJECT: ISTIO_SIDECAR_INJECT_VALUE,
        },
    )
    spec = copy.deepcopy(runner["spec"])
    on = cluster if job["spec"].get("clusterRef") and cluster is not None else desired_job_cluster(job)
    address = cluster_scheduler_address(on, cluster_domain)
    spec["containers"] = with_env_defaults(spec.get("containers") or [], {SCHEDULER_ADDRESS_ENV: address})
    if queue is not None:
        spec = queue.placement("runner").apply_to(spec)
    return owned_child(job, "v1", "Pod", job_runner_pod_name(name), (labels, annotations), spec)


# -- the plan --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobObservation:
    """What the cache shows about one DaskJob: the job (its status as last written), the DaskCluster it runs
    on (its own, or the one spec.clusterRef names) and the Pod that carries the runner's name (whoever owns
    them); whether the job is held (hold_of(job)); and behind Kueue, its place in the queue."""

    job: Obj
    cluster: Obj | None = None
    runner: Obj | None = None
    hold: Hold | None = None
    queue: Queueing | None = None  # None: not behind Kueue (no queue label)
    pods_left: int = 0  # pods (terminating or not) labelled with the job's cluster name, runner included
    priority_classes: Mapping[str, Obj] = field(default_factory=dict)  # Kueue's, by name


@dataclass(frozen=True)
class _Attempts:
    """The runner attempts as the status records them: pods created, and the failures (newest last)."""

    created: int
    failed: int
    failures: tuple[Obj, ...]

    @classmethod
    def of(cls, previous: Obj) -> _Attempts:
        before = previous.get("jobStatus")
        # A status written before attempts were recorded: Running means one runner was created.
        legacy = 1 if before == JOB_STATUS_RUNNING else 0
        return cls(
            int(previous.get("attempts", legacy)),
            int(previous.get("failed", 0)),
            tuple(previous.get("failures") or ()),
        )

    def recorded(self, pod: Mapping[str, Any]) -> bool:
        return any(f.get("podUID") == pod["metadata"]["uid"] for f in self.failures)

    def with_failure(self, record: Obj) -> _Attempts:
        return _Attempts(self.created, self.failed + 1, (*self.failures, record)[-MAX_RECORDED_FAILURES:])

    @property
    def last_failed(self) -> bool:
        """The newest attempt's failure is recorded (its pod may be deleted, it is not lost)."""
        return bool(self.failures) and int(self.failures[-1].get("attempt", 0)) == self.created


@dataclass(frozen=True)
class JobControls:
    """spec.backoffLimit, activeDeadlineSeconds and ttlSecondsAfterFinished (None when absent)."""

    backoff_limit: int
    deadline: int | None
    ttl: int | None

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> JobControls:
        spec = job["spec"]
        deadline, ttl = spec.get("activeDeadlineSeconds"), spec.get("ttlSecondsAfterFinished")
        return cls(
            int(spec.get("backoffLimit") or 0),
            int(deadline) if deadline is not None else None,
            int(ttl) if ttl is not None else None,
        )


@dataclass
class _Outcome:
    """What the plan decided for a job that has not finished (mutable only inside plan_job)."""

    after: str
    failed_reason: str | None = None
    message: str | None = None  # why the job failed, or why it is stuck (Degraded)
    degraded_reason: str = "RunnerNameTaken"
    progressing: Condition | None = None  # overrides the jobStatus' default


def active_since(job: Mapping[str, Any], previous: Mapping[str, Any]) -> float | None:
    """Since when the job has been active: its creation, or the last lift of a hold."""
    since = parse_rfc3339(job["metadata"].get("creationTimestamp"))
    resumed = find_condition(previous.get("conditions"), CONDITION_SUSPENDED)
    if resumed and resumed.get("status") == "False":
        at = parse_rfc3339(resumed.get("lastTransitionTime"))
        if at is not None and (since is None or at > since):
            since = at
    return since


def deadline_left(job: Mapping[str, Any], previous: Mapping[str, Any], now: float) -> float | None:
    """Seconds until spec.activeDeadlineSeconds is reached (<= 0: exceeded), None without a deadline."""
    controls = JobControls.of(job)
    since = active_since(job, previous)
    if controls.deadline is None or since is None:
        return None
    return since + controls.deadline - now


def ttl_left(job: Mapping[str, Any], previous: Mapping[str, Any], now: float) -> float | None:
    """Seconds until a finished job is deleted (<= 0: now), None without a TTL."""
    ttl = JobControls.of(job).ttl
    if ttl is None:
        return None
    ended = parse_rfc3339(previous.get("endTime"))
    return (ended if ended is not None else now) + ttl - now


def failure_record(pod: Mapping[str, Any], attempt: int, now: float) -> Obj:
    """What status.failures keeps of a failed runner pod: its UID, attempt, when, a CamelCase reason and why."""
    status = pod.get("status") or {}
    reason = status.get("reason")
    message = status.get("message")
    for cs in status.get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode", 0) != 0:
            reason = reason or terminated.get("reason") or "Error"
            message = message or (
                f"container {cs.get('name')} of pod {pod['metadata']['name']} exited with exit code "
                f"{terminated.get('exitCode')}"
            )
            break
    message = message or pod_failure(pod) or f"pod {pod['metadata']['name']} failed"
    return {
        "podUID": pod["metadata"]["uid"],
        "attempt": attempt,
        "time": _runner_times(pod, now)[1],
        "reason": _camel(str(reason or "Failed")),
        "message": str(message)[:4096],
    }


def _camel(reason: str) -> str:
    cleaned = "".join(ch for ch in reason if ch.isalnum())
    return cleaned if cleaned and cleaned[0].isalpha() else "Failed"


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

    queue = obs.queue
    if obs.hold is None and queue is not None and queue.hold is not None:
        obs = dataclasses.replace(obs, hold=queue.hold)  # Kueue is the second source of holds
    if before is None:
        # First sight: record JobCreated before creating anything (the reference's sequence, 7E-50).
        conditions = _conditions(JOB_STATUS_JOB_CREATED, obs)
        status = _status(job, previous, JOB_STATUS_JOB_CREATED, now, conditions, _Attempts.of(previous))
        return Plan(steps=(SetStatus(status), *(Emit(e) for e in _transition_events(job, before, status))))

    cluster, runner = obs.cluster, obs.runner
    own_cluster = cluster is not None and is_controlled_by(cluster, uid)
    own_runner = runner is not None and is_controlled_by(runner, uid)
    active_runner = (
        own_runner and runner is not None and not is_terminating(runner) and not is_pod_finished(runner)
    )
    controls = JobControls.of(job)
    attempts = _Attempts.of(previous)
    if own_runner and not attempts.created:
        attempts = _Attempts(1, attempts.failed, attempts.failures)  # a status from before attempts were kept
    steps: list[Step] = []
    events: list[EventSpec] = []
    requeue: float | None = None
    phase = (runner or {}).get("status", {}).get("phase") if own_runner else None
    if (
        runner is not None
        and is_terminating(runner)
        and (obs.hold is not None or before == JOB_STATUS_SUSPENDED)
    ):
        phase = (
            None  # a runner stopped by the hold: how it exits (killed, so Failed) is no outcome of the job
        )
    deadline = deadline_left(job, previous, now) if obs.hold is None else None
    refused = runner is None and _refused_for(previous, now) > 0

    outcome = _Outcome(before)
    if before in JOB_TERMINAL_STATUSES:
        pass
    elif phase == "Succeeded":
        outcome.after = JOB_STATUS_SUCCESSFUL
    elif phase == "Failed" and runner is not None:
        if not attempts.recorded(runner):
            attempts = attempts.with_failure(failure_record(runner, attempts.created, now))
            if attempts.failed <= controls.backoff_limit:
                events.append(_retry_event(runner, attempts, controls))
        if attempts.failed > controls.backoff_limit:
            outcome.after = JOB_STATUS_FAILED
            if controls.backoff_limit:
                outcome.failed_reason = "BackoffLimitExceeded"
                outcome.message = (
                    f"The runner failed {attempts.failed} times (spec.backoffLimit is {controls.backoff_limit}); "
                    f"the last failure: {attempts.failures[-1]['message']}"
                )
        elif attempts.recorded(runner) and attempts.failed == int(previous.get("failed", 0)):
            # Recorded by an earlier status write: the failed pod may go, and a new runner comes after it.
            steps.append(Delete(Ref.of(runner), Cause.RUNNER_RETRY))
            requeue = WAIT_SECONDS
        else:
            requeue = WAIT_SECONDS  # record the failure first; delete the pod on the next reconcile
        if outcome.after != JOB_STATUS_FAILED:
            outcome.progressing = Condition(
                CONDITION_PROGRESSING,
                True,
                "RetryingRunner",
                f"Runner failure {attempts.failed} of at most {controls.backoff_limit}: starting a new runner.",
            )
    elif deadline is not None and deadline <= 0:
        outcome.after = JOB_STATUS_FAILED
        outcome.failed_reason = "DeadlineExceeded"
        outcome.message = (
            f"The job was active for longer than spec.activeDeadlineSeconds ({controls.deadline} s)"
        )
        if active_runner and runner is not None:
            steps.append(Delete(Ref.of(runner), Cause.DEADLINE_EXCEEDED))
    elif obs.hold is not None:
        outcome.after = JOB_STATUS_SUSPENDED
        going: list[Obj] = []
        if own_runner and runner is not None and not is_terminating(runner):
            going.append(runner)
        if own_cluster and cluster is not None and not is_terminating(cluster):
            going.append(cluster)
        # The cluster goes in the foreground: a resume waits (it is terminating) until its pods and Service
        # are gone, so the new cluster's Service is never the old one the garbage collector is removing.
        steps += [Delete(Ref.of(o), Cause.HELD, foreground=o is cluster) for o in going]
        still_there = (runner is not None and own_runner) or own_cluster
        outcome.progressing = (
            Condition(
                CONDITION_PROGRESSING, True, "Suspending", "Deleting the runner pod and the job's cluster."
            )
            if still_there
            else Condition(CONDITION_PROGRESSING, False, obs.hold.reason, "Nothing runs while held.")
        )
    elif (
        runner is None
        and before in (JOB_STATUS_CLUSTER_CREATED, JOB_STATUS_RUNNING)
        and attempts.created
        and not attempts.last_failed
        and not refused
    ):
        # A runner was created and is gone without this operator seeing how it ended (deleted, possibly after
        # it finished while the operator was down): never run it a second time.
        outcome.after = JOB_STATUS_FAILED
        outcome.failed_reason = "RunnerLost"
        outcome.message = (
            f"{job_runner_pod_name(meta['name'])} was deleted before its outcome was recorded; it is not run "
            "again"
        )
    elif runner is None and _refused_for(previous, now) > RUNNER_REFUSED_TIMEOUT:
        outcome.after = (
            JOB_STATUS_FAILED  # the runner could not be created for too long: do not keep a cluster up
        )
        refusal = find_condition(previous.get("conditions"), CONDITION_REPLICA_FAILURE) or {}
        outcome.failed_reason = "RunnerNotCreated"
        outcome.message = f"The runner pod could not be created for {int(RUNNER_REFUSED_TIMEOUT)} s: {refusal.get('message')}"
    elif (
        (before == JOB_STATUS_RUNNING or phase == "Running")
        and active_runner
        and (cluster is None or is_terminating(cluster))
    ):
        # The cluster went under the runner: never make a new one under it, the job has lost its Dask.
        outcome.after = JOB_STATUS_FAILED
        outcome.failed_reason = "ClusterLost"
        outcome.message = (
            f"DaskCluster {_cluster_name(job)} was deleted while the runner was running; the runner pod is kept "
            "for its logs"
        )
    else:
        after, waiting, degraded, creates_runner = _advance(
            job, obs, own_cluster, own_runner, steps, cluster_domain
        )
        if waiting:
            requeue = WAIT_SECONDS
        if creates_runner and not refused:
            attempts = _Attempts(attempts.created + 1, attempts.failed, attempts.failures)
        outcome.after = after if _RANK[after] >= _RANK[before] else before
        if degraded is not None:
            outcome.degraded_reason, outcome.message = degraded
    if deadline is not None and outcome.after not in JOB_TERMINAL_STATUSES:
        requeue = deadline if requeue is None else min(requeue, deadline)

    after = outcome.after
    terminal = after in JOB_TERMINAL_STATUSES
    if terminal and own_cluster and cluster is not None and not is_terminating(cluster):
        steps.append(Delete(Ref.of(cluster), Cause.JOB_FINISHED))
    if terminal:
        ttl = ttl_left(job, previous, now)
        if ttl is not None and before in JOB_TERMINAL_STATUSES and ttl <= 0:
            steps.append(Delete(Ref.of(job), Cause.TTL_EXPIRED))
            events.append(
                EventSpec(
                    "Normal",
                    "TTLExpired",
                    f"The job finished more than spec.ttlSecondsAfterFinished ({controls.ttl} s) ago: deleting it "
                    "and its runner pod.",
                )
            )
        elif ttl is not None:
            requeue = max(ttl, 0.5) if requeue is None else min(requeue, max(ttl, 0.5))

    if queue is not None:
        outcome_of_job = None
        if terminal:
            outcome_of_job = (
                "Succeeded" if after == JOB_STATUS_SUCCESSFUL else "Failed",
                f"The DaskJob is {after}.",
            )
        desired = desired_workload(job, job_pod_sets(job), obs.priority_classes)
        steps += workload_steps(desired, queue, obs.pods_left > 0, outcome_of_job, now)
        if queue.evicted and obs.pods_left and requeue is None:
            requeue = WAIT_SECONDS  # the pods going away are not all watched by the job

    if before in JOB_TERMINAL_STATUSES and previous.get("conditions"):
        # Final: what the job ended with stays, even once the runner pod is deleted.
        status = {**previous, "observedGeneration": meta.get("generation", 0)}
        return Plan(steps=(*steps, SetStatus(status), *(Emit(e) for e in events)), requeue_after=requeue)
    conditions = _conditions(after, obs, outcome)
    if queue is not None:
        conditions.append(admitted_condition(queue))
    status = _status(job, previous, after, now, conditions, attempts)
    if after == JOB_STATUS_RUNNING and not previous.get("startTime") and runner is not None:
        status["startTime"] = _runner_times(runner, now)[0]
    if terminal and before not in JOB_TERMINAL_STATUSES:
        started, finished = _runner_times(runner, now) if runner is not None else (rfc3339(now),) * 2
        if outcome.failed_reason == "DeadlineExceeded":
            finished = rfc3339(now)
        status.setdefault("startTime", started)
        status["endTime"] = finished
    events += _transition_events(job, before, status)
    events += condition_events(previous.get("conditions"), status["conditions"], ready_events=False)
    held = hold_events(previous.get("conditions"), status["conditions"])
    if queue is not None:  # Kueue's holds have their own Events (Queued, Admitted, Evicted)
        held = [e for e in held if e.reason not in KUEUE_HOLD_REASONS]
        lost = ""
        if queue.evicted and any(isinstance(s, Delete) and s.cause is Cause.HELD for s in steps):
            lost = (
                "Deleting the runner pod and the job's cluster: the runner's progress and the cluster's in-memory "
                "data are lost; the job starts again from the beginning when Kueue admits it again."
            )
        events += admission_events(previous.get("conditions"), queue, lost)
    events += held
    return Plan(steps=(*steps, SetStatus(status), *(Emit(e) for e in events)), requeue_after=requeue)


def _retry_event(runner: Obj, attempts: _Attempts, controls: JobControls) -> EventSpec:
    last = attempts.failures[-1]
    return EventSpec(
        "Warning",
        "RunnerFailed",
        f"Runner pod {runner['metadata']['name']} failed ({last['reason']}): {str(last['message']).rstrip('.')}. "
        f"Failure {attempts.failed} of at most {controls.backoff_limit} (spec.backoffLimit): starting a new runner.",
    )


def _cluster_name(job: Mapping[str, Any]) -> str:
    """The DaskCluster the job runs on: spec.clusterRef's, or the one named after the job."""
    ref = job["spec"].get("clusterRef")
    return str(ref["name"]) if ref else job_cluster_name(job["metadata"]["name"])


def _advance(
    job: Obj,
    obs: JobObservation,
    own_cluster: bool,
    own_runner: bool,
    steps: list[Step],
    cluster_domain: str,
) -> tuple[str, bool, tuple[str, str] | None, bool]:
    """A job that has not finished: make sure its cluster and runner exist. Returns (jobStatus, waiting for
    something to go away, (reason, message) why the job is stuck or None, whether a runner is created)."""
    uid = job["metadata"]["uid"]
    cluster, runner = obs.cluster, obs.runner
    waiting = False
    degraded: tuple[str, str] | None = None

    cluster_ready = False
    if job["spec"].get("clusterRef"):
        name = _cluster_name(job)
        if cluster is None or is_terminating(cluster):
            waiting = True
            degraded = (
                "ClusterNotFound",
                f"DaskCluster {name} (spec.clusterRef) does not exist; waiting for it.",
            )
        elif hold_of(cluster) is not None:
            waiting = True
            degraded = (
                "ClusterSuspended",
                f"DaskCluster {name} (spec.clusterRef) is suspended; waiting for it.",
            )
        else:
            cluster_ready = True
    elif cluster is None:
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
            steps.append(Create(desired_runner_pod(job, cluster_domain, cluster, obs.queue)))
        return (
            JOB_STATUS_CLUSTER_CREATED if cluster_ready else JOB_STATUS_JOB_CREATED,
            waiting,
            degraded,
            cluster_ready,
        )
    if not own_runner:
        waiting = True
        if not is_terminating(runner):
            degraded = (
                "RunnerNameTaken",
                (
                    f"Pod {runner['metadata']['name']} exists and does not belong to this DaskJob; delete it so "
                    "that the job's runner can be created."
                ),
            )
        return JOB_STATUS_JOB_CREATED, waiting, degraded, False
    if is_terminating(runner):
        return JOB_STATUS_JOB_CREATED, True, degraded, False  # a runner stopped by a hold or a retry is going
    if runner.get("status", {}).get("phase") == "Running":
        return JOB_STATUS_RUNNING, waiting, degraded, False
    return JOB_STATUS_CLUSTER_CREATED, waiting, degraded, False


def _refused_for(previous: Obj, now: float) -> float:
    """How long the executor has reported a refused create on this job (0 when it has not)."""
    cond = find_condition(previous.get("conditions"), CONDITION_REPLICA_FAILURE)
    if not cond or cond.get("status") != "True" or cond.get("reason") != "FailedCreate":
        return 0.0
    since = parse_rfc3339(cond.get("lastTransitionTime"))
    return 0.0 if since is None else max(now - since, 1e-3)


def _status(
    job: Obj,
    previous: Obj,
    job_status: str,
    now: float,
    conditions: Sequence[Condition],
    attempts: _Attempts,
) -> Obj:
    meta = job["metadata"]
    status: Obj = {"observedGeneration": meta.get("generation", 0), "jobStatus": job_status}
    if job_status != JOB_STATUS_JOB_CREATED or previous.get("clusterName"):
        status["clusterName"] = _cluster_name(job)
        status["jobRunnerPodName"] = job_runner_pod_name(meta["name"])
    for key in ("startTime", "endTime"):
        if previous.get(key):
            status[key] = previous[key]
    if attempts.created:
        status["attempts"] = attempts.created
    if attempts.failed:
        status["failed"] = attempts.failed
        status["failures"] = list(attempts.failures)
    status["conditions"] = merge_conditions(
        previous.get("conditions"), conditions, rfc3339(now), meta.get("generation")
    )
    return status


def _conditions(job_status: str, obs: JobObservation, outcome: _Outcome | None = None) -> list[Condition]:
    runner = obs.runner
    outcome = outcome or _Outcome(job_status)
    pod = runner["metadata"]["name"] if runner is not None else "the runner pod"
    failure = pod_failure(runner) if runner is not None else None
    suspended = suspended_condition(obs.hold, (obs.job.get("status") or {}).get("conditions"))
    extra = [suspended] if suspended is not None else []
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
            *extra,
        ]
    if job_status == JOB_STATUS_FAILED:
        why = outcome.message if outcome.failed_reason else failure or f"{pod} failed."
        reason = outcome.failed_reason or "RunnerFailed"
        return [
            Condition(CONDITION_READY, False, "Failed", "The job has finished."),
            Condition(CONDITION_PROGRESSING, False, "Failed", "The job has finished."),
            Condition(CONDITION_DEGRADED, False, "AsExpected", ""),
            Condition(CONDITION_COMPLETE, False, "RunnerFailed", ""),
            Condition(CONDITION_FAILED, True, reason, str(why).rstrip(".") + "."),
            *extra,
        ]
    if job_status == JOB_STATUS_SUSPENDED and obs.hold is not None:
        return [
            Condition(CONDITION_READY, False, obs.hold.reason, obs.hold.message),
            outcome.progressing or Condition(CONDITION_PROGRESSING, False, obs.hold.reason, ""),
            Condition(CONDITION_DEGRADED, False, "AsExpected", ""),
            *not_done,
            *extra,
        ]
    if outcome.message is not None:
        degraded_condition = Condition(CONDITION_DEGRADED, True, outcome.degraded_reason, outcome.message)
    elif failure is not None and not is_pod_finished(runner or {}):
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
    return [ready, outcome.progressing or progressing, degraded_condition, *not_done, *extra]


def _transition_events(job: Obj, before: str | None, status: Obj) -> list[EventSpec]:
    """One Event per jobStatus transition (none when it did not change; a hold has its own Events)."""
    after = status["jobStatus"]
    if after in (before, JOB_STATUS_SUSPENDED):
        return []
    name = job["metadata"]["name"]
    cluster, runner = _cluster_name(job), job_runner_pod_name(name)
    events = []
    if after == JOB_STATUS_JOB_CREATED and before is None:
        events.append(EventSpec("Normal", "JobCreated", f"Creating DaskCluster {cluster} and pod {runner}."))
    if _RANK[before] < _RANK[JOB_STATUS_CLUSTER_CREATED] <= _RANK[after]:
        events.append(EventSpec("Normal", "ClusterCreated", f"DaskCluster {cluster} and pod {runner} exist."))
    if _RANK[before] < _RANK[JOB_STATUS_RUNNING] and after == JOB_STATUS_RUNNING:
        events.append(EventSpec("Normal", "Started", f"The runner pod {runner} is running."))
    ending = "" if job["spec"].get("clusterRef") else f"; deleting DaskCluster {cluster}"
    if after == JOB_STATUS_SUCCESSFUL:
        events.append(EventSpec("Normal", "Completed", f"The runner pod {runner} succeeded{ending}."))
    if after == JOB_STATUS_FAILED:
        failed: Obj = next((c for c in status["conditions"] if c["type"] == CONDITION_FAILED), {})
        events.append(
            EventSpec(
                "Warning",
                "Failed",
                f"The job failed: {failed.get('message', '')} "
                + (
                    "The runner pod"
                    if job["spec"].get("clusterRef")
                    else f"Deleting DaskCluster {cluster}; the runner pod"
                )
                + " is kept for its logs.",
            )
        )
    return events
