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
from torch.nn import functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from project.engine.api import Batch, Preprocessing
from project.models.metrics import TrainingMeans
from project.models.optimization import (
    OptimizerName,
    SchedulerName,
    fit_cosine_schedules,
    make_optimizer,
    make_scheduler,
    parameter_groups,
)


class ImageClassifier(L.LightningModule):
    """Cross-entropy classification of ``(N, C, H, W)`` float images into ``num_classes`` classes.

    A subclass builds ``self.network`` in ``__init__``; to change the loss it overrides :meth:`loss`; a model with
    pretrained weights says what input they expect in :meth:`pretrained_preprocessing`.

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
        label_smoothing: Label smoothing of the loss (:meth:`loss`: in training and in every logged loss).
        compile: Compile the network with ``torch.compile`` (applied by the engine when training starts).
        channels_last: Compute in the channels-last memory format; ``None`` lets the engine pick it for conv nets on
            a GPU.
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

    @classmethod
    def pretrained_preprocessing(cls, **init_args: Any) -> Preprocessing | None:
        """The input size and normalization this model's pretrained weights expect, given its constructor
        arguments; ``None`` (the default: no pretrained weights) lets the data set choose.

        The command line asks it: ``--data.image_size auto`` and ``--data.normalize auto`` become what it returns.
        """
        return None

    def frozen_head(self) -> nn.Module | None:
        """The network's last layer when every layer before it is a fixed function in training (frozen, BatchNorm in
        evaluation mode, no dropout), else ``None`` (the default). The engine may then compute what enters it once
        per image and train it on that (``--frozen_features``)."""
        return None

    def forward(self, images: Tensor) -> Tensor:
        return self.network(images)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The loss of each sample, ``(N,)``: the one loss, which trains and which every logged loss reports.

        ``targets`` are class indices ``(N,)``, or class probabilities ``(N, num_classes)`` for batches mixed by
        MixUp/CutMix. Override it to change the loss everywhere: training, ``val/loss``, ``test/loss``, the epoch
        means (exact under DDP) and ``evaluate.py``. Label smoothing is part of it, so it is in every logged loss.
        """
        return F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing, reduction="none")

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        logits = self(batch.images)
        loss = self.loss(logits, batch.targets).mean()
        # Device-side sums, logged once per epoch; the step loss is logged from the returned value.
        self.train_means.update(loss, logits, batch.labels)
        return loss

    def on_train_epoch_end(self) -> None:
        if self.train_means.update_count == 0:
            return  # no training step ran this epoch
        means = self.train_means.compute()  # synchronized across processes
        self.log("train/loss_epoch", means["loss"], prog_bar=True)
        self.log("train/acc", means["acc"])
        self.train_means.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "val", self.val_acc, self.val_loss)

    def test_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "test", self.test_acc, self.test_loss)

    def _evaluate(
        self, batch: Batch, stage: str, accuracy: MulticlassAccuracy, mean_loss: MeanMetric
    ) -> dict[str, Tensor]:
        logits = self(batch.images)
        losses = self.loss(logits, batch.targets)
        # Per sample: exact means over shards of any size (a loss that returns the batch mean counts per sample too).
        mean_loss.update(losses.expand(batch.labels.shape[0]) if losses.ndim == 0 else losses)
        accuracy.update(logits, batch.labels)
        self.log(f"{stage}/loss", mean_loss, on_epoch=True, prog_bar=stage == "val")
        self.log(f"{stage}/acc", accuracy, on_epoch=True, prog_bar=stage == "val")
        return {"logits": logits.detach(), "targets": batch.labels}  # for the classification dashboard

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        # compute() is cached for the epoch: logging the metric above and reading it here cost one computation.
        self.best_val_acc = torch.maximum(self.best_val_acc, self.val_acc.compute().to(self.best_val_acc))
        self.log("val/acc_best", self.best_val_acc)

    def predict_step(self, batch: Batch | Tensor, batch_idx: int) -> Tensor:
        images = batch.images if isinstance(batch, Batch) else batch
        return self(images).softmax(dim=-1)

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        # Only trainable parameters: a frozen backbone is added later by the fine-tuning callback.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = parameter_groups(
            self, params, hp.lr, hp.weight_decay, hp.get("decay_norm_and_bias", True), self.lr_scales()
        )
        optimizer = make_optimizer(hp.optimizer, groups, hp.lr, hp.momentum, hp.weight_decay)
        scheduler = make_scheduler(hp.scheduler, optimizer, hp.step_size, hp.gamma, hp.warmup_epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler} if scheduler else optimizer

    def lr_scales(self) -> dict[str, float]:
        """Factors of ``lr`` by parameter name (``Transfer``'s layer-wise decay); unnamed parameters train at ``lr``."""
        return {}

    def on_train_start(self) -> None:
        fit_cosine_schedules(self.trainer)
