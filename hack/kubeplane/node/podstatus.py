"""Pod status from the node's view of its containers: phase, conditions, container statuses (pure).

Invariant: the same container states always give the same status (times are inputs), so a status is
written only when it differs; a condition keeps its lastTransitionTime until its status flips. Phase
follows the kubelet: init containers gate Pending, crash-looping containers count as stopped, and
Succeeded/Failed exist only where restartPolicy allows no further restart.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

INIT, SIDECAR, MAIN = "init", "sidecar", "main"


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerView:
    """What the node knows about one container; `state` is waiting | running | terminated."""

    name: str
    image: str
    role: str = MAIN
    state: str = "waiting"
    reason: str = "ContainerCreating"
    message: str = ""
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    restart_count: int = 0
    last_terminated: JSON | None = None
    ready: bool = False
    started: bool = False
    container_id: str = ""
    completed: bool = False  # init containers: ran to exit 0

    def terminated_json(self) -> JSON:
        out: JSON = {
            "exitCode": self.exit_code if self.exit_code is not None else 0,
            "reason": self.reason,
            "startedAt": rfc3339(self.started_at) if self.started_at else None,
            "finishedAt": rfc3339(self.finished_at) if self.finished_at else None,
        }
        if self.message:
            out["message"] = self.message
        if self.container_id:
            out["containerID"] = self.container_id
        return out

    def status_json(self) -> JSON:
        if self.state == "running":
            state: JSON = {"running": {"startedAt": rfc3339(self.started_at or 0)}}
        elif self.state == "terminated":
            state = {"terminated": self.terminated_json()}
        else:
            waiting: JSON = {"reason": self.reason}
            if self.message:
                waiting["message"] = self.message
            state = {"waiting": waiting}
        out: JSON = {
            "name": self.name,
            "image": self.image,
            "imageID": f"localkube://{self.image}" if self.container_id else "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def pod_phase(restart_policy: str, containers: Sequence[ContainerView]) -> str:
    inits = [c for c in containers if c.role == INIT]
    mains = [c for c in containers if c.role == MAIN]
    for c in inits:
        if c.state == "terminated" and (c.exit_code or 0) != 0 and restart_policy == "Never":
            return "Failed"
    if any(not c.completed for c in inits):
        return "Pending"
    waiting = running = stopped = succeeded = 0
    for c in mains:
        if c.state == "running":
            running += 1
        elif c.state == "terminated":
            stopped += 1
            succeeded += int(c.exit_code == 0)
        elif c.last_terminated is not None:
            stopped += 1
            succeeded += int(c.last_terminated.get("exitCode") == 0)
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if restart_policy == "Always":
        return "Running"
    if restart_policy == "OnFailure":
        return "Succeeded" if succeeded == stopped else "Running"
    return "Succeeded" if succeeded == stopped else "Failed"


def _condition(
    ctype: str, ok: bool, now: float, previous: JSON | None, reason: str = "", message: str = ""
) -> JSON:
    status = "True" if ok else "False"
    since = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
    cond: JSON = {
        "type": ctype,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": since or rfc3339(now),
    }
    if not ok and reason:
        cond["reason"] = reason
        cond["message"] = message
    return cond


@dataclass
class PodView:
    restart_policy: str
    containers: list[ContainerView]
    pod_ip: str
    host_ip: str
    start_time: float
    sandbox_ready: bool = True
    previous_conditions: list[JSON] = field(default_factory=list)


def build_pod_status(view: PodView, now: float) -> JSON:
    phase = pod_phase(view.restart_policy, view.containers)
    prev = {c.get("type"): c for c in view.previous_conditions}
    inits = [c for c in view.containers if c.role in (INIT, SIDECAR)]
    mains = [c for c in view.containers if c.role == MAIN]
    uninitialised = [c.name for c in inits if not (c.completed if c.role == INIT else c.started)]
    unready = [c.name for c in view.containers if c.role in (MAIN, SIDECAR) and not c.ready]
    terminal = phase in ("Succeeded", "Failed")
    if terminal:
        ready_reason, ready_msg = "PodCompleted", ""
        ready = False
    else:
        ready_reason = "ContainersNotReady"
        ready_msg = f"containers with unready status: [{' '.join(unready)}]"
        ready = not unready
    conditions = [
        _condition(
            "PodReadyToStartContainers",
            view.sandbox_ready and not terminal,
            now,
            prev.get("PodReadyToStartContainers"),
        ),
        _condition(
            "Initialized",
            not uninitialised or terminal,
            now,
            prev.get("Initialized"),
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(uninitialised)}]",
        ),
        _condition("Ready", ready, now, prev.get("Ready"), ready_reason, ready_msg),
        _condition("ContainersReady", ready, now, prev.get("ContainersReady"), ready_reason, ready_msg),
    ]
    status: JSON = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": view.host_ip,
        "hostIPs": [{"ip": view.host_ip}],
        "startTime": rfc3339(view.start_time),
        "containerStatuses": [c.status_json() for c in mains],
    }
    if view.pod_ip:
        status["podIP"] = view.pod_ip
        status["podIPs"] = [{"ip": view.pod_ip}]
    if inits:
        status["initContainerStatuses"] = [c.status_json() for c in inits]
    return status
