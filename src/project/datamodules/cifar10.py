"""CIFAR-10: 32×32 colour images in 10 classes, 45k/5k/10k train/val/test, held in memory."""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import download_and_extract_archive

from project.datamodules.base import ImageDataModule, uint8_images
from project.engine.api import DataError

# Where the archive comes from, its checksum and its files: torchvision's (CIFAR10.url, .tgz_md5, ...).
FOLDER = CIFAR10.base_folder
TRAIN_FILES = [name for name, _ in CIFAR10.train_list]
TEST_FILES = [name for name, _ in CIFAR10.test_list]


class CIFAR10DataModule(ImageDataModule):
    """The python version of CIFAR-10 under ``root/cifar-10-batches-py``, downloaded when missing.

    The batch files are pickles, with bytes keys as in the original files or str keys as Python 3 writes them;
    they are read with an unpickler that only builds numpy arrays and plain values, so a tampered file cannot
    run code. Training augmentation defaults to the standard random crop with 4-pixel padding and horizontal
    flip (set in ``configs/data/cifar10.yaml``).

    Args:
        val_size: Training images held out for validation (the usual 5,000; a fraction when < 1).
        download: Download the data set when it is missing (the only network access, in ``prepare_data``).
        **kwargs: Options of :class:`~project.datamodules.base.ImageDataModule`.
    """

    dataset_stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    native_shape = (3, 32, 32)
    _names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def __init__(self, download: bool = True, val_size: float = 5000, **kwargs: Any) -> None:
        super().__init__(val_size=val_size, **kwargs)
        self.download = download

    @property
    def class_names(self) -> list[str]:
        return list(self._names)

    @property
    def folder(self) -> str:
        return os.path.join(self.root, FOLDER)

    def prepare_data(self) -> None:
        missing = [name for name in TRAIN_FILES + TEST_FILES if not os.path.isfile(os.path.join(self.folder, name))]
        if not missing:
            return
        by_hand = f"download {CIFAR10.url} and extract it into {self.root}"
        if not self.download:
            raise DataError(
                f"CIFAR-10 files {missing} are missing in {self.folder} and --data.download is false: {by_hand}"
            )
        try:
            download_and_extract_archive(CIFAR10.url, self.root, filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
        except Exception as error:  # urllib raises many types; all mean the same thing to the user
            raise DataError(
                f"CIFAR-10 is not in {self.folder} and the download failed ({type(error).__name__}: no network?): "
                f"{by_hand}, or pass --data.root DIR"
            ) from None

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        images, labels = [], []
        for name in TRAIN_FILES if train else TEST_FILES:
            batch_images, batch_labels = _read_batch(os.path.join(self.folder, name))
            images.append(batch_images)
            labels.append(batch_labels)
        return torch.cat(images), torch.cat(labels)


def _read_batch(path: str) -> tuple[Tensor, Tensor]:
    if not os.path.isfile(path):
        raise DataError(f"CIFAR-10 file {path} is missing: delete {os.path.dirname(path)} to download it again")
    try:
        with open(path, "rb") as file:
            batch = _SafeUnpickler(file, encoding="bytes").load()
    except _Refused as error:
        raise DataError(f"CIFAR-10 file {path} was refused: {error}") from None
    except Exception as error:  # a corrupt pickle can fail in many ways; each is "this file is corrupt"
        raise DataError(f"CIFAR-10 file {path} is corrupt ({type(error).__name__}: {error})") from None
    # The original files (Python 2) have bytes keys; sets pickled again by Python 3 have str keys.
    keys = next((keys for keys in ((b"data", b"labels"), ("data", "labels")) if _has(batch, keys)), None)
    if keys is None:
        found = list(batch) if isinstance(batch, dict) else f"a {type(batch).__name__}"
        raise DataError(
            f"CIFAR-10 file {path} is not a CIFAR-10 batch: expected b'data' and b'labels', found {found} "
            "(str keys 'data' and 'labels' are read too)"
        )
    try:
        array = np.asarray(batch[keys[0]])
        labels = torch.as_tensor(batch[keys[1]], dtype=torch.long)
    except (TypeError, ValueError) as error:  # e.g. labels that are not integers
        raise DataError(f"CIFAR-10 file {path} is corrupt ({type(error).__name__}: {error})") from None
    if array.dtype != np.uint8:
        raise DataError(f"CIFAR-10 file {path}: expected uint8 pixels, got {array.dtype}")
    images = torch.from_numpy(np.ascontiguousarray(array))
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"CIFAR-10 file {path}: expected (N, 3072) uint8 data and N labels, "
            f"got data of shape {tuple(images.shape)} and labels of shape {tuple(labels.shape)}"
        )
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) <= 9:
        raise DataError(f"CIFAR-10 file {path}: labels outside 0..9")
    images = uint8_images(images.view(-1, 3, 32, 32), (3, 32, 32), path)
    return images.contiguous(), labels


def _has(batch: object, keys: tuple[bytes | str, ...]) -> bool:
    return isinstance(batch, dict) and all(key in batch for key in keys)


class _SafeUnpickler(pickle.Unpickler):
    """Builds only what CIFAR-10 batches contain: dicts, lists, bytes, strings, numbers and numpy arrays."""

    _allowed = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Arrays pickled at protocol 5 (Python 3.8+'s highest): frombuffer(...).reshape(...), no object arrays.
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, "latin1"): harmless, and torch's
        # weights_only loader allows it too.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise _Refused(
            f"loading it would import {module}.{name}, and a CIFAR-10 batch holds only arrays and plain values"
        )


class _Refused(pickle.UnpicklingError):
    """The pickle asks for something :class:`_SafeUnpickler` does not build."""
