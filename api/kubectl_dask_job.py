"""`kubectl dask job submit|logs|list|delete`: a local script run as a DaskJob, its log streamed back.

    kubectl dask job submit [--cluster NAME | --workers N] [--working-dir DIR] -- python script.py [args]

The script (the command's local files, or the whole `--working-dir`) travels in a ConfigMap `<job>-files`
mounted read-only at the runner's working directory; the ConfigMap is owned by the DaskJob, so deleting the
job deletes it. With `--cluster` the job runs on that DaskCluster (spec.clusterRef, left running); otherwise
on a cluster of its own (`--workers`, `--image`, `--resources`), which the operator deletes when the job ends.
The runner never restarts (restartPolicy Never), so its exit code is final: `submit` prints the runner's log
as it is written and exits with that code.

Invariant: nothing is written before the upload is known to fit (`MAX_UPLOAD_BYTES`, paths inside the
working directory only); `submit` exits with the runner container's exit code, or 1 with the job's reason
when no runner ran. Held by test/unit/test_kubectl_dask_job.py (manifests, uploads, exit codes) and
test/e2e/test_kubectl_dask_job.py (scripts run for real through kubectl).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dask_operator.api.kubecluster.cluster import pod_log
from dask_operator.api.kubecluster.kinds import POD
from dask_operator.api.kubecluster.options import ClusterOptions, cluster_manifest
from dask_operator.api.kubectl_calls import CommandError, checked, get_cluster
from dask_operator.api.kubectl_dask_create import cluster_name, parse_resources
from dask_operator.api.kubectl_table import age, table
from dask_operator.api.v1 import (
    API_VERSION,
    DASK_JOB,
    DEFAULT_IMAGE,
    GROUP,
    MAX_CLUSTER_NAME_LENGTH,
    VERSION,
    job_runner_pod_name,
)
from dask_operator.controller.runtime.client import ApiError
from dask_operator.controller.runtime.client import Client as RestClient
from dask_operator.controller.runtime.kinds import CONFIGMAP, Kind

Obj = dict[str, Any]

DASK_JOB_KIND = Kind(GROUP, VERSION, DASK_JOB.kind, DASK_JOB.plural)
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
FINISHED = ("Successful", "Failed")


# -- pure: what is uploaded and written ---------------------------------------------------------------------


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


def runner_exit_code(pod: Mapping[str, Any] | None) -> int | None:
    """The runner container's exit code once it has terminated, else None."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == RUNNER_CONTAINER:
            terminated = (status.get("state") or {}).get("terminated")
            if terminated is not None and terminated.get("exitCode") is not None:
                return int(terminated["exitCode"])
    return None


def runner_started(pod: Mapping[str, Any] | None) -> bool:
    """The runner container runs or ran, so it has a log to follow."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == RUNNER_CONTAINER:
            state = status.get("state") or {}
            return "running" in state or "terminated" in state
    return False


def runner_waiting(pod: Mapping[str, Any] | None) -> str:
    """Why the runner container is not running yet, when it is more than starting (an image, a config)."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == RUNNER_CONTAINER:
            waiting = (status.get("state") or {}).get("waiting") or {}
            reason = str(waiting.get("reason") or "")
            if reason and reason not in ("ContainerCreating", "PodInitializing"):
                return f"{reason}: {waiting.get('message') or ''}".rstrip(": ")
    return ""


def job_failure(job: Mapping[str, Any]) -> str:
    """Why a job failed, from its Failed condition."""
    for item in (job.get("status") or {}).get("conditions") or []:
        if item.get("type") == "Failed" and item.get("status") == "True":
            return f"{item.get('reason') or 'Failed'}: {item.get('message') or ''}".rstrip(": ")
    return "the job failed"


def job_rows(jobs: Sequence[Mapping[str, Any]], now: datetime.datetime) -> str:
    rows = [["NAME", "STATUS", "CLUSTER", "RUNNER", "AGE"]]
    for job in sorted(jobs, key=lambda j: str(j["metadata"]["name"])):
        meta, spec, status = job["metadata"], job.get("spec") or {}, job.get("status") or {}
        cluster = (spec.get("clusterRef") or {}).get("name") or status.get("clusterName") or meta["name"]
        rows.append(
            [
                str(meta["name"]),
                str(status.get("jobStatus") or "<none>"),
                str(cluster),
                str(status.get("jobRunnerPodName") or "<none>"),
                age(meta.get("creationTimestamp"), now),
            ]
        )
    return table(rows)


