"""The generated CRDs against a real kube-apiserver: bad input is rejected with a message naming the field,
valid input (the reference operator's documentation and test manifests, our builders' output, current
PodSpec fields) round-trips with nothing pruned, and status, scale, categories, short names and
`kubectl explain` work.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.wait import wait_for

from dask_operator.api import v1
from dask_operator.api.v1 import k8s_schemas

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "manifests" / "crd"
Obj = dict[str, Any]


# --- fixtures -------------------------------------------------------------------------------------


class Kubectl:
    """kubectl against the test plane, bound to one namespace."""

    def __init__(self, plane: Any, namespace: str) -> None:
        self.plane = plane
        self.namespace = namespace

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result: subprocess.CompletedProcess[str] = self.plane.kubectl(
            "-n", self.namespace, *args, input=input, check=check
        )
        return result

    def create(self, manifest: Obj, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("create", "-f", "-", "-o", "json", input=json.dumps(manifest), check=check)

    def get(self, kind: str, name: str) -> Obj:
        result: Obj = json.loads(self("get", f"{kind}.kubernetes.dask.org/{name}", "-o", "json").stdout)
        return result


@pytest.fixture(scope="module")
def dask_crds(kube_plane: Any) -> Iterator[Any]:
    """The generated CRDs, installed (server-side apply: idempotent if another test installed them)."""
    kube_plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(CRD_DIR))

    def established() -> bool:
        # (`kubectl wait` fails instead of waiting while a new CRD has no conditions yet.)
        for names in v1.ALL_KINDS:
            crd = json.loads(kube_plane.kubectl("get", f"crd/{names.crd_name}", "-o", "json").stdout)
            conditions = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions") or []}
            if conditions.get("Established") != "True":
                return False
        return True

    wait_for(established, timeout=60, message="the four CRDs Established")

    def served() -> bool:
        listed = kube_plane.kubectl(
            "api-resources", "--api-group=kubernetes.dask.org", "-o", "name", check=False
        )
        return all(f"{k.plural}.kubernetes.dask.org" in listed.stdout for k in v1.ALL_KINDS)

    wait_for(served, timeout=60, message="the four kinds in discovery")
    yield kube_plane


@pytest.fixture(scope="module")
def shared_namespace(dask_crds: Any) -> Iterator[str]:
    """One namespace for the table-driven tests (every case creates uniquely named objects)."""
    name = f"crds-{uuid.uuid4().hex[:8]}"
    dask_crds.kubectl("create", "namespace", name)
    yield name
    dask_crds.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def kubectl(dask_crds: Any, shared_namespace: str) -> Kubectl:
    return Kubectl(dask_crds, shared_namespace)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --- manifests ------------------------------------------------------------------------------------


def pod_spec(name: str = "main", **extra: Any) -> Obj:
    return {"containers": [{"name": name, "image": "ghcr.io/dask/dask:latest"}], **extra}


def service_spec() -> Obj:
    return {"type": "ClusterIP", "ports": [{"name": "tcp-comm", "port": 8786, "targetPort": "tcp-comm"}]}


def cluster(name: str = "") -> Obj:
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name or unique("c")},
        "spec": {
            "scheduler": {"spec": pod_spec("scheduler"), "service": service_spec()},
            "worker": {"replicas": 2, "spec": pod_spec("worker")},
        },
    }


def worker_group(name: str = "") -> Obj:
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": {"name": name or unique("wg")},
        "spec": {"cluster": "simple", "worker": {"replicas": 1, "spec": pod_spec("worker")}},
    }


def job(name: str = "") -> Obj:
    inner = cluster()["spec"]
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskJob",
        "metadata": {"name": name or unique("j")},
        "spec": {"job": {"spec": pod_spec("job")}, "cluster": {"spec": inner}},
    }


def autoscaler(name: str = "") -> Obj:
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskAutoscaler",
        "metadata": {"name": name or unique("as")},
        "spec": {"cluster": "simple", "minimum": 1, "maximum": 10},
    }


def _walk_to(obj: Obj, path: str) -> tuple[Any, str | int]:
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = obj
    for part in parts[:-1]:
        node = node[part]
    return node, parts[-1]


def setting(path: str, value: Any) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        node, last = _walk_to(obj, path)
        node[last] = value

    return mutate


def deleting(path: str) -> Callable[[Obj], None]:
    def mutate(obj: Obj) -> None:
        node, last = _walk_to(obj, path)
        del node[last]

    return mutate


def renaming(name: str) -> Callable[[Obj], None]:
    return setting("metadata.name", name)


# --- invalid manifests ----------------------------------------------------------------------------

# (id, base manifest factory, mutation, fragments the API server's error must contain)
INVALID: list[tuple[str, Callable[[], Obj], Callable[[Obj], None], tuple[str, ...]]] = [
    # DaskCluster: name rule (the scheduler Service is named <cluster>-scheduler)
    ("cluster-name-54-chars", cluster, renaming("c" * 54), ("metadata.name", "at most 53")),
    ("cluster-name-starts-with-digit", cluster, renaming("1abc"), ("metadata.name", "DNS-1035")),
    ("cluster-name-with-dot", cluster, renaming("abc.def"), ("metadata.name", "DNS-1035")),
    # DaskCluster: required fields
    ("cluster-no-spec", cluster, deleting("spec"), ("spec: Required value",)),
    ("cluster-no-scheduler", cluster, deleting("spec.scheduler"), ("spec.scheduler: Required value",)),
    ("cluster-no-worker", cluster, deleting("spec.worker"), ("spec.worker: Required value",)),
    (
        "cluster-no-scheduler-spec",
        cluster,
        deleting("spec.scheduler.spec"),
        ("spec.scheduler.spec: Required",),
    ),
    (
        "cluster-no-scheduler-service",
        cluster,
        deleting("spec.scheduler.service"),
        ("spec.scheduler.service: Required value",),
    ),
    ("cluster-no-worker-spec", cluster, deleting("spec.worker.spec"), ("spec.worker.spec: Required value",)),
    (
        "cluster-no-containers",
        cluster,
        deleting("spec.worker.spec.containers"),
        ("spec.worker.spec.containers: Required value",),
    ),
    # DaskCluster: numbers
    (
        "cluster-negative-replicas",
        cluster,
        setting("spec.worker.replicas", -1),
        ("spec.worker.replicas", "greater than or equal to 0"),
    ),
    (
        "cluster-string-replicas",
        cluster,
        setting("spec.worker.replicas", "two"),
        ("spec.worker.replicas", "integer"),
    ),
    (
        "cluster-negative-idle-timeout",
        cluster,
        setting("spec.idleTimeout", -5),
        ("spec.idleTimeout", "greater than or equal to 0"),
    ),
    # DaskCluster: embedded PodSpec validated against Kubernetes 1.37
    (
        "cluster-empty-containers",
        cluster,
        setting("spec.worker.spec.containers", []),
        ("spec.worker.spec.containers", "at least 1"),
    ),
    (
        "container-without-name",
        cluster,
        deleting("spec.worker.spec.containers.0.name"),
        ("spec.worker.spec.containers[0].name: Required value",),
    ),
    (
        "duplicate-container-names",
        cluster,
        setting("spec.worker.spec.containers", [{"name": "a"}, {"name": "a"}]),
        ("spec.worker.spec.containers[1]", "Duplicate value"),
    ),
    (
        "image-pull-policy-enum",
        cluster,
        setting("spec.worker.spec.containers.0.imagePullPolicy", "Sometimes"),
        ("spec.worker.spec.containers[0].imagePullPolicy", "Unsupported value", "IfNotPresent"),
    ),
    (
        "container-port-protocol-enum",
        cluster,
        setting("spec.worker.spec.containers.0.ports", [{"containerPort": 80, "protocol": "HTTP"}]),
        ("spec.worker.spec.containers[0].ports[0].protocol", "Unsupported value", "SCTP"),
    ),
    (
        "container-port-without-number",
        cluster,
        setting("spec.worker.spec.containers.0.ports", [{"name": "web"}]),
        ("spec.worker.spec.containers[0].ports[0].containerPort: Required value",),
    ),
    (
        "pod-restart-policy-enum",
        cluster,
        setting("spec.scheduler.spec.restartPolicy", "Sometimes"),
        ("spec.scheduler.spec.restartPolicy", "Unsupported value", "OnFailure"),
    ),
    (
        "ephemeral-containers",
        cluster,
        setting("spec.worker.spec.ephemeralContainers", [{"name": "debug", "image": "busybox"}]),
        ("spec.worker.spec.ephemeralContainers", "cannot be set in a pod template"),
    ),
    (
        "bad-cpu-quantity",
        cluster,
        setting("spec.worker.spec.containers.0.resources", {"limits": {"cpu": "lots"}}),
        ("spec.worker.spec.containers[0].resources.limits.cpu", "should match"),
    ),
    (
        "probe-port-not-int-or-string",
        cluster,
        setting("spec.worker.spec.containers.0.readinessProbe", {"httpGet": {"port": [8787]}}),
        ("spec.worker.spec.containers[0].readinessProbe.httpGet.port",),
    ),
    (
        "volume-without-name",
        cluster,
        setting("spec.worker.spec.volumes", [{"emptyDir": {}}]),
        ("spec.worker.spec.volumes[0].name: Required value",),
    ),
    (
        "unknown-container-field-is-an-error-not-pruned",
        cluster,
        setting("spec.worker.spec.containers.0.imagePolicy", "Always"),
        ('unknown field "spec.worker.spec.containers[0].imagePolicy"',),
    ),
    # DaskCluster: embedded ServiceSpec
    (
        "service-type-enum",
        cluster,
        setting("spec.scheduler.service.type", "Internal"),
        ("spec.scheduler.service.type", "Unsupported value", "LoadBalancer"),
    ),
    (
        "service-port-protocol-enum",
        cluster,
        setting("spec.scheduler.service.ports.0.protocol", "HTTP"),
        ("spec.scheduler.service.ports[0].protocol", "Unsupported value"),
    ),
    (
        "service-port-without-number",
        cluster,
        deleting("spec.scheduler.service.ports.0.port"),
        ("spec.scheduler.service.ports[0].port: Required value",),
    ),
    # DaskCluster: template metadata
    (
        "worker-label-value-invalid",
        cluster,
        setting("spec.worker.metadata", {"labels": {"team": "data science!"}}),
        ("spec.worker.metadata.labels.team", "should match"),
    ),
    (
        "scheduler-label-value-too-long",
        cluster,
        setting("spec.scheduler.metadata", {"labels": {"team": "x" * 64}}),
        ("spec.scheduler.metadata.labels.team", "63"),
    ),
    # DaskWorkerGroup
    ("group-no-cluster", worker_group, deleting("spec.cluster"), ("spec.cluster: Required value",)),
    ("group-no-worker", worker_group, deleting("spec.worker"), ("spec.worker: Required value",)),
    (
        "group-no-worker-spec",
        worker_group,
        deleting("spec.worker.spec"),
        ("spec.worker.spec: Required value",),
    ),
    ("group-empty-cluster", worker_group, setting("spec.cluster", ""), ("spec.cluster", "at least 1")),
    (
        "group-cluster-not-a-name",
        worker_group,
        setting("spec.cluster", "Simple_Cluster"),
        ("spec.cluster", "DNS-1035"),
    ),
    ("group-cluster-name-too-long", worker_group, setting("spec.cluster", "c" * 54), ("spec.cluster", "53")),
    (
        "group-negative-replicas",
        worker_group,
        setting("spec.worker.replicas", -1),
        ("spec.worker.replicas", "greater than or equal to 0"),
    ),
    ("group-name-64-chars", worker_group, renaming("g" * 64), ("metadata.name", "at most 63")),
    # DaskJob
    ("job-name-54-chars", job, renaming("j" * 54), ("metadata.name", "at most 53")),
    ("job-name-starts-with-digit", job, renaming("9job"), ("metadata.name", "DNS-1035")),
    ("job-no-job", job, deleting("spec.job"), ("spec.job: Required value",)),
    ("job-no-cluster", job, deleting("spec.cluster"), ("spec.cluster and spec.clusterRef", "exactly one")),
    (
        "job-cluster-and-cluster-ref",
        job,
        setting("spec.clusterRef", {"name": "shared"}),
        ("spec.cluster and spec.clusterRef", "exactly one"),
    ),
    (
        "job-cluster-ref-not-a-name",
        job,
        setting("spec.clusterRef", {"name": "-x"}),
        ("spec.clusterRef.name",),
    ),
    (
        "job-backoff-limit-with-on-failure",
        job,
        setting("spec.backoffLimit", 2),
        ("spec.backoffLimit", "restartPolicy: Never"),
    ),
    ("job-negative-backoff-limit", job, setting("spec.backoffLimit", -1), ("spec.backoffLimit",)),
    ("job-zero-deadline", job, setting("spec.activeDeadlineSeconds", 0), ("spec.activeDeadlineSeconds",)),
    ("job-negative-ttl", job, setting("spec.ttlSecondsAfterFinished", -1), ("spec.ttlSecondsAfterFinished",)),
    ("job-suspend-not-a-bool", job, setting("spec.suspend", "yes"), ("spec.suspend",)),
    ("cluster-suspend-not-a-bool", cluster, setting("spec.suspend", "yes"), ("spec.suspend",)),
    ("job-no-runner-spec", job, deleting("spec.job.spec"), ("spec.job.spec: Required value",)),
    ("job-no-cluster-spec", job, deleting("spec.cluster.spec"), ("spec.cluster.spec: Required value",)),
    (
        "job-no-cluster-service",
        job,
        deleting("spec.cluster.spec.scheduler.service"),
        ("spec.cluster.spec.scheduler.service: Required value",),
    ),
    (
        "job-restart-policy-always",
        job,
        setting("spec.job.spec.restartPolicy", "Always"),
        ("spec.job.spec.restartPolicy", "Unsupported value", "OnFailure", "Never"),
    ),
    (
        "job-negative-replicas",
        job,
        setting("spec.cluster.spec.worker.replicas", -2),
        ("spec.cluster.spec.worker.replicas", "greater than or equal to 0"),
    ),
    # DaskAutoscaler
    ("autoscaler-no-cluster", autoscaler, deleting("spec.cluster"), ("spec.cluster: Required value",)),
    ("autoscaler-no-minimum", autoscaler, deleting("spec.minimum"), ("spec.minimum: Required value",)),
    ("autoscaler-no-maximum", autoscaler, deleting("spec.maximum"), ("spec.maximum: Required value",)),
    ("autoscaler-no-spec", autoscaler, deleting("spec"), ("spec: Required value",)),
    (
        "autoscaler-minimum-above-maximum",
        autoscaler,
        setting("spec.minimum", 11),
        ("spec.minimum", "less than or equal to spec.maximum"),
    ),
    (
        "autoscaler-negative-minimum",
        autoscaler,
        setting("spec.minimum", -1),
        ("spec.minimum", "greater than or equal to 0"),
    ),
    ("autoscaler-string-maximum", autoscaler, setting("spec.maximum", "ten"), ("spec.maximum", "integer")),
    (
        "autoscaler-cluster-not-a-name",
        autoscaler,
        setting("spec.cluster", "-x"),
        ("spec.cluster", "DNS-1035"),
    ),
]


@pytest.mark.parametrize(
    ("base", "mutate", "fragments"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_manifest_is_rejected(
    kubectl: Kubectl, base: Callable[[], Obj], mutate: Callable[[Obj], None], fragments: tuple[str, ...]
) -> None:
    broken = base()
    mutate(broken)
    result = kubectl.create(broken, check=False)
    assert result.returncode != 0, f"accepted: {json.dumps(broken)}"
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in: {result.stderr}"


def test_the_invalid_table_covers_every_rule() -> None:
    assert len(INVALID) >= 30
    kinds = {case[1].__name__ for case in INVALID}
    assert kinds == {"cluster", "worker_group", "job", "autoscaler"}


def test_worker_group_cannot_move_to_another_cluster(kubectl: Kubectl) -> None:
    group = worker_group()
    kubectl.create(group)
    result = kubectl(
        "patch",
        f"daskworkergroup/{group['metadata']['name']}",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"cluster": "other"}}),
        check=False,
    )
    assert result.returncode != 0
    assert "spec.cluster" in result.stderr and "immutable" in result.stderr
    # Everything else stays editable.
    kubectl(
        "patch",
        f"daskworkergroup/{group['metadata']['name']}",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"worker": {"replicas": 3}}}),
    )


# --- valid manifests ------------------------------------------------------------------------------

# The reference operator's test resources and documentation examples, in their published shape.
SIMPLE_CLUSTER = """
apiVersion: kubernetes.dask.org/v1
kind: DaskCluster
metadata:
  name: simple
  labels: {test-label: label-value}
  annotations:
    test-annotation: annotation-value
    kopf.zalando.org/foobar: should-not-be-propagated
    kubectl.kubernetes.io: should-not-be-propagated
