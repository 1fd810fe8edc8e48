"""Runtime benchmarks; they print figures and assert only the targets the issue sets.

Run: python -m pytest test/bench -m bench -s -k runtime
"""

from __future__ import annotations

import gc
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from support.runtime_demo import ActionLog, build
from support.runtime_plane import RequestLog, direct_client
from support.wait import wait_for

from dask_operator.runtime.cache import Cache
from dask_operator.runtime.controller import Controller, WatchSpec
from dask_operator.runtime.handler import request_for_object
from dask_operator.runtime.informer import Informer
from dask_operator.runtime.kinds import CONFIGMAP, NAMESPACE, POD
from dask_operator.runtime.manager import Manager
from dask_operator.runtime.reconcile import Request, Result
from dask_operator.runtime.workqueue import WorkQueue

pytestmark = pytest.mark.bench
POD_COUNT = 10_000


def synthetic_pod(i: int) -> dict[str, Any]:
    """A realistic Dask worker pod as the API server returns it (managedFields included; the cache strips them)."""
    name = f"cluster-{i % 50}-default-worker-{i:05d}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": f"ns-{i % 20}",
            "uid": f"{i:08x}-1f2e-4c5d-9a8b-{i:012x}",
            "resourceVersion": str(100000 + i),
            "creationTimestamp": "2026-11-26T07:00:00Z",
            "labels": {
                "dask.org/cluster-name": f"cluster-{i % 50}",
                "dask.org/component": "worker",
                "dask.org/workergroup-name": "default",
                "app.kubernetes.io/name": "dask",
            },
            "ownerReferences": [
                {
                    "apiVersion": "kubernetes.dask.org/v1",
                    "kind": "DaskWorkerGroup",
                    "name": f"cluster-{i % 50}-default",
                    "uid": f"owner-{i % 50:04d}",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "managedFields": [
                {
                    "manager": "dask-operator",
                    "operation": "Apply",
                    "fieldsV1": {"f:spec": {"f:containers": {}}},
                }
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "worker",
                    "image": "ghcr.io/dask/dask:2026.11.0",
                    "args": ["dask-worker", "--name", name, "--dashboard", "--dashboard-address", "8788"],
                    "env": [
                        {
                            "name": "DASK_SCHEDULER_ADDRESS",
                            "value": f"tcp://cluster-{i % 50}-scheduler.ns-{i % 20}.svc.cluster.local:8786",
                        },
                        {"name": "DASK_WORKER_NAME", "value": name},
                    ],
                    "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
                    "resources": {
                        "limits": {"cpu": "1", "memory": "2Gi"},
                        "requests": {"cpu": "1", "memory": "2Gi"},
                    },
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "IfNotPresent",
                }
            ],
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "nodeName": "node-1",
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
            ],
            "priority": 0,
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": "2026-11-26T07:00:05Z"}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "hostIP": "10.0.0.1",
            "podIP": f"10.244.{i // 250}.{i % 250}",
            "startTime": "2026-11-26T07:00:00Z",
            "containerStatuses": [
                {
                    "name": "worker",
                    "ready": True,
                    "restartCount": 0,
                    "image": "ghcr.io/dask/dask:2026.11.0",
                    "imageID": "ghcr.io/dask/dask@sha256:" + "ab" * 32,
                    "containerID": f"containerd://{i:064x}",
                    "started": True,
                    "state": {"running": {"startedAt": "2026-11-26T07:00:04Z"}},
                }
            ],
            "qosClass": "Guaranteed",
        },
    }


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def test_runtime_memory_per_cached_pod() -> None:
    from support.runtime_offline import offline_client

    # the bytes of a LIST answer, parsed the way the client parses them, then stored through replace()
    body = json.dumps({"kind": "PodList", "items": [synthetic_pod(i) for i in range(POD_COUNT)]}).encode()
    informer = Informer(offline_client(), POD, indexers=Cache(offline_client())._indexers)
    before = rss()
    informer.replace(json.loads(body)["items"], "1")
    del body
    after = rss()
    per_pod = (after - before) / POD_COUNT
    print(
        f"\n[bench] memory per cached Pod (replace path, {POD_COUNT} pods, RSS delta incl. parsing): {per_pod / 1024:.2f} KB"
    )
    assert len(informer.store) == POD_COUNT
    assert per_pod < 15 * 1024