# -- the local files ----------------------------------------------------------------------------------------


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


# -- the commands -------------------------------------------------------------------------------------------


def cmd_submit(api: RestClient, args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise CommandError("nothing to run: kubectl dask job submit -- python script.py [args]")
    ns = args.namespace
    files = local_files(command, Path(args.working_dir) if args.working_dir else None, Path.cwd())
    check_upload(files)
    name = args.name or default_job_name(command, uuid.uuid4().hex[:5])
    if args.cluster:
        get_cluster(api, ns, args.cluster)
    job = job_manifest(
        name, ns, command, files,
        cluster=args.cluster, workers=args.workers, image=args.image, resources=args.resources,
    )  # fmt: skip
    # The ConfigMap first, so the runner pod finds it mounted; then its owner, the job.
    configmap = files_configmap(name, ns, files)
    checked("create", "configmaps", ns, api.create, configmap)
    try:
        created = checked("create", "daskjobs.kubernetes.dask.org", ns, api.create, job)
    except CommandError:
        with contextlib.suppress(ApiError):
            api.delete(CONFIGMAP, ns, configmap["metadata"]["name"])
        raise
    checked(
        "patch", "configmaps", ns, api.patch_merge, CONFIGMAP, ns, configmap["metadata"]["name"],
        owned_by(created),
    )  # fmt: skip
    print(f"daskjob.kubernetes.dask.org/{name} created", file=sys.stderr, flush=True)
    if args.detach:
        print(name)
        return 0
    try:
        return follow(api, ns, name, args.timeout)
    except KeyboardInterrupt:
        print(
            f"\nstopped following; the job goes on (kubectl dask job logs {name} -f; kubectl dask job delete "
            f"{name})",
            file=sys.stderr,
        )
        return 130


def follow(api: RestClient, namespace: str, name: str, timeout: float) -> int:
    """Stream the runner's log until it ends; the runner's exit code, or 1 if the job failed without one."""
    deadline = time.monotonic() + timeout
    runner = job_runner_pod_name(name)
    reported = reported_waiting = ""
    while True:
        job = checked(
            "get", "daskjobs.kubernetes.dask.org", namespace, api.get, DASK_JOB_KIND, namespace, name
        )
        if job is None:
            raise CommandError(f"daskjob {name} was deleted")
        status = str((job.get("status") or {}).get("jobStatus") or "")
        if status and status != reported:
            print(f"daskjob {name}: {status}", file=sys.stderr, flush=True)
            reported = status
        pod = checked("get", "pods", namespace, api.get, POD, namespace, runner)
        if runner_started(pod):
            break
        waiting = runner_waiting(pod)
        if waiting and waiting != reported_waiting:
            print(f"pod {runner}: {waiting}", file=sys.stderr, flush=True)
            reported_waiting = waiting
        if status == "Failed":
            print(f"error: {job_failure(job)}", file=sys.stderr)
            return 1
        if time.monotonic() >= deadline:
            raise CommandError(
                f"the runner of daskjob {name} did not start in {timeout:g} s (kubectl dask job list)"
            )
        time.sleep(0.5)  # one GET of each per half second while the cluster starts
    for chunk in log_stream(api, namespace, runner):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
    while True:
        pod = checked("get", "pods", namespace, api.get, POD, namespace, runner)
        code = runner_exit_code(pod)
        if code is not None:
            return code
        if pod is None:
            raise CommandError(f"the runner pod {runner} was deleted before it finished")
        # The log ends as the container exits; its status follows within a few seconds.
        if time.monotonic() >= deadline:
            raise CommandError(f"the runner {runner} has not finished in {timeout:g} s")
        time.sleep(0.5)


def log_stream(api: RestClient, namespace: str, pod: str) -> Iterator[bytes]:
    path = POD.object_path(namespace, pod, "log")
    params = {"container": RUNNER_CONTAINER, "follow": "true"}
    try:
        yield from api.stream(path, params, read_timeout=3600.0)
    except ApiError as error:
        raise CommandError(f"cannot read the log of {pod}: {error.message or error}") from error


def cmd_logs(api: RestClient, args: argparse.Namespace) -> int:
    ns, name = args.namespace, args.name
    job = checked("get", "daskjobs.kubernetes.dask.org", ns, api.get, DASK_JOB_KIND, ns, name)
    if job is None:
        raise CommandError(f'daskjob "{name}" not found in namespace {ns} (kubectl dask job list)')
    runner = job_runner_pod_name(name)
    if args.follow:
        return follow(api, ns, name, args.timeout)
    pod = checked("get", "pods", ns, api.get, POD, ns, runner)
    if pod is None:
        raise CommandError(
            f"daskjob {name} has no runner pod yet ({(job.get('status') or {}).get('jobStatus')})"
        )
    sys.stdout.write(pod_log(api, ns, pod))
    return 0


def cmd_list(api: RestClient, args: argparse.Namespace) -> int:
    jobs, _ = checked(
        "list", "daskjobs.kubernetes.dask.org", args.namespace, api.list, DASK_JOB_KIND, args.namespace
    )
    if not jobs:
        print(f"No DaskJobs found in namespace {args.namespace}.", file=sys.stderr)
        return 0
    print(job_rows(jobs, datetime.datetime.now(datetime.UTC)))
    return 0


def cmd_delete(api: RestClient, args: argparse.Namespace) -> int:
    ns = args.namespace
    for name in args.names:
        gone = checked("delete", "daskjobs.kubernetes.dask.org", ns, api.delete, DASK_JOB_KIND, ns, name)
        if not gone:
            raise CommandError(f'daskjob "{name}" not found in namespace {ns} (kubectl dask job list)')
        print(f"daskjob.kubernetes.dask.org/{name} deleted")
    return 0


def add_parser(commands: Any, flags: argparse.ArgumentParser, non_negative: Any) -> None:
    job = commands.add_parser("job", help="run scripts as DaskJobs", parents=[flags])
    verbs = job.add_subparsers(dest="verb", required=True, metavar="VERB")

    submit = verbs.add_parser(
        "submit", parents=[flags], help="run a local script on a Dask cluster and stream its output",
        usage="kubectl dask job submit [--cluster NAME | --workers N] [options] -- python script.py [args]",
    )  # fmt: skip
    where = submit.add_mutually_exclusive_group()
    where.add_argument("--cluster", type=cluster_name, help="run on this existing DaskCluster (left running)")
    where.add_argument(
        "--workers", type=non_negative, default=1, metavar="N",
        help="run on a cluster of its own with N workers, deleted when the job ends (default 1)",
    )  # fmt: skip
    submit.add_argument("--name", type=cluster_name, help="the DaskJob's name (default: <script>-<random>)")
    submit.add_argument(
        "--image", default=DEFAULT_IMAGE, help=f"runner (and own cluster) image ({DEFAULT_IMAGE})"
    )
    submit.add_argument(
        "--resources", type=parse_resources, help="resources of the runner and the own cluster's pods"
    )
    submit.add_argument(
        "--working-dir", metavar="DIR",
        help=f"upload DIR (at most {MAX_UPLOAD_BYTES // 1024} KiB) and run the command in it; default: the "
        "command's arguments that are local files",
    )  # fmt: skip
    submit.add_argument("--detach", action="store_true", help="print the job's name and return at once")
    submit.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the runner (3600)")
    submit.add_argument("command", nargs=argparse.REMAINDER, help="-- python script.py [args]")
    submit.set_defaults(run=cmd_submit)

    logs = verbs.add_parser("logs", parents=[flags], help="the runner's log")
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="stream it; exit with the runner's code")
    logs.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the runner (3600)")
    logs.set_defaults(run=cmd_logs)

    listing = verbs.add_parser("list", parents=[flags], help="DaskJobs and their status")
    listing.set_defaults(run=cmd_list)

    delete = verbs.add_parser("delete", parents=[flags], help="delete DaskJobs (their cluster and files too)")
    delete.add_argument("names", nargs="+", metavar="NAME")
    delete.set_defaults(run=cmd_delete)
