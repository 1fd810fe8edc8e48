"""DaskJobs and DaskClusters behind a real Kueue: they wait for quota, run when admitted, yield when preempted.

Kueue v0.17.0 runs against the local plane (support/kueue.py, built by hack/build-kueue.sh); the operator is a
`dask-operator run` subprocess per test; scheduler, workers and runners are real Dask processes on the process
node. Each test makes its own ResourceFlavor, ClusterQueue (quota: 1 CPU) and LocalQueue. Every Dask pod here
requests 200m CPU, so a job (scheduler + worker + runner) takes 600m: two never fit together. Marker `kueue`
(deselected by default: the module runs several jobs one after the other and takes minutes).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any, Self

import pytest
from support.operator import (
    OperatorProcess,
    apply,
    cluster_manifest,
    condition,
    dask_client,
    get,
    group_manifest,
    pods,
    wait_running,
    wait_workers,
)
from support.wait import holds_for, wait_for

pytestmark = [pytest.mark.kueue, pytest.mark.timeout(600)]

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
REQUEST = {"requests": {"cpu": "200m"}}

# The runner computes on its cluster for about `seconds` (in steps of one second), then checks the result:
# long enough to hold the quota while the test looks at the other objects.
RUNNER = """
import time
from dask.distributed import Client
with Client(timeout=120) as client:
    client.wait_for_workers(1, timeout=120)
    total = 0
    for step in range({seconds}):
        total += client.submit(sum, client.map(lambda x: x * x, range(10)), pure=False).result(timeout=60)
        time.sleep(1)
    assert total == 285 * {seconds}, total
    print("job result", total, flush=True)
"""


def requesting(spec: dict[str, Any]) -> dict[str, Any]:
    for container in spec["containers"]:
        container["resources"] = REQUEST
    return spec


def queued_cluster(name: str, replicas: int, queue: str | None, **labels: str) -> dict[str, Any]:
    cluster = cluster_manifest(name, replicas)
    requesting(cluster["spec"]["scheduler"]["spec"])
    requesting(cluster["spec"]["worker"]["spec"])
    all_labels = {**labels, **({QUEUE_LABEL: queue} if queue else {})}
    if all_labels:
        cluster["metadata"]["labels"] = all_labels
    return cluster


def queued_job(name: str, seconds: int, queue: str | None, priority: str | None = None) -> dict[str, Any]:
    cluster = queued_cluster(name, 1, None)
    labels = {QUEUE_LABEL: queue} if queue else {}
    if priority:
        labels[PRIORITY_LABEL] = priority
    runner = {
        "restartPolicy": "Never",
        "containers": [
            {"name": "job", "image": "ghcr.io/dask/dask:latest",
             "args": ["python", "-c", RUNNER.format(seconds=seconds)]}
        ],
    }  # fmt: skip
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskJob",
        "metadata": {"name": name, "labels": labels},
        "spec": {"job": {"spec": requesting(runner)}, "cluster": {"spec": cluster["spec"]}},
    }


def job_status(plane: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict((get(plane, namespace, "daskjob", name) or {}).get("status") or {})


def admitted(plane: Any, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return condition(get(plane, namespace, kind, name), "Admitted")


def workload(plane: Any, namespace: str, name: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = get(plane, namespace, "workloads.kueue.x-k8s.io", name)
    return found


def workload_condition(plane: Any, namespace: str, name: str, kind: str) -> dict[str, Any]:
    return condition(workload(plane, namespace, name), kind)


def dask_pods(plane: Any, namespace: str, cluster: str) -> list[dict[str, Any]]:
    return pods(plane, namespace, f"dask.org/cluster-name={cluster}")


def scheduler_running_at(plane: Any, namespace: str, cluster: str) -> float | None:
    """time.time() once the cluster's scheduler pod is Running (None before)."""
    for pod in pods(plane, namespace, f"dask.org/cluster-name={cluster},dask.org/component=scheduler"):
        if pod.get("status", {}).get("phase") == "Running":
            return time.time()
    return None


def occurrences(event: dict[str, Any]) -> int:
    return int(event.get("count") or (event.get("series") or {}).get("count") or 1)


