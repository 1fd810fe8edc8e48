"""LIST then WATCH one kind into a sink, forever, without missing a state (client-go's Reflector).

Invariant: the first watch starts at the list's collection resourceVersion, and every later watch at the RV
of the last event or BOOKMARK seen; a normal close re-watches without listing; 410 (or an Expired in-stream
error) relists from the last RV, then from "" (quorum); every failure waits a jittered exponential backoff.
Every list is read in pages of `page_size` (limit/continue), so no response holds a whole fleet: the first
one is a consistent read (resourceVersion unset, which API servers since 1.31 serve from their watch cache),
because the watch cache answers resourceVersion=0 with every object at once whatever the limit; a relist
from the last RV asks for resourceVersionMatch=NotOlderThan (paged, an RV alone means Exact).
Held by test/integration/test_runtime_reflector.py.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from dask_operator.runtime.backoff import Backoff
from dask_operator.runtime.client import ApiError, Client, ConnectionFailure, WatchStream
from dask_operator.runtime.kinds import Kind
from dask_operator.runtime.objects import Obj
from dask_operator.runtime.transform import decode_for_cache

log = structlog.get_logger("dask_operator.runtime.reflector")

DEFAULT_MIN_WATCH_TIMEOUT = 300  # seconds; each watch asks for uniform [min, 2*min]
DEFAULT_READ_TIMEOUT_MARGIN = 30.0  # the HTTP read timeout is timeoutSeconds + this
DEFAULT_LIST_PAGE_SIZE = 500  # objects per list page (client-go's pager default)


class Sink(Protocol):
    """Where a reflector delivers: a full snapshot, or one change at a time, in order."""

    def replace(self, items: list[Obj], resource_version: str) -> None: ...
    def added(self, obj: Obj) -> None: ...
    def modified(self, obj: Obj) -> None: ...
    def deleted(self, obj: Obj) -> None: ...


class VeryShortWatch(Exception):
    """The watch closed within a second with no events: the server is unhealthy; relist after a backoff."""


class Expired(Exception):
    """The resourceVersion we watch from is gone from the server's history: relist."""


class Reflector:
    def __init__(
        self,
        client: Client,
        kind: Kind,
        sink: Sink,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        min_watch_timeout: int = DEFAULT_MIN_WATCH_TIMEOUT,
        read_timeout_margin: float = DEFAULT_READ_TIMEOUT_MARGIN,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        decode: Callable[[bytes], Any] = decode_for_cache,
        page_size: int = DEFAULT_LIST_PAGE_SIZE,
    ) -> None:
        self.client = client
        self.page_size = page_size
        self.decode = decode  # how list pages and watch events are parsed (compacted for the cache)
        self.kind = kind
        self.sink = sink
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.min_watch_timeout = min_watch_timeout
        self.read_timeout_margin = read_timeout_margin
        self.backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._clock = clock
        self._last_rv = ""
        self._quorum_next = False
        self.lists = 0  # counters for tests and health checks
        self.watches = 0
        self._log = log.bind(kind=kind.kind, namespace=namespace or "")
        self._stream: WatchStream | None = None
        self._stopped = False

    @property
    def last_sync_resource_version(self) -> str:
        return self._last_rv

    def abort(self) -> None:
        """Stop now: close the open watch, so run() returns without waiting for the server."""
        self._stopped = True
        stream = self._stream
        if stream is not None:
            stream.close()

    def run(self, stop: threading.Event) -> None:
        """List-and-watch until stop is set; never raises."""
        while not stop.is_set():
            try:
                self._list_and_watch(stop)
            except Exception as error:  # noqa: BLE001  (the loop must outlive any one failure)
                self._log.warning("list-and-watch ended", error=str(error), error_type=type(error).__name__)
            if stop.is_set():
                return
            stop.wait(self.backoff.next())

    def _list_and_watch(self, stop: threading.Event) -> None:
        self._list()
        while not stop.is_set():
            timeout = self._rng.randint(self.min_watch_timeout, 2 * self.min_watch_timeout)
            try:
                self.watches += 1
                events = self.client.watch(
                    self.kind,
                    self.namespace,
                    self._last_rv,
                    timeout,
                    allow_bookmarks=True,
                    label_selector=self.label_selector,
                    field_selector=self.field_selector,
                    read_timeout=timeout + self.read_timeout_margin,
                    decode=self.decode,
                )
            except ConnectionFailure as error:
                # the server is probably restarting: keep the RV, wait, watch again (no relist)
                self._log.info("watch failed, backing off", error=str(error))
                stop.wait(self.backoff.next())
                continue
            except ApiError as error:
                if error.status == 429:
                    self._log.info("watch throttled (429), backing off")
                    stop.wait(max(self.backoff.next(), error.retry_after or 0.0))
                    continue
                if error.expired:
                    raise Expired(str(error)) from error
                raise
            self._stream = events
            if self._stopped:
                events.close()
            started = self._clock()
            try:
                count = self._consume(events, stop)
            finally:
                self._stream = None
            if count == 0 and self._clock() - started < 1.0 and not stop.is_set():
                raise VeryShortWatch(f"watch of {self.kind.plural} closed within 1 s with no events")

    def _consume(self, events: WatchStream, stop: threading.Event) -> int:
        count = 0
        try:
            for event in events:
                if stop.is_set():
                    break
                count += 1
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    status = obj
                    if status.get("code") == 410 or status.get("reason") in ("Expired", "Gone"):
                        raise Expired(str(status.get("message", "watch expired")))
                    raise ApiError(
                        int(status.get("code") or 500), "WATCH", self.kind.collection_path(), status
                    )
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if kind == "ADDED":
                    self.sink.added(obj)
                elif kind == "MODIFIED":
                    self.sink.modified(obj)
                elif kind == "DELETED":
                    self.sink.deleted(obj)
                elif kind != "BOOKMARK":
                    self._log.warning("unknown watch event type", type=kind)
                    continue
                if rv:
                    self._last_rv = str(rv)
        except ConnectionFailure as error:
            # a broken stream is a close: the server replays everything after our last RV on re-watch
            self._log.info("watch stream broke", error=str(error), events=count)
        return count

    def _list(self) -> None:
        rv = "" if self._quorum_next or not self._last_rv else self._last_rv
        try:
            items, list_rv = self._list_at(rv)
        except ApiError as error:
            if rv != "" and (error.expired or error.too_large_resource_version):
                self._log.info("list from resourceVersion failed, listing from etcd", rv=rv, error=str(error))
                items, list_rv = self._list_at("")
            else:
                self._quorum_next = error.expired or error.too_large_resource_version
                raise
        self._quorum_next = False
        self.sink.replace(items, list_rv)
        self._last_rv = list_rv

    def _list_at(self, rv: str) -> tuple[list[Obj], str]:
        self.lists += 1
        return self.client.list(
            self.kind,
            self.namespace,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            resource_version=rv,
            # paged at a resourceVersion, a list means Exact unless told otherwise: an old RV would be served
            # again as is, and the watch from it fail again, forever (after an API server restart)
            resource_version_match="NotOlderThan" if rv else None,
            limit=self.page_size,
            timeout=max(self.client.timeout, 60.0),
            retry=False,  # the reflector's own backoff paces list retries
            decode=self.decode,
        )
