"""hack/localkube as a user meets it: a second plane side by side, `down` after a crash, bad situations."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubeplane.state import PlaneState, ProcessRecord, is_same_process
from support.fixtures import REPO, KubePlane
from support.wait import wait_for

LOCALKUBE = REPO / "hack" / "localkube"


def localkube(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LOCALKUBE_STATE"}
    return subprocess.run([str(LOCALKUBE), *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def bin_dir(kube_plane: KubePlane) -> Path:
    if kube_plane.plane is None:
        pytest.skip("needs the local control plane binaries (K8S_TEST_BACKEND=local)")
    return Path(kube_plane.plane.state.bin_dir)


@pytest.fixture
def plane_name() -> Iterator[str]:
    name = f"pytest-extra-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    yield name
    localkube("down", "--name", name)  # whatever the test left behind


def test_down_after_kill_9_of_every_component_leaves_nothing_behind(
    kube_plane: KubePlane, bin_dir: Path, plane_name: str
) -> None:
    up = localkube("up", "--name", plane_name, "--bin-dir", str(bin_dir))
    assert up.returncode == 0, up.stderr
    assert "API ready" in up.stderr
    state_dir = Path(f"/dev/shm/dask-operator-kube-{plane_name}")
    assert up.stdout.strip() == f"export KUBECONFIG={state_dir}/admin.kubeconfig"
    st = PlaneState.load(state_dir)
    assert kube_plane.plane is not None
    session = kube_plane.plane.state
    assert not set(st.ports.values()) & set(session.ports.values()), "planes side by side share no port"
    assert st.index != session.index, "planes side by side share no network"
    assert {"etcd", "kube-apiserver", "kube-controller-manager"} <= set(st.processes)
    records: list[ProcessRecord] = list(st.processes.values())
    assert all(is_same_process(r) for r in records)

    for rec in records:
        os.kill(rec.pid, signal.SIGKILL)
    wait_for(lambda: not any(is_same_process(r) for r in records), timeout=10, message="kill -9 to land")

    down = localkube("down", "--name", plane_name)
    assert down.returncode == 0, down.stderr
    assert not state_dir.exists()
    assert not any(Path(f"/proc/{r.pid}").exists() and is_same_process(r) for r in records)
    assert not Path(f"/sys/class/net/{st.network.bridge}").exists()
    # Nothing of this plane is mounted any more (the node may bind-mount inside its state dir).
    assert str(state_dir) not in Path("/proc/mounts").read_text()


def test_up_without_binaries_says_how_to_build_them(plane_name: str, tmp_path: Path) -> None:
    proc = localkube("up", "--name", plane_name, "--bin-dir", str(tmp_path), timeout=30)
    assert proc.returncode == 1
    assert "build-control-plane.sh" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_up_on_a_taken_port_fails_with_a_clear_message(bin_dir: Path, plane_name: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = localkube(
            "up", "--name", plane_name, "--bin-dir", str(bin_dir), "--apiserver-port", str(port), timeout=30
        )
    assert proc.returncode == 1
    assert f"port 127.0.0.1:{port} is taken" in proc.stderr


def test_a_component_dying_at_start_up_is_reported_with_its_log(
    bin_dir: Path, plane_name: str, tmp_path: Path
) -> None:
    # A stand-in etcd that fails the way a misconfigured one would; the other binaries are real.
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "etcd").write_text("#!/bin/sh\necho 'etcd: data dir is corrupt (test)' >&2\nexit 3\n")
    (broken / "etcd").chmod(0o755)
    for b in ("kube-apiserver", "kube-controller-manager"):
        (broken / b).symlink_to(bin_dir / b)

    proc = localkube("up", "--name", plane_name, "--bin-dir", str(broken), timeout=60)

    assert proc.returncode == 1
    assert "etcd exited during start-up with code 3" in proc.stderr
    assert "data dir is corrupt (test)" in proc.stderr
    # The failed plane is a stale state dir: `up` refuses it until `down` (or --force).
    again = localkube("up", "--name", plane_name, "--bin-dir", str(broken), timeout=30)
    assert again.returncode == 1
    assert "stale state dir" in again.stderr and "down" in again.stderr
    down = localkube("down", "--name", plane_name, timeout=30)
    assert down.returncode == 0, down.stderr
    assert not Path(f"/dev/shm/dask-operator-kube-{plane_name}").exists()
