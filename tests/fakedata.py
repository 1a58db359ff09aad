"""Tiny data sets and weights written in their true on-disk formats.

Nothing can be downloaded where the tests and the benchmark run, so these writers produce small stand-ins
that the real loaders read unchanged: MNIST's IDX files, CIFAR-10's pickled batches, image folders of
real image files and a ResNet-18 checkpoint in torch hub's cache. The content depends on the label, so a
model can learn it: either a coloured blob whose position encodes the class (``source="random"``) or
scikit-learn's 8x8 handwritten digits, upscaled (``source="digits"``).

A test helper, not part of the installed package: tests import it as ``fakedata`` (``tests/`` is on their path), the
benchmark through ``benchmarks/common.py``.
"""

from __future__ import annotations

import colorsys
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models import ResNet18_Weights, resnet18

Source = Literal["random", "digits"]

CIFAR10_CLASSES: tuple[bytes, ...] = (
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
)
_NUM_CLASSES = 10
_SHIFTS = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0)]


def write_mnist(
    root: str | Path, n_train: int = 600, n_test: int = 100, source: Source = "random", seed: int = 0
) -> Path:
    """Write the four uncompressed IDX files that ``torchvision.datasets.MNIST(root)`` reads; return root."""
    if min(n_train, n_test) < 1:
        raise ValueError("torchvision cannot read an empty MNIST split: n_train and n_test must be >= 1")
    root = Path(root)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    splits = _dataset((n_train, n_test), (20, 20), (28, 28), 1, source, np.random.default_rng(seed))
    for prefix, (images, labels) in zip(("train", "t10k"), splits, strict=True):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[:, 0])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def write_cifar10(
    root: str | Path, n_train: int = 500, n_test: int = 100, source: Source = "random", seed: int = 0
) -> Path:
    """Write CIFAR-10's python version (five training batches, a test batch, the meta file); return root.

    The files' md5 sums differ from the real ones, so ``torchvision.datasets.CIFAR10`` refuses them
    unless the sums it expects are cleared: set to None in ``train_list``, ``test_list`` and ``meta``.
    """
    root = Path(root)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (train_x, train_y), (test_x, test_y) = _dataset((n_train, n_test), (32, 32), (32, 32), 3, source, rng)
    chunks = np.array_split(np.arange(n_train), 5)
    for i, idx in enumerate(chunks, start=1):
        first = sum(len(c) for c in chunks[: i - 1])
        batch = _cifar_batch(f"training batch {i} of 5", train_x[idx], train_y[idx], first)
        _dump_py2(folder / f"data_batch_{i}", batch)
    _dump_py2(folder / "test_batch", _cifar_batch("testing batch 1 of 1", test_x, test_y, first=n_train))
    meta = {
        b"num_cases_per_batch": len(chunks[0]),
        b"label_names": list(CIFAR10_CLASSES),
        b"num_vis": 3 * 32 * 32,
    }
    _dump_py2(folder / "batches.meta", meta)
    return root


