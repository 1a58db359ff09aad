"""Streaming a prepared data set's shards (:mod:`.shards`) with LitData: each sample's stored bytes decoded and shaped
by the preset in the loader's workers, the wait for a batch bounded.

LitData, not Mosaic ``streaming`` or WebDataset: it is Lightning's own, its loader saves its position for an exact
mid-epoch resume, and it splits the shards across the ranks and workers of a multi-node run by itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from litdata import StreamingDataLoader, StreamingDataset
from torch import Tensor

from project.engine import compat
from project.engine.api import BoundedWait, DataError, allow_plain_http_endpoint, loader_seed, worker_options
from project.engine.data import shards
from project.engine.data.images import NotAnImage, decode_image_bytes
from project.engine.data.presets import Preset, sample_generator
from project.engine.data.scan_cache import cache_root


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
    """LitData's loader, whose wait for a batch is bounded (``loader_timeout``) and whose saved position counts the
    samples handed over, a short batch as its length."""

    #: The run's trainer, for the training loader: its epoch numbers LitData's (None: LitData counts its own).
    trainer: Any = None

    def __iter__(self) -> Iterator[Any]:
        if self.trainer is not None:  # LitData's epoch 1 is the run's first, 0
            compat.number_next_epoch(self, self.trainer.current_epoch + 1)
        for batch in super().__iter__():
            compat.count_batch_as_its_length(self, len(batch[-1]))
            yield batch


def shard_loader(
    input_dir: str,
    metadata: dict[str, Any],
    split: str,
    preset: Preset,
    shape: tuple[int, int, int],
    batch_size: int,
    train: bool,
    trainer: Any,
    num_workers: int,
    loader_timeout: float,
    max_image_pixels: int,
    cache_dir: str | None,
    max_cache_size: str,
) -> ShardLoader:
    """The loader of one split of the prepared data set at ``input_dir`` (``metadata``: its ``dataset.json``):
    shuffled by the run's seed to ``train``, in order otherwise; remote shards cached in ``cache_dir`` (default:
    ``chunks`` in :func:`cache_root`); each shard checked against its recorded SHA-256 when a worker first reads it."""
    ranks, samples = (trainer.world_size if trainer else 1), metadata["splits"][split]
    if samples < ranks * batch_size:  # LitData deals out whole batches: some rank would get none
        flag = "batch_size" if split == "train" else "eval_batch_size"
        raise DataError(
            f"--data.{flag} {batch_size} is too large for the {samples} {split} samples of {input_dir} "
            f"over {ranks} rank(s): at most {samples // ranks}"
        )
    seed = loader_seed()
    split_url = shards.join(input_dir, split)
    checksums = shards.ShardChecksums(split_url, metadata["checksums"][split])
    dataset = StreamedImages(
        split_url,
        preset,
        shape[0],
        max_image_pixels,
        shuffle=train,
        seed=seed,
        # LitData's default for training: under DDP, fewer than world size × batch size samples are left out of
        # an epoch so that the ranks step together; evaluation scores every sample once.
        drop_last=None if train else False,
        cache_dir=(cache_dir or str(cache_root() / "chunks")) if shards.is_remote(input_dir) else None,
        max_cache_size=max_cache_size,
        item_loader=compat.CheckedChunkLoader(checksums),
    )
    loader = ShardLoader(
        dataset,
        batch_size=batch_size,
        **worker_options(dataset, num_workers, loader_timeout),
        pin_memory=trainer is not None and trainer.strategy.root_device.type == "cuda",
        # The workers' seed from a generator of the loader's own: starting an epoch leaves the global random
        # state (dropout, augmentation on the device) as it was, so a resumed run matches an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )
    loader.what = f"the {split} loader"
    loader.trainer = trainer if train else None
    return loader
