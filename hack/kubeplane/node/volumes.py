"""A pod's volumes on the host, and each container's mounts of them.

Invariant: every volume of a pod lives in `<pod dir>/volumes/<name>` (hostPath excepted: its own path).
API-backed volumes (configMap, secret, downwardAPI, projected) are written like the kubelet's atomic
writer: files in a fresh `..<time>` directory, then the `..data` symlink swapped in one rename, so a
reader never sees half an update; they are always mounted read-only. `emptyDir` with `medium: Memory`
is a tmpfs, recorded before it is mounted and unmounted at teardown. A pod's `fsGroup` owns its
emptyDirs (setgid) and API-backed files (group-readable), as the kubelet's volume ownership does. Kinds the node cannot provide
(PVC, CSI, ...) and unresolvable sources raise `ConfigError` (CreateContainerConfigError), never a
silent skip. `container_mounts` is pure: mount targets sorted parents first, subPaths kept inside
their volume. Held by test/unit/test_process_node_volumes.py and test/e2e/test_process_node_volumes.py.
"""

from __future__ import annotations

import base64
import contextlib
import os
import posixpath
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .envvars import ConfigError, expand, field_value, resource_value
from .kubeapi import ApiError, KubeClient
from .serviceaccount import IssuedToken, request_token

JSON = dict[str, Any]
SUPPORTED = ("emptyDir", "configMap", "secret", "projected", "downwardAPI", "hostPath")
API_BACKED = ("configMap", "secret", "projected", "downwardAPI")
DEFAULT_MODE = 0o644
REFRESH_SECONDS = 60.0  # how often ConfigMap/Secret-backed files are re-read (the kubelet: ~1 min)
Payload = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)


@dataclass(frozen=True)
class Mount:
    source: str  # host path bound at target
    target: str  # mountPath, absolute
    read_only: bool
    is_file: bool = False


def volume_kind(volume: JSON) -> str:
    kinds = [k for k in volume if k != "name"]
    return kinds[0] if kinds else "emptyDir"


def check_supported(pod: JSON) -> None:
    for v in (pod.get("spec") or {}).get("volumes") or []:
        kind = volume_kind(v)
        if kind not in SUPPORTED:
            raise ConfigError(
                f'volume "{v["name"]}": {kind} volumes are not supported by the process node '
                f"(supported: {', '.join(SUPPORTED)})"
            )
        if kind == "projected":
            for src in v["projected"].get("sources") or []:
                skind = next(iter(src), "")
                if skind not in ("serviceAccountToken", "configMap", "secret", "downwardAPI"):
                    raise ConfigError(
                        f'volume "{v["name"]}": projected source {skind} is not supported by the process node'
                    )


def _clean_rel(path: str, what: str) -> str:
    norm = posixpath.normpath(path)
    if posixpath.isabs(path) or norm == ".." or norm.startswith("../"):
        raise ConfigError(f"{what} {path!r} must be a relative path inside the volume")
    return "" if norm == "." else norm


def container_mounts(
    container: JSON, sources: Mapping[str, tuple[str, str]], env: Mapping[str, str]
) -> list[Mount]:
    """`sources`: volume name -> (kind, host dir). Mounts ordered so a parent path is mounted first."""
    out: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        name = vm["name"]
        if name not in sources:
            raise ConfigError(f'volumeMount "{name}": no volume with that name in the pod')
        kind, base = sources[name]
        sub = vm.get("subPath") or ""
        if vm.get("subPathExpr"):
            sub = expand(vm["subPathExpr"], env)
        sub = _clean_rel(sub, "subPath") if sub else ""
        source = os.path.join(base, sub) if sub else base
        target = posixpath.normpath(vm["mountPath"])
        if not posixpath.isabs(target):
            raise ConfigError(f"mountPath {vm['mountPath']!r} must be absolute")
        read_only = bool(vm.get("readOnly")) or kind in API_BACKED
        out.append(Mount(source, target, read_only))
    return sorted(out, key=lambda m: m.target.count("/") if m.target != "/" else 0)


