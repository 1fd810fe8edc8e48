"""DaskCluster and DaskWorkerGroup end to end: real Dask schedulers and workers on the process node, the
operator as a real `dask-operator run` subprocess, a Dask client computing through the scheduler Service.

Every test gets its own namespace and its own operator (watching only that namespace), so a test that
kills or stops the operator affects nobody else. Waits have deadlines; nothing sleeps to synchronise.
The operator process, the `plane` and `dask_operator` fixtures and the helpers live in support/operator.py.
"""

from __future__ import annotations

import operator
import os
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from support.ledger import stories, transitions
from support.operator import (
    REPO,
    OperatorProcess,
    apply,
    cluster_manifest,
    condition,
    dask_client,
    get,
    group_manifest,
    pod_names,
    pods,
    pods_added_since,
    resource_version_now,
    set_pod_quota,
    wait_refused,
    wait_running,
    wait_workers,
    warning_events,
    worker_pods,
)
from support.wait import WaitTimeout, wait_for

# Functions shipped to the scheduler by value: the scheduler cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(240)


# -- the user stories -----------------------------------------------------------------------------------------


def test_apply_compute_persist_and_scale_down_without_losing_data(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, cluster_manifest("demo", 3))
    wait_running(plane, namespace, "demo")
    wait_for(
        lambda: len(worker_pods(plane, namespace, "demo-default")) == 3, timeout=60, message="3 worker pods"
    )
    with dask_client(plane, namespace, "demo") as client:
        names = wait_workers(client, pod_names(worker_pods(plane, namespace, "demo-default")))
        squares = client.map(operator.mul, range(100), range(100))
        assert client.submit(sum, squares).result(timeout=60) == 328350

        # persist blocks on every worker, then scale the cluster to 1 the way a user does
        from distributed import wait

        addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
        blocks = [
            client.submit(list, range(i * 1000, (i + 1) * 1000), workers=[addresses[i % 3]], pure=False)
            for i in range(30)
        ]
        wait(blocks, timeout=60)
        assert len({a for who in client.who_has(blocks).values() for a in who}) == 3
        keys = [b.key for b in blocks]

        plane.kubectl("scale", "-n", namespace, "daskcluster/demo", "--replicas=1")
        wait_for(
            lambda: len(worker_pods(plane, namespace, "demo-default")) == 1,
            timeout=90,
            message="1 worker pod",
        )
        (survivor,) = wait_workers(client, 1)
        assert survivor in names

        # all data is still there, on the remaining worker, computed exactly once, and nothing failed
        who_has = client.who_has(blocks)
        assert all(len(holders) == 1 for holders in who_has.values()), who_has
        assert client.gather(blocks) == [list(range(i * 1000, (i + 1) * 1000)) for i in range(30)]
        computed, erred = client.run_on_scheduler(transitions, keys)
        assert computed == {k: 1 for k in keys}, computed
        assert erred == 0
    group = get(plane, namespace, "daskworkergroup", "demo-default")
    assert group["status"]["replicas"] == 1 and group["spec"]["worker"]["replicas"] == 1
    cluster = get(plane, namespace, "daskcluster", "demo")
    assert cluster["status"]["replicas"] == 1 and cluster["status"]["observedGeneration"] >= 2


def test_two_worker_groups_scale_independently(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, cluster_manifest("pair", 1))
    apply(plane, namespace, group_manifest("pair-extra", "pair", 2))
    wait_for(
        lambda: len(worker_pods(plane, namespace, "pair-extra")) == 2, timeout=60, message="extra workers"
    )
    wait_running(plane, namespace, "pair")
    default_before = pod_names(worker_pods(plane, namespace, "pair-default"))
    extra_before = pod_names(worker_pods(plane, namespace, "pair-extra"))
    assert len(default_before) == 1
    extra = get(plane, namespace, "daskworkergroup", "pair-extra")
    (owner,) = extra["metadata"]["ownerReferences"]  # adopted by the cluster
    assert owner["kind"] == "DaskCluster" and owner["controller"] and owner["blockOwnerDeletion"]

    with dask_client(plane, namespace, "pair") as client:
        wait_workers(client, default_before | extra_before)
        plane.kubectl("scale", "-n", namespace, "daskworkergroup/pair-extra", "--replicas=1")
        wait_workers(client, 2)
        after = pod_names(worker_pods(plane, namespace, "pair-extra"))
        assert len(after) == 1 and after < extra_before
        assert pod_names(worker_pods(plane, namespace, "pair-default")) == default_before

        plane.kubectl("scale", "-n", namespace, "daskcluster/pair", "--replicas=0")
        wait_for(
            lambda: not worker_pods(plane, namespace, "pair-default"),
            timeout=60,
            message="default group empty",
        )
        assert pod_names(worker_pods(plane, namespace, "pair-extra")) == after
        wait_workers(client, after)


