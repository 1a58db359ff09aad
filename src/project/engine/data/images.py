"""Image files to ``uint8`` tensors: one file (:func:`load_image`, also used by ``predict.py``), or many at once
in ``DataLoader`` workers (:func:`decode_files` and :class:`FolderImageDataset`, used by the folder data module).
"""

from __future__ import annotations

import functools
import io
import math
import os
import struct
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from project.engine.api import DEFAULT_LOADER_TIMEOUT, BoundedWait, DataError, first_line, worker_options
from project.engine.data.files import image_extensions

#: PIL's default limit on width × height (``PIL.Image.MAX_IMAGE_PIXELS``): about a 9459 × 9459 image.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
#: Formats torchvision's native decoders read (the rest, e.g. BMP, TIFF and animated WebP, go through PIL). Not PNG:
#: torchvision 0.29.1's decode_png ends the process (SIGSEGV) on any libpng error, e.g. a corrupt IDAT chunk behind a
#: valid header, where Pillow raises an error (after a pass checking every chunk's CRC, as libpng does); the same
#: pixels, slower (benchmarks/README.md). tests/test_crashing_files.py checks that torchvision still crashes, so an
#: upgrade says when the fast path may come back.
_TORCHVISION_FORMATS = frozenset(("JPEG", "MPO", "WEBP", "GIF"))


