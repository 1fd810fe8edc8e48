"""What `kubectl dask job submit` uploads and writes (api/kubectl_dask_job_spec.py): the local files, the
ConfigMap holding them, the DaskJob; sent to a real API server in test/e2e/test_kubectl_dask_job.py."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from dask_operator.api import kubectl_dask_job_spec as job
from dask_operator.api.kubectl_calls import CommandError


def test_the_commands_local_files_are_uploaded_and_nothing_outside(tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text("print(1)\n")
    (tmp_path / "data.csv").write_text("a,b\n")
    outside = tmp_path.parent / "outside.py"
    outside.write_text("x")
    files = job.local_files(
        ["python", "script.py", "--input", "data.csv", "../outside.py", "3"], None, tmp_path
    )
    assert files == {"script.py": b"print(1)\n", "data.csv": b"a,b\n"}


def test_a_working_directory_is_uploaded_whole_without_caches(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("X = 1\n")
    (tmp_path / "main.py").write_text("import pkg.mod\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "main.pyc").write_bytes(b"\0")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    files = job.local_files(["python", "main.py"], tmp_path, Path("/nowhere"))
    assert sorted(files) == ["main.py", "pkg/mod.py"]


def test_an_upload_over_the_limit_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * 4000)  # binary: base64 in the ConfigMap
    with pytest.raises(CommandError, match=r"more than \d+ \(largest: big.bin\)"):
        job.local_files(["python", "x.py"], tmp_path, tmp_path)
    assert job.files_size({"a": b"\xff" * 3}) == 4 and job.files_size({"a": b"abc"}) == 3


def test_the_configmap_holds_text_as_data_binary_as_binarydata_and_the_volume_restores_paths() -> None:
    files = {"pkg/mod.py": b"X = 1\n", "blob.bin": b"\xff\x00"}
    configmap = job.files_configmap("run-1", "ns", files)
    assert configmap["metadata"]["name"] == "run-1-files"
    assert configmap["binaryData"] == {"0000.blob.bin": base64.b64encode(b"\xff\x00").decode()}
    assert configmap["data"] == {"0001.mod.py": "X = 1\n"}
    manifest = job.job_manifest("run-1", "ns", ["python", "pkg/mod.py"], files, workers=2)
    pod = manifest["spec"]["job"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (volume,) = pod["volumes"]
    assert volume["configMap"] == {
        "name": "run-1-files",
        "items": [{"key": "0000.blob.bin", "path": "blob.bin"}, {"key": "0001.mod.py", "path": "pkg/mod.py"}],
    }
    (runner,) = pod["containers"]
    assert runner["workingDir"] == job.JOB_FILES_MOUNT == runner["volumeMounts"][0]["mountPath"]
    assert runner["args"] == ["python", "pkg/mod.py"]
    assert manifest["spec"]["cluster"]["spec"]["worker"]["replicas"] == 2
    assert "clusterRef" not in manifest["spec"]


def test_on_an_existing_cluster_the_job_refers_to_it_and_brings_none() -> None:
    manifest = job.job_manifest("run-2", "ns", ["python", "a.py"], {"a.py": b""}, cluster="shared")
    assert manifest["spec"]["clusterRef"] == {"name": "shared"}
    assert "cluster" not in manifest["spec"]


def test_the_job_owns_its_configmap() -> None:
    created = {"metadata": {"name": "run-1", "uid": "u-1"}}
    (owner,) = job.owned_by(created)["metadata"]["ownerReferences"]
    assert owner == {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskJob", "name": "run-1", "uid": "u-1"}


def test_default_names_come_from_the_script_and_are_valid_cluster_names() -> None:
    assert job.default_job_name(["python", "My_Script.py", "3"], "ab12c") == "my-script-ab12c"
    assert job.default_job_name(["python", "-c", "print(1)"], "ab12c") == "python-ab12c"
    assert job.default_job_name(["python", "2fast.py"], "ab12c") == "fast-ab12c"
    assert len(job.default_job_name(["python", "x" * 80 + ".py"], "ab12c")) <= 53
