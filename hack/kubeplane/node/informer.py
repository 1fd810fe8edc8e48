"""List-then-watch of one resource into an in-memory store, with callbacks for every change.

Invariant: the store equals the server's state as of the last resourceVersion seen. The watch resumes
from the RV of every event and bookmark; a 410 Gone (or any broken stream that cannot resume) triggers a
relist, and objects that vanished meanwhile are delivered as deletions. Callbacks never kill the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .kubeapi import JSON, ApiError, KubeClient

log = logging.getLogger(__name__)

Handler = Callable[[str, JSON], None]  # (event type ADDED|MODIFIED|DELETED, object)


def _slim(obj: JSON) -> JSON:
    """Drops managedFields: the node never reads them, and at thousands of pods they dominate memory."""
    obj.get("metadata", {}).pop("managedFields", None)
    return obj


def object_key(obj: JSON) -> str:
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


class Informer:
    def __init__(
        self,
        client: KubeClient,
        path: str,
        handler: Handler,
        query: dict[str, Any] | None = None,
        server_timeout: int = 60,
        name: str = "",
    ) -> None:
        self.client = client
        self.path = path
        self.query = dict(query or {})
        self.handler = handler
        self.server_timeout = server_timeout
        self.name = name or path
        self.store: dict[str, JSON] = {}
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer {self.name}", daemon=True)

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _deliver(self, kind: str, obj: JSON) -> None:
        try:
            self.handler(kind, obj)
        except Exception:
            log.exception("informer %s: handler failed on %s %s", self.name, kind, object_key(obj))

    def _relist(self) -> str:
        listed = self.client.request("GET", self.path, query=dict(self.query, limit=None), timeout=60)
        rv = str(listed["metadata"]["resourceVersion"])
        fresh = {object_key(o): _slim(o) for o in listed.get("items", [])}
        for key in [k for k in self.store if k not in fresh]:
            self._deliver("DELETED", self.store.pop(key))
        for key, obj in fresh.items():
            old = self.store.get(key)
            self.store[key] = obj
            if old is None:
                self._deliver("ADDED", obj)
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._deliver("MODIFIED", obj)
        self.synced.set()
        return rv

    def _run(self) -> None:
        rv: str | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._relist()
                for event in self.client.watch(
                    self.path, dict(self.query, resourceVersion=rv), self.server_timeout
                ):
                    if self._stop.is_set():
                        return
                    kind, obj = event.get("type"), _slim(event.get("object", {}))
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            rv = None  # expired: relist
                        else:
                            log.warning("informer %s: watch error %s", self.name, obj.get("message"))
                        break
                    rv = str(obj.get("metadata", {}).get("resourceVersion", rv))
                    if kind == "BOOKMARK":
                        continue
                    key = object_key(obj)
                    if kind == "DELETED":
                        self.store.pop(key, None)
                    else:
                        self.store[key] = obj
                    self._deliver(str(kind), obj)
                failures = 0
            except ApiError as e:
                failures += 1
                if e.status == 410:
                    rv = None
                elif e.status != 0:
                    log.warning("informer %s: %s", self.name, e)
                    rv = None
                # Back off on repeated failures so a down API server is not hammered.
                self._stop.wait(min(5.0, 0.2 * 2 ** min(failures, 5)))
            except Exception:
                log.exception("informer %s: unexpected failure; relisting", self.name)
                rv = None
                self._stop.wait(1.0)
        return

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return self.synced.wait(max(0.0, deadline - time.monotonic()))
