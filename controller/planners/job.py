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
from dask_operator.controller.contract.hold import (
    REASON_SUSPENDED,
    Hold,
    hold_events,
    hold_of,
    suspended_condition,
)
from dask_operator.controller.contract.kueue import (
    KUEUE_HOLD_REASONS,
    Queueing,
    admission_events,
    admitted_condition,
    desired_workload,
    job_pod_sets,
    workload_steps,
)
from dask_operator.controller.contract.names import (
    CREATED_BY_JOB_ANNOTATION,
    SCHEDULER_ADDRESS_ENV,
    cluster_scheduler_address,
)
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
    earliest,
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
        (labels, {**annotations, CREATED_BY_JOB_ANNOTATION: str(meta["uid"])}),
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


@dataclass(frozen=True)
class _Outcome:
    """What the phase decision says of a job that has not finished: its next jobStatus, and why."""

    after: str
    failed_reason: str | None = None
    message: str | None = None  # why the job failed, or why it is stuck (Degraded)
    degraded_reason: str = "RunnerNameTaken"
    progressing: Condition | None = None  # overrides the jobStatus' default


@dataclass(frozen=True)
class _Facts:
    """What plan_job reads of one observation, read once: ownership, the runner's phase, the clocks."""

    previous: Obj  # the status as last written
    before: str  # its jobStatus
    own_cluster: bool
    own_runner: bool
    active_runner: bool  # ours, not terminating, not finished
    phase: str | None  # our runner's phase, None when its end is no outcome (stopped by a hold)
    deadline: float | None  # seconds left of activeDeadlineSeconds (None: none, or held)
    refused: bool  # the executor reports the runner's create refused
    controls: JobControls
    attempts: _Attempts

    @classmethod
    def of(cls, obs: JobObservation, now: float) -> _Facts:
        job, cluster, runner = obs.job, obs.cluster, obs.runner
        uid = job["metadata"]["uid"]
        previous: Obj = dict(job.get("status") or {})
        before = str(previous.get("jobStatus"))
        own_runner = runner is not None and is_controlled_by(runner, uid)
        attempts = _Attempts.of(previous)
        if own_runner and not attempts.created:
            attempts = _Attempts(
                1, attempts.failed, attempts.failures
            )  # a status from before attempts were kept
        stopped_by_hold = obs.hold is not None or before == JOB_STATUS_SUSPENDED
        phase = (runner or {}).get("status", {}).get("phase") if own_runner else None
        if runner is not None and is_terminating(runner) and stopped_by_hold:
            phase = None  # how a runner stopped by a hold exits (killed, so Failed) is no outcome of the job
        return cls(
            previous=previous,
            before=before,
            own_cluster=cluster is not None and is_controlled_by(cluster, uid),
            own_runner=own_runner,
            active_runner=own_runner
            and runner is not None
            and not is_terminating(runner)
            and not is_pod_finished(runner),
            phase=phase,
            deadline=deadline_left(job, previous, now) if obs.hold is None else None,
            refused=runner is None and _refused_for(previous, now) > 0,
            controls=JobControls.of(job),
            attempts=attempts,
        )


@dataclass(frozen=True)
class _Phase:
    """The phase decision: the job's outcome, the attempts to record, and what that decision alone writes."""

    outcome: _Outcome
    attempts: _Attempts
    steps: tuple[Step, ...] = ()
    events: tuple[EventSpec, ...] = ()
    requeue: float | None = None


