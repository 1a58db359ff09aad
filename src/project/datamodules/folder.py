"""Your own images: one folder per class, decoded and resized once, then served like MNIST.

The layout is ``root/<class>/*.jpg`` (any of :data:`IMAGE_EXTENSIONS`, in any letter case, nested folders
allowed), or ``root/train/<class>/...`` with optional ``root/val/<class>/...`` and ``root/test/<class>/...``;
a split that has no folder is carved out of the training images, per class, with a fixed seed.

Every file is decoded once when the data module is set up: files that are not images, truncated files,
decompression bombs and symlinks that leave ``root`` are found there, listed in one warning and skipped (or
refused as a whole with ``strict=True``). Small sets (the usual case for a custom folder) are then held in
memory as one ``uint8`` tensor per split and served by :class:`~project.datamodules.base.InMemoryLoader`;
larger ones are decoded again in ``DataLoader`` workers. Either way batches are ``uint8`` images of
``(channels, image_size, image_size)``; normalization and augmentation run on the device, a batch at a time
(:meth:`~project.datamodules.base.ImageDataModule.on_after_batch_transfer`).
"""

from __future__ import annotations

import functools
import io
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from project.datamodules.base import ImageDataModule
from project.datamodules.loaders import EpochSeededSampler, InMemoryLoader, ResumableDataLoader, loader_seed
from project.datamodules.transforms import Normalize
from project.errors import DataError, first_line

#: File name endings read as images (compared in lower case). Anything else in a class folder is ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
#: PIL's default limit on width × height (``PIL.Image.MAX_IMAGE_PIXELS``): about a 9459 × 9459 image.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
SPLITS = ("train", "val", "test")
_VAL_FOLDERS = ("val", "valid", "validation")
_SPLIT_FOLDERS = frozenset(("train", "test", *_VAL_FOLDERS))
#: The only formats PIL may identify a file as: never EPS (Ghostscript) or other exotic decoders.
_PIL_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP")
#: Formats torchvision's native decoders read (the rest, e.g. BMP and animated WebP, go through PIL).
_TORCHVISION_FORMATS = frozenset(("JPEG", "MPO", "PNG", "WEBP", "GIF"))
#: Bad files listed in full in the warning or error; the rest are counted.
_LISTED = 20

CacheMode = Literal["auto", "always", "never"]
Item = tuple[str, int]


