"""Your own images: :class:`FolderDataModule`, one folder per class, decoded and resized once, then served like
MNIST (finding the files is in :mod:`~project.engine.data.files`, decoding them in :mod:`~project.engine.data.images`),
or decoded in ``DataLoader`` workers every epoch (:mod:`~project.engine.data.folder_loading`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from project.datamodules.base import DEFAULT_IMAGE_SIZE, ImageDataModule
from project.engine.api import DEFAULT_LOADER_TIMEOUT, DataError, loader_seed
from project.engine.data import (
    DEFAULT_MAX_IMAGE_PIXELS,
    SPLITS,
    Item,
    PresetImages,
    Scan,
    SkippedFiles,
    build_preset,
    carve,
    decode_files,
    decode_or_reuse,
    extension_counts,
    folder_loader,
    scan_folder,
)

#: Bad files listed in full in the warning or error; the rest are counted.
_LISTED = 20

CacheMode = Literal["auto", "always", "never"]


class FolderDataModule(ImageDataModule):
    """Images in class folders: ``root/<class>/*.jpg``, or ``root/{train,val,test}/<class>/*.jpg``.

    Class names are the sorted class folder names; in the split layout every split must have the same class
    folders. Splits without a folder are carved out of the training images per class (stratified), seeded by
    ``split_seed``, so every run sees the same split. Files and folders whose names start with a dot (and
    ``__MACOSX``) are ignored; so are files whose extension is not of a format Pillow reads (JPEG, PNG, TIFF, BMP,
    GIF, WebP, ...: :func:`~project.engine.data.files.image_extensions`), which one warning counts at setup.

    At setup every image is decoded, converted to ``image_channels`` and resized (squashed) to
    ``image_size`` × ``image_size``. Conversions are deliberate: transparent pixels are composited on white,
    16-bit images keep their 8 high bits, palette images are expanded, and colour becomes gray with the
    ITU-R 601 luma weights (PIL's ``convert("L")``). Files that cannot be used, listed in one warning and
    skipped (an error with ``strict``), are: undecodable or truncated files, images of more than
    ``max_image_pixels`` pixels (decompression bombs; only the header is read), and symlinks (to files or
    folders) that resolve outside ``root``; symlinks inside ``root`` are followed.

    Batches are ``uint8`` images of ``(image_channels, image_size, image_size)``, served from memory by
    :class:`~project.engine.loaders.InMemoryLoader` or decoded again in ``DataLoader`` workers (see
    ``cache`` and ``preset``); normalization and augmentation run on the device, a batch at a time. A file that
    a worker cannot decode any more is left out of its batch and listed (:class:`.folder_loading.SkippedFiles`).

    ``normalize="auto"`` or ``"dataset"`` uses the mean and standard deviation of the training images, per
    channel, computed exactly at setup.

    Args:
        root: The image folder.
        image_size: Images are resized to ``image_size`` × ``image_size`` (aspect ratio not kept); ``auto``: the
            pretrained weights' size on the command line, else 64.
        image_channels: 3 (RGB) or 1 (gray); every image is converted to it. (Not ``channels``: Lightning
            logs the model's and the data's hyperparameters together, and the CNN's ``channels`` are widths.)
        val_size: Fraction (< 1) of each class's training images held out for validation when there is no
            ``val`` folder.
        test_size: Fraction (< 1) of each class's training images held out for testing when there is no
            ``test`` folder.
        num_workers: ``DataLoader`` worker processes, for decoding at setup and, without the cache, batches.
        cache: ``auto`` keeps the decoded images in memory (on the training device) when they take less than
            2 GiB, ``always`` does regardless, ``never`` decodes them again in workers every epoch (what setup
            learned of them is kept for the next run while they are unchanged: :mod:`.scan_cache`).
        strict: Raise an error naming the unusable files instead of skipping them with a warning.
        loader_timeout: Seconds to wait for one batch from the workers before the run stops with an error.
        max_image_pixels: Refuse images with more pixels (width × height) than this.
        **kwargs: Options of :class:`~project.datamodules.base.ImageDataModule` (``batch_size``,
            ``normalize``, ``split_seed``, ``hflip``, ``preset``, ...). ``preset imagenet`` decodes the original files
            in workers every epoch (:mod:`.presets`): a random resized crop and flip drawn from ``(seed, epoch,
            index)`` to train; the shorter side to ``image_size`` × 256 / 224, centre crop to evaluate.
    """

    presets = ("squash", "imagenet")
    #: Which files are usable, not their pixels: the shards keep the files.
    prepare_args = {"cache": "never"}

    #: ``cache="auto"`` holds the decoded images in memory when they take fewer bytes than this.
    cache_max_bytes = 2 * 1024**3

    def __init__(
        self,
        root: str = "data/images",
        image_size: int | Literal["auto"] = DEFAULT_IMAGE_SIZE,
        image_channels: int = 3,
        val_size: float = 0.1,
        test_size: float = 0.1,
        num_workers: int = 2,
        cache: CacheMode = "auto",
        strict: bool = False,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        loader_timeout: float = DEFAULT_LOADER_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        if image_size == "auto":  # no model asked for a size (the command line resolves it for pretrained weights)
            image_size = DEFAULT_IMAGE_SIZE
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
        if kwargs.get("preset") == "imagenet" and cache == "always":
            raise ValueError("cache 'always' holds squashed images; preset 'imagenet' crops the original files")
        if max_image_pixels < 1:
            raise ValueError(f"max_image_pixels must be positive, got {max_image_pixels}")
        super().__init__(root=root, image_size=image_size, val_size=val_size, **kwargs)
        self.native_shape = (image_channels, image_size, image_size)
        self._stats_ready = False  # dataset_stats is computed from the training images at setup
        self._scan_result: Scan | None = None
        self._split_items: dict[str, list[Item]] | None = None
        self._in_memory: bool | None = None
        self._samples: dict[str, tuple[list[str], list[int]]] = {}  # the DataLoader path's valid files
        self._reported: set[str] = set()
        self._noted_skipped = False
        self._skipped = SkippedFiles(strict)  # files that turn bad after setup, met in the workers

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
        # "auto" is the data set's own statistics here: the CLI turns it into "imagenet" for pretrained models.
        return self.hparams.normalize in ("auto", "dataset")

    # ------------------------------------------------------------------ finding the files
    def _scan(self) -> Scan:
        if self._scan_result is None:
            try:
                self._scan_result = scan_folder(self.root)
            except OSError as error:  # e.g. a folder without read permission
                where = error.filename or self.root
                raise DataError(f"cannot list {where}: {error.strerror or error}") from None
        return self._scan_result

    def splits_files(self) -> dict[str, list[Item]]:
        """``{"train"|"val"|"test": [(path, label), ...]}`` of all files found, per folder or seeded split."""
        if self._split_items is None:
            scan = self._scan()
            fractions = {"val": self.hparams.val_size, "test": self.hparams.test_size}
            to_carve = {split: fraction for split, fraction in fractions.items() if split not in scan.items}
            items = dict(scan.items)
            items.update(carve(scan.items["train"], to_carve, self.hparams.split_seed))
            for split, fraction in to_carve.items():
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

    def setup_samples(self, splits: tuple[str, ...]) -> None:
        self._prepare(splits)

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
            in_memory = cache == "always" or (cache == "auto" and total < self.cache_max_bytes)
            self._in_memory = in_memory and self.hparams.preset == "squash"
        self._note_skipped()
        bad = [entry for entry in self._scan().refused if entry[0] not in self._reported]
        decoded = {}
        for split in todo:
            paths = [path for path, _ in items[split]]
            options = (paths, channels, size, self.hparams.max_image_pixels)
            if self._in_memory:
                decoded[split] = decode_files(*options, True, split == "train", self.hparams.num_workers)
            else:  # only which files are usable and the statistics: kept for the next run (scan_cache)
                decoded[split] = decode_or_reuse(*options, split == "train", self.hparams.num_workers)
            bad += decoded[split].bad
        self._report(bad)
        for split, (images, good, histogram, _) in decoded.items():
            split_items = [items[split][i] for i in good]
            labels = [label for _, label in split_items]
            if split == "train":
                self._check_every_class(labels)
                self.dataset_stats = _stats(histogram)
                self._stats_ready = True
            if self._in_memory:
                self.splits[split] = (images, torch.tensor(labels, dtype=torch.long))
            else:
                self._samples[split] = ([path for path, _ in split_items], labels)

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

    def _note_skipped(self) -> None:
        """Say once how many files of the class folders are not read for their extension (with or without strict:
        a README or a labels file beside the images is no error)."""
        skipped = self._scan().skipped
        if skipped and not self._noted_skipped:
            self._noted_skipped = True
            rank_zero_warn(
                f"not reading {len(skipped)} file(s) in {self.root} for their extension ({extension_counts(skipped)}; "
                f"e.g. {skipped[0]}): only images in a format Pillow reads are used"
            )

    def _check_every_class(self, labels: list[int]) -> None:
        present = set(labels)
        missing = [name for label, name in enumerate(self.class_names) if label not in present]
        if missing:
            raise DataError(f"class(es) {missing} in {self.root} have no usable training image")

    # ------------------------------------------------------------------ batches
    def sample_loader(self, split: str, shuffle: bool) -> DataLoader:
        paths, labels = self._samples[split]
        channels, size, _ = self.native_shape
        preset = build_preset(self.hparams.preset, split == "train", size)
        dataset = PresetImages(paths, labels, channels, preset, self.hparams.max_image_pixels, loader_seed())
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        workers, timeout = self.hparams.num_workers, self.hparams.loader_timeout
        return folder_loader(dataset, self._skipped, split, batch_size, workers, timeout, self.trainer)

    def usable_files(self, split: str) -> tuple[list[str], list[int]]:
        """``(paths, labels)`` of a split's usable files after setup with ``cache="never"`` (``prepare_data.py``
        stores them as they are)."""
        return self._samples[split]

    def teardown(self, stage: str) -> None:
        self._skipped.warn()  # once for the files the workers skipped in this stage

    def on_exception(self, exception: BaseException) -> None:
        self._skipped.warn()  # an interrupted run's too


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
