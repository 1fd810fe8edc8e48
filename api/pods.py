"""What a pod's status says, read the same way by the operator and by the Python client: ready, finished,
failing, and when a restarted container counts as recovered.

Invariant: pure functions of a pod's status (and `now`); a crash loop is one steady failure, not a flapping
one; `since_start=True` (a client waiting for a pod to start) also counts any restart or failed exit the pod
has had. Held by test/unit/test_pods.py and test/unit/test_kubecluster.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dask_operator.runtime.objects import parse_rfc3339

# A container that failed and was restarted counts as failing until it has run this long without failing
# again, so a crash loop is one Degraded state, not a flapping one.
RECOVERY_SECONDS = 60.0

# Waiting reasons that mean the container will not start by itself.
STUCK_REASONS = (
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerError",
    "CreateContainerConfigError",
)


def is_terminating(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def pod_condition(pod: Mapping[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    """Running, Ready and not being deleted."""
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and pod_condition(pod, "Ready") and not is_terminating(pod)


def is_pod_finished(pod: Mapping[str, Any]) -> bool:
    """Succeeded or Failed: the pod will never run again and must be replaced."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _started_at(state: Mapping[str, Any]) -> float | None:
    return parse_rfc3339((state.get("running") or {}).get("startedAt"))


def _container_failure(
    cs: Mapping[str, Any], pod: str | None, now: float | None, since_start: bool
) -> str | None:
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    terminated: Mapping[str, Any] = (
        (cs.get("lastState") or {}).get("terminated") or state.get("terminated") or {}
    )
    failed_exit = bool(terminated) and terminated.get("exitCode", 0) != 0
    if waiting.get("reason") in STUCK_REASONS:
        detail = f" (last exit code {terminated.get('exitCode')})" if terminated else ""
        return f"container {cs.get('name')} of pod {pod} is in {waiting['reason']}{detail}"
    started = _started_at(state)
    recently = now is not None and started is not None and now - started < RECOVERY_SECONDS
    restarts = int(cs.get("restartCount") or 0)
    if restarts > 0 and failed_exit and (recently or not cs.get("ready")):
        return (
            f"container {cs.get('name')} of pod {pod} exited with code {terminated.get('exitCode')} "
            "and is being restarted"
        )
    if since_start and failed_exit:
        return f"container {cs.get('name')} of pod {pod} exited with code {terminated.get('exitCode')}"
    if since_start and restarts > 0:
        return f"container {cs.get('name')} of pod {pod} restarted {restarts} times"
    return None


def pod_failure(pod: Mapping[str, Any], now: float | None = None, since_start: bool = False) -> str | None:
    """A sentence saying why the pod's containers keep failing, or None when they are fine."""
    status = pod.get("status") or {}
    name = (pod.get("metadata") or {}).get("name")
    for cs in status.get("containerStatuses") or []:
        failure = _container_failure(cs, name, now, since_start)
        if failure is not None:
            return failure
    if status.get("phase") == "Failed":
        return f"pod {name} failed: {status.get('reason') or status.get('message') or 'a container exited'}"
    return None


def recovery_deadline(pods: Iterable[Mapping[str, Any]], now: float) -> float | None:
    """Seconds until the earliest restarted-after-failure container counts as recovered (for a requeue)."""
    waits = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            last = (cs.get("lastState") or {}).get("terminated") or {}
            started = _started_at(cs.get("state") or {})
            if last.get("exitCode", 0) != 0 and started is not None and now - started < RECOVERY_SECONDS:
                waits.append(RECOVERY_SECONDS - (now - started) + 1.0)
    return min(waits) if waits else None
