"""What the classification dashboard writes for one stage: the pictures, the per-class table, the W&B panels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from project.engine import plots
from project.engine.filenames import escape_name


class Report:
    """One stage's computed results, in plain numpy/Python values, and how to write them out."""

    def __init__(
        self,
        stage: str,
        title: str,
        class_names: list[str],
        scores: dict[str, np.ndarray],
        samples: list[dict[str, Any]],
    ) -> None:
        self.stage, self.title, self.class_names = stage, title, class_names
        self.scores, self.samples = scores, samples

    @classmethod
    def build(
        cls,
        stage: str,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        scores: dict[str, Tensor],
        worst: dict[str, Tensor],
    ) -> Report:
        hparams = pl_module.hparams
        num_classes = int(hparams.num_classes)
        names = hparams.get("class_names") or [str(i) for i in range(num_classes)]
        # Escaped: a class folder's name may not be UTF-8, which no plot, CSV file or W&B table takes.
        class_names = [escape_name(name) for name in names]
        images = _displayable(worst["images"], hparams.get("preprocessing"))
        samples = [
            {
                "image": image,
                "true": class_names[int(target)],
                "predicted": class_names[int(pred)],
                "confidence": float(confidence),
            }
            for image, target, pred, confidence in zip(
                images, worst["targets"], worst["preds"], worst["confidences"], strict=True
            )
        ]
        matrix = scores["confusion_matrix"].numpy()
        accuracy = float(np.trace(matrix) / max(1, matrix.sum()))
        name = f"Validation, epoch {trainer.current_epoch}" if stage == "val" else "Test"
        title = f"{name}: accuracy {accuracy:.1%} of {matrix.sum()} images"
        return cls(stage, title, class_names, {name: value.numpy() for name, value in scores.items()}, samples)

    def per_class_rows(self) -> list[dict[str, Any]]:
        matrix = self.scores["confusion_matrix"]
        return [
            {
                "class": name,
                "support": int(matrix[index].sum()),
                "accuracy": round(float(self.scores["accuracy"][index]), 6),
                "precision": round(float(self.scores["precision"][index]), 6),
                "recall": round(float(self.scores["recall"][index]), 6),
                "f1": round(float(self.scores["f1"][index]), 6),
            }
            for index, name in enumerate(self.class_names)
        ]

    def write(self, directory: Path) -> dict[str, Path]:
        files = {
            "confusion_matrix": plots.plot_confusion_matrix(
                self.scores["confusion_matrix"], self.class_names, directory / "confusion_matrix.png", self.title
            ),
            "per_class": plots.write_per_class_csv(self.per_class_rows(), directory / "per_class.csv"),
        }
        if self.samples:
            files["predictions"] = plots.plot_predictions(
                [sample["image"] for sample in self.samples],
                [sample["true"] for sample in self.samples],
                [sample["predicted"] for sample in self.samples],
                [sample["confidence"] for sample in self.samples],
                directory / "predictions.png",
                title=f"{self.title.split(':')[0]}: most confident mistakes first",
            )
        return files

    def log_to_wandb(self, logger: WandbLogger, files: dict[str, Path], step: int) -> None:
        import wandb  # a WandbLogger is in use, so wandb is installed

        stage = self.stage
        rows = self.per_class_rows()
        matrix = self.scores["confusion_matrix"]
        cells = [
            [actual, predicted, int(matrix[i, j])]
            for i, actual in enumerate(self.class_names)
            for j, predicted in enumerate(self.class_names)
        ]
        payload: dict[str, Any] = {
            # W&B's own interactive chart, fed the aggregated counts (wandb.plot.confusion_matrix wants one row
            # per sample, which the callback does not keep).
            f"{stage}/confusion_matrix": wandb.plot_table(
                "wandb/confusion_matrix/v1",
                wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=cells),
                {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
                {"title": self.title},
            ),
            f"{stage}/confusion_matrix_image": wandb.Image(str(files["confusion_matrix"]), caption=self.title),
            f"{stage}/per_class": wandb.Table(columns=list(rows[0]), data=[list(row.values()) for row in rows]),
        }
        if self.samples:
            payload[f"{stage}/predictions"] = wandb.Table(
                columns=["image", "true", "predicted", "confidence", "correct"],
                data=[
                    [
                        wandb.Image(_to_uint8(sample["image"])),
                        sample["true"],
                        sample["predicted"],
                        round(sample["confidence"], 4),
                        sample["true"] == sample["predicted"],
                    ]
                    for sample in self.samples
                ],
            )
            payload[f"{stage}/predictions_image"] = wandb.Image(str(files["predictions"]))
        logger.log_metrics(payload, step=step)


def _displayable(images: Tensor, preprocessing: dict[str, Any] | None) -> list[np.ndarray]:
    """Normalized ``(N, C, H, W)`` inputs → ``(H, W, C)`` arrays in [0, 1], undoing the mean/std normalization."""
    images = images.float()
    if preprocessing and preprocessing.get("mean") is not None and preprocessing.get("std") is not None:
        mean = torch.tensor(preprocessing["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(preprocessing["std"]).view(1, -1, 1, 1)
        images = images * std + mean
    return list(images.clamp(0, 1).permute(0, 2, 3, 1).numpy())


def _to_uint8(image: np.ndarray) -> np.ndarray:
    array = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return array[..., 0] if array.shape[-1] == 1 else array