def resolve_sources(mounts: list[Mount], sources: Mapping[str, tuple[str, str]]) -> list[Mount]:
    """Makes subPath sources exist (a directory, as the kubelet does) and resolves their symlinks,
    refusing a subPath that escapes its volume."""
    roots = {os.path.realpath(base) for kind, base in sources.values() if kind != "hostPath"}
    out = []
    for m in mounts:
        src = m.source
        if not os.path.lexists(src):
            os.makedirs(src, mode=0o777, exist_ok=True)
        real = os.path.realpath(src)
        owner = next((r for r in roots if m.source.startswith(r + os.sep) or m.source == r), None)
        if owner is not None and not (real == owner or real.startswith(owner + os.sep)):
            raise ConfigError(f"subPath of {m.target} resolves outside its volume")
        out.append(Mount(real, m.target, m.read_only, os.path.isfile(real)))
    return out


def mount_script(mounts: list[Mount], read_only_root: bool, reveal: str = "") -> str:
    """Shell lines run inside the container's fresh mount namespace, before the program is exec'd:
    volumes first (their sources are resolved before anything is covered), then `reveal`, then `/`
    read-only."""
    lines = []
    for m in mounts:
        t, s = shlex.quote(m.target), shlex.quote(m.source)
        if m.is_file:
            lines.append(
                f"mkdir -p {shlex.quote(posixpath.dirname(m.target))} && {{ [ -e {t} ] || : > {t}; }}"
            )
        else:
            lines.append(f"mkdir -p {t}")
        lines.append(f"mount --bind {s} {t}")
        if m.read_only:
            lines.append(f"mount -o remount,bind,ro {t}")
    if reveal:
        lines.append(reveal)
    if read_only_root:
        lines.append("mount -o remount,bind,ro /")
    return "\n".join(lines)


# --- writing API-backed volumes ---------------------------------------------------------------------------


def write_atomically(target: Path, payload: Payload, group: int | None = None) -> bool:
    """Replace the volume's files by `payload`; False (nothing written) when they are unchanged.
    `group` (the pod's fsGroup) owns every file, which it may read whatever the mode says."""
    if group is not None:
        payload = {rel: (content, mode | 0o040) for rel, (content, mode) in payload.items()}
    target.mkdir(parents=True, exist_ok=True)
    data_link = target / "..data"
    if data_link.is_symlink() and _read_payload(target / os.readlink(data_link)) == payload:
        return False
    new_dir = Path(tempfile.mkdtemp(prefix=time.strftime("..%Y_%m_%d_%H_%M_%S."), dir=target))
    new_dir.chmod(0o755)
    for rel, (content, mode) in payload.items():
        path = new_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
        if group is not None:
            os.chown(path, -1, group)
    old = os.readlink(data_link) if data_link.is_symlink() else None
    tmp_link = target / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(new_dir.name)
    tmp_link.replace(data_link)
    tops = {rel.split("/", 1)[0] for rel in payload}
    for top in tops:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    for entry in target.iterdir():
        if not entry.name.startswith("..") and entry.name not in tops and entry.is_symlink():
            entry.unlink()
    if old:
        shutil.rmtree(target / old, ignore_errors=True)
    return True


def _read_payload(root: Path) -> Payload | None:
    if not root.is_dir():
        return None
    out: Payload = {}
    for path in root.rglob("*"):
        if path.is_file():
            out[str(path.relative_to(root))] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return out


def _items(
    data: Mapping[str, bytes], items: list[JSON] | None, mode: int, what: str, optional: bool
) -> Payload:
    if not items:
        return {k: (v, mode) for k, v in data.items()}
    out: Payload = {}
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            raise ConfigError(f"configure volume: couldn't find key {item['key']} in {what}")
        rel = _clean_rel(item["path"], "item path")
        out[rel] = (data[item["key"]], int(item.get("mode", mode)))
    return out


