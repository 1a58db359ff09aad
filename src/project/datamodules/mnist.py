"""MNIST: 28×28 gray digits, 55k/5k/10k train/val/test, parsed once by torchvision into memory."""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor
from torchvision.datasets import MNIST

from project.datamodules.base import ImageDataModule, uint8_images
from project.errors import DataError


class MNISTDataModule(ImageDataModule):
    """torchvision's MNIST under ``root/MNIST/raw``, downloaded when missing.

    Args:
        download: Download the data set when it is missing (the only network access, in ``prepare_data``).
        **kwargs: Options of :class:`~project.datamodules.base.ImageDataModule` (``root``, ``batch_size``, ...).
    """

    dataset_stats = ((0.1307,), (0.3081,))
    native_shape = (1, 28, 28)

    def __init__(self, download: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
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
        try:
            return MNIST(self.root, train=train, download=download)
        except RuntimeError as error:
            if "not found" in str(error) or "Error downloading" in str(error):
                hint = "download failed (no network?)" if download else "--data.download is false"
                raise DataError(
                    f"MNIST is not in {raw} and {hint}: put the four *-ubyte files there, "
                    f"or pass --data.root DIR where DIR/MNIST/raw holds them"
                ) from None
            raise DataError(f"MNIST files in {raw} are corrupt ({_first_line(error)}): delete them and retry") from None
        except (ValueError, AssertionError, OSError) as error:
            raise DataError(f"MNIST files in {raw} are corrupt ({_first_line(error)}): delete them and retry") from None

    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        dataset = self._dataset(train)
        source = os.path.join(dataset.raw_folder, f"{'train' if train else 't10k'}-images-idx3-ubyte")
        images = uint8_images(dataset.data.unsqueeze(1), self.native_shape, source)
        labels = dataset.targets.long()
        if len(labels) != len(images) or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) <= 9):
            raise DataError(f"{source.replace('images-idx3', 'labels-idx1')}: labels do not match the images")
        return images.contiguous(), labels


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
