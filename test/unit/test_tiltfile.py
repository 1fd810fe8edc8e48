"""The Tiltfile, evaluated in a Starlark interpreter with Tilt's built-ins recorded, names only things that exist.

Tilt itself cannot be installed here. starlark-pyo3 (the Rust Starlark implementation) runs the Tiltfile with
each Tilt built-in it uses replaced by a recorder; an unknown built-in fails the evaluation. Then, in each mode
(the default image mode and `tilt up -- --no-docker`), every path, image, resource, port and command it names
is checked against the repository: the image the Deployment in manifests/ runs, the ports that Deployment
exposes, the CRD regeneration command, the sample's object, and the flags of `dask-operator run` and
`hack/localkube` as their own argument parsers read them.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import starlark as sl
import yaml
from kubeplane.cli import parser as localkube_parser

from dask_operator.controller.cli import build_parser as operator_parser

REPO = Path(__file__).resolve().parents[2]
TILTFILE = REPO / "Tiltfile"
DEPLOYMENT = REPO / "manifests" / "manager" / "deployment.yaml"

# The Tilt built-ins this Tiltfile may call (Tilt's API names); anything else is an evaluation error.
TILT_FUNCTIONS = (
    "local_resource", "docker_build", "k8s_yaml", "k8s_resource", "kustomize", "allow_k8s_contexts",
    "k8s_context",
)  # fmt: skip


@dataclass
class Tilt:
    """What the Tiltfile asked Tilt to do: (built-in, positional args, keyword args) in call order."""

    flags: dict[str, Any]
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    defined_flags: list[str] = field(default_factory=list)

    def recorder(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            if name == "kustomize":
                return f"<kustomize {args[0]}>"
            if name == "k8s_context":
                return "stub-context"
            return None

        return record

    def define_bool(self, name: str, args: bool = False, usage: str = "") -> None:
        assert usage, f"config flag {name} has no usage text"
        self.defined_flags.append(name)

    def parse(self) -> dict[str, Any]:
        unknown = set(self.flags) - set(self.defined_flags)
        assert not unknown, f"Tilt would reject undefined config flags {unknown}"
        return dict(self.flags)

    def called(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(a, k) for n, a, k in self.calls if n == name]

    def local_resources(self) -> dict[str, dict[str, Any]]:
        return {a[0]: k for a, k in self.called("local_resource")}


def evaluate(flags: dict[str, Any]) -> Tilt:
    tilt = Tilt(flags)
    module = sl.Module()
    for name in TILT_FUNCTIONS:
        module.add_callable(name, tilt.recorder(name))
    module.add_callable("_config_define_bool", tilt.define_bool)
    module.add_callable("_config_parse", tilt.parse)
    globals_ = sl.Globals.extended_by([sl.LibraryExtension.StructType])
    dialect = sl.Dialect.extended()
    prelude = "config = struct(define_bool=_config_define_bool, parse=_config_parse)"
    sl.eval(module, sl.parse("prelude", prelude, dialect), globals_)
    sl.eval(module, sl.parse("Tiltfile", TILTFILE.read_text(), dialect), globals_)
    return tilt


def deployment() -> dict[str, Any]:
    return dict(yaml.safe_load(DEPLOYMENT.read_text()))


def container_ports() -> set[int]:
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    return {int(p["containerPort"]) for p in container["ports"]}


def shell_commands(cmd: str) -> list[list[str]]:
    """The simple commands of a `sh -c` line, split at && and ||, without redirections; the command inside
    `eval "$(... | tail ...)"` counts as one."""
    commands = []
    for part in re.split(r"&&|\|\|", cmd):
        inner = re.search(r'eval "\$\((.+?)\|', part)
        part = inner.group(1) if inner else part
        part = re.sub(r"\d?>&\d|\d?>\s*\S+", "", part)
        words = shlex.split(part)
        if words and words[0] == "exec":
            words = words[1:]
        if words:
            commands.append(words)
    return commands


def check_command(words: list[str]) -> None:
    """A command the Tiltfile runs: a repository script that exists, or a tool whose arguments parse."""
    program, args = words[0], words[1:]
    if program == ".":
        assert (REPO / args[0]).is_file(), args
    elif program == "dask-operator":
        operator_parser().parse_args(args)
    elif program == "hack/localkube":
        assert os.access(REPO / program, os.X_OK)
        localkube_parser().parse_args(args)
    elif program == "kubectl":
        for flag, value in itertools.pairwise(args):
            if flag in ("-k", "-f"):
                assert (REPO / value).exists(), value
    else:
        assert program.startswith("hack/") and os.access(REPO / program, os.X_OK), program


def check_local_resources(tilt: Tilt, names: set[str]) -> None:
    for name, kwargs in tilt.local_resources().items():
        for dep in kwargs.get("deps", []):
            assert (REPO / dep).exists(), f"{name}: dep {dep} does not exist"
        for dep in kwargs.get("resource_deps", []):
            assert dep in names, f"{name}: resource_deps names unknown resource {dep}"
        for key in ("cmd", "serve_cmd"):
            if key in kwargs:
                for words in shell_commands(kwargs[key]):
                    check_command(words)


# -- the default mode: an image in the cluster of the kube context --------------------------------------------


@pytest.fixture(scope="module")
def image_mode() -> Tilt:
    return evaluate({})


def test_image_mode_builds_the_image_the_deployment_runs(image_mode: Tilt) -> None:
    ((args, kwargs),) = image_mode.called("docker_build")
    ref, context = args
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    assert container["image"].rsplit(":", 1)[0] == ref
    assert (REPO / context / kwargs["dockerfile"]).is_file()
    for path in kwargs["only"]:
        assert (REPO / path).exists(), path


def test_image_mode_applies_manifests_and_the_sample(image_mode: Tilt) -> None:
    applied = [a[0] for a, _ in image_mode.called("k8s_yaml")]
    assert applied[0] == "<kustomize manifests>"
    ((kustomized, _),) = image_mode.called("kustomize")
    assert (REPO / kustomized[0] / "kustomization.yaml").is_file()
    sample = yaml.safe_load((REPO / applied[1]).read_text())
    resources = {a[0] if a else k["new_name"]: k for a, k in image_mode.called("k8s_resource")}
    kind_and_name = f"{sample['metadata']['name']}:{sample['kind'].lower()}"
    assert resources["sample-cluster"]["objects"] == [kind_and_name]


def test_image_mode_forwards_the_ports_the_deployment_exposes(image_mode: Tilt) -> None:
    resources = {a[0]: k for a, k in image_mode.called("k8s_resource") if a}
    assert deployment()["metadata"]["name"] in resources
    forwards = resources["dask-operator"]["port_forwards"]
    assert {int(f.split(":")[1]) for f in forwards} == container_ports()


def test_image_mode_names_only_resources_and_paths_that_exist(image_mode: Tilt) -> None:
    names = set(image_mode.local_resources()) | {"dask-operator", "sample-cluster"}
    check_local_resources(image_mode, names)
    for _args, kwargs in image_mode.called("k8s_resource"):
        for dep in kwargs.get("resource_deps", []):
            assert dep in names


def test_crds_are_regenerated_by_the_command_that_generates_them(image_mode: Tilt) -> None:
    crds = image_mode.local_resources()["crds"]
    header = (REPO / "manifests" / "crd" / "kustomization.yaml").read_text().splitlines()[0]
    assert f"Generated by {crds['cmd']} " in header
    assert crds["deps"] == ["api"]


# -- tilt up -- --no-docker: a local process against hack/localkube ---------------------------------------------


@pytest.fixture(scope="module")
def process_mode() -> Tilt:
    return evaluate({"no-docker": True})


def test_no_docker_mode_builds_no_image_and_touches_no_cluster(process_mode: Tilt) -> None:
    used = {name for name, _, _ in process_mode.calls}
    assert used == {"local_resource"}
    assert process_mode.defined_flags == ["no-docker"]


def test_no_docker_mode_serves_the_operator_on_the_deployments_ports(process_mode: Tilt) -> None:
    resources = process_mode.local_resources()
    assert set(resources) == {"crds", "localkube", "install-crds", "dask-operator", "sample-cluster"}
    check_local_resources(process_mode, set(resources))
    serve = resources["dask-operator"]["serve_cmd"]
    operator = next(w for w in shell_commands(serve) if w[0] == "dask-operator")
    parsed = operator_parser().parse_args(operator[1:])
    ports = {
        int(parsed.metrics_bind_address.rsplit(":", 1)[1]),
        int(parsed.health_probe_bind_address.rsplit(":", 1)[1]),
    }
    assert ports == container_ports()
    # Python changes restart it.
    assert {"dask_operator", "api", "controller"} <= set(resources["dask-operator"]["deps"])


def test_an_undefined_flag_is_refused() -> None:
    with pytest.raises(Exception, match="undefined config flags"):
        evaluate({"no-dcoker": True})