spec:
  worker:
    replicas: 2
    metadata:
      labels: {worker-sublabel: label-value}
      annotations: {worker-subannotation: annotation-value}
    spec:
      containers:
        - name: worker
          image: dask-kubernetes:dev
          imagePullPolicy: IfNotPresent
          args: [dask-worker, --name, $(DASK_WORKER_NAME), --dashboard, --dashboard-address, "8788"]
          ports: [{name: http-dashboard, containerPort: 8788, protocol: TCP}]
          env: [{name: WORKER_ENV, value: hello-world}]
  scheduler:
    metadata:
      labels: {scheduler-sublabel: label-value}
      annotations: {scheduler-subannotation: annotation-value}
    spec:
      containers:
        - name: scheduler
          image: dask-kubernetes:dev
          imagePullPolicy: IfNotPresent
          args: [dask-scheduler]
          ports:
            - {name: tcp-comm, containerPort: 8786, protocol: TCP}
            - {name: http-dashboard, containerPort: 8787, protocol: TCP}
          readinessProbe:
            httpGet: {port: http-dashboard, path: /health}
            initialDelaySeconds: 5
            periodSeconds: 10
          livenessProbe:
            httpGet: {port: http-dashboard, path: /health}
            initialDelaySeconds: 15
            periodSeconds: 20
          env: [{name: SCHEDULER_ENV, value: hello-world}]
    service:
      type: ClusterIP
      selector: {dask.org/cluster-name: simple, dask.org/component: scheduler}
      ports:
        - {name: tcp-comm, protocol: TCP, port: 8786, targetPort: tcp-comm}
        - {name: http-dashboard, protocol: TCP, port: 8787, targetPort: http-dashboard}
