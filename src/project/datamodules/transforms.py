"""Whole-batch augmentation and normalization, run on the device after the batch is transferred.

Each op draws its random parameters per sample, so a batch gets what the per-sample torchvision transform of
the same name would give each image (``RandomCrop(size, padding)``, ``RandomHorizontalFlip``, ``RandomRotation``,
``ColorJitter``) — without a Python call per image, and on the GPU when training there.
Inputs are float images in ``[0, 1]`` of shape ``(N, C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class RandomCropPadded(nn.Module):
    """Zero-pad by ``padding`` on every side, then crop a random window of the original size."""

    def __init__(self, padding: int) -> None:
        super().__init__()
        self.padding = padding

    def forward(self, images: Tensor) -> Tensor:
        n, _, height, width = images.shape
        pad = self.padding
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=images.device)
        dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=images.device)
        rows = (dy + torch.arange(height, device=images.device).view(1, height, 1)).expand(n, height, width)
        cols = (dx + torch.arange(width, device=images.device).view(1, 1, width)).expand(n, height, width)
        # Flat gather of each sample's window: index = row * padded_width + col, same for every channel.
        flat_index = (rows * (width + 2 * pad) + cols).flatten(1).unsqueeze(1).expand(-1, images.shape[1], -1)
        return padded.flatten(2).gather(2, flat_index).view_as(images)


class RandomHorizontalFlip(nn.Module):
    """Mirror each image left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, images: Tensor) -> Tensor:
        flip = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < self.p
        return torch.where(flip, images.flip(-1), images)


class RandomRotation(nn.Module):
    """Rotate each image about its centre by an angle drawn uniformly from ``[-degrees, degrees]``."""

    def __init__(self, degrees: float) -> None:
        super().__init__()
        self.degrees = degrees

    def forward(self, images: Tensor) -> Tensor:
        n = images.shape[0]
        angle = (torch.rand(n, device=images.device) * 2 - 1) * torch.deg2rad(torch.tensor(self.degrees))
        cos, sin = angle.cos(), angle.sin()
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class ColorJitter(nn.Module):
    """Scale brightness, contrast and saturation of each image by factors in ``[1 - s, 1 + s]``."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0) -> None:
        super().__init__()
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def _factor(self, images: Tensor, strength: float) -> Tensor:
        low = max(0.0, 1 - strength)
        return torch.empty(images.shape[0], 1, 1, 1, device=images.device).uniform_(low, 1 + strength)

    def forward(self, images: Tensor) -> Tensor:
        if self.brightness:
            images = (images * self._factor(images, self.brightness)).clamp_(0, 1)
        if self.contrast:
            mean = _gray(images).mean(dim=(1, 2, 3), keepdim=True)
            images = ((images - mean) * self._factor(images, self.contrast) + mean).clamp_(0, 1)
        if self.saturation and images.shape[1] == 3:
            gray = _gray(images)
            images = ((images - gray) * self._factor(images, self.saturation) + gray).clamp_(0, 1)
        return images


def _gray(images: Tensor) -> Tensor:
    if images.shape[1] != 3:
        return images.mean(dim=1, keepdim=True)
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=images.dtype)
    return (images * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


class BatchAugment(nn.Sequential):
    """The training augmentation preset: crop with padding, flip, rotation, colour jitter (each optional)."""

    def __init__(
        self,
        crop_padding: int = 0,
        hflip: bool = False,
        rotation: float = 0.0,
        color_jitter: float = 0.0,
    ) -> None:
        ops: list[nn.Module] = []
        if crop_padding:
            ops.append(RandomCropPadded(crop_padding))
        if hflip:
            ops.append(RandomHorizontalFlip())
        if rotation:
            ops.append(RandomRotation(rotation))
        if color_jitter:
            ops.append(ColorJitter(color_jitter, color_jitter, color_jitter))
        super().__init__(*ops)


class Normalize(nn.Module):
    """``(images - mean) / std`` per channel, on the batch; :meth:`from_uint8` also does the ``/ 255`` before.

    Computed as ``images * scale + shift`` (one multiply-add instead of a subtraction and a division, the
    constants in float64 first), which matches the textbook's formula to within a float32 rounding step.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean64 = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
        std64 = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
        for name, value in {
            "mean": mean64,
            "std": std64,
            "scale": 1 / std64,
            "shift": -mean64 / std64,
            "scale_uint8": 1 / (255 * std64),
        }.items():
            self.register_buffer(name, value.float(), persistent=False)

    def _on(self, device: torch.device) -> Normalize:
        # The constants follow the batches once (a data module is not an nn.Module that Lightning moves).
        return self if self.scale.device == device else self.to(device)

    def forward(self, images: Tensor) -> Tensor:
        """``(images - mean) / std`` of float images in ``[0, 1]``."""
        constants = self._on(images.device)
        return images.mul(constants.scale).add_(constants.shift)

    def from_uint8(self, images: Tensor) -> Tensor:
        """``(images / 255 - mean) / std`` of ``uint8`` images as a new float32 tensor, in its memory layout."""
        constants = self._on(images.device)
        return images.to(torch.float32).mul_(constants.scale_uint8).add_(constants.shift)
