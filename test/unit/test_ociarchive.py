"""hack/ociarchive.py: a one-layer OCI image archive that containerd imports by the name it carries."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import ociarchive


def members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_blobs_are_stored_under_their_digest_and_the_index_names_the_image(tmp_path: Path) -> None:
    (tmp_path / "pause").write_bytes(b"\x7fELF not really")
    archive = ociarchive.image_archive(
        "registry.k8s.io/pause:3.10.2", ["/pause"], [ociarchive.ImageFile(tmp_path / "pause", "/pause")]
    )
    files = members(archive)
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "registry.k8s.io/pause:3.10.2"
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "3.10.2"
    manifest = json.loads(files["blobs/sha256/" + entry["digest"].removeprefix("sha256:")])
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:")])
    assert config["config"]["Entrypoint"] == ["/pause"]
    layer = files["blobs/sha256/" + manifest["layers"][0]["digest"].removeprefix("sha256:")]
    assert members(layer) == {"pause": b"\x7fELF not really"}
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}


def test_the_same_inputs_give_the_same_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    files = [ociarchive.ImageFile(tmp_path / "a", "/bin/a")]
    first = ociarchive.image_archive("x/y:1", ["/bin/a"], files)
    (tmp_path / "a").touch()
    assert ociarchive.image_archive("x/y:1", ["/bin/a"], files) == first
