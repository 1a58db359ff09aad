"""The training logic for image classification, written once: loss, metrics, steps, optimizer and schedule.

Every model is an :class:`ImageClassifier` subclass whose ``__init__`` builds ``self.network``, a plain
``nn.Module`` from ``(N, *input_shape)`` images to ``(N, num_classes)`` logits. The command line passes the data
module's ``num_classes``, ``input_shape``, ``class_names`` and ``preprocessing`` in (``link_arguments``), and all
four are saved with the hyperparameters, so a checkpoint alone rebuilds the model for evaluation and prediction.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from project import fastpath
from project.compat import FastHookBookkeeping, attached_trainer
from project.models.metrics import TrainingMeans
from project.models.recipe import (
    OptimizerName,
    SchedulerName,
    fit_cosine_schedules,
    make_optimizer,
    make_scheduler,
    parameter_groups,
)


class ImageClassifier(FastHookBookkeeping, L.LightningModule):
    """Cross-entropy classification of ``(N, C, H, W)`` float images into ``num_classes`` classes.

    Args:
        num_classes: Number of classes.
        input_shape: ``(channels, height, width)`` of one input.
        class_names: Names of the classes, in label order (saved for prediction).
        preprocessing: How raw images become inputs (size, channels, mean, std; saved for prediction).
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        lr: Learning rate.
        momentum: SGD momentum (ignored by Adam and AdamW).
        weight_decay: Weight decay (decoupled for AdamW).
        decay_norm_and_bias: ``false`` exempts biases and normalization layers from the weight decay (their own
            parameter group, weight decay 0).
        scheduler: ``none``, ``step`` (StepLR), ``plateau`` (on val accuracy), ``cosine`` (per step) or
            ``warmup_cosine`` (linear warm-up for ``warmup_epochs``, then cosine, per step).
        step_size: Epochs between decays for ``step``; patience in epochs for ``plateau``.
        gamma: Decay factor for ``step`` and ``plateau``.
        warmup_epochs: Warm-up length for ``warmup_cosine``.
        label_smoothing: Label smoothing of the training loss.
        compile: Compile the network with ``torch.compile`` when training starts.
        channels_last: Use the channels-last memory format; ``None`` picks it for conv nets on a GPU.
    """

    network: nn.Module  #: built by each subclass's __init__

    #: Arguments overridden when a checkpoint rebuilds the model (its weights replace what they would load).
    restore_overrides: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        class_names: list[str] | None = None,
        preprocessing: dict[str, Any] | None = None,
        optimizer: OptimizerName = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        decay_norm_and_bias: bool = True,
        scheduler: SchedulerName = "none",
        step_size: int = 10,
        gamma: float = 0.1,
        warmup_epochs: float = 1,
        label_smoothing: float = 0.0,
        compile: bool = False,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("lr", lr), ("step_size", step_size), ("gamma", gamma)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if weight_decay < 0 or warmup_epochs < 0:
            raise ValueError("weight_decay and warmup_epochs must not be negative")
        # Plain values only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters()
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # validate_args=False: its checks wait for the GPU at every step; the labels were checked when loaded.
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        # Sums over samples, synchronized by torchmetrics: exact with shards of unequal size (Lightning's own
        # sync_dist means floor their sample counts, Lightning 2.6 issue #21859). No NaN check: it would wait for
        # the GPU at every batch, and a NaN loss should show.
        self.val_loss, self.test_loss = MeanMetric(nan_strategy="disable"), MeanMetric(nan_strategy="disable")
        self.train_means = TrainingMeans()
        # A buffer, not a float: saved in checkpoints, so a resumed run keeps its best value.
        self.register_buffer("best_val_acc", torch.tensor(0.0))

    def forward(self, images: Tensor) -> Tensor:
        return self.network(images)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        # (images, labels), or with MixUp/CutMix (images, soft targets, labels): the loss takes the soft targets
        # (cross-entropy accepts class probabilities), the accuracy the labels.
        images, targets, *labels = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        # Device-side sums, logged once per epoch; the step loss is logged from the returned value.
        self.train_means.update(loss, logits, labels[0] if labels else targets)
        return loss

    def on_train_epoch_end(self) -> None:
        if self.train_means.update_count == 0:
            return  # no training step ran this epoch
        means = self.train_means.compute()  # synchronized across processes
        self.log("train/loss_epoch", means["loss"], prog_bar=True)
        self.log("train/acc", means["acc"])
        self.train_means.reset()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "val", self.val_acc, self.val_loss)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "test", self.test_acc, self.test_loss)

    def _evaluate(
        self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy, mean_loss: MeanMetric
    ) -> dict[str, Tensor]:
        images, targets = batch
        logits = self(images)
        # Without label smoothing: comparable across runs.
        losses = nn.functional.cross_entropy(logits, targets, reduction="none")
        accuracy.update(logits, targets)
        mean_loss.update(losses)
        self.log(f"{stage}/loss", mean_loss, on_epoch=True, prog_bar=stage == "val")
        self.log(f"{stage}/acc", accuracy, on_epoch=True, prog_bar=stage == "val")
        return {"logits": logits.detach(), "targets": targets}  # for the classification dashboard

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        # compute() is cached for the epoch: logging the metric above and reading it here cost one computation.
        self.best_val_acc = torch.maximum(self.best_val_acc, self.val_acc.compute().to(self.best_val_acc))
        self.log("val/acc_best", self.best_val_acc)

    def predict_step(self, batch: Tensor | tuple[Tensor, ...], batch_idx: int) -> Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(dim=-1)

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        # Only trainable parameters: a frozen backbone is added later by the fine-tuning callback.
        params = [p for p in self.parameters() if p.requires_grad]
        fused = fastpath.fused_optimizer(attached_trainer(self), params)
        groups = parameter_groups(
            self, params, hp.lr, hp.weight_decay, hp.get("decay_norm_and_bias", True), self.lr_scales()
        )
        optimizer = make_optimizer(hp.optimizer, groups, hp.lr, hp.momentum, hp.weight_decay, fused)
        scheduler = make_scheduler(hp.scheduler, optimizer, hp.step_size, hp.gamma, hp.warmup_epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler} if scheduler else optimizer

    def lr_scales(self) -> dict[str, float]:
        """Factors of ``lr`` by parameter name (``Transfer``'s layer-wise decay); unnamed parameters train at ``lr``."""
        return {}

    def on_train_start(self) -> None:
        fit_cosine_schedules(self.trainer)

    # ------------------------------------------------------------------ memory layout and compilation
    def uses_channels_last(self, device: torch.device) -> bool:
        """Whether the network computes in channels-last (``channels_last``; by default conv nets on a GPU)."""
        if self.hparams.channels_last is not None:
            return bool(self.hparams.channels_last)
        return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in self.network.modules())

    def configure_model(self) -> None:
        # Called before the model moves to its device (and by load_from_checkpoint, with no trainer).
        trainer = attached_trainer(self)
        if self.uses_channels_last(trainer.strategy.root_device if trainer is not None else self.device):
            self.network.to(memory_format=torch.channels_last)
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.network.compile()  # unlike torch.compile(module), keeps the state_dict's keys
            self._compiled = True
