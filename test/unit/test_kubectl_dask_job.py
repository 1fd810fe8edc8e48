"""`kubectl dask job` (api/kubectl_dask_job.py) without an API server: exit codes and reasons read from the
runner and the job, the list, the command line; the commands run for real in test/e2e/test_kubectl_dask_job.py.
What is uploaded and written is test/unit/test_kubectl_dask_job_spec.py."""

from __future__ import annotations

import datetime

import pytest

from dask_operator.api import kubectl_dask as plugin
from dask_operator.api import kubectl_dask_job as job

NOW = datetime.datetime(2026, 1, 2, 12, 0, 0, tzinfo=datetime.UTC)


def pod(state: dict[str, object]) -> dict[str, object]:
    return {"status": {"containerStatuses": [{"name": "job", "state": state}]}}


def test_the_exit_code_is_the_runner_containers() -> None:
    assert job.runner_exit_code(pod({"terminated": {"exitCode": 3}})) == 3
    assert job.runner_exit_code(pod({"running": {}})) is None
    assert job.runner_exit_code(None) is None
    assert job.runner_started(pod({"running": {}})) and job.runner_started(
        pod({"terminated": {"exitCode": 0}})
    )
    assert not job.runner_started(pod({"waiting": {"reason": "ContainerCreating"}}))
    assert job.runner_waiting(pod({"waiting": {"reason": "ContainerCreating"}})) == ""
    assert job.runner_waiting(pod({"waiting": {"reason": "ErrImagePull", "message": "no such image"}})) == (
        "ErrImagePull: no such image"
    )


def test_a_failed_jobs_reason_comes_from_its_condition() -> None:
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "ClusterLost",
                                         "message": "deleted"}]}}  # fmt: skip
    assert job.job_failure(failed) == "ClusterLost: deleted"
    assert job.job_failure({}) == "the job failed"


def test_list_table() -> None:
    jobs = [
        {"metadata": {"name": "b", "creationTimestamp": "2026-01-02T11:59:00Z"},
         "spec": {"clusterRef": {"name": "shared"}}, "status": {"jobStatus": "Running",
                                                                 "jobRunnerPodName": "b-runner"}},
        {"metadata": {"name": "a", "creationTimestamp": "2026-01-02T11:00:00Z"}, "spec": {}},
    ]  # fmt: skip
    lines = job.job_rows(jobs, NOW).splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "CLUSTER", "RUNNER", "AGE"]
    assert lines[1].split() == ["a", "<none>", "a", "<none>", "1h"]
    assert lines[2].split() == ["b", "Running", "shared", "b-runner", "1m"]


def test_submit_takes_everything_after_the_double_dash_as_the_command() -> None:
    args = plugin.parser().parse_args(
        ["job", "submit", "--workers", "2", "-n", "ns", "--", "python", "s.py", "-n", "3", "--workers", "x"]
    )
    assert args.workers == 2 and args.namespace == "ns"
    assert [a for a in args.command if a != "--"] == ["python", "s.py", "-n", "3", "--workers", "x"]
    with pytest.raises(SystemExit):
        plugin.parser().parse_args(["job", "submit", "--cluster", "c", "--workers", "2", "--", "python"])


class JobStatuses:
    """Answers a job GET with each status in turn (the operator records the runner's end a moment later)."""

    def __init__(self, *statuses: str) -> None:
        self.statuses = list(statuses)
        self.gets = 0

    def get(self, *_: object) -> dict[str, object]:
        self.gets += 1
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {"status": {"jobStatus": status}}


def test_submit_returns_once_the_jobs_status_records_its_end(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job.time, "sleep", lambda _: None)
    api = JobStatuses("Running", "Running", "Successful")
    job.settle(api, "ns", "squares", "Running", deadline=float("inf"))  # type: ignore[arg-type]
    assert api.gets == 3
    assert "daskjob squares: Successful" in capsys.readouterr().err
    # an operator that never records it: submit gives up at the deadline, quietly
    stuck = JobStatuses("Running")
    job.settle(stuck, "ns", "squares", "Running", deadline=0.0)  # type: ignore[arg-type]
    assert stuck.gets == 1 and capsys.readouterr().err == ""
