"""Tiny data sets and weights written in their true on-disk formats.

Nothing can be downloaded where the tests and the benchmark run, so these writers produce small stand-ins
that the real loaders read unchanged: MNIST's IDX files, CIFAR-10's pickled batches, image folders of
real image files and a ResNet-18 checkpoint in torch hub's cache. The content depends on the label, so a
model can learn it: either a coloured blob whose position encodes the class (``source="random"``) or
scikit-learn's 8x8 handwritten digits, upscaled (``source="digits"``).

A test helper, not part of the installed package: tests import it as ``fakedata`` (``tests/`` is on their path), the
benchmark through ``benchmarks/common.py``. The writers are here; what the images show is made in ``fakedata_content``,
the bytes of each format in ``fakedata_formats``. Import the public names from ``fakedata``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import numpy as np
import torch
from fakedata_content import Source, _class_names, _dataset, _digits_dataset, _random_images
from fakedata_formats import CIFAR10_CLASSES, _cifar_batch, _dump_py2, _save_image, _to_mode, _write_idx
from torchvision.models import ResNet18_Weights, resnet18

__all__ = [
    "CIFAR10_CLASSES",
    "Source",
    "write_cifar10",
    "write_image_folder",
    "write_mnist",
    "write_resnet18_weights",
    "write_torchvision_weights",
]


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
