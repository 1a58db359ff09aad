"""The epoch's training loss and accuracy, from sums kept on the device."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


class TrainingMeans(Metric):
    """The epoch's mean training loss (per sample) and accuracy: what ``MeanMetric`` and ``MulticlassAccuracy`` give,
    from three device-side sums (a few additions per step instead of their input checks and bookkeeping).

    Nothing is read on the host until :meth:`compute`, once per epoch; under DDP the sums are added across processes.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("loss_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, loss: Tensor, logits: Tensor, targets: Tensor) -> None:
        count = targets.shape[0]
        with torch.no_grad():  # in place: one kernel each, no attribute assignment
            self.loss_sum.add_(loss, alpha=count)  # the loss is the batch mean: weighted by the batch size
            self.correct.add_((logits.argmax(dim=-1) == targets).sum())
            self.count.add_(count)

    def compute(self) -> dict[str, Tensor]:
        return {"loss": self.loss_sum / self.count, "acc": self.correct / self.count}
