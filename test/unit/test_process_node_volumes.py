"""kubeplane.node.volumes, .serviceaccount and .securitycontext: the pure and file-system parts of
pod volumes, token refresh times and container identity (no API server, no mounts)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubeplane.node.envvars import ConfigError
from kubeplane.node.securitycontext import SETPRIV, identity_for, reveal_plan, reveal_script
from kubeplane.node.serviceaccount import IssuedToken, parse_time
from kubeplane.node.volumes import (
    Mount,
    check_supported,
    container_mounts,
    mount_script,
    resolve_sources,
    write_atomically,
)

POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": {}}


def pod_with(**spec: object) -> dict[str, object]:
    return {"metadata": POD["metadata"], "spec": spec}


def test_unsupported_volume_kinds_and_projected_sources_are_config_errors() -> None:
    check_supported(
        pod_with(volumes=[{"name": "a", "emptyDir": {}}, {"name": "b", "hostPath": {"path": "/x"}}])
    )
    with pytest.raises(ConfigError, match='volume "data": persistentVolumeClaim volumes are not supported'):
        check_supported(pod_with(volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}]))
    with pytest.raises(ConfigError, match="csi volumes are not supported"):
        check_supported(pod_with(volumes=[{"name": "d", "csi": {"driver": "x"}}]))
    with pytest.raises(ConfigError, match="projected source clusterTrustBundle"):
        check_supported(
            pod_with(volumes=[{"name": "t", "projected": {"sources": [{"clusterTrustBundle": {}}]}}])
        )


def test_container_mounts_sort_parents_first_force_api_volumes_read_only_and_expand_subpath_expr() -> None:
    sources = {
        "cfg": ("configMap", "/v/cfg"),
        "scratch": ("emptyDir", "/v/scratch"),
        "h": ("hostPath", "/srv"),
    }
    container = {
        "volumeMounts": [
            {"name": "cfg", "mountPath": "/data/conf/app.yaml", "subPath": "app.yaml"},
            {"name": "scratch", "mountPath": "/data/", "subPathExpr": "$(POD)/work"},
            {"name": "h", "mountPath": "/host", "readOnly": True},
        ]
    }
    mounts = container_mounts(container, sources, {"POD": "p-1"})
    assert mounts == [
        Mount("/v/scratch/p-1/work", "/data", False),
        Mount("/srv", "/host", True),
        Mount("/v/cfg/app.yaml", "/data/conf/app.yaml", True),
    ]


@pytest.mark.parametrize("sub", ["../etc", "/etc", "a/../../b"])
def test_subpath_may_not_leave_its_volume(sub: str) -> None:
    with pytest.raises(ConfigError, match="relative path inside the volume"):
        container_mounts(
            {"volumeMounts": [{"name": "v", "mountPath": "/m", "subPath": sub}]},
            {"v": ("emptyDir", "/v")},
            {},
        )


def test_mount_to_unknown_volume_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match='volumeMount "nope": no volume with that name'):
        container_mounts({"volumeMounts": [{"name": "nope", "mountPath": "/m"}]}, {}, {})


def test_resolve_sources_creates_missing_subpath_dirs_and_refuses_symlink_escapes(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "file.txt").write_text("x")
    (vol / "escape").symlink_to("/etc")
    sources = {"v": ("emptyDir", str(vol))}
    got = resolve_sources(
        [Mount(str(vol / "new/dir"), "/a", False), Mount(str(vol / "file.txt"), "/b", True)], sources
    )
    assert (vol / "new/dir").is_dir()
    assert got[0].is_file is False and got[1].is_file is True
    with pytest.raises(ConfigError, match="outside its volume"):
        resolve_sources([Mount(str(vol / "escape"), "/c", False)], sources)


def test_mount_script_binds_in_order_then_remounts_read_only() -> None:
    script = mount_script(
        [Mount("/src a", "/t", True), Mount("/f", "/etc/x.conf", False, is_file=True)], True
    )
    lines = script.splitlines()
    assert lines[:3] == ["mkdir -p /t", "mount --bind '/src a' /t", "mount -o remount,bind,ro /t"]
    assert lines[3].startswith("mkdir -p /etc && {")
    assert lines[-1] == "mount -o remount,bind,ro /"


def test_write_atomically_swaps_the_data_link_and_removes_stale_keys(tmp_path: Path) -> None:
    assert write_atomically(tmp_path, {"a": (b"1", 0o644), "dir/b": (b"2", 0o400)})
    first = os.readlink(tmp_path / "..data")
    assert (tmp_path / "a").read_text() == "1" and (tmp_path / "dir" / "b").read_text() == "2"
    assert oct((tmp_path / "dir" / "b").stat().st_mode & 0o777) == "0o400"
    assert not write_atomically(tmp_path, {"a": (b"1", 0o644), "dir/b": (b"2", 0o400)})  # unchanged
    assert write_atomically(tmp_path, {"a": (b"3", 0o644)})
    assert os.readlink(tmp_path / "..data") != first
    assert (tmp_path / "a").read_text() == "3"
    assert not (tmp_path / "dir").exists() and not (tmp_path / first).exists()


def test_fs_group_owns_written_files_and_may_read_them(tmp_path: Path) -> None:
    write_atomically(tmp_path, {"key": (b"v", 0o400)}, group=4242)
    st = (tmp_path / "key").stat()
    assert st.st_gid == 4242 and oct(st.st_mode & 0o777) == "0o440"


def test_token_is_refreshed_at_80_percent_of_its_lifetime_and_within_24h() -> None:
    t = IssuedToken("x", issued_at=1000.0, expires_at=1000.0 + 3600)
    assert t.refresh_at() == 1000.0 + 2880
    year = IssuedToken("x", issued_at=0.0, expires_at=365 * 86400.0)
    assert year.refresh_at() == 86400.0
    assert parse_time("2026-12-01T10:00:00Z") == 1796119200.0


def test_identity_applies_uid_groups_no_new_privs_and_drop_all() -> None:
    pod = pod_with(securityContext={"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000})
    container = {
        "name": "c",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
    }
    ident = identity_for(pod, container, ["/usr/bin"])
    assert ident.setpriv == (
        SETPRIV, "--reuid=1000", "--regid=3000", "--groups=2000", "--no-new-privs",
        "--inh-caps=-all", "--bounding-set=-all", "--",
    )  # fmt: skip
    assert ident.uid == 1000 and ident.read_only_root and not ident.warnings


def test_run_as_non_root_without_a_uid_is_refused_as_the_kubelet_does() -> None:
    with pytest.raises(ConfigError, match="runAsNonRoot and image will run as root"):
        identity_for(pod_with(securityContext={"runAsNonRoot": True}), {"name": "c"}, [])


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path lives under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="podenv-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_closed_directories_are_covered_and_only_needed_dirs_bound_back(open_dir: Path) -> None:
    closed = open_dir / "closed"
    (closed / "keys").mkdir(parents=True)
    (closed / "pods" / "p1" / "home").mkdir(parents=True)
    (closed / "pods" / "p1" / "prog").write_text("#!/bin/sh\n")
    closed.chmod(0o700)
    plan, blocked = reveal_plan(
        1000, [1000], [str(closed / "pods" / "p1"), str(closed / "pods" / "p1" / "prog")]
    )
    assert blocked is None
    assert plan == {str(closed): [str(closed / "pods" / "p1")]}
    script = reveal_script(plan)
    assert f"mount -t tmpfs -o mode=0755,size=1m tmpfs {closed}" in script
    assert f"mount -c --bind /proc/self/fd/3 {closed / 'pods' / 'p1'}" in script
    (closed / "pods" / "p1").chmod(0o700)  # the needed directory itself closed: nothing can help
    plan, blocked = reveal_plan(1000, [1000], [str(closed / "pods" / "p1")])
    assert blocked == str(closed / "pods" / "p1")
    ident = identity_for(
        pod_with(securityContext={"runAsUser": 1000}), {"name": "c"}, [str(closed / "pods" / "p1")]
    )
    assert ident.setpriv == () and "runAsUser 1000 not applied" in ident.warnings[0]
