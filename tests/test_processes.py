"""The suite's own process hygiene (tests/processes.py): what it finds, and that it ends whole groups."""

from __future__ import annotations

import subprocess
import time

import processes
import pytest


def _pids_of(pattern: str) -> list[int]:
    return [pid for pid in processes.left_running() if pattern in processes._cmdline(pid)]


def test_a_process_the_run_started_is_found_until_it_ends() -> None:
    # Started the plain way, not through processes.start: found by the mark in its inherited environment.
    stray = subprocess.Popen(["sleep", "301"])
    try:
        assert stray.pid in processes.left_running()
    finally:
        stray.kill()
        stray.wait()
    assert stray.pid not in processes.left_running()


def test_a_command_that_leaves_a_process_behind_fails_and_the_process_is_killed() -> None:
    with pytest.raises(AssertionError, match="left processes running"):
        processes.run(["sh", "-c", "sleep 302 & echo started"], timeout=60)
    deadline = time.monotonic() + 10
    while _pids_of("sleep 302") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_of("sleep 302") == []


def test_a_timeout_ends_every_process_of_the_group_not_only_the_first() -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        processes.run(["sh", "-c", "sleep 303 & sleep 304"], timeout=1)
    deadline = time.monotonic() + 10
    while (_pids_of("sleep 303") or _pids_of("sleep 304")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_of("sleep 303") == _pids_of("sleep 304") == []
