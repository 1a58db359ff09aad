"""The training recipe's flags: EMA and SWA of the weights, the learning-rate finder, the batch-size finder's refusal
on CPU."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY, quiet_trainer
from lightning.pytorch.callbacks import Callback
from PIL import Image
from safetensors.torch import load_file

from project.datamodules import MNISTDataModule
from project.engine import evaluate, export
from project.engine.callbacks.training_flags import LR_FIND_PLOT
from project.engine.checkpoint import load_model
from project.engine.cli import main as train


def _logged(run: Path, key: str) -> list[float]:
    with open(run / "metrics.csv", newline="") as file:
        return [float(row[key]) for row in csv.DictReader(file) if row.get(key)]


def _last_logged(run: Path, key: str) -> float:
    return _logged(run, key)[-1]


@pytest.mark.slow
# --model.ema_decay=0.5: the spelling of --ema_decay, in the --flag=value form.
@pytest.mark.parametrize("averaging", [["--model.ema_decay=0.5"], ["--swa_lrs", "0.01", "--swa_epoch_start", "1"]])
def test_averaged_weights_are_validated_tested_checkpointed_and_exported(
    tmp_path: Path, data_root: Path, averaging: list[str]
) -> None:
    run = tmp_path / "run"
    args = [*TINY, "--model", "mlp", "--data.root", str(data_root), "--trainer.max_epochs", "2", *averaging]
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


class RecordStepWeights(Callback):
    """Keeps a copy of the raw weights (buffers included) after every training batch: one optimizer step each."""

    weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        RecordStepWeights.weights.append({k: v.detach().clone() for k, v in module.network.state_dict().items()})


@pytest.mark.slow
def test_ema_is_the_exponential_average_of_every_steps_weights_at_the_decay_given(
    tmp_path: Path, data_root: Path
) -> None:
    run, record = tmp_path / "run", json.dumps([{"class_path": "test_training_flags.RecordStepWeights"}])
    RecordStepWeights.weights = []
    args = [*TINY, "--model", "mlp", "--data.root", str(data_root), "--trainer.max_epochs", "2"]
    args += ["--model.batch_norm", "true", "--trainer.callbacks", record]  # BatchNorm: buffers are averaged too
    assert train([*args, "--ema_decay", "0.5", "--run_dir", str(run)]) == 0
    steps = RecordStepWeights.weights
    assert len(steps) == 6  # 2 epochs of 3 steps
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # By hand: the EMA starts at the first step's weights, then ema = 0.5 * ema + (1 - 0.5) * weights at every step.
    averaged = [key for key, value in steps[0].items() if value.is_floating_point()]
    assert any(key.endswith("running_mean") for key in averaged) and any(key.endswith("weight") for key in averaged)
    for key in averaged:
        ema = steps[0][key]
        for weights in steps[1:]:
            ema = 0.5 * ema + 0.5 * weights[key]
        torch.testing.assert_close(last["state_dict"][f"network.{key}"], ema)
        assert torch.equal(last["current_model_state"][f"network.{key}"], steps[-1][key])  # the raw weights train on


class RecordEpochEndWeights(Callback):
    """Keeps a copy of the raw weights after each epoch's last training batch (in this process)."""

    weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx + 1 == trainer.num_training_batches:
            RecordEpochEndWeights.weights.append({k: v.clone() for k, v in module.network.state_dict().items()})


@pytest.mark.slow
def test_swa_averages_the_weights_of_its_epochs_at_the_annealed_learning_rate(tmp_path: Path, data_root: Path) -> None:
    run, record = tmp_path / "run", json.dumps([{"class_path": "test_training_flags.RecordEpochEndWeights"}])
    RecordEpochEndWeights.weights = []
    args = [*TINY, "--model", "mlp", "--data.root", str(data_root), "--trainer.max_epochs", "3"]
    args += ["--model.scheduler", "none", "--model.lr", "0.002", "--trainer.callbacks", record]
    assert train([*args, "--swa_lrs", "0.01", "--swa_epoch_start", "2", "--run_dir", str(run)]) == 0
    epoch_ends = RecordEpochEndWeights.weights
    assert len(epoch_ends) == 3
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(last["averaging_state"]["n_averaged"]) == 2  # epochs 2 and 3
    for key, raw in epoch_ends[2].items():
        mean = (epoch_ends[1][key] + epoch_ends[2][key]) / 2
        torch.testing.assert_close(last["state_dict"][f"network.{key}"], mean)
        assert torch.equal(last["current_model_state"][f"network.{key}"], raw)
    # Epoch 2 anneals from 0.002 (its start, as logged) to 0.01, which epoch 3 trains at.
    assert _logged(run, "lr-Adam") == pytest.approx([0.002, 0.002, 0.01])
    assert all(group["lr"] == 0.01 for group in last["optimizer_states"][0]["param_groups"])


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


@pytest.mark.slow
def test_the_batch_size_found_is_trained_with_and_kept_on_resume(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The finder's GPU path, run on CPU: only the refusal is told it has a GPU. On 360 images it stops at 8192 x 0.95.
    monkeypatch.setattr("project.engine.cli.uses_gpu", lambda accelerator: True)
    run = tmp_path / "run"
    args = [*TINY, "--model", "mlp", "--data.root", str(data_root), "--accelerator", "cpu", "--find_batch_size", "true"]
    args += ["--data.batch_size", "16", "--no_test", "true"]
    with caplog.at_level("INFO"):
        assert train([*args, "--run_dir", str(run)]) == 0
    assert "Finished batch size finder" in caplog.text
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    found = first["datamodule_hyper_parameters"]["batch_size"]
    assert found > 16 and first["global_step"] == 1  # all 360 training images in one batch
    assert not list(run.glob(".scale_batch_size*.ckpt"))  # Lightning's temporary checkpoint is gone

    caplog.clear()
    with caplog.at_level("INFO"):
        assert train(["--resume", str(run), "--trainer.max_epochs", "2"]) == 0
    assert "batch size finder" not in caplog.text  # not searched again
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["datamodule_hyper_parameters"]["batch_size"] == found and resumed["global_step"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ema_decay", "1.5"], "--ema_decay must be in (0, 1)"),
        (["--ema_decay", "0"], "--ema_decay must be in (0, 1)"),
        (["--swa_lrs", "0"], "--swa_lrs must be positive"),
        (["--swa_lrs", "0.1", "--ema_decay", "0.9"], "--ema_decay and --swa_lrs both average the weights"),
        (["--swa_lrs", "0.1", "--swa_epoch_start", "0"], "--swa_epoch_start must be positive"),
    ],
)
def test_bad_averaging_flags_are_one_line_errors(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert train([*TINY, "--model", "mlp", "--data.root", str(data_root), *args]) == 2
    assert message in capsys.readouterr().err
    shutil.rmtree(tmp_path, ignore_errors=True)
