"""A classification dashboard: confusion matrix, per-class scores and the worst mistakes, per validation and test.

The callback reads what ``validation_step``/``test_step`` return (``{"logits", "targets"}``) and the batch's
images. Everything it accumulates lives on the device in torchmetrics objects: the confusion matrix and the
per-class scores, and :class:`WorstPredictions`, which keeps only the ``num_samples`` most confident mistakes.
Nothing is copied to the host per step; torchmetrics gathers the states across processes when the epoch ends,
so the pictures cover every sample under DDP, not rank 0's share.

What comes out, at the end of every ``every_n_epochs``-th validation epoch, the last one, and every test:

* ``<output_dir>/<stage>/confusion_matrix.png``, ``predictions.png`` and ``per_class.csv``;
* ``<output_dir>/learning_curves.png`` from the CSV logger's ``metrics.csv`` (when that logger is used);
* with a ``WandbLogger``, the same as ``wandb.Image``s, a ``wandb.Table`` of the predictions with their images,
  a table of the per-class scores and W&B's interactive confusion-matrix chart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from project.engine import plots
from project.engine.callbacks.dashboard_report import Report

STAGES = ("val", "test")


class WorstPredictions(Metric):
    """The ``k`` samples that most deserve a look: confident mistakes first, then the least confident hits.

    Each sample gets a score: ``1 + confidence`` when wrong, ``1 - confidence`` when right, and only the top
    ``k`` scores (with their images, labels and confidences) are kept, in fixed-size tensors on the device.
    Under DDP the ``k`` of every process are concatenated at ``compute()`` and the best ``k`` of those kept.
    """

    full_state_update = False

    def __init__(self, k: int, input_shape: tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k, self.input_shape = k, tuple(input_shape)
        # Fixed size (empty slots have score -inf) so every process gathers tensors of the same shape.
        self.add_state("scores", torch.full((k,), -torch.inf), dist_reduce_fx="cat")
        self.add_state("images", torch.zeros(k, *input_shape), dist_reduce_fx="cat")
        self.add_state("targets", torch.zeros(k, dtype=torch.long), dist_reduce_fx="cat")
        self.add_state("preds", torch.zeros(k, dtype=torch.long), dist_reduce_fx="cat")
        self.add_state("confidences", torch.zeros(k), dist_reduce_fx="cat")

    def update(self, images: Tensor, logits: Tensor, targets: Tensor) -> None:
        confidences, preds = logits.detach().float().softmax(dim=-1).max(dim=-1)
        wrong = preds != targets
        scores = torch.where(wrong, 1 + confidences, 1 - confidences)
        # The batch's best k first, so only k images are copied, then merged with the k kept so far.
        batch_top = scores.topk(min(self.k, len(scores))).indices
        merged = {
            "scores": torch.cat([self.scores, scores[batch_top]]),
            "images": torch.cat([self.images, images[batch_top].detach().to(self.images.dtype)]),
            "targets": torch.cat([self.targets, targets[batch_top]]),
            "preds": torch.cat([self.preds, preds[batch_top]]),
            "confidences": torch.cat([self.confidences, confidences[batch_top]]),
        }
        keep = merged["scores"].topk(self.k).indices
        for name, value in merged.items():
            setattr(self, name, value[keep])

    def compute(self) -> dict[str, Tensor]:
        """The kept samples, worst first, without empty slots."""
        # After a DDP sync (or merge_state) the states hold every process's k rows stacked: (processes, k, ...).
        scores = self.scores.reshape(-1)
        order = scores.topk(min(self.k, len(scores))).indices
        order = order[torch.isfinite(scores[order])]
        return {
            "images": self.images.reshape(-1, *self.input_shape)[order],
            "targets": self.targets.reshape(-1)[order],
            "preds": self.preds.reshape(-1)[order],
            "confidences": self.confidences.reshape(-1)[order],
        }


class ClassificationDashboard(Callback):
    """Confusion matrix, per-class accuracy/precision/recall and the worst predictions, as files and in W&B.

    Args:
        output_dir: Where the pictures go (``<output_dir>/val/``, ``<output_dir>/test/``); default
            ``<trainer.log_dir>/dashboard``.
        every_n_epochs: Draw the validation dashboard every this many epochs (and after the last one).
        num_samples: How many predictions to show (the most confident mistakes first).
    """

    def __init__(self, output_dir: str | Path | None = None, every_n_epochs: int = 5, num_samples: int = 16) -> None:
        if every_n_epochs < 1 or num_samples < 0:
            raise ValueError("every_n_epochs must be >= 1 and num_samples >= 0")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self._metrics: dict[str, MetricCollection] = {}
        self._worst: dict[str, WorstPredictions] = {}
        self._pending_val = False  # a validation epoch was accumulated but not drawn
        self._disabled = False

    # ------------------------------------------------------------------ accumulating
    def _start(self, pl_module: L.LightningModule, stage: str) -> None:
        if self._disabled:
            return
        if stage not in self._metrics:
            hparams = pl_module.hparams
            if not hparams.get("num_classes") or not hparams.get("input_shape"):
                self._disable("the model's hparams need num_classes and input_shape (as ImageClassifier has)")
                return
            num_classes = int(hparams.num_classes)
            # validate_args=False: the checks would copy tensors to the host at every step.
            options = {"num_classes": num_classes, "average": None, "validate_args": False}
            self._metrics[stage] = MetricCollection(
                {
                    "confusion_matrix": MulticlassConfusionMatrix(num_classes, validate_args=False),
                    "accuracy": MulticlassAccuracy(**options),
                    "precision": MulticlassPrecision(**options),
                    "recall": MulticlassRecall(**options),
                    "f1": MulticlassF1Score(**options),
                },
                # The four per-class scores share one set of tp/fp/tn/fn counts, updated once per batch.
                compute_groups=[["accuracy", "precision", "recall", "f1"], ["confusion_matrix"]],
            )
            self._worst[stage] = WorstPredictions(self.num_samples, tuple(hparams.input_shape))
        self._metrics[stage].to(pl_module.device).reset()
        self._worst[stage].to(pl_module.device).reset()

    def _disable(self, reason: str) -> None:
        rank_zero_warn(f"ClassificationDashboard is turned off: {reason}")
        self._disabled = True

    def _update(self, stage: str, outputs: Any, batch: Any) -> None:
        if self._disabled or stage not in self._metrics:
            return
        if not (isinstance(outputs, dict) and "logits" in outputs and "targets" in outputs):
            self._disable("validation_step/test_step must return {'logits': ..., 'targets': ...}")
            return
        logits, targets = outputs["logits"], outputs["targets"]
        self._metrics[stage].update(logits, targets)
        # Only image batches are drawn (--frozen_features hands the head features instead).
        if self.num_samples and tuple(batch[0].shape[1:]) == self._worst[stage].input_shape:
            self._worst[stage].update(batch[0], logits, targets)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._start(pl_module, "val")
            self._pending_val = True

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module, "test")

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._update("val", outputs, batch)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update("test", outputs, batch)

    # ------------------------------------------------------------------ drawing
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "fit":  # (trainer.validate() reports every time)
            epoch = trainer.current_epoch + 1
            last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
            if epoch % self.every_n_epochs and not last:
                return
            if not last:  # (the last epoch's are drawn at fit end, complete)
                # Up to the previous epoch: this epoch's metrics are logged after this hook.
                self._draw_learning_curves(trainer)
        self._report(trainer, pl_module, "val")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Training stopped early (early stopping, max_steps, max_time): the last epoch was not drawn yet.
        if self._pending_val:
            self._report(trainer, pl_module, "val")
        self._draw_learning_curves(trainer)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._disabled or stage not in self._metrics:
            return
        if stage == "val":
            self._pending_val = False
        # compute() is collective under DDP: every process calls it, only rank 0 draws.
        scores = {name: value.cpu() for name, value in self._metrics[stage].compute().items()}
        worst = {name: value.cpu() for name, value in self._worst[stage].compute().items()}
        if not trainer.is_global_zero:
            return
        report = Report.build(stage, trainer, pl_module, scores, worst)
        directory = self._directory(trainer) / stage
        files = report.write(directory)
        wandb_logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if wandb_logger is not None:
            report.log_to_wandb(wandb_logger, files, step=trainer.global_step)

    def _draw_learning_curves(self, trainer: L.Trainer) -> None:
        csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if not trainer.is_global_zero or csv_logger is None:
            return
        csv_logger.save()  # flush what was logged so far
        metrics = Path(csv_logger.log_dir) / "metrics.csv"
        if metrics.is_file():
            plots.plot_learning_curves(metrics, self._directory(trainer) / "learning_curves.png")

    def _directory(self, trainer: L.Trainer) -> Path:
        return self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "dashboard"