def write_image_folder(
    root: str | Path,
    classes: Sequence[str] | None = None,
    per_class: int = 8,
    size: tuple[int, int] = (24, 24),
    formats: Sequence[str] = ("png", "jpg", "jpeg"),
    layout: Literal["flat", "split"] = "flat",
    split_counts: tuple[int, int, int] | None = None,
    source: Source = "random",
    seed: int = 0,
    modes: Sequence[str] = ("RGB",),
) -> Path:
    """Write real image files as ``root/<class>/<class>_<i>.<ext>`` or ``root/<split>/<class>/...``.

    ``size`` is (width, height), as in PIL. Image ``i`` of a class gets the format
    ``formats[i % len(formats)]`` and the mode ``modes[i // len(formats) % len(modes)]`` (of "RGB", "L",
    "RGBA", "P", "I;16"), so all pairs occur; a mode its format cannot store (such as RGBA or I;16 as
    JPEG) is saved as PNG instead. ``classes`` defaults to cat/dog/frog for random content
    and to "0".."9" for digits, whose class names must be digits. With ``layout="split"``,
    ``split_counts`` gives the images per class in train/val/test (default ``(per_class, 2, 2)``).
    """
    if layout not in ("flat", "split"):
        raise ValueError(f"layout must be 'flat' or 'split', not {layout!r}")
    root = Path(root)
    names = _class_names(classes, source)
    split_dirs = [root] if layout == "flat" else [root / s for s in ("train", "val", "test")]
    counts = (per_class,) if layout == "flat" else split_counts or (per_class, 2, 2)
    shape = (size[1], size[0])
    rng = np.random.default_rng(seed)
    for k, name in enumerate(names):
        if source == "digits":
            images = [x for x, _ in _digits_dataset(counts, shape, shape, 3, rng, only=int(name))]
        else:
            images = [_random_images(np.full(n, k), len(names), shape, 3, rng) for n in counts]
        for split_dir, split_images in zip(split_dirs, images, strict=True):
            folder = split_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, chw in enumerate(split_images):
                ext = formats[i % len(formats)]
                mode = modes[i // len(formats) % len(modes)]
                _save_image(_to_mode(chw.transpose(1, 2, 0), mode), folder / f"{name}_{i}.{ext}")
    return root


def write_resnet18_weights(torch_home: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised ResNet-18 where torchvision looks for its ImageNet weights.

    With ``TORCH_HOME=torch_home``, ``resnet18(weights="IMAGENET1K_V1")`` then loads this file instead of
    downloading: torch hub checks the hash in the file name only when it downloads.
    """
    filename = Path(urlparse(ResNet18_Weights.IMAGENET1K_V1.url).path).name
    path = Path(torch_home) / "hub" / "checkpoints" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = resnet18(weights=None).state_dict()
    torch.save(state, path)
    return path


def write_torchvision_weights(torch_home: str | Path, name: str, seed: int = 0) -> Path:
    """Save a randomly initialised ``name`` (any torchvision classification model) under its ``DEFAULT`` weights'
    file name in torch hub's cache, where ``get_model(name, weights="DEFAULT")`` then finds it."""
    import torchvision

    spec = torchvision.models.get_model_weights(name).DEFAULT
    path = Path(torch_home) / "hub" / "checkpoints" / Path(urlparse(spec.url).path).name
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.save(torchvision.models.get_model(name, weights=None).state_dict(), path)
    return path


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


def _write_idx(path: Path, data: np.ndarray) -> None:
    """Write an uncompressed IDX file: big-endian magic 0x08 (unsigned byte) << 8 | ndim, dims, data."""
    header = struct.pack(f">I{data.ndim}I", 0x0800 | data.ndim, *data.shape)
    path.write_bytes(header + np.ascontiguousarray(data, dtype=np.uint8).tobytes())


def _cifar_batch(label: str, images: np.ndarray, labels: np.ndarray, first: int) -> dict[bytes, object]:
    names = [f"{CIFAR10_CLASSES[y].decode()}_s_{first + i:06d}.png".encode() for i, y in enumerate(labels)]
    return {
        b"batch_label": label.encode(),
        b"labels": [int(y) for y in labels],
        # (N, 3, 32, 32) in C order flattens to the R, G and B planes one after another, as in CIFAR-10.
        b"data": np.ascontiguousarray(images).reshape(len(images), 3 * 32 * 32),
        b"filenames": names,
    }


class _Py2Pickler(pickle._Pickler):
    """Pickles ``bytes`` as Python 2 ``str``, as the original CIFAR-10 files do.

    Python 3 pickles ``bytes`` as a call that always loads back as ``bytes``; a Python 2 ``str`` loads as
    ``bytes`` with ``encoding="bytes"`` and as ``str`` with ``encoding="latin1"`` (torchvision's choice).
    The C pickler cannot be told to do this, hence the pure-Python one.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump_py2(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _class_names(classes: Sequence[str] | None, source: Source) -> list[str]:
    if source == "digits":
        names = list(classes) if classes is not None else [str(d) for d in range(_NUM_CLASSES)]
        if not all(name in {str(d) for d in range(_NUM_CLASSES)} for name in names):
            raise ValueError(f"with source='digits' the classes must be '0'..'9', not {names}")
        return names
    if source != "random":
        raise ValueError(f"source must be 'random' or 'digits', not {source!r}")
    return list(classes) if classes is not None else ["cat", "dog", "frog"]


def _to_mode(rgb: np.ndarray, mode: str) -> Image.Image:
    """Convert an (H, W, 3) uint8 image to a PIL image of ``mode``."""
    image = Image.fromarray(rgb)
    if mode == "I;16":
        return Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE)
    if mode in ("RGB", "L", "RGBA"):
        return image.convert(mode)
    raise ValueError(f"unsupported image mode {mode!r}")


def _save_image(image: Image.Image, path: Path) -> Path:
    """Save ``image``, as PNG if its mode does not fit the format of ``path``; return the path used."""
    try:
        image.save(path)
    except OSError:
        path = path.with_suffix(".png")
        image.save(path)
    return path
