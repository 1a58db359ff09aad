"""scripts/compare.py: the runs' learning curves in one PNG and a table of their final metrics, without W&B."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

from project.engine import compare
from project.engine.cli import main as train


@pytest.mark.slow
def test_compare_draws_every_run_and_tabulates_their_summaries(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = []
    for optimizer in ("sgd", "adamw"):
        run = tmp_path / optimizer
        args = [*TINY, "--model", "mlp", "--model.optimizer", optimizer, "--data.root", str(data_root)]
        assert train([*args, "--trainer.max_epochs", "2", "--run_dir", str(run)]) == 0
        runs.append(run)
    capsys.readouterr()
    output = tmp_path / "out" / "curves.png"
    assert compare.main([*map(str, runs), "--output", str(output)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == list(compare.COLUMNS)
    for run, line in zip(runs, table[1:3], strict=True):
        summary = json.loads((run / "summary.json").read_text())
        cells = line.split()
        assert cells[0] == run.name and cells[1] == summary["model"]
        assert cells[4] == f"{summary['test_acc']:.4f}" and cells[5] == f"{summary['test_loss']:.4f}"
    curves, _ = compare.read_run(runs[0])
    assert [epoch for epoch, _ in curves["val/acc"]] == [0, 1] and len(curves["train/loss_epoch"]) == 2
    with Image.open(output) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    # matplotlib's first two line colours (C0 blue, C1 orange): one line per run.
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels.astype(int) - colour).sum(axis=1) < 30).sum() > 50, colour


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.main([str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no metrics.csv" in errors[0]
