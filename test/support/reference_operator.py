"""The kopf-based reference operator (dask-kubernetes, from PyPI) for the benchmarks that compare with it.

Two ways to run it, one install:
- out of the cluster (`reference_cmd`), as test/bench/bench_vs_kopf.py does with simulated pods, where it
  never has to reach a scheduler;
- as a pod on the process node (`reference_pod`), for test/bench/bench_autoscale.py, where its DaskAutoscaler
  must reach real schedulers. Its handlers ask a scheduler through the Service's DNS name `<svc>.<ns>` and,
  when that does not resolve, start a port-forward for every question (after ten seconds of retries). In a
  pod the name resolves, as it does where the reference is meant to run: the process node gives each pod the
  cluster's DNS (search path `<ns>.svc.cluster.local ...`) and serves ClusterIPs. So the reference runs as its
  own Helm chart deploys it, in-cluster, under a ServiceAccount; nothing in its code or in the host's resolver
  is changed. The pod's image name is recorded, not pulled (the process node runs `command` from the host);
  the command is the `kopf` of the cached virtualenv below.

Invariant: the virtualenv lives outside the repo (~/.cache/dask-operator/kopf-venv, `pip install
dask-kubernetes`; DASK_KUBERNETES_VENV overrides), created on first use and reused; a failed install skips the
benchmark instead of failing it. Only one operator reconciles the Dask kinds at a time: the caller stops ours
before the reference runs, and gives each its own namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
VENV = Path(
    os.environ.get("DASK_KUBERNETES_VENV", str(Path.home() / ".cache" / "dask-operator" / "kopf-venv"))
)
REFERENCE_MODULE = "dask_kubernetes.operator.controller"
REFERENCE_NO_STATUS = ("daskclusters", "daskworkergroups")
REFERENCE_POD = "dask-kubernetes-operator"
REFERENCE_IMAGE = "ghcr.io/dask/dask-kubernetes-operator"  # recorded only: the process node runs `command`


def reference_venv() -> Path:
    """The cached venv with dask-kubernetes; created when missing or left half-built. Skips on failure."""
    marker = VENV / ".installed"
    if marker.exists() and (VENV / "bin" / "kopf").exists():
        return VENV
    shutil.rmtree(VENV, ignore_errors=True)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    steps = (
        ["python3", "-m", "venv", str(VENV)],
        [str(VENV / "bin" / "pip"), "install", "--quiet", "dask-kubernetes"],
    )
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            shutil.rmtree(VENV, ignore_errors=True)
            pytest.skip(f"reference operator not installable: {' '.join(cmd)} exited {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout)[-1500:]}")  # fmt: skip
    check = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", f"import {REFERENCE_MODULE}"], capture_output=True, text=True
    )
    if check.returncode != 0:
        pytest.skip(f"reference operator does not import ({REFERENCE_MODULE}): {check.stderr[-1500:]}")
    marker.write_text("ok\n")
    return VENV


def reference_versions(venv: Path) -> str:
    code = "import importlib.metadata as m; print(*(f'{p}=={m.version(p)}' for p in ('dask-kubernetes', 'kopf', 'kr8s')))"
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    return proc.stdout.strip() or proc.stderr.strip()[-200:]


def reference_cmd(venv: Path, namespace: str = "{ns}") -> list[str]:
    """`kopf run` of the reference, watching one namespace, without peering."""
    return [
        str(venv / "bin" / "kopf"),
        "run",
        "--standalone",
        f"--namespace={namespace}",
        "-m",
        REFERENCE_MODULE,
    ]


# The reference's own CRDs declare no status subresource for DaskCluster and DaskWorkerGroup, and it
# relies on that: it sets phase Running with a plain PATCH of the object (kr8s), which the API server
# drops when /status is a subresource, leaving every cluster Pending. So during its run our CRDs go
# without that subresource (same group, kinds and schema otherwise), and get it back for ours.
def status_subresource(kube_plane: Any, enabled: bool) -> None:
    if enabled:
        kube_plane.kubectl(
            "apply", "--server-side", "--force-conflicts", "-k", str(REPO / "manifests" / "crd")
        )
    else:
        for plural in REFERENCE_NO_STATUS:
            kube_plane.kubectl("patch", f"crd/{plural}.kubernetes.dask.org", "--type=json", "-p",
                               '[{"op": "remove", "path": "/spec/versions/0/subresources/status"}]')  # fmt: skip
    for plural in REFERENCE_NO_STATUS:
        wait_for(
            lambda plural=plural: enabled == bool(kube_plane.kubectl(
                "get", f"crd/{plural}.kubernetes.dask.org", "-o", "jsonpath={.spec.versions[0].subresources.status}"
            ).stdout.strip()),
            timeout=30, message=f"{plural} status subresource {enabled}",
        )  # fmt: skip
    time.sleep(5)  # the API server rebuilds its handler for the CRD asynchronously; nothing reports it


def reference_pod(venv: Path, namespace: str) -> list[dict[str, Any]]:
    """The reference in-cluster: a ServiceAccount allowed everything in its namespace and nothing outside it
    (it touches the Dask kinds, Pods, Services, Deployments and Events there), and the pod running `kopf run`."""
    name = REFERENCE_POD
    everything = [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name},
            "rules": everything,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "serviceAccountName": name,
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "operator",
                        "image": REFERENCE_IMAGE,
                        "command": reference_cmd(venv, namespace),
                        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
                    }
                ],
            },
        },
    ]