"""

SIMPLE_WORKER_GROUP = """
apiVersion: kubernetes.dask.org/v1
kind: DaskWorkerGroup
metadata: {name: simple-additional}
spec:
  cluster: simple
  worker:
    replicas: 2
    spec:
      containers:
        - name: worker
          image: dask-kubernetes:dev
          imagePullPolicy: IfNotPresent
          args: [dask-worker, --dashboard, --dashboard-address, "8788"]
          ports: [{name: http-dashboard, containerPort: 8788, protocol: TCP}]
          env: [{name: WORKER_ENV, value: hello-world}]
"""

_JOB_CLUSTER = """
  cluster:
    spec:
      worker:
        replicas: 2
        spec:
          containers:
            - name: worker
              image: dask-kubernetes:dev
              imagePullPolicy: IfNotPresent
              args: [dask-worker, --name, $(DASK_WORKER_NAME), --dashboard, --dashboard-address, "8788"]
              ports: [{name: http-dashboard, containerPort: 8788, protocol: TCP}]
      scheduler:
        spec:
          containers:
            - name: scheduler
              image: dask-kubernetes:dev
              imagePullPolicy: IfNotPresent
              args: [dask-scheduler]
              ports:
                - {name: tcp-comm, containerPort: 8786, protocol: TCP}
                - {name: http-dashboard, containerPort: 8787, protocol: TCP}
              readinessProbe:
                httpGet: {port: http-dashboard, path: /health}
                initialDelaySeconds: 5
                periodSeconds: 10
              livenessProbe:
                httpGet: {port: http-dashboard, path: /health}
                initialDelaySeconds: 15
                periodSeconds: 20
        service:
          type: ClusterIP
          selector: {dask.org/cluster-name: simple-job, dask.org/component: scheduler}
          ports:
            - {name: tcp-comm, protocol: TCP, port: 8786, targetPort: tcp-comm}
            - {name: http-dashboard, protocol: TCP, port: 8787, targetPort: http-dashboard}