def events_of(plane: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    events = get(plane, namespace, "events", "--field-selector", f"involvedObject.name={name}") or {}
    return list(events.get("items", []))


@pytest.fixture
def queue(kueue: Any, plane: Any, namespace: str) -> Iterator[str]:
    """A LocalQueue `lq` in the test's namespace, on a ClusterQueue with 1 CPU of one flavor whose node label
    (the node's hostname) the admitted pods must get; LowerPriority preemption within the queue."""
    flavor, cq = f"rf-{namespace}", f"cq-{namespace}"
    objects = [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": flavor},
         "spec": {"nodeLabels": {"kubernetes.io/hostname": plane.node_name}}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": cq},
         "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                  "preemption": {"withinClusterQueue": "LowerPriority"},
                  "resourceGroups": [{"coveredResources": ["cpu"], "flavors": [
                      {"name": flavor, "resources": [{"name": "cpu", "nominalQuota": "1"}]}]}]}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": "lq"},
         "spec": {"clusterQueue": cq}},
    ]  # fmt: skip
    for obj in objects:
        apply(plane, namespace, obj)

    def active() -> bool:
        return condition(get(plane, "", "clusterqueues.kueue.x-k8s.io", cq), "Active").get("status") == "True"

    wait_for(active, timeout=60, interval=0.5, message=f"ClusterQueue {cq} Active")
    yield "lq"
    plane.kubectl("delete", "clusterqueue.kueue.x-k8s.io", cq, "resourceflavor.kueue.x-k8s.io", flavor,
                  "--ignore-not-found", "--wait=false", check=False)  # fmt: skip


# -- without Kueue ---------------------------------------------------------------------------------------


def test_a_labelled_job_without_kueue_runs_nothing_and_says_why(
    plane: Any, namespace: str, dask_operator: OperatorProcess
) -> None:
    """Kueue's CRDs are absent (this test runs before the module starts Kueue): the operator runs, and a
    labelled job stays held with a condition that says what to do, instead of running around the quota."""
    apply(plane, namespace, queued_job("orphan", 1, "lq"))
    cond = wait_for(
        lambda: (c := admitted(plane, namespace, "daskjob", "orphan")).get("reason") == "KueueUnavailable" and c,
        timeout=60, interval=0.5, message="Admitted=False KueueUnavailable",
    )  # fmt: skip
    assert cond["status"] == "False" and "Install Kueue" in cond["message"], cond
    assert get(plane, namespace, "daskcluster", "orphan") is None
    assert not dask_pods(plane, namespace, "orphan")
    assert any(e["reason"] == "KueueUnavailable" for e in events_of(plane, namespace, "orphan"))


# -- behind Kueue ---------------------------------------------------------------------------------------


def test_jobs_beyond_the_quota_run_one_after_the_other(
    plane: Any, namespace: str, queue: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, queued_job("first", 8, queue))
    wait_for(lambda: admitted(plane, namespace, "daskjob", "first").get("status") == "True",
             timeout=90, interval=0.5, message="first admitted")  # fmt: skip
    apply(plane, namespace, queued_job("second", 2, queue))
    cond = wait_for(
        lambda: (c := admitted(plane, namespace, "daskjob", "second")).get("reason") == "Queued" and c,
        timeout=60, interval=0.5, message="second Queued",
    )  # fmt: skip
    assert cond["status"] == "False", cond
    wl = workload(plane, namespace, "daskjob-first")
    assert wl is not None
    assert [(p["name"], p["count"]) for p in wl["spec"]["podSets"]] == [
        ("scheduler", 1),
        ("worker", 1),
        ("runner", 1),
    ]
    assert wl["metadata"]["ownerReferences"][0]["kind"] == "DaskJob"

    # While the first runs, the second has no cluster and no pod; the first's pods carry the flavor's label.
    first_pods = wait_for(lambda: len(p := dask_pods(plane, namespace, "first")) == 3 and p, timeout=90,
                          interval=0.5, message="first job's 3 pods")  # fmt: skip
    for pod in first_pods:
        assert pod["spec"].get("nodeSelector") == {"kubernetes.io/hostname": plane.node_name}, pod["spec"]
        assert QUEUE_LABEL not in pod["metadata"].get("labels", {})
    assert get(plane, namespace, "daskcluster", "second") is None
    assert not dask_pods(plane, namespace, "second")
    assert job_status(plane, namespace, "second").get("jobStatus") == "Suspended"  # held, as by spec.suspend

    wait_for(lambda: workload_condition(plane, namespace, "daskjob-first", "Finished").get("status") == "True",
             timeout=240, interval=0.2, message="first's Workload Finished")  # fmt: skip
    freed = time.time()
    runner_log = plane.kubectl("-n", namespace, "logs", "first-runner", check=False)
    # On failure, what the runner saw and what existed (a runner once failed to resolve its scheduler's name).
    seen = plane.kubectl("-n", namespace, "get", "svc,pods,daskclusters", "-o", "wide", check=False).stdout
    assert job_status(plane, namespace, "first")["jobStatus"] == "Successful", (
        f"{seen}\n{runner_log.stdout[-2000:]}"
    )
    running = wait_for(lambda: scheduler_running_at(plane, namespace, "second"), timeout=120, interval=0.2,
                       message="second's scheduler Running")  # fmt: skip
    print(f"quota freed -> next job's scheduler Running: {running - freed:.1f} s")
    wait_for(lambda: job_status(plane, namespace, "second").get("jobStatus") in ("Successful", "Failed"),
             timeout=240, interval=0.5, message="second finished")  # fmt: skip
    assert job_status(plane, namespace, "second")["jobStatus"] == "Successful"
    reasons = [e["reason"] for e in events_of(plane, namespace, "second")]
    assert "Queued" in reasons and "Admitted" in reasons, reasons


