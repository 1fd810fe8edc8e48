"""The JupyterLab Dask panel (dask-labextension's server extension) with `KubeCluster` as its cluster
factory, set by configuration only (a Dask config file, as the README shows): a real `jupyter server`
process, driven over HTTP the way the panel's buttons drive it (PUT "New", GET the list, PATCH "Scale" and
"Adaptive", DELETE "Shut down"), creates, scales, makes adaptive and closes a DaskCluster that the operator
runs on the local plane.

The panel's server runs on this machine, outside the cluster, with the plane's kubeconfig, as a user's
laptop would. Waits have deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from support.operator import OperatorProcess, free_port, get, worker_pods
from support.user_shell import BIN
from support.wait import wait_for

pytestmark = pytest.mark.timeout(300)


def panel_config(namespace: str) -> dict[str, Any]:
    """The README's configuration, plus the test's namespace and a short start-up deadline."""
    return {
        "labextension": {
            "factory": {
                "module": "dask_operator",
                "class": "KubeCluster",
                "args": [],
                "kwargs": {"namespace": namespace, "n_workers": 1, "resource_timeout": 120},
            },
            "default": {"workers": 1},
        }
    }


class JupyterServer:
    def __init__(self, url: str, token: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.process, self.log = url, process, log
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"token {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, f"{self.url}{path}", timeout=180, **kwargs)


@pytest.fixture
def jupyter_server(plane: Any, namespace: str, tmp_path: Path) -> Iterator[JupyterServer]:
    config = tmp_path / "dask"
    config.mkdir()
    (config / "labextension.yaml").write_text(yaml.safe_dump(panel_config(namespace)))
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "KUBECONFIG": str(plane.kubeconfig),
        "DASK_CONFIG": str(config),
        "JUPYTER_TOKEN": token,
        # the server's own state in the test's directory, never the user's
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
    }
    log = tmp_path / "jupyter.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "jupyter"), "server", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
             "--ServerApp.allow_root=True", f"--ServerApp.root_dir={tmp_path}"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = JupyterServer(f"http://127.0.0.1:{port}", token, process, log)

    def up() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            return server.call("GET", "/api/status").status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=60, interval=0.3, message="jupyter server answering")
    try:
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        print(f"--- jupyter server log tail ---\n{log.read_text(errors='replace')[-3000:]}")


def daskclusters(plane: Any, namespace: str) -> list[str]:
    listed = get(plane, namespace, "daskclusters") or {}
    return sorted(c["metadata"]["name"] for c in listed.get("items", []))


def test_the_panel_creates_scales_adapts_and_closes_a_daskcluster(
    plane: Any, namespace: str, dask_operator: OperatorProcess, jupyter_server: JupyterServer
) -> None:
    panel = jupyter_server
    assert panel.call("GET", "/dask/clusters").json() == []

    created = panel.call("PUT", "/dask/clusters")  # "New"
    assert created.status_code == 200, created.text
    model = created.json()
    (name,) = daskclusters(plane, namespace)
    assert model["name"] == "KubeCluster 1" and model["workers"] in (0, 1), model
    assert model["scheduler_address"].endswith(":8786") and model["dashboard_link"].endswith("/status")

    listed = panel.call("GET", "/dask/clusters").json()
    assert [c["id"] for c in listed] == [model["id"]]

    scaled = panel.call("PATCH", f"/dask/clusters/{model['id']}", json={"workers": 2})  # "Scale"
    assert scaled.status_code == 200, scaled.text
    group = get(plane, namespace, "daskworkergroup", f"{name}-default")
    assert group["spec"]["worker"]["replicas"] == 2

    def two_workers() -> bool:
        return bool(panel.call("GET", f"/dask/clusters/{model['id']}").json()["workers"] == 2)

    wait_for(two_workers, timeout=120, interval=0.5, message="the panel shows 2 workers")
    assert len(worker_pods(plane, namespace, f"{name}-default")) == 2

    adapted = panel.call(
        "PATCH", f"/dask/clusters/{model['id']}", json={"adapt": {"minimum": 1, "maximum": 3}}
    )
    assert adapted.status_code == 200 and adapted.json()["adapt"] == {"minimum": 1, "maximum": 3}, (
        adapted.text
    )
    autoscaler = wait_for(lambda: get(plane, namespace, "daskautoscaler", name), timeout=30, interval=0.3,
                          message="the panel's Adaptive made a DaskAutoscaler")  # fmt: skip
    assert (autoscaler["spec"]["minimum"], autoscaler["spec"]["maximum"]) == (1, 3)

    closed = panel.call("DELETE", f"/dask/clusters/{model['id']}")  # "Shut down"
    assert closed.status_code == 204, closed.text
    assert daskclusters(plane, namespace) == []
    assert panel.call("GET", "/dask/clusters").json() == []
