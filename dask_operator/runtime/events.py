"""Kubernetes Events (core/v1) about objects, recorded off the reconcile path.

Invariant: `event()` never blocks a reconcile and never raises; repeats of the same (object, type, reason,
message) within the correlation window bump one Event's count instead of creating another object. The
correlator remembers at most CORRELATED events, each by a 16-byte digest of that identity (not the message).
Held by test/integration/test_runtime_client.py and test/unit/test_runtime_events.py.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import queue
import secrets
import socket
import threading
import time
from typing import Any

import structlog

from dask_operator.runtime.client import ApiError, Client
from dask_operator.runtime.kinds import EVENT
from dask_operator.runtime.objects import Obj

log = structlog.get_logger("dask_operator.runtime.events")

NORMAL = "Normal"
WARNING = "Warning"
CORRELATION_WINDOW = 600.0  # seconds, as client-go's event correlator
CORRELATED = 4096  # events remembered for correlation (as client-go's LRU); past it, the table starts again
_STOP = object()


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(
        self, client: Client, component: str, host: str | None = None, *, max_pending: int = 1000
    ) -> None:
        self.client = client
        self.component = component
        self.host = host or socket.gethostname()
        self._pending: queue.Queue[Any] = queue.Queue(max_pending)
        # digest of (object, type, reason, message) -> the Event's name and namespace, its count, when last seen
        self._seen: dict[bytes, tuple[str, str, int, float]] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def event(self, obj: Obj, type: str, reason: str, message: str) -> None:
        """Record an Event about obj (asynchronously); dropped with a log line if the backlog is full."""
        if type not in (NORMAL, WARNING):
            raise ValueError(f"event type must be {NORMAL!r} or {WARNING!r}, not {type!r}")
        self._ensure_started()
        try:
            self._pending.put_nowait((obj, type, reason, message))
        except queue.Full:
            log.warning("event dropped: backlog full", reason=reason)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every recorded event has been written (tests)."""
        deadline = time.monotonic() + timeout
        while self._pending.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._pending.unfinished_tasks

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self.flush(timeout)
            self._pending.put(_STOP)
            self._thread.join(timeout)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._pending.get()
            try:
                if item is _STOP:
                    return
                self._write(*item)
            except Exception as error:  # noqa: BLE001  (an event must never take the recorder down)
                log.warning("event not recorded", error=str(error))
            finally:
                self._pending.task_done()

    def _write(self, obj: Obj, type: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        identity = _identity(str(meta.get("uid") or f"{namespace}/{meta.get('name')}"), type, reason, message)
        timestamp = now_rfc3339()
        seen = self._seen.get(identity)
        if seen is not None and time.monotonic() - seen[3] < CORRELATION_WINDOW:
            name, event_namespace, count, _ = seen
            try:
                self.client.patch_merge(
                    EVENT, event_namespace, name, {"count": count + 1, "lastTimestamp": timestamp}
                )
                self._seen[identity] = (name, event_namespace, count + 1, time.monotonic())
                return
            except ApiError as error:
                if not error.not_found:
                    raise
        name = f"{meta.get('name', 'unknown')}.{time.time_ns():x}{secrets.token_hex(2)}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                key: value
                for key, value in {
                    "apiVersion": obj.get("apiVersion"),
                    "kind": obj.get("kind"),
                    "name": meta.get("name"),
                    "namespace": meta.get("namespace"),
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                }.items()
                if value
            },
            "reason": reason,
            "message": message,
            "type": type,
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component,
            "reportingInstance": self.host,
            "firstTimestamp": timestamp,
            "lastTimestamp": timestamp,
            "count": 1,
        }
        self.client.create(event)
        if len(self._seen) > CORRELATED:
            self._seen.clear()
        self._seen[identity] = (name, namespace, 1, time.monotonic())


def _identity(involved: str, type: str, reason: str, message: str) -> bytes:
    """What makes two events the same one, in 16 bytes (a message may be long, and it is kept for 10 min)."""
    data = json.dumps([involved, type, reason, message]).encode()
    return hashlib.blake2b(data, digest_size=16).digest()
