"""The operator on real nodes, as a platform team meets it: the image built from the Dockerfile, installed
with the Helm chart (two leader-elected pods, UID 1000, read-only root), reconciles a DaskCluster whose
scheduler and workers run from the Dask image; a client outside the cluster computes through the scheduler's
ClusterIP (kube-proxy), and a scale-down keeps every result (0 lost). Prometheus, with the README's scrape
config, scrapes both operator pods; deleting the leader's pod hands the Lease to the other one, which then
reconciles, and Prometheus sees which pod leads. A `kubectl drain` of a worker's node runs the worker's
preStop retirement on the real kubelet: nothing recomputed or lost.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support.chaos_workload import data_cost, hold_data
from support.fixtures import KubePlane
from support.helm import CHART, Helm, crd_flags, helm_binary
from support.operator import (
    cluster_manifest,
    condition,
    dask_client,
    get,
    wait_running,
    wait_workers,
    worker_pods,
)
from support.prometheus import scrape_configs, start_prometheus
from support.wait import wait_for

pytestmark = pytest.mark.realnode_smoke  # the default command runs this module (setup.cfg)

OPERATOR_NS = "dask-operator"
JSON = dict[str, Any]


@pytest.fixture(scope="module")
def operator(real_plane: KubePlane) -> Iterator[KubePlane]:
    with tempfile.TemporaryDirectory(prefix="helm-") as home:
        helm = Helm(helm_binary(), Path(home))
        kubeconfig = f"--kubeconfig={real_plane.kubeconfig}"
        t0 = time.monotonic()
        helm("install", "dask-operator", str(CHART), "-n", OPERATOR_NS, "--create-namespace", kubeconfig,
             *crd_flags(real_plane))  # fmt: skip
        try:
            real_plane.kubectl(
                "rollout",
                "status",
                "-n",
                OPERATOR_NS,
                "deployment/dask-operator",
                "--timeout=180s",
                timeout=200,
            )
            print(
                f"operator (2 pods from the Dockerfile image) available {time.monotonic() - t0:.1f} s after helm install"
            )
            yield real_plane
        finally:
            helm("uninstall", "dask-operator", "-n", OPERATOR_NS, kubeconfig, check=False)


def operator_pods(kp: KubePlane) -> list[JSON]:
    out = kp.kubectl(
        "get", "pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/name=dask-operator", "-o", "json"
    )
    return [p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]


def test_the_dockerfile_image_runs_as_uid_1000_with_a_read_only_root(operator: KubePlane) -> None:
    pods = operator_pods(operator)
    assert len(pods) == 2
    image = pods[0]["spec"]["containers"][0]["image"]
    assert image.startswith("ghcr.io/dask-operator/dask-operator:")
    name = pods[0]["metadata"]["name"]
    assert operator.kubectl("exec", "-n", OPERATOR_NS, name, "--", "id", "-u").stdout.strip() == "1000"
    touch = operator.kubectl("exec", "-n", OPERATOR_NS, name, "--", "touch", "/probe", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr
    # figures for the README: the image's size, and its start to /readyz (the pod's Ready condition)
    for pod in pods:
        started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
        ready = condition(pod, "Ready")["lastTransitionTime"]
        seconds = datetime.fromisoformat(ready).timestamp() - datetime.fromisoformat(started).timestamp()
        print(
            f"{pod['metadata']['name']}: container start -> Ready (/readyz) {seconds:.0f} s (1 s resolution)"
        )
    tarballs = os.environ.get("DASK_OPERATOR_IMAGES")
    if tarballs:
        size = (Path(tarballs) / "dask-operator.tar").stat().st_size
        print(f"the operator image: {size / 2**20:.0f} MiB uncompressed")


def test_a_daskcluster_computes_and_scales_down_without_losing_results(operator: KubePlane) -> None:
    kp = operator
    ns = f"realnode-smoke-{int(time.time())}"
    kp.kubectl("create", "namespace", ns)
    try:
        manifest = cluster_manifest("smoke", 2)  # images with imagePullPolicy IfNotPresent
        kp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
        t0 = time.monotonic()
        wait_running(kp, ns, "smoke", timeout=180)
        # Running means what the reference's phase means: the scheduler Pod and Service exist. On a real node
        # the image may still be starting: the client connects once the cluster says its scheduler is Ready.
        wait_for(lambda: condition(get(kp, ns, "daskcluster", "smoke"), "Ready").get("status") == "True",
                 timeout=180, interval=1, message="the cluster Ready")  # fmt: skip
        with dask_client(kp, ns, "smoke") as client:
            wait_workers(client, 2, timeout=120)
            print(f"DaskCluster Running with 2 workers {time.monotonic() - t0:.1f} s after apply")
            futures = client.map(lambda x: x * x, range(100), pure=False)
            assert sum(client.gather(futures)) == sum(x * x for x in range(100))
            holders = {w for ws in client.who_has(futures).values() for w in ws}
            assert len(holders) == 2, "results should be spread over both workers before the scale-down"
            kp.kubectl("scale", "-n", ns, "daskcluster", "smoke", "--replicas=1")
            wait_for(lambda: len(worker_pods(kp, ns, "smoke-default")) == 1, timeout=120, interval=0.5,
                     message="one worker pod left")  # fmt: skip
            wait_workers(client, 1, timeout=60)
            lost = [f.key for f in futures if f.status != "finished"]
            assert not lost, f"{len(lost)} results lost in the scale-down"
            assert sum(client.gather(futures)) == sum(x * x for x in range(100))
    finally:
        kp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def leader(kp: KubePlane) -> str | None:
    lease = get(kp, OPERATOR_NS, "lease", "dask-operator")
    holder = ((lease or {}).get("spec") or {}).get("holderIdentity") or ""
    return holder.split("_", 1)[0] or None


def test_deleting_the_leaders_pod_hands_over_and_prometheus_sees_both_pods(
    operator: KubePlane, tmp_path: Path
) -> None:
    kp = operator
    prom = start_prometheus(tmp_path, scrape_configs(kp.kubeconfig))
    ns = f"realnode-handover-{int(time.time())}"
    kp.kubectl("create", "namespace", ns)
    try:
        wait_for(lambda: prom.up("dask-operator") == 2, timeout=120, interval=1,
                 message="Prometheus scraping both operator pods")  # fmt: skip

        def leading() -> set[str]:
            rows = prom.query('leader_election_master_status{job="dask-operator"} == 1')
            return {r["metric"].get("pod", "") for r in rows}

        first = wait_for(lambda: leader(kp), timeout=60, interval=1, message="a leader")
        wait_for(lambda: leading() == {first}, timeout=60, interval=1, message=f"Prometheus: {first} leads")
        t0 = time.monotonic()
        kp.kubectl("delete", "pod", "-n", OPERATOR_NS, first, "--wait=false")
        second = wait_for(lambda: (x := leader(kp)) not in (None, first) and x, timeout=120, interval=0.5,
                          message="the Lease held by the other pod")  # fmt: skip
        handed = time.monotonic() - t0
        # the new leader reconciles: a new cluster comes up
        kp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(cluster_manifest("after", 1)))
        wait_running(kp, ns, "after", timeout=180)
        print(f"leader pod deleted: Lease to {second} after {handed:.1f} s; DaskCluster Running "
              f"{time.monotonic() - t0:.1f} s after the delete")  # fmt: skip
        wait_for(lambda: second in leading(), timeout=60, interval=1, message=f"Prometheus: {second} leads")
        # the Deployment replaces the deleted pod; Prometheus discovers and scrapes it too
        wait_for(lambda: len(operator_pods(kp)) == 2 and prom.up("dask-operator") == 2, timeout=180,
                 interval=1, message="two operator pods again, both scraped")  # fmt: skip
    finally:
        prom.proc.terminate()
        prom.proc.wait(10)
        kp.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_a_drain_of_a_workers_node_retires_it_first_on_the_real_kubelet(operator: KubePlane) -> None:
    """`kubectl drain` of the node of one of two workers: the real kubelet runs the worker's preStop hook,
    which has the scheduler move the worker's keys to the other worker before SIGTERM; the operator replaces
    the worker on the other node. Nothing is recomputed or lost."""
    kp = operator
    assert kp.plane is not None
    nodes = list(kp.plane.node_names)
    ns = f"realnode-drain-{int(time.time())}"
    kp.kubectl("create", "namespace", ns)
    manifest = cluster_manifest("drained", 2)
    manifest["spec"]["scheduler"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": nodes[0]}
    spread = {"labelSelector": {"matchLabels": {"dask.org/workergroup-name": "drained-default"}},
              "topologyKey": "kubernetes.io/hostname"}  # fmt: skip
    manifest["spec"]["worker"]["spec"]["affinity"] = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": spread}]
        }
    }
    victim = nodes[1]
    try:
        kp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
        wait_for(lambda: condition(get(kp, ns, "daskcluster", "drained"), "Ready").get("status") == "True",
                 timeout=180, interval=1, message="the cluster Ready")  # fmt: skip
        placed = {
            p["metadata"]["name"]: p["spec"].get("nodeName") for p in worker_pods(kp, ns, "drained-default")
        }
        assert victim in placed.values(), f"no worker on {victim}: {placed}"
        with dask_client(kp, ns, "drained") as client:
            wait_workers(client, set(placed), timeout=120)
            held = hold_data(client)
            t0 = time.monotonic()
            kp.kubectl("drain", victim, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=120s",
                       timeout=150)  # fmt: skip

            def replaced() -> set[str] | None:
                now = {p["metadata"]["name"]: p["spec"].get("nodeName") for p in worker_pods(kp, ns, "drained-default")
                       if not p["metadata"].get("deletionTimestamp")}  # fmt: skip
                return set(now) if len(now) == 2 and victim not in now.values() else None

            after = wait_for(replaced, timeout=180, interval=0.5, message=f"2 workers off {victim}")
            wait_workers(client, after, timeout=120)
            cost = data_cost(client, held)
            print(
                f"drain of {victim}: 2 workers again {time.monotonic() - t0:.1f} s after the drain began; {cost.line()}"
            )
            assert not cost.recomputed and not cost.scattered_lost and cost.erred == 0, cost
        hooks = [
            e
            for e in (get(kp, ns, "events") or {}).get("items", [])
            if e.get("reason") == "FailedPreStopHook"
        ]
        assert not hooks, [e.get("message") for e in hooks]
    finally:
        kp.kubectl("uncordon", victim, check=False)
        kp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
