"""What every image data module shares: class names, input shape, normalization, splits, and the fast path.

Small data sets (MNIST, CIFAR-10) are parsed once into one ``uint8`` tensor per split and served by
:class:`InMemoryLoader`, which slices a shuffled index: no per-sample ``__getitem__``, no PIL, no collate.
Every data module hands over ``uint8`` batches; on the device they become normalized, augmented floats, a whole
batch at a time, and every step receives them as one :class:`~project.engine.api.Batch`
(:class:`~project.engine.data.device_batches.DeviceBatches`).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor

from project.engine.api import IMAGENET_STATS, INCEPTION_STATS, DataError, InMemoryLoader, loader_seed
from project.engine.data import (
    SPLITS,
    AutoAugmentName,
    BatchAugment,
    BatchMixing,
    DeviceBatches,
    Normalize,
    PerImagePolicy,
    PresetName,
    build_preset,
    preset_preprocessing,
)

NormalizeMode = Literal["auto", "dataset", "imagenet", "inception", "none"]
#: The splits each of Lightning's stages reads (``fit`` sets up the test split too: the run tests at its end).
STAGE_SPLITS = {"fit": SPLITS, "validate": ("val",), "test": ("test",)}
#: The square size images of their own sizes (a folder's, a prepared folder's) are shaped to when nothing says.
DEFAULT_IMAGE_SIZE = 64


class ImageDataModule(DeviceBatches, L.LightningDataModule):
    """Base class of the image data modules.

    Args:
        root: Directory that holds (or will hold) the data set.
        batch_size: Training batch size (per device).
        eval_batch_size: Validation/test batch size; defaults to ``batch_size``.
        val_size: Training images held out for validation: a fraction when < 1, else a number of images.
        split_seed: Seed of the train/validation split; fixed so every run sees the same split.
        normalize: ``dataset`` (the data set's statistics), ``imagenet``, ``inception`` (0.5) or ``none``; ``auto``
            is ``dataset`` here, and the command line makes it what a model's pretrained weights expect.
        image_size: Resize images to this square size, on the device, after the training augmentation; ``None``
            keeps the data's size; ``auto`` (the default): the input size the model's pretrained weights declare
            (224 for ResNet-18: the command line resolves it), the data's own size for a model without them.
        crop_padding: Random crop with this zero padding (training only).
        hflip: Random horizontal flips (training only).
        rotation: Random rotation by up to this many degrees (training only).
        color_jitter: Random brightness/contrast/saturation change of up to this fraction (training only).
        auto_augment: ``trivialaugment``, ``randaugment`` or ``augmix`` (torchvision's, per image; training only).
        random_erasing: Probability of erasing a random rectangle of each image (training only).
        mixup: MixUp's α (Beta(α, α) mixing weights; 0: off). Training batches then carry soft targets.
        cutmix: CutMix's α (0: off); with ``mixup`` too, one of the two is picked per batch.
        preset: How an image of its own size becomes a square: ``squash`` (resized); ``imagenet``: torchvision's
            ImageNet recipe on the original files (a random resized crop and flip to train, the shorter side and
            the centre to evaluate), for data modules that read files (``presets`` says which).

    The lifecycle is this class's, written once: :meth:`setup` asks the data module for its samples
    (:meth:`setup_samples`: tensors in ``splits``, or whatever :meth:`sample_loader` serves), then builds the
    normalization and the mixing; the batch hooks (:class:`DeviceBatches`) augment, normalize and mix every
    module's batches alike.
    """

    #: The presets this data module can honour; any other is refused in ``__init__`` with one line.
    presets: tuple[str, ...] = ("squash",)
    #: Init arguments ``prepare_data.py`` gives this data module (on top of the user's) to write its shards.
    prepare_args: dict[str, Any] = {}

    #: Mean and standard deviation of the data set's pixels in [0, 1], per channel.
    dataset_stats: tuple[tuple[float, ...], tuple[float, ...]] = ((0.5,), (0.5,))
    #: ``(channels, height, width)`` of the stored images.
    native_shape: tuple[int, int, int] = (1, 28, 28)

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_size: float = 0.1,
        split_seed: int = 0,
        normalize: NormalizeMode = "auto",
        image_size: int | Literal["auto"] | None = "auto",
        crop_padding: int = 0,
        hflip: bool = False,
        rotation: float = 0.0,
        color_jitter: float = 0.0,
        auto_augment: AutoAugmentName = "none",
        random_erasing: float = 0.0,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        preset: PresetName = "squash",
    ) -> None:
        super().__init__()
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if val_size < 0:
            raise ValueError(f"val_size must not be negative, got {val_size}")
        if image_size == "auto":  # resolved by the command line (options.resolve_image_size); else the data's size
            image_size = None
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if crop_padding < 0 or rotation < 0 or not 0 <= color_jitter <= 1:
            raise ValueError("crop_padding and rotation must be >= 0 and color_jitter in [0, 1]")
        build_preset(preset, True, 1)  # refuses an unknown name
        if preset not in self.presets:
            raise ValueError(
                f"preset {preset!r} crops the original image files, and {type(self).__name__} holds decoded images: "
                f"use --data folder or --data streaming, or preset {self.presets[0]!r}"
            )
        self.save_hyperparameters()
        self.hparams.image_size = image_size
        self.root = root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.augment = BatchAugment(crop_padding, hflip, rotation, color_jitter)
        self.per_image = PerImagePolicy(auto_augment, random_erasing)
        BatchMixing(mixup, cutmix, 2)  # checks the values; built for the number of classes in setup
        self.mixing: BatchMixing | None = None
        self.normalizer: Normalize | None = None
        #: The layout batches are handed over in; the fast path sets channels-last for conv nets on a GPU.
        self.memory_format = torch.contiguous_format
        #: The in-memory splits: ``(uint8 images (N, C, H, W), int64 labels (N,))``.
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self._ready: set[str] = set()  # the splits setup_samples made ready

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
        stats = {"imagenet": IMAGENET_STATS, "inception": INCEPTION_STATS}.get(mode, self.dataset_stats)
        if stats is ImageDataModule.dataset_stats and not getattr(self, "_told_no_stats", False):
            self._told_no_stats = True  # once per data module: setup and every checkpoint ask again
            rank_zero_warn(
                f"{type(self).__name__} has no dataset_stats: its images are normalized with mean 0.5 and std 0.5; "
                "set dataset_stats (per-channel mean and std of its pixels in [0, 1]) or --data.normalize none"
            )
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
            **preset_preprocessing(self.hparams.preset, height),
        }

    def model_args(self) -> dict[str, Any]:
        """What a model needs to know of this data: ``MLP(**datamodule.model_args(), lr=0.01)``."""
        return {
            "num_classes": self.num_classes,
            "input_shape": self.input_shape,
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing(),
        }

    # ------------------------------------------------------------------ loading
    def load_split(self, train: bool) -> tuple[Tensor, Tensor]:
        """The training or test split as ``(uint8 images (N, C, H, W), int64 labels (N,))``."""
        raise NotImplementedError

    def setup_samples(self, splits: tuple[str, ...]) -> None:
        """Make ``splits`` (of ``train``, ``val``, ``test``) ready: put them in :attr:`splits` as tensors, or get
        ready for :meth:`sample_loader` to serve them. Here: :meth:`load_split`, the validation split held out."""
        if "train" not in self.splits and {"train", "val"} & set(splits):
            images, labels = self.load_split(train=True)
            self.splits["train"], self.splits["val"] = self._split_validation(images, labels)
        if "test" not in self.splits and "test" in splits:
            self.splits["test"] = self.load_split(train=False)

    def setup(self, stage: str) -> None:
        """Lightning's hook, the same for every data module: the samples, then the normalization and the mixing."""
        splits = tuple(split for split in STAGE_SPLITS.get(stage, ()) if split not in self._ready)
        if splits:
            self.setup_samples(splits)
            self._ready.update(splits)
        stats = self.normalization()
        self.normalizer = Normalize(*stats) if stats else None
        if self.mixing is None:
            self.mixing = BatchMixing(self.hparams.mixup, self.hparams.cutmix, self.num_classes) or None

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
    def _loader(self, split: str, shuffle: bool) -> Any:
        if split not in self._ready:
            self.setup("test" if split == "test" else "fit")
        if split not in self.splits:
            return self.sample_loader(split, shuffle)
        images, labels = self.splits[split]
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # Kept on the training device: MNIST is 47 MB and CIFAR-10 150 MB as uint8, far below any GPU's memory.
        images, labels = images.to(device), labels.to(device)
        self.splits[split] = (images, labels)
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        return InMemoryLoader(images, labels, batch_size, shuffle, loader_seed(), rank=rank, world_size=world_size)

    def sample_loader(self, split: str, shuffle: bool) -> Any:
        """The loader of a split that :meth:`setup_samples` did not put in memory (files, shards)."""
        raise NotImplementedError(f"{type(self).__name__} keeps the {split} split nowhere")

    def train_dataloader(self) -> Any:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> Any:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> Any:
        return self._loader("test", shuffle=False)


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
