"""A run that cannot go on: a resume whose flags change the network, a checkpoint the disk refuses to store. Each is
one ``error:`` line and a non-zero exit, and nothing already saved is lost."""

from __future__ import annotations

import os
import resource
import signal
import sys
from pathlib import Path

import processes
import pytest
import torch
from conftest import RUN_TIMEOUT, TINY, TRAIN_SCRIPT

from project.engine.cli import main


def _files(run: Path) -> dict[Path, tuple[int, bytes]]:
    return {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in run.rglob("*") if path.is_file()}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path) -> Path:
    """A finished one-epoch MLP run in ``tmp_path/run``, with the working directory at ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--data.root", str(data_root), "--run_dir", "run"]) == 0
    return tmp_path / "run"


# ---------------------------------------------------------------------------------------------- resume
def test_resume_with_a_flag_that_changes_the_network_is_one_line_and_writes_nothing(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["hidden_sizes"]
    before = _files(run)
    capsys.readouterr()
    code = main(["--resume", "run", "--model.hidden_sizes", "[64]", "--trainer.max_epochs", "2"])
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    (line,) = _error_lines(stderr)
    assert "--model.hidden_sizes" in line and "[64]" in line and str(list(saved)) in line
    assert "last.ckpt" in line
    assert _files(run) == before  # no new file, nothing rewritten (config.yaml, metrics.csv, last.ckpt)


def test_resume_with_a_flag_that_keeps_the_network_goes_on(run: Path) -> None:
    assert main(["--resume", "run", "--model.lr", "0.0005", "--trainer.max_epochs", "2"]) == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


# ---------------------------------------------------------------------------------------------- a full disk
def _file_size_limit(limit: int) -> None:
    """In the child: writes past ``limit`` bytes fail with EFBIG, as on a full disk or over a quota."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of refusing the write
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def test_a_checkpoint_the_disk_refuses_is_one_line_and_keeps_the_previous_one(run: Path) -> None:
    checkpoints = run / "checkpoints"
    before = {path.name: path.read_bytes() for path in checkpoints.iterdir()}
    limit = min(len(data) for data in before.values()) // 2  # far more than any log or config file needs
    result = processes.run(
        [sys.executable, TRAIN_SCRIPT, "--resume", "run", "--trainer.max_epochs", "2"],
        RUN_TIMEOUT,
        cwd=run.parent,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        preexec_fn=lambda: _file_size_limit(limit),
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = _error_lines(result.stderr)
    assert str(checkpoints) in line and "File too large" in line and "intact" in line, line
    assert {path.name: path.read_bytes() for path in checkpoints.iterdir()} == before  # no temporary file left
