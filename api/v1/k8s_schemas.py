"""Kubernetes' own PodSpec and ServiceSpec schemas, turned into structural CRD schemas.

Two steps with one data file between them:

1. `trim_openapi_document` (run once per Kubernetes release by `hack/fetch-k8s-openapi` against a real
   kube-apiserver) keeps the definitions reachable from PodSpec and ServiceSpec in `/openapi/v3/api/v1`,
   minus descriptions and the patch-strategy extensions a CRD cannot carry, and is committed as
   `k8s_1_37_schemas.json`. The generator never needs an API server.
2. `structural_schema` inlines every `$ref` and rewrites the few OpenAPI shapes CRD structural schemas
   forbid: int-or-string and Quantity become `x-kubernetes-int-or-string`, ObjectMeta becomes its
   labels/annotations subset (the only part a pod template's PVC template may set), and Kubernetes'
   zero-value defaults are dropped except where a list-map key needs one.

Invariant: every field of the Kubernetes schema survives into the CRD with its type, required list and
list/map semantics, so the API server validates embedded pod and service specs instead of pruning them.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

Schema = dict[str, Any]

SCHEMA_FILE = "k8s_1_37_schemas.json"
REF_PREFIX = "#/components/schemas/"
POD_SPEC = "io.k8s.api.core.v1.PodSpec"
SERVICE_SPEC = "io.k8s.api.core.v1.ServiceSpec"
ROOTS = (POD_SPEC, SERVICE_SPEC)

INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

# The string form of a resource.Quantity: a signed decimal with an optional binary-SI, decimal-SI or
# exponent suffix ("500m", "1.5Gi", "2e3"). Integers are accepted as JSON numbers as well.
QUANTITY_PATTERN = (
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)))?$"
)

# Keys of a JSON schema node that a CRD accepts (apiextensions.k8s.io/v1 JSONSchemaProps) and that
# survive trimming; anything else in Kubernetes' OpenAPI (x-kubernetes-patch-*, x-kubernetes-unions,
# descriptions) is dropped.
_KEPT_KEYS = frozenset(
    {
        "$ref",
        "additionalProperties",
        "allOf",
        "anyOf",
        "default",
        "enum",
        "format",
        "items",
        "maxItems",
        "maxLength",
        "maxProperties",
        "maximum",
        "minItems",
        "minLength",
        "minProperties",
        "minimum",
        "oneOf",
        "pattern",
        "properties",
        "required",
        "type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-list-type",
        "x-kubernetes-map-type",
    }
)
# Formats the CRD validator understands and that Kubernetes uses in these schemas.
_KEPT_FORMATS = frozenset({"int32", "int64", "double", "float", "date-time", "byte"})


# --- step 1: trim a served OpenAPI v3 document ------------------------------------------------------


def _ref_target(ref: str) -> str:
    if not ref.startswith(REF_PREFIX):
        raise ValueError(f"unsupported $ref {ref!r}")
    return ref[len(REF_PREFIX) :]


def _trim_node(node: Any) -> Any:
    if isinstance(node, dict):
        trimmed = {}
        for key, value in node.items():
            if key not in _KEPT_KEYS:
                continue
            if key == "properties":
                trimmed[key] = {name: _trim_node(prop) for name, prop in value.items()}
            elif key in ("default", "enum", "required", "x-kubernetes-list-map-keys"):
                trimmed[key] = copy.deepcopy(value)
            else:
                trimmed[key] = _trim_node(value)
        return trimmed
    if isinstance(node, list):
        return [_trim_node(item) for item in node]
    return node


def _references(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                found.add(_ref_target(value))
            else:
                found |= _references(value)
    elif isinstance(node, list):
        for item in node:
            found |= _references(item)
    return found


def trim_openapi_document(document: Mapping[str, Any], kubernetes_version: str) -> Schema:
    """The definitions reachable from ROOTS in an `/openapi/v3/api/v1` document, trimmed for CRDs."""
    schemas = document["components"]["schemas"]
    reachable: set[str] = set()
    pending = list(ROOTS)
    while pending:
        name = pending.pop()
        if name in reachable:
            continue
        reachable.add(name)
        pending.extend(_references(schemas[name]) - reachable)
    return {
        "kubernetesVersion": kubernetes_version,
        "source": "/openapi/v3/api/v1",
        "roots": list(ROOTS),
        "definitions": {name: _trim_node(schemas[name]) for name in sorted(reachable)},
    }


# --- step 2: resolve into structural CRD schemas ----------------------------------------------------


@cache
def _load_definitions() -> dict[str, Any]:
    text = resources.files("dask_operator.api.v1").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def kubernetes_version() -> str:
    return str(_load_definitions()["kubernetesVersion"])


def _string_map() -> Schema:
    return {"type": "object", "additionalProperties": {"type": "string"}}


def _int_or_string() -> Schema:
    return {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}


class _Resolver:
    def __init__(self, definitions: Mapping[str, Schema]) -> None:
        self.definitions = definitions
        self.stack: list[str] = []

    def definition(self, name: str) -> Schema:
        if name == INT_OR_STRING:
            return _int_or_string()
        if name == QUANTITY:
            return {**_int_or_string(), "pattern": QUANTITY_PATTERN}
        if name == OBJECT_META:
            return {"type": "object", "properties": {"labels": _string_map(), "annotations": _string_map()}}
        if name in self.stack:
            raise ValueError(f"recursive schema: {' -> '.join([*self.stack, name])}")
        self.stack.append(name)
        try:
            return self.node(self.definitions[name])
        finally:
            self.stack.pop()

    def node(self, node: Schema) -> Schema:
        if "$ref" in node:
            return self.definition(_ref_target(node["$ref"]))
        if "allOf" in node:
            # Kubernetes wraps a single $ref in allOf to attach a description or default to it.
            (only,) = node["allOf"]
            return self.node(only)
        result: Schema = {}
        for key, value in node.items():
            if key == "properties":
                result[key] = {name: self.node(prop) for name, prop in value.items()}
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                result[key] = self.node(value)
            elif key == "format":
                if value in _KEPT_FORMATS:
                    result[key] = value
            elif key == "default":
                continue  # zero-value defaults from Go structs; re-added below only for list-map keys
            elif key in ("oneOf", "anyOf"):
                raise ValueError(f"unexpected {key} in {' -> '.join(self.stack)}")
            else:
                result[key] = copy.deepcopy(value)
        if "x-kubernetes-list-map-keys" in result:
            self._default_list_map_keys(node, result)
        if "type" not in result and not result.get("x-kubernetes-int-or-string"):
            raise ValueError(f"schema without a type in {' -> '.join(self.stack)}: {node}")
        return result

    def _default_list_map_keys(self, node: Schema, result: Schema) -> None:
        """A CRD list-map key must be required or defaulted; keep Kubernetes' default for the others."""
        raw_items = node["items"]
        while "$ref" in raw_items or "allOf" in raw_items:
            raw_items = (
                self.definitions[_ref_target(raw_items["$ref"])]
                if "$ref" in raw_items
                else raw_items["allOf"][0]
            )
        items = result["items"]
        for key in result["x-kubernetes-list-map-keys"]:
            if key in items.get("required", []):
                continue
            default = raw_items["properties"][key].get("default")
            if default is None:
                raise ValueError(f"list-map key {key!r} is neither required nor defaulted in {self.stack}")
            items["properties"][key]["default"] = default


@cache
def _resolved(name: str) -> Schema:
    return _Resolver(_load_definitions()["definitions"]).definition(name)


def structural_schema(name: str) -> Schema:
    """The fully inlined structural schema of one Kubernetes definition, e.g. POD_SPEC (a fresh copy)."""
    return copy.deepcopy(_resolved(name))


def main(argv: list[str] | None = None) -> int:
    """`python -m dask_operator.api.v1.k8s_schemas OPENAPI_JSON K8S_VERSION OUT_JSON` (used by hack/)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(main.__doc__, file=sys.stderr)
        return 2
    source, version, out = args
    with open(source, encoding="utf-8") as handle:
        document = json.load(handle)
    trimmed = trim_openapi_document(document, version)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(trimmed, handle, indent=1, sort_keys=True)
        handle.write("\n")
    print(f"wrote {out}: {len(trimmed['definitions'])} definitions from Kubernetes {version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
