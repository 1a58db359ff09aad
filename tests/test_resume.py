"""``--resume``: a run continued from its checkpoint ends bit-identical to one that was never interrupted."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import TINY
from lightning.pytorch.callbacks import Callback

from project.engine.cli import main

# DeepNet has dropout and batch norm, and the loader shuffles: every source of randomness a resume must restore.
# No scheduler: a cosine schedule's length depends on max_epochs, so "2 then 4" would differ from "4" by design.
DEEPNET = ["--model", "deepnet", "--model.scheduler", "none", "--trainer.limit_train_batches", "5"]


class SignalAtStep(Callback):
    """Sends ``signum`` to this very process after training step ``step``, as ``kill`` would from outside.

    With ``rank``, only that process of a DDP run receives it.
    """

    def __init__(self, step: int, signum: int = int(signal.SIGTERM), rank: int | None = None) -> None:
        self.step, self.signum, self.rank = step, signum, rank

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)


def _run(cwd: Path, monkeypatch: pytest.MonkeyPatch, *args: str, tiny: list[str] = TINY) -> int:
    """A ``tiny`` run; a resumed one gets no such options: it continues with those in its own config.yaml."""
    monkeypatch.chdir(cwd)
    return main(list(args) if "--resume" in args else [*tiny, *args])


def _val_rows(run: Path) -> list[tuple[str, ...]]:
    with open(run / "metrics.csv", newline="") as file:
        return [
            (row["epoch"], row["step"], row["val/acc"], row["val/loss"])
            for row in csv.DictReader(file)
            if row["val/loss"]
        ]


def _straight_and_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], step: int, tiny: list[str] = TINY
) -> dict[str, Any]:
    """Run ``args`` into ``straight/``, and into ``resumed/`` until a SIGTERM after ``step`` (exit 143); return the
    checkpoint that run wrote when it stopped."""
    stop_at = json.dumps([{"class_path": "test_resume.SignalAtStep", "init_args": {"step": step}}])
    assert _run(tmp_path, monkeypatch, *args, "--run_dir", "straight", tiny=tiny) == 0
    assert _run(tmp_path, monkeypatch, *args, "--run_dir", "resumed", "--trainer.callbacks", stop_at, tiny=tiny) == 143
    return torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_training(run: Path, reference: Path) -> None:
    """Same step, same weights, buffers and optimizer state (bit for bit), same validation metrics."""
    last, expected = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True) for r in (run, reference))
    assert (last["epoch"], last["global_step"]) == (expected["epoch"], expected["global_step"])
    assert last["state_dict"].keys() == expected["state_dict"].keys()
    for key, tensor in expected["state_dict"].items():
        assert torch.equal(last["state_dict"][key], tensor), key
    for state, expected_state in zip(
        last["optimizer_states"][0]["state"].values(), expected["optimizer_states"][0]["state"].values(), strict=True
    ):
        for name, value in expected_state.items():
            assert torch.equal(torch.as_tensor(state[name]), torch.as_tensor(value)), name
    assert _val_rows(run) == _val_rows(reference)
    assert len(_val_rows(run)) == expected["epoch"] + 1  # one validation per epoch, none lost or repeated


def test_resume_after_two_epochs_is_bit_identical_to_four_epochs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    common = [*DEEPNET, "--data.root", str(data_root)]
    assert _run(tmp_path, monkeypatch, *common, "--trainer.max_epochs", "4", "--run_dir", "straight") == 0
    assert _run(tmp_path, monkeypatch, *common, "--trainer.max_epochs", "2", "--run_dir", "resumed") == 0
    # Resume by run directory and only the new limit: the rest comes from the run's own config.yaml.
    assert _run(tmp_path, monkeypatch, "--resume", "resumed", "--trainer.max_epochs", "4") == 0
    assert_same_training(tmp_path / "resumed", tmp_path / "straight")
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert (summary["epochs"], summary["global_step"], summary["interrupted"]) == (4, 20, False)
    straight = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["best_val_acc"] == straight["best_val_acc"] and summary["test_acc"] == straight["test_acc"]
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_last_checkpoint_is_the_end_of_the_run_when_val_acc_stops_improving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    # A learning rate of 1e-12 leaves the predictions (so val/acc) unchanged: only epoch 0 makes a new best.
    args = ["--data.root", str(data_root), "--model.lr", "1e-12", "--trainer.max_epochs", "3", "--run_dir", "run"]
    assert _run(tmp_path, monkeypatch, *args) == 0
    checkpoints = tmp_path / "run" / "checkpoints"
    best, last = (torch.load(checkpoints / name, weights_only=True) for name in ("best.ckpt", "last.ckpt"))
    assert best["epoch"] == 0
    assert (last["epoch"], last["global_step"]) == (2, 9)  # three epochs of three steps: what a resume continues
    assert sorted(path.name for path in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["checkpoints"] == {"best": str(checkpoints / "best.ckpt"), "last": str(checkpoints / "last.ckpt")}


@pytest.mark.parametrize(
    ("data", "stop_at_step", "batches_done"),
    [
        ("mnist", 7, 2),  # in memory, 5 steps per epoch: step 7 is the second batch of the second epoch
        ("folder", 4, 1),  # image files through a DataLoader, 3 steps per epoch: the first batch of the second
        ("folder-workers", 4, 1),  # the same with worker processes, which decode batches ahead
    ],
)
def test_resume_mid_epoch_after_a_signal_is_bit_identical(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    data_root: Path,
    folder_root: Path,
    data: str,
    stop_at_step: int,
    batches_done: int,
) -> None:
    if data == "mnist":
        source = ["--data.root", str(data_root)]
    else:
        workers = "2" if data == "folder-workers" else "0"
        source = ["--data", "folder", "--data.root", str(folder_root), "--data.cache", "never"]
        source += ["--data.num_workers", workers]
    # With the per-step cosine schedule (same max_epochs in both runs): asking for its length once loaded the data
    # too early for Lightning to restore the loader's position.
    common = [*DEEPNET, *source, "--trainer.max_epochs", "2", "--model.scheduler", "cosine"]
    interrupted = _straight_and_interrupted(tmp_path, monkeypatch, common, stop_at_step)
    assert interrupted["global_step"] == stop_at_step
    loader_state = interrupted["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == [{"epoch": 1, "batches_done": batches_done}]
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["interrupted"] and summary["signal"] == "SIGTERM" and summary["test_acc"] is None

    # Resume by checkpoint file, without the signal-sending callback of the first run.
    assert _run(tmp_path, monkeypatch, "--resume", "resumed/checkpoints/last.ckpt", "--trainer.callbacks", "[]") == 0
    assert_same_training(tmp_path / "resumed", tmp_path / "straight")


def test_resume_continues_the_wandb_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path) -> None:
    args = ["--logger", "wandb", "--data.root", str(data_root), "--run_dir", "run"]
    assert _run(tmp_path, monkeypatch, *args) == 0
    run_id = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["wandb_run_id"]
    assert isinstance(run_id, str) and run_id
    assert _run(tmp_path, monkeypatch, "--resume", "run", "--trainer.max_epochs", "2") == 0
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 6 and resumed["wandb_run_id"] == run_id
    # Offline, W&B keeps one folder per process that logged to a run, named after the run id (plus "-1" when both
    # started within the same second): both are this run.
    offline_runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2
    assert all(re.search(rf"-{run_id}(-\d+)?$", path.name) for path in offline_runs), offline_runs


@pytest.mark.parametrize(
    ("setup", "resume", "expected"),
    [
        ("none", "last", "--resume last: no run under runs"),
        ("none", "nowhere", "--resume nowhere: no such run directory or checkpoint file"),
        ("no_checkpoint", "runs/crashed", "runs/crashed/checkpoints/last.ckpt does not exist"),
        ("bare_checkpoint", "weights.ckpt", "is not a run directory (it has no config.yaml)"),
    ],
)
def test_resume_that_cannot_continue_is_one_line_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setup: str,
    resume: str,
    expected: str,
) -> None:
    if setup == "no_checkpoint":  # a run that died before its first checkpoint
        (tmp_path / "runs" / "crashed").mkdir(parents=True)
        (tmp_path / "runs" / "crashed" / "config.yaml").write_text("seed_everything: 1\n")
    elif setup == "bare_checkpoint":
        torch.save({"state_dict": {}}, tmp_path / "weights.ckpt")
    before = sorted(path for path in tmp_path.rglob("*"))
    assert _run(tmp_path, monkeypatch, "--resume", resume) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and expected in error
    assert sorted(path for path in tmp_path.rglob("*")) == before  # nothing created, nothing overwritten


def test_extending_a_cosine_run_stretches_the_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    run = tmp_path / "run"
    cosine = ["--model", "mlp", "--model.scheduler", "cosine", "--model.lr", "1e-3", "--data.root", str(data_root)]
    assert _run(tmp_path, monkeypatch, *cosine, "--trainer.max_epochs", "1", "--run_dir", str(run)) == 0
    # Resumed with more epochs: without stretching, the schedule is already at its end (learning rate 0).
    with pytest.warns(UserWarning, match="cosine schedule stretched from 3 to 9 steps"):
        assert _run(tmp_path, monkeypatch, "--resume", str(run), "--trainer.max_epochs", "3") == 0
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["lr_schedulers"][0]["lr_lambdas"][0]["total_steps"] == 9
    with open(run / "metrics.csv", newline="") as file:
        learning_rates = {int(row["step"]): float(row["lr-Adam"]) for row in csv.DictReader(file) if row["lr-Adam"]}
    # Epoch 1 starts at step 3 of 9: cosine factor 0.5 * (1 + cos(pi / 3)) = 0.75 (it would be 0 unstretched).
    assert learning_rates[3] == pytest.approx(1e-3 * 0.75)


def test_resume_after_the_backbone_was_unfrozen_is_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    # ResNet-18's default config (frozen backbone, per-step cosine schedule) unfreezing the backbone at epoch 1: the
    # new parameter group joins the schedule, and a run stopped after that resumes both exactly.
    common = ["--model", "resnet", "--model.unfreeze_at_epoch", "1", "--data", "cifar10", "--data.root", str(data_root)]
    common += ["--trainer.max_epochs", "3", "--data.image_size", "32"]  # at 224 px it takes 4 times as long
    assert _straight_and_interrupted(tmp_path, monkeypatch, common, 7)["global_step"] == 7
    assert _run(tmp_path, monkeypatch, "--resume", "resumed", "--trainer.callbacks", "[]") == 0
    assert_same_training(tmp_path / "resumed", tmp_path / "straight")
    last = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    head, backbone = last["optimizer_states"][0]["param_groups"]
    assert backbone["initial_lr"] == pytest.approx(head["initial_lr"] * 0.1)
    assert backbone["lr"] == pytest.approx(head["lr"] * 0.1, abs=1e-12)  # both at the cosine's end


@pytest.mark.slow
@pytest.mark.parametrize("averaging", [["--ema_decay", "0.9"], ["--swa_lrs", "0.05", "--swa_epoch_start", "2"]])
def test_resume_of_averaged_weights_is_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path, averaging: list[str]
) -> None:
    # Stopped in the middle of epoch 2 of 3, after SWA's first average (end of epoch 1) and before its second.
    common = [*DEEPNET, "--data.root", str(data_root), "--trainer.max_epochs", "3", *averaging]
    interrupted = _straight_and_interrupted(tmp_path, monkeypatch, common, 12)
    assert interrupted["global_step"] == 12 and "current_model_state" in interrupted
    assert _run(tmp_path, monkeypatch, "--resume", "resumed", "--trainer.callbacks", "[]") == 0
    assert_same_training(tmp_path / "resumed", tmp_path / "straight")  # state_dict: the averaged weights
    last, expected = (
        torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)
        for r in (tmp_path / "resumed", tmp_path / "straight")
    )
    for key, tensor in expected["current_model_state"].items():
        assert torch.equal(last["current_model_state"][key], tensor), key
    assert torch.equal(last["averaging_state"]["n_averaged"], expected["averaging_state"]["n_averaged"])
