"""The four kinds as CRD definitions: OpenAPI schemas, CEL rules, subresources, printer columns.

Invariant: this module is the single source of the CRDs in manifests/crd (written by `hack/gen-crds`).
Field names, kinds, plurals and short names are those of the reference operator; what it adds is
validation (OpenAPI constraints and CEL rules whose messages name the field and say what is allowed),
the full Kubernetes PodSpec/ServiceSpec instead of a 1.21 snapshot, and real status schemas.
"""

from __future__ import annotations

from typing import Any

from dask_operator.api.v1.defaults import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_JOB_RESTART_POLICY,
    DEFAULT_REPLICAS,
)
from dask_operator.api.v1.group import GROUP, VERSION
from dask_operator.api.v1.k8s_schemas import POD_SPEC, SERVICE_SPEC, kubernetes_version, structural_schema
from dask_operator.api.v1.names import (
    ALL_KINDS,
    CLUSTER_NAME_RULE,
    DASK_AUTOSCALER,
    DASK_CLUSTER,
    DASK_JOB,
    DASK_WORKER_GROUP,
    DNS1035_LABEL_PATTERN,
    MAX_CLUSTER_NAME_LENGTH,
    MAX_WORKER_GROUP_NAME_LENGTH,
    KindNames,
)

Schema = dict[str, Any]

# Bounds that keep CEL cost estimates small; far above anything real.
MAX_NAME_LENGTH = 253
MAX_CONDITIONS = 32
MAX_LABEL_VALUE_LENGTH = 63
OBJECT_NAME_PATTERN = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # a DNS-1123 subdomain (an object's name)
LABEL_VALUE_PATTERN = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

# The job runner must be able to finish, so its pod may not use restartPolicy Always. (Every other closed
# value set of the embedded specs, e.g. imagePullPolicy or Service type, comes as an enum from Kubernetes.)
JOB_RESTART_POLICIES = ("OnFailure", "Never")
# Bounds on the job controls: retries far beyond any real use, and the failures a status keeps.
MAX_BACKOFF_LIMIT = 1000
MAX_RECORDED_FAILURES = 10

# --- schema vocabulary ------------------------------------------------------------------------------


def _with(schema: Schema, description: str | None, extra: dict[str, Any]) -> Schema:
    if description:
        schema["description"] = description
    schema.update(extra)
    return schema


def obj(
    properties: dict[str, Schema],
    *,
    required: tuple[str, ...] = (),
    description: str | None = None,
    **extra: Any,
) -> Schema:
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return _with(schema, description, extra)


def string(description: str | None = None, **extra: Any) -> Schema:
    return _with({"type": "string"}, description, extra)


def integer(description: str | None = None, *, fmt: str = "int32", **extra: Any) -> Schema:
    return _with({"type": "integer", "format": fmt}, description, extra)


def string_map(description: str | None = None, **extra: Any) -> Schema:
    return _with({"type": "object", "additionalProperties": {"type": "string"}}, description, extra)


def rule(expression: str, message: str, **extra: str) -> dict[str, str]:
    """A CEL validation rule; `message` names the field and says what is allowed."""
    return {"rule": expression, "message": message, **extra}


def date_time(description: str | None = None, **extra: Any) -> Schema:
    return string(description, format="date-time", **extra)


# --- Kubernetes specs with our overlays -------------------------------------------------------------


def pod_spec(description: str, *, restart_policies: tuple[str, ...] | None = None, **extra: Any) -> Schema:
    """core/v1 PodSpec of the pinned Kubernetes release, validated rather than pruned."""
    schema = structural_schema(POD_SPEC)
    properties = schema["properties"]
    properties["containers"]["minItems"] = 1  # Kubernetes requires the list, and at least one container
    if restart_policies is not None:
        properties["restartPolicy"]["enum"] = list(restart_policies)
    # Pods cannot be created with ephemeral containers (they are added to running pods by `kubectl debug`),
    # so accept the field name but reject any content, instead of carrying a third copy of Container.
    properties["ephemeralContainers"] = {
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "x-kubernetes-validations": [
            rule(
                "size(self) == 0",
                "ephemeralContainers cannot be set in a pod template: Kubernetes only adds them to running "
                "pods (kubectl debug)",
            )
        ],
    }
    return _with(schema, f"{description} (core/v1 PodSpec, Kubernetes {kubernetes_version()})", extra)


