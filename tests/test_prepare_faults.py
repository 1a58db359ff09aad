"""prepare_data.py when the system refuses a write (issue 28): one line, exit code 1, no wait without end, and nothing
left that trains. The refusal is real: the child runs under a file-size limit (RLIMIT_FSIZE, ``ulimit -f``), so the
first shard larger than it fails to write with EFBIG, as on a full disk or an exhausted quota."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import processes
from conftest import REPO, RUN_TIMEOUT
from fakedata import write_mnist

from project.engine.cli import main
from project.engine.data import shards


def _limit_file_size() -> None:
    limit = 40 * 1024  # below one 64 KB shard
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_refused_write_is_one_line_exit_1_and_leaves_nothing_that_trains(tmp_path: Path, monkeypatch, capsys) -> None:
    write_mnist(tmp_path / "data", n_train=600, n_test=64)
    output = tmp_path / "shards"
    command = [sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--data", "mnist"]
    command += [
        "--data.root",
        str(tmp_path / "data"),
        "--data.val_size",
        "60",
        "--output",
        str(output),
        "--chunk_bytes",
        "64KB",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    # RUN_TIMEOUT is the hang guard: before, a refused write could leave the command waiting for good.
    result = processes.run(command, RUN_TIMEOUT, env=env, preexec_fn=_limit_file_size)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if "error: " in line]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].endswith(
        f"error: cannot write the shards of {output / 'train'}: [Errno 27] File too large (disk full, quota or "
        f"file-size limit?); {output} holds no data set that trains: free space and run prepare_data.py again"
    ), lines
    assert "Traceback" not in result.stderr
    assert not (output / shards.METADATA).exists()
    # What is left does not train: the data module says so in one line.
    monkeypatch.chdir(tmp_path)
    assert main(["--data", "streaming", "--data.input_dir", str(output), "--trainer.max_epochs", "1"]) == 2
    assert "is not a complete prepared data set" in capsys.readouterr().err


def test_prepare_data_prints_its_own_lines_only(tmp_path: Path, folder_root: Path) -> None:
    # LitData's optimize prints about 30 lines per split (an invitation to its cloud among them); the run says what it
    # writes and what it wrote.
    result = processes.run(
        [sys.executable, REPO / "scripts" / "prepare_data.py", "--data", "folder", "--data.root", str(folder_root)]
        + ["--output", str(tmp_path / "s")],
        RUN_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "writing train",
        "writing val",
        "writing test",
        f"wrote {tmp_path / 's'}",
    ]