def test_lost_scheduler_pod_worker_pod_and_service_come_back(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, cluster_manifest("heal", 1))
    wait_running(plane, namespace, "heal")
    wait_for(
        lambda: len(worker_pods(plane, namespace, "heal-default")) == 1, timeout=60, message="worker pod"
    )

    service = get(plane, namespace, "service", "heal-scheduler")
    plane.kubectl("delete", "-n", namespace, "service", "heal-scheduler", "--wait=false")
    wait_for(
        lambda: (
            (get(plane, namespace, "service", "heal-scheduler") or {}).get("metadata", {}).get("uid")
            not in (None, service["metadata"]["uid"])
        ),
        timeout=30,
        message="a new scheduler Service",
    )

    (worker,) = worker_pods(plane, namespace, "heal-default")
    plane.kubectl("delete", "-n", namespace, "pod", worker["metadata"]["name"], "--wait=false")
    wait_for(
        lambda: [
            p
            for p in worker_pods(plane, namespace, "heal-default")
            if p["metadata"]["uid"] != worker["metadata"]["uid"]
        ],
        timeout=60,
        message="a replacement worker pod",
    )

    (scheduler,) = pods(plane, namespace, "dask.org/component=scheduler")
    plane.kubectl("delete", "-n", namespace, "pod", scheduler["metadata"]["name"], "--wait=false")

    def new_ready_scheduler() -> bool:
        found = pods(plane, namespace, "dask.org/component=scheduler")
        return any(
            p["metadata"]["uid"] != scheduler["metadata"]["uid"]
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
            for p in found
        )

    wait_for(new_ready_scheduler, timeout=90, interval=0.5, message="a new Ready scheduler pod")
    wait_running(plane, namespace, "heal")
    with dask_client(plane, namespace, "heal") as client:
        wait_workers(client, 1)
        assert client.submit(operator.add, 40, 2).result(timeout=60) == 42


def test_operator_killed_mid_scale_up_converges_to_exactly_the_target(
    plane: Any, namespace: str, tmp_path: Path
) -> None:
    # Small batches with a delay make the scale-up take several rounds, so the kill lands in the middle.
    env = {
        "DASK_KUBERNETES__CONTROLLER__WORKER_ALLOCATION__BATCH_SIZE": "2",
        "DASK_KUBERNETES__CONTROLLER__WORKER_ALLOCATION__DELAY": "6",  # wide margin for a loaded machine
    }
    op = OperatorProcess(plane, namespace, tmp_path / "operator.log", env).start()
    try:
        apply(plane, namespace, cluster_manifest("grow", 2))
        wait_for(
            lambda: len(worker_pods(plane, namespace, "grow-default")) == 2, timeout=60, message="2 workers"
        )
        plane.kubectl("scale", "-n", namespace, "daskcluster/grow", "--replicas=8")
        wait_for(
            lambda: len(worker_pods(plane, namespace, "grow-default")) > 2,
            timeout=30,
            message="scale-up began",
        )
        op.kill()
        assert len(worker_pods(plane, namespace, "grow-default")) < 8, (
            "the kill came too late to test anything"
        )
        op = OperatorProcess(plane, namespace, tmp_path / "operator.log", env).start()
        wait_for(
            lambda: len(worker_pods(plane, namespace, "grow-default")) == 8, timeout=90, message="8 workers"
        )
        group = get(plane, namespace, "daskworkergroup", "grow-default")
        wait_for(
            lambda: (
                (get(plane, namespace, "daskworkergroup", "grow-default") or {})
                .get("status", {})
                .get("replicas")
                == 8
            ),
            timeout=30,
            message="status.replicas == 8",
        )
        every = pods(plane, namespace, "dask.org/component=worker")
        assert len(every) == 8 and len(pod_names(every)) == 8
        for pod in every:  # no orphans: each worker pod is controlled by the group
            (ref,) = [r for r in pod["metadata"]["ownerReferences"] if r.get("controller")]
            assert ref["uid"] == group["metadata"]["uid"]
        wait_running(plane, namespace, "grow")
        with dask_client(plane, namespace, "grow") as client:
            wait_workers(client, pod_names(every), timeout=120)
    finally:
        op.stop()