def service_spec(description: str) -> Schema:
    schema = structural_schema(SERVICE_SPEC)
    return _with(schema, f"{description} (core/v1 ServiceSpec, Kubernetes {kubernetes_version()})", {})


def simple_object_meta(target: str) -> Schema:
    return obj(
        {
            "labels": string_map(
                f"Labels added to {target}. Values must be valid label values.",
                additionalProperties={
                    "type": "string",
                    "maxLength": MAX_LABEL_VALUE_LENGTH,
                    "pattern": LABEL_VALUE_PATTERN,
                },
            ),
            "annotations": string_map(f"Annotations added to {target}."),
        },
        description=f"Labels and annotations for {target}.",
    )


def replicas(description: str) -> Schema:
    return integer(description, minimum=0, default=DEFAULT_REPLICAS)


def cluster_reference(description: str) -> Schema:
    return string(
        description,
        minLength=1,
        maxLength=MAX_NAME_LENGTH,
        **{
            "x-kubernetes-validations": [
                rule(
                    f"self.size() <= {MAX_CLUSTER_NAME_LENGTH} && self.matches('{DNS1035_LABEL_PATTERN}')",
                    f"spec.cluster must be the name of a DaskCluster in this namespace: {CLUSTER_NAME_RULE}",
                )
            ]
        },
    )


def cluster_name_rules(kind: str, why: str) -> list[dict[str, str]]:
    """Root-level rules on metadata.name for kinds whose name becomes a DaskCluster's name."""
    return [
        rule(
            f"self.metadata.name.size() <= {MAX_CLUSTER_NAME_LENGTH}",
            f"metadata.name of a {kind} must be at most {MAX_CLUSTER_NAME_LENGTH} characters, {why}",
            fieldPath=".metadata.name",
        ),
        rule(
            f"self.metadata.name.matches('{DNS1035_LABEL_PATTERN}')",
            f"metadata.name of a {kind} must be a DNS-1035 label: lowercase letters, digits and '-', "
            f"starting with a letter and ending with a letter or digit, {why}",
            fieldPath=".metadata.name",
        ),
    ]


# --- status -----------------------------------------------------------------------------------------


def conditions() -> Schema:
    """metav1.Condition list, keyed by type."""
    condition = obj(
        {
            "type": string(
                "Condition type in CamelCase, e.g. Ready.",
                maxLength=316,
                pattern=(
                    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
                ),
            ),
            "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "observedGeneration": integer(
                "metadata.generation the condition was computed from.", fmt="int64", minimum=0
            ),
            "lastTransitionTime": date_time("When status last changed."),
            "reason": string(
                "Programmatic CamelCase reason for the last transition.",
                minLength=1,
                maxLength=1024,
                pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
            ),
            "message": string("Human-readable details; may be empty.", maxLength=32768),
        },
        required=("type", "status", "lastTransitionTime", "reason", "message"),
    )
    return {
        "type": "array",
        "description": "Standard conditions: Ready, Progressing, Degraded (DaskJob also Complete and Failed).",
        "items": condition,
        "maxItems": MAX_CONDITIONS,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    }


def observed_generation() -> Schema:
    return integer("metadata.generation this status was computed from.", fmt="int64", minimum=0)


def count(description: str) -> Schema:
    return integer(description, minimum=0)


def selector() -> Schema:
    return string(
        "Label selector (k=v,...) of the worker pods counted in replicas; used by the scale subresource."
    )


def status_schema(description: str, properties: dict[str, Schema]) -> Schema:
    return obj(
        {"observedGeneration": observed_generation(), "conditions": conditions(), **properties},
        description=description,
    )


