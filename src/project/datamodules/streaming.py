"""Data that does not fit one machine: shards written once by ``scripts/prepare_data.py`` (:mod:`.shards`),
streamed by LitData from a local directory or an S3-compatible store.

LitData, not Mosaic ``streaming`` or WebDataset: it is Lightning's own, its loader saves its position for an exact
mid-epoch resume, and it splits the shards across the ranks and workers of a multi-node run by itself.
"""

from __future__ import annotations

import os
import warnings
from functools import cached_property
from typing import Any, Literal

import torch
from litdata import StreamingDataLoader, StreamingDataset
from torch import Tensor

from project.datamodules import shards
from project.datamodules.base import DEFAULT_IMAGE_SIZE, ImageDataModule
from project.datamodules.images import DEFAULT_MAX_IMAGE_PIXELS, NotAnImage, decode_image_bytes
from project.datamodules.presets import build_preset, sample_generator
from project.datamodules.scan_cache import cache_root
from project.engine.api import (
    DEFAULT_LOADER_TIMEOUT,
    BoundedWait,
    DataError,
    allow_plain_http_endpoint,
    loader_seed,
    worker_options,
)


class StreamedImages(StreamingDataset):
    """``(uint8 image (C, size, size), label)`` per sample: the stored bytes decoded and shaped by the preset in the
    worker. A training sample's random crop and flip depend only on (seed, epoch, sample index), so they are the
    same in any worker, on any rank, and after a resume.

    The store's settings (``AWS_*``) travel with the data set: workers start from a forkserver, whose environment is
    that of the moment it started, not the loader's."""

    def __init__(self, input_dir: str, preset: Any, channels: int, max_image_pixels: int, **options: Any) -> None:
        super().__init__(input_dir, **options)
        self.preset, self.channels, self.max_image_pixels = preset, channels, max_image_pixels
        self.store_settings = {name: value for name, value in os.environ.items() if name.startswith("AWS_")}

    def __iter__(self) -> StreamedImages:
        # In the worker, before LitData's downloader reads the settings.
        os.environ.update(self.store_settings)
        allow_plain_http_endpoint()
        return super().__iter__()

    def __getitem__(self, index: Any) -> tuple[Tensor, int]:
        item = super().__getitem__(index)
        number = getattr(index, "index", index)
        try:
            image = decode_image_bytes(bytes(item["image"]), self.channels, None, self.max_image_pixels)
        except NotAnImage as error:  # prepare_data.py stored only decodable images: the shard itself is damaged
            raise DataError(f"sample {number} of {self.input_dir.url or self.input_dir.path}: {error}") from None
        generator = sample_generator(self.seed, self.current_epoch, number)
        return self.preset(image, generator), int(item["label"])


class ShardLoader(BoundedWait, StreamingDataLoader):
    """LitData's loader, whose wait for a batch is bounded (``loader_timeout``)."""


