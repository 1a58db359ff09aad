"""A rich progress bar that redraws a few times a second at most, and reads the loss only when it redraws."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from torch import Tensor


class ThrottledRichProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar``, redrawn every ``refresh_every`` batches but at most every ``min_interval`` s.

    The stock bar redraws after every batch: for a small model on MNIST that costs as much as the step. It also
    only shows values logged with ``prog_bar=True``, and Lightning turns those into Python numbers after every
    batch, which on a GPU waits for the GPU at every step. So the training step logs nothing to the bar; this bar
    shows the loss the step returned (``train/loss_step``), read on the host only when it redraws.

    Args:
        refresh_every: Redraw at most every this many batches (and always after the last batch of an epoch).
        min_interval: ... and at most once in this many seconds.
        **kwargs: Options of ``RichProgressBar`` (``leave``, ``theme``, ``console_kwargs``).
    """

    def __init__(self, refresh_every: int = 20, min_interval: float = 0.25, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refresh_every = max(1, refresh_every)
        self.min_interval = max(0.0, min_interval)
        self._last_redraw = -float("inf")
        self._step_loss: float | None = None

    def _due(self, batch_idx: int, total: float | int | None) -> bool:
        done = batch_idx + 1
        if total is not None and done >= total:
            return True
        if done % self.refresh_every:
            return False
        now = time.monotonic()
        if now - self._last_redraw < self.min_interval:
            return False
        self._last_redraw = now
        return True

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        if self._step_loss is not None:
            metrics = {"train/loss_step": self._step_loss, **metrics}
        return metrics

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_redraw = -float("inf")
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Disabled on every process but rank 0: the totals below are then never set up (and nothing is drawn).
        if not self.is_disabled and self._due(batch_idx, self.total_train_batches):
            loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
            if isinstance(loss, Tensor) and loss.numel() == 1:
                self._step_loss = float(loss)  # the one host sync, a few times a second at most
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.is_disabled and self._due(batch_idx, self.total_val_batches_current_dataloader):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.is_disabled and self._due(batch_idx, self.total_test_batches_current_dataloader):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
