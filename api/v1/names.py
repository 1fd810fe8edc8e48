"""Names in the kubernetes.dask.org/v1 contract: kinds, label and annotation keys, child names.

Invariant: every string here is byte-for-byte the one the kopf-based Dask operator uses, so manifests,
label selectors and clients written for it keep working. The name rule for DaskCluster (and for DaskJob,
whose cluster takes the job's name) is enforced in two places from the same constants: by the CRD's CEL
rules at admission and by `validate_cluster_name` for Python callers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dask_operator.api.v1.group import API_VERSION, GROUP


@dataclass(frozen=True)
class KindNames:
    """The names Kubernetes and kubectl know one kind by."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    categories: tuple[str, ...] = ("dask",)

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def api_version(self) -> str:
        return API_VERSION


# `daskcluster` is both the singular and a short name in the reference CRD; keep both for compatibility.
DASK_CLUSTER = KindNames("DaskCluster", "daskclusters", "daskcluster", ("daskcluster", "dsk"))
DASK_WORKER_GROUP = KindNames("DaskWorkerGroup", "daskworkergroups", "daskworkergroup", ("daskworkers",))
DASK_JOB = KindNames("DaskJob", "daskjobs", "daskjob", ("djb",))
DASK_AUTOSCALER = KindNames("DaskAutoscaler", "daskautoscalers", "daskautoscaler", ())

ALL_KINDS: tuple[KindNames, ...] = (DASK_CLUSTER, DASK_WORKER_GROUP, DASK_JOB, DASK_AUTOSCALER)
CATEGORY = "dask"

# --- labels and annotations -------------------------------------------------------------------------

LABEL_CLUSTER_NAME = "dask.org/cluster-name"
LABEL_COMPONENT = "dask.org/component"
LABEL_WORKER_GROUP_NAME = "dask.org/workergroup-name"
LABEL_ISTIO_SIDECAR_INJECT = "sidecar.istio.io/inject"
ISTIO_SIDECAR_INJECT_VALUE = "false"

COMPONENT_SCHEDULER = "scheduler"
COMPONENT_WORKER = "worker"
COMPONENT_WORKER_GROUP = "workergroup"
COMPONENT_JOB_RUNNER = "job-runner"
COMPONENT_AUTOSCALER = "autoscaler"

# DaskAutoscaler: Unix epoch seconds (float as a string) until which the autoscaler must not scale down.
ANNOTATION_COOLDOWN_UNTIL = f"{GROUP}/cooldown-until"
# On a worker group whose replicas a DaskAutoscaler sets: that autoscaler's name (removed, with the
# autoscaler's ownership of the replicas, once no DaskAutoscaler names the group's cluster).
ANNOTATION_AUTOSCALED_BY = f"{GROUP}/autoscaled-by"

# Annotations whose key starts with one of these are never copied from a parent to its children.
UNPROPAGATED_ANNOTATION_PREFIXES: tuple[str, ...] = ("kopf.zalando.org", "kubectl.kubernetes.io")

# Kueue's labels put the object that carries them behind a LocalQueue; its children are admitted with it, so
# they never carry them (a child pod with the queue label would be gated again by Kueue's pod integration).
LABEL_KUEUE_QUEUE_NAME = "kueue.x-k8s.io/queue-name"
LABEL_KUEUE_PRIORITY_CLASS = "kueue.x-k8s.io/priority-class"
UNPROPAGATED_LABELS: tuple[str, ...] = (LABEL_KUEUE_QUEUE_NAME, LABEL_KUEUE_PRIORITY_CLASS)

# --- ports ------------------------------------------------------------------------------------------

SCHEDULER_COMM_PORT = 8786
SCHEDULER_DASHBOARD_PORT = 8787
WORKER_DASHBOARD_PORT = 8788
PORT_NAME_COMM = "tcp-comm"
PORT_NAME_DASHBOARD = "http-dashboard"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"

# --- name rules -------------------------------------------------------------------------------------

MAX_RESOURCE_NAME_LENGTH = 63
SCHEDULER_SUFFIX = "-scheduler"
SCHEDULER_NAME_TEMPLATE = "{cluster_name}" + SCHEDULER_SUFFIX
# 63 minus len("-scheduler"): the scheduler Service name must stay a valid DNS-1035 label.
MAX_CLUSTER_NAME_LENGTH = MAX_RESOURCE_NAME_LENGTH - len(SCHEDULER_SUFFIX)
# A worker group's name is a label value (dask.org/workergroup-name) on every worker pod.
MAX_WORKER_GROUP_NAME_LENGTH = MAX_RESOURCE_NAME_LENGTH
# DNS-1035 label: the scheduler Service is named after the cluster, and Service names are DNS-1035 labels
# (the reference checks the looser DNS-1123 label rule and then fails to create the Service for "1abc").
DNS1035_LABEL_PATTERN = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
_DNS1035_LABEL = re.compile(DNS1035_LABEL_PATTERN)

