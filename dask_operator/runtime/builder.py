"""The builder: say in one line what a controller watches (c-r's builder).

Invariant: `for_(K)` enqueues the object itself, `owns(C)` enqueues the controller owner of kind K named in
C's ownerReferences, `watches(X, mapper)` enqueues what mapper returns; names are unique per manager and
default to the lowercased For kind; nothing runs until the manager starts it; with
`ignoring_own_status_echoes()`, the For watch drops the echo of the controller's own status writes
(predicate.NotOwnStatusEcho).
Held by test/unit/test_runtime_controller.py and test/integration/test_runtime_manager.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from dask_operator.runtime.consistency import OwnStatusWrites
from dask_operator.runtime.controller import DEFAULT_CACHE_SYNC_TIMEOUT, Controller, WatchSpec
from dask_operator.runtime.handler import request_for_object, requests_for_owner
from dask_operator.runtime.kinds import Kind
from dask_operator.runtime.manager import Manager
from dask_operator.runtime.objects import Obj
from dask_operator.runtime.predicate import NotOwnStatusEcho, Predicate
from dask_operator.runtime.ratelimiter import RateLimiter
from dask_operator.runtime.reconcile import Reconciler, Request


class ControllerBuilder:
    def __init__(self, manager: Manager) -> None:
        self._manager = manager
        self._name: str | None = None
        self._for: Kind | None = None
        self._for_predicates: tuple[Predicate, ...] = ()
        self._owns: list[tuple[Kind, tuple[Predicate, ...], bool]] = []
        self._watches: list[WatchSpec] = []
        self._filters: list[Predicate] = []
        self._max_concurrent = 1
        self._timeout: float | None = None
        self._rate_limiter: RateLimiter | None = None
        self._sync_timeout = DEFAULT_CACHE_SYNC_TIMEOUT
        self._ignore_status_echoes = False

    def named(self, name: str) -> ControllerBuilder:
        self._name = name
        return self

    def for_(self, kind: Kind, predicates: Sequence[Predicate] = ()) -> ControllerBuilder:
        if self._for is not None:
            raise ValueError("for_() may only be called once")
        self._for = kind
        self._for_predicates = tuple(predicates)
        return self

    def owns(
        self, kind: Kind, predicates: Sequence[Predicate] = (), only_controller: bool = True
    ) -> ControllerBuilder:
        self._owns.append((kind, tuple(predicates), only_controller))
        return self

    def watches(
        self, kind: Kind, mapper: Callable[[Obj], Iterable[Request]], predicates: Sequence[Predicate] = ()
    ) -> ControllerBuilder:
        self._watches.append(WatchSpec(kind, mapper, tuple(predicates)))
        return self

    def with_event_filter(self, predicate: Predicate) -> ControllerBuilder:
        """A predicate applied to every watch of this controller."""
        self._filters.append(predicate)
        return self

    def ignoring_own_status_echoes(self) -> ControllerBuilder:
        """The For watch does not enqueue the update that only shows a status this controller wrote. Sound
        only for a reconciler whose plan, made again on the object showing its own status, writes nothing new
        (a reconciler that steps through its status needs the echo)."""
        self._ignore_status_echoes = True
        return self

    def with_options(
        self,
        max_concurrent_reconciles: int | None = None,
        reconcile_timeout: float | None = None,
        rate_limiter: RateLimiter | None = None,
        cache_sync_timeout: float | None = None,
    ) -> ControllerBuilder:
        if max_concurrent_reconciles is not None:
            self._max_concurrent = max_concurrent_reconciles
        if reconcile_timeout is not None:
            self._timeout = reconcile_timeout
        if rate_limiter is not None:
            self._rate_limiter = rate_limiter
        if cache_sync_timeout is not None:
            self._sync_timeout = cache_sync_timeout
        return self

    def complete(self, reconciler: Reconciler) -> Controller:
        """Build the controller and add it to the manager."""
        if self._for is None and not self._watches:
            raise ValueError("a controller needs for_(kind) or at least one watches(...)")
        name = self._name or (self._for.kind.lower() if self._for is not None else None)
        if not name:
            raise ValueError("a controller without for_() must be named()")
        specs: list[WatchSpec] = []
        status_writes = None
        if self._for is not None:
            status_writes = OwnStatusWrites(self._for) if self._ignore_status_echoes else None
            echoes = (NotOwnStatusEcho(status_writes),) if status_writes is not None else ()
            specs.append(WatchSpec(self._for, request_for_object, echoes + self._for_predicates))
            for kind, predicates, only_controller in self._owns:
                specs.append(WatchSpec(kind, requests_for_owner(self._for, only_controller), predicates))
        elif self._owns or self._ignore_status_echoes:
            raise ValueError("owns() and ignoring_own_status_echoes() need for_(): they concern the For kind")
        specs.extend(self._watches)
        controller = Controller(
            name,
            reconciler,
            self._manager.cache,
            specs,
            max_concurrent_reconciles=self._max_concurrent,
            reconcile_timeout=self._timeout,
            rate_limiter=self._rate_limiter,
            cache_sync_timeout=self._sync_timeout,
            event_filters=self._filters,
            status_writes=status_writes,
        )
        self._manager.add_controller(controller)
        return controller
