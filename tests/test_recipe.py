"""The training recipe's flags: EMA of the weights, the learning-rate finder, the batch-size finder's refusal on CPU."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, quiet_trainer
from PIL import Image
from safetensors.torch import load_file

from project import evaluate, export
from project.callbacks.recipe import LR_FIND_PLOT
from project.checkpoint import load_model
from project.cli import main as train
from project.datamodules import MNISTDataModule


def _last_logged(run: Path, key: str) -> float:
    with open(run / "metrics.csv", newline="") as file:
        return [float(row[key]) for row in csv.DictReader(file) if row.get(key)][-1]


@pytest.mark.slow
def test_ema_weights_are_validated_tested_checkpointed_and_exported(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "run"
    args = [*TINY, "--model", "mlp", "--data.root", str(data_root), "--trainer.max_epochs", "2", "--ema_decay", "0.5"]
    assert train([*args, "--trainer.limit_test_batches", "1.0", "--run_dir", str(run)]) == 0
    best, last = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    ema, raw = saved["state_dict"], saved["current_model_state"]
    assert any(not torch.equal(ema[key], raw[key]) for key in ema if key.startswith("network."))

    # Validation ran on the EMA weights: validating last.ckpt's state dict again gives the logged val/loss.
    data = MNISTDataModule(root=str(data_root), batch_size=16, val_size=0.1)
    model = load_model(last)
    (validated,) = quiet_trainer(limit_val_batches=2).validate(model, datamodule=data, verbose=False)
    assert validated["val/loss"] == pytest.approx(_last_logged(run, "val/loss"), rel=1e-5)
    model = load_model(last)
    model.load_state_dict(raw)
    (raw_validated,) = quiet_trainer(limit_val_batches=2).validate(model, datamodule=data, verbose=False)
    assert raw_validated["val/loss"] != pytest.approx(validated["val/loss"], rel=1e-5)

    # The test and evaluate.py use the EMA weights too; the raw ones give another loss.
    summary = json.loads((run / "summary.json").read_text())
    assert evaluate.main(["--ckpt", str(best)]) == 0
    assert json.loads((run / "eval" / "eval.json").read_text())["test_loss"] == pytest.approx(summary["test_loss"])
    raw_ckpt = tmp_path / "raw.ckpt"
    checkpoint = torch.load(best, weights_only=True)
    torch.save({**checkpoint, "state_dict": checkpoint["current_model_state"]}, raw_ckpt)
    assert evaluate.main(["--ckpt", str(raw_ckpt), "--output", str(tmp_path / "raw.json")]) == 0
    raw_loss = json.loads((tmp_path / "raw.json").read_text())["test_loss"]
    assert raw_loss != pytest.approx(summary["test_loss"], rel=1e-5)

    # Exports hold the EMA weights.
    assert export.main(["--ckpt", str(best), "--format", "safetensors"]) == 0
    exported = load_file(str(run / "export" / "best.safetensors"))
    ema_best = checkpoint["state_dict"]
    assert all(torch.equal(value, ema_best[f"network.{key}"]) for key, value in exported.items())


@pytest.mark.slow
def test_find_lr_saves_its_plot_and_applies_the_suggestion(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = [*TINY, "--model", "mlp", "--data.root", str(data_root), "--trainer.limit_train_batches", "1.0"]
    args += ["--find_lr", "apply", "--find_lr_steps", "15", "--model.lr", "0.123", "--run_dir", str(run)]
    assert train(args) == 0
    out = capsys.readouterr().out
    assert f"plot: {run / LR_FIND_PLOT}" in out and "applied" in out
    with Image.open(run / LR_FIND_PLOT) as image:
        assert image.width > 100 and image.height > 100
    suggested = float(out.split("suggests lr ")[1].split(",")[0])
    hparams = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["lr"] == pytest.approx(suggested) and suggested != pytest.approx(0.123)
    assert not list(run.glob(".lr_find*.ckpt"))  # Lightning's temporary checkpoint is gone


def test_find_batch_size_is_refused_on_cpu(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*TINY, "--model", "mlp", "--data.root", str(data_root), "--accelerator", "cpu", "--find_batch_size", "true"]
    assert train([*args, "--run_dir", str(tmp_path / "run")]) == 2
    assert "--find_batch_size needs a GPU" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ema_decay", "1.5"], "--ema_decay must be in (0, 1)"),
        (["--ema_decay", "0"], "--ema_decay must be in (0, 1)"),
    ],
)
def test_bad_averaging_flags_are_one_line_errors(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert train([*TINY, "--model", "mlp", "--data.root", str(data_root), *args]) == 2
    assert message in capsys.readouterr().err
    shutil.rmtree(tmp_path, ignore_errors=True)