def test_a_high_priority_job_preempts_a_low_priority_one_which_resumes_and_succeeds(
    plane: Any, namespace: str, queue: str, dask_operator: OperatorProcess
) -> None:
    low, high = f"low-{namespace}", f"high-{namespace}"
    for name, value in ((low, 100), (high, 1000)):
        apply(plane, namespace, {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
                                 "metadata": {"name": name}, "value": value})  # fmt: skip
    try:
        apply(plane, namespace, queued_job("background", 20, queue, priority=low))
        wait_for(lambda: job_status(plane, namespace, "background").get("jobStatus") == "Running",
                 timeout=120, interval=0.5, message="low-priority job Running")  # fmt: skip
        assert workload(plane, namespace, "daskjob-background")["spec"]["priority"] == 100  # type: ignore[index]

        apply(plane, namespace, queued_job("urgent", 2, queue, priority=high))
        evicted = wait_for(
            lambda: (c := admitted(plane, namespace, "daskjob", "background")).get("reason") == "Evicted" and c,
            timeout=90, interval=0.3, message="low-priority job Evicted",
        )  # fmt: skip
        assert "Preempted" in evicted["message"], evicted
        warning = wait_for(
            lambda: next((e for e in events_of(plane, namespace, "background") if e["reason"] == "Evicted"), None),
            timeout=30, interval=0.5, message="Evicted Event",
        )  # fmt: skip
        assert warning["type"] == "Warning" and "lost" in warning["message"], warning
        wait_for(lambda: job_status(plane, namespace, "urgent").get("jobStatus") == "Successful",
                 timeout=240, interval=0.5, message="high-priority job Successful")  # fmt: skip
        wait_for(lambda: job_status(plane, namespace, "background").get("jobStatus") in ("Successful", "Failed"),
                 timeout=300, interval=0.5, message="low-priority job finished after resuming")  # fmt: skip
        assert job_status(plane, namespace, "background")["jobStatus"] == "Successful"
        # Admitted, evicted, admitted again (a repeated Event is one object with a count).
        admissions = sum(
            occurrences(e) for e in events_of(plane, namespace, "background") if e["reason"] == "Admitted"
        )
        assert admissions >= 2, events_of(plane, namespace, "background")
    finally:
        plane.kubectl("delete", "workloadpriorityclass.kueue.x-k8s.io", low, high, "--ignore-not-found",
                      check=False)  # fmt: skip


def test_a_labelled_cluster_waits_while_the_quota_is_taken_and_starts_when_it_frees(
    plane: Any, namespace: str, queue: str, dask_operator: OperatorProcess
) -> None:
    apply(plane, namespace, queued_cluster("holder", 3, queue))  # 4 pods x 200m
    wait_running(plane, namespace, "holder", timeout=120)
    apply(plane, namespace, queued_cluster("waiter", 1, queue))  # 2 pods x 200m: does not fit beside it
    wait_for(lambda: admitted(plane, namespace, "daskcluster", "waiter").get("reason") == "Queued",
             timeout=60, interval=0.5, message="waiter Queued")  # fmt: skip
    assert not dask_pods(plane, namespace, "waiter")
    wl = workload(plane, namespace, "daskcluster-waiter")
    assert wl is not None and [(p["name"], p["count"]) for p in wl["spec"]["podSets"]] == [
        ("scheduler", 1),
        ("worker", 1),
    ]

    plane.kubectl("delete", "-n", namespace, "daskcluster", "holder", "--wait=false")
    freed = time.time()
    running = wait_for(lambda: scheduler_running_at(plane, namespace, "waiter"), timeout=120, interval=0.2,
                       message="waiter's scheduler Running")  # fmt: skip
    print(f"cluster deleted -> waiting cluster's scheduler Running: {running - freed:.1f} s")
    wait_running(plane, namespace, "waiter", timeout=120)
    with dask_client(plane, namespace, "waiter") as client:
        wait_workers(client, 1, timeout=120)
        assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
    assert admitted(plane, namespace, "daskcluster", "waiter")["status"] == "True"


