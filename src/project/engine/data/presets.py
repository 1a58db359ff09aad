"""What a decoded image at its own size becomes before it is batched: squashed to a square, or torchvision's ImageNet
preset (``references/classification/presets.py``): a random resized crop and a flip to train, the shorter side
resized and the centre cropped to evaluate.

Every preset takes a ``uint8`` image ``(C, H, W)`` and a ``torch.Generator`` and returns ``uint8 (C, size, size)``.
The random draws come from that generator only, which :func:`sample_generator` seeds from ``(seed, epoch, index)``:
a sample's augmentation is then the same in any worker process, on any rank and after a resume.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

PresetName = Literal["squash", "imagenet"]
Preset = Callable[[Tensor, torch.Generator], Tensor]


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator whose stream depends only on ``(seed, epoch, index)``: one sample's draws in one epoch."""
    digest = hashlib.blake2b(f"{seed},{epoch},{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


class Squash:
    """Resize to ``size`` × ``size`` (aspect ratio not kept, antialiased): the folder module's decoding at setup."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        if tuple(image.shape[-2:]) != (self.size, self.size):
            image = TF.resize(_channels_last(image), [self.size, self.size], antialias=True)[0]
        return image.contiguous()


class RandomResizedCropFlip:
    """torchvision's ``RandomResizedCrop(size, scale, ratio)`` then ``RandomHorizontalFlip(0.5)``, drawn from the
    given generator."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.5,
    ) -> None:
        self.size, self.scale, self.ratio, self.flip = size, scale, ratio, flip

    def box(self, height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of the crop."""
        # RandomResizedCrop.get_params, line for line, but it draws from the global generator: here, from ours.
        scale, ratio = self.scale, self.ratio
        area = height * width
        log_ratio = torch.log(torch.tensor(ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
            aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
                left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
                return top, left, h, w
        # Ten misses (a very long or tall image): the centre, at the nearest aspect ratio allowed.
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            w, h = int(round(height * max(ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def flips(self, generator: torch.Generator) -> bool:
        return bool(torch.rand(1, generator=generator).item() < self.flip)

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        top, left, height, width = self.box(image.shape[-2], image.shape[-1], generator)
        # = TF.resized_crop(image, top, left, ...), the same pixels, resized from channels-last memory: torch's uint8
        # antialiased resize is more than twice as fast from it.
        crop = image[..., top : top + height, left : left + width]
        image = TF.resize(_channels_last(crop), [self.size, self.size], antialias=True)[0]
        if self.flips(generator):  # after the crop, as torchvision's preset composes them
            image = TF.horizontal_flip(image)
        return image.contiguous()


class ResizeCenterCrop:
    """The shorter side resized to ``round(size * 256 / 224)``, then the centre ``size`` × ``size``: torchvision's
    ImageNet evaluation (256 then 224)."""

    def __init__(self, size: int) -> None:
        self.size, self.resize = size, shorter_side(size)

    def __call__(self, image: Tensor, generator: torch.Generator) -> Tensor:
        image = TF.resize(_channels_last(image), [self.resize], antialias=True)[0]
        return TF.center_crop(image, [self.size, self.size]).contiguous()


def _channels_last(image: Tensor) -> Tensor:
    """``(1, C, H, W)`` in channels-last memory: no copy for what torchvision's decoders return."""
    return image.unsqueeze(0).contiguous(memory_format=torch.channels_last)


def shorter_side(size: int) -> int:
    """What the ImageNet evaluation resizes the shorter side to before the centre ``size`` crop: 256 for 224."""
    return round(size * 256 / 224)


def preset_preprocessing(name: PresetName, size: int) -> dict[str, int]:
    """What prediction and serving must repeat of the evaluation transform, beyond the size: saved in checkpoints
    with the rest of the preprocessing (nothing for ``squash``, which is a resize to the size)."""
    return {"resize_shorter_to": shorter_side(size)} if name == "imagenet" else {}


def build_preset(name: PresetName, train: bool, size: int) -> Preset:
    """The ``train`` or evaluation transform of preset ``name``, to ``size`` × ``size`` pixels."""
    if name == "squash":
        return Squash(size)
    if name == "imagenet":
        return RandomResizedCropFlip(size) if train else ResizeCenterCrop(size)
    raise ValueError(f"preset must be 'squash' or 'imagenet', got {name!r}")
