"""Gradient accumulation (``--trainer.accumulate_grad_batches N``) with clipping, the fused optimizer and resume."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import TINY, quiet_trainer
from lightning.pytorch.callbacks import Callback

from project.datamodules import MNISTDataModule
from project.engine import fastpath
from project.engine.cli import main as train
from project.models import MLP


def _fit(data_root: Path, batch_size: int, accumulate: int, steps: int = 3) -> tuple[MLP, L.Trainer]:
    L.seed_everything(0)  # the same initial weights and training order (randperm(n) of the seed: any batch size)
    data = MNISTDataModule(root=str(data_root), batch_size=batch_size, val_size=0.1)
    # No dropout, no BatchNorm: a batch's gradient is then the mean of its parts' gradients.
    model = MLP(**data.model_args(), hidden_sizes=[32], dropout=0.0, optimizer="sgd", lr=0.5, momentum=0.9)
    trainer = quiet_trainer(
        max_steps=steps, accumulate_grad_batches=accumulate, gradient_clip_val=0.05, limit_val_batches=0
    )
    fastpath.install(trainer, model, data)  # fused clipping in the fused optimizer's step
    trainer.fit(model, datamodule=data)
    return model, trainer


def test_accumulating_n_batches_equals_one_batch_of_n_times_b(data_root: Path) -> None:
    accumulated, trainer = _fit(data_root, batch_size=8, accumulate=4)
    whole, _ = _fit(data_root, batch_size=32, accumulate=1)
    assert trainer.global_step == 3 and trainer.optimizers[0].defaults["fused"]
    for (name, a), b in zip(accumulated.state_dict().items(), whole.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # Control: three steps of batches of 8 without accumulation end elsewhere.
    small, _ = _fit(data_root, batch_size=8, accumulate=1)
    assert not torch.allclose(small.network[1].weight, whole.network[1].weight, atol=1e-4)


def test_clipping_acts_on_the_accumulated_gradient(data_root: Path) -> None:
    # The fused step clips the accumulated gradient (of four batches) to norm 0.05, keeping its direction.
    model, trainer = _fit(data_root, batch_size=8, accumulate=4, steps=1)
    L.seed_everything(0)
    data = MNISTDataModule(root=str(data_root), batch_size=8, val_size=0.1)
    unclipped = MLP(**data.model_args(), hidden_sizes=[32], dropout=0.0, optimizer="sgd", lr=0.5, momentum=0.9)
    plain = quiet_trainer(max_steps=1, accumulate_grad_batches=4, limit_val_batches=0)
    plain.fit(unclipped, datamodule=data)
    L.seed_everything(0)
    start = MLP(**data.model_args(), hidden_sizes=[32], dropout=0.0)  # the initial weights of both
    clipped_step = torch.cat([(a - b).flatten() for a, b in zip(model.parameters(), start.parameters(), strict=True)])
    full_step = torch.cat([(a - b).flatten() for a, b in zip(unclipped.parameters(), start.parameters(), strict=True)])
    # SGD's first step is -lr * gradient: the clipped one has norm lr * 0.05, along the unclipped one.
    assert clipped_step.norm().item() == pytest.approx(0.5 * 0.05, rel=1e-4)
    assert full_step.norm().item() > 2 * clipped_step.norm().item()
    cosine = torch.nn.functional.cosine_similarity(clipped_step, full_step, dim=0)
    assert cosine.item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_accumulation_resumes_exactly(tmp_path: Path, data_root: Path) -> None:
    common = [*TINY, "--model", "mlp", "--data.root", str(data_root), "--trainer.accumulate_grad_batches", "2"]
    common += ["--trainer.limit_train_batches", "4", "--trainer.gradient_clip_val", "0.05", "--no_test", "true"]
    assert train([*common, "--trainer.max_epochs", "2", "--run_dir", str(tmp_path / "whole")]) == 0
    assert train([*common, "--trainer.max_epochs", "1", "--run_dir", str(tmp_path / "split")]) == 0
    assert train([*common, "--trainer.max_epochs", "2", "--resume", str(tmp_path / "split")]) == 0
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    split = torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=True)
    assert whole["global_step"] == split["global_step"] == 4  # 2 epochs x 4 batches / 2
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, split["state_dict"][key]), key


class SignalAtBatch(Callback):
    """Sends SIGTERM to this process after training batch ``batch`` of the first epoch, as ``kill`` would."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch == 0 and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_a_signal_inside_an_accumulation_window_stops_after_its_optimizer_step(tmp_path: Path, data_root: Path) -> None:
    # Batch 2 of 0..4 is the first half of the window {2, 3}: a checkpoint there would lose its gradient.
    common = [*TINY, "--model", "mlp", "--data.root", str(data_root), "--trainer.accumulate_grad_batches", "2"]
    common += ["--trainer.limit_train_batches", "5", "--trainer.max_epochs", "2", "--no_test", "true"]
    common += ["--trainer.gradient_clip_val", "0.05"]
    stop = json.dumps([{"class_path": "test_accumulation.SignalAtBatch", "init_args": {"batch": 2}}])
    assert train([*common, "--run_dir", str(tmp_path / "whole")]) == 0
    assert train([*common, "--run_dir", str(tmp_path / "split"), "--trainer.callbacks", stop]) == 143
    interrupted = torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=True)
    assert interrupted["global_step"] == 2
    loader_state = interrupted["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == [{"epoch": 0, "batches_done": 4}]
    assert train(["--resume", str(tmp_path / "split"), "--trainer.callbacks", "[]"]) == 0
    whole = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    split = torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=True)
    assert whole["global_step"] == split["global_step"] == 6  # 2 epochs x 3 steps (2 + 2 + 1 batches)
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, split["state_dict"][key]), key
