"""What ``--resume`` says and does as a command: which run ``last`` is, a finished run left as it is, and a stopped run
that says how to go on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_resume import _run

#: A stop after the second step (the SIGTERM of ``kill PID``), written as a ``--trainer.callbacks`` value.
STOP = json.dumps([{"class_path": "test_resume.SignalAtStep", "init_args": {"step": 2}}])


def _files(run: Path) -> dict[str, bytes]:
    return {str(path.relative_to(run)): path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}


def test_resume_last_is_the_run_started_last_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_root: Path
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    data = ["--data.root", str(data_root)]
    assert _run(tmp_path, monkeypatch, *data, "--run_dir", "runs/older") == 0
    assert _run(tmp_path, monkeypatch, *data, "--run_dir", "runs/newer", "--trainer.callbacks", STOP) == 143
    # The older run's checkpoint is the newer file (copied, touched): the run started last is still the newer one.
    older_last = tmp_path / "runs" / "older" / "checkpoints" / "last.ckpt"
    os.utime(older_last)
    capsys.readouterr()
    assert _run(tmp_path, monkeypatch, "--resume", "last", "--trainer.callbacks", "[]", "--max_epochs", "2") == 0
    out = capsys.readouterr().out
    assert "resuming runs/newer (0 epochs done, step 2)" in out
    assert json.loads((tmp_path / "runs" / "newer" / "summary.json").read_text())["global_step"] == 6


def test_resume_last_when_the_latest_run_saved_nothing_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_root: Path
) -> None:
    assert _run(tmp_path, monkeypatch, "--data.root", str(data_root), "--run_dir", "runs/trained") == 0
    crashed = tmp_path / "runs" / "crashed"  # started after it, died before its first checkpoint
    crashed.mkdir()
    (crashed / "config.yaml").write_text("seed_everything: 1\n")
    capsys.readouterr()
    assert _run(tmp_path, monkeypatch, "--resume", "last") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "error: --resume last: the latest run, runs/crashed, stopped before its first checkpoint: nothing to resume; "
        "start it again, or --resume an earlier run by its directory"
    )


def test_a_finished_run_is_not_trained_tested_or_rewritten_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_root: Path
) -> None:
    run = tmp_path / "run"
    assert _run(tmp_path, monkeypatch, "--data.root", str(data_root), "--run_dir", "run", "--max_epochs", "2") == 0
    before = _files(run)
    capsys.readouterr()
    assert _run(tmp_path, monkeypatch, "--resume", "run") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == (
        "run has finished: 2 epochs, 6 steps (--max_epochs 2); nothing left to train. To train it further, resume "
        "with a larger --max_epochs"
    )
    assert _files(run) == before  # not one byte: no test again, no new summary or config
    assert _run(tmp_path, monkeypatch, "--resume", "run", "--max_epochs", "3") == 0  # further: it trains
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_a_stopped_run_says_how_to_continue_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_root: Path
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    args = ["--data.root", str(data_root), "--run_dir", "run", "--trainer.callbacks", STOP]
    assert _run(tmp_path, monkeypatch, *args) == 143
    out = capsys.readouterr().out
    assert "stopped by SIGTERM at epoch 0, step 2; continue it with: python scripts/train.py --resume run" in out
    assert "n/a" not in out and "None" not in out
