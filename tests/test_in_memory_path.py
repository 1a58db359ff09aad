"""The in-memory data path against torchvision's per-sample one: the same samples, orders, shards and normalization.

The template serves MNIST and CIFAR-10 from one uint8 tensor per split (``InMemoryLoader``) and converts, augments
and normalizes whole batches on the device (``ImageDataModule.on_after_batch_transfer``). These tests check that
this changes nothing but the speed: each epoch is a permutation of the same images the torchvision ``Dataset``
yields, the order depends only on the seed and the epoch, ranks split the data without overlap, and the batches are
normalized (and, in training only, augmented) as the textbook formula says. The augmentations themselves are compared
with torchvision's in test_batch_augment.py, the accuracy of a model trained either way in test_benchmark_runs.py;
``scripts/benchmark.py`` measures the speed.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from project.datamodules.cifar10 import CIFAR10DataModule
from project.datamodules.mnist import MNISTDataModule
from project.engine.data.transforms import BatchAugment, Normalize, RandomCropPadded
from project.engine.loaders import InMemoryLoader

MEAN, STD = 0.1307, 0.3081


def _digest(row: torch.Tensor) -> str:
    return hashlib.sha1(row.contiguous().numpy().tobytes()).hexdigest()


def _multiset(images: torch.Tensor, labels: torch.Tensor) -> Counter[tuple[str, int]]:
    return Counter((_digest(image), int(label)) for image, label in zip(images, labels, strict=True))


def _epoch(loader: InMemoryLoader, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader.set_epoch(epoch)
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def _uint8_from_normalized(images: torch.Tensor) -> torch.Tensor:
    """Undo ``(x / 255 - mean) / std`` exactly (the values are 1/255 apart, the error ~1e-6)."""
    return ((images * STD + MEAN) * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def mnist(data_root: Path) -> MNISTDataModule:
    """The template's MNIST module over all 400 training images (no validation split)."""
    dm = MNISTDataModule(root=str(data_root), batch_size=32, val_size=0, download=False)
    dm.setup("fit")
    return dm


def _loader(dm: MNISTDataModule, seed: int = 7, batch_size: int = 32, **kwargs) -> InMemoryLoader:
    images, labels = dm.splits["train"]
    return InMemoryLoader(images, labels, batch_size, shuffle=True, seed=seed, **kwargs)


# ---------------------------------------------------------------------------------------------- the samples
def test_in_memory_epoch_sees_the_same_samples_as_torchvision(mnist: MNISTDataModule, data_root: Path) -> None:
    # The per-sample path, as the textbook writes it: one PIL image per sample through ToTensor and Normalize.
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    dataset = datasets.MNIST(str(data_root), train=True, transform=transform)
    batches = list(DataLoader(dataset, batch_size=50, shuffle=True))
    per_sample_images, per_sample_labels = (torch.cat([batch[i] for batch in batches]) for i in (0, 1))
    expected = _multiset(_uint8_from_normalized(per_sample_images), per_sample_labels)
    assert len(per_sample_labels) == 400

    # The template's path: uint8 batches from the loader, normalized a batch at a time.
    loader = _loader(mnist)
    for epoch in range(3):
        loader.set_epoch(epoch)
        batches = [mnist.on_after_batch_transfer(batch, 0) for batch in loader]
        images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        assert images.dtype == torch.float32 and images.shape == (400, 1, 28, 28)
        assert _multiset(_uint8_from_normalized(images), labels) == expected


def test_each_epoch_is_a_permutation_in_its_own_order(mnist: MNISTDataModule) -> None:
    loader = _loader(mnist)
    orders = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        order = loader.indices()
        assert sorted(order.tolist()) == list(range(400))
        orders.append(order)
        # The batches are exactly the rows of that order.
        images, labels = _epoch(loader, epoch)
        assert torch.equal(images, mnist.splits["train"][0][order])
        assert torch.equal(labels, mnist.splits["train"][1][order])
    assert all(not torch.equal(a, b) for i, a in enumerate(orders) for b in orders[i + 1 :])


