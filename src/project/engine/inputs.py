"""How one raw image becomes a model input, by a checkpoint's saved ``preprocessing``: what ``predict.py`` does for
files and ``serve.py`` for request bodies, written once. The same steps as the folder data module: decode (formats,
channels, decompression bombs: :mod:`project.engine.data.images`), resize, scale to [0, 1], normalize."""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from project.engine.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    EmptyImage,
    ImageTooLarge,
    NotAnImage,
    decode_image_bytes,
    load_image,
)
from project.engine.errors import UserError

__all__ = [
    "EmptyImage",
    "ImageTooLarge",
    "NotAnImage",
    "bytes_input",
    "file_input",
    "model_input",
    "saved_preprocessing",
]


def saved_preprocessing(model: Any, source: str | os.PathLike[str] = "the checkpoint") -> tuple[list[str], dict]:
    """A model's saved class names and preprocessing; a one-line error when it has none (not from this template)."""
    hparams = model.hparams
    if not hparams.get("preprocessing") or not hparams.get("class_names"):
        raise UserError(f"{source}: no class names or preprocessing in it: was it trained with this template?")
    return list(hparams.class_names), dict(hparams.preprocessing)


def model_input(image: Tensor, preprocessing: dict[str, Any]) -> Tensor:
    """A decoded ``uint8`` image ``(C, H, W)`` as the model's input: resized, in [0, 1], normalized."""
    height, width = preprocessing["image_size"]
    if preprocessing.get("resize_shorter_to"):  # the imagenet preset's evaluation: the shorter side, then the centre
        image = TF.resize(image, [int(preprocessing["resize_shorter_to"])], antialias=True)
        image = TF.center_crop(image, [height, width])
    elif tuple(image.shape[-2:]) != (height, width):
        image = TF.resize(image, [height, width], antialias=True)  # as the folder data module resizes
    inputs = image.float() / 255
    if preprocessing.get("mean") is not None and preprocessing.get("std") is not None:
        inputs = TF.normalize(inputs, preprocessing["mean"], preprocessing["std"])
    return inputs


def file_input(path: str | os.PathLike[str], preprocessing: dict[str, Any]) -> Tensor:
    """The model input for one file; raises :class:`NotAnImage` (a ``DataError``) naming it when it is not usable."""
    return model_input(load_image(path, channels=int(preprocessing["channels"])), preprocessing)


def bytes_input(data: bytes, preprocessing: dict[str, Any], max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Tensor:
    """The model input for an image file's bytes; raises :class:`EmptyImage`, :class:`ImageTooLarge` (a possible
    decompression bomb) or :class:`NotAnImage`."""
    image = decode_image_bytes(data, int(preprocessing["channels"]), max_image_pixels=max_image_pixels)
    return model_input(image, preprocessing)
