"""The one shape of a Dask reconcile, for all four kinds: observe (cache reads only) -> plan (pure) -> a
scheduler question answered off-thread and fed back as planner input on the next pass -> execute (the one
executor) -> record (metrics). A kind's reconciler declares what it observes, how it plans and what it
records; it never re-implements this loop.

Invariant: a reconcile reads the world only through `cache`, writes it only through `executor`, takes time
from `clock`, and never waits for a scheduler: a question whose fresh answer is not at hand is asked on a
thread of `calls` and the reconcile returns; the answer's arrival enqueues the key. Held by
test/unit/test_reconciler.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, ClassVar, Generic, TypeVar

from dask_operator.api.v1.names import scheduler_service_name
from dask_operator.controller import operator_metrics
from dask_operator.controller.contract.objects import Obj
from dask_operator.controller.contract.plans import Plan, Question
from dask_operator.controller.contract.pods import is_terminating
from dask_operator.controller.executor import Executor, Outcome, RetireWorkers
from dask_operator.controller.scheduler import SchedulerClient, SchedulerUnreachable, scheduler_endpoint
from dask_operator.controller.scheduler_calls import Answer, SchedulerCalls
from dask_operator.controller.settings import OperatorSettings
from dask_operator.runtime.kinds import SERVICE, Kind
from dask_operator.runtime.reconcile import Request, Result

O = TypeVar("O")  # a kind's observation

# How long an answer stays planner input after it arrived; older, the question is asked again. Questions
# whose answer may delete something (idleness) want it fresher than the others.
ANSWER_MAX_AGE: dict[Question, float] = {
    Question.WORKERS: 5.0,
    Question.ADAPTIVE_TARGET: 5.0,
    Question.IDLE_SINCE: 2.0,
    Question.DEMAND: 1.5,  # the autoscaler looks every 2 s (DEMAND_POLL_SECONDS): each look asks afresh
}

# Which call answers which question.
QUESTION_CALLS: dict[Question, Callable[[SchedulerClient], Any]] = {
    Question.WORKERS: SchedulerClient.get_workers,
    Question.ADAPTIVE_TARGET: SchedulerClient.adaptive_target,
    Question.IDLE_SINCE: SchedulerClient.check_idle,
    Question.DEMAND: SchedulerClient.demand,
}

NO_SERVICE = "the scheduler Service does not exist"


class DaskReconciler(Generic[O]):
    """The template. Subclasses set `kind` and define observe, plan and (if they ask) with_answer."""

    kind: ClassVar[Kind]
    # Seconds within which status changes are coalesced into one write (0: every change at once).
    status_window: ClassVar[float] = 0.0

    def __init__(
        self,
        manager: Any,
        settings: OperatorSettings,
        calls: SchedulerCalls | None = None,
        clock: Callable[[], float] = time.time,
        executor: Executor | None = None,
    ) -> None:
        self.cache = manager.cache
        self.executor = executor or Executor(
            manager.client,
            manager.applier,
            manager.recorder,
            settings.events_enabled,
            status_window=self.status_window,
        )
        self.settings = settings
        self.clock = clock
        self.calls = calls or SchedulerCalls(clock)

    # -- the template ------------------------------------------------------------------------------------

    def reconcile(self, request: Request) -> Result:
        obj = self.cache.get(self.kind, request.namespace, request.name)
        if obj is None or is_terminating(obj):
            self.forget(request)
            return Result()
        now = self.clock()
        observed = self.observe(obj)
        if observed is None:
            return Result()
        plan = self.plan(observed, now)
        if plan.question is not None:
            answered = self.answered(request, obj, observed, plan.question, now, plan.asked_after)
            if answered is None:  # asked; its answer enqueues this key
                return Result(requeue_after=2 * self.settings.scheduler_timeout + 5.0)
            observed, plan = answered, self.plan(answered, now)
        outcome = self.executor.run(obj, plan, now, self.retire_workers(request, obj))
        self.record(obj, observed, plan, outcome)
        return Result(requeue_after=outcome.requeue_after)

    # -- what a kind declares ----------------------------------------------------------------------------

    def observe(self, obj: Obj) -> O | None:
        """Everything the planner needs, read from the cache (and answers at hand); None: nothing to do."""
        raise NotImplementedError

    def plan(self, observed: O, now: float) -> Plan:
        raise NotImplementedError

    def with_answer(self, observed: O, question: Question, answer: Answer) -> O:
        """`observed` with the scheduler's answer (value or error) as planner input."""
        raise NotImplementedError(f"{type(self).__name__} does not ask {question}")

    def cluster_name(self, obj: Obj) -> str:
        """The DaskCluster whose scheduler this object's questions go to."""
        return str((obj.get("spec") or {}).get("cluster") or "")

    def record(self, obj: Obj, observed: O, plan: Plan, outcome: Outcome) -> None:
        """Metrics of one finished reconcile."""

    def retire_workers(self, request: Request, obj: Obj) -> RetireWorkers | None:
        return None

    def forget(self, request: Request) -> None:
        """The object is gone (or going): drop what was kept for it."""
        self.calls.forget(request)

    # -- questions, off the reconcile's thread ----------------------------------------------------------

    def answered(
        self,
        request: Request,
        obj: Obj,
        observed: O,
        question: Question,
        now: float,
        asked_after: float | None = None,
    ) -> O | None:
        """`observed` with a fresh answer to `question` if one is at hand (asked at or after `asked_after`,
        when given); else ask (once) and return None."""
        answer = self.calls.answer(request, question.value)
        age = now - answer.answered if answer is not None and answer.answered is not None else None
        recent = answer is not None and (asked_after is None or answer.asked >= asked_after)
        if answer is not None and recent and age is not None and age <= ANSWER_MAX_AGE[question]:
            self._count_reachable(obj, answer)
            return self.with_answer(observed, question, answer)
        scheduler = self.scheduler(obj["metadata"]["namespace"], self.cluster_name(obj))
        if scheduler is None:
            return self.with_answer(
                observed, question, Answer(now, None, now, None, SchedulerUnreachable(NO_SERVICE))
            )
        call = QUESTION_CALLS[question]
        self.calls.ask(request, question.value, lambda: call(scheduler))
        return None

    def scheduler(self, namespace: str, cluster: str) -> SchedulerClient | None:
        service = self.cache.get(SERVICE, namespace, scheduler_service_name(cluster))
        if service is None:
            return None
        return SchedulerClient(
            scheduler_endpoint(service),
            timeout=self.settings.scheduler_timeout,
            retire_timeout=self.settings.retire_timeout,
        )

    def _count_reachable(self, obj: Obj, answer: Answer) -> None:
        reachable = operator_metrics.SCHEDULER_REACHABLE.labels(
            obj["metadata"]["namespace"], self.cluster_name(obj)
        )
        reachable.set(int(answer.error is None))


Mapper = Callable[[Obj], list[Request]]


def requests_for(related: Callable[[Obj], Iterable[Obj]]) -> Mapper:
    """A watch's mapper: the objects `related` finds for a watched object (in the cache), as requests."""

    def mapper(watched: Obj) -> list[Request]:
        return [Request(o["metadata"]["namespace"], o["metadata"]["name"]) for o in related(watched)]

    return mapper


def namespace_and_name(obj: Obj) -> tuple[str, str]:
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


def enqueue_answers(reconciler: DaskReconciler[Any], controller: Any) -> None:
    """Wire a reconciler's scheduler answers to its controller: each arrival enqueues its key."""

    def answered(key: Hashable) -> None:
        if isinstance(key, Request):
            controller.queue.add(key)

    reconciler.calls.notify = answered