# --- the kinds --------------------------------------------------------------------------------------


def disruption_budget() -> Schema:
    max_unavailable = {
        "x-kubernetes-int-or-string": True,
        "description": "How many worker pods (a number, or a percentage like '25%') a voluntary disruption "
        "such as `kubectl drain` may take down at once.",
        "x-kubernetes-validations": [
            rule(
                "type(self) == int ? self >= 0 : self.matches('^[0-9]{1,3}%$')",
                "spec.worker.disruptionBudget.maxUnavailable must be a non-negative number of pods or a "
                "percentage such as '25%'",
            )
        ],
    }
    return obj(
        {"maxUnavailable": max_unavailable},
        required=("maxUnavailable",),
        description="Create a PodDisruptionBudget (named after the worker group) for these workers. "
        "Unset: none (the default).",
    )


def worker_template(target: str) -> Schema:
    return obj(
        {
            "replicas": replicas(f"Number of workers in {target}. Defaults to 1."),
            "metadata": simple_object_meta("the worker pods"),
            "spec": pod_spec("Pod spec of every worker"),
            "disruptionBudget": disruption_budget(),
        },
        required=("spec",),
        description=f"Template for the Dask workers of {target}.",
    )


def cluster_spec(description: str) -> Schema:
    return obj(
        {
            "idleTimeout": integer(
                "Delete the cluster after its scheduler has been idle for this many seconds; 0 never deletes it.",
                fmt="int64",
                minimum=0,
                default=DEFAULT_IDLE_TIMEOUT,
            ),
            "scheduler": obj(
                {
                    "metadata": simple_object_meta("the scheduler pod and Service"),
                    "spec": pod_spec("Pod spec of the scheduler"),
                    "service": service_spec("Spec of the scheduler Service named <cluster>-scheduler"),
                },
                required=("spec", "service"),
                description="The Dask scheduler: its pod and the Service clients and workers connect through.",
            ),
            "worker": worker_template("the default worker group <cluster>-default"),
        },
        required=("scheduler", "worker"),
        description=description,
    )


def root(spec: Schema, status: Schema, rules: list[dict[str, str]]) -> Schema:
    schema = obj(
        {
            "apiVersion": string(),
            "kind": string(),
            # Root rules may read metadata.name; declaring it lets their fieldPath point at it.
            "metadata": obj({"name": string(maxLength=MAX_NAME_LENGTH)}),
            "spec": spec,
            "status": status,
        },
        required=("spec",),
    )
    if rules:
        schema["x-kubernetes-validations"] = rules
    return schema


def suspend(kind: str, what: str) -> Schema:
    return {
        "type": "boolean",
        "description": (
            f"While true the {kind} runs nothing: {what}. The object and its spec are kept; setting it back "
            "to false (or removing it) starts everything again. Status condition Suspended says which."
        ),
    }


def dask_cluster_schema() -> Schema:
    spec = cluster_spec("A Dask scheduler, its Service and a default group of workers.")
    spec["properties"]["suspend"] = suspend(
        DASK_CLUSTER.kind,
        "its scheduler pod, Service and the worker pods of all its worker groups are deleted (in-memory "
        "data goes with them); the worker groups keep their replicas, so a resume restores the same "
        "number of workers",
    )
    return root(
        spec,
        status_schema(
            "Observed state; written by the operator.",
            {
                "phase": string(
                    "Created, Pending, Running or Error (the reference operator's values); Suspended while "
                    "spec.suspend holds the cluster."
                ),
                "replicas": count(
                    "Worker pods of the default worker group that exist and are not terminating."
                ),
                "readyReplicas": count("Ready worker pods of the default worker group."),
                "selector": selector(),
                "schedulerAddress": string("In-cluster address of the scheduler, tcp://host:port."),
                "dashboardAddress": string(
                    "In-cluster address of the scheduler dashboard, http://host:port."
                ),
            },
        ),
        cluster_name_rules(
            DASK_CLUSTER.kind, "so that the scheduler Service '<name>-scheduler' is a valid name"
        ),
    )


