"""Write a one-layer OCI image archive from files on disk, with no daemon and no registry.

Invariant: the archive is an OCI image layout whose index names the image (`io.containerd.image.name` and
`org.opencontainers.image.ref.name`), every blob is stored under its own sha256 digest, and the same inputs give
byte-identical archives (file times and owners are fixed). Held by test/unit/test_ociarchive.py.

Usage: python3 hack/ociarchive.py --name registry.k8s.io/pause:3.10 --entrypoint /pause \
           --file /path/to/pause:/pause --out pause.tar
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class ImageFile:
    """A file on the host and the absolute path it takes in the image."""

    source: Path
    target: str


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def layer_tar(files: list[ImageFile]) -> bytes:
    """An uncompressed layer holding each file at its target path, executable, owned by root, time 0."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in sorted(files, key=lambda f: f.target):
            _add_bytes(tar, f.target.lstrip("/"), f.source.read_bytes(), mode=0o755)
    return out.getvalue()


def image_archive(name: str, entrypoint: list[str], files: list[ImageFile]) -> bytes:
    """The OCI layout tarball of a linux/amd64 image made of one layer of `files`."""
    layer_digest, layer = _blob(layer_tar(files))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_bytes = _blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": LAYER_TYPE, "digest": layer_digest, "size": len(layer)}],
    }
    manifest_digest, manifest_bytes = _blob(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST_TYPE,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rpartition(":")[2],
                },
            }
        ],
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        for digest, data in sorted(
            {layer_digest: layer, config_digest: config_bytes, manifest_digest: manifest_bytes}.items()
        ):
            _add_bytes(tar, "blobs/sha256/" + digest.removeprefix("sha256:"), data)
    return out.getvalue()


def _image_file(spec: str) -> ImageFile:
    source, sep, target = spec.rpartition(":")
    if not sep or not target.startswith("/"):
        raise argparse.ArgumentTypeError(f"--file wants SOURCE:/ABSOLUTE/TARGET, got {spec!r}")
    return ImageFile(Path(source), target)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--name", required=True, help="the image's full name with its tag")
    parser.add_argument("--entrypoint", required=True, action="append", help="repeat for each argument")
    parser.add_argument("--file", required=True, action="append", type=_image_file, dest="files")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    args.out.write_bytes(image_archive(args.name, args.entrypoint, args.files))


if __name__ == "__main__":
    main()
