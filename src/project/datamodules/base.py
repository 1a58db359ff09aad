"""What every image data module shares: class names, input shape, normalization, splits, and the fast path.

Small data sets (MNIST, CIFAR-10) are parsed once into one ``uint8`` tensor per split and served by
:class:`InMemoryLoader`, which slices a shuffled index: no per-sample ``__getitem__``, no PIL, no collate.
Every data module hands the model ``uint8`` batches; :meth:`ImageDataModule.on_after_batch_transfer` turns them
into normalized floats and augments them, on the device, a whole batch at a time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.nn import functional as F

from project.datamodules.transforms import BatchAugment, Normalize
from project.errors import DataError

NormalizeMode = Literal["auto", "dataset", "imagenet", "none"]
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class EpochPosition:
    """What a loader needs to resume in the middle of an epoch: the number of batches it handed out in this one.

    Lightning saves :meth:`state_dict` in checkpoints and hands it back to :meth:`load_state_dict` on resume (it
    fetches no batch ahead from a loader that has a length, so when a checkpoint is written the batches handed out
    are exactly those trained on). A subclass says which epoch it is in (:meth:`_epoch`), calls
    :meth:`_begin_epoch` when an epoch's iteration starts, skips the batches it returns, and counts each batch it
    hands out in ``_yielded``.
    """

    _yielded = 0  # batches handed out in the current epoch
    _resume_at: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def _epoch(self) -> int:
        raise NotImplementedError

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch(), "batches_done": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_at = (int(state["epoch"]), int(state["batches_done"]))

    def _begin_epoch(self) -> int:
        """The batches of this epoch already trained on, from a checkpoint of this epoch (else 0); counting starts
        there."""
        done = 0
        if self._resume_at is not None:
            epoch, batches = self._resume_at
            self._resume_at = None
            if epoch == self._epoch():  # a checkpoint from an earlier epoch's end skips nothing
                done = batches
        self._yielded = done
        return done


def loader_seed() -> int:
    """The seed of the training order: Lightning's ``seed_everything`` sets ``PL_GLOBAL_SEED`` (and under DDP its
    ``DistributedSampler`` uses it too)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class InMemoryLoader(EpochPosition):
    """Batches of ``(images[idx], labels[idx])`` for consecutive slices ``idx`` of a (shuffled) index.

    The order of epoch ``e`` is ``randperm(n)`` seeded with ``seed + e``: identical across runs, resumes and
    ranks. With ``world_size > 1`` each rank takes every ``world_size``-th sample of that order; the training
    order is padded (like ``DistributedSampler``) so every rank runs the same number of steps, the evaluation
    order is not, so each sample is scored exactly once.

    The loader is resumable mid-epoch (:class:`EpochPosition`): the next iteration of the epoch a checkpoint was
    written in skips the batches already trained on.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    #: Memory for one block of training batches gathered in order (see ``__iter__``).
    BLOCK_BYTES = 32 * 2**20

    #: Lightning inspects these DataLoader attributes; there is no batch sampler to wrap.
    batch_sampler = None

    @property
    def sampler(self) -> InMemoryLoader:
        # Lightning calls ``loader.sampler.set_epoch(epoch)`` at the start of every epoch.
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._yielded = 0

    def _epoch(self) -> int:
        return self.epoch

    def _num_samples(self) -> int:
        n = len(self.labels)
        if self.world_size == 1:
            return n
        if self.shuffle:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        samples = self._num_samples()
        return samples // self.batch_size if self.drop_last else math.ceil(samples / self.batch_size)

    def indices(self) -> Tensor:
        """This rank's sample indices for the current epoch, in order."""
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.shuffle:
                total = math.ceil(n / self.world_size) * self.world_size
                order = torch.cat([order, order[: total - n]])
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # A generator: this body runs at the first next(), after Lightning's set_epoch() and load_state_dict().
        first = self._begin_epoch()
        if not self.shuffle and self.world_size == 1:
            # Evaluation in order: slices are views, nothing is copied.
            for start in range(first * self.batch_size, len(self) * self.batch_size, self.batch_size):
                self._yielded += 1
                yield (
                    self.images[start : start + self.batch_size],
                    self.labels[start : start + self.batch_size],
                )
            return
        order = self.indices().to(self.images.device)[first * self.batch_size : len(self) * self.batch_size]
        # The rows are gathered into training order a block of batches at a time (up to ~BLOCK_BYTES), and each
        # batch is a slice of its block, a view: two index_select calls per block instead of per step, which on CPU
        # saves ~80 us of a 3 ms MLP step (small ops are slow right after an optimizer step) and on a GPU two kernel
        # launches per step. The block bounds the memory this costs, whatever the image size.
        sample_bytes = self.images[:1].numel() * self.images.element_size()
        block = self.batch_size * max(1, self.BLOCK_BYTES // max(1, sample_bytes * self.batch_size))
        for block_start in range(0, len(order), block):
            # index_select, not images[index]: the same rows, ~10x faster for a small index on CPU.
            index = order[block_start : block_start + block]
            images, labels = self.images.index_select(0, index), self.labels.index_select(0, index)
            for start in range(0, len(index), self.batch_size):
                self._yielded += 1
                yield images[start : start + self.batch_size], labels[start : start + self.batch_size]


class ImageDataModule(L.LightningDataModule):
    """Base class of the image data modules.

    Args:
        root: Directory that holds (or will hold) the data set.
        batch_size: Training batch size (per device).
        eval_batch_size: Validation/test batch size; defaults to ``batch_size``.
        val_size: Number of training images held out for validation (a fraction when < 1).
        split_seed: Seed of the train/validation split; fixed so every run sees the same split.
        normalize: ``auto`` (the model's preference, e.g. ImageNet statistics for a pretrained ResNet, else the
            data set's), ``dataset``, ``imagenet`` or ``none``.
        image_size: Resize images to this square size (e.g. 224 for ImageNet models); ``None`` keeps the size.
        crop_padding: Random crop with this zero padding (training only).
        hflip: Random horizontal flips (training only).
        rotation: Random rotation by up to this many degrees (training only).
        color_jitter: Random brightness/contrast/saturation change of up to this fraction (training only).
    """

    #: Mean and standard deviation of the data set's pixels in [0, 1], per channel.
    dataset_stats: tuple[tuple[float, ...], tuple[float, ...]] = ((0.5,), (0.5,))
    #: ``(channels, height, width)`` of the stored images.
    native_shape: tuple[int, int, int] = (1, 28, 28)

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_size: float = 5000,
        split_seed: int = 0,
        normalize: NormalizeMode = "auto",
        image_size: int | None = None,
        crop_padding: int = 0,
        hflip: bool = False,
        rotation: float = 0.0,
        color_jitter: float = 0.0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if val_size < 0:
            raise ValueError(f"val_size must not be negative, got {val_size}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if crop_padding < 0 or rotation < 0 or not 0 <= color_jitter <= 1:
            raise ValueError("crop_padding and rotation must be >= 0 and color_jitter in [0, 1]")
        self.save_hyperparameters()
        self.root = root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.augment = BatchAugment(crop_padding, hflip, rotation, color_jitter)
        self.normalizer: Normalize | None = None
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}

    # ------------------------------------------------------------------ what the model needs to know
    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.native_shape
        size = self.hparams.image_size
        return (channels, size, size) if size else (channels, height, width)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """The ``(mean, std)`` the batches are normalized with, or ``None``."""
        mode = self.hparams.normalize
        if mode == "none":
            return None
        stats = self.dataset_stats
        if mode == "imagenet":
            stats = IMAGENET_STATS
        elif mode == "auto":
            model = self.trainer.lightning_module if self.trainer is not None else None
            stats = getattr(model, "preferred_normalization", None) or stats
        return _match_channels(stats, self.input_shape[0])

    def preprocessing(self) -> dict[str, Any]:
        """How a raw image becomes a model input; saved in checkpoints so prediction can repeat it."""
        stats = self.normalization()
        channels, height, width = self.input_shape
        return {
            "image_size": [height, width],
            "channels": channels,
            "mean": list(stats[0]) if stats else None,
            "std": list(stats[1]) if stats else None,
        }

    # ------------------------------------------------------------------ loading
    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        """The training or test split as ``(uint8 images (N, C, H, W), int64 labels (N,))``."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if "train" not in self.splits and stage in ("fit", "validate"):
            images, labels = self.load_split(train=True)
            self.splits["train"], self.splits["val"] = self._split_validation(images, labels)
        if "test" not in self.splits and stage in ("test", "fit"):
            self.splits["test"] = self.load_split(train=False)
        stats = self.normalization()
        self.normalizer = Normalize(*stats) if stats else None

    def _split_validation(self, images: Tensor, labels: Tensor) -> tuple[tuple[Tensor, Tensor], ...]:
        n = len(labels)
        val_size = self.hparams.val_size
        n_val = round(val_size * n) if 0 < val_size < 1 else int(val_size)
        if not 0 <= n_val < n:
            raise DataError(f"--data.val_size {val_size} leaves no training images: the training split has {n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.split_seed))
        train, val = order[n_val:], order[:n_val]
        return (images[train], labels[train]), (images[val], labels[val])

    # ------------------------------------------------------------------ batches
    def _loader(self, split: str, shuffle: bool) -> InMemoryLoader:
        if split not in self.splits:
            self.setup("test" if split == "test" else "fit")
        images, labels = self.splits[split]
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # Kept on the training device: MNIST is 47 MB and CIFAR-10 150 MB as uint8, far below any GPU's memory.
        images, labels = images.to(device), labels.to(device)
        self.splits[split] = (images, labels)
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        return InMemoryLoader(images, labels, batch_size, shuffle, loader_seed(), rank=rank, world_size=world_size)

    def train_dataloader(self) -> InMemoryLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> InMemoryLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> InMemoryLoader:
        return self._loader("test", shuffle=False)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # The in-memory splits already live on the training device: nothing to copy, and no need for Lightning's
        # generic walk through the batch (a few dozen Python calls per step).
        if isinstance(batch, (tuple, list)) and all(isinstance(t, Tensor) and t.device == device for t in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        trainer = self.trainer
        images = self._network_input(images, trainer)
        if trainer is not None:
            # Lightning casts floating-point batches to the weights' dtype (bf16-true, 16-true, 64-true) before this
            # hook, when these were still uint8: the same cast, here. Every other precision leaves them unchanged.
            images = trainer.precision_plugin.convert_input(images)
        return images, labels

    def _network_input(self, images: Tensor, trainer: L.Trainer | None) -> Tensor:
        """A ``uint8`` batch on the device → resized, augmented (training only), normalized float32 batch."""
        model = trainer.lightning_module if trainer is not None else None
        memory_format = getattr(model, "input_memory_format", torch.contiguous_format)
        size = self.input_shape[1:]
        resize = tuple(images.shape[-2:]) != size
        augment = self.augment if len(self.augment) > 0 and trainer is not None and trainer.training else None
        if augment is not None and not resize and augment.only_moves_pixels:
            # Crops and flips only move pixels: on the uint8 batch they move a quarter of the bytes, same result.
            images, augment = augment(images), None
        if not resize and augment is None and self.normalizer is not None:
            # uint8 → normalized float32 in the network's memory layout, in one pass over the batch.
            return self.normalizer.from_uint8(images, memory_format)
        images = images.float().div_(255)
        if resize:
            # Antialiasing changes only shrinking; enlarging (CIFAR to 224 px) gives the same values without it.
            shrink = any(new < old for new, old in zip(size, images.shape[-2:], strict=True))
            images = F.interpolate(images, size=size, mode="bilinear", antialias=shrink, align_corners=False)
        if augment is not None:
            images = augment(images)
        if self.normalizer is not None:
            return self.normalizer(images, memory_format)
        return images.contiguous(memory_format=memory_format)


def _match_channels(
    stats: tuple[tuple[float, ...], tuple[float, ...]], channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = stats
    if len(mean) == channels:
        return tuple(mean), tuple(std)
    # e.g. ImageNet statistics for a one-channel data set: the average channel.
    return (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels


def uint8_images(images: Tensor, expected_shape: tuple[int, ...], source: str) -> Tensor:
    """Check that parsed images are uint8 of ``(N, *expected_shape)``, naming ``source`` when they are not."""
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != tuple(expected_shape):
        raise DataError(
            f"{source}: expected uint8 images of shape (N, {', '.join(map(str, expected_shape))}), "
            f"got {images.dtype} {tuple(images.shape)}; the file is corrupt: delete it to download it again"
        )
    return images
