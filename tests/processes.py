"""Every process a test starts runs in a session of its own and is ended with its whole group: on a timeout, on a
failure, and when the test is done with it. ``conftest`` checks at the end of the run that none is left.

A process started here (and everything it starts: DDP ranks, loader workers, LitServe's workers, a browser) carries
:data:`MARK` in its environment; :func:`left_running` finds them by it, orphans re-parented to init included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: In the environment of the test run and so of every process it starts (value: the pytest process's pid).
MARK = "PROJECT_TEST_RUN"
#: Every process :func:`start` started, in order (``conftest`` ends a test's own when the test is done).
STARTED: list[subprocess.Popen] = []
#: multiprocessing's helpers of the pytest process itself: they end with it.
_OWN_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


def mark_this_run() -> None:
    os.environ[MARK] = str(os.getpid())


def start(command: Sequence[str], **options: Any) -> subprocess.Popen:
    """``subprocess.Popen`` in a new session (its pid is the process group's id), with :data:`MARK` set."""
    env = options.pop("env", None)
    env = {**(os.environ if env is None else env), MARK: os.environ.get(MARK, str(os.getpid()))}
    process = subprocess.Popen(list(map(str, command)), start_new_session=True, env=env, **options)
    STARTED.append(process)
    return process


def adopt(process: subprocess.Popen) -> subprocess.Popen:
    """A process another library started in a session of its own (``start_new_session=True``): ended like ours."""
    STARTED.append(process)
    return process


def group_alive(process: subprocess.Popen) -> bool:
    return _group_alive(process.pid)


def end(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the process's group, SIGKILL to what is left after ``grace`` seconds; reaps the leader."""
    _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _group_alive(process.pid) and time.monotonic() < deadline:
        process.poll()
        time.sleep(0.05)
    _signal_group(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):  # unkillable (in the kernel): the session-end check says so
        process.wait(timeout=30)


def run(command: Sequence[str], timeout: float, **options: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(command, capture_output=True, text=True, timeout=timeout)`` in a session of its own.

    On a timeout or any other exception the whole group is killed, not only the first process. Processes of the
    group still alive a while after the first one exited (which nothing may leave behind) fail the call. The output
    goes through files, not pipes: a process left behind holding a pipe would make the wait last until the timeout.
    """
    text = options.pop("text", True)
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        process = start(command, stdout=stdout, stderr=stderr, **options)
        try:
            process.wait(timeout=timeout)
        except BaseException:
            end(process, grace=0)
            raise
        check_group_ended(process)
        outputs = []
        for file in (stdout, stderr):
            file.seek(0)
            data = file.read()
            outputs.append(data.decode(errors="replace") if text else data)
    return subprocess.CompletedProcess(process.args, process.returncode, *outputs)


def check_group_ended(process: subprocess.Popen, within: float = 30.0) -> None:
    """Fail if processes of ``process``'s group outlive it by more than ``within`` seconds (loader workers notice a
    dead parent within 5 s), after killing them."""
    deadline = time.monotonic() + within
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = describe(_members(process.pid))
    if left:
        _signal_group(process.pid, signal.SIGKILL)
        raise AssertionError(f"{process.args[:3]} exited and left processes running:\n" + "\n".join(left))


def group_members(process: subprocess.Popen) -> list[int]:
    """The live processes of ``process``'s group (its session: everything it started)."""
    return _members(process.pid)


def cmdline(pid: int) -> str:
    return _cmdline(pid)


def left_running() -> list[int]:
    """Every live process started by this test run (by :data:`MARK`), except the pytest process and its own
    multiprocessing helpers."""
    me = os.getpid()
    found = []
    for pid in _pids():
        if pid == me or _state(pid) in ("Z", "X", None):
            continue
        if _environ(pid).get(MARK) != str(me):
            continue
        if _parent(pid) == me and any(helper in _cmdline(pid) for helper in _OWN_HELPERS):
            continue
        found.append(pid)
    return found


def kill(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def describe(pids: Sequence[int]) -> list[str]:
    return [f"  {pid}: {_cmdline(pid)[:200]}" for pid in pids if _state(pid) not in ("Z", "X", None)]


# ---------------------------------------------------------------------------------------------- /proc
def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    return bool(_members(pgid))


def _members(pgid: int) -> list[int]:
    return [pid for pid in _pids() if _stat(pid)[2:3] == [str(pgid)] and _state(pid) not in ("Z", "X", None)]


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat(pid: int) -> list[str]:
    """``[state, ppid, pgrp, session, ...]`` from ``/proc/PID/stat`` (after the command name)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rpartition(")")[2].split()


def _state(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[0] if fields else None


def _parent(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, _, value in pairs}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
