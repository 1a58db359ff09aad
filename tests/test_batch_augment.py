"""The batch augmentations against torchvision's per-image transforms of the same name: crop, flip, rotation, jitter."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from project.engine.data.transforms import ColorJitter, RandomCropPadded, RandomHorizontalFlip, RandomRotation

# ---------------------------------------------------------------------------------------------- augmentation
# The comparisons with torchvision run on the CPU here, and on a GPU (the device training augments on) where there is
# one: the "cuda" parameters are marked gpu, skipped without one (conftest.py).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
def test_random_crop_is_a_window_of_the_zero_padded_image(device: str) -> None:
    torch.manual_seed(0)
    pad, images = 3, torch.rand(400, 3, 10, 12, device=device)
    out = RandomCropPadded(pad)(images)
    assert out.shape == images.shape and out.device == images.device
    offsets = Counter()
    for image, cropped in zip(images, out, strict=True):
        # torchvision's RandomCrop(size, padding=pad): zero padding, then a window at a top-left in [0, 2 pad].
        padded = TF.pad(image, [pad])
        matches = [
            (top, left)
            for top in range(2 * pad + 1)
            for left in range(2 * pad + 1)
            if torch.equal(TF.crop(padded, top, left, 10, 12), cropped)
        ]
        assert len(matches) == 1, "each output is exactly one window of the padded input"
        offsets[matches[0]] += 1
    # Every offset occurs (400 draws of 49 equally likely offsets: each expected ~8 times).
    assert set(offsets) == {(top, left) for top in range(2 * pad + 1) for left in range(2 * pad + 1)}


@pytest.mark.parametrize("device", DEVICES)
def test_flip_mirrors_about_half_of_the_images(device: str) -> None:
    torch.manual_seed(0)
    images = torch.rand(4000, 1, 6, 7, device=device)
    out = RandomHorizontalFlip()(images)
    kept = (out == images).flatten(1).all(dim=1)
    mirrored = (out == TF.horizontal_flip(images)).flatten(1).all(dim=1)
    assert bool((kept ^ mirrored).all()), "each image is either unchanged or exactly mirrored"
    assert 0.45 < mirrored.float().mean().item() < 0.55


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_crop_with_flip_is_the_crop_then_the_flip_in_one_pass(dtype: torch.dtype, device: str) -> None:
    images = (torch.rand(300, 3, 9, 11, device=device) * 255).to(dtype)
    torch.manual_seed(3)
    fused = RandomCropPadded(3, hflip=True)(images)
    torch.manual_seed(3)
    sequential = RandomHorizontalFlip()(RandomCropPadded(3)(images))
    assert fused.dtype == dtype and torch.equal(fused, sequential)
    # And the flip happened to about half of them: mirrored windows are not windows of the unflipped image.
    torch.manual_seed(3)
    unflipped = RandomCropPadded(3)(images)
    flipped = ~(fused == unflipped).flatten(1).all(dim=1)
    assert 0.35 < flipped.float().mean().item() < 0.65


def _uniform_draws(monkeypatch: pytest.MonkeyPatch, forced: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Record what ``torch.rand`` returns from now on (or make it return ``forced``): the ops' uniform draws."""
    draws: list[torch.Tensor] = []
    real = torch.rand

    def rand(*size, device=None, **kwargs) -> torch.Tensor:
        if forced is None:
            value = real(*size, device=device, **kwargs)
        else:
            assert forced.numel() == math.prod(size), f"the op now draws torch.rand{size}: update this test"
            value = forced.to(device).view(*size)
        draws.append(value)
        return value

    monkeypatch.setattr(torch, "rand", rand)
    return draws


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(33, 33), (32, 32), (24, 40)], ids=["odd", "even", "wide"])
def test_rotation_is_torchvisions_rotate_by_the_drawn_angle(
    monkeypatch: pytest.MonkeyPatch, device: str, size: tuple[int, int]
) -> None:
    # torchvision's RandomRotation(degrees): an angle drawn uniformly from [-degrees, degrees], then rotate() about
    # the centre (counter-clockwise, bilinear), each image its own angle. Outside the image: zeros, as rotate()
    # without a fill gives them (with fill=0, RandomRotation's default, torchvision also darkens the rotated image's
    # outermost pixels by its interpolated mask: those differ). The template's batches are square (MNIST, CIFAR-10,
    # folders resized to image_size x image_size); a data module of one's own may not be.
    torch.manual_seed(0)
    images = torch.rand(200, 3, *size, device=device)
    draws = _uniform_draws(monkeypatch)
    out = RandomRotation(45)(images)
    monkeypatch.undo()
    assert out.shape == images.shape and out.device == images.device
    assert len(draws) == 1 and draws[0].shape == (200,), "one uniform draw per image"
    angles = ((draws[0] * 2 - 1) * 45).tolist()
    assert all(-45 <= angle <= 45 for angle in angles) and min(angles) < -40 and max(angles) > 40
    for image, rotated, angle in zip(images, out, angles, strict=True):
        expected = TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR)
        torch.testing.assert_close(rotated, expected, rtol=0, atol=1e-5, msg=lambda m, a=angle: f"{a:.2f}°: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_rotation_by_a_quarter_turn_moves_every_pixel_exactly(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    # Forced draws of a RandomRotation(90): 1 is +90° (counter-clockwise, torch.rot90's direction), 0 is -90°,
    # 1/2 is 0° (the identity). A quarter turn only moves pixels, so no interpolation can blur it.
    torch.manual_seed(0)
    images = torch.rand(3, 2, 9, 9, device=device)
    _uniform_draws(monkeypatch, forced=torch.tensor([1.0, 0.0, 0.5]))
    out = RandomRotation(90)(images)
    expected = [torch.rot90(images[0], 1, (-2, -1)), torch.rot90(images[1], -1, (-2, -1)), images[2]]
    torch.testing.assert_close(out, torch.stack(expected), rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_is_torchvisions_adjustments_by_the_drawn_factors(
    monkeypatch: pytest.MonkeyPatch, device: str, channels: int
) -> None:
    # torchvision's ColorJitter(b, c, s): per image, factors drawn uniformly from [1 - s, 1 + s], then
    # adjust_brightness, adjust_contrast, adjust_saturation, in the module's fixed order (torchvision's ColorJitter
    # shuffles it per call). One channel has no saturation: torchvision leaves it, the module draws no factor for it.
    # The real draws are recorded, then torchvision is applied with the same factors.
    torch.manual_seed(0)
    images = torch.rand(256, channels, 8, 8, device=device)
    strengths = {"brightness": 0.8, "contrast": 0.6, "saturation": 0.4}
    drawn: list[tuple[float, torch.Tensor]] = []
    real_factor = ColorJitter._factor

    def recorded(self: ColorJitter, batch: torch.Tensor, strength: float) -> torch.Tensor:
        factors = real_factor(self, batch, strength)
        drawn.append((strength, factors))
        return factors

    monkeypatch.setattr(ColorJitter, "_factor", recorded)
    out = ColorJitter(**strengths)(images)
    assert out.shape == images.shape and out.device == images.device
    names = list(strengths) if channels == 3 else ["brightness", "contrast"]
    assert [strength for strength, _ in drawn] == [strengths[name] for name in names]
    factors = {}
    for name, (strength, values) in zip(names, drawn, strict=True):
        assert values.shape == (256, 1, 1, 1), name
        assert bool(((1 - strength <= values) & (values <= 1 + strength)).all()), name
        assert values.min() < 1 - strength / 2 and values.max() > 1 + strength / 2, name  # spread over the range
        factors[name] = values.flatten().tolist()
    adjust = {
        "brightness": TF.adjust_brightness,
        "contrast": TF.adjust_contrast,
        "saturation": TF.adjust_saturation,
    }
    for index, (image, jittered) in enumerate(zip(images, out, strict=True)):
        expected = image
        for name in names:
            expected = adjust[name](expected, factors[name][index])
        # atol: torchvision's grey is 0.2989 R + 0.587 G + 0.114 B, the module's 0.299 R (about 1e-4 apart).
        torch.testing.assert_close(jittered, expected, rtol=0, atol=2e-4, msg=lambda m, i=index: f"image {i}: {m}")