def load_image(
    path: str | os.PathLike[str],
    channels: int = 3,
    size: int | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Tensor:
    """One image file as a ``uint8`` tensor ``(channels, size, size)`` (``size=None`` keeps its size).

    The header is read first (by PIL, restricted to :func:`image_extensions`' formats) and images of more than
    ``max_image_pixels`` pixels are refused before decoding. JPEG, PNG, GIF and WebP are decoded by
    torchvision, the rest by PIL; EXIF orientation is applied. Raises :class:`DataError` naming the file when
    it is not a usable image.
    """
    try:
        return _load(os.fspath(path), channels, size, max_image_pixels)
    except _BadImage as error:
        raise error.public(f"{os.fspath(path)}: {error}") from None


def decode_image_bytes(
    data: bytes, channels: int = 3, size: int | None = None, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Tensor:
    """:func:`load_image` for an image file's bytes (e.g. an upload). Raises :class:`EmptyImage`,
    :class:`ImageTooLarge` or :class:`NotAnImage`."""
    try:
        return _decode(bytearray(data), channels, size, max_image_pixels)
    except _BadImage as error:
        raise error.public(str(error)) from None


class NotAnImage(DataError):
    """A file (or upload) that is not a usable image; the message says why."""


class EmptyImage(NotAnImage):
    """No bytes at all."""


class ImageTooLarge(NotAnImage):
    """More pixels than allowed: refused before decoding, as a possible decompression bomb."""


class FolderImageDataset(Dataset):
    """``(uint8 image (channels, size, size), label)`` for each file, decoded by :func:`load_image`."""

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[int],
        channels: int = 3,
        size: int = 64,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths, self.labels = list(paths), list(labels)
        self.channels, self.size, self.max_image_pixels = channels, size, max_image_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = load_image(self.paths[index], self.channels, self.size, self.max_image_pixels)
        return image, self.labels[index]


class Decoded(NamedTuple):
    """What :func:`decode_files` found."""

    #: The good images, ``(len(good), channels, size, size)``; ``None`` unless kept.
    images: Tensor | None
    #: Indices (into the paths) of the files that decoded.
    good: list[int]
    #: Pixel counts of the good images, ``(channels, 256)``; ``None`` unless asked for.
    histogram: Tensor | None
    #: ``(path, reason)`` of each file that did not decode.
    bad: list[tuple[str, str]]


def decode_files(
    paths: Sequence[str], channels: int, size: int, max_pixels: int, keep: bool, histogram: bool, num_workers: int
) -> Decoded:
    """Decode every file (in up to ``num_workers`` workers), keeping the images and/or their pixel histogram."""
    dataset = _DecodeDataset(list(paths), channels, size, max_pixels, keep, histogram)
    # Worker processes pay off only for more than a few batches of files.
    workers = 0 if len(paths) < 256 else min(num_workers, math.ceil(len(paths) / 64))
    # A generator of its own: a DataLoader draws its workers' base seed from the global one otherwise, and a run's
    # random stream must not depend on whether setup decoded (or read what an earlier run kept: scan_cache).
    options = worker_options(dataset, workers, DEFAULT_LOADER_TIMEOUT)
    loader = _DecodingLoader(
        dataset, batch_size=64, collate_fn=_collate_decoded, generator=torch.Generator(), **options
    )
    images = torch.empty((len(paths), channels, size, size), dtype=torch.uint8) if keep else None
    counts = torch.zeros((channels, 256), dtype=torch.long) if histogram else None
    good: list[int] = []
    bad: list[tuple[str, str]] = []
    start = 0
    for batch_images, batch_counts, errors in loader:
        for offset, error in enumerate(errors):
            if error is None:
                good.append(start + offset)
            else:
                bad.append((paths[start + offset], error))
        if images is not None and batch_images is not None:
            first = len(good) - len(batch_images)
            images[first : len(good)] = batch_images
        if counts is not None and batch_counts is not None:
            counts += batch_counts
        start += len(errors)
    if images is not None and len(good) < len(paths):
        images = images[: len(good)].clone()
    return Decoded(images, good, counts, bad)


class _DecodingLoader(BoundedWait, DataLoader):
    what = "setup's decoding of the image files"


class _DecodeDataset(Dataset):
    """Decodes files at setup: ``(image or None, pixel histogram or None, error or None)`` per file."""

    def __init__(
        self, paths: list[str], channels: int, size: int, max_pixels: int, keep: bool, histogram: bool
    ) -> None:
        self.paths, self.channels, self.size, self.max_pixels = paths, channels, size, max_pixels
        self.keep, self.histogram = keep, histogram

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor | None, Tensor | None, str | None]:
        try:
            image = _load(self.paths[index], self.channels, self.size, self.max_pixels)
        except _BadImage as error:
            return None, None, str(error)
        hist = None
        if self.histogram:
            hist = torch.stack([torch.bincount(plane.flatten(), minlength=256) for plane in image])
        return (image if self.keep else None), hist, None


def _collate_decoded(
    batch: list[tuple[Tensor | None, Tensor | None, str | None]],
) -> tuple[Tensor | None, Tensor | None, list[str | None]]:
    """One tensor of the good images, their summed histogram, and each file's error (``None`` when good).

    Stacking in the worker sends one shared-memory tensor per batch instead of one per image.
    """
    images = [image for image, _, _ in batch if image is not None]
    counts = [hist for _, hist, _ in batch if hist is not None]
    return (
        torch.stack(images) if images else None,
        torch.stack(counts).sum(0) if counts else None,
        [error for _, _, error in batch],
    )


# ---------------------------------------------------------------------- decoding one file
class _BadImage(Exception):
    """The file is not a usable image; the message says why (without the file's name)."""

    public: type[NotAnImage] = NotAnImage


class _Empty(_BadImage):
    public = EmptyImage


class _TooLarge(_BadImage):
    public = ImageTooLarge


def _load(path: str, channels: int, size: int | None, max_pixels: int) -> Tensor:
    try:
        with open(path, "rb") as file:
            data = bytearray(file.read())
    except OSError as error:
        raise _BadImage(f"cannot be read ({error.strerror or error})") from None
    return _decode(data, channels, size, max_pixels)


def _decode(data: bytearray, channels: int, size: int | None, max_pixels: int) -> Tensor:
    if not data:
        raise _Empty("empty file")
    with warnings.catch_warnings():
        # PIL warns about large images (we check the size ourselves) and about palette transparency (handled).
        warnings.simplefilter("ignore")
        try:
            pil = Image.open(io.BytesIO(data), formats=_pil_formats())
        except Image.DecompressionBombError as error:
            raise _TooLarge(f"refused as a decompression bomb ({error})") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
            raise _BadImage("not an image in a format Pillow reads") from None
        width, height = pil.size
        if width * height > max_pixels:
            raise _TooLarge(
                f"{width}x{height} = {width * height} pixels is more than max_image_pixels={max_pixels}: "
                f"refused as a possible decompression bomb"
            )
        if pil.format == "PNG":
            _verify_png(data)
        alpha = pil.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in pil.info
        image = None
        if pil.format in _TORCHVISION_FORMATS and not (pil.format == "GIF" and alpha):
            mode = ImageReadMode.RGB_ALPHA if alpha else ImageReadMode.RGB
            try:
                image = decode_image(torch.frombuffer(data, dtype=torch.uint8), mode=mode, apply_exif_orientation=True)
            except RuntimeError:
                image = None  # PIL decides: it reads some files torchvision does not, and says why it cannot
        if image is None:
            image = _decode_with_pil(pil, alpha)
    if image.ndim == 4:  # animated GIF: the first frame
        image = image[0]
    image = _to_channels(image, channels)
    if size is None:
        # As decoded (torchvision's decoders give channels-last strides): a preset crops and resizes it next, fastest
        # from that layout, and a copy here would cost as much as the resize.
        return image
    if tuple(image.shape[-2:]) != (size, size):
        image = TF.resize(image, [size, size], antialias=True)
    return image.contiguous()


def _verify_png(data: bytearray) -> None:
    """Every chunk's checksum, the image data's too, which Pillow's decoder does not check (libpng refuses them)."""
    try:
        Image.open(io.BytesIO(data), formats=("PNG",)).verify()
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as error:
        raise _BadImage(f"cannot be decoded ({first_line(error)})") from None


@functools.cache
def _pil_formats() -> tuple[str, ...]:
    return tuple(sorted(name for name in set(image_extensions().values()) if name in Image.OPEN))


def _decode_with_pil(pil: Image.Image, alpha: bool) -> Tensor:
    try:
        ImageOps.exif_transpose(pil, in_place=True)  # in place: a copy would cost as much as the decoding
        if pil.mode.startswith("I"):  # 16-bit (or 32-bit integer) gray: keep the high byte of 16 bits
            array = (np.clip(np.asarray(pil, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)[..., None]
        elif alpha:
            array = np.array(pil if pil.mode == "RGBA" else pil.convert("RGBA"))
        elif pil.mode in ("L", "1"):
            array = np.array(pil if pil.mode == "L" else pil.convert("L"))[..., None]
        else:
            array = np.array(pil if pil.mode == "RGB" else pil.convert("RGB"))
    except Image.DecompressionBombError as error:
        raise _TooLarge(f"refused as a decompression bomb ({error})") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as error:
        raise _BadImage(f"cannot be decoded ({first_line(error)})") from None
    # (H, W, C) as (C, H, W) with channels-last strides, as torchvision's decoders return it: no copy.
    return torch.from_numpy(array).permute(2, 0, 1)


def _to_channels(image: Tensor, channels: int) -> Tensor:
    """``(C, H, W)`` of 1 to 4 channels (gray, gray+alpha, RGB, RGBA), 8 or 16 bits → uint8 ``channels``."""
    if image.dtype != torch.uint8:
        image = (image.to(torch.int32) >> 8).to(torch.uint8)  # 16 bits: the high byte
    if image.shape[0] in (2, 4):  # composite on white: what an image viewer shows
        color, alpha = image[:-1].to(torch.int32), image[-1:].to(torch.int32)
        image = ((color * alpha + 255 * (255 - alpha) + 127) // 255).to(torch.uint8)
    if image.shape[0] == channels:
        return image
    if channels == 3:
        return image.expand(3, -1, -1)
    red, green, blue = image.to(torch.int32)
    return ((red * 299 + green * 587 + blue * 114 + 500) // 1000).to(torch.uint8)[None]
