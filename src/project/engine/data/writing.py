"""When the system refuses to store a shard (disk full, quota, a file-size limit): the one-line error, and ending the
processes LitData's ``optimize`` leaves behind after a failed write."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import signal
import time
from pathlib import Path

from project.engine.errors import UserError


class WriteRefused(UserError):
    """The system refused to store a shard: no mistake of the user's, so exit code 1 (one line all the same)."""

    exit_code = 1


def end_writers() -> None:
    """End the processes ``optimize`` forked: after a failed write it raises, and leaves the other writers and their
    helpers (forked by the writers, orphaned when these exit) waiting on their queues for good. They are the forks of
    this very command: its process group and its command line."""
    for child in multiprocessing.active_children():
        child.terminate()
    forks = _forks_of_this_process()
    for pid in forks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while forks and time.monotonic() < deadline:
        time.sleep(0.05)
        forks = _forks_of_this_process()
    for pid in forks:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for child in multiprocessing.active_children():
        child.join(5)


def _forks_of_this_process() -> list[int]:
    """Processes of this process group running this process's command line, other than this one (Linux's /proc;
    nothing elsewhere)."""
    try:
        own, group = Path("/proc/self/cmdline").read_bytes(), os.getpgrp()
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != os.getpid()]
    except OSError:
        return []
    found = []
    for pid in pids:
        try:
            if os.getpgid(pid) == group and Path(f"/proc/{pid}/cmdline").read_bytes() == own:
                found.append(pid)
        except OSError:  # ended meanwhile, or not ours to look at
            continue
    return found


def write_refused(error: BaseException) -> str | None:
    """``[Errno 27] File too large``: the refused write in the writers' traceback that ``optimize`` raises, if any."""
    found = re.findall(r"^(?:OSError|IOError): (\[Errno \d+\] .*)$", str(error), flags=re.MULTILINE)
    return found[-1] if found else None
