"""Chaos: the control plane breaks while a real Dask cluster holding persisted and scattered data scales.

Stories: the kube-apiserver restarts during a scale-up and again during a scale-down; etcd restarts (its
data dir kept) during a scale-up and a scale-down; every API connection of the operator is black-holed for
longer than its request timeout (30 s) during a scale-up and a scale-down, then heals. Each time the
cluster reaches its new size and no persisted key is recomputed, no scattered key lost.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from support.chaos_workload import Stopwatch, data_cost, figure, hold_data
from support.faultproxy import FaultProxy
from support.operator import (
    OperatorProcess,
    apply,
    cluster_manifest,
    dask_client,
    get,
    pod_names,
    wait_running,
    wait_workers,
    worker_pods,
)
from support.wait import wait_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

BLACKHOLE_SECONDS = 40.0  # longer than the operator's 30 s API request timeout


def _restart(component: str) -> Callable[[Any, FaultProxy | None], None]:
    def fault(plane: Any, proxy: FaultProxy | None) -> None:
        plane.restart(component, timeout=90)

    return fault


def _blackhole(plane: Any, proxy: FaultProxy | None) -> None:
    assert proxy is not None
    proxy.blackhole()
    stop = Stopwatch()
    try:
        # The fault lasts a fixed time by design: a partition is a duration, not a condition to wait on.
        wait_for(lambda: stop.seconds() >= BLACKHOLE_SECONDS, timeout=BLACKHOLE_SECONDS + 5, interval=1.0,
                 message="the black-hole's duration")  # fmt: skip
    finally:
        proxy.pass_through()


FAULTS = {
    "apiserver-restart": _restart("kube-apiserver"),
    "etcd-restart": _restart("etcd"),
    "watch-blackhole": _blackhole,
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_cluster_scales_up_and_down_through_a_control_plane_fault_without_losing_data(
    plane: Any, namespace: str, tmp_path: Path, fault: str
) -> None:
    proxy = FaultProxy(plane.server) if fault == "watch-blackhole" else None
    kubeconfig = plane.write_kubeconfig(proxy.url, tmp_path / "proxied.kubeconfig") if proxy else None
    op = OperatorProcess(plane, namespace, tmp_path / "operator.log", kubeconfig=kubeconfig).start()
    name = "cp"
    try:
        apply(plane, namespace, cluster_manifest(name, 2))
        wait_running(plane, namespace, name, timeout=120)
        with dask_client(plane, namespace, name) as client:
            wait_workers(client, pod_names(worker_pods(plane, namespace, f"{name}-default")), timeout=120)
            held = hold_data(client)

            for direction, replicas in (("up", 3), ("down", 1)):
                plane.kubectl("scale", "-n", namespace, f"daskcluster/{name}", f"--replicas={replicas}")
                clock = Stopwatch()
                FAULTS[fault](plane, proxy)
                fault_over = clock.seconds()
                wait_for(lambda r=replicas: _at_size(plane, namespace, name, r), timeout=240, interval=0.5,
                         message=f"{replicas} worker pods and status")  # fmt: skip
                wait_workers(client, replicas, timeout=120)
                cost = data_cost(client, held)
                figure(f"{fault}-scale-{direction}", fault_s=fault_over, converged_s=clock.seconds(),
                       recomputed=len(cost.recomputed), scattered_lost=len(cost.scattered_lost))  # fmt: skip
                print(cost.line())
                assert cost.recomputed == {} and cost.scattered_lost == [] and cost.erred == 0, cost
    except BaseException:
        print(f"--- operator log tail ---\n{op.tail(120)}")
        raise
    finally:
        op.stop()
        if proxy is not None:
            proxy.close()


def _at_size(plane: Any, namespace: str, cluster: str, replicas: int) -> bool:
    group = get(plane, namespace, "daskworkergroup", f"{cluster}-default")
    live = worker_pods(plane, namespace, f"{cluster}-default")
    return bool(
        group
        and group.get("status", {}).get("replicas") == replicas
        and len(live) == replicas
        and all(p.get("status", {}).get("phase") == "Running" for p in live)
    )
