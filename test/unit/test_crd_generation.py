"""The CRD generator: deterministic, in sync with manifests/crd, structural, and complete.

The API server is the final judge (test/integration/test_crds.py); these checks run offline and say
exactly which rule a change broke.
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dask_operator.api import crd as generator
from dask_operator.api import v1
from dask_operator.api.v1 import k8s_schemas, schema, types

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests" / "crd"

# apiextensions.k8s.io/v1 JSONSchemaProps fields a generated schema may use.
JSON_SCHEMA_PROPS = {
    "type",
    "format",
    "description",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "enum",
    "default",
    "nullable",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "pattern",
    "anyOf",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
}


@functools.cache
def _crds() -> dict[str, dict[str, Any]]:
    return {c["spec"]["names"]["kind"]: c for c in schema.custom_resource_definitions()}


def crds() -> dict[str, dict[str, Any]]:
    return copy.deepcopy(_crds())


def open_api(kind: str) -> dict[str, Any]:
    result: dict[str, Any] = crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, prop in node.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def at(node: dict[str, Any], dotted: str) -> dict[str, Any]:
    for part in dotted.strip(".").split("."):
        node = node["properties"][part]
    return node


# --- generator output -----------------------------------------------------------------------------


def test_generation_is_deterministic() -> None:
    assert generator.rendered_files() == generator.rendered_files()
    # ...also across processes (no dict-order or hash-seed dependence).
    code = "import json; from dask_operator.api import crd; print(json.dumps(crd.rendered_files()))"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout}
    runs.add(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert len(runs) == 1


def test_libyaml_and_pure_python_emitters_agree() -> None:
    class PurePython(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    crd = crds()["DaskWorkerGroup"]
    assert generator.to_yaml(crd) == generator.to_yaml(crd, PurePython)


def test_committed_crds_match_the_generator() -> None:
    stale = generator.stale_files(MANIFESTS)
    assert not stale, f"manifests/crd is out of date ({', '.join(stale)}): run hack/gen-crds"


def test_check_mode_reports_drift(tmp_path: Path) -> None:
    assert generator.main(["--out", str(tmp_path)]) == 0
    assert generator.main(["--out", str(tmp_path), "--check"]) == 0
    victim = tmp_path / "kubernetes.dask.org_daskclusters.yaml"
    victim.write_text(victim.read_text() + "# hand edit\n")
    (tmp_path / "stray.yaml").write_text("{}\n")
    assert generator.stale_files(tmp_path) == ["kubernetes.dask.org_daskclusters.yaml", "stray.yaml"]
    assert generator.main(["--out", str(tmp_path), "--check"]) == 1


def test_files_and_kustomization() -> None:
    files = generator.rendered_files()
    assert sorted(files) == [
        "kubernetes.dask.org_daskautoscalers.yaml",
        "kubernetes.dask.org_daskclusters.yaml",
        "kubernetes.dask.org_daskjobs.yaml",
        "kubernetes.dask.org_daskworkergroups.yaml",
        "kustomization.yaml",
    ]
    kustomization = yaml.safe_load(files["kustomization.yaml"])
    assert kustomization["resources"] == sorted(name for name in files if name != "kustomization.yaml")
    for name, content in files.items():
        assert content.startswith(generator.HEADER)
        assert "&id" not in content and "*id" not in content, f"{name} uses YAML anchors"


def test_crd_sizes_fit_etcd_and_client_side_apply() -> None:
    for kind, crd in crds().items():
        size = len(json.dumps(crd, separators=(",", ":")))
        assert size < 1_500_000, f"{kind} CRD is {size} bytes: over etcd's request limit"
        # kubectl's client-side apply stores the whole object in an annotation limited to 256 KiB.
        assert size < 262_144, f"{kind} CRD is {size} bytes: `kubectl apply` without --server-side fails"


# --- names, subresources, columns -----------------------------------------------------------------


def test_names_group_scope() -> None:
    for names in v1.ALL_KINDS:
        crd = crds()[names.kind]
        assert crd["metadata"]["name"] == names.crd_name
        spec = crd["spec"]
        assert spec["group"] == "kubernetes.dask.org"
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["plural"] == names.plural
        assert spec["names"]["singular"] == names.singular
        assert spec["names"].get("shortNames", []) == list(names.short_names)
        assert spec["names"]["categories"] == ["dask"]
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)


def test_every_kind_has_a_status_subresource_with_a_real_schema() -> None:
    for kind, crd in crds().items():
        version = crd["spec"]["versions"][0]
        assert version["subresources"]["status"] == {}
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert {"observedGeneration", "conditions"} <= set(status["properties"]), kind
        conditions = status["properties"]["conditions"]
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert set(conditions["items"]["required"]) == {
            "type",
            "status",
            "lastTransitionTime",
            "reason",
            "message",
        }


@pytest.mark.parametrize("kind", ["DaskCluster", "DaskWorkerGroup"])
def test_scale_subresource_points_at_real_fields(kind: str) -> None:
    version = crds()[kind]["spec"]["versions"][0]
    scale = version["subresources"]["scale"]
    assert scale == {
        "specReplicasPath": ".spec.worker.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    root = version["schema"]["openAPIV3Schema"]
    assert at(root, scale["specReplicasPath"])["type"] == "integer"
    assert at(root, scale["statusReplicasPath"])["type"] == "integer"
    assert at(root, scale["labelSelectorPath"])["type"] == "string"


def test_printer_columns_keep_the_reference_columns_and_resolve() -> None:
    expected = {
        "DaskCluster": ["Workers", "Ready", "Status", "Age"],
        "DaskWorkerGroup": ["Workers", "Ready", "Cluster", "Age"],
        "DaskJob": ["Status", "Number Of Workers", "Age"],
        "DaskAutoscaler": ["Cluster", "Minimum", "Maximum", "Desired", "Age"],
    }
    for kind, crd in crds().items():
        version = crd["spec"]["versions"][0]
        columns = version["additionalPrinterColumns"]
        assert [c["name"] for c in columns] == expected[kind]
        root = version["schema"]["openAPIV3Schema"]
        for c in columns:
            if c["jsonPath"] != ".metadata.creationTimestamp":
                assert at(root, c["jsonPath"])["type"] == c["type"], (kind, c)


# --- structural schema rules ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k.kind for k in v1.ALL_KINDS])
def test_schemas_are_structural(kind: str) -> None:
    for path, node in walk(open_api(kind)):
        assert set(node) <= JSON_SCHEMA_PROPS, f"{kind}{path}: {set(node) - JSON_SCHEMA_PROPS}"
        assert "$ref" not in json.dumps(node), f"{kind}{path} still holds a $ref"
        untyped_ok = node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields"
        )
        assert "type" in node or untyped_ok, f"{kind}{path} has no type"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{kind}{path}: anyOf outside int-or-string"
        if node.get("x-kubernetes-list-type") == "map":
            items = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in items.get("required", []) or "default" in items["properties"][key], (
                    kind,
                    path,
                    key,
                )
        for required in node.get("required", []):
            assert required in node["properties"], f"{kind}{path} requires undeclared {required}"


def test_nothing_preserves_unknown_fields_except_the_forbidden_ephemeral_containers() -> None:
    for kind in (k.kind for k in v1.ALL_KINDS):
        for path, node in walk(open_api(kind)):
            if node.get("x-kubernetes-preserve-unknown-fields"):
                assert path.endswith(".ephemeralContainers[]"), f"{kind}{path} would keep unvalidated data"


def test_defaults() -> None:
    cluster = open_api("DaskCluster")
    assert at(cluster, "spec.worker.replicas")["default"] == 1
    assert at(cluster, "spec.idleTimeout")["default"] == 0
    group = open_api("DaskWorkerGroup")
    assert at(group, "spec.worker.replicas")["default"] == 1
    job = open_api("DaskJob")
    assert at(job, "spec.job.spec.restartPolicy")["default"] == "OnFailure"
    assert at(job, "spec.cluster.spec.worker.replicas")["default"] == 1
    assert at(job, "spec.cluster.spec.idleTimeout")["default"] == 0
    for kind in ("DaskCluster", "DaskWorkerGroup", "DaskJob"):
        defaults = {
            path: node["default"]
            for path, node in walk(open_api(kind))
            if "default" in node and "ports" in path
        }
        assert defaults and set(defaults.values()) == {"TCP"}, kind
        assert all(path.endswith("ports[].protocol") for path in defaults), kind
    # Every other default is one of ours or a list-map key's: no Kubernetes zero values leak in.
    allowed_defaults = {1, 0, "TCP", "OnFailure", ""}
    for kind in (k.kind for k in v1.ALL_KINDS):
        for path, node in walk(open_api(kind)):
            if "default" in node:
                assert node["default"] in allowed_defaults, (kind, path)
                if node["default"] == "":
                    assert path.endswith("imagePullSecrets[].name"), (kind, path)


def test_required_fields_match_the_reference() -> None:
    cluster = open_api("DaskCluster")
    assert cluster["required"] == ["spec"]
    assert set(at(cluster, "spec")["required"]) == {"scheduler", "worker"}
    assert set(at(cluster, "spec.scheduler")["required"]) == {"spec", "service"}
    assert set(at(cluster, "spec.worker")["required"]) == {"spec"}
    assert set(at(open_api("DaskWorkerGroup"), "spec")["required"]) == {"cluster", "worker"}
    assert set(at(open_api("DaskJob"), "spec")["required"]) == {
        "job"
    }  # or clusterRef instead of cluster (CEL)
    assert set(at(open_api("DaskAutoscaler"), "spec")["required"]) == {"cluster", "minimum", "maximum"}
    assert at(cluster, "spec.worker.spec")["required"] == ["containers"]


def test_job_cluster_metadata_is_kept() -> None:
    # The reference schema has no spec.cluster.metadata, so the API server pruned what its docs advertise.
    job = open_api("DaskJob")
    assert set(at(job, "spec.cluster.metadata")["properties"]) == {"labels", "annotations"}


def test_cel_messages_name_their_field() -> None:
    for kind in (k.kind for k in v1.ALL_KINDS):
        for path, node in walk(open_api(kind)):
            for rule in node.get("x-kubernetes-validations", []):
                message = rule["message"]
                field = rule.get("fieldPath", path).split(".")[-1] or "metadata.name"
                assert field in message or path.split(".")[-1] in message, (kind, path, message)


# --- the embedded Kubernetes schemas --------------------------------------------------------------


def property_paths(node: dict[str, Any], definitions: dict[str, Any], prefix: str = "") -> set[str]:
    """Every property path below a raw (unresolved) Kubernetes definition."""
    while "$ref" in node or "allOf" in node:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[1]
            if name == k8s_schemas.OBJECT_META:
                return {f"{prefix}.labels", f"{prefix}.annotations"}
            node = definitions[name]
        else:
            node = node["allOf"][0]
    paths = set()
    for name, prop in node.get("properties", {}).items():
        paths.add(f"{prefix}.{name}")
        paths |= property_paths(prop, definitions, f"{prefix}.{name}")
    if isinstance(node.get("items"), dict):
        paths |= property_paths(node["items"], definitions, f"{prefix}[]")
    if isinstance(node.get("additionalProperties"), dict):
        paths |= property_paths(node["additionalProperties"], definitions, f"{prefix}{{}}")
    return paths


@pytest.mark.parametrize("root", k8s_schemas.ROOTS)
def test_no_kubernetes_field_is_lost(root: str) -> None:
    data = json.loads((REPO / "api" / "v1" / k8s_schemas.SCHEMA_FILE).read_text())
    raw = property_paths(data["definitions"][root], data["definitions"])
    resolved = {path for path, _ in walk(k8s_schemas.structural_schema(root)) if path}
    assert raw - resolved == set()
    if root == k8s_schemas.POD_SPEC:
        crd_pod = {path for path, _ in walk(at(open_api("DaskCluster"), "spec.worker.spec")) if path}
        lost = {p for p in raw - crd_pod if not p.startswith(".ephemeralContainers[].")}
        assert lost == set()


def test_current_pod_spec_fields_are_present() -> None:
    pod = at(open_api("DaskCluster"), "spec.worker.spec")
    for field in ("os", "resourceClaims", "schedulingGates", "hostUsers", "ephemeralContainers"):
        assert field in pod["properties"], field
    container = pod["properties"]["initContainers"]["items"]["properties"]
    assert "restartPolicy" in container and "resizePolicy" in container
    assert k8s_schemas.kubernetes_version().startswith("v1.37.")


def test_int_or_string_and_quantity_are_folded() -> None:
    pod = at(open_api("DaskCluster"), "spec.worker.spec")
    container = pod["properties"]["containers"]["items"]["properties"]
    port = container["readinessProbe"]["properties"]["httpGet"]["properties"]["port"]
    assert port == {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    limit = container["resources"]["properties"]["limits"]["additionalProperties"]
    assert limit["x-kubernetes-int-or-string"] is True
    assert limit["pattern"] == k8s_schemas.QUANTITY_PATTERN


@pytest.mark.parametrize("quantity", ["1", "500m", "1.5Gi", "2e3", "+1k", ".5", "100Mi", "1E-3"])
def test_quantity_pattern_accepts(quantity: str) -> None:
    import re

    assert re.match(k8s_schemas.QUANTITY_PATTERN, quantity)


@pytest.mark.parametrize("quantity", ["", "abc", "1 Gi", "1GB", "--1", "1.2.3"])
def test_quantity_pattern_rejects(quantity: str) -> None:
    import re

    assert not re.match(k8s_schemas.QUANTITY_PATTERN, quantity)


def test_trim_keeps_only_the_closure_and_crd_keywords() -> None:
    document = {
        "components": {
            "schemas": {
                k8s_schemas.POD_SPEC: {
                    "type": "object",
                    "description": "dropped",
                    "properties": {
                        "a": {"$ref": "#/components/schemas/A", "x-kubernetes-patch-strategy": "merge"},
                        "b": {"type": "string", "default": "x"},
                    },
                },
                k8s_schemas.SERVICE_SPEC: {"type": "object", "x-kubernetes-unions": [{}]},
                "A": {"type": "object", "properties": {"default": {"type": "string", "description": "d"}}},
                "Unreachable": {"type": "string"},
            }
        }
    }
    trimmed = k8s_schemas.trim_openapi_document(document, "v1.37.0")
    assert trimmed["kubernetesVersion"] == "v1.37.0"
    assert sorted(trimmed["definitions"]) == sorted(["A", k8s_schemas.POD_SPEC, k8s_schemas.SERVICE_SPEC])
    assert trimmed["definitions"][k8s_schemas.POD_SPEC] == {
        "type": "object",
        "properties": {"a": {"$ref": "#/components/schemas/A"}, "b": {"type": "string", "default": "x"}},
    }
    # A property that happens to be called "default" is a property, not a keyword.
    assert trimmed["definitions"]["A"] == {"type": "object", "properties": {"default": {"type": "string"}}}
    assert trimmed["definitions"][k8s_schemas.SERVICE_SPEC] == {"type": "object"}


# --- the Python types agree with the schemas ------------------------------------------------------

TYPED = [
    (types.DaskClusterSpec, "DaskCluster", "spec"),
    (types.DaskClusterStatus, "DaskCluster", "status"),
    (types.DaskScheduler, "DaskCluster", "spec.scheduler"),
    (types.DaskWorker, "DaskCluster", "spec.worker"),
    (types.SimpleObjectMeta, "DaskCluster", "spec.worker.metadata"),
    (types.Condition, "DaskCluster", "status.conditions[]"),
    (types.DaskWorkerGroupSpec, "DaskWorkerGroup", "spec"),
    (types.DaskWorkerGroupStatus, "DaskWorkerGroup", "status"),
    (types.DaskJobSpec, "DaskJob", "spec"),
    (types.DaskJobRunner, "DaskJob", "spec.job"),
    (types.DaskJobCluster, "DaskJob", "spec.cluster"),
    (types.DaskJobStatus, "DaskJob", "status"),
    (types.DaskAutoscalerSpec, "DaskAutoscaler", "spec"),
    (types.DaskAutoscalerStatus, "DaskAutoscaler", "status"),
]


@pytest.mark.parametrize(("typed", "kind", "path"), TYPED, ids=[t[0].__name__ for t in TYPED])
def test_typed_dicts_match_schema(typed: Any, kind: str, path: str) -> None:
    node = open_api(kind)
    for part in path.split("."):
        node = node["properties"][part[:-2]]["items"] if part.endswith("[]") else node["properties"][part]
    assert set(typing.get_type_hints(typed)) == set(node["properties"])
    assert set(typed.__required_keys__) == set(node.get("required", []))
