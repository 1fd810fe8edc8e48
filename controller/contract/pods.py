"""Pods as the reconcilers see them: ready, finished, failing, and when a restarted container counts as
recovered.

Invariant: pure functions of a pod's status (and `now`); a crash loop is one steady failure, not a flapping
one. Held by test/unit/test_pods.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dask_operator.controller.contract.children import is_terminating
from dask_operator.controller.contract.objects import parse_rfc3339


def pod_condition(pod: Mapping[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions") or []
    )


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status", {})
    return status.get("phase") == "Running" and pod_condition(pod, "Ready") and not is_terminating(pod)


def is_pod_finished(pod: Mapping[str, Any]) -> bool:
    """Succeeded or Failed: the pod will never run again and must be replaced."""
    return pod.get("status", {}).get("phase") in ("Succeeded", "Failed")


# A container that failed and was restarted counts as failing until it has run this long without failing
# again, so a crash loop is one Degraded state, not a flapping one.
RECOVERY_SECONDS = 60.0


def _started_at(state: Mapping[str, Any]) -> float | None:
    return parse_rfc3339((state.get("running") or {}).get("startedAt"))


def pod_failure(pod: Mapping[str, Any], now: float | None = None) -> str | None:
    """A sentence saying why the pod's containers keep failing, or None when they are fine."""
    status = pod.get("status", {})
    name = pod.get("metadata", {}).get("name")
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        terminated: Mapping[str, Any] = (
            (cs.get("lastState") or {}).get("terminated") or state.get("terminated") or {}
        )
        failed_exit = bool(terminated) and terminated.get("exitCode", 0) != 0
        if waiting.get("reason") in (
            "CrashLoopBackOff",
            "ErrImagePull",
            "ImagePullBackOff",
            "CreateContainerError",
            "CreateContainerConfigError",
        ):
            detail = f" (last exit code {terminated.get('exitCode')})" if terminated else ""
            return f"container {cs.get('name')} of pod {name} is in {waiting['reason']}{detail}"
        started = _started_at(state)
        recently = now is not None and started is not None and now - started < RECOVERY_SECONDS
        if int(cs.get("restartCount") or 0) > 0 and failed_exit and (recently or not cs.get("ready")):
            return (
                f"container {cs.get('name')} of pod {name} exited with code {terminated.get('exitCode')} "
                "and is being restarted"
            )
    if status.get("phase") == "Failed":
        return f"pod {name} failed: {status.get('reason') or status.get('message') or 'a container exited'}"
    return None


def recovery_deadline(pods: Iterable[Mapping[str, Any]], now: float) -> float | None:
    """Seconds until the earliest restarted-after-failure container counts as recovered (for a requeue)."""
    waits = []
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            last = (cs.get("lastState") or {}).get("terminated") or {}
            started = _started_at(cs.get("state") or {})
            if last.get("exitCode", 0) != 0 and started is not None and now - started < RECOVERY_SECONDS:
                waits.append(RECOVERY_SECONDS - (now - started) + 1.0)
    return min(waits) if waits else None
