"""Data that does not fit one machine: shards written once by ``scripts/prepare_data.py``, streamed by LitData from
a local directory or an S3-compatible store (the machinery: :mod:`project.engine.data.streamed`)."""

from __future__ import annotations

import warnings
from functools import cached_property
from typing import Any, Literal

from project.datamodules.base import DEFAULT_IMAGE_SIZE, ImageDataModule
from project.engine.api import DEFAULT_LOADER_TIMEOUT, allow_plain_http_endpoint
from project.engine.data import DEFAULT_MAX_IMAGE_PIXELS, ShardLoader, build_preset, shard_loader, shards


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
        hparams = self.hparams
        preset = build_preset(hparams.preset, shuffle, self.input_shape[1])
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        return shard_loader(
            self.input_dir,
            self.metadata,
            split,
            preset,
            self.input_shape,
            batch_size,
            shuffle,
            self.trainer,
            hparams.num_workers,
            hparams.loader_timeout,
            hparams.max_image_pixels,
            hparams.cache_dir,
            hparams.max_cache_size,
        )
