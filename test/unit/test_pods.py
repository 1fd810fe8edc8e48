"""api/pods.py (and its re-export controller/contract/pods.py): one reading of a pod's status for the operator
and the client. A restarted container fails the operator's Degraded check only while it keeps failing; a
client waiting for a pod to start counts any restart or failed exit (`since_start`)."""

from __future__ import annotations

from typing import Any

import pytest
from support import builders

from dask_operator.api.pods import (
    RECOVERY_SECONDS,
    is_pod_finished,
    is_pod_ready,
    pod_failure,
    recovery_deadline,
)
from dask_operator.runtime.objects import rfc3339

NOW = 1_700_000_000.0


def _pod(**container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p"},
        "status": {"phase": "Running", "containerStatuses": [{"name": "c", **container}]},
    }


def test_ready_means_running_ready_and_not_terminating() -> None:
    pod = builders.running({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}})
    assert is_pod_ready(pod) and not is_pod_finished(pod)
    assert not is_pod_ready(builders.terminating(pod))
    assert is_pod_finished(builders.finished(pod)) and not is_pod_ready(builders.finished(pod))


def test_a_crash_loop_fails_in_both_readings() -> None:
    pod = _pod(state={"waiting": {"reason": "CrashLoopBackOff"}}, lastState={"terminated": {"exitCode": 3}})
    for since_start in (False, True):
        failure = pod_failure(pod, NOW, since_start=since_start)
        assert failure is not None and "CrashLoopBackOff" in failure and "exit code 3" in failure


def test_a_recovered_restart_fails_only_for_a_client_waiting_for_the_start() -> None:
    started = rfc3339(NOW - RECOVERY_SECONDS - 5)
    pod = _pod(state={"running": {"startedAt": started}}, ready=True, restartCount=1,
               lastState={"terminated": {"exitCode": 1}})  # fmt: skip
    assert pod_failure(pod, NOW) is None
    assert pod_failure(pod, NOW, since_start=True) == "container c of pod p exited with code 1"
    recent = _pod(state={"running": {"startedAt": rfc3339(NOW - 10)}}, ready=True, restartCount=1,
                  lastState={"terminated": {"exitCode": 1}})  # fmt: skip
    assert pod_failure(recent, NOW) == "container c of pod p exited with code 1 and is being restarted"
    assert recovery_deadline([recent], NOW) == pytest.approx(RECOVERY_SECONDS - 10 + 1)


def test_a_failed_pod_says_why() -> None:
    pod = {"metadata": {"name": "p"}, "status": {"phase": "Failed", "reason": "Evicted"}}
    assert pod_failure(pod) == "pod p failed: Evicted"
