"""In-cluster API access from a pod on the process node (kubeplane.node.serviceaccount + volumes): the
projected ServiceAccount token, `ca.crt` and `namespace`, the KUBERNETES_SERVICE_* variables and the
`kubernetes.default` Service, so `load_incluster_config()` works with TLS verification, and RBAC
decides what the pod may do. Real API server, real processes.
"""

from __future__ import annotations

import base64
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from support.wait import wait_for

JSON = dict[str, Any]

CLIENT_SCRIPT = r"""
import json, os, socket
from kubernetes import client, config
config.load_incluster_config()
v1 = client.CoreV1Api()
ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
def status(call):
    try:
        call()
        return 200
    except client.ApiException as e:
        return e.status
print("RESULT " + json.dumps({
    "namespace": ns,
    "pods": sorted(p.metadata.name for p in v1.list_namespaced_pod(ns).items),
    "secrets": status(lambda: v1.list_namespaced_secret(ns)),
    "other_ns": status(lambda: v1.list_namespaced_pod("default")),
    "dns": socket.gethostbyname("kubernetes.default.svc"),
    "host": os.environ["KUBERNETES_SERVICE_HOST"],
}), flush=True)
"""

CHECK_NO_TOKEN = (
    'import os; print("RESULT " + __import__("json").dumps('
    '{"token": os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token")}), flush=True)'
)


@pytest.fixture
def kp(kube_plane: Any) -> Any:
    if not kube_plane.has_node:
        pytest.skip("needs the process node (local plane)")
    return kube_plane


def result_line(kp: Any, ns: str, name: str) -> JSON | None:
    out = kp.kubectl("logs", name, "-n", ns, check=False).stdout
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    return json.loads(line.removeprefix("RESULT ")) if line else None


def test_incluster_client_lists_pods_and_gets_403_beyond_its_role(kp: Any, namespace: str) -> None:
    ns = namespace
    manifest = f"""
    apiVersion: v1
    kind: ServiceAccount
    metadata: {{name: reader}}
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: Role
    metadata: {{name: pod-reader}}
    rules: [{{apiGroups: [""], resources: [pods], verbs: [get, list]}}]
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: RoleBinding
    metadata: {{name: reader-pods}}
    roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
    subjects: [{{kind: ServiceAccount, name: reader, namespace: {ns}}}]
    ---
    apiVersion: v1
    kind: ServiceAccount
    metadata: {{name: quiet}}
    automountServiceAccountToken: false
    ---
    apiVersion: v1
    kind: Pod
    metadata: {{name: client}}
    spec:
      serviceAccountName: reader
      restartPolicy: OnFailure
      containers:
      - {{name: c, image: python:3.11-slim, command: [python, -c, {json.dumps(CLIENT_SCRIPT)}]}}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {{name: no-token-sa}}
    spec:
      serviceAccountName: quiet
      restartPolicy: Never
      containers: [{{name: c, image: python:3.11-slim, command: [python, -c, {json.dumps(CHECK_NO_TOKEN)}]}}]
    ---
    apiVersion: v1
    kind: Pod
    metadata: {{name: no-token-pod}}
    spec:
      automountServiceAccountToken: false
      restartPolicy: Never
      containers: [{{name: c, image: python:3.11-slim, command: [python, -c, {json.dumps(CHECK_NO_TOKEN)}]}}]
    """
    kp.kubectl("apply", "-n", ns, "-f", "-", input=textwrap.dedent(manifest))
    got = wait_for(lambda: result_line(kp, ns, "client"), timeout=90, interval=0.5, message="client RESULT")
    service = json.loads(kp.kubectl("get", "service", "kubernetes", "-n", "default", "-o", "json").stdout)
    assert got["namespace"] == ns
    assert {"client", "no-token-sa", "no-token-pod"} <= set(got["pods"])
    assert got["secrets"] == 403 and got["other_ns"] == 403
    assert got["dns"] == got["host"] == service["spec"]["clusterIP"]
    for name in ("no-token-sa", "no-token-pod"):
        assert wait_for(lambda n=name: result_line(kp, ns, n), timeout=60, interval=0.5, message=name) == {
            "token": False
        }


def test_projected_token_is_requested_again_at_80_percent_of_its_lifetime(
    kp: Any, namespace: str, tmp_path: Path
) -> None:
    """PodVolumes.refresh against the real TokenRequest API with the clock moved forward, instead of
    waiting 48 minutes: the token is kept until 80% of its lifetime, then replaced atomically."""
    from kubeplane.node.kubeapi import KubeClient, load_connection
    from kubeplane.node.volumes import PodVolumes

    ns = namespace
    volume = {
        "name": "tok",
        "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]},
    }
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "holder", "annotations": {"localkube/simulated": "true"}},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["true"]}], "volumes": [volume]},
    }
    kp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))
    pod = json.loads(kp.kubectl("get", "pod", "holder", "-n", ns, "-o", "json").stdout)
    client = KubeClient(load_connection(str(kp.kubeconfig)))
    vols = PodVolumes(pod, tmp_path, client, {}, lambda _p: None, lambda _p: None)
    now = time.time()
    vols.setup(now)
    token_file = tmp_path / "volumes" / "tok" / "token"
    first = token_file.read_text()
    claims = jwt_claims(first)
    assert claims["kubernetes.io"]["pod"] == {"name": "holder", "uid": pod["metadata"]["uid"]}
    assert vols.next_refresh == pytest.approx(now + 60, abs=5)  # ConfigMap/Secret re-read first
    vols.refresh(now + 0.79 * 3600)
    assert token_file.read_text() == first
    vols.refresh(now + 0.81 * 3600)
    second = token_file.read_text()
    assert second != first and jwt_claims(second)["kubernetes.io"]["pod"]["name"] == "holder"


def jwt_claims(token: str) -> JSON:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
