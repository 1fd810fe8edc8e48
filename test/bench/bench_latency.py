"""Benchmark piece: how long an update to one DaskCluster takes to be reconciled while many others are present.

A client sends updates at a fixed rate, spread over the clusters in turn: each toggles `spec.suspend` between
`false` and absent, which is a new generation and changes nothing the cluster runs. The operator writes the new
`status.observedGeneration` at once when it reconciles a new generation (controller/status_writes.urgent), and a
watch on the namespace's DaskClusters sees that write. The latency is the update's send time to the watch event
showing its generation observed: an upper bound of event-to-reconcile, since it also holds the watch delivery to
the operator and back and one status write. Reported: the rate achieved, p50/p99/max, updates never observed
within the wait, and the operator's requests per update.

The same run measures the limit: with `answer=True` and no operator, the sender itself writes each update's
`status.observedGeneration` right after the update returns, which is what a reconciler that cost nothing
would do: two writes in a row at the same rate, on the same API server.

Used by test/bench/bench_table.py once the clusters have converged, with the operator still running.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubeplane.node.kubeapi import ApiError
from support.bench_workload import GROUP, MERGE, TightClient, cluster_path

# Seconds an update may take to show before it counts as never observed.
OBSERVE_WAIT = 60.0
# Threads of the sending client (TightClient(kubeconfig, SENDERS)). Past the API server's capacity (~100 writes/s
# on 2 busy cores) more senders only lengthen its queue, in front of the operator's writes too: the local plane
# has no fair queuing between them (both are system:masters, which API Priority and Fairness exempts).
SENDERS = 16


class _Observed:
    """Per cluster, the times at which the watch saw each observedGeneration (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: dict[str, list[tuple[float, int]]] = defaultdict(list)

    def add(self, name: str, generation: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.seen[name].append((now, generation))

    def first_at_least(self, name: str, generation: int, after: float) -> float | None:
        with self._lock:
            return next((t for t, g in self.seen[name] if g >= generation and t >= after), None)


def _watch(
    client: TightClient, path: str, resource_version: str, observed: _Observed, stop: threading.Event
) -> None:
    rv = resource_version
    while not stop.is_set():
        try:
            for event in client.client.watch(path, {"resourceVersion": rv}, server_timeout=30):
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":  # e.g. 410 Gone: start again from a fresh list
                    rv = client.client.request("GET", path, timeout=120)["metadata"]["resourceVersion"]
                    break
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                generation = (obj.get("status") or {}).get("observedGeneration")
                if event.get("type") == "MODIFIED" and generation is not None:
                    observed.add(obj["metadata"]["name"], int(generation))
                if stop.is_set():
                    return
        except ApiError as e:  # a stream the loaded API server cut: resume, from a fresh list if rv expired
            if e.status == 410:
                rv = client.client.request("GET", path, timeout=120)["metadata"]["resourceVersion"]


def percentile(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else None


def update_latency(
    client: TightClient,
    namespace: str,
    names: list[str],
    rate: float = 100.0,
    seconds: float = 30.0,
    answer: bool = False,
) -> dict[str, Any]:
    """Send `rate * seconds` updates at `rate` per second over `names` in turn; returns the latency figures.
    With `answer`, each update's sender also writes its observedGeneration (the limit, with no operator)."""
    path = f"{GROUP}/namespaces/{namespace}/daskclusters"
    listed = client.client.request("GET", path, timeout=120)
    observed, stop = _Observed(), threading.Event()
    watcher = threading.Thread(
        target=_watch, args=(client, path, listed["metadata"]["resourceVersion"], observed, stop), daemon=True
    )
    watcher.start()
    total = int(rate * seconds)
    sends: list[tuple[str, int, float]] = []  # (cluster, generation the update made, send time)
    lock = threading.Lock()
    # each cluster's next update flips what it holds now (a repeated value would make no new generation)
    holds_false = {c["metadata"]["name"]: "suspend" in c.get("spec", {}) for c in listed.get("items") or []}

    def one(i: int) -> None:
        name = names[i % len(names)]
        with lock:
            holds_false[name] = not holds_false.get(name, False)
            value = False if holds_false[name] else None
        sent = time.monotonic()
        body = client.client.request(
            "PATCH",
            cluster_path(namespace, name),
            {"spec": {"suspend": value}},
            content_type=MERGE,
            timeout=60,
        )
        generation = int(body["metadata"]["generation"])
        with lock:
            sends.append((name, generation, sent))
        if answer:
            client.client.request(
                "PATCH",
                f"{cluster_path(namespace, name)}/status",
                {"status": {"observedGeneration": generation}},
                content_type=MERGE,
                timeout=60,
            )

    started = time.monotonic()
    with ThreadPoolExecutor(client.threads) as pool:
        for i in range(total):
            # pacing the sender at the asked rate (this is the load, not a wait for a condition)
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i)
    sent_for = time.monotonic() - started
    # one send per (cluster, generation): a toggle that raced another of the same cluster may not bump it
    firsts: dict[tuple[str, int], float] = {}
    for name, generation, sent in sends:
        firsts[(name, generation)] = min(sent, firsts.get((name, generation), sent))

    def latencies() -> tuple[list[float], int]:
        found, missing = [], 0
        for (name, generation), sent in firsts.items():
            at = observed.first_at_least(name, generation, sent)
            if at is None:
                missing += 1
            else:
                found.append(at - sent)
        return found, missing

    deadline = time.monotonic() + OBSERVE_WAIT
    found, missing = latencies()
    while missing and time.monotonic() < deadline:  # polling our own watch's record, with a deadline
        time.sleep(0.2)
        found, missing = latencies()
    stop.set()
    return {
        "clusters": len(names),
        "updates_sent": len(sends),
        "new_generations": len(firsts),
        "rate_asked_per_second": rate,
        "rate_achieved_per_second": round(len(sends) / sent_for, 1) if sent_for else None,
        "latency_seconds_p50": _round(percentile(found, 0.5)),
        "latency_seconds_p99": _round(percentile(found, 0.99)),
        "latency_seconds_max": _round(max(found) if found else None),
        "never_observed": missing,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
