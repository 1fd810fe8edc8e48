"""`kubectl dask job submit|logs|list|delete`: a local script run as a DaskJob, its log streamed back.

    kubectl dask job submit [--cluster NAME | --workers N] [--working-dir DIR] -- python script.py [args]

The script (the command's local files, or the whole `--working-dir`) travels in a ConfigMap `<job>-files`
mounted read-only at the runner's working directory (kubectl_dask_job_spec.py); the ConfigMap is owned by the
DaskJob, so deleting the job deletes it. With `--cluster` the job runs on that DaskCluster (spec.clusterRef, left running); otherwise
on a cluster of its own (`--workers`, `--image`, `--resources`), which the operator deletes when the job ends.
The runner never restarts (restartPolicy Never), so its exit code is final: `submit` prints the runner's log
as it is written and exits with that code once the job's status records its end (or after 30 s).

Invariant: nothing is written before the upload is known to fit (`MAX_UPLOAD_BYTES`, paths inside the
working directory only); `submit` exits with the runner container's exit code, or 1 with the job's reason
when no runner ran. Held by test/unit/test_kubectl_dask_job.py (exit codes, reasons, the list, parsing) and
test/e2e/test_kubectl_dask_job.py (scripts run for real through kubectl).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from dask_operator.api.kubecluster.cluster import pod_log
from dask_operator.api.kubecluster.kinds import POD
from dask_operator.api.kubectl_calls import CommandError, checked, get_cluster
from dask_operator.api.kubectl_dask_create import cluster_name, parse_resources
from dask_operator.api.kubectl_dask_job_spec import (
    MAX_UPLOAD_BYTES,
    RUNNER_CONTAINER,
    check_upload,
    default_job_name,
    files_configmap,
    job_manifest,
    local_files,
    owned_by,
)
from dask_operator.api.kubectl_table import age, table
from dask_operator.api.v1 import (
    DASK_JOB,
    DEFAULT_IMAGE,
    GROUP,
    VERSION,
    job_runner_pod_name,
)
from dask_operator.runtime.client import ApiError
from dask_operator.runtime.client import Client as RestClient
from dask_operator.runtime.kinds import CONFIGMAP, Kind

DASK_JOB_KIND = Kind(GROUP, VERSION, DASK_JOB.kind, DASK_JOB.plural)


# -- pure: reading the runner and the jobs ------------------------------------------------------------------


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
            settle(api, namespace, name, reported, time.monotonic() + FINAL_STATUS_SECONDS)
            return code
        if pod is None:
            raise CommandError(f"the runner pod {runner} was deleted before it finished")
        # The log ends as the container exits; its status follows within a few seconds.
        if time.monotonic() >= deadline:
            raise CommandError(f"the runner {runner} has not finished in {timeout:g} s")
        time.sleep(0.5)


# How long `submit` waits, after the runner ended, for the operator to record the job's end on its status.
FINAL_STATUS_SECONDS = 30.0
FINAL_STATUSES = frozenset({"Successful", "Failed"})


def settle(api: RestClient, namespace: str, name: str, reported: str, deadline: float) -> None:
    """Wait until the job's status says it ended, so that what follows `submit` (a `list`, a script's next
    step) sees the job's end; the runner's status reaches the operator a moment after its exit code reaches
    us (seconds on a busy node). Prints the final status; gives up quietly at `deadline`."""
    while True:
        job = checked(
            "get", "daskjobs.kubernetes.dask.org", namespace, api.get, DASK_JOB_KIND, namespace, name
        )
        status = str(((job or {}).get("status") or {}).get("jobStatus") or "")
        if status in FINAL_STATUSES or job is None or time.monotonic() >= deadline:
            if status and status != reported:
                print(f"daskjob {name}: {status}", file=sys.stderr, flush=True)
            return
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