def test_an_admitted_cluster_never_runs_past_its_quota_and_suspending_gives_the_quota_back(
    plane: Any, namespace: str, queue: str, dask_operator: OperatorProcess
) -> None:
    """Regressions: an admitted cluster scaled from 1 to 6 workers ran 1,400m of CPU requests on a queue of
    1 CPU; a suspended admitted cluster kept its quota forever; no PodsReady was set."""
    apply(plane, namespace, queued_cluster("first", 1, queue))  # 2 pods x 200m
    wait_running(plane, namespace, "first", timeout=120)
    wait_for(lambda: workload_condition(plane, namespace, "daskcluster-first", "PodsReady").get("status") == "True",
             timeout=120, interval=0.5, message="the Workload's PodsReady")  # fmt: skip
    plane.kubectl("-n", namespace, "scale", "daskcluster", "first", "--replicas=6")

    def held() -> dict[str, Any] | None:
        failure = condition(get(plane, namespace, "daskworkergroup", "first-default"), "ReplicaFailure")
        return failure if failure.get("reason") == "NotAdmitted" else None

    wait_for(held, timeout=60, interval=0.5, message="the extra workers held (NotAdmitted)")
    workers = pods(plane, namespace, "dask.org/cluster-name=first,dask.org/component=worker")
    assert len(workers) == 1, [p["metadata"]["name"] for p in workers]

    apply(plane, namespace, queued_cluster("second", 3, queue))  # 4 pods x 200m: fits only once first is gone
    wait_for(lambda: admitted(plane, namespace, "daskcluster", "second").get("reason") == "Queued",
             timeout=60, interval=0.5, message="second Queued")  # fmt: skip
    plane.kubectl(
        "-n", namespace, "patch", "daskcluster", "first", "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    wait_for(lambda: workload(plane, namespace, "daskcluster-first") is None, timeout=120, interval=0.5,
             message="the suspended cluster's Workload deleted")  # fmt: skip
    wait_running(plane, namespace, "second", timeout=120)
    assert workload(plane, namespace, "daskcluster-first") is None  # suspended: no Workload, no quota


# -- property: random sequences against the quota --------------------------------------------------------

QUOTA_MILLICPU = 1000  # the `queue` fixture's ClusterQueue
POD_MILLICPU = 200  # REQUEST, on every Dask container here


class QuotaWatch:
    """Samples the namespace's pods on its own thread while a sequence runs: the CPU requests of the pods on
    a node (Running, or Pending once bound; terminating ones too, they still run) against the quota, and each
    cluster's scheduler pods (a flavor edit must never replace one)."""

    def __init__(self, plane: Any, namespace: str) -> None:
        self.plane, self.namespace = plane, namespace
        self.peak, self.samples = 0, 0
        self.over: list[tuple[int, list[str]]] = []
        self.schedulers: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            listed = get(self.plane, self.namespace, "pods", "-l", "dask.org/cluster-name")
            if listed is None:
                continue
            placed = [
                p
                for p in listed["items"]
                if p["spec"].get("nodeName") and p.get("status", {}).get("phase") in ("Pending", "Running")
            ]
            used = sum(POD_MILLICPU * len(p["spec"]["containers"]) for p in placed)
            self.samples += 1
            self.peak = max(self.peak, used)
            if used > QUOTA_MILLICPU:
                self.over.append((used, sorted(p["metadata"]["name"] for p in placed)))
            for p in placed:
                labels = p["metadata"]["labels"]
                if labels.get("dask.org/component") == "scheduler":
                    self.schedulers.setdefault(labels["dask.org/cluster-name"], set()).add(
                        p["metadata"]["uid"]
                    )


