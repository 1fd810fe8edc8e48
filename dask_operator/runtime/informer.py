"""A shared informer: one reflector per kind feeding one indexed store and any number of handlers.

Invariant: the store changes before any handler hears of the change; each handler hears about one object
in resourceVersion order on its own thread (handlers never block each other); a relist turns vanished objects
into one tombstone delete each, changed objects into one update, unchanged objects into nothing (except for
handlers that asked for resync); a handler is synced once it consumed the initial list (or, registered late,
one synthetic add per cached object, with no gap or duplicate against concurrent events).
Held by test/integration/test_runtime_reflector.py, test/unit/test_runtime_informer.py.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from dask_operator.runtime.client import Client
from dask_operator.runtime.kinds import Kind
from dask_operator.runtime.objects import Obj
from dask_operator.runtime.reflector import (
    DEFAULT_LIST_PAGE_SIZE,
    DEFAULT_MIN_WATCH_TIMEOUT,
    DEFAULT_READ_TIMEOUT_MARGIN,
    Reflector,
)
from dask_operator.runtime.store import IndexFunc, Store, object_key
from dask_operator.runtime.transform import for_cache

log = structlog.get_logger("dask_operator.runtime.informer")
_jitter = random.Random()


class EventHandler(Protocol):
    """What an informer calls; implementations only enqueue keys and return quickly."""

    def on_add(self, obj: Obj, is_in_initial_list: bool) -> None: ...
    def on_update(self, old: Obj, new: Obj) -> None: ...
    def on_delete(self, obj: Obj, state_unknown: bool) -> None: ...


@dataclass(frozen=True)
class Added:
    obj: Obj
    is_in_initial_list: bool = False


@dataclass(frozen=True)
class Updated:
    old: Obj
    new: Obj
    is_resync: bool = False  # old and new have the same resourceVersion


@dataclass(frozen=True)
class Deleted:
    obj: Obj
    state_unknown: bool = False  # True: synthesised by a relist (a tombstone), obj is the last known state


Notification = Added | Updated | Deleted


class Listener:
    """One handler's ordered, unbounded notification buffer and the thread that drains it."""

    def __init__(self, handler: EventHandler, resync_period: float | None, name: str) -> None:
        self.handler = handler
        self.resync_period = resync_period
        self.next_resync = time.monotonic() + self.jittered_period() if resync_period else float("inf")
        self._pending: deque[Notification] = deque()
        self._cond = threading.Condition()
        self._enqueued = 0
        self._processed = 0
        self._target: int | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"listener-{name}", daemon=True)
        self._thread.start()

    def jittered_period(self) -> float:
        """The resync period stretched by a factor uniform in [0.9, 1.1), as c-r does per informer."""
        return (self.resync_period or 0.0) * _jitter.uniform(0.9, 1.1)

    def enqueue(self, notification: Notification) -> None:
        with self._cond:
            self._pending.append(notification)
            self._enqueued += 1
            self._cond.notify()

    def mark_synced_after_pending(self) -> None:
        """Synced once everything enqueued so far has been handled."""
        with self._cond:
            self._target = self._enqueued

    def has_synced(self) -> bool:
        with self._cond:
            return self._target is not None and self._processed >= self._target

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                notification = self._pending.popleft()
            try:
                self._dispatch(notification)
            except Exception:
                log.exception("event handler failed", handler=type(self.handler).__name__)
            with self._cond:
                self._processed += 1

    def _dispatch(self, notification: Notification) -> None:
        if isinstance(notification, Added):
            self.handler.on_add(notification.obj, notification.is_in_initial_list)
        elif isinstance(notification, Updated):
            self.handler.on_update(notification.old, notification.new)
        else:
            self.handler.on_delete(notification.obj, notification.state_unknown)


class Registration:
    def __init__(self, informer: Informer, listener: Listener) -> None:
        self._informer = informer
        self.listener = listener

    def has_synced(self) -> bool:
        return self._informer.has_synced_store() and self.listener.has_synced()

    def remove(self) -> None:
        self._informer.remove_handler(self)