class PodVolumes:
    """One pod's volumes: `setup` once before its first container, `refresh` when due, `teardown` at the end."""

    def __init__(
        self,
        pod: JSON,
        pod_dir: Path,
        client: KubeClient,
        allocatable: Mapping[str, str],
        record_mount: Callable[[str], None],
        forget_mount: Callable[[str], None],
    ) -> None:
        self.pod = pod
        self.root = pod_dir / "volumes"
        self.client = client
        self.allocatable = allocatable
        self.record_mount, self.forget_mount = record_mount, forget_mount
        self.tokens: dict[tuple[str, str], IssuedToken] = {}  # (volume, path) -> last token
        self.tmpfs: list[str] = []
        self.sources: dict[str, tuple[str, str]] = {}
        self.next_refresh = 0.0
        self.ready = False
        fs_group = ((pod.get("spec") or {}).get("securityContext") or {}).get("fsGroup")
        self.fs_group: int | None = None if fs_group is None else int(fs_group)

    @property
    def spec_volumes(self) -> list[JSON]:
        return list((self.pod.get("spec") or {}).get("volumes") or [])

    def setup(self, now: float) -> None:
        check_supported(self.pod)
        for v in self.spec_volumes:
            name, kind = v["name"], volume_kind(v)
            if kind == "hostPath":
                self.sources[name] = (kind, self._host_path(v))
                continue
            vdir = self.root / name
            if kind == "emptyDir":
                self._empty_dir(vdir, v.get("emptyDir") or {})
            self.sources[name] = (kind, str(vdir))
        self.refresh(now, force=True)
        self.ready = True

    def _host_path(self, v: JSON) -> str:
        hp = v["hostPath"]
        path: str = str(hp["path"])
        kind: str = hp.get("type") or ""
        if kind == "DirectoryOrCreate":
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif kind == "FileOrCreate" and not os.path.exists(path):
            os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
            Path(path).touch(0o644)
        checks: dict[str, Callable[[str], bool]] = {
            "Directory": os.path.isdir,
            "DirectoryOrCreate": os.path.isdir,
            "File": os.path.isfile,
            "FileOrCreate": os.path.isfile,
            "Socket": lambda p: os.path.exists(p) and stat.S_ISSOCK(os.stat(p).st_mode),
            "CharDevice": lambda p: os.path.exists(p) and stat.S_ISCHR(os.stat(p).st_mode),
            "BlockDevice": lambda p: os.path.exists(p) and stat.S_ISBLK(os.stat(p).st_mode),
        }
        if kind and kind in checks and not checks[kind](path):
            raise ConfigError(f'volume "{v["name"]}": hostPath type check failed: {path} is not a {kind}')
        if not kind and not os.path.exists(path):  # an unset type mounts what is there, or a new dir
            os.makedirs(path, mode=0o755, exist_ok=True)
        return path

    def _empty_dir(self, vdir: Path, spec: JSON) -> None:
        vdir.mkdir(parents=True, exist_ok=True)
        self._own(vdir)
        if spec.get("medium") != "Memory" or str(vdir) in self.tmpfs:
            return
        options = "mode=0777"
        if spec.get("sizeLimit"):
            options += f",size={spec['sizeLimit'].removesuffix('i').replace('K', 'k')}"
        self.record_mount(str(vdir))
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(vdir)], capture_output=True, text=True
        )
        if done.returncode != 0:
            self.forget_mount(str(vdir))
            raise ConfigError(f"emptyDir medium Memory: mount tmpfs on {vdir}: {done.stderr.strip()}")
        self.tmpfs.append(str(vdir))
        self._own(vdir)

    def _own(self, vdir: Path) -> None:
        """emptyDir: writable by everyone, or group-owned by fsGroup with setgid (new files inherit it)."""
        vdir.chmod(0o777)
        if self.fs_group is not None:
            os.chown(vdir, -1, self.fs_group)
            vdir.chmod(0o2777)

    def refresh(self, now: float, force: bool = False) -> None:
        """Rewrites API-backed volumes whose content changed; requests tokens that are due."""
        if not force and now < self.next_refresh:
            return
        next_at = now + REFRESH_SECONDS
        for v in self.spec_volumes:
            kind = volume_kind(v)
            if kind not in API_BACKED:
                continue
            payload, token_due = self._payload(v, kind, now)
            write_atomically(self.root / v["name"], payload, self.fs_group)
            next_at = min([next_at, *token_due])
        self.next_refresh = next_at

    def teardown(self) -> None:
        for path in list(self.tmpfs):
            subprocess.run(["umount", "-l", path], capture_output=True)
            self.forget_mount(path)
            self.tmpfs.remove(path)

    # --- sources ------------------------------------------------------------------------------------

    def _object(self, kind: str, name: str) -> JSON | None:
        ns = self.pod["metadata"]["namespace"]
        plural = "configmaps" if kind == "configMap" else "secrets"
        try:
            return self.client.get(f"/api/v1/namespaces/{ns}/{plural}/{name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise ConfigError(f"cannot read {kind} {ns}/{name}: {e}") from e

    def _object_payload(self, kind: str, src: JSON, mode: int) -> Payload:
        name = src.get("name") if kind == "configMap" else src.get("secretName", src.get("name"))
        optional = bool(src.get("optional"))
        obj = self._object(kind, str(name))
        what = f"{kind} {self.pod['metadata']['namespace']}/{name}"
        if obj is None:
            if optional:
                return {}
            raise ConfigError(f'configure volume: {kind.lower()} "{name}" not found')
        data: dict[str, bytes] = {}
        if kind == "configMap":
            data.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        else:
            data.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        return _items(data, src.get("items"), mode, what, optional)

    def _downward_payload(self, items: list[JSON], mode: int) -> Payload:
        out: Payload = {}
        containers = {c["name"]: c for c in (self.pod.get("spec") or {}).get("containers") or []}
        for item in items:
            rel = _clean_rel(item["path"], "item path")
            if "fieldRef" in item:
                value = field_value(self.pod, item["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in item:
                ref = item["resourceFieldRef"]
                container: JSON = containers.get(ref.get("containerName", "")) or next(
                    iter(containers.values()), {}
                )
                value = resource_value(container, ref, self.allocatable)
            else:
                continue
            out[rel] = (value.encode(), int(item.get("mode", mode)))
        return out

    def _token_payload(self, volume: str, src: JSON, mode: int, now: float) -> tuple[Payload, float]:
        key = (volume, src.get("path", "token"))
        token = self.tokens.get(key)
        if token is None or now >= token.refresh_at():
            try:
                token = request_token(
                    self.client, self.pod, src.get("audience"), src.get("expirationSeconds")
                )
            except ApiError as e:
                raise ConfigError(f"failed to fetch token for the service account: {e}") from e
            self.tokens[key] = token
        rel = _clean_rel(key[1], "token path")
        return {rel: (token.token.encode(), mode)}, token.refresh_at()

    def _payload(self, v: JSON, kind: str, now: float) -> tuple[Payload, list[float]]:
        spec = v[kind] or {}
        mode = int(spec.get("defaultMode", DEFAULT_MODE))
        if kind in ("configMap", "secret"):
            return self._object_payload(kind, spec, mode), []
        if kind == "downwardAPI":
            return self._downward_payload(spec.get("items") or [], mode), []
        payload: Payload = {}
        due: list[float] = []
        for src in spec.get("sources") or []:
            if "serviceAccountToken" in src:
                part, at = self._token_payload(v["name"], src["serviceAccountToken"], mode, now)
                payload.update(part)
                due.append(at)
            elif "configMap" in src or "secret" in src:
                skind = "configMap" if "configMap" in src else "secret"
                payload.update(self._object_payload(skind, src[skind], mode))
            elif "downwardAPI" in src:
                payload.update(self._downward_payload(src["downwardAPI"].get("items") or [], mode))
        return payload, due
