"""Stop a run whose loss became NaN or infinite, before a checkpoint can save the broken weights."""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from project.engine import rundir


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step. The CLI exits with code 1."""


class NonFiniteLossCheck(Callback):
    """Raise :class:`NonFiniteLossError` naming the first step whose training loss is not finite.

    Reading a GPU value on the host waits for the GPU, so the losses are only collected (as device tensors) and
    checked together every ``every_n_steps`` steps, and always before validation
    and before any checkpoint is written: a checkpoint never holds weights trained past a non-finite loss, and
    the error names the first bad step however late it is found. Under DDP the ranks agree with one all-reduce
    per check, so they all stop together.

    Args:
        every_n_steps: Steps between checks.
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = max(1, every_n_steps)
        self._losses: list[torch.Tensor] = []
        self._where: list[tuple[int, int, int]] = []  # (global step, epoch, batch) of each collected loss

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return  # the step was skipped (training_step returned None)
        # global_step already counts this batch's optimizer step: the batch ran at global_step - 1. Lightning hands
        # over a detached copy of the loss; any reshaping waits for the check (no tensor op per step).
        self._losses.append(loss.detach() if loss.requires_grad else loss)
        self._where.append((trainer.global_step - 1, trainer.current_epoch, batch_idx))
        if len(self._losses) >= self.every_n_steps:
            self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.check(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def check(self, trainer: L.Trainer) -> None:
        """Raise if any loss collected since the last check is not finite (on any rank)."""
        if not self._losses:  # every rank has collected as many losses, so all of them return here together
            return
        bad = torch.stack([loss.reshape(()) for loss in self._losses]).isfinite().logical_not().nonzero()
        first = int(bad[0]) if len(bad) else -1
        where, values = self._where, self._losses
        self._losses, self._where = [], []
        if trainer.world_size > 1:
            # All ranks must raise together, or the others wait forever in the next collective.
            flag = torch.tensor(int(first >= 0), device=trainer.strategy.root_device)
            if int(trainer.strategy.reduce(flag, reduce_op="max")) and first < 0:
                raise NonFiniteLossError("the training loss became non-finite on another rank: see its log for where")
        if first < 0:
            return
        step, epoch, batch = where[first]
        message = (
            f"the training loss is {float(values[first])} at step {step} (epoch {epoch}, batch {batch}): training "
            "diverged; lower --model.lr or keep --trainer.gradient_clip_val on"
        )
        last = rundir.last_checkpoint_path(trainer)
        if os.path.isfile(last):
            message += f"; the last good checkpoint is {last}"
        raise NonFiniteLossError(message)