@pytest.mark.parametrize("block_batches", [1, 3, None], ids=["block=1", "block=3", "one-block"])
@pytest.mark.parametrize(("batch_size", "drop_last", "done"), [(32, False, 0), (30, True, 0), (30, False, 5)])
def test_batches_are_the_rows_of_the_order_whatever_the_block(
    mnist: MNISTDataModule, block_batches: int | None, batch_size: int, drop_last: bool, done: int
) -> None:
    # The loader gathers a block of batches at a time (bounded memory): blocks of one batch, of three (not a
    # divisor of the epoch), or the whole epoch give the same batches, also when the last one is partial or
    # dropped, and when a resumed epoch starts after `done` batches.
    images, labels = mnist.splits["train"]
    loader = _loader(mnist, seed=11, batch_size=batch_size, drop_last=drop_last)
    sample_bytes = images[0].numel()
    if block_batches is not None:
        loader.BLOCK_BYTES = block_batches * batch_size * sample_bytes
    loader.load_state_dict({"epoch": 2, "batches_done": done})
    loader.set_epoch(2)
    batches = list(loader)
    order = loader.indices()
    expected = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if drop_last:
        expected = [index for index in expected if len(index) == batch_size]
    expected = expected[done:]
    assert len(batches) == len(expected) == len(loader) - done and loader.state_dict()["batches_done"] == len(loader)
    for (batch_images, batch_labels), index in zip(batches, expected, strict=True):
        assert torch.equal(batch_images, images[index]) and torch.equal(batch_labels, labels[index])


def test_order_depends_only_on_seed_and_epoch(mnist: MNISTDataModule) -> None:
    first, second, other_seed = _loader(mnist, seed=3), _loader(mnist, seed=3), _loader(mnist, seed=4)
    for epoch in range(3):
        assert torch.equal(_epoch(first, epoch)[0], _epoch(second, epoch)[0])
    assert not torch.equal(_epoch(first, 0)[0], _epoch(other_seed, 0)[0])
    # A resumed run starts at epoch 2 without iterating epochs 0 and 1: it gets the same epoch 2.
    resumed = _loader(mnist, seed=3)
    assert torch.equal(_epoch(resumed, 2)[0], _epoch(first, 2)[0])
    assert torch.equal(_epoch(resumed, 2)[1], _epoch(first, 2)[1])


@pytest.mark.parametrize("n", [400, 399])
def test_ranks_split_the_data(mnist: MNISTDataModule, n: int) -> None:
    images, labels = mnist.splits["train"][0][:n], mnist.splits["train"][1][:n]
    for shuffle in (True, False):
        shards = [
            InMemoryLoader(images, labels, 16, shuffle=shuffle, seed=5, rank=rank, world_size=2) for rank in (0, 1)
        ]
        for shard in shards:
            shard.set_epoch(1)
        indices = [shard.indices().tolist() for shard in shards]
        seen = [idx for rank_indices in indices for idx in rank_indices]
        assert set(seen) == set(range(n))  # together they cover the data
        if shuffle:
            # Training: every rank runs the same number of steps; odd n repeats (pads) one sample, like
            # DistributedSampler.
            assert len(indices[0]) == len(indices[1]) == math.ceil(n / 2)
            assert len(shards[0]) == len(shards[1])
            assert len(seen) - len(set(seen)) == math.ceil(n / 2) * 2 - n
        else:
            # Evaluation: disjoint, every sample scored exactly once.
            assert len(seen) == n and not set(indices[0]) & set(indices[1])
        # The batches a rank gets are its indices' rows.
        batches = torch.cat([b for b, _ in shards[1]])
        assert torch.equal(batches, images[indices[1]])
    # Training shards are disjoint when n divides evenly.
    if n % 2 == 0:
        shards = [InMemoryLoader(images, labels, 16, shuffle=True, seed=5, rank=r, world_size=2) for r in (0, 1)]
        assert not set(shards[0].indices().tolist()) & set(shards[1].indices().tolist())