class FolderDataModule(ImageDataModule):
    """Images in class folders: ``root/<class>/*.jpg``, or ``root/{train,val,test}/<class>/*.jpg``.

    Class names are the sorted class folder names; in the split layout every split must have the same class
    folders. Splits without a folder are carved out of the training images per class (stratified), seeded by
    ``split_seed``, so every run sees the same split. Files and folders whose names start with a dot (and
    ``__MACOSX``) are ignored, and so are files without an image extension.

    At setup every image is decoded, converted to ``image_channels`` and resized (squashed) to
    ``image_size`` × ``image_size``. Conversions are deliberate: transparent pixels are composited on white,
    16-bit images keep their 8 high bits, palette images are expanded, and colour becomes gray with the
    ITU-R 601 luma weights (PIL's ``convert("L")``). Files that cannot be used, listed in one warning and
    skipped (an error with ``strict``), are: undecodable or truncated files, images of more than
    ``max_image_pixels`` pixels (decompression bombs; only the header is read), and symlinks (to files or
    folders) that resolve outside ``root``; symlinks inside ``root`` are followed.

    ``normalize="auto"`` or ``"dataset"`` uses the mean and standard deviation of the training images, per
    channel, computed exactly at setup.

    Args:
        root: The image folder.
        image_size: Images are resized to ``image_size`` × ``image_size`` (aspect ratio not kept).
        image_channels: 3 (RGB) or 1 (gray); every image is converted to it. (Not ``channels``: Lightning
            logs the model's and the data's hyperparameters together, and the CNN's ``channels`` are widths.)
        val_size: Fraction (< 1) of each class's training images held out for validation when there is no
            ``val`` folder.
        test_size: Fraction (< 1) of each class's training images held out for testing when there is no
            ``test`` folder.
        num_workers: ``DataLoader`` worker processes, for decoding at setup and, without the cache, batches.
        cache: ``auto`` keeps the decoded images in memory (on the training device) when they take less than
            2 GiB, ``always`` does regardless, ``never`` decodes them again in workers every epoch.
        strict: Raise an error listing the unusable files instead of skipping them with a warning.
        max_image_pixels: Refuse images with more pixels (width × height) than this.
        **kwargs: Options of :class:`~project.datamodules.base.ImageDataModule` (``batch_size``,
            ``normalize``, ``split_seed``, ``hflip``, ...).
    """

    #: ``cache="auto"`` holds the decoded images in memory when they take fewer bytes than this.
    cache_max_bytes = 2 * 1024**3

    def __init__(
        self,
        root: str = "data/images",
        image_size: int = 64,
        image_channels: int = 3,
        val_size: float = 0.1,
        test_size: float = 0.1,
        num_workers: int = 2,
        cache: CacheMode = "auto",
        strict: bool = False,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        **kwargs: Any,
    ) -> None:
        if image_size is None or image_size < 1:
            raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
        if image_channels not in (1, 3):
            raise ValueError(f"image_channels must be 1 (gray) or 3 (RGB), got {image_channels}")
        for name, value in (("val_size", val_size), ("test_size", test_size)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if val_size + test_size >= 1:
            raise ValueError(
                f"val_size + test_size must be below 1 to leave training images, got {val_size} + {test_size}"
            )
        if num_workers < 0:
            raise ValueError(f"num_workers must not be negative, got {num_workers}")
        if cache not in ("auto", "always", "never"):
            raise ValueError(f"cache must be 'auto', 'always' or 'never', got {cache!r}")
        if max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
        super().__init__(root=root, image_size=image_size, val_size=val_size, **kwargs)
        self.native_shape = (image_channels, image_size, image_size)
        self._stats_ready = False  # dataset_stats is computed from the training images at setup
        self._scan_result: _Scan | None = None
        self._split_items: dict[str, list[Item]] | None = None
        self._in_memory: bool | None = None
        self._samples: dict[str, tuple[list[str], list[int]]] = {}  # the DataLoader path's valid files
        self._reported: set[str] = set()

    # ------------------------------------------------------------------ what the model needs to know
    @property
    def class_names(self) -> list[str]:
        return list(self._scan().class_names)

    @property
    def in_memory(self) -> bool | None:
        """Whether the decoded images are held in memory; ``None`` until setup decides."""
        return self._in_memory

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        if not self._stats_ready and self._uses_dataset_stats():
            self._prepare({"train"})
        return super().normalization()

    def _uses_dataset_stats(self) -> bool:
        mode = self.hparams.normalize
        if mode == "dataset":
            return True
        if mode != "auto":
            return False
        model = self.trainer.lightning_module if self.trainer is not None else None
        return getattr(model, "preferred_normalization", None) is None

    # ------------------------------------------------------------------ finding the files
    def _scan(self) -> _Scan:
        if self._scan_result is None:
            try:
                self._scan_result = _scan_folder(self.root)
            except OSError as error:  # e.g. a folder without read permission
                where = error.filename or self.root
                raise DataError(f"cannot list {where}: {error.strerror or error}") from None
        return self._scan_result

    def splits_files(self) -> dict[str, list[Item]]:
        """``{"train"|"val"|"test": [(path, label), ...]}`` of all files found, per folder or seeded split."""
        if self._split_items is None:
            scan = self._scan()
            fractions = {"val": self.hparams.val_size, "test": self.hparams.test_size}
            carve = {split: fraction for split, fraction in fractions.items() if split not in scan.items}
            items = dict(scan.items)
            items.update(_carve(scan.items["train"], carve, self.hparams.split_seed))
            for split, fraction in carve.items():
                if fraction > 0 and not items[split]:
                    raise DataError(
                        f"--data.{split}_size {fraction} of the {len(scan.items['train'])} images in "
                        f"{self.root} gives an empty {split} split: add images, raise it, or set it to 0"
                    )
            self._split_items = {split: items[split] for split in SPLITS}
        return self._split_items

    # ------------------------------------------------------------------ decoding
    def prepare_data(self) -> None:
        self._scan()  # fail early, before any process forks, if the folder is missing or malformed

    def setup(self, stage: str) -> None:
        wanted = {"fit": {"train", "val", "test"}, "validate": {"val"}, "test": {"test"}}.get(stage, set())
        self._prepare(wanted)
        stats = self.normalization()
        self.normalizer = Normalize(*stats) if stats else None

    def _prepare(self, wanted: Iterable[str]) -> None:
        """Decode the ``wanted`` splits not done yet; report unusable files once; compute the statistics."""
        items = self.splits_files()
        todo = [
            split for split in SPLITS if split in wanted and split not in self.splits and split not in self._samples
        ]
        if not todo:
            return
        channels, size, _ = self.native_shape
        if self._in_memory is None:
            total = sum(len(split_items) for split_items in items.values()) * channels * size * size
            cache = self.hparams.cache
            self._in_memory = cache == "always" or (cache == "auto" and total < self.cache_max_bytes)
        bad = [entry for entry in self._scan().refused if entry[0] not in self._reported]
        decoded = {}
        for split in todo:
            decoded[split] = self._decode(items[split], keep=self._in_memory, histogram=split == "train")
            bad += decoded[split][3]
        self._report(bad)
        for split, (images, keep, histogram, _) in decoded.items():
            split_items = [items[split][i] for i in keep]
            labels = [label for _, label in split_items]
            if split == "train":
                self._check_every_class(labels)
                self.dataset_stats = _stats(histogram)
                self._stats_ready = True
            if self._in_memory:
                self.splits[split] = (images, torch.tensor(labels, dtype=torch.long))
            else:
                self._samples[split] = ([path for path, _ in split_items], labels)

    def _decode(
        self, items: Sequence[Item], keep: bool, histogram: bool
    ) -> tuple[Tensor | None, list[int], Tensor | None, list[tuple[str, str]]]:
        """Decode every file (in workers); return the images, the indices of the good ones, the pixel
        histogram (channels × 256), and ``(path, reason)`` for each bad one."""
        channels, size, _ = self.native_shape
        paths = [path for path, _ in items]
        dataset = _DecodeDataset(paths, channels, size, self.hparams.max_image_pixels, keep, histogram)
        # Worker processes pay off only for more than a few batches of files.
        workers = 0 if len(paths) < 256 else min(self.hparams.num_workers, math.ceil(len(paths) / 64))
        loader = DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=_collate_decoded)
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
        return images, good, counts, bad

    def _report(self, bad: list[tuple[str, str]]) -> None:
        if not bad:
            return
        listing = "\n".join(f"  {path}: {reason}" for path, reason in bad[:_LISTED])
        if len(bad) > _LISTED:
            listing += f"\n  ... and {len(bad) - _LISTED} more"
        if self.hparams.strict:
            raise DataError(
                f"{len(bad)} unusable file(s) in {self.root} "
                f"(--data.strict is true; set it to false to skip them):\n{listing}"
            )
        self._reported.update(path for path, _ in bad)
        rank_zero_warn(
            f"skipping {len(bad)} unusable file(s) in {self.root} (--data.strict true refuses them):\n" + listing
        )

    def _check_every_class(self, labels: list[int]) -> None:
        present = set(labels)
        missing = [name for label, name in enumerate(self.class_names) if label not in present]
        if missing:
            raise DataError(f"class(es) {missing} in {self.root} have no usable training image")

    # ------------------------------------------------------------------ batches
    def _loader(self, split: str, shuffle: bool) -> InMemoryLoader | DataLoader:
        if split not in self.splits and split not in self._samples:
            self.setup("test" if split == "test" else "fit")
        if split in self.splits:
            return super()._loader(split, shuffle)
        paths, labels = self._samples[split]
        channels, size, _ = self.native_shape
        dataset = FolderImageDataset(paths, labels, channels, size, self.hparams.max_image_pixels)
        trainer = self.trainer
        workers = self.hparams.num_workers
        seed = loader_seed()
        loader_class = ResumableDataLoader if shuffle else DataLoader
        return loader_class(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            sampler=EpochSeededSampler(dataset, seed) if shuffle else None,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=trainer is not None and trainer.strategy.root_device.type == "cuda",
            # The workers' base seed is drawn from this generator, not from the global one: starting an epoch then
            # leaves the global random state (dropout masks, augmentation) as it was, so a resumed run matches.
            generator=torch.Generator().manual_seed(seed),
        )

    def train_dataloader(self) -> InMemoryLoader | DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> InMemoryLoader | DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> InMemoryLoader | DataLoader:
        return self._loader("test", shuffle=False)


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