"""

SIMPLE_JOB = (
    """
apiVersion: kubernetes.dask.org/v1
kind: DaskJob
metadata:
  name: simple-job
  annotations: {test-annotation: annotation-value}
spec:
  job:
    spec:
      containers:
        - name: job
          image: dask-kubernetes:dev
          imagePullPolicy: IfNotPresent
          args: [python, -c, "from dask.distributed import Client; client = Client(name='job')"]
"""
    + _JOB_CLUSTER
)

FAILED_JOB = (
    """
apiVersion: kubernetes.dask.org/v1
kind: DaskJob
metadata: {name: failed-job}
spec:
  job:
    spec:
      restartPolicy: Never
      containers:
        - name: job
          image: dask-kubernetes:dev
          imagePullPolicy: IfNotPresent
          args: [python, -c, "from dask.distributed import Client; client = Client(name='job'); assert False"]
"""
    + _JOB_CLUSTER
)

DOCS_CLUSTER = """
apiVersion: kubernetes.dask.org/v1
kind: DaskCluster
metadata: {name: simple-cluster}
spec:
  worker:
    replicas: 2
    spec:
      containers:
        - name: worker
          image: ghcr.io/dask/dask:latest
          imagePullPolicy: IfNotPresent
          args: [dask-worker, --name, $(DASK_WORKER_NAME)]
  scheduler:
    spec:
      containers:
        - name: scheduler
          image: ghcr.io/dask/dask:latest
          imagePullPolicy: IfNotPresent
          args: [dask-scheduler]
          ports:
            - {name: comm, containerPort: 8786, protocol: TCP}
            - {name: dashboard, containerPort: 8787, protocol: TCP}
          readinessProbe: {httpGet: {port: dashboard, path: /health}, initialDelaySeconds: 5, periodSeconds: 10}
          livenessProbe: {httpGet: {port: dashboard, path: /health}, initialDelaySeconds: 15, periodSeconds: 20}
    service:
      type: NodePort
      selector: {dask.org/cluster-name: simple-cluster, dask.org/component: scheduler}
      ports:
        - {name: comm, protocol: TCP, port: 8786, targetPort: comm}
        - {name: dashboard, protocol: TCP, port: 8787, targetPort: dashboard}
