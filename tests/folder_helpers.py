"""What the FolderDataModule tests share: a small image folder, the module over it, and ways to look at the result."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from fakedata import write_image_folder
from PIL import Image

from project.datamodules.folder import FolderDataModule

SIZE = 16


def _module(root: Path, **kwargs) -> FolderDataModule:
    options = {"image_size": SIZE, "batch_size": 8, "num_workers": 0, **kwargs}
    return FolderDataModule(root=str(root), **options)


def _folder(tmp_path: Path, **kwargs) -> Path:
    options = {"per_class": 10, "size": (20, 20), **kwargs}
    return write_image_folder(tmp_path / "images", **options)


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def _setup_warnings(dm: FolderDataModule, stage: str = "fit") -> list[str]:
    """Run setup and return the messages of the warnings it gave about files: unusable ones, and those not read for
    their extension (any other warning fails)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup(stage)
    messages = [str(w.message) for w in caught]
    assert all("unusable" in message or message.startswith("not reading") for message in messages), messages
    return messages


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _rgb(height: int = 12, width: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
