"""Chaos: the operator SIGKILLed every few seconds for a minute while a seeded random storm of `kubectl scale`
hits five DaskClusters. Afterwards every cluster's worker group has exactly the replicas of its last spec,
no pod is duplicated or orphaned, and no pod was deleted (retired) twice.

The pods are simulated by the process node (Running without processes): five real Dask clusters scaling
for a minute are too heavy for a shared 2-core machine. With no scheduler answering, each cluster's force
timeout annotation is 0, so a scale-down deletes at once (the retirement path with real Dask is covered by
the other chaos modules). Replay a run with CHAOS_SEED=<the printed seed>; CHAOS_STORM_SECONDS sets the
storm's length (default 60). A 20 s cut of it (marker chaos_smoke) runs in the default suite.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.bench_workload import manifest
from support.operator import OperatorProcess, apply, get
from support.wait import wait_for

from dask_operator.controller.planners.workergroup import FORCE_SCALE_DOWN_ANNOTATION

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

CLUSTERS = [f"storm-{i}" for i in range(5)]
MAX_REPLICAS = 4
SHORT_STORM_SECONDS = 20.0


def test_operator_killed_every_few_seconds_during_a_scale_storm_on_five_clusters(
    plane: Any, namespace: str, tmp_path: Path
) -> None:
    _storm(plane, namespace, tmp_path, float(os.environ.get("CHAOS_STORM_SECONDS", "60")))


@pytest.mark.chaos_smoke
def test_operator_killed_during_a_short_scale_storm_on_five_clusters(
    plane: Any, namespace: str, tmp_path: Path
) -> None:
    """The default suite's cut of the storm: 20 s, a handful of kills (the matrix runs the full minute)."""
    _storm(plane, namespace, tmp_path, SHORT_STORM_SECONDS)


def _storm(plane: Any, namespace: str, tmp_path: Path, storm_seconds: float) -> None:
    seed = int(os.environ.get("CHAOS_SEED", str(random.SystemRandom().randrange(2**32))))
    print(f"CHAOS storm seed={seed} (replay: CHAOS_SEED={seed})", flush=True)
    storm, killer_rng = random.Random(seed), random.Random(seed + 1)

    # JSON logs: the test counts the "deleted" records per pod across every incarnation of the operator
    recorder = PodRecorder(plane, namespace)
    op = OperatorProcess(
        plane, namespace, tmp_path / "operator.log", extra_args=("--log-format=json",)
    ).start()
    try:
        for name in CLUSTERS:
            obj = manifest(name)
            obj["metadata"]["annotations"] = {FORCE_SCALE_DOWN_ANNOTATION: "0"}
            apply(plane, namespace, obj)
        wait_for(lambda: all(_live_workers(plane, namespace, n) == 2 for n in CLUSTERS), timeout=120,
                 interval=0.5, message="5 clusters with 2 workers each")  # fmt: skip

        last = dict.fromkeys(CLUSTERS, 2)
        stop = threading.Event()
        kills: list[float] = []

        def killer() -> None:
            while not stop.wait(killer_rng.uniform(2.0, 6.0)):
                op.kill()
                kills.append(time.monotonic())
                op.start()

        thread = threading.Thread(target=killer, name="operator-killer", daemon=True)
        thread.start()
        scales = 0
        deadline = time.monotonic() + storm_seconds
        try:
            while time.monotonic() < deadline:
                name, replicas = storm.choice(CLUSTERS), storm.randrange(MAX_REPLICAS + 1)
                plane.kubectl("scale", "-n", namespace, f"daskcluster/{name}", f"--replicas={replicas}")
                last[name] = replicas
                scales += 1
                stop.wait(storm.uniform(0.1, 1.0))  # the storm's pace, drawn from the seed: not a sync
        finally:
            stop.set()
            thread.join(90)
        assert not thread.is_alive(), "the killer thread hung restarting the operator"
        if op.proc is None or op.proc.poll() is not None:
            op.start()

        t0 = time.monotonic()
        wait_for(lambda: _converged(plane, namespace, last), timeout=180, interval=0.5,
                 message=f"every cluster at its last spec {last}")  # fmt: skip
        converged = round(time.monotonic() - t0, 1)
        print(f"CHAOS storm seed={seed} scales={scales} kills={len(kills)} last={last} "
              f"converged_after_storm_s={converged}", flush=True)  # fmt: skip
        assert len(kills) >= storm_seconds / 12, f"only {len(kills)} operator kills in {storm_seconds} s"

        _assert_no_duplicates_or_orphans(plane, namespace, last)
        assert not recorder.broken, f"the test's pod watch broke: {recorder.broken}"
        recorder.stop()
        deleted = _deletions_per_pod(op.log_path, recorder.added)
        twice = {pod: n for pod, n in deleted.items() if n > 1}
        assert not twice, f"pods deleted more than once (seed {seed}): {twice}"
        assert deleted, "the storm deleted no pod: the scale-down path was not exercised"
        print(f"CHAOS storm seed={seed} pod_deletions={sum(deleted.values())} deleted_twice={len(twice)}")
    except BaseException:
        print(f"--- operator log tail ---\n{op.tail(120)}")
        raise
    finally:
        op.stop()
        recorder.stop()


