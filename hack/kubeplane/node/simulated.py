"""Simulated pods: Running and Ready with an IP, no process, no netns (benchmarks at thousands of pods).

Invariant: no thread per pod; each pod costs one status write when it arrives and one final DELETE
when it is deleted, both through the node's shared work pool, keyed by UID so bursts of watch events
collapse into one write. Addresses come from a separate /16 that is routed into the bridge, so
nothing sent to them leaves the machine.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .context import NodeContext
from .kubeapi import STRATEGIC_PATCH, ApiError
from .podstatus import INIT, MAIN, SIDECAR, ContainerView, PodView, build_pod_status
from .workpool import Retry, WorkPool

log = logging.getLogger(__name__)

JSON = dict[str, Any]


def simulated_status(pod: JSON, pod_ip: str, host_ip: str, now: float) -> JSON:
    spec = pod["spec"]
    views: list[ContainerView] = []
    for c in spec.get("initContainers") or []:
        sidecar = c.get("restartPolicy") == "Always"
        v = ContainerView(name=c["name"], image=c.get("image", ""), role=SIDECAR if sidecar else INIT)
        if sidecar:
            v.state, v.started_at, v.ready, v.started = "running", now, True, True
        else:
            v.state, v.reason, v.exit_code, v.completed = "terminated", "Completed", 0, True
            v.started_at = v.finished_at = now
        v.container_id = f"simulated://{pod['metadata']['uid'][:8]}-{c['name']}"
        views.append(v)
    for c in spec.get("containers") or []:
        v = ContainerView(name=c["name"], image=c.get("image", ""), role=MAIN, state="running", reason="")
        v.started_at, v.ready, v.started = now, True, True
        v.container_id = f"simulated://{pod['metadata']['uid'][:8]}-{c['name']}"
        views.append(v)
    view = PodView(
        restart_policy=spec.get("restartPolicy") or "Always",
        containers=views,
        pod_ip=pod_ip,
        host_ip=host_ip,
        start_time=now,
    )
    return build_pod_status(view, now)


class SimulatedPods:
    def __init__(self, ctx: NodeContext, pool: WorkPool) -> None:
        self.ctx = ctx
        self.pool = pool
        self._lock = threading.Lock()
        self._ready: set[str] = set()

    def offer(self, pod: JSON) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        if meta.get("deletionTimestamp"):
            self.pool.submit(("delete", uid), lambda: self._delete(pod))
            return
        with self._lock:
            if uid in self._ready:
                return
        status = pod.get("status") or {}
        if status.get("phase") == "Running" and status.get("podIP"):
            with self._lock:
                self._ready.add(uid)  # written by us before a restart of the node
            return
        self.pool.submit(("ready", uid), lambda: self._mark_ready(pod))

    def forget(self, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            self._ready.discard(uid)
        self.ctx.simulated_ipam.release(uid)

    def _mark_ready(self, pod: JSON) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        ip = self.ctx.simulated_ipam.allocate(uid)
        status = simulated_status(pod, ip, self.ctx.cfg.node_ip, time.time())
        try:
            self.ctx.client.request(
                "PATCH",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                body={"metadata": {"uid": uid}, "status": status},
                content_type=STRATEGIC_PATCH,
                timeout=20,
            )
        except ApiError as e:
            if e.status in (404, 409):
                self.ctx.simulated_ipam.release(uid)
                return
            raise Retry(1.0) from e
        with self._lock:
            self._ready.add(uid)

    def _delete(self, pod: JSON) -> None:
        meta = pod["metadata"]
        try:
            self.ctx.client.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                timeout=20,
            )
        except ApiError as e:
            if e.status not in (404, 409):
                raise Retry(1.0) from e
