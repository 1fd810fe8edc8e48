"""Running a command inside a running container: its namespaces, env and working directory; pipes or a pty.

Invariant: the command enters the namespaces of the container's process by PID (`nsenter --target`), so
it sees whatever network, mount and UTS namespaces that pod has; it gets the container's environment
(read from /proc/<pid>/environ) and the container's working directory; it leads its own session, and
the session's process group is killed if the caller goes away before the command ends. The exit code
is the runtime's (128+N for a signal). Held by test/e2e/test_kubelet_streaming.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import shutil
import signal
import struct
import termios
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .process import proc_start_time

NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
SETSID = shutil.which("setsid") or "/usr/bin/setsid"

ReadChunk = Callable[[], Awaitable[bytes]]  # b"" at end of input
WriteChunk = Callable[[bytes], Awaitable[None]]


class ExecError(Exception):
    """The command could not be started; the message reads like the container runtime's."""


@dataclass(frozen=True)
class ContainerProcess:
    """A running container as exec sees it."""

    pid: int
    cwd: str
    env: Mapping[str, str]  # what the node resolved; /proc/<pid>/environ wins when readable


@dataclass(frozen=True)
class TerminalSize:
    width: int
    height: int


def container_env(target: ContainerProcess) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{target.pid}/environ").read_bytes()
    except OSError:
        return dict(target.env)
    env = {}
    for item in raw.split(b"\x00"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env or dict(target.env)


def resolve_in_container(pid: int, argv0: str, path_env: str, cwd: str) -> str | None:
    """Where argv0 is, as seen from the container's mount namespace (through /proc/<pid>/root)."""
    root = f"/proc/{pid}/root"
    if "/" in argv0:
        rel = argv0 if argv0.startswith("/") else os.path.join(cwd, argv0)
        return argv0 if os.access(root + rel, os.X_OK) and os.path.isfile(root + rel) else None
    for entry in path_env.split(":"):
        if not entry:
            continue
        candidate = os.path.join(entry, argv0)
        if os.path.isfile(root + candidate) and os.access(root + candidate, os.X_OK):
            return candidate
    return None


def nsenter_argv(target: ContainerProcess, command: Sequence[str]) -> list[str]:
    return [
        NSENTER,
        f"--target={target.pid}",
        "--net",
        "--mount",
        "--uts",
        "--ipc",
        f"--wd={target.cwd}",
        "--",
        *command,
    ]


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _kill_session(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


async def end_with_container(target: ContainerProcess, session_pid: int, poll: float = 0.5) -> None:
    """Kills the command's session once the container's process is gone (as its exec processes die with a
    real container), so no exec outlives its pod."""
    started = proc_start_time(target.pid)
    while proc_start_time(target.pid) == started and started is not None:
        await asyncio.sleep(poll)
    _kill_session(session_pid)


def set_window_size(fd: int, size: TerminalSize) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size.height, size.width, 0, 0))


def _check(target: ContainerProcess, command: Sequence[str], env: Mapping[str, str]) -> None:
    if not command:
        raise ExecError("command is required")
    if not Path(f"/proc/{target.pid}").exists():
        raise ExecError("container is not running")
    if resolve_in_container(target.pid, command[0], env.get("PATH", ""), target.cwd) is None:
        raise ExecError(
            "OCI runtime exec failed: exec failed: unable to start container process: "
            f'exec: "{command[0]}": executable file not found in $PATH: unknown'
        )


async def run_piped(
    target: ContainerProcess,
    command: Sequence[str],
    stdin: ReadChunk | None,
    stdout: WriteChunk | None,
    stderr: WriteChunk | None,
) -> int:
    """Runs `command` with pipes; returns its exit code once it ended and its output is drained."""
    env = container_env(target)
    _check(target, command, env)
    proc = await asyncio.create_subprocess_exec(
        *nsenter_argv(target, command),
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE if stderr else asyncio.subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )

    async def feed() -> None:
        assert stdin is not None and proc.stdin is not None
        try:
            while chunk := await stdin():
                proc.stdin.write(chunk)
                await proc.stdin.drain()
        except (ConnectionError, BrokenPipeError):
            pass
        finally:
            proc.stdin.close()

    async def pump(source: asyncio.StreamReader | None, sink: WriteChunk | None) -> None:
        if source is None or sink is None:
            return
        while chunk := await source.read(65536):
            await sink(chunk)

    helpers = [asyncio.create_task(end_with_container(target, proc.pid))]
    if stdin:
        helpers.append(asyncio.create_task(feed()))
    try:
        await asyncio.gather(pump(proc.stdout, stdout), pump(proc.stderr, stderr))
        code = await proc.wait()
    finally:
        for task in helpers:
            task.cancel()
        if proc.returncode is None:
            _kill_session(proc.pid)
            await proc.wait()
    return exit_code(code)


async def run_tty(
    target: ContainerProcess,
    command: Sequence[str],
    stdin: ReadChunk | None,
    stdout: WriteChunk | None,
    resizes: asyncio.Queue[TerminalSize | None] | None,
) -> int:
    """Runs `command` on a fresh pty (its controlling terminal); output of the terminal goes to stdout."""
    env = container_env(target)
    env.setdefault("TERM", "xterm")
    _check(target, command, env)
    master, slave = pty.openpty()
    loop = asyncio.get_running_loop()
    try:
        if resizes is not None and not resizes.empty():
            size = resizes.get_nowait()
            if size is not None:
                set_window_size(master, size)
        # setsid --ctty makes the pty the controlling terminal of the command's new session.
        proc = await asyncio.create_subprocess_exec(
            SETSID,
            "--ctty",
            *nsenter_argv(target, command),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
        )
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    output: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: every holder of the terminal's slave side has closed it
            data = b""
        if not data:
            loop.remove_reader(master)
        output.put_nowait(data)

    loop.add_reader(master, readable)

    async def feed() -> None:
        assert stdin is not None
        while chunk := await stdin():
            view = memoryview(chunk)
            while view:
                try:
                    n = os.write(master, view)
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                    continue
                view = view[n:]

    async def resize() -> None:
        assert resizes is not None
        while (size := await resizes.get()) is not None:
            set_window_size(master, size)

    async def pump() -> None:
        while data := await output.get():
            if stdout is not None:
                await stdout(data)

    helpers = [asyncio.create_task(end_with_container(target, proc.pid))]
    if stdin:
        helpers.append(asyncio.create_task(feed()))
    if resizes is not None:
        helpers.append(asyncio.create_task(resize()))
    pumping = asyncio.create_task(pump())
    helpers.append(pumping)
    try:
        code = await proc.wait()
        # What the command wrote before it ended may still be in the terminal: let it drain (bounded,
        # since a background child may keep the terminal open).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(pumping), 2.0)
        if pumping.done() and pumping.exception() is not None:
            raise pumping.exception()  # type: ignore[misc]
        return exit_code(code)
    finally:
        for task in helpers:
            task.cancel()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(master)
        os.close(master)
        if proc.returncode is None:
            _kill_session(proc.pid)
            await proc.wait()