def test_rapid_replica_changes_end_with_the_last_value(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, cluster_manifest("rapid", 1))
    wait_running(plane, namespace, "rapid")
    for replicas in (5, 2, 4):
        plane.kubectl("scale", "-n", namespace, "daskcluster/rapid", f"--replicas={replicas}")
    wait_for(
        lambda: len(worker_pods(plane, namespace, "rapid-default")) == 4, timeout=90, message="4 workers"
    )
    with dask_client(plane, namespace, "rapid") as client:
        wait_workers(client, pod_names(worker_pods(plane, namespace, "rapid-default")), timeout=120)
        assert len(worker_pods(plane, namespace, "rapid-default")) == 4


def test_deleting_a_cluster_removes_everything_even_with_the_operator_stopped(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, cluster_manifest("gone", 1))
    apply(plane, namespace, group_manifest("gone-extra", "gone", 1))
    wait_for(
        lambda: len(pods(plane, namespace, "dask.org/component=worker")) == 2, timeout=60, message="workers"
    )
    wait_for(
        lambda: (
            (get(plane, namespace, "daskworkergroup", "gone-extra") or {})
            .get("metadata", {})
            .get("ownerReferences")
        ),
        timeout=30,
        message="extra group adopted",
    )
    cluster = get(plane, namespace, "daskcluster", "gone")
    assert not cluster["metadata"].get("finalizers")
    dask_operator.stop()
    plane.kubectl("delete", "-n", namespace, "daskcluster", "gone", "--timeout=30s")

    def nothing_left() -> bool:
        left = [
            get(plane, namespace, "daskworkergroups")["items"],
            get(plane, namespace, "services")["items"],
            get(plane, namespace, "pods")["items"],
        ]
        return not any(left)

    wait_for(nothing_left, timeout=90, interval=0.5, message="garbage collection of every child")