class Informer:
    """Implements the reflector's Sink; thread-safe."""

    def __init__(
        self,
        client: Client,
        kind: Kind,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        indexers: Mapping[str, IndexFunc] | None = None,
        transform: Callable[[Obj], Obj] = for_cache,
        min_watch_timeout: int = DEFAULT_MIN_WATCH_TIMEOUT,
        read_timeout_margin: float = DEFAULT_READ_TIMEOUT_MARGIN,
        list_page_size: int = DEFAULT_LIST_PAGE_SIZE,
    ) -> None:
        self.kind = kind
        self.namespace = namespace if kind.namespaced else None
        self.store = Store(indexers)
        self._transform = transform
        # one lock orders store changes, notifications and late registrations
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._populated = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resync_thread: threading.Thread | None = None
        self.reflector = Reflector(
            client,
            kind,
            self,
            namespace=self.namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            min_watch_timeout=min_watch_timeout,
            read_timeout_margin=read_timeout_margin,
            page_size=list_page_size,
        )

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self.reflector.run,
                args=(self._stop,),
                name=f"reflector-{self.kind.plural}",
                daemon=True,
            )
            self._thread.start()

    def add_transform(self, transform: Callable[[Obj], Obj]) -> None:
        """Also pass every object through `transform` (after the ones already set) before it is stored."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"the {self.kind.plural} informer has started: add transforms before")
            inner = self._transform
            self._transform = lambda obj: transform(inner(obj))

    @property
    def started(self) -> bool:
        return self._thread is not None

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.reflector.abort()
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def has_synced_store(self) -> bool:
        with self._lock:
            return self._populated

    def has_synced(self) -> bool:
        """The initial list is in the store and every handler registered so far has consumed its batch."""
        with self._lock:
            return self._populated and all(listener.has_synced() for listener in self._listeners)

    def wait_for_sync(self, timeout: float | None = None, stop: threading.Event | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.has_synced():
            if (deadline is not None and time.monotonic() >= deadline) or (
                stop is not None and stop.is_set()
            ):
                return False
            time.sleep(0.01)
        return True

    # -- handlers ---------------------------------------------------------------------------------------

    def add_handler(self, handler: EventHandler, resync_period: float | None = None) -> Registration:
        """Register handler; if the store is already populated it first gets one add per cached object."""
        listener = Listener(handler, resync_period, self.kind.plural)
        with self._lock:
            self._listeners.append(listener)
            if self._populated:
                for obj in self.store.list():
                    listener.enqueue(Added(obj, is_in_initial_list=True))
                listener.mark_synced_after_pending()
            if resync_period and self._resync_thread is None:
                self._resync_thread = threading.Thread(
                    target=self._run_resync, name=f"resync-{self.kind.plural}", daemon=True
                )
                self._resync_thread.start()
        return Registration(self, listener)

    def remove_handler(self, registration: Registration) -> None:
        with self._lock:
            if registration.listener in self._listeners:
                self._listeners.remove(registration.listener)
        registration.listener.stop()

    def _notify(self, notification: Notification, resync_only: bool = False) -> None:
        for listener in self._listeners:
            if resync_only and not listener.resync_period:
                continue
            listener.enqueue(notification)

    # -- Sink (called by the reflector thread) ----------------------------------------------------------

    def replace(self, items: list[Obj], resource_version: str) -> None:
        items = [self._transform(obj) for obj in items]
        with self._lock:
            old = self.store.replace(items)
            initial = not self._populated
            for key, vanished in old.items():  # deletions first, as client-go's RealFIFO does
                if self.store.get(key) is None:
                    self._notify(Deleted(vanished, state_unknown=True))
            for obj in items:
                previous = old.get(object_key(obj))
                if previous is None:
                    self._notify(Added(obj, is_in_initial_list=initial))
                elif _rv(previous) != _rv(obj):
                    self._notify(Updated(previous, obj))
                else:
                    self._notify(Updated(previous, obj, is_resync=True), resync_only=True)
            if initial:
                self._populated = True
                for listener in self._listeners:
                    listener.mark_synced_after_pending()
        log.debug("replaced", kind=self.kind.kind, items=len(items), rv=resource_version)

    def added(self, obj: Obj) -> None:
        self._upsert(obj)

    def modified(self, obj: Obj) -> None:
        self._upsert(obj)

    def _upsert(self, obj: Obj) -> None:
        obj = self._transform(obj)
        with self._lock:
            previous = self.store.upsert(obj)
            if previous is None:
                self._notify(Added(obj))
            else:
                self._notify(Updated(previous, obj))

    def deleted(self, obj: Obj) -> None:
        obj = self._transform(obj)
        with self._lock:
            self.store.delete(object_key(obj))
            self._notify(Deleted(obj))

    # -- resync -----------------------------------------------------------------------------------------

    def _run_resync(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                due = [lst for lst in self._listeners if lst.resync_period and lst.next_resync <= now]
                if not due or not self._populated:
                    continue
                objs = self.store.list()
                for listener in due:
                    listener.next_resync = now + listener.jittered_period()
                    for obj in objs:
                        listener.enqueue(Updated(obj, obj, is_resync=True))


def _rv(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))