CLUSTER_NAME_RULE = (
    f"a DNS-1035 label of at most {MAX_CLUSTER_NAME_LENGTH} characters: lowercase letters, digits and '-', "
    "starting with a letter and ending with a letter or digit"
)


class ValidationError(ValueError):
    """A name or spec that the API server would reject; `message` says what is allowed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def cluster_name_problems(name: str) -> list[str]:
    """Why `name` cannot name a DaskCluster (or a DaskJob); empty when it can."""
    problems = []
    if len(name) > MAX_CLUSTER_NAME_LENGTH:
        problems.append(
            f"is {len(name)} characters long; at most {MAX_CLUSTER_NAME_LENGTH} are allowed so that "
            f"'<name>{SCHEDULER_SUFFIX}' fits in {MAX_RESOURCE_NAME_LENGTH}"
        )
    if not _DNS1035_LABEL.match(name):
        problems.append(
            "must consist of lowercase letters, digits and '-', start with a letter and end with a letter or digit"
        )
    return problems


def validate_cluster_name(name: str) -> None:
    """Raise ValidationError unless `name` can name a DaskCluster and all its children."""
    problems = cluster_name_problems(name)
    if problems:
        raise ValidationError(f"Invalid DaskCluster name {name!r}: it " + "; it ".join(problems) + ".")


def is_valid_cluster_name(name: str) -> bool:
    return not cluster_name_problems(name)


# --- child names ------------------------------------------------------------------------------------


def scheduler_name(cluster: str) -> str:
    """Name of the scheduler Pod (and, in the reference, its Deployment)."""
    return SCHEDULER_NAME_TEMPLATE.format(cluster_name=cluster)


def scheduler_service_name(cluster: str) -> str:
    """Name of the scheduler Service; clients resolve the scheduler through it."""
    return SCHEDULER_NAME_TEMPLATE.format(cluster_name=cluster)


def default_worker_group_name(cluster: str) -> str:
    """The DaskWorkerGroup a DaskCluster creates from its `spec.worker`."""
    return f"{cluster}-default"


def autoscaled_group_name(autoscaler: Mapping[str, Any]) -> str:
    """The DaskWorkerGroup a DaskAutoscaler scales: `spec.workerGroup`, else its cluster's default group."""
    spec = autoscaler.get("spec") or {}
    return str(spec.get("workerGroup") or default_worker_group_name(str(spec.get("cluster", ""))))


def worker_group_name(cluster: str, name: str) -> str:
    """An additional worker group as KubeCluster.add_worker_group(name) names it."""
    return f"{cluster}-{name}"


def worker_pod_name(worker_group: str, suffix: str) -> str:
    """A worker's pod name; it is also the Dask worker name (DASK_WORKER_NAME)."""
    return f"{worker_group}-worker-{suffix}"


def job_cluster_name(job: str) -> str:
    """A DaskJob's DaskCluster has the job's name."""
    return job


def job_runner_pod_name(job: str) -> str:
    return f"{job}-runner"


def scheduler_address(
    cluster: str,
    namespace: str,
    *,
    port: int = SCHEDULER_COMM_PORT,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> str:
    """In-cluster address of the scheduler's comm port, as injected into workers and job runners."""
    return f"tcp://{scheduler_service_name(cluster)}.{namespace}.svc.{cluster_domain}:{port}"


def dashboard_address(
    cluster: str,
    namespace: str,
    *,
    port: int = SCHEDULER_DASHBOARD_PORT,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> str:
    return f"http://{scheduler_service_name(cluster)}.{namespace}.svc.{cluster_domain}:{port}"


def worker_selector_labels(cluster: str, worker_group: str) -> dict[str, str]:
    """Labels every worker pod of `worker_group` carries; `status.selector` is built from these."""
    return {
        LABEL_CLUSTER_NAME: cluster,
        LABEL_COMPONENT: COMPONENT_WORKER,
        LABEL_WORKER_GROUP_NAME: worker_group,
    }


def scheduler_selector_labels(cluster: str) -> dict[str, str]:
    return {LABEL_CLUSTER_NAME: cluster, LABEL_COMPONENT: COMPONENT_SCHEDULER}


def label_selector_string(labels: dict[str, str]) -> str:
    """`k1=v1,k2=v2` in key order: the form `status.selector` takes for the scale subresource."""
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels))
