"""A rich progress bar that redraws every ``refresh_every`` batches instead of every batch."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class ThrottledRichProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar``, updated every ``refresh_every`` batches.

    The stock bar redraws and reads the logged metrics (one host sync per metric) after every batch; for a small
    model on MNIST that costs as much as the step itself.
    """

    def __init__(self, refresh_every: int = 20, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refresh_every = max(1, refresh_every)

    def _due(self, batch_idx: int, total: float | int | None) -> bool:
        done = batch_idx + 1
        return done % self.refresh_every == 0 or (total is not None and done >= total)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._due(batch_idx, self.total_train_batches):
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
        if self._due(batch_idx, self.total_val_batches_current_dataloader):
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
        if self._due(batch_idx, self.total_test_batches_current_dataloader):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