def dask_worker_group_schema() -> Schema:
    spec = obj(
        {
            "cluster": cluster_reference("Name of the DaskCluster (same namespace) these workers join."),
            "worker": worker_template("this group"),
        },
        required=("cluster", "worker"),
        description="An additional group of workers for an existing DaskCluster.",
    )
    spec["properties"]["cluster"]["x-kubernetes-validations"].append(
        rule(
            "self == oldSelf",
            "spec.cluster is immutable: a worker group cannot move to another DaskCluster; "
            "create a new DaskWorkerGroup instead",
        )
    )
    return root(
        spec,
        status_schema(
            "Observed state; written by the operator.",
            {
                "replicas": count("Worker pods of this group that exist and are not terminating."),
                "readyReplicas": count("Ready worker pods of this group."),
                "updatedReplicas": count("Worker pods built from the current spec.worker template."),
                "selector": selector(),
            },
        ),
        [
            rule(
                f"self.metadata.name.size() <= {MAX_WORKER_GROUP_NAME_LENGTH}",
                f"metadata.name of a DaskWorkerGroup must be at most {MAX_WORKER_GROUP_NAME_LENGTH} characters, "
                "because it is the dask.org/workergroup-name label value of every worker pod",
                fieldPath=".metadata.name",
            )
        ],
    )


def failure_record() -> Schema:
    return obj(
        {
            "podUID": string("UID of the runner pod that failed."),
            "attempt": count("Which runner attempt (1 for the first runner pod) this was."),
            "time": date_time("When it failed (its containers' end, UTC)."),
            "reason": string("Why, in CamelCase: the pod's reason or the first failing container's."),
            "message": string("What the pod said about its failure.", maxLength=4096),
        },
        required=("podUID", "attempt", "reason"),
    )


