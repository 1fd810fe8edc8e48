"""What a container runs when its spec has no `command`: the image's entrypoint, from a small table.

Invariant: images are never pulled, so the node knows an image's ENTRYPOINT/CMD only from `KNOWN_IMAGES`
below. `command` set: `command + args` run, whatever the image. No `command`: the image's entrypoint
followed by `args` (or by the image's default CMD when `args` is empty). An image not in the table
without a `command` raises `ConfigError` (the pod shows CreateContainerConfigError), never a guess.
Held by test/unit/test_process_node_images.py.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .envvars import ConfigError, expand

JSON = dict[str, Any]


@dataclass(frozen=True)
class Entrypoint:
    entrypoint: tuple[str, ...]  # the image's ENTRYPOINT ("" = none: the first arg is the program)
    cmd: tuple[str, ...]  # the image's CMD, used when the container gives no `args`
    source: str  # where this was read from, for the README and error messages


# Repository patterns (registry/path, no tag or digest) -> what the image runs. Keep in step with
# the README's Development section.
KNOWN_IMAGES: dict[str, Entrypoint] = {
    # The Dask images' entrypoint (tini + prepare.sh) runs its arguments as the command.
    "ghcr.io/dask/dask*": Entrypoint((), (), "dask/dask-docker: ENTRYPOINT tini -g -- /usr/bin/prepare.sh"),
    "docker.io/daskdev/dask*": Entrypoint(
        (), (), "dask/dask-docker: ENTRYPOINT tini -g -- /usr/bin/prepare.sh"
    ),
    # Our own image (Dockerfile at the repository root).
    "ghcr.io/dask-operator/dask-operator": Entrypoint(
        ("dask-operator",),
        (
            "run",
            "--all-namespaces",
            "--metrics-bind-address=:8080",
            "--health-probe-bind-address=:8081",
        ),
        "Dockerfile: ENTRYPOINT dask-operator",
    ),
    "docker.io/library/dask-operator": Entrypoint(
        ("dask-operator",),
        (
            "run",
            "--all-namespaces",
            "--metrics-bind-address=:8080",
            "--health-probe-bind-address=:8081",
        ),
        "Dockerfile (docker build -t dask-operator .)",
    ),
    # Official Python images: no ENTRYPOINT, CMD python3.
    "docker.io/library/python": Entrypoint((), ("python3",), "library/python: CMD python3"),
    # Base images with no ENTRYPOINT: their args are the command (`kubectl run --image=busybox -- sh -c ...`).
    "docker.io/library/busybox": Entrypoint((), ("sh",), "library/busybox: CMD sh"),
    "docker.io/library/alpine": Entrypoint((), ("/bin/sh",), "library/alpine: CMD /bin/sh"),
    "docker.io/library/debian": Entrypoint((), ("bash",), "library/debian: CMD bash"),
    "docker.io/library/ubuntu": Entrypoint((), ("/bin/bash",), "library/ubuntu: CMD /bin/bash"),
}


def repository(image: str) -> str:
    """`python:3.11-slim` -> `docker.io/library/python`; tags and digests are dropped."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    first, _, rest = name.partition("/")
    if not rest:
        return f"docker.io/library/{first}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{name}"
    return name


def lookup(image: str) -> Entrypoint | None:
    repo = repository(image)
    for pattern, entry in KNOWN_IMAGES.items():
        if fnmatch.fnmatchcase(repo, pattern):
            return entry
    return None


def argv_for(container: JSON, env: Mapping[str, str]) -> list[str]:
    """The process to run, after `$(VAR)` expansion of `command` and `args` (never of the image's own)."""
    command = [expand(c, env) for c in container.get("command") or []]
    args = [expand(a, env) for a in container.get("args") or []]
    if command:
        return command + args
    image = container.get("image") or ""
    entry = lookup(image)
    if entry is None:
        raise ConfigError(
            f"image {image!r} has no known entrypoint on the process node (images are not pulled): "
            f"set the container's command, or add the image to kubeplane/node/images.py"
        )
    argv = list(entry.entrypoint) + (args if args else list(entry.cmd))
    if not argv:
        raise ConfigError(f"image {image!r} runs its arguments as the command, and the container has no args")
    return argv