def test_failing_worker_command_is_reported_and_other_clusters_still_served(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    apply(
        plane, namespace, cluster_manifest("broken", 1, worker_args=["python", "-c", "raise SystemExit(3)"])
    )
    apply(plane, namespace, cluster_manifest("fine", 1))

    def degraded() -> dict[str, Any] | None:
        cond = condition(get(plane, namespace, "daskcluster", "broken"), "Degraded")
        return cond if cond.get("status") == "True" else None

    cond = wait_for(degraded, timeout=90, interval=0.5, message="Degraded condition on the broken cluster")
    assert cond["reason"] == "WorkerFailing"
    assert "code 3" in cond["message"] or "CrashLoopBackOff" in cond["message"]
    events = get(plane, namespace, "events", "--field-selector", "involvedObject.name=broken-default")
    assert any(e["reason"] == "WorkerFailing" and e["type"] == "Warning" for e in events["items"])

    wait_running(plane, namespace, "fine")
    with dask_client(plane, namespace, "fine") as client:
        wait_workers(client, 1)
        assert client.submit(operator.mul, 6, 7).result(timeout=60) == 42
    group = condition(get(plane, namespace, "daskworkergroup", "broken-default"), "Degraded")
    assert group.get("reason") == "WorkerFailing"


def test_template_changes_roll_workers_gracefully_and_replace_the_scheduler(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    from distributed import wait

    def roll_manifest() -> dict[str, Any]:
        # The scheduler's replacement ends every worker's process (Dask workers do not reconnect) and the
        # container restarts; a worker that exits again against the going scheduler meets the kubelet's
        # doubling back-off (10, 20, 40 ... s). This test is about the operator's roll, not that back-off.
        manifest = cluster_manifest("roll", 2)
        manifest["spec"]["worker"]["metadata"] = {"annotations": {"localkube/restart-backoff-seconds": "1"}}
        return manifest

    apply(plane, namespace, roll_manifest())
    wait_running(plane, namespace, "roll")
    wait_for(lambda: len(worker_pods(plane, namespace, "roll-default")) == 2, timeout=60, message="2 workers")
    old = pod_names(worker_pods(plane, namespace, "roll-default"))
    with dask_client(plane, namespace, "roll") as client:
        wait_workers(client, old)
        blocks = [client.submit(list, range(i * 100, (i + 1) * 100), pure=False) for i in range(10)]
        wait(blocks, timeout=60)
        keys = [b.key for b in blocks]

        changed = roll_manifest()
        changed["spec"]["worker"]["spec"]["containers"][0]["env"] = [{"name": "ROLLED", "value": "1"}]
        apply(plane, namespace, changed)

        def rolled() -> set[str] | None:
            group = get(plane, namespace, "daskworkergroup", "roll-default") or {}
            status = group.get("status", {})
            current = pod_names(worker_pods(plane, namespace, "roll-default"))
            done = (
                status.get("updatedReplicas") == 2 and status.get("readyReplicas") == 2 and not current & old
            )
            return current if done and len(current) == 2 else None

        new = wait_for(rolled, timeout=120, interval=0.5, message="workers rolled to the new template")
        wait_workers(client, new)
        assert client.gather(blocks) == [list(range(i * 100, (i + 1) * 100)) for i in range(10)]
        computed, erred = client.run_on_scheduler(transitions, keys)
        again = [k for k, n in computed.items() if n != 1]
        told = client.run_on_scheduler(stories, again[:2]) if again else {}
        if again:  # what the scheduler said while it lost the data (the roll's rare recompute: issue 27)
            logs = plane.kubectl("logs", "-n", namespace, "-l", "dask.org/component=scheduler", "--tail=400",
                                 check=False).stdout  # fmt: skip
            told["scheduler log"] = [
                line
                for line in logs.splitlines()
                if any(w in line for w in ("rror", "xception", "emov", "lose"))
            ][-40:]
        assert computed == {k: 1 for k in keys} and erred == 0, f"computed {computed}, erred {erred}: {told}"
        env = worker_pods(plane, namespace, "roll-default")[0]["spec"]["containers"][0]["env"]
        assert {"name": "ROLLED", "value": "1"} in env

    (scheduler,) = pods(plane, namespace, "dask.org/component=scheduler")
    changed["spec"]["scheduler"]["spec"]["containers"][0]["env"] = [{"name": "CHANGED", "value": "1"}]
    apply(plane, namespace, changed)

    def replaced() -> bool:
        # Ready, not only Running: the phase means what the reference's means (the scheduler Pod and Service
        # exist), so it says nothing about whether the new scheduler listens yet.
        found = pods(plane, namespace, "dask.org/component=scheduler")
        return any(
            p["metadata"]["uid"] != scheduler["metadata"]["uid"]
            and {"name": "CHANGED", "value": "1"} in p["spec"]["containers"][0].get("env", [])
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
            for p in found
        )

    wait_for(replaced, timeout=90, interval=0.5, message="scheduler pod replaced and Ready")
    events = get(plane, namespace, "events", "--field-selector", "involvedObject.name=roll")
    assert any(e["reason"] == "SchedulerReplaced" for e in events["items"])
    wait_running(plane, namespace, "roll")
    with dask_client(plane, namespace, "roll") as client:
        try:
            wait_workers(client, 2, timeout=150)
        except WaitTimeout as e:  # say what the workers did (issue 16 tracks flaky recoveries)
            states = [
                (
                    p["metadata"]["name"],
                    [
                        (c.get("restartCount"), c.get("state"))
                        for c in p["status"].get("containerStatuses") or []
                    ],
                )
                for p in worker_pods(plane, namespace, "roll-default")
            ]
            raise WaitTimeout(f"{e}; worker pods: {states}") from e
        assert client.submit(operator.add, 1, 1).result(timeout=60) == 2


def test_idle_cluster_is_deleted_after_its_idle_timeout(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    manifest = cluster_manifest("sleepy", 0)
    manifest["spec"]["idleTimeout"] = 5
    apply(plane, namespace, manifest)
    wait_running(plane, namespace, "sleepy")
    wait_for(
        lambda: get(plane, namespace, "daskcluster", "sleepy") is None,
        timeout=60,
        message="idle cluster deleted",
    )
    events = get(plane, namespace, "events", "--field-selector", "involvedObject.name=sleepy")
    assert any(e["reason"] == "IdleTimeout" for e in events["items"])


def test_scale_down_with_an_unreachable_scheduler_waits_then_forces_with_a_warning(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    # A "scheduler" that serves HTTP 404s and no Dask comm port: workers never join, retirement cannot happen.
    manifest = cluster_manifest("mute", 2, annotations={"kubernetes.dask.org/scale-down-force-timeout": "6"})
    container = manifest["spec"]["scheduler"]["spec"]["containers"][0]
    container["args"] = ["python", "-m", "http.server", "8787"]
    del container["readinessProbe"]
    apply(plane, namespace, manifest)
    wait_for(
        lambda: (
            len(
                [
                    p
                    for p in worker_pods(plane, namespace, "mute-default")
                    if p["status"].get("phase") == "Running"
                ]
            )
            == 2
        ),
        timeout=60,
        message="2 running worker pods",
    )
    plane.kubectl("scale", "-n", namespace, "daskcluster/mute", "--replicas=1")

    def waiting() -> dict[str, Any] | None:
        cond = condition(get(plane, namespace, "daskworkergroup", "mute-default"), "Degraded")
        return cond if cond.get("reason") == "SchedulerUnreachable" else None

    wait_for(waiting, timeout=30, interval=0.3, message="Degraded=SchedulerUnreachable while waiting")
    assert len(worker_pods(plane, namespace, "mute-default")) == 2
    wait_for(
        lambda: len(worker_pods(plane, namespace, "mute-default")) == 1,
        timeout=60,
        message="forced scale-down",
    )
    events = get(plane, namespace, "events", "--field-selector", "involvedObject.name=mute-default")
    assert any(e["reason"] == "ScaleDownForced" and e["type"] == "Warning" for e in events["items"])
    wait_for(
        lambda: (
            condition(get(plane, namespace, "daskworkergroup", "mute-default"), "Degraded").get("status")
            == "False"
        ),
        timeout=30,
        message="Degraded cleared once the scale-down is done",
    )


def test_resource_quota_refusal_shows_in_status_and_lifting_it_converges(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    """A refused create is a condition with the API server's words and a Warning Event, for a new cluster
    and for a worker group's scale-up; lifting the quota converges both without restarting anything."""
    set_pod_quota(plane, namespace, 0)
    apply(plane, namespace, cluster_manifest("quota", 1))
    refused = wait_refused(plane, namespace, "daskcluster", "quota")
    assert refused["reason"] == "FailedCreate"
    assert "exceeded quota" in refused["message"] and "ResourceQuota" in refused["message"]
    cluster = get(plane, namespace, "daskcluster", "quota")
    assert cluster["status"]["phase"] in ("Created", "Pending")
    assert condition(cluster, "Degraded")["reason"] == "FailedCreate"
    assert any(
        e["reason"] == "FailedCreate" and "exceeded quota" in e["message"]
        for e in warning_events(plane, namespace, "quota")
    )
    # what a user types to see why
    described = plane.kubectl("describe", "-n", namespace, "daskcluster", "quota").stdout
    assert "exceeded quota" in described

    set_pod_quota(plane, namespace, None)
    wait_running(plane, namespace, "quota")
    plane.kubectl("wait", "-n", namespace, "--for=condition=Ready", "daskcluster/quota", "--timeout=120s")
    assert condition(get(plane, namespace, "daskcluster", "quota"), "ReplicaFailure") == {}

    # scale-up of the worker group beyond the quota: the group says why; lifting it converges
    set_pod_quota(plane, namespace, 2, used=2)  # the scheduler and the one worker
    plane.kubectl("scale", "-n", namespace, "daskcluster", "quota", "--replicas=2")
    group_refused = wait_refused(plane, namespace, "daskworkergroup", "quota-default")
    assert group_refused["reason"] == "FailedCreate" and "exceeded quota" in group_refused["message"]
    assert any(e["reason"] == "FailedCreate" for e in warning_events(plane, namespace, "quota-default"))
    set_pod_quota(plane, namespace, None)
    wait_for(lambda: len(worker_pods(plane, namespace, "quota-default")) == 2, timeout=60, interval=0.5,
             message="the second worker once the quota is lifted")  # fmt: skip
    wait_for(lambda: condition(get(plane, namespace, "daskworkergroup", "quota-default"), "ReplicaFailure")
             == {}, timeout=30, interval=0.5, message="ReplicaFailure cleared")  # fmt: skip


MULTI_WORKER_ARGS = [
    "dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
]  # fmt: skip
QUAD_WORKER_ARGS = [
    "dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--nworkers", "4", "--nthreads", "1", "--no-dashboard",
]  # fmt: skip


def test_pods_running_two_workers_each_scale_down_without_losing_or_recomputing_data(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    """Every Dask worker of a pod (`--nworkers 2` names them <pod>-0 and <pod>-1) is retired before the pod
    goes: persisted keys are never computed twice and scattered data, which cannot be recomputed, survives."""
    apply(plane, namespace, cluster_manifest("multi", 3, worker_args=MULTI_WORKER_ARGS))
    wait_running(plane, namespace, "multi")
    wait_for(lambda: len(worker_pods(plane, namespace, "multi-default")) == 3, timeout=60,
             message="3 worker pods")  # fmt: skip
    with dask_client(plane, namespace, "multi") as client:
        pods_before = pod_names(worker_pods(plane, namespace, "multi-default"))
        names = wait_workers(client, _workers_of(pods_before, 2), timeout=120)
        blocks, scattered = _spread_data(client, blocks=60, scattered=20)

        plane.kubectl("scale", "-n", namespace, "daskcluster/multi", "--replicas=1")
        wait_for(lambda: len(worker_pods(plane, namespace, "multi-default")) == 1, timeout=120,
                 message="1 worker pod")  # fmt: skip
        survivors = wait_workers(client, 2)
        (pod,) = pod_names(worker_pods(plane, namespace, "multi-default"))
        assert survivors == {f"{pod}-0", f"{pod}-1"} and survivors <= names
        _assert_nothing_lost_or_recomputed(client, blocks, scattered)


@pytest.mark.timeout(420)
def test_two_groups_of_four_worker_pods_one_scaled_down_without_touching_the_other(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    """Two groups side by side whose pods run `--nworkers 4` (12 workers in 3 pods): scaling the cluster's
    default group 2 -> 1 retires the four workers of one of its pods and only those; the other group's four
    workers keep their addresses, and no persisted or scattered key is lost or computed twice."""
    apply(plane, namespace, cluster_manifest("quad", 2, worker_args=QUAD_WORKER_ARGS))
    apply(plane, namespace, group_manifest("quad-extra", "quad", 1, worker_args=QUAD_WORKER_ARGS))
    wait_running(plane, namespace, "quad")
    wait_for(lambda: len(worker_pods(plane, namespace, "quad-default")) == 2
             and len(worker_pods(plane, namespace, "quad-extra")) == 1, timeout=90,
             message="3 worker pods")  # fmt: skip
    default_pods = pod_names(worker_pods(plane, namespace, "quad-default"))
    extra_pods = pod_names(worker_pods(plane, namespace, "quad-extra"))
    with dask_client(plane, namespace, "quad") as client:
        wait_workers(client, _workers_of(default_pods | extra_pods, 4), timeout=240)
        extra_before = _addresses(client, _workers_of(extra_pods, 4))
        blocks, scattered = _spread_data(client, blocks=60, scattered=24)

        plane.kubectl("scale", "-n", namespace, "daskcluster/quad", "--replicas=1")
        wait_for(lambda: len(worker_pods(plane, namespace, "quad-default")) == 1, timeout=180,
                 message="1 default worker pod")  # fmt: skip
        (kept,) = pod_names(worker_pods(plane, namespace, "quad-default"))
        assert kept in default_pods
        wait_workers(client, _workers_of(extra_pods | {kept}, 4))
        assert pod_names(worker_pods(plane, namespace, "quad-extra")) == extra_pods
        assert _addresses(client, _workers_of(extra_pods, 4)) == extra_before
        _assert_nothing_lost_or_recomputed(client, blocks, scattered)


def _workers_of(pods: set[str], per_pod: int) -> set[str]:
    """The names `--nworkers N` gives the workers of these pods."""
    return {f"{p}-{i}" for p in pods for i in range(per_pod)}


def _addresses(client: Any, names: set[str]) -> dict[str, str]:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {str(w["name"]): addr for addr, w in workers.items() if str(w["name"]) in names}


def _spread_data(client: Any, blocks: int, scattered: int) -> tuple[list[Any], list[Any]]:
    """`blocks` computed lists and `scattered` scattered values, round-robin over every worker."""
    from distributed import wait

    addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
    n = len(addresses)
    computed = [
        client.submit(list, range(i * 100, (i + 1) * 100), workers=[addresses[i % n]], pure=False)
        for i in range(blocks)
    ]
    given = [client.scatter(f"scattered-{i}", workers=[addresses[i % n]]) for i in range(scattered)]
    wait(computed + given, timeout=60)
    holders = {a for who in client.who_has(computed + given).values() for a in who}
    assert holders == set(addresses), f"data on {len(holders)} of {n} workers"
    return computed, given


def _assert_nothing_lost_or_recomputed(client: Any, blocks: list[Any], scattered: list[Any]) -> None:
    """Every scattered value is still there, every computed key was computed exactly once, nothing erred."""
    assert client.gather(scattered) == [f"scattered-{i}" for i in range(len(scattered))]
    assert client.gather(blocks) == [list(range(i * 100, (i + 1) * 100)) for i in range(len(blocks))]
    computed, erred = client.run_on_scheduler(transitions, [b.key for b in blocks])
    assert computed == {b.key: 1 for b in blocks}, computed
    assert erred == 0


def test_zero_workers_never_create_a_worker_pod(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    """A DaskCluster and a KubeCluster created with 0 workers: the API server's own record of pod creations
    (a watch replayed from before either was created) holds no worker pod, not even a short-lived one."""
    from dask_operator import KubeCluster
    from dask_operator.runtime.client import Client as RestClient

    since = resource_version_now(plane, namespace)
    apply(plane, namespace, cluster_manifest("none", 0))
    kube = KubeCluster(name="kcnone", namespace=namespace, n_workers=0, resource_timeout=120,
                       kube_client=RestClient.from_kubeconfig(str(plane.kubeconfig)), quiet=True)  # fmt: skip
    try:
        wait_running(plane, namespace, "none")
        for group in ("none-default", "kcnone-default"):
            wait_for(lambda group=group: (get(plane, namespace, "daskworkergroup", group) or {}).get(
                "status", {}).get("replicas") == 0, timeout=60, interval=0.5,
                message=f"{group} reports 0 workers")  # fmt: skip
        assert (
            condition(get(plane, namespace, "daskworkergroup", "none-default"), "Ready")["status"] == "True"
        )
        workers = pods_added_since(plane, namespace, since, "dask.org/component=worker")
        schedulers = pods_added_since(plane, namespace, since, "dask.org/component=scheduler")
        assert len(schedulers) == 2  # the watch did see this namespace's pod creations
        assert workers == []
    finally:
        kube.close()


def test_the_sample_cluster_runs_as_a_non_root_user(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    """manifests/samples/daskcluster.yaml as a user applies it: its non-root securityContext is applied by
    the process node (setpriv), and the scheduler and workers start, connect and compute as uid 1000."""
    plane.kubectl("apply", "-n", namespace, "-f", str(REPO / "manifests" / "samples" / "daskcluster.yaml"))
    wait_running(plane, namespace, "simple")
    wait_for(lambda: len(worker_pods(plane, namespace, "simple-default")) == 3, timeout=60,
             message="3 worker pods")  # fmt: skip
    with dask_client(plane, namespace, "simple") as client:
        wait_workers(client, 3, timeout=120)
        assert set(client.run(os.getuid).values()) == {1000}
        assert client.run_on_scheduler(os.getuid) == 1000
        assert client.submit(sum, range(10)).result(timeout=60) == 45
    cluster = get(plane, namespace, "daskcluster", "simple")
    assert condition(cluster, "SchedulerAPI")["reason"] == "RouteAdded"
