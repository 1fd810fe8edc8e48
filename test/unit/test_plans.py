"""controller/contract/plans.py and the time format it shares (runtime/objects.py): a plan is plain data
whose views read its steps in order; rfc3339 round-trips to the second."""

from __future__ import annotations

from dask_operator.controller.contract.conditions import EventSpec
from dask_operator.controller.contract.plans import Apply, Cause, Create, Delete, Emit, Plan, Ref, SetStatus
from dask_operator.runtime.objects import parse_rfc3339, rfc3339


def test_rfc3339_round_trips_to_the_second_and_garbage_reads_as_none() -> None:
    assert parse_rfc3339(rfc3339(1_700_000_000.7)) == 1_700_000_000.0
    assert parse_rfc3339("yesterday") is None and parse_rfc3339(None) is None


def test_plan_views_read_the_steps_in_order() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "uid": "u"}}
    plan = Plan(
        steps=(Apply(pod), Create(pod), Delete(Ref.of(pod), Cause.POD_FINISHED), SetStatus({"phase": "x"}),
               Emit(EventSpec("Normal", "R", "m"))),
        requeue_after=3.0,
    )  # fmt: skip
    assert plan.applies == (pod,) and plan.creates == (pod,)
    assert plan.deletes == (Delete(Ref("v1", "Pod", "ns", "p", "u"), Cause.POD_FINISHED),)
    assert plan.status == {"phase": "x"} and plan.events == (EventSpec("Normal", "R", "m"),)
    assert plan.retire is None and plan.question is None
    assert Cause.RETIRED.retirement_metric == "retired" and Cause.TEMPLATE_CHANGED.retirement_metric is None
