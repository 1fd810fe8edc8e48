"""Kubernetes Events for pods (what `kubectl describe pod` shows), posted off the caller's thread.

Invariant: recording an event never blocks or fails the caller; events go through the shared work pool
and a failed post is dropped (events are best effort, as in the kubelet).
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from typing import Any

from .kubeapi import ApiError, KubeClient
from .podstatus import rfc3339
from .workpool import WorkPool

log = logging.getLogger(__name__)

JSON = dict[str, Any]


def new_event(pod: JSON, node: str, reason: str, message: str, kind: str, component: str) -> JSON:
    meta = pod["metadata"]
    now = rfc3339(time.time())
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": component, "host": node},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class EventRecorder:
    def __init__(self, client: KubeClient, pool: WorkPool, node: str) -> None:
        self.client = client
        self.pool = pool
        self.node = node
        self._seq = itertools.count()

    def __call__(
        self, pod: JSON, reason: str, message: str, kind: str = "Normal", component: str = "kubelet"
    ) -> None:
        event = new_event(pod, self.node, reason, message, kind, component)
        ns = pod["metadata"]["namespace"]

        def post() -> None:
            try:
                self.client.request("POST", f"/api/v1/namespaces/{ns}/events", body=event, timeout=10)
            except ApiError as e:
                log.debug("event %s dropped: %s", reason, e)

        self.pool.submit(("event", next(self._seq)), post)