def test_random_sequences_never_run_more_than_the_admitted_quota(
    plane: Any, namespace: str, queue: str, dask_operator: OperatorProcess
) -> None:
    """Scale, suspend, resume, new worker groups, autoscalers created and deleted, and flavor edits, in a seeded
    random order on two clusters of one 1-CPU queue: at no sampled moment do the pods on the node request more
    than the quota, and a cluster's scheduler is replaced only by a resume. Replay: KUEUE_PROPERTY_SEED."""
    seed = int(os.environ.get("KUEUE_PROPERTY_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    print(f"KUEUE property seed {seed}")
    clusters = ("p0", "p1")
    flavor = f"rf-{namespace}"
    suspended: set[str] = set()
    resumes = {c: 0 for c in clusters}
    groups: list[tuple[str, str]] = []
    autoscalers: set[str] = set()
    tolerating = False
    steps: list[str] = []

    def patch(kind: str, name: str, body: dict[str, Any]) -> None:
        plane.kubectl("-n", namespace, "patch", kind, name, "--type=merge", "-p", json.dumps(body))

    with QuotaWatch(plane, namespace) as watch:
        for name in clusters:
            apply(plane, namespace, queued_cluster(name, 1, queue))
        for _ in range(14):
            cluster = rng.choice(clusters)
            action = rng.choice(("scale", "scale", "suspend", "group", "autoscaler", "flavor"))
            if action == "scale":
                replicas = rng.randrange(0, 6)
                plane.kubectl("-n", namespace, "scale", "daskcluster", cluster, f"--replicas={replicas}")
                steps.append(f"scale {cluster} {replicas}")
            elif action == "suspend":
                resume = cluster in suspended
                patch("daskcluster", cluster, {"spec": {"suspend": not resume}})
                (suspended.discard if resume else suspended.add)(cluster)
                resumes[cluster] += int(resume)
                steps.append(f"{'resume' if resume else 'suspend'} {cluster}")
            elif action == "group":
                mine = [g for c, g in groups if c == cluster]
                if mine and rng.random() < 0.5:
                    plane.kubectl("-n", namespace, "delete", "daskworkergroup", mine[0], "--wait=false")
                    groups.remove((cluster, mine[0]))
                    steps.append(f"delete group {mine[0]}")
                else:
                    name = f"{cluster}-g{len(steps)}"
                    group = group_manifest(name, cluster, rng.randrange(1, 4))
                    requesting(group["spec"]["worker"]["spec"])
                    apply(plane, namespace, group)
                    groups.append((cluster, name))
                    steps.append(f"group {name} x{group['spec']['worker']['replicas']}")
            elif action == "autoscaler":
                name = f"{cluster}-auto"
                if name in autoscalers:
                    plane.kubectl("-n", namespace, "delete", "daskautoscaler", name, "--wait=false")
                    autoscalers.discard(name)
                    steps.append(f"delete autoscaler {name}")
                else:
                    low = rng.randrange(0, 3)
                    apply(plane, namespace, {
                        "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskAutoscaler",
                        "metadata": {"name": name},
                        "spec": {"cluster": cluster, "minimum": low, "maximum": low + rng.randrange(1, 4)},
                    })  # fmt: skip
                    autoscalers.add(name)
                    steps.append(f"autoscaler {name}")
            else:
                tolerating = not tolerating
                toleration = {"key": "example.com/flavor-edit", "operator": "Exists", "effect": "NoSchedule"}
                plane.kubectl("patch", "resourceflavor.kueue.x-k8s.io", flavor, "--type=merge", "-p",
                              json.dumps({"spec": {"tolerations": [toleration] if tolerating else None}}))  # fmt: skip
                steps.append(f"flavor tolerations {'on' if tolerating else 'off'}")
            # an observation window of random length, during which the quota must hold (not a wait)
            holds_for(lambda: not watch.over, rng.uniform(2, 8), interval=0.5, message=f"quota after {steps}")
        holds_for(lambda: not watch.over, 20, interval=1, message=f"quota after settling from {steps}")
    print(
        f"KUEUE property: {len(steps)} steps, {watch.samples} samples, peak {watch.peak}m of {QUOTA_MILLICPU}m"
    )
    print("KUEUE steps: " + "; ".join(steps))
    assert watch.samples > 50 and watch.peak > 0, (watch.samples, watch.peak)
    assert not watch.over, (seed, steps, watch.over[:3])
    for name in clusters:
        assert len(watch.schedulers.get(name, ())) <= 1 + resumes[name], (seed, steps, name, watch.schedulers)