class PodRecorder:
    """Every pod the API server adds in the namespace, by name: (wall-clock time seen, UID), from a watch.

    Worker pod names are deterministic, so one name can be several pods over a storm; these times split
    the operator's "deleted" records into one run per pod."""

    def __init__(self, plane: Any, namespace: str) -> None:
        from kubernetes import client, watch

        self.added: dict[str, list[tuple[float, str]]] = {}
        self.stopped, self.broken = False, ""
        self._watch = watch.Watch()
        core = client.CoreV1Api(plane.api_client())
        self._thread = threading.Thread(
            target=self._run, args=(core, namespace), name="pod-recorder", daemon=True
        )
        self._thread.start()

    def _run(self, core: Any, namespace: str) -> None:
        try:
            for event in self._watch.stream(core.list_namespaced_pod, namespace, timeout_seconds=600):
                if event["type"] == "ADDED":
                    meta = event["object"].metadata
                    self.added.setdefault(meta.name, []).append((time.time(), meta.uid))
        except Exception as error:  # noqa: BLE001 - reported through `broken`, asserted by the test
            if not self.stopped:
                self.broken = repr(error)
        else:
            if not self.stopped:
                self.broken = "the pod watch ended early"

    def stop(self) -> None:
        self.stopped = True
        self._watch.stop()


def _deletions_per_pod(log: Path, added: dict[str, list[tuple[float, str]]]) -> Counter[str]:
    """How many times the operator's log records deleting each pod (name/UID), across every incarnation of
    the operator: a record belongs to the last pod of that name added before it."""
    counted: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by SIGKILL, or a traceback
        if not (isinstance(record, dict) and record.get("msg") == "deleted" and record.get("kind") == "Pod"):
            continue
        name = str(record["object"])
        before = [uid for seen, uid in added.get(name, []) if seen <= float(record["ts"])]
        counted[f"{name}/{before[-1] if before else '?'}"] += 1
    return counted


def _live_workers(plane: Any, namespace: str, cluster: str) -> int:
    listed = get(plane, namespace, "pods", "-l", f"dask.org/cluster-name={cluster},dask.org/component=worker")
    return sum(1 for p in (listed or {}).get("items", []) if not p["metadata"].get("deletionTimestamp"))


def _converged(plane: Any, namespace: str, last: dict[str, int]) -> bool:
    groups = {
        g["metadata"]["name"]: g for g in (get(plane, namespace, "daskworkergroups") or {}).get("items", [])
    }
    listed = (get(plane, namespace, "pods") or {}).get("items", [])
    if any(p["metadata"].get("deletionTimestamp") for p in listed):
        return False
    for cluster, replicas in last.items():
        group = groups.get(f"{cluster}-default")
        if group is None or group["spec"]["worker"]["replicas"] != replicas:
            return False
        if group.get("status", {}).get("replicas") != replicas:
            return False
        if _live_workers(plane, namespace, cluster) != replicas:
            return False
    return True


def _assert_no_duplicates_or_orphans(plane: Any, namespace: str, last: dict[str, int]) -> None:
    owners = {
        o["metadata"]["uid"]: o["metadata"]["name"]
        for kind in ("daskclusters", "daskworkergroups")
        for o in (get(plane, namespace, kind) or {}).get("items", [])
    }
    listed = (get(plane, namespace, "pods") or {}).get("items", [])
    orphans = [
        p["metadata"]["name"]
        for p in listed
        if not any(ref["uid"] in owners for ref in p["metadata"].get("ownerReferences", []))
    ]
    assert not orphans, f"pods owned by nothing that exists: {orphans}"
    per_cluster = Counter(
        (p["metadata"]["labels"]["dask.org/cluster-name"], p["metadata"]["labels"]["dask.org/component"])
        for p in listed
    )
    for cluster, replicas in last.items():
        assert per_cluster[(cluster, "scheduler")] == 1, f"{cluster}: scheduler pods {per_cluster}"
        assert per_cluster[(cluster, "worker")] == replicas, f"{cluster}: worker pods {per_cluster}"
    groups = (get(plane, namespace, "daskworkergroups") or {}).get("items", [])
    assert sorted(g["metadata"]["name"] for g in groups) == sorted(f"{c}-default" for c in last), groups
