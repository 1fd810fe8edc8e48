"""Real nodes (hack/kubeplane/realnode.py): pods run from the images built here by the upstream kubelet,
containerd and runc; logs, exec and port-forward go through the real kubelet; Services resolve through the
plane's DNS and route through kube-proxy's iptables rules, across nodes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from typing import Any

import pytest
from support.fixtures import KubePlane, _kubectl_binary, namespace_name
from support.operator import free_port
from support.wait import wait_for

DASK_IMAGE = "ghcr.io/dask/dask:latest"


@pytest.fixture
def ns(real_plane: KubePlane, request: pytest.FixtureRequest) -> str:
    name = namespace_name(request.node.name)
    real_plane.kubectl("create", "namespace", name)
    request.addfinalizer(lambda: real_plane.kubectl("delete", "namespace", name, "--wait=false", check=False))
    wait_for(
        lambda: (
            real_plane.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0
        ),
        timeout=30,
        message="default ServiceAccount",
    )
    return name


def pod(
    name: str, node: str | None, command: list[str], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {"name": "main", "image": DASK_IMAGE, "imagePullPolicy": "IfNotPresent", "args": command}
        ],
        "terminationGracePeriodSeconds": 2,
    }
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }


def apply(kp: KubePlane, ns: str, obj: dict[str, Any]) -> None:
    kp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj))


def wait_ready(kp: KubePlane, ns: str, name: str, timeout: float = 120) -> dict[str, Any]:
    kp.kubectl(
        "wait",
        "-n",
        ns,
        f"pod/{name}",
        "--for=condition=Ready",
        f"--timeout={int(timeout)}s",
        timeout=timeout + 10,
    )
    return dict(json.loads(kp.kubectl("get", "-n", ns, "pod", name, "-o", "json").stdout))


@pytest.mark.realnode_smoke
def test_a_pod_runs_from_the_dask_image_with_logs_exec_and_port_forward(
    real_plane: KubePlane, ns: str
) -> None:
    apply(real_plane, ns, pod("web", None, ["sh", "-c", "echo started; exec python -m http.server 8000"]))
    obj = wait_ready(real_plane, ns, "web")
    assert obj["status"]["podIP"].startswith("10.244.")
    assert wait_for(lambda: "started" in real_plane.kubectl("logs", "-n", ns, "web").stdout, timeout=30)
    out = real_plane.kubectl(
        "exec",
        "-n",
        ns,
        "web",
        "--",
        "python",
        "-c",
        "import dask, distributed; print(distributed.__version__)",
    )
    import distributed

    assert out.stdout.strip() == distributed.__version__
    port = free_port()
    forward = subprocess.Popen(
        [
            _kubectl_binary(),
            f"--kubeconfig={real_plane.kubeconfig}",
            "port-forward",
            "-n",
            ns,
            "pod/web",
            f"{port}:8000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = wait_for(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read(),
            timeout=30,
            ignore=(OSError,),
            message="HTTP through kubectl port-forward",
        )
        assert b"Directory listing" in body
    finally:
        forward.terminate()
        forward.wait(10)


def test_a_service_resolves_by_name_and_routes_across_nodes(real_plane: KubePlane, ns: str) -> None:
    nodes = json.loads(real_plane.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    names = [n["metadata"]["name"] for n in nodes]
    apply(
        real_plane, ns, pod("server", names[-1], ["python", "-m", "http.server", "8000"], {"app": "server"})
    )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "server"},
        "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8000}]},
    }
    apply(real_plane, ns, service)
    wait_ready(real_plane, ns, "server")
    fetch = (
        "import urllib.request, sys; "
        f"print(urllib.request.urlopen('http://server.{ns}.svc.cluster.local/', timeout=5).status)"
    )
    apply(real_plane, ns, pod("client", names[0], ["sleep", "3600"]))
    wait_ready(real_plane, ns, "client")

    def fetched() -> bool:
        out = real_plane.kubectl("exec", "-n", ns, "client", "--", "python", "-c", fetch, check=False)
        return out.stdout.strip() == "200"

    wait_for(fetched, timeout=60, interval=1, message="the Service by name from a pod on another node")
    # The host reaches the ClusterIP too (kube-proxy's OUTPUT rules): clients outside the cluster use it.
    cluster_ip = json.loads(real_plane.kubectl("get", "-n", ns, "service", "server", "-o", "json").stdout)[
        "spec"
    ]["clusterIP"]
    with socket.create_connection((cluster_ip, 80), timeout=5):
        pass
