"""MNIST: 28×28 gray digits, 55k/5k/10k train/val/test, parsed once by torchvision into memory."""

from __future__ import annotations

import math
import os
import struct
from typing import Any

from torch import Tensor
from torchvision.datasets import MNIST

from project.datamodules.base import ImageDataModule, uint8_images
from project.engine.api import DataError, first_line


class MNISTDataModule(ImageDataModule):
    """torchvision's MNIST under ``root/MNIST/raw``, downloaded when missing.

    Args:
        val_size: Training images held out for validation (the usual 5,000; a fraction when < 1).
        download: Download the data set when it is missing (the only network access, in ``prepare_data``).
        **kwargs: Options of :class:`~project.datamodules.base.ImageDataModule` (``root``, ``batch_size``, ...).
    """

    dataset_stats = ((0.1307,), (0.3081,))
    native_shape = (1, 28, 28)

    def __init__(self, download: bool = True, val_size: float = 5000, **kwargs: Any) -> None:
        super().__init__(val_size=val_size, **kwargs)
        self.download = download

    @property
    def class_names(self) -> list[str]:
        return [str(digit) for digit in range(10)]

    def prepare_data(self) -> None:
        # Called once per node before setup: the only place that downloads.
        for train in (True, False):
            self._dataset(train, download=self.download)

    def _dataset(self, train: bool, download: bool = False) -> MNIST:
        raw = os.path.join(self.root, "MNIST", "raw")
        _check_idx_files(raw, train)
        try:
            return MNIST(self.root, train=train, download=download)
        except RuntimeError as error:
            if "not found" in str(error) or "Error downloading" in str(error):
                hint = "the download failed (no network?)" if download else "--data.download is false"
                files = ", ".join(name for name, _ in MNIST.resources)
                raise DataError(
                    f"MNIST is not in {raw} and {hint}: put the four *-ubyte files there ({files}, gunzipped, "
                    f"from {' or '.join(MNIST.mirrors)}), or pass --data.root DIR where DIR/MNIST/raw holds them"
                ) from None
            raise DataError(f"MNIST files in {raw} are corrupt ({first_line(error)}): delete them and retry") from None
        except (ValueError, AssertionError, OSError) as error:
            raise DataError(f"MNIST files in {raw} are corrupt ({first_line(error)}): delete them and retry") from None

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        dataset = self._dataset(train)
        source = os.path.join(dataset.raw_folder, f"{'train' if train else 't10k'}-images-idx3-ubyte")
        images = uint8_images(dataset.data.unsqueeze(1), self.native_shape, source)
        labels = dataset.targets.long()
        if len(labels) != len(images) or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) <= 9):
            raise DataError(f"{source.replace('images-idx3', 'labels-idx1')}: labels do not match the images")
        return images.contiguous(), labels


def _check_idx_files(raw: str, train: bool) -> None:
    """Check a split's two IDX files, if present, naming the bad one: torchvision's own errors name neither."""
    prefix = "train" if train else "t10k"
    images, labels = (os.path.join(raw, f"{prefix}-{kind}") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))
    if not (os.path.isfile(images) and os.path.isfile(labels)):
        return  # missing: torchvision downloads them or says they are not found
    n_images, n_labels = _idx_length(images, (28, 28)), _idx_length(labels, ())
    if n_images != n_labels:
        raise DataError(f"{labels}: {n_labels} labels for the {n_images} images of {images}; delete both and retry")


def _idx_length(path: str, item_shape: tuple[int, ...]) -> int:
    """The number of items in an IDX file of uint8 items of ``item_shape``; a DataError naming the file if it is not."""
    ndim = 1 + len(item_shape)
    with open(path, "rb") as file:
        header = file.read(4 + 4 * ndim)
    # The magic number is 0x00 0x00, the type (0x08: unsigned byte) and the number of dimensions.
    if len(header) < 4 or header[:3] != b"\x00\x00\x08" or header[3] != ndim:
        raise DataError(
            f"{path}: not an MNIST IDX file of uint8 {ndim}-d data (magic {header[:4].hex() or 'missing'}); "
            "the file is corrupt: delete it and retry"
        )
    if len(header) < 4 + 4 * ndim:
        raise DataError(f"{path}: the header is truncated; the file is corrupt: delete it and retry")
    length, *shape = struct.unpack(f">{ndim}I", header[4:])
    if tuple(shape) != item_shape:
        raise DataError(f"{path}: holds items of shape {tuple(shape)}, MNIST's are {item_shape}; is this MNIST?")
    expected, size = len(header) + length * math.prod(item_shape), os.path.getsize(path)
    if size != expected:
        raise DataError(
            f"{path}: {size} bytes, but its header ({length} items) needs {expected}; the file is truncated or "
            "corrupt: delete it and retry"
        )
    return length
