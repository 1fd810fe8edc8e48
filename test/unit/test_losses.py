"""Losses on the status: a killed worker and a restarted scheduler are reported once, then clear."""

from __future__ import annotations

import copy
from typing import Any

from support.builders import finished, killed, running, terminating

from dask_operator.controller.contract.conditions import merge_conditions
from dask_operator.controller.contract.losses import (
    LOSS_REPORT_SECONDS,
    container_losses,
    scheduler_restarted,
    worker_lost,
)
from dask_operator.controller.contract.objects import rfc3339

NOW = 1_700_000_000.0


def _pod(name: str = "g-worker-0123456789") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": {"containers": [{"name": "worker"}]}}


def _stored(report: Any, previous: Any = None, now: float = NOW) -> list[dict[str, Any]]:
    return merge_conditions(previous, [report.condition], rfc3339(now), 1)


def test_a_sigkilled_worker_is_reported_once_with_its_pod_and_exit_code() -> None:
    pod = killed(_pod(), NOW - 5)
    first = worker_lost([pod], None, NOW)
    assert first.condition.status and first.condition.reason == "WorkerKilled"
    assert "g-worker-0123456789/worker exit code 137" in first.condition.message
    (event,) = first.events
    assert event.type == "Warning" and event.reason == "WorkerLost" and "data" in event.message
    again = worker_lost([pod], _stored(first), NOW + 30)
    assert again.condition == first.condition and again.events == ()
    assert again.wake_in is not None and again.wake_in <= LOSS_REPORT_SECONDS


def test_a_second_kill_of_the_same_worker_is_a_second_event() -> None:
    first = worker_lost([killed(_pod(), NOW - 5)], None, NOW)
    second = worker_lost([killed(_pod(), NOW + 20, restarts=2)], _stored(first), NOW + 30)
    assert len(second.events) == 1 and rfc3339(NOW + 20) in second.events[0].message


def test_oom_killed_and_evicted_count_a_clean_exit_or_a_crash_does_not() -> None:
    assert container_losses(killed(_pod(), NOW, code=1, reason="OOMKilled"), NOW)
    assert not container_losses(killed(_pod(), NOW, code=1), NOW)
    assert not container_losses(killed(_pod(), NOW, code=0, reason="Completed"), NOW)
    evicted = running(_pod())
    evicted["status"] = {"phase": "Failed", "reason": "Evicted", "message": "node stopped"}
    assert "evicted" in container_losses(evicted, NOW)[0].how


def test_a_container_that_never_ran_in_a_deleted_pod_is_not_a_loss() -> None:
    """What the upstream kubelet (status_manager.TerminatePod) writes for a worker pod deleted while its
    container was still being created: exit code 137, reason ContainerStatusUnknown, no startedAt. Seen on
    the real node when a scale-down deleted a pod that had not started; it was reported as a kill."""
    placeholder = {
        "exitCode": 137,
        "reason": "ContainerStatusUnknown",
        "message": "The container could not be located when the pod was terminated",
    }
    pod = _pod()
    pod["metadata"]["deletionTimestamp"] = rfc3339(NOW + 60)
    pod["status"] = {
        "phase": "Failed",
        "containerStatuses": [{"name": "worker", "restartCount": 0, "state": {"terminated": placeholder}}],
    }
    assert container_losses(pod, NOW) == []
    assert worker_lost([pod], None, NOW).events == ()
    assert scheduler_restarted([pod], None, NOW).events == ()
    # a container that ran and was then SIGKILLed while its pod was deleted is still a loss
    ran = copy.deepcopy(pod)
    ran["status"]["containerStatuses"][0]["state"]["terminated"] = {
        "exitCode": 137, "reason": "Error", "startedAt": rfc3339(NOW - 30), "finishedAt": rfc3339(NOW)
    }  # fmt: skip
    assert [x.how for x in container_losses(ran, NOW)] == ["exit code 137"]
    # the same placeholder on a pod not being deleted (the runtime lost a running container) is a loss
    restarted = copy.deepcopy(pod)
    del restarted["metadata"]["deletionTimestamp"]
    restarted["status"]["containerStatuses"][0] |= {
        "restartCount": 1,
        "lastState": {"terminated": placeholder},
    }
    restarted["status"]["containerStatuses"][0]["state"] = {"running": {"startedAt": rfc3339(NOW)}}
    assert [x.how for x in container_losses(restarted, NOW)] == ["exit code 137"]


