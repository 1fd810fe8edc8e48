"""Starting and signalling container processes.

Invariant: every container process leads its own session and process group (never the node's), runs
inside its pod's network namespace, a private UTS namespace carrying the pod's hostname and a private
mount namespace (propagation private) where its volumes are bind-mounted before the program is exec'd;
it then runs under the identity `setpriv` gives it (uid, groups, capabilities) when the pod asks for one.
stdout+stderr go through one pipe to the log pump (a failed mount shows there); stdin is closed unless
the spec asks for it. Signals go to the whole process group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .logfiles import LogPump

IP = shutil.which("ip") or "/usr/sbin/ip"
UNSHARE = shutil.which("unshare")
SH = shutil.which("sh") or "/bin/sh"
HOSTNAME = shutil.which("hostname")
NSENTER = shutil.which("nsenter")


class StartError(Exception):
    """The process could not be started; the message reads like the container runtime's."""


def proc_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def resolve_executable(argv0: str, path_env: str, cwd: str) -> str | None:
    if "/" in argv0:
        candidate = argv0 if os.path.isabs(argv0) else os.path.join(cwd, argv0)
        return candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else None
    return shutil.which(argv0, path=path_env)


def program_files(argv0: str, path_env: str, cwd: str) -> list[str]:
    """The files a program needs to start: itself and, for a script, its interpreter (the venv's
    `python` leads to the base interpreter), so a non-root uid can be checked against them."""
    exe = resolve_executable(argv0, path_env, cwd)
    if exe is None:
        return []
    files = [exe]
    with contextlib.suppress(OSError), open(exe, "rb") as f:
        first = f.readline(256)
        if first.startswith(b"#!"):
            words = first[2:].decode(errors="replace").split()
            if words:
                files.append(words[0])
                if words[0].endswith("/env") and len(words) > 1:
                    found = shutil.which(words[1], path=path_env)
                    files += [found] if found else []
    if any(os.path.basename(os.path.realpath(f)).startswith("python") for f in files):
        files += [sys.base_prefix, sys.prefix]
    return files


def launch(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    netns: str | None,
    hostname: str,
    log_path: Path,
    pump: LogPump,
    setup: str = "",
    identity: Sequence[str] = (),
    mount_targets: Sequence[str] = (),
    stdin: bool = False,
) -> subprocess.Popen[bytes]:
    """`setup`: shell lines run in the container's mount namespace first (mounts); `identity`: a
    `setpriv` argv prefix the program is exec'd through; with `stdin` (the spec's `stdin: true`) its
    stdin is a pipe kept in `proc.stdin`."""
    if not argv:
        raise StartError("no command specified")
    executable = resolve_executable(argv[0], env.get("PATH", ""), cwd)
    if executable is None and any(argv[0].startswith(t.rstrip("/") + "/") for t in mount_targets):
        executable = argv[0]  # lives in a volume: found inside the container's mount namespace
    if executable is None:
        raise StartError(
            f"failed to create containerd task: failed to create shim task: OCI runtime create failed: "
            f'exec: "{argv[0]}": executable file not found in $PATH: unknown'
        )
    full: list[str] = [*identity, executable, *argv[1:]]
    if UNSHARE and HOSTNAME and netns:
        # A UTS namespace so gethostname() in the pod returns the pod's hostname, as in a container;
        # a mount namespace of its own so its volumes are seen by it alone.
        script = f'{HOSTNAME} "$0" 2>/dev/null\n'
        if setup:
            script += f"set -e\n{setup}\nset +e\n"
        script += 'exec "$@"'
        full = [
            UNSHARE,
            "--uts",
            "--mount",
            "--propagation",
            "private",
            "--",
            SH,
            "-c",
            script,
            hostname[:63],
            *full,
        ]
    elif setup or identity:
        raise StartError("volumes and securityContext need a pod network namespace and unshare(1)")
    if netns:
        full = [IP, "netns", "exec", netns, *full]
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            full,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        os.close(read_fd)
        raise StartError(f"failed to start: {e}") from e
    finally:
        os.close(write_fd)
    pump.attach(read_fd, log_path)
    return proc


def signal_group(pid: int, sig: int) -> bool:
    """Signals the process group led by `pid`; False if no such group is left."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def exit_code(returncode: int) -> int:
    """Popen's -N (killed by signal N) becomes the runtime's 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def kill_group_now(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