def plan_job(obs: JobObservation, now: float, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> Plan:
    """Decide the phase once, then add what follows from it: the end of a finished job (its cluster, its TTL),
    its Kueue Workload, and the status and Events."""
    if obs.hold is None and obs.queue is not None and obs.queue.hold is not None:
        obs = dataclasses.replace(obs, hold=obs.queue.hold)  # Kueue is the second source of holds
    if (obs.job.get("status") or {}).get("jobStatus") is None:
        return _first_sight(obs, now)
    facts = _Facts.of(obs, now)
    phase = _decide_phase(obs, facts, now, cluster_domain)
    after = phase.outcome.after
    unfinished_deadline = facts.deadline if after not in JOB_TERMINAL_STATUSES else None
    end_steps, end_events, end_wait = _end_steps(obs, facts, after, now)
    queue_steps, queue_wait = _workload_steps(obs, after, now)
    steps = (*phase.steps, *end_steps, *queue_steps)
    requeue = earliest(phase.requeue, unfinished_deadline, end_wait)
    if requeue is None:
        requeue = queue_wait  # the pods going away are not all watched by the job
    return _with_status(obs, facts, phase, steps, (*phase.events, *end_events), requeue, now)


def _first_sight(obs: JobObservation, now: float) -> Plan:
    """Record JobCreated before creating anything (the reference's sequence)."""
    job, previous = obs.job, dict(obs.job.get("status") or {})
    conditions = _conditions(JOB_STATUS_JOB_CREATED, obs)
    status = _status(job, previous, JOB_STATUS_JOB_CREATED, now, conditions, _Attempts.of(previous))
    return Plan(steps=(SetStatus(status), *(Emit(e) for e in _transition_events(job, None, status))))


def _decide_phase(obs: JobObservation, facts: _Facts, now: float, cluster_domain: str) -> _Phase:
    """The one decision, in order of precedence: where the job stands and what that alone requires."""
    before, runner, cluster = facts.before, obs.runner, obs.cluster
    if before in JOB_TERMINAL_STATUSES:
        return _Phase(_Outcome(before), facts.attempts)
    if facts.phase == "Succeeded":
        return _Phase(_Outcome(JOB_STATUS_SUCCESSFUL), facts.attempts)
    if facts.phase == "Failed" and runner is not None:
        return _runner_failed(facts, runner, now)
    if facts.deadline is not None and facts.deadline <= 0:
        return _deadline_exceeded(facts, runner)
    if obs.hold is not None:
        return _held(obs, facts, obs.hold)
    unseen_end = facts.attempts.created and not facts.attempts.last_failed and not facts.refused
    if runner is None and before in (JOB_STATUS_CLUSTER_CREATED, JOB_STATUS_RUNNING) and unseen_end:
        # A runner was created and is gone without this operator seeing how it ended (deleted, possibly after
        # it finished while the operator was down): never run it a second time.
        name = job_runner_pod_name(obs.job["metadata"]["name"])
        return _failed(
            facts, "RunnerLost", f"{name} was deleted before its outcome was recorded; it is not run again"
        )
    if runner is None and _refused_for(facts.previous, now) > RUNNER_REFUSED_TIMEOUT:
        # the runner could not be created for too long: do not keep a cluster up
        refusal = find_condition(facts.previous.get("conditions"), CONDITION_REPLICA_FAILURE) or {}
        why = f"The runner pod could not be created for {int(RUNNER_REFUSED_TIMEOUT)} s: {refusal.get('message')}"
        return _failed(facts, "RunnerNotCreated", why)
    cluster_gone = cluster is None or is_terminating(cluster)
    if (before == JOB_STATUS_RUNNING or facts.phase == "Running") and facts.active_runner and cluster_gone:
        # The cluster went under the runner: never make a new one under it, the job has lost its Dask.
        why = f"DaskCluster {_cluster_name(obs.job)} was deleted while the runner was running; the runner pod is kept for its logs"  # fmt: skip
        return _failed(facts, "ClusterLost", why)
    return _advancing(obs, facts, cluster_domain)


def _failed(facts: _Facts, reason: str, message: str) -> _Phase:
    return _Phase(_Outcome(JOB_STATUS_FAILED, reason, message), facts.attempts)


def _runner_failed(facts: _Facts, runner: Obj, now: float) -> _Phase:
    """Record the failure (once, by pod UID); retry within spec.backoffLimit, deleting the pod only once its
    failure is in the status; past the limit the job fails."""
    attempts, controls = facts.attempts, facts.controls
    events: tuple[EventSpec, ...] = ()
    if not attempts.recorded(runner):
        attempts = attempts.with_failure(failure_record(runner, attempts.created, now))
        if attempts.failed <= controls.backoff_limit:
            events = (_retry_event(runner, attempts, controls),)
    if attempts.failed > controls.backoff_limit:
        if not controls.backoff_limit:
            return _Phase(_Outcome(JOB_STATUS_FAILED), attempts, events=events)
        message = (
            f"The runner failed {attempts.failed} times (spec.backoffLimit is {controls.backoff_limit}); "
            f"the last failure: {attempts.failures[-1]['message']}"
        )
        return _Phase(_Outcome(JOB_STATUS_FAILED, "BackoffLimitExceeded", message), attempts, events=events)
    retrying = Condition(
        CONDITION_PROGRESSING,
        True,
        "RetryingRunner",
        f"Runner failure {attempts.failed} of at most {controls.backoff_limit}: starting a new runner.",
    )
    steps: tuple[Step, ...] = ()
    if attempts.recorded(runner) and attempts.failed == int(facts.previous.get("failed", 0)):
        # Recorded by an earlier status write: the failed pod may go, and a new runner comes after it.
        steps = (Delete(Ref.of(runner), Cause.RUNNER_RETRY),)
    # else: record the failure first; delete the pod on the next reconcile
    return _Phase(_Outcome(facts.before, progressing=retrying), attempts, steps, events, WAIT_SECONDS)


def _deadline_exceeded(facts: _Facts, runner: Obj | None) -> _Phase:
    why = f"The job was active for longer than spec.activeDeadlineSeconds ({facts.controls.deadline} s)"
    steps: tuple[Step, ...] = ()
    if facts.active_runner and runner is not None:
        steps = (Delete(Ref.of(runner), Cause.DEADLINE_EXCEEDED),)
    return _Phase(_Outcome(JOB_STATUS_FAILED, "DeadlineExceeded", why), facts.attempts, steps)


def _held(obs: JobObservation, facts: _Facts, hold: Hold) -> _Phase:
    """Suspended: the runner and the job's own cluster go; the cluster in the foreground, so a resume waits
    (it is terminating) until its pods and Service are gone and never meets the old Service."""
    cluster, runner = obs.cluster, obs.runner
    going = [
        o
        for o, own in ((runner, facts.own_runner), (cluster, facts.own_cluster))
        if own and o is not None and not is_terminating(o)
    ]
    steps = tuple(Delete(Ref.of(o), Cause.HELD, foreground=o is cluster) for o in going)
    still_there = (runner is not None and facts.own_runner) or facts.own_cluster
    progressing = (
        Condition(CONDITION_PROGRESSING, True, "Suspending", "Deleting the runner pod and the job's cluster.")
        if still_there
        else Condition(CONDITION_PROGRESSING, False, hold.reason, "Nothing runs while held.")
    )
    return _Phase(_Outcome(JOB_STATUS_SUSPENDED, progressing=progressing), facts.attempts, steps)


def _advancing(obs: JobObservation, facts: _Facts, cluster_domain: str) -> _Phase:
    """A job on its way: its cluster, then its runner; jobStatus never moves backwards."""
    cluster_steps, cluster = _cluster_progress(obs, facts.own_cluster)
    runner_steps, runner = _runner_progress(obs, facts.own_runner, cluster.ready, cluster_domain)
    attempts = facts.attempts
    if runner.creates and not facts.refused:
        attempts = _Attempts(attempts.created + 1, attempts.failed, attempts.failures)
    after = runner.after if _RANK[runner.after] >= _RANK[facts.before] else facts.before
    degraded = runner.degraded or cluster.degraded  # a runner's name taken says more than its cluster
    outcome = _Outcome(after) if degraded is None else _Outcome(after, None, degraded[1], degraded[0])
    waiting = cluster.waiting or runner.waiting
    return _Phase(
        outcome, attempts, (*cluster_steps, *runner_steps), requeue=WAIT_SECONDS if waiting else None
    )


@dataclass(frozen=True)
class _Progress:
    """Where the cluster or the runner of an advancing job stands."""

    after: str = JOB_STATUS_JOB_CREATED  # the jobStatus it allows
    ready: bool = False  # the cluster exists (or is created in this plan, before the runner)
    creates: bool = False  # the runner is created in this plan
    waiting: bool = False  # for something to go away, or to appear
    degraded: tuple[str, str] | None = None  # (reason, message): why the job is stuck


def _cluster_progress(obs: JobObservation, own_cluster: bool) -> tuple[tuple[Step, ...], _Progress]:
    job, cluster = obs.job, obs.cluster
    if job["spec"].get("clusterRef"):
        name = _cluster_name(job)
        if cluster is None or is_terminating(cluster):
            why = f"DaskCluster {name} (spec.clusterRef) does not exist; waiting for it."
            return (), _Progress(waiting=True, degraded=("ClusterNotFound", why))
        if hold_of(cluster) is not None:
            why = f"DaskCluster {name} (spec.clusterRef) is suspended; waiting for it."
            return (), _Progress(waiting=True, degraded=("ClusterSuspended", why))
        return (), _Progress(ready=True)
    if cluster is None:
        return (Create(desired_job_cluster(job, obs.queue)),), _Progress(ready=True)
    if is_terminating(cluster):
        return (), _Progress(
            waiting=True
        )  # a predecessor (or one deleted by hand) must go before ours is made
    if own_cluster:
        return (), _Progress(ready=True)
    ref = _controller_ref(cluster)
    if ref is not None and ref.get("kind") == DASK_JOB.kind and ref.get("uid") != job["metadata"]["uid"]:
        return (), _Progress(waiting=True)  # left by a deleted DaskJob of the same name; the GC removes it
    marker = (cluster["metadata"].get("annotations") or {}).get(CREATED_BY_JOB_ANNOTATION)
    adopt = adoption(cluster, job) if marker == job["metadata"]["uid"] else None
    if adopt is not None:  # ours (we wrote the marker) but its owner reference was removed: take it back
        return (Apply(adopt, ADOPTION_FIELD_MANAGER),), _Progress(ready=True)
    why = (
        f"DaskCluster {cluster['metadata']['name']} exists and was not created by this DaskJob, which neither "
        "uses nor deletes it. Rename the job, delete that cluster, or run the job on it with spec.clusterRef."
    )
    return (), _Progress(waiting=True, degraded=("ClusterNameTaken", why))


def _runner_progress(
    obs: JobObservation, own_runner: bool, cluster_ready: bool, cluster_domain: str
) -> tuple[tuple[Step, ...], _Progress]:
    runner = obs.runner
    if runner is None:
        if not cluster_ready:
            return (), _Progress(JOB_STATUS_JOB_CREATED)
        create = Create(desired_runner_pod(obs.job, cluster_domain, obs.cluster, obs.queue))
        return (create,), _Progress(JOB_STATUS_CLUSTER_CREATED, creates=True)
    if not own_runner:
        if is_terminating(runner):
            return (), _Progress(JOB_STATUS_JOB_CREATED, waiting=True)
        why = (
            f"Pod {runner['metadata']['name']} exists and does not belong to this DaskJob; delete it so that the "
            "job's runner can be created."
        )
        return (), _Progress(JOB_STATUS_JOB_CREATED, waiting=True, degraded=("RunnerNameTaken", why))
    if is_terminating(runner):
        return (), _Progress(JOB_STATUS_JOB_CREATED, waiting=True)  # stopped by a hold or a retry: going
    if runner.get("status", {}).get("phase") == "Running":
        return (), _Progress(JOB_STATUS_RUNNING)
    return (), _Progress(JOB_STATUS_CLUSTER_CREATED)


def _end_steps(
    obs: JobObservation, facts: _Facts, after: str, now: float
) -> tuple[tuple[Step, ...], tuple[EventSpec, ...], float | None]:
    """A finished job deletes its own cluster, and itself once spec.ttlSecondsAfterFinished has passed."""
    if after not in JOB_TERMINAL_STATUSES:
        return (), (), None
    cluster = obs.cluster
    steps: tuple[Step, ...] = ()
    if facts.own_cluster and cluster is not None and not is_terminating(cluster):
        steps = (Delete(Ref.of(cluster), Cause.JOB_FINISHED),)
    ttl = ttl_left(obs.job, facts.previous, now)
    if ttl is None:
        return steps, (), None
    if facts.before in JOB_TERMINAL_STATUSES and ttl <= 0:
        expired = EventSpec(
            "Normal",
            "TTLExpired",
            f"The job finished more than spec.ttlSecondsAfterFinished ({facts.controls.ttl} s) ago: deleting it "
            "and its runner pod.",
        )
        return (*steps, Delete(Ref.of(obs.job), Cause.TTL_EXPIRED)), (expired,), None
    return steps, (), max(ttl, 0.5)


def _workload_steps(obs: JobObservation, after: str, now: float) -> tuple[tuple[Step, ...], float | None]:
    """Behind Kueue: the job's Workload, finished with the job; and a look again while evicted pods go."""
    queue = obs.queue
    if queue is None:
        return (), None
    finished = None
    if after in JOB_TERMINAL_STATUSES:
        finished = ("Succeeded" if after == JOB_STATUS_SUCCESSFUL else "Failed", f"The DaskJob is {after}.")
    desired = desired_workload(obs.job, job_pod_sets(obs.job), obs.priority_classes)
    suspended = obs.hold is not None and obs.hold.reason == REASON_SUSPENDED  # spec.suspend, not Kueue
    runner_phase = ((obs.runner or {}).get("status") or {}).get("phase")
    started = runner_phase in ("Running", "Succeeded") and finished is None
    steps = tuple(
        workload_steps(
            desired, queue, obs.pods_left > 0, finished, now, suspended=suspended, pods_ready=started
        )
    )
    return steps, WAIT_SECONDS if queue.evicted and obs.pods_left else None


def _with_status(
    obs: JobObservation,
    facts: _Facts,
    phase: _Phase,
    steps: tuple[Step, ...],
    events: tuple[EventSpec, ...],
    requeue: float | None,
    now: float,
) -> Plan:
    """The plan's steps, then the status (final once terminal) and the Events its changes deserve."""
    previous = facts.previous
    if facts.before in JOB_TERMINAL_STATUSES and previous.get("conditions"):
        # Final: what the job ended with stays, even once the runner pod is deleted.
        status = {**previous, "observedGeneration": obs.job["metadata"].get("generation", 0)}
        return Plan(steps=(*steps, SetStatus(status), *(Emit(e) for e in events)), requeue_after=requeue)
    status = _job_status(obs, facts, phase, now)
    events = (*events, *_status_events(obs, facts.before, status, steps))
    return Plan(steps=(*steps, SetStatus(status), *(Emit(e) for e in events)), requeue_after=requeue)


def _job_status(obs: JobObservation, facts: _Facts, phase: _Phase, now: float) -> Obj:
    after, runner = phase.outcome.after, obs.runner
    conditions = _conditions(after, obs, phase.outcome)
    if obs.queue is not None:
        conditions.append(admitted_condition(obs.queue))
    status = _status(obs.job, facts.previous, after, now, conditions, phase.attempts)
    if after == JOB_STATUS_RUNNING and not facts.previous.get("startTime") and runner is not None:
        status["startTime"] = _runner_times(runner, now)[0]
    if after in JOB_TERMINAL_STATUSES and facts.before not in JOB_TERMINAL_STATUSES:
        started, finished = _runner_times(runner, now) if runner is not None else (rfc3339(now),) * 2
        if phase.outcome.failed_reason == "DeadlineExceeded":
            finished = rfc3339(now)
        status.setdefault("startTime", started)
        status["endTime"] = finished
    return status


def _status_events(obs: JobObservation, before: str, status: Obj, steps: tuple[Step, ...]) -> list[EventSpec]:
    previous = (obs.job.get("status") or {}).get("conditions")
    events = _transition_events(obs.job, before, status)
    events += condition_events(previous, status["conditions"], ready_events=False)
    held = hold_events(previous, status["conditions"])
    queue = obs.queue
    if queue is not None:  # Kueue's holds have their own Events (Queued, Admitted, Evicted)
        held = [e for e in held if e.reason not in KUEUE_HOLD_REASONS]
        lost = ""
        if queue.evicted and any(isinstance(s, Delete) and s.cause is Cause.HELD for s in steps):
            lost = (
                "Deleting the runner pod and the job's cluster: the runner's progress and the cluster's in-memory "
                "data are lost; the job starts again from the beginning when Kueue admits it again."
            )
        events += admission_events(previous, queue, lost)
    return events + held


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