def test_the_report_outlives_a_replaced_pod_then_clears() -> None:
    first = worker_lost([killed(_pod(), NOW - 5)], None, NOW)
    stored = _stored(first)
    kept = worker_lost([], stored, NOW + 60)
    assert kept.condition.status and kept.events == ()
    cleared = worker_lost([], stored, NOW + LOSS_REPORT_SECONDS + 1)
    assert not cleared.condition.status and cleared.wake_in is None


def test_a_scheduler_restart_for_any_reason_says_the_state_was_lost() -> None:
    pod = killed(_pod("c-scheduler"), NOW - 3, code=0, reason="Completed")
    report = scheduler_restarted([pod], None, NOW)
    assert report.condition.reason == "SchedulerStateLost" and "lost its state" in report.condition.message
    (event,) = report.events
    assert event.reason == "SchedulerStateLost" and "lost its state" in event.message
    assert scheduler_restarted([pod], _stored(report), NOW + 10).events == ()
    quiet = scheduler_restarted([running(_pod("c-scheduler"))], None, NOW)
    assert not quiet.condition.status and quiet.events == ()


def test_a_deleted_scheduler_pod_says_it_was_deleted_not_restarted() -> None:
    pod = terminating(finished(_pod("c-scheduler"), "Running", code=0, at=NOW - 2), NOW - 3)
    (event,) = scheduler_restarted([pod], None, NOW).events
    assert "when its pod was deleted" in event.message and "restarted" not in event.message
    (restart,) = scheduler_restarted([killed(_pod("c-scheduler"), NOW - 3, code=0)], None, NOW).events
    assert "and was restarted" in restart.message


def test_an_old_restart_is_not_reported() -> None:
    pod = killed(_pod("c-scheduler"), NOW - LOSS_REPORT_SECONDS - 1)
    assert not scheduler_restarted([pod], None, NOW).condition.status
    assert not worker_lost([copy.deepcopy(pod)], None, NOW).condition.status


def test_each_reported_loss_counts_once_in_its_metric() -> None:
    from dask_operator.controller import operator_metrics
    from dask_operator.runtime.metrics import REGISTRY

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"namespace": "ns", "cluster": "c"}) or 0.0

    before = value("dask_operator_workers_lost_total"), value("dask_operator_scheduler_state_lost_total")
    worker = worker_lost([killed(_pod(), NOW - 5)], None, NOW)
    scheduler = scheduler_restarted([killed(_pod("c-scheduler"), NOW - 5)], None, NOW)
    operator_metrics.count_losses("ns", "c", [*worker.events, *scheduler.events])
    after = value("dask_operator_workers_lost_total"), value("dask_operator_scheduler_state_lost_total")
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 1.0)


def test_a_pod_deleted_with_its_lost_node_is_a_loss_a_drained_one_is_not() -> None:
    pod = terminating(running(_pod()))
    pod["status"]["conditions"].append(
        {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
         "lastTransitionTime": rfc3339(NOW - 3)}
    )  # fmt: skip
    (loss,) = container_losses(pod, NOW)
    assert "lost node" in loss.how and loss.at == NOW - 3
    assert worker_lost([pod], None, NOW).events
    drained = copy.deepcopy(pod)
    drained["status"]["conditions"][-1]["reason"] = "EvictionByEvictionAPI"
    assert not container_losses(drained, NOW)
