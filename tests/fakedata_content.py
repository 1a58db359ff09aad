"""What the fake images show, by label: a coloured blob whose position encodes the class, or upscaled digits."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Source = Literal["random", "digits"]

_NUM_CLASSES = 10
_SHIFTS = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0)]


def _dataset(
    counts: Sequence[int],
    digit_shape: tuple[int, int],
    canvas: tuple[int, int],
    channels: int,
    source: Source,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Disjoint splits of 10-class images, each as (uint8 array (N, C, H, W), int64 labels)."""
    if source == "digits":
        return _digits_dataset(counts, digit_shape, canvas, channels, rng)
    if source != "random":
        raise ValueError(f"source must be 'random' or 'digits', not {source!r}")
    splits = []
    for n in counts:
        labels = rng.permutation(np.arange(n) % _NUM_CLASSES)
        splits.append((_random_images(labels, _NUM_CLASSES, canvas, channels, rng), labels))
    return splits


def _random_images(
    labels: np.ndarray, n_classes: int, shape: tuple[int, int], channels: int, rng: np.random.Generator
) -> np.ndarray:
    """Noisy images with a blob whose position (and, in colour, hue) is set by the label."""
    h, w = shape
    angle = 2 * np.pi * labels / n_classes
    radius, sigma = 0.25 * min(h, w), 0.12 * min(h, w)
    cy = (h - 1) / 2 + radius * np.sin(angle) + rng.normal(0, 0.04 * h, len(labels))
    cx = (w - 1) / 2 + radius * np.cos(angle) + rng.normal(0, 0.04 * w, len(labels))
    yy, xx = np.mgrid[:h, :w]
    dist2 = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2
    blob = np.exp(-dist2 / (2 * sigma**2))[:, None]
    if channels == 3:
        hues = [colorsys.hsv_to_rgb(k / n_classes, 0.8, 1.0) for k in range(n_classes)]
        blob = blob * np.asarray(hues)[labels][:, :, None, None]
    noisy = 0.8 * blob + rng.uniform(0, 0.25, (len(labels), channels, h, w))
    return _to_uint8(noisy)


def _digits_dataset(
    counts: Sequence[int],
    digit_shape: tuple[int, int],
    canvas: tuple[int, int],
    channels: int,
    rng: np.random.Generator,
    only: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Splits of scikit-learn's digits (only one digit if ``only`` is set), upscaled and centred."""
    from sklearn.datasets import load_digits  # optional dependency, needed only here

    digits = load_digits()
    images, labels = digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)
    pool = rng.permutation(len(labels))
    if only is not None:
        pool = pool[labels[pool] == only]
    splits = []
    for idx, repeated in _split_pool(pool, counts):
        gray = _render_digits(images[idx], repeated, digit_shape, canvas, rng)
        chw = gray[:, None] if channels == 1 else _tint(gray, rng)
        splits.append((_to_uint8(chw), labels[idx]))
    return splits


def _split_pool(pool: np.ndarray, counts: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cut ``pool`` into disjoint parts of the requested sizes, cycling a part that is too small.

    Returns, per part, the indices and a mask of the entries that repeat an earlier one.
    """
    total = sum(counts)
    if total > len(pool):
        # Share the pool in proportion, so that splits stay disjoint however much is asked for.
        counts_in_pool = [max(1, len(pool) * c // total) if c else 0 for c in counts]
    else:
        counts_in_pool = list(counts)
    bounds = np.cumsum([0, *counts_in_pool])
    parts = []
    for start, stop, count in zip(bounds[:-1], bounds[1:], counts, strict=True):
        part = pool[start:stop]
        parts.append((np.resize(part, count), np.arange(count) >= len(part)))
    return parts


def _render_digits(
    images: np.ndarray,
    repeated: np.ndarray,
    digit_shape: tuple[int, int],
    canvas: tuple[int, int],
    rng: np.random.Generator,
) -> np.ndarray:
    """Upscale 8x8 digits to ``digit_shape``, centre them on ``canvas``, shift the repeated ones."""
    out = np.zeros((len(images), *canvas), dtype=np.float32)
    if len(images) == 0:
        return out
    small = torch.from_numpy(images).unsqueeze(1)
    big = F.interpolate(small, size=digit_shape, mode="bilinear", align_corners=False).squeeze(1).numpy()
    top, left = (canvas[0] - digit_shape[0]) // 2, (canvas[1] - digit_shape[1]) // 2
    out[:, top : top + digit_shape[0], left : left + digit_shape[1]] = big
    for i in np.flatnonzero(repeated):
        out[i] = np.roll(out[i], _SHIFTS[rng.integers(len(_SHIFTS))], axis=(0, 1))
    return out


def _tint(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour grayscale images (N, H, W): a random ink colour on a random dark background."""
    ink = rng.uniform(0.35, 1.0, (len(gray), 3, 1, 1))
    background = rng.uniform(0.0, 0.2, (len(gray), 3, 1, 1))
    g = gray[:, None]
    return g * ink + (1 - g) * background


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)


def _class_names(classes: Sequence[str] | None, source: Source) -> list[str]:
    if source == "digits":
        names = list(classes) if classes is not None else [str(d) for d in range(_NUM_CLASSES)]
        if not all(name in {str(d) for d in range(_NUM_CLASSES)} for name in names):
            raise ValueError(f"with source='digits' the classes must be '0'..'9', not {names}")
        return names
    if source != "random":
        raise ValueError(f"source must be 'random' or 'digits', not {source!r}")
    return list(classes) if classes is not None else ["cat", "dog", "frog"]