def test_runtime_memory_per_cached_pod_through_a_real_list(kube_plane: Any, tmp_path: Path) -> None:
    # Pods are created as plain objects (no node runs them); 10,000 creations take a while, so 2,000 here
    count = 2000
    client = direct_client(kube_plane, timeout=60)
    namespace = f"bench-pods-{int(time.time())}"
    client.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        body = synthetic_pod(0)

        def create(start: int) -> None:
            for i in range(start, count, 8):
                pod = synthetic_pod(i)
                pod["metadata"] = {k: v for k, v in pod["metadata"].items() if k in ("name", "labels")}
                pod["metadata"]["namespace"] = namespace
                pod["spec"] = dict(pod["spec"], nodeName="bench-node-that-does-not-exist")
                pod.pop("status")
                client.create(pod)

        threads = [threading.Thread(target=create, args=(s,)) for s in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        del body
        cache = Cache(client, namespace)
        informer = cache.informer(POD)
        before = rss()
        cache.start()
        assert informer.wait_for_sync(120)
        after = rss()
        print(
            f"\n[bench] memory per cached Pod (real LIST of {count} pods, RSS delta): {(after - before) / count / 1024:.2f} KB"
        )
        cache.stop()
    finally:
        client.delete(NAMESPACE, None, namespace)


def test_runtime_workqueue_throughput() -> None:
    queue: WorkQueue[int] = WorkQueue("bench-throughput")
    total = 100_000
    done = threading.Semaphore(0)

    def worker() -> None:
        while True:
            key, shutdown = queue.get()
            if shutdown:
                return
            assert key is not None
            queue.done(key)
            done.release()

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for thread in workers:
        thread.start()
    started = time.perf_counter()
    for key in range(total):
        queue.add(key)
    for _ in range(total):
        done.acquire()
    elapsed = time.perf_counter() - started
    queue.shutdown()
    for thread in workers:
        thread.join()
    print(f"\n[bench] workqueue throughput (add-get-done, 4 workers): {total / elapsed:,.0f} keys/s")


def test_runtime_event_to_reconcile_latency(kube_plane: Any, namespace: str) -> None:
    client = direct_client(kube_plane)
    cache = Cache(client, namespace)
    updated_at: dict[str, float] = {}
    latencies: list[float] = []
    lock = threading.Lock()

    class Timing:
        def reconcile(self, request: Request) -> Result:
            obj = cache.get(CONFIGMAP, request.namespace, request.name)
            stamp = (obj or {}).get("data", {}).get("n")
            with lock:
                sent = updated_at.pop(f"{request.name}/{stamp}", None)
            if sent is not None:
                latencies.append(time.perf_counter() - sent)
            return Result()

    controller = Controller(
        "bench-latency",
        Timing(),
        cache,
        [WatchSpec(CONFIGMAP, request_for_object)],
        max_concurrent_reconciles=2,
    )
    names = [f"cm{i}" for i in range(20)]
    for name in names:
        client.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace},
                "data": {"n": "0"},
            }
        )
    cache.start()
    controller.start()
    rate, seconds, writers = 100, 10, 4
    total = rate * seconds
    t0 = time.perf_counter() + 0.2

    def write(offset: int) -> None:
        for n in range(offset, total, writers):  # update n is due at t0 + n / rate
            time.sleep(max(0.0, t0 + n / rate - time.perf_counter()))
            name = names[n % len(names)]
            with lock:
                updated_at[f"{name}/{n + 1}"] = time.perf_counter()
            client.patch_merge(CONFIGMAP, namespace, name, {"data": {"n": str(n + 1)}})

    threads = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    achieved = total / (time.perf_counter() - t0)
    time.sleep(1)
    controller.stop(5)
    cache.stop()
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(
        f"\n[bench] event-to-reconcile latency at {achieved:.0f} updates/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        f" ({len(latencies)} of {total} updates seen individually; the rest were coalesced by the queue)"
    )


def test_runtime_idle_controller_api_requests(kube_plane: Any, namespace: str) -> None:
    client = direct_client(kube_plane)
    for i in range(20):
        client.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"s{i}", "namespace": namespace},
                "stringData": {"k": str(i)},
            }
        )
    manager = Manager(client, namespace=namespace, metrics_address=None, health_address=None)
    reconciler = build(manager, ActionLog(None, "bench"))
    thread = threading.Thread(target=manager.run, daemon=True)
    thread.start()
    wait_for(lambda: len(manager.cache.informer(CONFIGMAP).store) >= 21, timeout=30)
    time.sleep(2)
    log = RequestLog(client)
    reconciles = reconciler.reconciles
    time.sleep(60)
    writes = log.writes()
    others = log.matching(lambda r: r.method == "GET" and r.params.get("watch") != "true")
    watches = log.watches()
    print(
        f"\n[bench] idle converged controller over 60 s: {len(writes)} writes, {len(others)} GET/LIST, "
        f"{len(watches)} watch (re)connections, {reconciler.reconciles - reconciles} reconciles"
    )
    manager.stop()
    thread.join(15)
    assert writes == []
