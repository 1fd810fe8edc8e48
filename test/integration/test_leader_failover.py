"""Leader failover between two real `dask-operator run --leader-elect` processes, each reaching the API server
through its own request-logging fault proxy, so every write is counted per replica.

The leader's proxy is black-holed mid-lease (its renews hang, nothing is refused). The leader must stop
acting by its own clock before the lease could pass (renew deadline 10 s < lease duration 15 s) and exit
non-zero; the standby takes the lease once it has seen it unchanged for a lease duration and finishes the
work. No write of the old leader reaches the API server after the new one started writing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from support.faultproxy import FaultProxy
from support.operator import OperatorProcess
from support.runtime_plane import http_proxy
from support.wait import wait_for

from dask_operator.runtime.leaderelection import LeaderElectionConfig

pytestmark = pytest.mark.timeout(240)

SIMULATED = {"localkube/simulated": "true"}
WRITES = ("POST", "PUT", "PATCH", "DELETE")
ELECTION = ("--leader-elect", "--leader-election-id=failover")


def simulated_cluster(name: str, replicas: int) -> dict[str, Any]:
    container = {"name": "c", "image": "ghcr.io/dask/dask:latest", "args": ["dask", "--version"]}
    ports = [{"name": "tcp-comm", "port": 8786}, {"name": "http-dashboard", "port": 8787}]
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name},
        "spec": {
            "worker": {"replicas": replicas, "metadata": {"annotations": SIMULATED},
                       "spec": {"containers": [container]}},
            "scheduler": {"metadata": {"annotations": SIMULATED}, "spec": {"containers": [container]},
                          "service": {"selector": {"dask.org/cluster-name": name,
                                                   "dask.org/component": "scheduler"}, "ports": ports}},
        },
    }  # fmt: skip


def worker_count(plane: Any, namespace: str, cluster: str) -> int:
    out = plane.kubectl("get", "pods", "-n", namespace, "-o", "json", "-l",
                        f"dask.org/cluster-name={cluster},dask.org/component=worker")  # fmt: skip
    return sum(1 for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp"))


def acquired(op: OperatorProcess) -> bool:
    return "successfully acquired lease" in op.log_path.read_text(errors="replace")


def object_writes(proxy: FaultProxy, since: float = 0.0, until: float = float("inf")) -> list[Any]:
    """Writes other than the Lease's and Events that went through `proxy` in [since, until)."""
    return [
        r
        for r in list(proxy.requests)
        if r.method in WRITES and "/leases/" not in r.target and "/events" not in r.target
        and since <= r.at < until
    ]  # fmt: skip


def test_a_leader_cut_off_mid_renew_stops_acting_before_the_standby_takes_over(
    plane: Any, namespace: str, tmp_path: Path
) -> None:
    config = LeaderElectionConfig("failover", namespace=namespace)  # the operator's defaults: 15 / 10 / 2 s
    proxies = {name: http_proxy(plane) for name in ("a", "b")}
    ops = {
        name: OperatorProcess(
            plane, namespace, tmp_path / f"operator-{name}.log", extra_args=ELECTION,
            kubeconfig=plane.write_kubeconfig(proxy.url, tmp_path / f"{name}.kubeconfig"),
        )
        for name, proxy in proxies.items()
    }  # fmt: skip
    try:
        ops["a"].start()
        wait_for(lambda: acquired(ops["a"]), timeout=60, interval=0.3, message="a leads")
        ops["b"].start()
        plane.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(simulated_cluster("lf", 2)))
        wait_for(lambda: worker_count(plane, namespace, "lf") == 2, timeout=60, interval=0.3,
                 message="the leader created 2 workers")  # fmt: skip
        assert object_writes(proxies["a"]) and not object_writes(proxies["b"])
        assert not acquired(ops["b"])

        proxies["a"].blackhole()
        cut = time.monotonic()
        plane.kubectl("scale", "-n", namespace, "daskcluster/lf", "--replicas=3")
        wait_for(lambda: worker_count(plane, namespace, "lf") == 3, timeout=90, interval=0.3,
                 message="the standby took over and scaled to 3")  # fmt: skip
        assert acquired(ops["b"])
        proc_a = ops["a"].proc
        assert proc_a is not None
        code = wait_for(lambda: proc_a.poll(), timeout=60, interval=0.3, message="the old leader exited")
        assert code != 0
        proxies["a"].pass_through()

        b_writes = object_writes(proxies["b"])
        a_attempts = object_writes(proxies["a"], since=cut)
        first_b = min(r.at for r in b_writes)
        # the old leader attempted nothing once its renew deadline had passed (by its clock, a little
        # after the cut), and what it attempted after the cut never reached the API server (black hole)
        assert all(r.at < cut + config.renew_deadline for r in a_attempts), [
            (r.method, r.target) for r in a_attempts
        ]
        reached = object_writes(proxies["a"], until=cut)
        assert max(r.at for r in reached) < first_b
        # the standby waited out a lease duration on its own clock (from the leader's last renew, at most a
        # retry period before the cut, seen up to a jittered retry period later) before writing anything
        assert first_b - cut >= config.lease_duration - 2 * config.retry_period, first_b - cut
        print(f"failover: standby's first write {first_b - cut:.1f} s after the cut; "
              f"old leader: {len(reached)} writes before, {len(a_attempts)} attempted after (none arrived); "
              f"new leader: {len(b_writes)} writes")  # fmt: skip
    finally:
        for op in ops.values():
            op.stop()
        for proxy in proxies.values():
            proxy.close()
