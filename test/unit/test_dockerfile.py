"""The Dockerfile agrees with setup.cfg and manifests/manager/: the entrypoint is the package's console
script, the base image's Python satisfies python_requires and is a version the package declares, the exposed
ports are the Deployment's container ports and the bind addresses of the default command, the user is the
Deployment's runAsUser, and every COPY source exists. `hadolint Dockerfile` runs in .ci/run.
"""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path
from typing import Any

import yaml

from dask_operator.controller.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def container() -> dict[str, Any]:
    deployment = yaml.safe_load((REPO / "manifests" / "manager" / "deployment.yaml").read_text())
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(c)


def exec_form(op: str) -> list[str]:
    (args,) = [a for o, a in final_stage() if o == op]
    value = json.loads(args)
    assert isinstance(value, list), f"{op} must use the exec form (a JSON list)"
    return [str(v) for v in value]


def test_entrypoint_is_the_packages_console_script() -> None:
    scripts = dict(
        line.replace(" ", "").split("=", 1)
        for line in setup_cfg()["options.entry_points"]["console_scripts"].strip().splitlines()
    )
    (entrypoint,) = exec_form("ENTRYPOINT")
    assert entrypoint in scripts


def test_python_of_every_stage_is_one_the_package_supports() -> None:
    cfg = setup_cfg()
    minimum = tuple(int(x) for x in cfg["options"]["python_requires"].removeprefix(">=").split("."))
    declared = set(re.findall(r"Programming Language :: Python :: (3\.\d+)", cfg["metadata"]["classifiers"]))
    bases = [args.split()[0] for op, args in instructions() if op == "FROM"]
    assert bases
    for base in bases:
        match = re.fullmatch(r"python:(3\.\d+)(-slim)?", base)
        assert match, f"{base}: a pinned python:3.X image"
        assert tuple(int(x) for x in match.group(1).split(".")) >= minimum
        assert match.group(1) in declared, f"{base}: setup.cfg classifiers declare {declared}"


def test_exposed_ports_are_the_deployments_and_the_default_commands() -> None:
    (expose,) = [args for op, args in final_stage() if op == "EXPOSE"]
    exposed = {int(p.split("/")[0]) for p in expose.split()}
    assert exposed == {int(p["containerPort"]) for p in container()["ports"]}
    args = build_parser().parse_args(exec_form("CMD"))
    bound = {int(a.rsplit(":", 1)[1]) for a in (args.metrics_bind_address, args.health_probe_bind_address)}
    assert bound == exposed
    # The Deployment overrides the command with the same ports.
    deployment_args = build_parser().parse_args(container()["args"])
    assert deployment_args.metrics_bind_address == args.metrics_bind_address
    assert deployment_args.health_probe_bind_address == args.health_probe_bind_address


def test_user_is_the_deployments_non_root_user() -> None:
    (user,) = [args for op, args in final_stage() if op == "USER"]
    deployment = yaml.safe_load((REPO / "manifests" / "manager" / "deployment.yaml").read_text())
    assert int(user) == deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] != 0


def test_every_copy_source_exists() -> None:
    for op, args in instructions():
        if op == "COPY" and not args.startswith("--from"):
            *sources, _dest = args.split()
            for source in sources:
                assert (REPO / source).exists(), source


def test_the_process_node_runs_the_image_as_the_dockerfile_says() -> None:
    """The local plane never pulls images; its table of entrypoints must say what this Dockerfile does."""
    from kubeplane.node.images import KNOWN_IMAGES

    image = container()["image"].rsplit(":", 1)[0]
    known = KNOWN_IMAGES[image]
    assert list(known.entrypoint) == exec_form("ENTRYPOINT")
    assert list(known.cmd) == exec_form("CMD")