# ---------------------------------------------------------------------------------------------- normalization
def test_normalized_batch_is_the_textbook_formula(mnist: MNISTDataModule) -> None:
    images, labels = next(iter(_loader(mnist, batch_size=64)))
    out, _, out_labels = mnist.on_after_batch_transfer((images, labels), 0)
    expected = (images.float() / 255 - MEAN) / STD
    assert out.dtype == torch.float32 and out.shape == images.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert out_labels is labels
    # The general path (resizing, augmenting) normalizes floats in [0, 1] the same way.
    floats = torch.rand(8, 3, 5, 5)
    stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in stats)
    torch.testing.assert_close(Normalize(*stats)(floats), (floats - mean) / std, rtol=0, atol=1e-6)
    uint8 = torch.randint(0, 256, (8, 3, 5, 5), dtype=torch.uint8)
    torch.testing.assert_close(Normalize(*stats).from_uint8(uint8), (uint8 / 255 - mean) / std, rtol=0, atol=1e-6)


def test_resized_batch_is_interpolated_then_normalized(data_root: Path) -> None:
    dm = MNISTDataModule(root=str(data_root), batch_size=16, val_size=0, image_size=32, download=False)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    out = dm.on_after_batch_transfer((images, labels), 0).images
    resized = torch.nn.functional.interpolate(
        images.float() / 255, size=(32, 32), mode="bilinear", antialias=True, align_corners=False
    )
    torch.testing.assert_close(out, (resized - MEAN) / STD, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- augmentation
def _training_trainer() -> SimpleNamespace:
    """What on_after_batch_transfer asks of its trainer: training, and the precision plugin's cast of the inputs
    (full precision: none)."""
    from lightning.pytorch.plugins.precision import Precision

    return SimpleNamespace(training=True, precision_plugin=Precision())


def test_augmentation_runs_only_in_training(mnist: MNISTDataModule) -> None:
    dm = MNISTDataModule(root=mnist.root, batch_size=16, val_size=0, crop_padding=2, hflip=True, download=False)
    dm.setup("fit")
    assert isinstance(dm.augment, BatchAugment) and [type(op) for op in dm.augment] == [RandomCropPadded]
    assert dm.augment[0].padding == 2 and dm.augment[0].hflip  # the flip runs in the crop's pass
    images, labels = next(iter(dm.train_dataloader()))
    plain = (images.float() / 255 - MEAN) / STD
    # Without a training trainer (evaluation, prediction): no augmentation, only normalization.
    torch.testing.assert_close(dm.on_after_batch_transfer((images, labels), 0)[0], plain, rtol=0, atol=1e-6)

    dm.trainer = _training_trainer()
    torch.manual_seed(1)
    out = dm.on_after_batch_transfer((images, labels), 0)[0]
    assert out.shape == plain.shape and not torch.allclose(out, plain)
    # Augmented in [0, 1], then normalized: the values stay within the normalized range of [0, 1].
    assert out.min() >= -MEAN / STD - 1e-6 and out.max() <= (1 - MEAN) / STD + 1e-6
    # Crop and flip ran on the uint8 batch (a quarter of the bytes): the same pixels as on the float images.
    torch.manual_seed(1)
    expected = (dm.augment(images.float() / 255) - MEAN) / STD
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_training_batch_comes_in_the_network_memory_layout(data_root: Path) -> None:
    # A conv net on a GPU wants channels-last input; the augmented, resized path writes it in that layout directly.
    dm = CIFAR10DataModule(
        root=str(data_root), batch_size=8, val_size=0, crop_padding=4, hflip=True, image_size=40, download=False
    )
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))

    dm.trainer = _training_trainer()
    dm.memory_format = torch.channels_last  # what the fast path sets for a conv net on a GPU
    torch.manual_seed(2)
    out = dm.on_after_batch_transfer((images, labels), 0)[0]
    assert out.shape == (8, 3, 40, 40) and out.is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(2)
    augmented = dm.augment(images)  # at the data's own size, then resized (main's 790b0c7)
    resized = torch.nn.functional.interpolate(
        augmented.float() / 255, size=(40, 40), mode="bilinear", antialias=True, align_corners=False
    )
    expected = dm.normalizer(resized)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
