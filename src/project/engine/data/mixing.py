"""Training-only augmentations of the recipe, with torchvision's own transforms, on the device-side batch.

* :class:`PerImagePolicy`: ``TrivialAugmentWide``, ``RandAugment`` or ``AugMix`` on the ``uint8`` images, and
  ``RandomErasing`` on the normalized ones. torchvision draws one set of parameters per call, so they are called once
  per image of the batch: per-sample parameters, at the cost of a Python call and a few small kernels per image:
  15-35 ms per 32x32 image on a busy 2-core CPU (RandAugment the dearest), 0.25 ms for RandomErasing; on a GPU the
  per-image kernel launches, not the arithmetic, set the cost. Cheap enough for small data sets, not free.
* :class:`BatchMixing`: ``MixUp`` and/or ``CutMix`` (one chosen at random per batch when both are on): soft
  targets for the loss; the hard labels stay for the accuracy.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchvision.transforms import v2

AutoAugmentName = Literal["none", "trivialaugment", "randaugment", "augmix"]
_POLICIES = {"trivialaugment": v2.TrivialAugmentWide, "randaugment": v2.RandAugment, "augmix": v2.AugMix}


class PerImagePolicy:
    """``auto_augment`` on ``uint8`` images and ``RandomErasing(p)`` on normalized ones, each image on its own."""

    def __init__(self, auto_augment: AutoAugmentName = "none", random_erasing: float = 0.0) -> None:
        if auto_augment not in ("none", *_POLICIES):
            raise ValueError(f"auto_augment must be one of none, {', '.join(_POLICIES)}; got {auto_augment!r}")
        if not 0 <= random_erasing <= 1:
            raise ValueError(f"random_erasing must be a probability in [0, 1], got {random_erasing}")
        self.policy = _POLICIES[auto_augment]() if auto_augment != "none" else None
        self.erasing = v2.RandomErasing(p=random_erasing, value=0) if random_erasing else None

    def on_uint8(self, images: Tensor) -> Tensor:
        if self.policy is None:
            return images
        return torch.stack([self.policy(image) for image in images])

    def on_normalized(self, images: Tensor) -> Tensor:
        if self.erasing is None:
            return images
        # value 0 on normalized images: the data set's mean colour, as torchvision's recipe erases after Normalize.
        return torch.stack([self.erasing(image) for image in images])


class BatchMixing:
    """MixUp (``mixup`` = its Beta(α, α) parameter) and/or CutMix (``cutmix`` = α) of a batch and its labels."""

    def __init__(self, mixup: float, cutmix: float, num_classes: int) -> None:
        if mixup < 0 or cutmix < 0:
            raise ValueError(f"mixup and cutmix must not be negative, got {mixup} and {cutmix}")
        ops = [v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup else []
        ops += [v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix else []
        self.op = (v2.RandomChoice(ops) if len(ops) > 1 else ops[0]) if ops else None

    def __bool__(self) -> bool:
        return self.op is not None

    def __call__(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mixed images and their soft targets ``(N, num_classes)``."""
        mixed, targets = self.op(images, labels)
        return mixed, targets
