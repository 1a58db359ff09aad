"""``--frozen_features``: a frozen backbone's outputs computed once per image, and the head trained on them.

With ``finetune: head`` every layer before the head is a fixed function (frozen weights, BatchNorm in evaluation
mode, no dropout), so each epoch would compute the same features again: at 224 px almost all of a CPU epoch. This
callback computes them once, in batches on the training device, from the data module's evaluation preprocessing of
its in-memory training and validation images, keeps them on the device, and for the fit swaps two things from
outside: the network's forward becomes the head's, and the data module hands the features over as they are. The
loaders, their seeded order and their resumable position are the data module's own, over the features instead of
the images; checkpoints hold the whole network (nothing of it changes), and the test after training, ``evaluate.py``,
export and serving run the whole network on images.

The model offers its head through ``frozen_head()`` (``None``: not a fixed function before it); the data module
offers ``splits`` (in-memory ``(images, labels)``), ``eval_inputs(uint8 images)`` and ``random_training_options()``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from project.engine.api import Batch
from project.engine.errors import UserError

Mode = Literal["auto", "true", "false"]
#: Images per batch when computing features: the backbone's memory, not the training batch size, limits it.
FEATURE_BATCH = 256
SPLITS = ("train", "val")  # the test runs the whole network, as evaluate.py does


def unusable_reason(model: L.LightningModule, datamodule: Any) -> str | None:
    """Why the features cannot be computed once for this model and data, or ``None`` when they can."""
    head = getattr(model, "frozen_head", lambda: None)()
    if not isinstance(head, nn.Module):
        return "the model trains more than its head (or has no frozen_head)"
    splits = getattr(datamodule, "splits", None)  # filled by setup, which Lightning runs before on_fit_start
    if not isinstance(splits, dict) or "train" not in splits or not hasattr(datamodule, "eval_inputs"):
        return "the data module does not hold its images in memory"
    return None


class FrozenFeatures(L.Callback):
    """Compute the frozen backbone's features once per split and train the head on them (module docstring)."""

    def __init__(self, mode: Mode = "auto") -> None:
        self.mode = mode
        self._saved: dict[str, tuple[Tensor, Tensor]] = {}  # the data module's own splits, given back after the fit
        self._active = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        reason = unusable_reason(pl_module, datamodule)
        if reason is not None:
            if self.mode == "true":
                raise UserError(f"--frozen_features true: {reason}")
            return
        head = pl_module.frozen_head()
        started = time.perf_counter()
        for split in [split for split in SPLITS if split in datamodule.splits]:  # no val split with val_size 0
            images, labels = datamodule.splits[split]
            features = self._features(trainer, pl_module, datamodule, images, head)
            self._saved[split] = (images, labels)
            datamodule.splits[split] = (features, labels.to(features.device))
        pl_module.network.forward = head.forward  # the instance's, not the class's: removed in teardown
        datamodule.on_after_batch_transfer = _features_as_batch(trainer)
        self._active = True
        skipped = datamodule.random_training_options()
        note = f"; not applied to them: {', '.join(skipped)} (--frozen_features false applies them)" if skipped else ""
        count = sum(len(labels) for _, labels in self._saved.values())
        if trainer.is_global_zero:
            print(
                f"frozen backbone: features of {count} images computed once in {time.perf_counter() - started:.1f} s, "
                f"the head trains on them{note}"
            )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._active:
            return
        datamodule = trainer.datamodule
        vars(pl_module.network).pop("forward", None)
        vars(datamodule).pop("on_after_batch_transfer", None)
        datamodule.splits.update(self._saved)
        self._saved, self._active = {}, False

    @torch.no_grad()
    def _features(
        self, trainer: L.Trainer, model: L.LightningModule, datamodule: Any, images: Tensor, head: nn.Module
    ) -> Tensor:
        """What enters ``head`` for each image, from the whole network's forward in evaluation mode; checked to give
        the network's own output through the head."""
        captured: list[Tensor] = []
        hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
        device, was_training = model.device, model.training
        model.eval()
        try:
            with trainer.precision_plugin.forward_context():
                for start in range(0, len(images), FEATURE_BATCH):
                    inputs = datamodule.eval_inputs(images[start : start + FEATURE_BATCH].to(device))
                    output = model.network(inputs)
                    if start == 0:
                        first = output
        finally:
            hook.remove()
            model.train(was_training)
        if len(images):
            with trainer.precision_plugin.forward_context():
                _check_head_is_last(head, captured[0], first)
        return torch.cat(captured)


def _check_head_is_last(head: nn.Module, features: Tensor, output: Tensor) -> None:
    if not torch.allclose(head(features).float(), output.float(), rtol=1e-3, atol=1e-4):
        raise UserError("--frozen_features: the network's output is not its head's (layers after the head?)")


def _features_as_batch(trainer: L.Trainer) -> Any:
    """The data module's batch hook while it hands over features: no resizing, augmentation or normalization."""

    def on_after_batch_transfer(batch: Any, dataloader_idx: int) -> Batch:
        features, labels = batch
        return trainer.precision_plugin.convert_input(Batch(features, labels, labels))

    return on_after_batch_transfer
