"""Self-binding: this node plays the scheduler for pods of the default scheduler (no kube-scheduler runs).

Invariant: a pod is bound only if its nodeSelector matches the node's labels and its extended-resource
requests (nvidia.com/gpu) fit the node's capacity; otherwise it gets PodScheduled=False/Unschedulable
once and stays Pending, as with the real scheduler. Binding is atomic in the API server, so a lost
race (409) is harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from .context import NodeContext, is_simulated
from .envvars import parse_quantity
from .kubeapi import STRATEGIC_PATCH, ApiError
from .podstatus import rfc3339
from .workpool import Retry, WorkPool

log = logging.getLogger(__name__)

JSON = dict[str, Any]
GPU = "nvidia.com/gpu"


def unschedulable_reason(
    pod: JSON, node_labels: Mapping[str, str], capacity: Mapping[str, str]
) -> str | None:
    """None if the pod fits this node, else the scheduler-style message."""
    spec = pod.get("spec") or {}
    selector = spec.get("nodeSelector") or {}
    if any(node_labels.get(k) != v for k, v in selector.items()):
        return "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    want = 0
    for c in spec.get("containers") or []:
        res = c.get("resources") or {}
        q = (res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU)
        if q is not None:
            want += int(parse_quantity(q))
    if want > int(capacity.get(GPU, "0")):
        return f"0/1 nodes are available: 1 Insufficient {GPU}."
    return None


class Binder:
    def __init__(
        self, ctx: NodeContext, pool: WorkPool, labels: Mapping[str, str], capacity: Mapping[str, str]
    ) -> None:
        self.ctx = ctx
        self.pool = pool
        self.labels = dict(labels)
        self.capacity = dict(capacity)
        self._refused: set[str] = set()

    def offer(self, pod: JSON) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        if (spec.get("schedulerName") or "default-scheduler") != "default-scheduler":
            return
        reason = unschedulable_reason(pod, self.labels, self.capacity)
        uid = meta["uid"]
        if reason is not None:
            if uid not in self._refused:
                self._refused.add(uid)
                self.pool.submit(("unschedulable", uid), lambda: self._mark_unschedulable(pod, reason))
            return
        self.pool.submit(("bind", uid), lambda: self._bind(pod))

    def _bind(self, pod: JSON) -> None:
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.ctx.cfg.node_name},
        }
        try:
            self.ctx.client.request(
                "POST", f"/api/v1/namespaces/{ns}/pods/{name}/binding", body=body, timeout=20
            )
        except ApiError as e:
            if e.status in (404, 409):
                return
            log.warning("bind %s/%s failed: %s", ns, name, e)
            raise Retry(1.0) from e
        if not is_simulated(self.ctx.cfg, pod):
            self.ctx.event(
                pod,
                "Scheduled",
                f"Successfully assigned {ns}/{name} to {self.ctx.cfg.node_name}",
                component="default-scheduler",
            )

    def _mark_unschedulable(self, pod: JSON, reason: str) -> None:
        meta = pod["metadata"]
        cond = {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": reason,
            "lastProbeTime": None,
            "lastTransitionTime": rfc3339(time.time()),
        }
        try:
            self.ctx.client.request(
                "PATCH",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                body={"metadata": {"uid": meta["uid"]}, "status": {"conditions": [cond]}},
                content_type=STRATEGIC_PATCH,
            )
        except ApiError as e:
            log.debug("unschedulable %s: %s", meta["name"], e)