def dask_job_schema() -> Schema:
    nullable_time = date_time(nullable=True)
    spec = obj(
        {
            "job": obj(
                {
                    "metadata": simple_object_meta("the job runner pod"),
                    "spec": pod_spec(
                        "Pod spec of the job runner <job>-runner; restartPolicy defaults to OnFailure",
                        restart_policies=JOB_RESTART_POLICIES,
                    ),
                },
                required=("spec",),
                description="The runner pod, which runs to completion against the job's cluster.",
            ),
            "cluster": obj(
                {
                    "metadata": simple_object_meta("the job's DaskCluster"),
                    "spec": cluster_spec("Spec of the DaskCluster created for the job, named after the job."),
                    "status": obj(
                        {"phase": string()},
                        description="Accepted for compatibility with manifests that carry it; not used.",
                    ),
                },
                required=("spec",),
                description="The DaskCluster to create for the job (or set spec.clusterRef instead).",
            ),
            "clusterRef": obj(
                {
                    "name": string(
                        "Name of the DaskCluster.",
                        minLength=1,
                        maxLength=MAX_CLUSTER_NAME_LENGTH,
                        pattern=DNS1035_LABEL_PATTERN,
                    )
                },
                required=("name",),
                description=(
                    "Run the job on this existing DaskCluster (same namespace) instead of creating one from "
                    "spec.cluster. The job never creates, changes, suspends or deletes it."
                ),
                **{
                    "x-kubernetes-validations": [
                        rule(
                            "self.name == oldSelf.name",
                            "spec.clusterRef.name is immutable: create a new DaskJob to use another cluster",
                        )
                    ]
                },
            ),
            "suspend": suspend(
                DASK_JOB.kind,
                "no runner pod and no cluster of its own exist; setting it true on a running job deletes "
                "its runner pod (not counted as a failure) and its DaskCluster",
            ),
            "backoffLimit": integer(
                "How many times a failed runner pod is replaced by a new one before the job fails "
                "(reason BackoffLimitExceeded). Needs spec.job.spec.restartPolicy Never (with OnFailure "
                "the kubelet restarts the runner in place and the pod never fails). Absent or 0: the "
                "first failure fails the job.",
                minimum=0,
                maximum=MAX_BACKOFF_LIMIT,
            ),
            "activeDeadlineSeconds": integer(
                "The job fails (reason DeadlineExceeded, runner and cluster deleted) once it has been "
                "active this many seconds, counted from its creation or its last resume.",
                fmt="int64",
                minimum=1,
            ),
            "ttlSecondsAfterFinished": integer(
                "Delete the DaskJob (and with it its runner pod) this many seconds after it finished; "
                "absent keeps it forever.",
                minimum=0,
            ),
        },
        required=("job",),
        description=(
            "A runner pod plus a DaskCluster that lives as long as the runner (or an existing cluster named "
            "by spec.clusterRef)."
        ),
        **{
            "x-kubernetes-validations": [
                rule(
                    "has(self.cluster) != has(self.clusterRef)",
                    "spec.cluster and spec.clusterRef: set exactly one (a cluster made for the job, or the "
                    "name of an existing DaskCluster)",
                ),
                rule(
                    "has(self.cluster) == has(oldSelf.cluster)",
                    "spec.cluster and spec.clusterRef cannot be swapped on an existing DaskJob",
                ),
                rule(
                    "!has(self.backoffLimit) || self.backoffLimit == 0 || "
                    "self.job.spec.restartPolicy == 'Never'",
                    "spec.backoffLimit needs spec.job.spec.restartPolicy: Never (with OnFailure the runner "
                    "restarts in place and never fails)",
                    fieldPath=".backoffLimit",
                ),
            ]
        },
    )
    spec["properties"]["job"]["properties"]["spec"]["properties"]["restartPolicy"]["default"] = (
        DEFAULT_JOB_RESTART_POLICY
    )
    return root(
        spec,
        status_schema(
            "Observed state; written by the operator.",
            {
                "jobStatus": string(
                    "JobCreated, ClusterCreated, Running, Successful or Failed; Suspended while spec.suspend "
                    "holds the job.",
                    nullable=True,
                ),
                "clusterName": string("Name of the DaskCluster the job runs on."),
                "jobRunnerPodName": string("Name of the runner pod.", nullable=True),
                "startTime": {**nullable_time, "description": "When the runner started (UTC)."},
                "endTime": {**nullable_time, "description": "When the runner finished (UTC)."},
                "attempts": count("Runner pods created for the job so far."),
                "failed": count("Runner pods that failed (counted against spec.backoffLimit)."),
                "failures": {
                    "type": "array",
                    "description": f"The last {MAX_RECORDED_FAILURES} runner failures, oldest first.",
                    "items": failure_record(),
                    "maxItems": MAX_RECORDED_FAILURES,
                },
            },
        ),
        cluster_name_rules(DASK_JOB.kind, "because the job's DaskCluster takes the job's name"),
    )


def dask_autoscaler_schema() -> Schema:
    spec = obj(
        {
            "cluster": cluster_reference("Name of the DaskCluster (same namespace) whose workers to scale."),
            "workerGroup": string(
                "Name of the DaskWorkerGroup of that cluster to scale (default: the cluster's default group, "
                "`<cluster>-default`). Only tasks whose resource restrictions this group's workers serve "
                "(`dask worker --resources`) grow it.",
                minLength=1,
                maxLength=MAX_NAME_LENGTH,
                pattern=OBJECT_NAME_PATTERN,
            ),
            "minimum": integer("Fewest workers to keep.", minimum=0),
            "maximum": integer("Most workers to run, whatever the scheduler asks for.", minimum=0),
            "cooldownSeconds": integer(
                "Seconds after a change during which the group is not scaled down (default 15).",
                minimum=0,
                maximum=86400,
            ),
            "scaleDownDelaySeconds": integer(
                "Seconds the tasks must warrant fewer workers than the group has before it is scaled down "
                "(default 30; scale-ups are immediate).",
                minimum=0,
                maximum=86400,
            ),
        },
        required=("cluster", "minimum", "maximum"),
        description="Adaptive scaling bounds for one worker group of a DaskCluster.",
    )
    spec["x-kubernetes-validations"] = [
        rule(
            "self.minimum <= self.maximum",
            "spec.minimum must be less than or equal to spec.maximum",
            fieldPath=".minimum",
        ),
        rule(
            "has(self.workerGroup) == has(oldSelf.workerGroup) && "
            "(!has(self.workerGroup) || self.workerGroup == oldSelf.workerGroup)",
            "spec.workerGroup is immutable: create another DaskAutoscaler for another group",
            fieldPath=".workerGroup",
        ),
    ]
    return root(
        spec,
        status_schema(
            "Observed state; written by the operator.",
            {
                "desiredWorkers": count("Workers last requested of the worker group."),
                "lastScaleTime": date_time("When the request last changed."),
                "scaleDownPendingSince": date_time(
                    "Since when the tasks have warranted fewer workers than the group has."
                ),
            },
        ),
        [],
    )


