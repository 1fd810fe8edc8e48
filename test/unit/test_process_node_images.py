"""kubeplane.node.images: which program a container runs when its spec has no `command`."""

from __future__ import annotations

import pytest
from kubeplane.node.envvars import ConfigError
from kubeplane.node.images import argv_for, lookup, repository


@pytest.mark.parametrize(
    ("image", "repo"),
    [
        ("python:3.11-slim", "docker.io/library/python"),
        ("python", "docker.io/library/python"),
        ("daskdev/dask:2024.1.0", "docker.io/daskdev/dask"),
        ("ghcr.io/dask/dask:latest", "ghcr.io/dask/dask"),
        ("ghcr.io/dask/dask@sha256:abc", "ghcr.io/dask/dask"),
        ("localhost:5000/team/img:1", "localhost:5000/team/img"),
    ],
)
def test_repository_normalises_docker_hub_short_names_and_drops_tags(image: str, repo: str) -> None:
    assert repository(image) == repo


def test_command_wins_over_any_image_and_is_expanded() -> None:
    c = {"image": "unknown/thing", "command": ["echo", "$(A)"], "args": ["$(B)", "$$(A)"]}
    assert argv_for(c, {"A": "1", "B": "2"}) == ["echo", "1", "2", "$(A)"]


def test_dask_images_run_their_args_as_the_command() -> None:
    for image in ("ghcr.io/dask/dask:latest", "ghcr.io/dask/dask-notebook:2026.1", "daskdev/dask"):
        assert argv_for({"image": image, "args": ["dask", "worker", "$(X)"]}, {"X": "tcp://s:8786"}) == [
            "dask",
            "worker",
            "tcp://s:8786",
        ]


def test_operator_image_runs_dask_operator_with_args_or_its_default_cmd() -> None:
    image = "ghcr.io/dask-operator/dask-operator:latest"
    assert argv_for({"image": image, "args": ["run", "--leader-elect"]}, {}) == [
        "dask-operator",
        "run",
        "--leader-elect",
    ]
    assert argv_for({"image": image}, {})[:2] == ["dask-operator", "run"]


def test_python_image_default_cmd_is_python3_and_args_replace_it() -> None:
    assert argv_for({"image": "python:3.11-slim"}, {}) == ["python3"]
    assert argv_for({"image": "python:3.11-slim", "args": ["python", "-V"]}, {}) == ["python", "-V"]


def test_base_images_without_entrypoint_run_their_args_as_kubectl_run_gives_them() -> None:
    # `kubectl run x --image=busybox -- sh -c ...` puts the words after `--` into args, not command.
    assert argv_for({"image": "busybox", "args": ["sh", "-c", "true"]}, {}) == ["sh", "-c", "true"]
    assert argv_for({"image": "alpine:3.20"}, {}) == ["/bin/sh"]


def test_unknown_image_without_command_is_a_config_error_naming_the_image() -> None:
    assert lookup("quay.io/acme/tool") is None
    with pytest.raises(ConfigError, match=r"'quay\.io/acme/tool' has no known entrypoint"):
        argv_for({"image": "quay.io/acme/tool", "args": ["sh"]}, {})


def test_dask_image_without_args_or_command_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no args"):
        argv_for({"image": "ghcr.io/dask/dask:latest"}, {})
