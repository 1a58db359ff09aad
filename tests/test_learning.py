"""Models really learn: scikit-learn's handwritten digits, written out as real files, reach high accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakedata import write_image_folder

from project.engine.cli import main

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _summary(runs: Path) -> dict:
    return json.loads(next(runs.glob("*/summary.json")).read_text())


@pytest.mark.slow
def test_mlp_learns_digits_from_an_image_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = write_image_folder(tmp_path / "digits", per_class=150, size=(16, 16), source="digits")
    monkeypatch.chdir(tmp_path)
    args = ["--model", "mlp", "--data", "folder", "--data.root", str(images), "--data.image_size", "16"]
    args += ["--data.image_channels", "1", "--data.hflip", "false", "--data.batch_size", "32", "--max_epochs", "8"]
    assert main([*args, *QUIET]) == 0
    summary = _summary(tmp_path / "runs")
    assert summary["best_val_acc"] > 0.9
    assert summary["test_acc"] > 0.9


@pytest.mark.slow
def test_cnn_learns_digits_from_mnist_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits_root: Path) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["--model", "cnn", "--model.channels", "[16, 32]", "--data.root", str(digits_root)]
    args += ["--data.val_size", "200", "--data.batch_size", "32", "--max_epochs", "6", "--model.lr", "0.005"]
    assert main([*args, *QUIET]) == 0
    summary = _summary(tmp_path / "runs")
    assert summary["test_acc"] > 0.93
