"""DaskAutoscaler end to end: a real scheduler's adaptive target drives the default worker group's size.

Real scheduler and worker processes on the process node; the operator is a `dask-operator run` subprocess
per test (support/operator.py). Waits have deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from support.operator import (
    OperatorProcess,
    apply,
    cluster_manifest,
    condition,
    dask_client,
    get,
    wait_running,
)
from support.wait import wait_for

pytestmark = pytest.mark.timeout(240)


def autoscaler_manifest(name: str, cluster: str, minimum: int, maximum: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskAutoscaler",
        "metadata": {"name": name},
        "spec": {"cluster": cluster, "minimum": minimum, "maximum": maximum},
    }


def default_replicas(plane: Any, namespace: str, cluster: str) -> int | None:
    group = get(plane, namespace, "daskworkergroup", f"{cluster}-default")
    return None if group is None else int(group["spec"]["worker"]["replicas"])


def scalings(plane: Any, namespace: str, reason: str) -> list[tuple[int, int]]:
    """(from, to) of the autoscaler's scaling Events of this reason, oldest first."""
    events = get(plane, namespace, "events", "--field-selector", "involvedObject.name=elastic")
    found = [
        (e.get("firstTimestamp") or "", e["message"])
        for e in (events or {}).get("items", [])
        if e["reason"] == reason and e["involvedObject"]["kind"] == "DaskAutoscaler"
    ]
    steps = [re.search(r"from (\d+) to (\d+) workers", message) for _, message in sorted(found)]
    return [(int(m[1]), int(m[2])) for m in steps if m]


def test_autoscaler_follows_the_scheduler_within_its_bounds_and_goes_with_its_cluster(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, cluster_manifest("elastic", 1))
    apply(plane, namespace, autoscaler_manifest("elastic", "elastic", 1, 3))
    wait_running(plane, namespace, "elastic")

    def answering() -> dict[str, Any] | None:
        obj = get(plane, namespace, "daskautoscaler", "elastic")
        return obj if condition(obj, "Ready").get("status") == "True" else None

    autoscaler = wait_for(answering, timeout=60, interval=0.5, message="autoscaler Ready (scheduler answers)")
    (owner,) = autoscaler["metadata"]["ownerReferences"]  # adopted: deleted with the cluster (7D-42)
    assert (owner["kind"], owner["name"], owner["controller"]) == ("DaskCluster", "elastic", True)
    assert default_replicas(plane, namespace, "elastic") == 1  # idle: the minimum

    with dask_client(plane, namespace, "elastic") as client:
        # Far more work than one single-threaded worker does in the scheduler's target duration (5 s).
        futures = client.map(time.sleep, [1.0] * 60, pure=False)
        wait_for(
            lambda: default_replicas(plane, namespace, "elastic") == 3,
            timeout=90,
            interval=0.5,
            message="scaled up to the maximum",
        )
        autoscaler = get(plane, namespace, "daskautoscaler", "elastic")
        assert autoscaler["status"]["desiredWorkers"] == 3
        assert autoscaler["status"]["lastScaleTime"]
        cooldown = float(autoscaler["metadata"]["annotations"]["kubernetes.dask.org/cooldown-until"])
        assert cooldown > time.time() - 60
        assert wait_for(lambda: scalings(plane, namespace, "ScaledUp"), timeout=30, message="ScaledUp event")
        client.gather(futures, errors="skip")
        del futures

        # Idle again: back toward the minimum, one damped step at a time (3 -> 2, then 2 -> 1 after 15 s).
        def scaled_down() -> list[tuple[int, int]]:
            replicas = default_replicas(plane, namespace, "elastic")
            assert replicas is None or replicas <= 3, replicas  # clamped: never above the maximum
            return scalings(plane, namespace, "ScaledDown")

        steps = wait_for(scaled_down, timeout=90, interval=0.5, message="scaled down")
        assert steps[0] == (3, 2), steps  # damped: max(1, floor(3 / 4)) = 1 worker per step
        assert all(before - after == 1 for before, after in steps), steps
        assert scalings(plane, namespace, "ScaledUp")[-1][1] == 3

    plane.kubectl("delete", "-n", namespace, "daskcluster", "elastic", "--wait=false")
    wait_for(
        lambda: get(plane, namespace, "daskautoscaler", "elastic") is None,
        timeout=60,
        message="the autoscaler deleted with its cluster",
    )
