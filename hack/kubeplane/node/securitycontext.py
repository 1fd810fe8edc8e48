"""A container's `securityContext` as the process node applies it: who the process runs as, what it may do.

Invariant: the effective pod + container settings (the container's win) become a `setpriv` prefix:
runAsUser/runAsGroup/supplementalGroups/fsGroup, `allowPrivilegeEscalation: false` (no_new_privs) and
`capabilities.drop: [ALL]` (empty bounding and inheritable sets); `readOnlyRootFilesystem` remounts `/`
read-only in the container's mount namespace (volumes stay as mounted). A non-root uid that cannot
read what it needs even so is not applied: the container runs as root and the
reason is returned, so the pod gets a Warning Event instead of a program that cannot start.
Paths the program needs behind a directory closed to that uid (the node's Python under /root, the
plane's 0700 state dir) are revealed in the container's mount namespace: the closed directory is
covered by a tmpfs and only the needed directories are bound back (so the pod sees no plane keys).
`runAsNonRoot` with uid 0 raises ConfigError, as the kubelet does. Not enforced: seccomp, AppArmor,
SELinux, capabilities.add, procMount, privileged. Held by test/unit/test_process_node_volumes.py.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .envvars import ConfigError

JSON = dict[str, Any]
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


@dataclass(frozen=True)
class Identity:
    setpriv: tuple[str, ...] = ()  # argv prefix; empty = run as the node (root)
    read_only_root: bool = False
    uid: int = 0
    reveal: dict[str, list[str]] = field(default_factory=dict)  # see reveal_plan
    warnings: tuple[str, ...] = field(default=())


def _effective(pod: JSON, container: JSON, key: str) -> Any:
    c = (container.get("securityContext") or {}).get(key)
    return c if c is not None else ((pod.get("spec") or {}).get("securityContext") or {}).get(key)


def _blocked(uid: int, gids: set[int], parts: list[str], start: int) -> str | None:
    """The first component of `parts` (from index `start`) that uid cannot traverse (dirs) or read."""
    for i in range(max(start, 1), len(parts) + 1):
        p = "/".join(parts[:i]) or "/"
        try:
            st = os.stat(p)
        except OSError:
            return p
        need = stat.S_IXOTH if stat.S_ISDIR(st.st_mode) else stat.S_IROTH
        if st.st_uid == uid:
            need <<= 6
        elif st.st_gid in gids:
            need <<= 3
        if uid != 0 and not st.st_mode & need:
            return p
    return None


def reveal_plan(
    uid: int, groups: Iterable[int], paths: Iterable[str]
) -> tuple[dict[str, list[str]], str | None]:
    """How to make `paths` reachable for `uid` in a private mount namespace: {ancestor to cover with a
    0755 tmpfs: [directories bound back under it]}; or the path no cover can fix (its own mode)."""
    gids = set(groups)
    plan: dict[str, list[str]] = {}
    for path in paths:
        real = os.path.realpath(path)
        target = real if os.path.isdir(real) else os.path.dirname(real)
        parts, tparts = real.split("/"), target.split("/")
        blocked = _blocked(uid, gids, parts, 1)
        if blocked is None:
            continue
        if len(blocked.split("/")) > len(tparts) or blocked == target:
            return {}, blocked  # the directory itself (or what is inside it) is closed to uid
        rest = _blocked(uid, gids, parts, len(tparts))
        if rest is not None:
            return {}, rest
        plan.setdefault(blocked, [])
        if target not in plan[blocked]:
            plan[blocked].append(target)
    # A cover nested in another's revealed tree is not needed twice; keep parents only.
    for cover in list(plan):
        plan[cover] = sorted(t for t in plan[cover] if not any(t.startswith(o + "/") for o in plan[cover]))
    return plan, None


def reveal_script(plan: dict[str, list[str]]) -> str:
    """Shell lines: hold each revealed dir open, cover its closed ancestor with a tmpfs, bind it back
    from the open descriptor (`mount -c`: /proc/self/fd/N must not be canonicalised to the new path)."""
    lines: list[str] = []
    for cover, targets in sorted(plan.items()):
        fds = list(range(3, 3 + len(targets)))
        lines += [f"exec {fd}< {shlex.quote(t)}" for fd, t in zip(fds, targets, strict=True)]
        lines.append(f"mount -t tmpfs -o mode=0755,size=1m tmpfs {shlex.quote(cover)}")
        for fd, t in zip(fds, targets, strict=True):
            lines += [f"mkdir -p {shlex.quote(t)}", f"mount -c --bind /proc/self/fd/{fd} {shlex.quote(t)}"]
        lines.append(" ".join(f"exec {fd}<&-;" for fd in fds).rstrip(";"))
    return "\n".join(lines)


def identity_for(pod: JSON, container: JSON, needed_paths: Iterable[str]) -> Identity:
    uid = _effective(pod, container, "runAsUser")
    gid = _effective(pod, container, "runAsGroup")
    non_root = _effective(pod, container, "runAsNonRoot")
    sc = container.get("securityContext") or {}
    pod_sc = (pod.get("spec") or {}).get("securityContext") or {}
    if non_root and (uid is None or int(uid) == 0):
        raise ConfigError(
            "container has runAsNonRoot and image will run as root "
            f"(pod: {pod['metadata']['name']}, container: {container['name']})"
        )
    drop_all = "ALL" in ((sc.get("capabilities") or {}).get("drop") or [])
    no_new_privs = sc.get("allowPrivilegeEscalation") is False
    read_only_root = bool(sc.get("readOnlyRootFilesystem"))
    argv: list[str] = []
    warnings: list[str] = []
    run_uid = 0
    if uid is not None and int(uid) != 0:
        groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
        if pod_sc.get("fsGroup") is not None:
            groups.append(int(pod_sc["fsGroup"]))
        group = int(gid) if gid is not None else 0
        reveal, blocked = reveal_plan(int(uid), [group, *groups], needed_paths)
        if blocked is None:
            run_uid = int(uid)
            argv += [f"--reuid={run_uid}", f"--regid={group}"]
            argv += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
        else:
            warnings.append(
                f"runAsUser {uid} not applied: {blocked} is not readable by uid {uid} on this node, "
                "so the container runs as root"
            )
    if no_new_privs:
        argv.append("--no-new-privs")
    if drop_all:
        argv += ["--inh-caps=-all", "--bounding-set=-all"]
    prefix = (SETPRIV, *argv, "--") if argv else ()
    return Identity(prefix, read_only_root, run_uid, reveal if run_uid else {}, tuple(warnings))
