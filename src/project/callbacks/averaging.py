"""Averaged weights, on Lightning's ``WeightAveraging``: an EMA (``--ema_decay``) or SWA (``--swa_lrs``).

With either, validation, the checkpoints' ``state_dict`` (so the best checkpoint, the test, ``evaluate.py`` and
exports) hold the averaged weights; the raw ones train on, saved beside them as ``current_model_state``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging

from project.engine.api import UserError, optimizer_steps_per_epoch


class EMA(EMAWeightAveraging):
    """Lightning's EMA of the weights, which tests (and validates outside fit) what the checkpoint's ``state_dict``
    holds: the averaged weights.

    After ``fit`` Lightning's callback still holds its average, and its ``on_load_checkpoint`` would load the raw
    weights (``current_model_state``) into the model that ``trainer.test(ckpt_path="best")`` tests.
    """

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == "fit":  # resuming: the raw weights train on, the average is restored beside them
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class SWA(WeightAveraging):
    """Stochastic weight averaging: the equal average of the weights at the end of every epoch from
    ``swa_epoch_start`` on, while the learning rate anneals (cosine, over ``annealing_epochs``) to ``swa_lrs``.

    Not Lightning's ``StochasticWeightAveraging``: it swaps the average in only after the last epoch, so validation,
    the best checkpoint, the test and exports would all miss it. This is its ``WeightAveraging`` base, which averages
    the BatchNorm statistics with the weights (``use_buffers``) instead of recomputing them in an extra epoch.

    Args:
        swa_lrs: The learning rate of the first parameter group once annealed; the other groups keep their ratio to it.
        swa_epoch_start: The first averaged epoch, counted from 1, or a fraction of ``max_epochs`` (as Lightning's).
        annealing_epochs: Epochs over which the learning rate goes from its value at the start to ``swa_lrs``.
    """

    def __init__(self, swa_lrs: float, swa_epoch_start: int | float = 0.8, annealing_epochs: int = 1) -> None:
        super().__init__()  # AveragedModel's default average: the running mean of the updates
        if not swa_lrs > 0:
            raise UserError(f"--swa_lrs must be positive, got {swa_lrs}")
        if not swa_epoch_start > 0 or annealing_epochs < 0:
            raise UserError("--swa_epoch_start must be positive and --swa_annealing_epochs not negative")
        self.swa_lrs, self.swa_epoch_start, self.annealing_epochs = swa_lrs, swa_epoch_start, annealing_epochs
        self.start_lrs: list[float] = []  # each group's learning rate when SWA started: annealed from, and saved
        self._steps_per_epoch, self._first_epoch = 0, 0

    def first_epoch(self, max_epochs: int | None) -> int:
        """The first averaged epoch, counted from 0."""
        if isinstance(self.swa_epoch_start, float):
            if not max_epochs or max_epochs < 0:
                raise UserError("a fractional --swa_epoch_start needs --trainer.max_epochs; give an epoch number")
            return max(int(max_epochs * self.swa_epoch_start) - 1, 0)
        return self.swa_epoch_start - 1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        steps = optimizer_steps_per_epoch(trainer)
        if steps is None:
            raise UserError("--swa_lrs averages at every epoch's end: it needs training data of known length")
        self._steps_per_epoch = steps
        self._first_epoch = self.first_epoch(trainer.max_epochs)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        # At the epoch's last optimizer step, not at its end: that comes after its validation and checkpoint.
        if step_idx is None or (step_idx + 1) % self._steps_per_epoch:
            return False
        return (step_idx + 1) // self._steps_per_epoch - 1 >= self._first_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._set_learning_rates(trainer, 0)  # before LearningRateMonitor logs the epoch's rate

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, index: int) -> None:
        self._set_learning_rates(trainer, index)  # after the scheduler's step: the rate of this batch's step

    def _set_learning_rates(self, trainer: L.Trainer, batch_idx: int) -> None:
        progress = trainer.current_epoch + batch_idx / trainer.num_training_batches - self._first_epoch
        if progress < 0:
            return
        groups = trainer.optimizers[0].param_groups
        self.start_lrs += [group["lr"] for group in groups[len(self.start_lrs) :]]  # groups added later too
        # SWALR's cosine annealing, per batch.
        alpha = (1 - math.cos(math.pi * min(1.0, progress / self.annealing_epochs))) / 2 if self.annealing_epochs else 1
        first = groups[0].get("initial_lr", self.start_lrs[0])
        for group, start in zip(groups, self.start_lrs, strict=True):
            target = self.swa_lrs * group.get("initial_lr", start) / first  # the groups' ratios, as scheduled
            group["lr"] = target * alpha + start * (1 - alpha)

    def _averaging(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    # Before the first average there is none to validate, save or keep: the raw weights are the model.
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._averaging():
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._averaging():  # as at the start: validation updates no average
            super().on_validation_epoch_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._averaging():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Only when resuming a run that had started averaging; a test loads the state_dict, the average, as it is.
        if trainer.state.fn == "fit" and "current_model_state" in checkpoint:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._averaging():
            super().on_train_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "start_lrs": list(self.start_lrs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.start_lrs = list(state_dict.get("start_lrs", []))
