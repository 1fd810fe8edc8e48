"""manifests/ applies to a real API server, and its RBAC is all the operator needs.

The operator runs as a real subprocess with a ServiceAccount token (not the admin certificate), so any
permission the manifests forgot shows up as a 403 in its log and a cluster that never converges. Pods
are simulated by the process node (annotation `localkube/simulated`): these tests are about permissions,
not Dask.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.operator import OperatorProcess
from support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
OPERATOR_NAMESPACE = "dask-operator"
SIMULATED = {"localkube/simulated": "true"}


def kustomize(kube_plane: Any, path: Path) -> list[dict[str, Any]]:
    out = kube_plane.kubectl("kustomize", str(path)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def apply_objects(kube_plane: Any, objects: list[dict[str, Any]], *extra: str) -> None:
    body = yaml.safe_dump_all(objects)
    kube_plane.kubectl("apply", "--server-side", "--force-conflicts", *extra, "-f", "-", input=body)


def crds_established(kube_plane: Any) -> bool:
    out = kube_plane.kubectl("get", "crd", "-o", "json", check=False)
    if out.returncode != 0:
        return False
    dask = [c for c in json.loads(out.stdout)["items"] if c["spec"]["group"] == "kubernetes.dask.org"]
    return len(dask) == 4 and all(
        any(
            c["type"] == "Established" and c["status"] == "True"
            for c in crd.get("status", {}).get("conditions", [])
        )
        for crd in dask
    )


@pytest.fixture(scope="module")
def installed(kube_plane: Any) -> Any:
    """`kubectl apply -k manifests/` minus the operator Deployment (the operator runs on the host here)."""
    if kube_plane.backend == "local" and not kube_plane.has_node:
        pytest.skip("needs the process node of the local control plane")
    objects = kustomize(kube_plane, MANIFESTS)
    apply_objects(kube_plane, [o for o in objects if o["kind"] == "Namespace"])
    apply_objects(kube_plane, [o for o in objects if o["kind"] != "Deployment"])
    wait_for(lambda: crds_established(kube_plane), timeout=60, message="the four Dask CRDs Established")
    return kube_plane


def test_every_manifest_is_accepted_by_the_api_server(installed: Any) -> None:
    objects = kustomize(installed, MANIFESTS)
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Namespace",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    # The Deployment too, validated by the server without running it.
    apply_objects(installed, objects, "--dry-run=server")
    namespaced = kustomize(installed, MANIFESTS / "rbac" / "namespaced")
    assert {o["kind"] for o in namespaced} == {"Role", "RoleBinding"}
    apply_objects(installed, namespaced, "--dry-run=server")


def test_grafana_dashboard_builds_into_a_configmap(installed: Any) -> None:
    (configmap,) = kustomize(installed, MANIFESTS / "grafana")
    assert configmap["kind"] == "ConfigMap"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["dask-operator.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert any("controller_runtime_reconcile_total" in e for e in exprs)
    assert any("dask_operator_workers_ready" in e for e in exprs)


# -- running the operator on ServiceAccount credentials -----------------------------------------------------


def token_kubeconfig(kube_plane: Any, namespace: str, service_account: str, path: Path) -> Path:
    token = kube_plane.kubectl(
        "create", "token", service_account, "-n", namespace, "--duration=1h"
    ).stdout.strip()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "plane",
                "cluster": {"server": kube_plane.server, "certificate-authority": str(kube_plane.ca_file)},
            }
        ],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "plane", "user": service_account}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def run_operator(installed: Any, tmp_path: Path) -> Iterator[Any]:
    """Start `dask-operator run` on given credentials and scope; returns its log path."""
    started: list[OperatorProcess] = []

    def start(kubeconfig: Path, namespace: str | None, *args: str) -> Path:
        op = OperatorProcess(
            installed, namespace, tmp_path / "operator.log", kubeconfig=kubeconfig, extra_args=args
        )
        started.append(op.start())
        return op.log_path

    yield start
    for op in started:
        op.stop()


def simulated_cluster(name: str) -> dict[str, Any]:
    container = {"name": "c", "image": "ghcr.io/dask/dask:latest", "args": ["dask", "--version"]}
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name},
        "spec": {
            "worker": {
                "replicas": 2,
                "metadata": {"annotations": SIMULATED},
                "spec": {"containers": [container]},
            },
            "scheduler": {
                "metadata": {"annotations": SIMULATED},
                "spec": {
                    "containers": [
                        {
                            **container,
                            "ports": [
                                {"name": "tcp-comm", "containerPort": 8786},
                                {"name": "http-dashboard", "containerPort": 8787},
                            ],
                        }
                    ]
                },
                "service": {
                    "selector": {"dask.org/cluster-name": name, "dask.org/component": "scheduler"},
                    "ports": [
                        {"name": "tcp-comm", "port": 8786, "targetPort": "tcp-comm"},
                        {"name": "http-dashboard", "port": 8787, "targetPort": "http-dashboard"},
                    ],
                },
            },
        },
    }


def converged(kube_plane: Any, namespace: str, name: str) -> bool:
    out = kube_plane.kubectl("get", "daskcluster", name, "-n", namespace, "-o", "json", check=False)
    if out.returncode != 0 or json.loads(out.stdout).get("status", {}).get("phase") != "Running":
        return False
    pods = kube_plane.kubectl(
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        f"dask.org/cluster-name={name},dask.org/component=worker",
        "-o",
        "name",
    ).stdout.split()
    return len(pods) == 2


def assert_no_forbidden(log: Path) -> None:
    """No 403 in the operator's log but the admission refusals of namespaces being deleted: a cluster-wide
    operator also sees other tests' namespaces go away, and creating in those is refused whatever its RBAC."""
    denials = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if ("forbidden" in line.lower() or " 403" in line) and "because it is being terminated" not in line
    ]
    assert not denials, "\n".join(denials[-20:])


