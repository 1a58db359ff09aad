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
    """Zero-pad by ``padding`` on every side, then crop a random window of the original size.

    With ``hflip``, then mirror each window left-right with probability 1/2: :class:`RandomHorizontalFlip` after
    the crop, the same random draws and result, in the same single pass over the batch (one gather).
    Only moves pixels, so it works on any dtype (``uint8`` batches too) and gives the same pixels in each.
    """

    def __init__(self, padding: int, hflip: bool = False) -> None:
        super().__init__()
        self.padding = padding
        self.hflip = hflip

    def forward(self, images: Tensor) -> Tensor:
        n, channels, height, width = images.shape
        pad, device = self.padding, images.device
        padded = F.pad(images, (pad, pad, pad, pad))
        padded_width = width + 2 * pad
        dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=device)
        dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), device=device)
        # Each sample's window in the flattened padded image: a shared (row * padded_width + col) grid plus the
        # sample's offset; one index tensor of (N, H, W), the same for every channel (expanded, not copied).
        grid = torch.arange(height, device=device).view(height, 1) * padded_width + torch.arange(width, device=device)
        if self.hflip:
            # Mirroring the window reads its columns right to left: the grid with its columns reversed.
            flip = torch.rand(n, 1, 1, device=device) < 0.5
            grid = torch.where(flip, grid.flip(-1), grid)
        flat_index = (dy * padded_width + dx + grid).flatten(1).unsqueeze(1).expand(-1, channels, -1)
        return padded.flatten(2).gather(2, flat_index).view_as(images)


class RandomHorizontalFlip(nn.Module):
    """Mirror each image left-right with probability ``p``; any dtype, like :class:`RandomCropPadded`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, images: Tensor) -> Tensor:
        n, _, _, width = images.shape
        flip = torch.rand(n, 1, 1, 1, device=images.device) < self.p
        columns = torch.arange(width, device=images.device)
        # One gather of per-sample column orders (reversed or not): a single pass over the batch, where
        # where(flip, images.flip(-1), images) makes three.
        order = torch.where(flip, columns.flip(0), columns).expand_as(images)
        return images.gather(3, order)


class RandomRotation(nn.Module):
    """Rotate each image about its centre by an angle drawn uniformly from ``[-degrees, degrees]``."""

    def __init__(self, degrees: float) -> None:
        super().__init__()
        self.degrees = degrees

    def forward(self, images: Tensor) -> Tensor:
        n, _, height, width = images.shape
        angle = (torch.rand(n, device=images.device) * 2 - 1) * torch.deg2rad(torch.tensor(self.degrees))
        cos, sin = angle.cos(), angle.sin()
        zero = torch.zeros_like(cos)
        # affine_grid's coordinates run from -1 to 1 along each side: a rotation of pixels scales by the aspect ratio.
        aspect = height / width
        row_x = torch.stack([cos, -sin * aspect, zero], 1)
        row_y = torch.stack([sin / aspect, cos, zero], 1)
        theta = torch.stack([row_x, row_y], 1)
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
            ops.append(RandomCropPadded(crop_padding, hflip=hflip))  # the flip too, in the crop's single pass
        elif hflip:
            ops.append(RandomHorizontalFlip())
        if rotation:
            ops.append(RandomRotation(rotation))
        if color_jitter:
            ops.append(ColorJitter(color_jitter, color_jitter, color_jitter))
        super().__init__(*ops)

    @property
    def only_moves_pixels(self) -> bool:
        """Whether every op only moves pixels (crop, flip): then it can run on the ``uint8`` batch, same result."""
        return all(isinstance(op, (RandomCropPadded, RandomHorizontalFlip)) for op in self)


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

    def forward(self, images: Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
        """``(images - mean) / std`` of float images in ``[0, 1]``, as a new tensor in ``memory_format``."""
        return self._affine(images, memory_format, from_uint8=False)

    def from_uint8(self, images: Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
        """``(images / 255 - mean) / std`` of ``uint8`` images as a new float32 tensor in ``memory_format``."""
        return self._affine(images, memory_format, from_uint8=True)

    def _affine(self, images: Tensor, memory_format: torch.memory_format, from_uint8: bool) -> Tensor:
        # One pass: the conversion to float32, the multiply-add and the change of layout (channels-last for conv
        # nets on a GPU) in a single kernel, written straight into the output.
        constants = self._on(images.device)
        scale = constants.scale_uint8 if from_uint8 else constants.scale
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=memory_format)
        return torch.addcmul(constants.shift, images, scale, out=out)
