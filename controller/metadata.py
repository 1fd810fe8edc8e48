"""Metadata every child inherits: labels, annotations, owner references, template hashes, conditions.

Invariant: pure functions of their arguments. Precedence is "parent metadata <= sub-resource metadata <=
reserved labels", then fill-only owner labels (checklist 7B-17..19, 7C-31); annotations whose key starts
with `kopf.zalando.org` or `kubectl.kubernetes.io` are never copied to a child.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dask_operator.api.v1.group import API_VERSION, GROUP
from dask_operator.api.v1.names import UNPROPAGATED_ANNOTATION_PREFIXES
from dask_operator.controller.plans import parse_rfc3339

# Ours: which pod template a pod was made from (a hash of its spec), so a changed template is seen
# without comparing specs that the API server has defaulted.
TEMPLATE_HASH_LABEL = f"{GROUP}/template-hash"

Obj = dict[str, Any]


def inheritable_annotations(annotations: Mapping[str, str] | None) -> dict[str, str]:
    """A parent's annotations minus the bookkeeping of kubectl and kopf."""
    return {
        k: v for k, v in (annotations or {}).items() if not k.startswith(UNPROPAGATED_ANNOTATION_PREFIXES)
    }


def child_metadata(
    parent: Mapping[str, Any],
    sub_metadata: Mapping[str, Any] | None,
    reserved_labels: Mapping[str, str],
    fill_labels: Iterable[Mapping[str, str] | None] = (),
) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) for a child of `parent` built from `sub_metadata` (e.g. spec.worker.metadata)."""
    meta = parent.get("metadata", {})
    sub = sub_metadata or {}
    labels = {**(meta.get("labels") or {}), **(sub.get("labels") or {}), **reserved_labels}
    for extra in fill_labels:
        for key, value in (extra or {}).items():
            labels.setdefault(key, value)
    annotations = {**inheritable_annotations(meta.get("annotations")), **(sub.get("annotations") or {})}
    return labels, annotations


def owner_reference(owner: Mapping[str, Any]) -> Obj:
    """A controller owner reference: the garbage collector deletes the child with its owner, no finalizer."""
    return {
        "apiVersion": owner.get("apiVersion", API_VERSION),
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_controlled_by(child: Mapping[str, Any], owner_uid: str) -> bool:
    return any(
        ref.get("controller") and ref.get("uid") == owner_uid
        for ref in child.get("metadata", {}).get("ownerReferences") or []
    )


def template_hash(*parts: Any) -> str:
    """10 hex characters that change whenever any part changes (canonical JSON, SHA-256)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def with_env_defaults(containers: list[Obj], defaults: Mapping[str, str]) -> list[Obj]:
    """Containers with each variable of `defaults` appended unless the container already defines it."""
    out = []
    for container in containers:
        env = list(container.get("env") or [])
        present = {e.get("name") for e in env}
        env += [{"name": k, "value": v} for k, v in defaults.items() if k not in present]
        out.append({**container, "env": env})
    return out


# -- Pods as the reconcilers see them -------------------------------------------------------------------


def is_terminating(obj: Mapping[str, Any]) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


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


# -- Conditions -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""


def merge_conditions(
    previous: Iterable[Mapping[str, Any]] | None,
    wanted: Iterable[Condition],
    now: str,
    generation: int | None,
) -> list[Obj]:
    """Conditions as stored: lastTransitionTime moves when status *or reason* changes (so it also tells
    since when a reason has held, which timeouts read), otherwise it is kept from `previous`."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for cond in wanted:
        status = "True" if cond.status else "False"
        old = before.get(cond.type)
        unchanged = old is not None and old.get("status") == status and old.get("reason") == cond.reason
        entry: Obj = {
            "type": cond.type,
            "status": status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": old.get("lastTransitionTime", now) if unchanged and old else now,
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        out.append(entry)
    return out


def find_condition(conditions: Iterable[Mapping[str, Any]] | None, kind: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == kind), None)


@dataclass(frozen=True)
class EventSpec:
    """An Event to record on the reconciled object: type Normal/Warning, a CamelCase reason, a sentence."""

    type: str
    reason: str
    message: str


def condition_events(
    previous: Iterable[Mapping[str, Any]] | None, current: Iterable[Obj], ready_events: bool = True
) -> list[EventSpec]:
    """Events for condition changes a user must know about; nothing when nothing changed.

    Degraded -> Warning (and Normal when it clears); becoming Ready -> Normal, if `ready_events`.
    """
    before = {c.get("type"): c for c in previous or []}
    events = []
    for cond in current:
        old = before.get(cond["type"]) or {}
        if old.get("status") == cond["status"] and old.get("reason") == cond["reason"]:
            continue
        if cond["type"] == "Degraded" and cond["status"] == "True":
            events.append(EventSpec("Warning", cond["reason"], cond["message"]))
        elif cond["type"] == "Degraded" and old.get("status") == "True":
            events.append(EventSpec("Normal", "Recovered", f"No longer degraded ({old.get('reason')})."))
        elif cond["type"] == "Ready" and cond["status"] == "True" and ready_events:
            events.append(EventSpec("Normal", cond["reason"], cond["message"]))
    return events