def test_cluster_rbac_is_all_the_operator_needs(
    installed: Any, namespace: str, run_operator: Any, tmp_path: Path
) -> None:
    kubeconfig = token_kubeconfig(installed, OPERATOR_NAMESPACE, "dask-operator", tmp_path / "sa.kubeconfig")
    log = run_operator(
        kubeconfig, None, "--leader-elect", f"--leader-election-namespace={OPERATOR_NAMESPACE}"
    )
    installed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(simulated_cluster("rbac")))
    wait_for(
        lambda: converged(installed, namespace, "rbac"), timeout=90, message="cluster Running with 2 workers"
    )
    assert_no_forbidden(log)


def namespaced_install(installed: Any, namespace: str) -> Path:
    """manifests/rbac/namespaced (and nothing else) bound in `namespace` to a new ServiceAccount; its
    kubeconfig. The Role gets no cluster-scoped permission at all."""
    account = "dask-operator-ns"
    installed.kubectl("create", "serviceaccount", account, "-n", namespace)
    rbac = kustomize(installed, MANIFESTS / "rbac" / "namespaced")
    for obj in rbac:
        obj["metadata"]["namespace"] = namespace
        obj["metadata"]["name"] = f"{obj['metadata']['name']}-{namespace}"[:63]
        if obj["kind"] == "RoleBinding":
            obj["roleRef"]["name"] = f"{obj['roleRef']['name']}-{namespace}"[:63]
            obj["subjects"] = [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]
    apply_objects(installed, rbac)
    can_list_everywhere = installed.kubectl(
        "auth", "can-i", "list", "pods", "--all-namespaces", f"--as=system:serviceaccount:{namespace}:{account}",
        check=False,
    )  # fmt: skip
    assert can_list_everywhere.stdout.strip() == "no"
    path = Path(installed.kubeconfig).parent / f"{namespace}-{account}.kubeconfig"
    return token_kubeconfig(installed, namespace, account, path)


def test_namespaced_rbac_is_enough_for_a_single_namespace_install_with_leader_election(
    installed: Any, namespace: str, run_operator: Any
) -> None:
    """`--namespace X --leader-elect` with only the namespaced Role: the Lease defaults to X, where the Role
    grants it, so the operator becomes leader and reconciles."""
    kubeconfig = namespaced_install(installed, namespace)
    log = run_operator(kubeconfig, namespace, "--leader-elect")
    installed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(simulated_cluster("solo")))
    wait_for(
        lambda: converged(installed, namespace, "solo"), timeout=90, message="cluster Running with 2 workers"
    )
    lease = json.loads(
        installed.kubectl("get", "lease", "dask-operator", "-n", namespace, "-o", "json").stdout
    )
    assert lease["spec"]["holderIdentity"]
    assert_no_forbidden(log)


def test_a_forbidden_lease_is_a_loud_error_and_a_failing_readyz(
    installed: Any, namespace: str, tmp_path: Path
) -> None:
    """The Lease asked for in a namespace the Role does not cover: the API server's 403 is logged as an
    error naming the Lease and what to grant, and /readyz fails with it (no silent standby forever)."""
    kubeconfig = namespaced_install(installed, namespace)
    op = OperatorProcess(installed, namespace, tmp_path / "operator.log", kubeconfig=kubeconfig,
                         extra_args=("--leader-elect", "--leader-election-namespace=default"))  # fmt: skip
    op.start(wait_ready=False)
    try:

        def failing() -> str | None:
            status, body = op.readyz()
            return body if status == 500 and "[-]leader-election-access failed" in body else None

        wait_for(failing, timeout=60, interval=0.5, message="/readyz failing")
        status, reason = op.readyz("leader-election-access")
        assert status == 500 and "forbidden" in reason and "default/dask-operator" in reason, reason
        wait_for(lambda: "leader election forbidden" in op.log_path.read_text(errors="replace"), timeout=30,
                 message="the error in the log")  # fmt: skip
        plain = re.sub(r"\x1b\[[0-9;]*m", "", op.tail(200)).splitlines()
        assert any(line.startswith("[error") and "leader election forbidden" in line for line in plain), plain
    finally:
        op.stop()


def test_the_tenant_network_policies_are_accepted_by_the_api_server(kube_plane: Any, namespace: str) -> None:
    """manifests/security/tenant-networkpolicy.yaml as a platform team applies it in a tenant namespace (what
    it selects and admits: test/unit/test_network_policy.py)."""
    path = MANIFESTS / "security" / "tenant-networkpolicy.yaml"
    kube_plane.kubectl("apply", "--server-side", "-n", namespace, "-f", str(path))
    names = kube_plane.kubectl("get", "networkpolicy", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(names) == [
        "networkpolicy.networking.k8s.io/dask-scheduler",
        "networkpolicy.networking.k8s.io/dask-worker",
    ]
