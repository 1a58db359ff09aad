"""The soak tier: jobs that once hung only now and then, repeated on a loaded machine."""

from __future__ import annotations

import sys
from pathlib import Path

import processes
import pytest
from conftest import TINY, run_train
from fakedata import write_mnist

from project.engine import prepare

#: Runs in a row; each starts 2 DDP ranks, their loaders' workers (training, validation and test, every epoch)
#: and the test.
RUNS = 3  # about a minute each on 2 loaded cores: CI stays under its 30 minutes
#: A busy Python loop per core: the machine is as loaded as by another job.
LOAD = [sys.executable, "-c", "while True: pass"]


@pytest.mark.slow
def test_the_two_process_ddp_job_from_shards_finishes_every_time_on_a_loaded_machine(tmp_path: Path) -> None:
    # It hung under load before the loaders' workers started from a forkserver: a rank-1 validation worker stuck in
    # os.fork(), forked from a process that ran gloo's threads. A stuck worker is now a one-line error within the
    # loader timeout, never a wait without end.
    data = write_mnist(tmp_path / "mnist", n_train=200, n_test=40)
    shards = tmp_path / "shards"
    assert (
        prepare.main(
            ["--data", "mnist", "--data.root", str(data), "--data.val_size", "40"]
            + ["--output", str(shards), "--num_workers", "2", "--chunk_bytes", "4KB"]
        )
        == 0
    )
    tiny = [arg for pair in zip(TINY[::2], TINY[1::2], strict=True) if pair[0] != "--data.val_size" for arg in pair]
    args = [*tiny, "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--max_epochs", "2"]
    args += ["--data", "streaming", "--data.input_dir", str(shards), "--data.num_workers", "2"]
    args += ["--model", "deepnet", "--data.loader_timeout", "120"]
    load = [processes.start(LOAD) for _ in range(2)]
    try:
        for attempt in range(RUNS):
            result = run_train([*args, "--run_dir", f"run-{attempt}"], cwd=tmp_path, timeout=600)
            assert result.returncode == 0, f"run {attempt}:\n{result.stderr[-3000:]}"
            assert "Traceback" not in result.stderr, f"run {attempt}:\n{result.stderr[-3000:]}"
    finally:
        for process in load:
            processes.end(process, grace=0)
