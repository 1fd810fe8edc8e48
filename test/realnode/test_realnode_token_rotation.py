"""The operator outlives its service-account token on a real kubelet: the token is rotated under it and the
first one expires, and the operator still reconciles, with no request refused and no restart.

The chart's pod mounts the default `kube-api-access` volume, whose token the API server makes valid for a
year (`--service-account-extend-token-expiration`), so nothing would expire within a test. Here the
Deployment mounts a projected token of the shortest lifetime the API allows (600 s) at the same path. The
upstream kubelet writes a new token once 80% of the old one's lifetime has passed; the operator reads its
token file again at most every minute (dask_operator/runtime/credentials.py). The test waits until the
first token has expired, then asks for a new DaskCluster. About 11 minutes.
"""

from __future__ import annotations

import base64
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fixtures import KubePlane
from support.helm import CHART, Helm, crd_flags, helm_binary
from support.operator import cluster_manifest, wait_running
from support.wait import wait_for

pytestmark = pytest.mark.timeout(1200)

OPERATOR_NS = "dask-operator"
TOKEN_SECONDS = 600  # the API's minimum expirationSeconds for a projected token
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def short_token_patch() -> dict[str, Any]:
    """One replica whose token at the usual path lives TOKEN_SECONDS (with the CA and namespace beside it)."""
    volume = {
        "name": "short-lived-token",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_SECONDS}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                    }
                },
            ]
        },
    }
    mount = {"name": "short-lived-token", "mountPath": SA_DIR, "readOnly": True}
    return {
        "spec": {
            "replicas": 1,
            "template": {
                "spec": {
                    "automountServiceAccountToken": False,
                    "volumes": [volume],
                    "containers": [{"name": "operator", "volumeMounts": [mount]}],
                }
            },
        }
    }


@pytest.fixture(scope="module")
def operator(real_plane: KubePlane) -> Iterator[KubePlane]:
    with tempfile.TemporaryDirectory(prefix="helm-") as home:
        helm = Helm(helm_binary(), Path(home))
        kubeconfig = f"--kubeconfig={real_plane.kubeconfig}"
        helm("install", "dask-operator", str(CHART), "-n", OPERATOR_NS, "--create-namespace", kubeconfig,
             *crd_flags(real_plane))  # fmt: skip
        try:
            patch = json.dumps(short_token_patch())
            real_plane.kubectl(
                "patch", "-n", OPERATOR_NS, "deployment/dask-operator", "--type=strategic", "-p", patch
            )
            real_plane.kubectl("rollout", "status", "-n", OPERATOR_NS, "deployment/dask-operator",
                               "--timeout=180s", timeout=200)  # fmt: skip
            yield real_plane
        finally:
            helm("uninstall", "dask-operator", "-n", OPERATOR_NS, kubeconfig, check=False)


def the_pod(kp: KubePlane) -> dict[str, Any]:
    out = kp.kubectl(
        "get", "pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/name=dask-operator", "-o", "json"
    )
    pods = [p for p in json.loads(out.stdout)["items"] if not p["metadata"].get("deletionTimestamp")]
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return pods[0]


def token_claims(kp: KubePlane, pod: str) -> dict[str, Any]:
    token = kp.kubectl("exec", "-n", OPERATOR_NS, pod, "--", "cat", f"{SA_DIR}/token").stdout.strip()
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_the_operator_reconciles_after_its_first_token_expired(operator: KubePlane) -> None:
    kp = operator
    pod = the_pod(kp)
    name = pod["metadata"]["name"]
    first = token_claims(kp, name)
    assert first["exp"] - first["iat"] == TOKEN_SECONDS, first  # not extended: this token really expires
    rotated = wait_for(
        lambda: (c := token_claims(kp, name))["iat"] != first["iat"] and c,
        timeout=TOKEN_SECONDS,
        interval=10,
        message="the kubelet writing a new token",
    )
    print(f"token rotated {rotated['iat'] - first['iat']} s after it was issued (lifetime {TOKEN_SECONDS} s)")
    wait_for(lambda: time.time() > first["exp"] + 5, timeout=TOKEN_SECONDS, interval=5,
             message="the first token expired")  # fmt: skip

    ns = f"token-{int(time.time())}"
    kp.kubectl("create", "namespace", ns)
    try:
        kp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(cluster_manifest("after-expiry", 1)))
        t0 = time.monotonic()
        wait_running(kp, ns, "after-expiry", timeout=120)
        print(f"DaskCluster Running {time.monotonic() - t0:.1f} s after apply, past the first token's expiry")
    finally:
        kp.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    after = the_pod(kp)
    assert after["metadata"]["name"] == name
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    log = kp.kubectl("logs", "-n", OPERATOR_NS, name).stdout
    refused = [line for line in log.splitlines() if "401" in line or "Unauthorized" in line]
    assert not refused, refused[:5]
