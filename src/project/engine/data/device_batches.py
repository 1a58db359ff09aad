"""How the batches of an :class:`~project.datamodules.base.ImageDataModule` become network inputs: ``uint8``
batches on the device are resized, augmented (training only), normalized and mixed a whole batch at a time, and
handed to every step as one :class:`~project.engine.api.Batch`."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.nn import functional as F

from project.engine.api import Batch
from project.engine.data.mixing import BatchMixing, PerImagePolicy
from project.engine.data.transforms import BatchAugment, Normalize


class DeviceBatches:
    """Mixed into :class:`~project.datamodules.base.ImageDataModule`: Lightning's batch hooks, for ``uint8`` batches.

    Uses the data module's ``augment``, ``per_image``, ``mixing``, ``normalizer``, ``input_shape`` and
    ``memory_format`` (the layout the network computes in; the engine sets channels-last where it is faster).
    """

    augment: BatchAugment
    per_image: PerImagePolicy
    mixing: BatchMixing | None
    normalizer: Normalize | None
    memory_format: torch.memory_format
    input_shape: tuple[int, int, int]
    trainer: L.Trainer | None

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # The in-memory splits already live on the training device: nothing to copy, and no need for Lightning's
        # generic walk through the batch (a few dozen Python calls per step).
        if isinstance(batch, (tuple, list)) and all(isinstance(t, Tensor) and t.device == device for t in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Batch:
        images, labels = batch
        trainer = self.trainer
        training = trainer is not None and trainer.training
        if training:
            images = self.per_image.on_uint8(images)
        images = self._network_input(images, trainer)
        targets = labels
        if training and (self.per_image.erasing is not None or self.mixing is not None):
            images = self.per_image.on_normalized(images)
            if self.mixing is not None:  # soft targets for the loss, the labels for the accuracy
                images, targets = self.mixing(images, labels)
            images = images.contiguous(memory_format=self.memory_format)
        batch = Batch(images, targets, labels)
        if trainer is not None:
            # Lightning casts floating-point batches to the weights' dtype (bf16-true, 16-true, 64-true) before this
            # hook, when these were still uint8: the same cast, here (soft targets too). Every other precision
            # leaves them unchanged.
            batch = trainer.precision_plugin.convert_input(batch)
        return batch

    def _network_input(self, images: Tensor, trainer: L.Trainer | None) -> Tensor:
        """A ``uint8`` batch on the device → resized, augmented (training only), normalized float32 batch."""
        memory_format = self.memory_format
        size = self.input_shape[1:]
        resize = tuple(images.shape[-2:]) != size
        augment = self.augment if len(self.augment) > 0 and trainer is not None and trainer.training else None
        if augment is not None and augment.only_moves_pixels:
            # Crops and flips only move pixels: on the uint8 batch they move a quarter of the bytes, same result.
            images, augment = augment(images), None
        if not resize and augment is None and self.normalizer is not None:
            # uint8 → normalized float32 in the network's memory layout, in one pass over the batch.
            return self.normalizer.from_uint8(images, memory_format)
        images = images.float().div_(255)
        if augment is not None:  # at the data's own size, as without resizing (CIFAR's 4 px padding stays 4 px)
            images = augment(images)
        if resize:
            # Antialiasing changes only shrinking; enlarging (CIFAR to 224 px) gives the same values without it.
            shrink = any(new < old for new, old in zip(size, images.shape[-2:], strict=True))
            images = F.interpolate(images, size=size, mode="bilinear", antialias=shrink, align_corners=False)
        if self.normalizer is not None:
            return self.normalizer(images, memory_format)
        return images.contiguous(memory_format=memory_format)

    def eval_inputs(self, images: Tensor) -> Tensor:
        """A ``uint8`` batch on the device → the network's input as validation and test see it (no augmentation)."""
        return self._network_input(images, None)

    def random_training_options(self) -> list[str]:
        """The training options in effect that draw at random (augmentation and mixing), by flag name."""
        hp = self.hparams
        options = ["crop_padding", "hflip", "rotation", "color_jitter", "random_erasing", "mixup", "cutmix"]
        drawn = [f"--data.{name}" for name in options if hp.get(name)]
        if hp.get("auto_augment", "none") != "none":
            drawn.append("--data.auto_augment")
        return drawn