def load_image(
    path: str | os.PathLike[str],
    channels: int = 3,
    size: int | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> Tensor:
    """One image file as a ``uint8`` tensor ``(channels, size, size)`` (``size=None`` keeps its size).

    The header is read first (by PIL, restricted to JPEG, PNG, BMP, GIF and WebP) and images of more than
    ``max_image_pixels`` pixels are refused before decoding. JPEG, PNG, GIF and WebP are decoded by
    torchvision, the rest by PIL; EXIF orientation is applied. Raises :class:`DataError` naming the file when
    it is not a usable image.
    """
    try:
        return _load(os.fspath(path), channels, size, max_image_pixels)
    except _BadImage as error:
        raise DataError(f"{os.fspath(path)}: {error}") from None


# ---------------------------------------------------------------------- decoding one file
class _BadImage(Exception):
    """The file is not a usable image; the message says why."""


def _load(path: str, channels: int, size: int | None, max_pixels: int) -> Tensor:
    try:
        with open(path, "rb") as file:
            data = bytearray(file.read())
    except OSError as error:
        raise _BadImage(f"cannot be read ({error.strerror or error})") from None
    if not data:
        raise _BadImage("empty file")
    with warnings.catch_warnings():
        # PIL warns about large images (we check the size ourselves) and about palette transparency (handled).
        warnings.simplefilter("ignore")
        try:
            pil = Image.open(io.BytesIO(data), formats=_pil_formats())
        except Image.DecompressionBombError as error:
            raise _BadImage(f"refused as a decompression bomb ({error})") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
            raise _BadImage(f"not a readable image (formats: {', '.join(_PIL_FORMATS)})") from None
        width, height = pil.size
        if width * height > max_pixels:
            raise _BadImage(
                f"{width}x{height} = {width * height} pixels is more than max_image_pixels={max_pixels}: "
                f"refused as a possible decompression bomb"
            )
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
    if size is not None and tuple(image.shape[-2:]) != (size, size):
        image = TF.resize(image, [size, size], antialias=True)
    return image.contiguous()


@functools.cache
def _pil_formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin; MPO (multi-picture JPEG from cameras) is only known after it
    return tuple(name for name in _PIL_FORMATS if name in Image.OPEN)


def _decode_with_pil(pil: Image.Image, alpha: bool) -> Tensor:
    try:
        pil = ImageOps.exif_transpose(pil)
        if pil.mode.startswith("I"):  # 16-bit (or 32-bit integer) gray: keep the high byte of 16 bits
            array = (np.clip(np.asarray(pil, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)[None]
        elif alpha:
            array = np.asarray(pil.convert("RGBA")).transpose(2, 0, 1)
        elif pil.mode in ("L", "1"):
            array = np.asarray(pil.convert("L"))[None]
        else:
            array = np.asarray(pil.convert("RGB")).transpose(2, 0, 1)
    except Image.DecompressionBombError as error:
        raise _BadImage(f"refused as a decompression bomb ({error})") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as error:
        raise _BadImage(f"cannot be decoded ({first_line(error)})") from None
    return torch.from_numpy(np.ascontiguousarray(array))


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


def _stats(histogram: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation in [0, 1] from exact pixel counts (no rounding drift)."""
    means, stds = [], []
    for counts in histogram.tolist():
        n = sum(counts)
        s1 = sum(value * count for value, count in enumerate(counts))
        s2 = sum(value * value * count for value, count in enumerate(counts))
        mean = s1 / (n * 255)
        std = math.sqrt(max(s2 * n - s1 * s1, 0)) / (n * 255)
        means.append(round(mean, 6))
        stds.append(round(std, 6) if std > 1e-6 else 1.0)  # a constant channel: leave its scale alone
    return tuple(means), tuple(stds)


# ---------------------------------------------------------------------- finding the files
class _Scan(NamedTuple):
    class_names: list[str]
    #: Split folder ("train", "val", "test") → sorted ``(path, label)``; only the splits that have a folder.
    items: dict[str, list[Item]]
    #: ``(path, reason)`` of symlinks refused because they leave the root.
    refused: list[tuple[str, str]]


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _inside(path: str, root_real: str) -> bool:
    try:
        return os.path.commonpath([path, root_real]) == root_real
    except ValueError:  # different drives
        return False


def _leaves_root(entry: os.DirEntry[str], root_real: str, refused: list[tuple[str, str]]) -> bool:
    """Whether ``entry`` is a symlink that resolves outside the root; such entries are recorded as refused."""
    if not entry.is_symlink():
        return False
    target = os.path.realpath(entry.path)
    if _inside(target, root_real):
        return False
    refused.append((entry.path, f"symlink to {target}, outside the root: refused"))
    return True


def _folders(path: str, root_real: str, refused: list[tuple[str, str]]) -> dict[str, str]:
    """Visible sub-folders of ``path`` inside the root: name → path. Symlinks out of the root are refused."""
    folders = {}
    with os.scandir(path) as entries:
        for entry in entries:
            if _hidden(entry.name) or not entry.is_dir() or _leaves_root(entry, root_real, refused):
                continue
            folders[entry.name] = entry.path
    return folders


def _image_files(folder: str, root_real: str, refused: list[tuple[str, str]]) -> list[str]:
    """Image files under ``folder`` (recursively, following symlinks that stay inside the root), sorted."""
    files: list[str] = []
    visited: set[str] = set()

    def walk(path: str) -> None:
        real = os.path.realpath(path)
        if real in visited:  # a symlink loop, or a folder linked twice
            return
        visited.add(real)
        with os.scandir(path) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if _hidden(entry.name):
                    continue
                is_dir = entry.is_dir()
                if (not is_dir and not _is_image_name(entry.name)) or _leaves_root(entry, root_real, refused):
                    continue
                if is_dir:
                    walk(entry.path)
                else:
                    files.append(entry.path)  # a broken symlink stays: decoding reports it

    walk(folder)
    return files


def _scan_folder(root: str) -> _Scan:
    """Find the layout, the classes and the image files under ``root``; raise DataError when malformed."""
    if not os.path.isdir(root):
        raise DataError(
            f"image folder {root} does not exist or is not a folder: pass --data.root DIR with images in "
            f"DIR/<class>/ (or DIR/train/<class>/)"
        )
    root_real = os.path.realpath(root)
    refused: list[tuple[str, str]] = []
    top = _folders(root, root_real, refused)
    split_names = _SPLIT_FOLDERS & top.keys()
    if split_names:
        others = sorted(top.keys() - _SPLIT_FOLDERS)
        if others:
            raise DataError(
                f"{root} mixes split folders {sorted(split_names)} with other folders {others}: put classes "
                f"either in {root}/<class>/ or in {root}/train/<class>/, not both"
            )
        if "train" not in top:
            raise DataError(f"{root} has split folders {sorted(split_names)} but no train folder")
        val = [name for name in _VAL_FOLDERS if name in top]
        if len(val) > 1:
            raise DataError(f"{root} has several validation folders {val}: keep one")
        split_dirs = {"train": top["train"]}
        if val:
            split_dirs["val"] = top[val[0]]
        if "test" in top:
            split_dirs["test"] = top["test"]
    else:
        split_dirs = {"train": root}
    class_dirs = {}
    for split, path in split_dirs.items():
        class_dirs[split] = _folders(path, root_real, refused)
        if not class_dirs[split]:
            loose = any(_is_image_name(name) and not _hidden(name) for name in os.listdir(path))
            hint = " (its images must be in class sub-folders)" if loose else ""
            raise DataError(f"{path} has no class folders{hint}: expected {path}/<class>/*.jpg")
    class_names = sorted(class_dirs["train"])
    for split, folders in class_dirs.items():
        if split != "train" and sorted(folders) != class_names:
            unknown = sorted(folders.keys() - set(class_names))
            missing = sorted(set(class_names) - folders.keys())
            raise DataError(
                f"the class folders of {split_dirs[split]} differ from those of {split_dirs['train']}: "
                + "; ".join(
                    part
                    for part in (
                        f"unknown classes {unknown}" if unknown else "",
                        f"missing classes {missing}" if missing else "",
                    )
                    if part
                )
            )
    items = {}
    for split, folders in class_dirs.items():
        items[split] = []
        for label, name in enumerate(class_names):
            files = _image_files(folders[name], root_real, refused)
            if not files:
                raise DataError(
                    f"class folder {folders[name]} has no images ({', '.join(IMAGE_EXTENSIONS)}): "
                    f"add some or remove the folder"
                )
            items[split] += [(path, label) for path in files]
    return _Scan(class_names, items, refused)


def _carve(train: list[Item], fractions: dict[str, float], seed: int) -> dict[str, list[Item]]:
    """Split ``train`` per class into train and the ``fractions``' splits, seeded; keep a training image."""
    out: dict[str, list[Item]] = {"train": [], **{split: [] for split in fractions}}
    if not fractions:
        out["train"] = list(train)
        return out
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[Item]] = {}
    for item in train:
        by_class.setdefault(item[1], []).append(item)
    for label in sorted(by_class):
        group = by_class[label]
        order = torch.randperm(len(group), generator=generator).tolist()
        start = 0
        for split, fraction in fractions.items():
            count = min(int(len(group) * fraction + 0.5), len(group) - 1 - start)
            out[split] += [group[i] for i in sorted(order[start : start + count])]
            start += count
        out["train"] += [group[i] for i in sorted(order[start:])]
    return out