"""

DOCS_HIGHMEM_WORKER_GROUP = """
apiVersion: kubernetes.dask.org/v1
kind: DaskWorkerGroup
metadata: {name: simple-cluster-highmem-worker-group}
spec:
  cluster: simple-cluster
  worker:
    replicas: 2
    spec:
      containers:
        - name: worker
          image: ghcr.io/dask/dask:latest
          imagePullPolicy: IfNotPresent
          resources:
            requests: {memory: 32Gi}
            limits: {memory: 32Gi}
          args: [dask-worker, --name, $(DASK_WORKER_NAME), --resources, MEMORY=32e9]
"""

DOCS_AUTOSCALER = """
apiVersion: kubernetes.dask.org/v1
kind: DaskAutoscaler
metadata: {name: simple}
spec:
  cluster: "simple"
  minimum: 1
  maximum: 10
"""

# Fields Kubernetes added after the reference operator froze its schema at 1.21, which it prunes.
CURRENT_POD_SPEC = """
os: {name: linux}
hostUsers: false
schedulingGates: [{name: example.com/quota}]
resourceClaims: [{name: gpu, resourceClaimTemplateName: gpu-template}]
resources: {limits: {cpu: "4", memory: 8Gi}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector: {matchLabels: {dask.org/component: worker}}
    matchLabelKeys: [pod-template-hash]
    nodeTaintsPolicy: Honor
securityContext:
  runAsNonRoot: true
  seccompProfile: {type: RuntimeDefault}
  appArmorProfile: {type: RuntimeDefault}
  supplementalGroupsPolicy: Strict
dnsConfig: {options: [{name: ndots, value: "2"}]}
initContainers:
  - name: log-shipper
    image: fluent/fluent-bit:3
    restartPolicy: Always
    startupProbe: {tcpSocket: {port: 2020}, periodSeconds: 2}
  - name: warm-cache
    image: busybox
    command: [sh, -c, "true"]
    resources: {requests: {cpu: 100m}}
containers:
  - name: worker
    image: ghcr.io/dask/dask:latest
    args: [dask-worker, --name, $(DASK_WORKER_NAME)]
    resources:
      requests: {cpu: 1, memory: 2Gi}
      limits: {cpu: 2, memory: 4Gi, nvidia.com/gpu: 1}
      claims: [{name: gpu}]
    resizePolicy:
      - {resourceName: cpu, restartPolicy: NotRequired}
      - {resourceName: memory, restartPolicy: RestartContainer}
    readinessProbe: {httpGet: {port: 8788, path: /health}}
    lifecycle: {preStop: {sleep: {seconds: 5}}}
    env:
      - name: POD_NAME
        valueFrom: {fieldRef: {fieldPath: metadata.name}}
    volumeMounts: [{name: scratch, mountPath: /scratch, recursiveReadOnly: Disabled, readOnly: true}]
volumes:
  - name: scratch
    ephemeral:
      volumeClaimTemplate:
        metadata: {labels: {app: dask}}
        spec:
          accessModes: [ReadWriteOnce]
          resources: {requests: {storage: 10Gi}}
  - name: model
    image: {reference: "registry.example.com/models/llm:1", pullPolicy: IfNotPresent}
imagePullSecrets: [{name: registry}]
"""


def modern_cluster() -> Obj:
    manifest = cluster("modern")
    manifest["spec"]["worker"]["spec"] = yaml.safe_load(CURRENT_POD_SPEC)
    manifest["spec"]["scheduler"]["service"] = {
        "type": "LoadBalancer",
        "ports": [{"name": "tcp-comm", "port": 8786, "targetPort": 8786, "appProtocol": "tcp"}],
        "selector": {"dask.org/cluster-name": "modern", "dask.org/component": "scheduler"},
        "ipFamilyPolicy": "PreferDualStack",
        "trafficDistribution": "PreferClose",
        "loadBalancerClass": "example.com/lb",
        "externalTrafficPolicy": "Local",
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
    }
    return manifest


def defaults_cluster() -> Obj:
    """Everything the CRD defaults is left out."""
    manifest = cluster(unique("defaulted"))
    del manifest["spec"]["worker"]["replicas"]
    manifest["spec"]["worker"]["spec"]["containers"][0]["ports"] = [{"containerPort": 8788}]
    manifest["spec"]["scheduler"]["spec"]["initContainers"] = [
        {"name": "init", "image": "busybox", "ports": [{"containerPort": 9000}]}
    ]
    manifest["spec"]["scheduler"]["spec"]["imagePullSecrets"] = [{}]
    return manifest


def defaults_job() -> Obj:
    manifest = job(unique("defaulted-job"))
    del manifest["spec"]["cluster"]["spec"]["worker"]["replicas"]
    manifest["spec"]["job"]["metadata"] = {"labels": {"role": "runner"}}
    manifest["spec"]["cluster"]["metadata"] = {"labels": {"team": "data"}, "annotations": {"a": "b"}}
    return manifest


def defaults_worker_group() -> Obj:
    manifest = worker_group(unique("defaulted-group"))
    del manifest["spec"]["worker"]["replicas"]
    return manifest


VALID: dict[str, Callable[[], Obj]] = {
    # The bases the INVALID table mutates, so each invalid case fails for its mutation alone.
    "base-cluster": cluster,
    "base-workergroup": worker_group,
    "base-job": job,
    "base-autoscaler": autoscaler,
    "reference-simplecluster": lambda: yaml.safe_load(SIMPLE_CLUSTER),
    "reference-simpleworkergroup": lambda: yaml.safe_load(SIMPLE_WORKER_GROUP),
    "reference-simplejob": lambda: yaml.safe_load(SIMPLE_JOB),
    "reference-failedjob": lambda: yaml.safe_load(FAILED_JOB),
    "docs-daskcluster": lambda: yaml.safe_load(DOCS_CLUSTER),
    "docs-highmem-workergroup": lambda: yaml.safe_load(DOCS_HIGHMEM_WORKER_GROUP),
    "docs-daskautoscaler": lambda: yaml.safe_load(DOCS_AUTOSCALER),
    "make-cluster-spec-defaults": lambda: v1.make_cluster_spec("from-builder"),
    "make-cluster-spec-everything": lambda: v1.make_cluster_spec(
        "from-builder-full",
        image="ghcr.io/dask/dask:2025.1.0",
        n_workers=4,
        resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 2, "memory": "2G"}},
        env={"EXTRA_PIP_PACKAGES": "s3fs"},
        worker_command="dask worker",
        scheduler_service_type="LoadBalancer",
        idle_timeout=600,
        jupyter=True,
    ),
    "current-podspec-fields": modern_cluster,
    "defaults-omitted-cluster": defaults_cluster,
    "defaults-omitted-job": defaults_job,
    "defaults-omitted-workergroup": defaults_worker_group,
    "autoscaler-minimum-equals-maximum": lambda: {
        **autoscaler(),
        "spec": {"cluster": "c", "minimum": 0, "maximum": 0},
    },
    "cluster-name-53-chars": lambda: cluster("c" * 53),
    "workergroup-name-63-chars-with-dots": lambda: worker_group("g." + "g" * 61),
}


def _kind(manifest: Obj) -> str:
    return str(manifest["kind"]).lower()


@pytest.mark.parametrize("make", list(VALID.values()), ids=list(VALID))
def test_valid_manifest_round_trips_unpruned(kubectl: Kubectl, make: Callable[[], Obj]) -> None:
    sent = make()
    created = kubectl.create(sent)
    assert "Warning" not in created.stderr, created.stderr  # e.g. "unknown field" would mean pruning
    stored = kubectl.get(_kind(sent), sent["metadata"]["name"])
    expected = v1.with_defaults(sent)
    # Only the CRD defaults (replicas, idleTimeout, ports' protocol, restartPolicy) and null pruning differ.
    assert stored["spec"] == expected["spec"]
    for key in ("labels", "annotations"):
        assert stored["metadata"].get(key) == expected["metadata"].get(key)


def test_defaults_are_applied(kubectl: Kubectl) -> None:
    sent = defaults_cluster()
    kubectl.create(sent)
    spec = kubectl.get("daskcluster", sent["metadata"]["name"])["spec"]
    assert spec["worker"]["replicas"] == 1
    assert spec["idleTimeout"] == 0
    assert spec["worker"]["spec"]["containers"][0]["ports"][0]["protocol"] == "TCP"
    assert spec["scheduler"]["spec"]["initContainers"][0]["ports"][0]["protocol"] == "TCP"
    assert spec["scheduler"]["service"]["ports"][0]["protocol"] == "TCP"
    sent_job = job()
    kubectl.create(sent_job)
    stored_job = kubectl.get("daskjob", sent_job["metadata"]["name"])["spec"]
    assert stored_job["job"]["spec"]["restartPolicy"] == "OnFailure"
    assert stored_job["cluster"]["spec"]["idleTimeout"] == 0


# --- status subresource ---------------------------------------------------------------------------

CONDITION = {
    "type": "Ready",
    "status": "True",
    "observedGeneration": 1,
    "lastTransitionTime": "2025-01-02T03:04:05Z",
    "reason": "SchedulerReady",
    "message": "The scheduler answers on tcp://x-scheduler.ns.svc.cluster.local:8786.",
}

STATUSES: dict[str, tuple[Callable[[], Obj], Obj]] = {
    "DaskCluster": (
        cluster,
        {
            "observedGeneration": 1,
            "conditions": [CONDITION],
            "phase": "Running",
            "replicas": 2,
            "readyReplicas": 1,
            "selector": "dask.org/cluster-name=x,dask.org/component=worker,dask.org/workergroup-name=x-default",
            "schedulerAddress": "tcp://x-scheduler.ns.svc.cluster.local:8786",
            "dashboardAddress": "http://x-scheduler.ns.svc.cluster.local:8787",
        },
    ),
    "DaskWorkerGroup": (
        worker_group,
        {
            "observedGeneration": 1,
            "conditions": [CONDITION, {**CONDITION, "type": "Progressing", "status": "False", "message": ""}],
            "replicas": 1,
            "readyReplicas": 1,
            "updatedReplicas": 1,
            "selector": "dask.org/workergroup-name=g",
        },
    ),
    "DaskJob": (
        job,
        {
            "observedGeneration": 1,
            "conditions": [{**CONDITION, "type": "Complete", "reason": "RunnerSucceeded"}],
            "jobStatus": "Successful",
            "clusterName": "j",
            "jobRunnerPodName": "j-runner",
            "startTime": "2025-01-02T03:04:05Z",
            "endTime": "2025-01-02T03:05:06Z",
        },
    ),
    "DaskAutoscaler": (
        autoscaler,
        {
            "observedGeneration": 1,
            "conditions": [CONDITION],
            "desiredWorkers": 3,
            "lastScaleTime": "2025-01-02T03:04:05Z",
        },
    ),
}


@pytest.mark.parametrize("kind", list(STATUSES))
def test_status_subresource_stores_the_full_status(kubectl: Kubectl, kind: str) -> None:
    make, status = STATUSES[kind]
    manifest = make()
    name = manifest["metadata"]["name"]
    kubectl.create(manifest)
    ref = f"{kind.lower()}.kubernetes.dask.org/{name}"
    # Through the main resource, status is ignored ...
    kubectl("patch", ref, "--type=merge", "-p", json.dumps({"status": {"observedGeneration": 7}}))
    assert "observedGeneration" not in kubectl.get(kind.lower(), name).get("status", {})
    # ... through /status it is stored whole.
    kubectl("patch", ref, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))
    stored = kubectl.get(kind.lower(), name)
    assert stored["status"] == status
    # A malformed condition is rejected, naming the field.
    bad = {"status": {"conditions": [{**CONDITION, "status": "Maybe"}]}}
    result = kubectl("patch", ref, "--subresource=status", "--type=merge", "-p", json.dumps(bad), check=False)
    assert result.returncode != 0 and "status.conditions[0].status" in result.stderr


def test_job_status_fields_accept_null(kubectl: Kubectl) -> None:
    manifest = job()
    name = manifest["metadata"]["name"]
    kubectl.create(manifest)
    status = {
        "jobStatus": None,
        "jobRunnerPodName": None,
        "startTime": None,
        "endTime": None,
        "clusterName": name,
    }
    kubectl(
        "replace",
        "--subresource=status",
        "-f",
        "-",
        input=json.dumps({**kubectl.get("daskjob", name), "status": status}),
    )
    assert kubectl.get("daskjob", name)["status"] == status


# --- kubectl: scale, categories, short names, columns, explain ------------------------------------


def test_kubectl_scale_and_the_scale_subresource(kubectl: Kubectl) -> None:
    group = worker_group("x")
    kubectl.create(group)
    kubectl("scale", "daskworkergroup/x", "--replicas=4")
    assert kubectl.get("daskworkergroup", "x")["spec"]["worker"]["replicas"] == 4
    status = {"replicas": 3, "readyReplicas": 2, "selector": "dask.org/workergroup-name=x"}
    kubectl(
        "patch",
        "daskworkergroup/x",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )
    path = f"/apis/kubernetes.dask.org/v1/namespaces/{kubectl.namespace}/daskworkergroups/x/scale"
    scale = json.loads(kubectl.plane.kubectl("get", "--raw", path).stdout)
    assert scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 4}
    assert scale["status"] == {"replicas": 3, "selector": "dask.org/workergroup-name=x"}

    kubectl.create(cluster("scaled"))
    kubectl("scale", "daskcluster/scaled", "--replicas=5")
    assert kubectl.get("daskcluster", "scaled")["spec"]["worker"]["replicas"] == 5
    kubectl("scale", "dsk/scaled", "--replicas=0")
    assert kubectl.get("daskcluster", "scaled")["spec"]["worker"]["replicas"] == 0


def test_category_and_short_names(kubectl: Kubectl) -> None:
    names = {
        "daskcluster": cluster(),
        "daskworkergroup": worker_group(),
        "daskjob": job(),
        "daskautoscaler": autoscaler(),
    }
    for manifest in names.values():
        kubectl.create(manifest)
    listed = kubectl("get", "dask", "-o", "name").stdout.split()
    for singular, manifest in names.items():
        assert f"{singular}.kubernetes.dask.org/{manifest['metadata']['name']}" in listed
    for short, singular in [
        ("dsk", "daskcluster"),
        ("daskcluster", "daskcluster"),
        ("daskworkers", "daskworkergroup"),
        ("djb", "daskjob"),
    ]:
        shown = kubectl("get", short, "-o", "name").stdout.split()
        assert f"{singular}.kubernetes.dask.org/{names[singular]['metadata']['name']}" in shown, short


def test_printer_columns(kubectl: Kubectl) -> None:
    manifest = cluster()
    kubectl.create(manifest)
    name = manifest["metadata"]["name"]
    status = {"phase": "Running", "readyReplicas": 2, "replicas": 2}
    kubectl(
        "patch", f"dsk/{name}", "--subresource=status", "--type=merge", "-p", json.dumps({"status": status})
    )
    table = kubectl("get", "dsk", name).stdout.splitlines()
    assert table[0].split() == ["NAME", "WORKERS", "READY", "STATUS", "AGE"]
    assert table[1].split()[:4] == [name, "2", "2", "Running"]
    kubectl.create(job())
    header = kubectl("get", "djb").stdout.splitlines()[0]
    assert header.split() == ["NAME", "STATUS", "NUMBER", "OF", "WORKERS", "AGE"]
    kubectl.create(autoscaler())
    header = kubectl("get", "daskautoscalers").stdout.splitlines()[0]
    assert header.split() == ["NAME", "CLUSTER", "MINIMUM", "MAXIMUM", "DESIRED", "AGE"]


def test_kubectl_explain(dask_crds: Any) -> None:
    def explained() -> str | None:
        result = dask_crds.kubectl("explain", "daskcluster.spec.worker", check=False)
        return result.stdout if result.returncode == 0 and "replicas" in result.stdout else None

    text = wait_for(explained, timeout=60, message="kubectl explain daskcluster.spec.worker")
    assert "GROUP:      kubernetes.dask.org" in text
    assert "Template for the Dask workers" in text
    assert "spec\t<Object> -required-" in text
    nested = dask_crds.kubectl("explain", "daskcluster.spec.worker.spec.os").stdout
    assert "name" in nested


def test_crds_also_apply_client_side(dask_crds: Any) -> None:
    # Each CRD stays under the 256 KiB annotation client-side apply stores, so plain `kubectl apply` works.
    result = dask_crds.kubectl("apply", "--dry-run=server", "-k", str(CRD_DIR))
    assert result.returncode == 0


def test_committed_kubernetes_schemas_are_what_this_server_serves(kube_plane: Any) -> None:
    """api/v1/k8s_1_37_schemas.json is hack/fetch-k8s-openapi's output for this API server's release."""
    version = json.loads(kube_plane.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    committed = json.loads((REPO / "api" / "v1" / k8s_schemas.SCHEMA_FILE).read_text())
    if not version.startswith("v1.37."):
        pytest.skip(
            f"the committed schemas are for {committed['kubernetesVersion']}; this server is {version}"
        )
    served = json.loads(kube_plane.kubectl("get", "--raw", "/openapi/v3/api/v1").stdout)
    assert k8s_schemas.trim_openapi_document(served, version) == committed
