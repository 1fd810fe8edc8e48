"""Spec builders match the reference client's output, and defaults match what the API server stores."""

from __future__ import annotations

from typing import Any

from dask_operator.api import v1


def test_make_worker_spec_defaults() -> None:
    worker = v1.make_worker_spec()
    assert worker["replicas"] == 3
    (container,) = worker["spec"]["containers"]
    assert container == {
        "name": "worker",
        "image": "ghcr.io/dask/dask:latest",
        "args": [
            "dask-worker",
            "--name",
            "$(DASK_WORKER_NAME)",
            "--dashboard",
            "--dashboard-address",
            "8788",
        ],
        "env": None,
        "resources": None,
        "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
    }


def test_make_worker_spec_env_dict_and_command_string() -> None:
    worker = v1.make_worker_spec(
        image="img:1",
        n_workers=5,
        env={"A": "1", "B": "2"},
        resources={"limits": {"cpu": "1"}},
        worker_command="dask worker --nthreads 2",
    )
    (container,) = worker["spec"]["containers"]
    assert worker["replicas"] == 5
    assert container["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert container["resources"] == {"limits": {"cpu": "1"}}
    assert container["args"][:4] == ["dask", "worker", "--nthreads", "2"]
    assert container["args"][4:6] == ["--name", "$(DASK_WORKER_NAME)"]


def test_make_worker_spec_env_list_and_command_list_pass_through() -> None:
    env = [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    worker = v1.make_worker_spec(env=env, worker_command=["dask-cuda-worker"])
    (container,) = worker["spec"]["containers"]
    assert container["env"] == env
    assert container["args"][0] == "dask-cuda-worker"


def test_make_scheduler_spec() -> None:
    scheduler = v1.make_scheduler_spec("simple", jupyter=True, scheduler_service_type="LoadBalancer")
    (container,) = scheduler["spec"]["containers"]
    assert container["name"] == "scheduler"
    assert container["args"] == ["dask-scheduler", "--host", "0.0.0.0", "--jupyter"]
    assert [(p["name"], p["containerPort"], p["protocol"]) for p in container["ports"]] == [
        ("tcp-comm", 8786, "TCP"),
        ("http-dashboard", 8787, "TCP"),
    ]
    assert container["readinessProbe"] == {
        "httpGet": {"port": "http-dashboard", "path": "/health"},
        "initialDelaySeconds": 0,
        "periodSeconds": 1,
        "timeoutSeconds": 300,
    }
    assert container["livenessProbe"] == {
        "httpGet": {"port": "http-dashboard", "path": "/health"},
        "initialDelaySeconds": 15,
        "periodSeconds": 20,
    }
    service = scheduler["service"]
    assert service["type"] == "LoadBalancer"
    assert service["selector"] == {"dask.org/cluster-name": "simple", "dask.org/component": "scheduler"}
    assert service["ports"] == [
        {"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
        {"name": "http-dashboard", "protocol": "TCP", "port": 8787, "targetPort": "http-dashboard"},
    ]
    assert "--jupyter" not in v1.make_scheduler_spec("simple")["spec"]["containers"][0]["args"]


def test_make_cluster_spec_shape() -> None:
    cluster = v1.make_cluster_spec("simple", env={"X": "y"}, idle_timeout=60)
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    assert cluster["kind"] == "DaskCluster"
    assert cluster["metadata"] == {"name": "simple"}
    assert cluster["spec"]["idleTimeout"] == 60
    assert cluster["spec"]["worker"]["replicas"] is None  # n_workers=None: the CRD default applies
    assert cluster["spec"]["worker"] == v1.make_worker_spec(n_workers=None, env={"X": "y"})
    assert cluster["spec"]["scheduler"] == v1.make_scheduler_spec("simple", env={"X": "y"})


def test_with_defaults_fills_what_the_crd_defaults() -> None:
    cluster = v1.make_cluster_spec("simple")
    for container in cluster["spec"]["scheduler"]["spec"]["containers"]:
        for port in container["ports"]:
            del port["protocol"]
    del cluster["spec"]["idleTimeout"]
    cluster["spec"]["scheduler"]["spec"]["initContainers"] = [{"name": "i", "ports": [{"containerPort": 1}]}]
    cluster["spec"]["scheduler"]["spec"]["imagePullSecrets"] = [{}]
    for port in cluster["spec"]["scheduler"]["service"]["ports"]:
        del port["protocol"]
    stored = v1.with_defaults(cluster)
    spec = stored["spec"]
    assert spec["idleTimeout"] == 0
    assert spec["worker"]["replicas"] == 1
    assert "env" not in spec["worker"]["spec"]["containers"][0]  # nulls are pruned
    assert {p["protocol"] for c in spec["scheduler"]["spec"]["containers"] for p in c["ports"]} == {"TCP"}
    assert spec["scheduler"]["spec"]["initContainers"][0]["ports"][0]["protocol"] == "TCP"
    assert spec["scheduler"]["spec"]["imagePullSecrets"] == [{"name": ""}]
    assert {p["protocol"] for p in spec["scheduler"]["service"]["ports"]} == {"TCP"}
    assert cluster["spec"]["worker"]["replicas"] is None, "with_defaults must not modify its argument"


def test_with_defaults_for_each_kind() -> None:
    group: dict[str, Any] = {"kind": "DaskWorkerGroup", "spec": {"cluster": "c", "worker": {"spec": {}}}}
    assert v1.with_defaults(group)["spec"]["worker"]["replicas"] == 1
    job: dict[str, Any] = {
        "kind": "DaskJob",
        "spec": {"job": {"spec": {"containers": []}}, "cluster": {"spec": {"worker": {"spec": {}}}}},
    }
    stored = v1.with_defaults(job)["spec"]
    assert stored["job"]["spec"]["restartPolicy"] == "OnFailure"
    assert stored["cluster"]["spec"]["idleTimeout"] == 0
    assert stored["cluster"]["spec"]["worker"]["replicas"] == 1
    never = {"kind": "DaskJob", "spec": {"job": {"spec": {"restartPolicy": "Never"}}, "cluster": {}}}
    assert v1.with_defaults(never)["spec"]["job"]["spec"]["restartPolicy"] == "Never"
    scaler = {"kind": "DaskAutoscaler", "spec": {"cluster": "c", "minimum": 1, "maximum": 2}}
    assert v1.with_defaults(scaler) == scaler
