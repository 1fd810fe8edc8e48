"""The dask-cluster chart (manifests/helm/dask-cluster) rendered by the real helm: lint, what each value
writes, the Jupyter pod's connection settings, and values.schema.json refusing misspelt or mistyped values.
Installed, upgraded and uninstalled on a real plane with real Dask and Jupyter in
test/e2e/test_dask_cluster_chart.py.
"""

from __future__ import annotations

import configparser
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.helm import CLUSTER_CHART, Helm, helm_binary

REPO = Path(__file__).resolve().parents[2]
Obj = dict[str, Any]


class ChartHelm(Helm):
    def template(self, *args: str, release: str = "demo") -> list[Obj]:
        out = self("template", release, str(CLUSTER_CHART), "--namespace", "team", *args).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def values_file(self, values: Obj) -> list[Obj]:
        path = CLUSTER_CHART.parent / f".values-{uuid.uuid4().hex}.yaml"
        path.write_text(yaml.safe_dump(values))
        try:
            return self.template("-f", str(path))
        finally:
            path.unlink()


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> ChartHelm:
    return ChartHelm(helm_binary(), tmp_path_factory.mktemp("helm-home"))


def one(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    (found,) = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    return found


def env_of(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def test_chart_version_follows_the_package() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    chart = yaml.safe_load((CLUSTER_CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == cfg["metadata"]["version"]


def test_helm_lint_passes_for_the_defaults_and_each_switch(helm: ChartHelm) -> None:
    for values in (
        (),
        ("--set", "jupyter.enabled=false"),
        ("--set", "autoscaler.enabled=true"),
        ("--set", "additional_worker_groups[0].name=gpu", "--set", "additional_worker_groups[0].replicas=1"),
        ("--set", "jupyter.serviceAccount.create=false", "--set", "jupyter.rbac.create=false"),
    ):
        out = helm("lint", "--strict", str(CLUSTER_CHART), *values)
        assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout, out.stdout


def test_defaults_a_cluster_of_three_workers_and_a_notebook_that_connects_to_it(helm: ChartHelm) -> None:
    rendered = helm.template()
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in rendered)
    assert kinds == [
        ("DaskCluster", "demo-dask-cluster"),
        ("Deployment", "demo-dask-cluster-jupyter"),
        ("Role", "demo-dask-cluster-jupyter"),
        ("RoleBinding", "demo-dask-cluster-jupyter"),
        ("Secret", "demo-dask-cluster-jupyter"),
        ("Service", "demo-dask-cluster-jupyter"),
        ("ServiceAccount", "demo-dask-cluster-jupyter"),
    ]
    cluster = one(rendered, "DaskCluster")
    assert cluster["spec"]["worker"]["replicas"] == 3
    (worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    assert worker["args"][:4] == ["dask", "worker", "--name", "$(DASK_WORKER_NAME)"]
    (scheduler,) = cluster["spec"]["scheduler"]["spec"]["containers"]
    assert scheduler["image"] == worker["image"] == "ghcr.io/dask/dask:latest"
    (jupyter,) = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = env_of(jupyter)
    host = "demo-dask-cluster-scheduler.team.svc.cluster.local"
    assert env["DASK_SCHEDULER_ADDRESS"] == f"tcp://{host}:8786"
    assert env["DASK_DISTRIBUTED__DASHBOARD__LINK"] == "/proxy/{host}:{port}/status"
    assert env["JUPYTER_TOKEN"] == {"secretKeyRef": {"name": "demo-dask-cluster-jupyter", "key": "token"}}
    assert f"--ServerProxy.host_allowlist=['localhost', '127.0.0.1', '{host}']" in jupyter["args"]
    assert jupyter["image"] == "ghcr.io/dask/dask-notebook:latest"
    assert len(one(rendered, "Secret")["data"]["token"]) >= 40  # 32 random characters, base64


def test_values_a_classic_chart_user_sets(helm: ChartHelm) -> None:
    rendered = helm.values_file(
        {
            "scheduler": {"image": {"repository": "example/dask", "tag": "2026.1", "pullSecrets": [{"name": "regcred"}]},
                          "extraArgs": ["--idle-timeout", "3600"], "serviceType": "LoadBalancer",
                          "resources": {"limits": {"memory": "2Gi"}}},
            "worker": {"replicas": 5, "image": {"repository": "example/dask", "tag": 2026.1},
                       "extraArgs": ["--nthreads", "2"], "env": [{"name": "EXTRA_PIP_PACKAGES", "value": "s3fs"}],
                       "resources": {"limits": {"cpu": "2"}}, "nodeSelector": {"pool": "dask"},
                       "tolerations": [{"key": "dask", "operator": "Exists"}],
                       "mounts": {"volumes": [{"name": "data", "emptyDir": {}}],
                                  "volumeMounts": [{"name": "data", "mountPath": "/data"}]}},
            "additional_worker_groups": [{"name": "highmem", "replicas": 2,
                                          "resources": {"limits": {"memory": "16Gi"}}}],
            "jupyter": {"servicePort": 8080, "token": "fixed", "env": [{"name": "A", "value": "b"}]},
            "idleTimeout": 600,
        }
    )  # fmt: skip
    cluster = one(rendered, "DaskCluster")
    assert cluster["spec"]["idleTimeout"] == 600
    scheduler_pod = cluster["spec"]["scheduler"]["spec"]
    assert scheduler_pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert scheduler_pod["containers"][0]["image"] == "example/dask:2026.1"
    assert scheduler_pod["containers"][0]["args"][-2:] == ["--idle-timeout", "3600"]
    assert cluster["spec"]["scheduler"]["service"]["type"] == "LoadBalancer"
    worker = cluster["spec"]["worker"]
    assert worker["replicas"] == 5
    pod = worker["spec"]
    assert pod["nodeSelector"] == {"pool": "dask"} and pod["volumes"] == [{"name": "data", "emptyDir": {}}]
    (container,) = pod["containers"]
    assert container["image"] == "example/dask:2026.1" and container["args"][-2:] == ["--nthreads", "2"]
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    group = one(rendered, "DaskWorkerGroup")
    assert group["metadata"]["name"] == "demo-dask-cluster-highmem"
    assert group["spec"]["cluster"] == "demo-dask-cluster"
    assert group["spec"]["worker"]["replicas"] == 2
    (extra,) = group["spec"]["worker"]["spec"]["containers"]
    # an extra group takes the default group's values and overrides only what it names
    assert extra["resources"] == {"limits": {"memory": "16Gi", "cpu": "2"}}
    assert extra["args"] == container["args"] and group["spec"]["worker"]["spec"]["nodeSelector"] == {
        "pool": "dask"
    }
    service = one(rendered, "Service")
    assert service["spec"]["ports"][0]["port"] == 8080
    secret = one(rendered, "Secret")
    assert secret["data"]["token"] == "Zml4ZWQ="  # "fixed"
    assert env_of(one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0])["A"] == "b"


def test_an_autoscaler_drives_the_size_and_jupyter_can_be_left_out(helm: ChartHelm) -> None:
    rendered = helm.template("--set", "autoscaler.enabled=true", "--set", "autoscaler.maximum=6",
                             "--set", "jupyter.enabled=false")  # fmt: skip
    assert sorted(o["kind"] for o in rendered) == ["DaskAutoscaler", "DaskCluster"]
    autoscaler = one(rendered, "DaskAutoscaler")
    assert autoscaler["spec"] == {"cluster": "demo-dask-cluster", "minimum": 1, "maximum": 6}
    # the autoscaler owns the size, so the chart does not write it (an upgrade would fight the autoscaler)
    assert "replicas" not in one(rendered, "DaskCluster")["spec"]["worker"]


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        ("workers.replicas=3", "workers"),
        ("worker.replicas=-1", "/worker/replicas"),
        ("jupyter.enabled=maybe", "/jupyter/enabled"),
        ("scheduler.serviceType=Internal", "/scheduler/serviceType"),
        ("additional_worker_groups[0].replicas=2", "name"),
        ("additional_worker_groups[0].name=Bad_Name", "/additional_worker_groups/0/name"),
    ],
)
def test_bad_values_are_refused_with_where_they_are(helm: ChartHelm, flag: str, says: str) -> None:
    out = helm("template", "x", str(CLUSTER_CHART), "--set", flag, check=False)
    assert out.returncode != 0 and says in out.stderr, out.stderr
