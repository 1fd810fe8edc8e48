"""A container's environment and argv, resolved the way the kubelet does it (pure functions).

Invariant: `envFrom` sources first, then `env` entries in order, each `value` expanded with `$(VAR)`
against the variables defined before it (`$$` escapes, unknown references stay literal). A missing
required ConfigMap, Secret or key raises `ConfigError`, which becomes `CreateContainerConfigError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

JSON = dict[str, Any]
# (namespace, name) -> data (Secret values already decoded), or None if the object does not exist.
ObjectLookup = Callable[[str, str], Mapping[str, str] | None]

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class ConfigError(Exception):
    """The container cannot be configured yet; the message is the one `kubectl describe` shows."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: `$$` -> `$`, unknown or unterminated references stay as written."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(env.get(name, f"$({name})"))
            i = end + 1
        else:
            out.append(ch + nxt)
            i += 2
    return "".join(out)


def field_value(pod: JSON, path: str) -> str:
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    status = pod.get("status", {})
    m = re.fullmatch(r"metadata\.(labels|annotations)\[['\"]?(.+?)['\"]?\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.hostIPs": ",".join(a["ip"] for a in status.get("hostIPs") or []),
        "status.podIPs": ",".join(a["ip"] for a in status.get("podIPs") or []),
    }
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    if path not in simple:
        raise ConfigError(f"unsupported fieldRef fieldPath {path!r}")
    return "" if simple[path] is None else str(simple[path])


_SUFFIX = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(1000),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}


def parse_quantity(q: str | float) -> Fraction:
    """A Kubernetes resource quantity (`500m`, `2Gi`, `1e3`) as an exact fraction."""
    text = str(q).strip()
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", text)
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"bad quantity {q!r}")
    return Fraction(m.group(1)) * _SUFFIX[m.group(2)]


def resource_value(container: JSON, ref: JSON, allocatable: Mapping[str, str]) -> str:
    """`resourceFieldRef`: limits default to the node's allocatable; the result is rounded up."""
    resource = ref["resource"]
    kind, _, name = resource.partition(".")
    res = container.get("resources") or {}
    value = (res.get(kind) or {}).get(name)
    if value is None and kind == "requests":
        value = (res.get("limits") or {}).get(name)
    if value is None:
        value = allocatable.get(name, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor == 0:
        divisor = Fraction(1)
    return str(math.ceil(parse_quantity(value) / divisor))


def _source_kind(ref_key: str) -> str:
    return "ConfigMap" if ref_key.startswith("configMap") else "Secret"


def resolve_env(
    pod: JSON,
    container: JSON,
    base: Mapping[str, str],
    configmaps: ObjectLookup,
    secrets: ObjectLookup,
    allocatable: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The container's environment: `base` (PATH, HOSTNAME, service variables), then envFrom, then env."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = dict(base)
    lookups = {"configMap": configmaps, "secret": secrets}
    for source in container.get("envFrom") or []:
        for kind in ("configMap", "secret"):
            ref = source.get(f"{kind}Ref")
            if ref is None:
                continue
            data = lookups[kind](ns, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
            prefix = source.get("prefix", "")
            for key, value in data.items():
                if _ENV_NAME.match(prefix + key):
                    env[prefix + key] = value
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(item.get("value", ""), env)
            continue
        vf = item["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_value(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            env[name] = resource_value(container, vf["resourceFieldRef"], allocatable or {})
        else:
            for ref_key, lookup in (("configMapKeyRef", configmaps), ("secretKeyRef", secrets)):
                if ref_key not in vf:
                    continue
                ref = vf[ref_key]
                data = lookup(ns, ref["name"])
                kind = _source_kind(ref_key)
                if data is None:
                    if ref.get("optional"):
                        break
                    raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
                if ref["key"] not in data:
                    if ref.get("optional"):
                        break
                    raise ConfigError(f"couldn't find key {ref['key']} in {kind} {ns}/{ref['name']}")
                env[name] = data[ref["key"]]
                break
    return env


@dataclass(frozen=True)
class ServiceEnv:
    """Docker-link style variables (`enableServiceLinks`): <NAME>_SERVICE_HOST / _PORT for one Service."""

    name: str
    cluster_ip: str
    ports: tuple[tuple[str, int, str], ...]  # (port name, port, protocol)

    def variables(self) -> dict[str, str]:
        prefix = self.name.upper().replace("-", "_")
        out: dict[str, str] = {}
        if not self.ports:
            return out
        out[f"{prefix}_SERVICE_HOST"] = self.cluster_ip
        out[f"{prefix}_SERVICE_PORT"] = str(self.ports[0][1])
        for pname, port, proto in self.ports:
            if pname:
                out[f"{prefix}_SERVICE_PORT_{pname.upper().replace('-', '_')}"] = str(port)
            base = f"{prefix}_PORT_{port}_{proto.upper()}"
            out[base] = f"{proto.lower()}://{self.cluster_ip}:{port}"
            out[f"{base}_PROTO"] = proto.lower()
            out[f"{base}_PORT"] = str(port)
            out[f"{base}_ADDR"] = self.cluster_ip
        p0 = self.ports[0]
        out[f"{prefix}_PORT"] = f"{p0[2].lower()}://{self.cluster_ip}:{p0[1]}"
        return out