# --- CRD assembly -----------------------------------------------------------------------------------


def column(
    name: str, json_path: str, kind: str = "string", description: str | None = None, **extra: Any
) -> Schema:
    result: Schema = {"name": name, "type": kind, "jsonPath": json_path}
    if description:
        result["description"] = description
    result.update(extra)
    return result


AGE = column("Age", ".metadata.creationTimestamp", "date")
WORKERS = column("Workers", ".spec.worker.replicas", "integer", "The number of desired worker Pods")


def _scale() -> Schema:
    return {
        "specReplicasPath": ".spec.worker.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def _version(schema: Schema, columns: list[Schema], subresources: Schema, **extra: Any) -> Schema:
    return {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": schema},
        "subresources": subresources,
        "additionalPrinterColumns": columns,
        **extra,
    }


def _crd(names: KindNames, version: Schema) -> Schema:
    crd_names: Schema = {
        "kind": names.kind,
        "listKind": names.list_kind,
        "plural": names.plural,
        "singular": names.singular,
        "categories": list(names.categories),
    }
    if names.short_names:
        crd_names["shortNames"] = list(names.short_names)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": names.crd_name,
            "labels": {
                "app.kubernetes.io/name": "dask-operator",
                "app.kubernetes.io/part-of": "dask-operator",
            },
        },
        "spec": {"group": GROUP, "names": crd_names, "scope": "Namespaced", "versions": [version]},
    }


def custom_resource_definitions() -> list[Schema]:
    """The four CRDs, in ALL_KINDS order."""
    ready = column("Ready", ".status.readyReplicas", "integer", "Worker Pods that are Ready")
    by_kind = {
        DASK_CLUSTER.kind: _version(
            dask_cluster_schema(),
            [WORKERS, ready, column("Status", ".status.phase"), AGE],
            {"status": {}, "scale": _scale()},
        ),
        DASK_WORKER_GROUP.kind: _version(
            dask_worker_group_schema(),
            [
                WORKERS,
                ready,
                column("Cluster", ".spec.cluster", description="DaskCluster these workers join", priority=1),
                AGE,
            ],
            {"status": {}, "scale": _scale()},
            selectableFields=[{"jsonPath": ".spec.cluster"}],
        ),
        DASK_JOB.kind: _version(
            dask_job_schema(),
            [
                column("Status", ".status.jobStatus"),
                column("Number Of Workers", ".spec.cluster.spec.worker.replicas", "integer"),
                AGE,
            ],
            {"status": {}},
        ),
        DASK_AUTOSCALER.kind: _version(
            dask_autoscaler_schema(),
            [
                column("Cluster", ".spec.cluster", description="Cluster to autoscale"),
                column("Minimum", ".spec.minimum", "integer"),
                column("Maximum", ".spec.maximum", "integer"),
                column("Desired", ".status.desiredWorkers", "integer", "Workers last requested"),
                AGE,
            ],
            {"status": {}},
            selectableFields=[{"jsonPath": ".spec.cluster"}],
        ),
    }
    return [_crd(names, by_kind[names.kind]) for names in ALL_KINDS]