class StreamingDataModule(ImageDataModule):
    """A data set prepared by ``scripts/prepare_data.py``, streamed from ``input_dir`` (a directory or
    ``s3://bucket/prefix``); remote shards are kept in a local cache of at most ``max_cache_size``.

    Images are stored compressed (their JPEG/PNG bytes) and decoded in the loader's workers, then shaped by the
    ``preset``: ``squash`` resizes to ``image_size`` × ``image_size``; ``imagenet`` trains on random resized crops
    of the original and evaluates on its centre. Under DDP every rank reads its own share of the shards: each
    sample once per epoch across the ranks (training drops at most a few at the end, so that ranks step together).

    Args:
        input_dir: The prepared data set: a directory, or ``s3://bucket/prefix``.
        image_size: The square size batches have; ``auto``: the pretrained weights' size on the command line, else
            the data set's own when all its images have one size (MNIST, CIFAR-10), else 64.
        num_workers: Loader worker processes per rank, which fetch, decode and shape the images.
        cache_dir: Where remote shards are cached; default ``chunks`` in the template's cache (``~/.cache/project``).
        max_cache_size: The cache's bound, e.g. ``50GB``: the oldest shards are deleted beyond it.
        max_image_pixels: Refuse images with more pixels than this (possible decompression bombs).
        loader_timeout: Seconds to wait for one batch from the workers before the run stops with an error.
        **kwargs: Options of :class:`~project.datamodules.base.ImageDataModule` (``batch_size``, ``normalize``,
            ``hflip``, ``preset``, ...).
    """

    presets = ("squash", "imagenet")

    def __init__(
        self,
        input_dir: str = "data/shards",
        image_size: int | Literal["auto"] | None = "auto",
        num_workers: int = 2,
        cache_dir: str | None = None,
        max_cache_size: str = "50GB",
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        loader_timeout: float = DEFAULT_LOADER_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        if "val_size" in kwargs:
            raise ValueError("a prepared data set's splits are fixed: choose val_size when running prepare_data.py")
        if num_workers < 0:
            raise ValueError(f"num_workers must not be negative, got {num_workers}")
        super().__init__(root=input_dir, image_size=image_size, val_size=0, **kwargs)
        self.input_dir = input_dir

    # ------------------------------------------------------------------ what the model needs to know
    @cached_property
    def metadata(self) -> dict[str, Any]:
        """The data set's ``dataset.json`` (read once, on first use: not in ``__init__``)."""
        return shards.read_metadata(self.input_dir)

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata["class_names"])

    @property
    def dataset_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        stats = self.metadata["stats"]
        return tuple(stats["mean"]), tuple(stats["std"])

    @property
    def native_shape(self) -> tuple[int, int, int]:
        size = self.hparams.image_size or self.metadata.get("image_size") or DEFAULT_IMAGE_SIZE
        return (int(self.metadata["channels"]), size, size)

    # ------------------------------------------------------------------ loading
    def setup_samples(self, splits: tuple[str, ...]) -> None:
        allow_plain_http_endpoint()
        # Lightning warns that an iterable data set's length may be wrong with several workers: LitData gives each
        # worker its own shards, so the length is right.
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined", category=UserWarning)
        for split in splits:
            shards.check_split(self.input_dir, split)

    def sample_loader(self, split: str, shuffle: bool) -> ShardLoader:
        trainer = self.trainer
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        ranks, samples = (trainer.world_size if trainer else 1), self.metadata["splits"][split]
        if samples < ranks * batch_size:  # LitData deals out whole batches: some rank would get none
            flag = "batch_size" if split == "train" else "eval_batch_size"
            raise DataError(
                f"--data.{flag} {batch_size} is too large for the {samples} {split} samples of {self.input_dir} "
                f"over {ranks} rank(s): at most {samples // ranks}"
            )
        workers = self.hparams.num_workers
        seed = loader_seed()
        dataset = StreamedImages(
            shards.join(self.input_dir, split),
            build_preset(self.hparams.preset, shuffle, self.input_shape[1]),
            self.input_shape[0],
            self.hparams.max_image_pixels,
            shuffle=shuffle,
            seed=seed,
            # LitData's default for training: under DDP, fewer than world size × batch size samples are left out of
            # an epoch so that the ranks step together; evaluation scores every sample once.
            drop_last=None if shuffle else False,
            cache_dir=self._cache_dir() if shards.is_remote(self.input_dir) else None,
            max_cache_size=self.hparams.max_cache_size,
        )
        loader = ShardLoader(
            dataset,
            batch_size=batch_size,
            **worker_options(dataset, workers, self.hparams.loader_timeout),
            pin_memory=trainer is not None and trainer.strategy.root_device.type == "cuda",
            # The workers' seed from a generator of the loader's own: starting an epoch leaves the global random
            # state (dropout, augmentation on the device) as it was, so a resumed run matches an uninterrupted one.
            generator=torch.Generator().manual_seed(seed),
        )
        loader.what = f"the {split} loader"
        return loader

    def _cache_dir(self) -> str:
        if self.hparams.cache_dir:
            return self.hparams.cache_dir
        return str(cache_root() / "chunks")
