"""What `kubectl dask job submit` uploads and writes: the local files, their ConfigMap, and the DaskJob.

The files are the command's arguments that name local files, or the whole `--working-dir` (version control,
caches and virtualenvs left out), at relative paths that never leave that directory. They travel in ConfigMap
`<job>-files` (text as `data`, anything else as `binaryData`; keys are numbered, since a key cannot hold `/`),
mounted read-only at the runner's working directory, where the volume's `items` restore their paths.

Invariant: an upload larger than `MAX_UPLOAD_BYTES` in the ConfigMap is refused before anything is written;
everything here but `local_files` (which reads the files) is pure. Held by test/unit/test_kubectl_dask_job_spec.py.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dask_operator.api.kubecluster.options import ClusterOptions, cluster_manifest
from dask_operator.api.kubectl_calls import CommandError
from dask_operator.api.v1 import API_VERSION, DASK_JOB, DEFAULT_IMAGE, MAX_CLUSTER_NAME_LENGTH
from dask_operator.runtime.objects import Obj

# A ConfigMap holds at most 1 MiB (data, binaryData and metadata together); this leaves room for the rest.
MAX_UPLOAD_BYTES = 900 * 1024
JOB_FILES_MOUNT = "/var/run/dask-job"
RUNNER_CONTAINER = "job"
CREATED_BY = "app.kubernetes.io/created-by"
# Never uploaded from a working directory: version control, caches, virtualenvs.
SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".mypy_cache", ".ruff_cache"}
)
_KEY_CHARS = re.compile(r"[^-._a-zA-Z0-9]+")


def files_size(files: Mapping[str, bytes]) -> int:
    """Bytes the files take in a ConfigMap: text as it is, anything else base64-encoded."""
    return sum(
        len(content) if is_text(content) else (len(content) + 2) // 3 * 4 for content in files.values()
    )


def is_text(content: bytes) -> bool:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_upload(files: Mapping[str, bytes], limit: int = MAX_UPLOAD_BYTES) -> None:
    size = files_size(files)
    if size > limit:
        largest = sorted(files, key=lambda p: len(files[p]), reverse=True)[:3]
        raise CommandError(
            f"the files to upload take {size} bytes in a ConfigMap, more than {limit} (largest: "
            f"{', '.join(largest)}); keep data in object storage or a volume and upload only code"
        )


def files_configmap(job: str, namespace: str, files: Mapping[str, bytes]) -> Obj:
    """ConfigMap `<job>-files`: one key per file (keys cannot hold '/'); the volume's items restore paths."""
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    for index, path in enumerate(sorted(files)):
        key = file_key(index, path)
        content = files[path]
        if is_text(content):
            data[key] = content.decode("utf-8")
        else:
            binary[key] = base64.b64encode(content).decode()
    obj: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{job}-files", "namespace": namespace, "labels": {CREATED_BY: "kubectl-dask"}},
        "data": data,
    }
    if binary:
        obj["binaryData"] = binary
    return obj


def file_key(index: int, path: str) -> str:
    return f"{index:04d}.{_KEY_CHARS.sub('_', Path(path).name)}"[:253]


def job_manifest(
    name: str,
    namespace: str,
    command: Sequence[str],
    files: Mapping[str, bytes],
    *,
    cluster: str | None = None,
    workers: int = 1,
    image: str = DEFAULT_IMAGE,
    resources: Mapping[str, Any] | None = None,
) -> Obj:
    """The DaskJob: a runner running `command` in the uploaded files' directory, on `cluster` (clusterRef)
    or on a cluster of its own with `workers` workers of `image`."""
    items = [{"key": file_key(i, path), "path": path} for i, path in enumerate(sorted(files))]
    runner: Obj = {
        "name": RUNNER_CONTAINER,
        "image": image,
        "args": list(command),
        "workingDir": JOB_FILES_MOUNT,
        "volumeMounts": [{"name": "job-files", "mountPath": JOB_FILES_MOUNT, "readOnly": True}],
    }
    if resources:
        runner["resources"] = dict(resources)
    spec: Obj = {
        "job": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [runner],
                "volumes": [{"name": "job-files", "configMap": {"name": f"{name}-files", "items": items}}],
            }
        }
    }
    if cluster is not None:
        spec["clusterRef"] = {"name": cluster}
    else:
        options = ClusterOptions(
            name=name, image=image, n_workers=workers, resources=dict(resources) if resources else None
        )
        spec["cluster"] = {"spec": cluster_manifest(options, namespace)["spec"]}
    return {
        "apiVersion": API_VERSION,
        "kind": DASK_JOB.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": {CREATED_BY: "kubectl-dask"}},
        "spec": spec,
    }


def owned_by(job: Mapping[str, Any]) -> Obj:
    """A merge patch making the DaskJob the ConfigMap's owner (the garbage collector deletes it with the job)."""
    meta = job["metadata"]
    return {
        "metadata": {
            "ownerReferences": [
                {"apiVersion": API_VERSION, "kind": DASK_JOB.kind, "name": meta["name"], "uid": meta["uid"]}
            ]
        }
    }


def default_job_name(command: Sequence[str], token: str) -> str:
    """`<script stem>-<token>` made a valid DaskCluster name (the job's cluster carries the job's name)."""
    script = next((a for a in command[1:] if a.endswith(".py")), command[0] if command else "job")
    stem = re.sub(r"[^a-z0-9-]+", "-", Path(script).stem.lower()).strip("-")
    stem = re.sub(r"^[^a-z]+", "", stem) or "job"
    return f"{stem[: MAX_CLUSTER_NAME_LENGTH - len(token) - 1].rstrip('-')}-{token}"


def local_files(command: Sequence[str], working_dir: Path | None, cwd: Path) -> dict[str, bytes]:
    """`--working-dir`'s files (version control and caches left out), else the command's arguments that name
    files under the current directory. Paths are relative and never leave the directory."""
    if working_dir is not None:
        root = working_dir.resolve()
        if not root.is_dir():
            raise CommandError(f"--working-dir {working_dir} is not a directory")
        files: dict[str, bytes] = {}
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS)
            for name in sorted(names):
                path = Path(directory) / name
                if path.is_file():
                    files[path.relative_to(root).as_posix()] = path.read_bytes()
                    check_upload(files)
        return files
    root = cwd.resolve()
    named: dict[str, bytes] = {}
    for arg in command[1:]:
        path = (root / arg).resolve()
        if path.is_file() and path.is_relative_to(root):
            named[path.relative_to(root).as_posix()] = path.read_bytes()
    return named
