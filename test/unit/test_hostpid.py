"""test/support/hostpid.py: a pod's PID becomes the host's only for the process that provably is it."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.hostpid import candidates, container_pid, host_pid

CONTAINER = "4f" * 32
PAUSE = "9a" * 32


def proc_entry(proc: Path, pid: int, nspid: list[int], cgroup_leaf: str) -> None:
    d = proc / str(pid)
    d.mkdir()
    (d / "status").write_text(f"Name:\tpython\nPid:\t{pid}\nNSpid:\t{' '.join(map(str, nspid))}\n")
    (d / "cgroup").write_text(
        f"12:memory:/localkube-p-n0/kubepods/besteffort/pod1234/{cgroup_leaf}\n"
        f"11:pids:/localkube-p-n0/kubepods/besteffort/pod1234/{cgroup_leaf}\n"
    )


def test_only_the_containers_own_process_with_that_pid_is_found(tmp_path: Path) -> None:
    proc_entry(tmp_path, 4100, [4100, 1], PAUSE)  # the pod's pause container: also PID 1
    proc_entry(tmp_path, 4200, [4200, 1], CONTAINER)
    proc_entry(tmp_path, 4201, [4201, 7], CONTAINER)
    proc_entry(tmp_path, 4300, [4300, 7], "other" + CONTAINER[5:])  # another container's PID 7
    proc_entry(tmp_path, 7, [7], "")  # the host's own PID 7
    (tmp_path / "self").mkdir()
    assert candidates(1, CONTAINER, tmp_path) == [4200]
    assert candidates(7, CONTAINER, tmp_path) == [4201]
    assert candidates(8, CONTAINER, tmp_path) == []


def test_on_the_process_node_the_pods_pid_is_the_hosts() -> None:
    pod = {"metadata": {"name": "w"}, "status": {"containerStatuses": [{"containerID": "process://4242"}]}}
    assert host_pid(pod, 4242) == 4242
    assert container_pid(pod) == 4242


def test_a_pid_no_process_answers_to_is_an_error_not_a_guess() -> None:
    pod = {
        "metadata": {"name": "w"},
        "status": {"containerStatuses": [{"containerID": "containerd://" + "0" * 64}]},
    }
    with pytest.raises(LookupError, match="host PIDs for its PID 1"):
        container_pid(pod)
