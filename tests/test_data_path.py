"""The fast data path against the per-sample torchvision path it replaces: same samples, same semantics, same accuracy.

The template serves MNIST and CIFAR-10 from one uint8 tensor per split (``InMemoryLoader``) and converts, augments
and normalizes whole batches on the device (``ImageDataModule.on_after_batch_transfer``). These tests check that
this changes nothing but the speed: each epoch is a permutation of the same images the torchvision ``Dataset``
yields, the order depends only on the seed and the epoch, ranks split the data without overlap, the batch
augmentations give what torchvision's per-image transforms of the same name give, and a model trained either way
reaches the same accuracy. ``scripts/benchmark.py`` measures the speed; a smoke test runs it here.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import quiet_trainer
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.transforms.v2 import functional as TF

from benchmarks import benchmark, common, gpu, mlp
from project.datamodules.cifar10 import CIFAR10DataModule
from project.datamodules.loaders import InMemoryLoader
from project.datamodules.mnist import MNISTDataModule
from project.datamodules.transforms import (
    BatchAugment,
    ColorJitter,
    Normalize,
    RandomCropPadded,
    RandomHorizontalFlip,
    RandomRotation,
)

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
    out, out_labels = mnist.on_after_batch_transfer((images, labels), 0)
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
    out, _ = dm.on_after_batch_transfer((images, labels), 0)
    resized = torch.nn.functional.interpolate(
        images.float() / 255, size=(32, 32), mode="bilinear", antialias=True, align_corners=False
    )
    torch.testing.assert_close(out, (resized - MEAN) / STD, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- augmentation
# The comparisons with torchvision run on the CPU here, and on a GPU (the device training augments on) where there is
# one: the "cuda" parameters are marked gpu, skipped without one (conftest.py).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _training_trainer() -> SimpleNamespace:
    """What on_after_batch_transfer asks of its trainer: training, and the precision plugin's cast of the inputs
    (full precision: none)."""
    from lightning.pytorch.plugins.precision import Precision

    return SimpleNamespace(training=True, precision_plugin=Precision())


@pytest.mark.parametrize("device", DEVICES)
def test_random_crop_is_a_window_of_the_zero_padded_image(device: str) -> None:
    torch.manual_seed(0)
    pad, images = 3, torch.rand(400, 3, 10, 12, device=device)
    out = RandomCropPadded(pad)(images)
    assert out.shape == images.shape and out.device == images.device
    offsets = Counter()
    for image, cropped in zip(images, out, strict=True):
        # torchvision's RandomCrop(size, padding=pad): zero padding, then a window at a top-left in [0, 2 pad].
        padded = TF.pad(image, [pad])
        matches = [
            (top, left)
            for top in range(2 * pad + 1)
            for left in range(2 * pad + 1)
            if torch.equal(TF.crop(padded, top, left, 10, 12), cropped)
        ]
        assert len(matches) == 1, "each output is exactly one window of the padded input"
        offsets[matches[0]] += 1
    # Every offset occurs (400 draws of 49 equally likely offsets: each expected ~8 times).
    assert set(offsets) == {(top, left) for top in range(2 * pad + 1) for left in range(2 * pad + 1)}


@pytest.mark.parametrize("device", DEVICES)
def test_flip_mirrors_about_half_of_the_images(device: str) -> None:
    torch.manual_seed(0)
    images = torch.rand(4000, 1, 6, 7, device=device)
    out = RandomHorizontalFlip()(images)
    kept = (out == images).flatten(1).all(dim=1)
    mirrored = (out == TF.horizontal_flip(images)).flatten(1).all(dim=1)
    assert bool((kept ^ mirrored).all()), "each image is either unchanged or exactly mirrored"
    assert 0.45 < mirrored.float().mean().item() < 0.55


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_crop_with_flip_is_the_crop_then_the_flip_in_one_pass(dtype: torch.dtype, device: str) -> None:
    images = (torch.rand(300, 3, 9, 11, device=device) * 255).to(dtype)
    torch.manual_seed(3)
    fused = RandomCropPadded(3, hflip=True)(images)
    torch.manual_seed(3)
    sequential = RandomHorizontalFlip()(RandomCropPadded(3)(images))
    assert fused.dtype == dtype and torch.equal(fused, sequential)
    # And the flip happened to about half of them: mirrored windows are not windows of the unflipped image.
    torch.manual_seed(3)
    unflipped = RandomCropPadded(3)(images)
    flipped = ~(fused == unflipped).flatten(1).all(dim=1)
    assert 0.35 < flipped.float().mean().item() < 0.65


def _uniform_draws(monkeypatch: pytest.MonkeyPatch, forced: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Record what ``torch.rand`` returns from now on (or make it return ``forced``): the ops' uniform draws."""
    draws: list[torch.Tensor] = []
    real = torch.rand

    def rand(*size, device=None, **kwargs) -> torch.Tensor:
        if forced is None:
            value = real(*size, device=device, **kwargs)
        else:
            assert forced.numel() == math.prod(size), f"the op now draws torch.rand{size}: update this test"
            value = forced.to(device).view(*size)
        draws.append(value)
        return value

    monkeypatch.setattr(torch, "rand", rand)
    return draws


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [33, 32], ids=["odd", "even"])
def test_rotation_is_torchvisions_rotate_by_the_drawn_angle(
    monkeypatch: pytest.MonkeyPatch, device: str, size: int
) -> None:
    # torchvision's RandomRotation(degrees): an angle drawn uniformly from [-degrees, degrees], then rotate() about
    # the centre (counter-clockwise, bilinear), each image its own angle. Outside the image: zeros, as rotate()
    # without a fill gives them (with fill=0, RandomRotation's default, torchvision also darkens the rotated image's
    # outermost pixels by its interpolated mask: those differ). Square images: the template's batches all are (MNIST,
    # CIFAR-10, and image folders resized to image_size x image_size).
    torch.manual_seed(0)
    images = torch.rand(200, 3, size, size, device=device)
    draws = _uniform_draws(monkeypatch)
    out = RandomRotation(45)(images)
    monkeypatch.undo()
    assert out.shape == images.shape and out.device == images.device
    assert len(draws) == 1 and draws[0].shape == (200,), "one uniform draw per image"
    angles = ((draws[0] * 2 - 1) * 45).tolist()
    assert all(-45 <= angle <= 45 for angle in angles) and min(angles) < -40 and max(angles) > 40
    for image, rotated, angle in zip(images, out, angles, strict=True):
        expected = TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR)
        torch.testing.assert_close(rotated, expected, rtol=0, atol=1e-5, msg=lambda m, a=angle: f"{a:.2f}°: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_rotation_by_a_quarter_turn_moves_every_pixel_exactly(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    # Forced draws of a RandomRotation(90): 1 is +90° (counter-clockwise, torch.rot90's direction), 0 is -90°,
    # 1/2 is 0° (the identity). A quarter turn only moves pixels, so no interpolation can blur it.
    torch.manual_seed(0)
    images = torch.rand(3, 2, 9, 9, device=device)
    _uniform_draws(monkeypatch, forced=torch.tensor([1.0, 0.0, 0.5]))
    out = RandomRotation(90)(images)
    expected = [torch.rot90(images[0], 1, (-2, -1)), torch.rot90(images[1], -1, (-2, -1)), images[2]]
    torch.testing.assert_close(out, torch.stack(expected), rtol=0, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_is_torchvisions_adjustments_by_the_drawn_factors(
    monkeypatch: pytest.MonkeyPatch, device: str, channels: int
) -> None:
    # torchvision's ColorJitter(b, c, s): per image, factors drawn uniformly from [1 - s, 1 + s], then
    # adjust_brightness, adjust_contrast, adjust_saturation, in the module's fixed order (torchvision's ColorJitter
    # shuffles it per call). One channel has no saturation: torchvision leaves it, the module draws no factor for it.
    # The real draws are recorded, then torchvision is applied with the same factors.
    torch.manual_seed(0)
    images = torch.rand(256, channels, 8, 8, device=device)
    strengths = {"brightness": 0.8, "contrast": 0.6, "saturation": 0.4}
    drawn: list[tuple[float, torch.Tensor]] = []
    real_factor = ColorJitter._factor

    def recorded(self: ColorJitter, batch: torch.Tensor, strength: float) -> torch.Tensor:
        factors = real_factor(self, batch, strength)
        drawn.append((strength, factors))
        return factors

    monkeypatch.setattr(ColorJitter, "_factor", recorded)
    out = ColorJitter(**strengths)(images)
    assert out.shape == images.shape and out.device == images.device
    names = list(strengths) if channels == 3 else ["brightness", "contrast"]
    assert [strength for strength, _ in drawn] == [strengths[name] for name in names]
    factors = {}
    for name, (strength, values) in zip(names, drawn, strict=True):
        assert values.shape == (256, 1, 1, 1), name
        assert bool(((1 - strength <= values) & (values <= 1 + strength)).all()), name
        assert values.min() < 1 - strength / 2 and values.max() > 1 + strength / 2, name  # spread over the range
        factors[name] = values.flatten().tolist()
    adjust = {
        "brightness": TF.adjust_brightness,
        "contrast": TF.adjust_contrast,
        "saturation": TF.adjust_saturation,
    }
    for index, (image, jittered) in enumerate(zip(images, out, strict=True)):
        expected = image
        for name in names:
            expected = adjust[name](expected, factors[name][index])
        # atol: torchvision's grey is 0.2989 R + 0.587 G + 0.114 B, the module's 0.299 R (about 1e-4 apart).
        torch.testing.assert_close(jittered, expected, rtol=0, atol=2e-4, msg=lambda m, i=index: f"image {i}: {m}")


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
    resized = torch.nn.functional.interpolate(
        images.float() / 255, size=(40, 40), mode="bilinear", antialias=True, align_corners=False
    )
    expected = dm.normalizer(dm.augment(resized))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- per-step cost
@pytest.mark.parametrize("norm_on_host", [False, True], ids=["gpu-clipping-path", "control-cpu-clipping-path"])
def test_training_steps_do_not_read_device_values_on_the_host(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, norm_on_host: bool
) -> None:
    """A tensor turned into a Python value waits for the GPU: only every log_every_n_steps and at bar redraws."""
    import lightning as L

    from project.cli import TemplateCLI
    from project.configs import expand_args

    reads: list[str] = []
    counting = {"on": False}

    def counted(name: str):
        original = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            if counting["on"]:
                reads.append(name)
            return original(self, *args, **kwargs)

        return method

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    # On CPU the gradient clipping reads the norm once a step on purpose (free there: no device to wait for); on a
    # GPU it keeps the norm a tensor. Count what a GPU run would do: its clipping path, run here on CPU tensors. The
    # control keeps the CPU path, which reads at every step: the counter must see those reads.
    from project.fastpath.clipping import FusedClipping

    monkeypatch.setattr(FusedClipping, "reads_norm_on_host", lambda self, grads: norm_on_host)

    class Count(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            counting["on"] = True

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            counting["on"] = False

    argv = ["--data.root", str(data_root), "--data.download", "false", "--data.batch_size", "2"]
    argv += ["--data.val_size", "0", "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0"]
    argv += ["--trainer.log_every_n_steps", "50", "--trainer.default_root_dir", str(tmp_path), "--no_test", "true"]
    cli = TemplateCLI(expand_args(argv), trainer_defaults={"callbacks": [Count()]})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 200
    if norm_on_host:  # the control: the norm read as a float at each of the 200 steps, every read counted
        assert Counter(reads)["__float__"] >= 200, Counter(reads)
    else:
        # 200 steps: 4 logging steps and at most ~10 progress-bar redraws may read a value; one read per step may not.
        assert len(reads) <= 20, Counter(reads)


@pytest.mark.parametrize(("precision", "dtype"), [("bf16-true", torch.bfloat16), ("64-true", torch.float64)])
def test_batches_take_the_dtype_of_the_weights(data_root: Path, precision: str, dtype: torch.dtype) -> None:
    # With weights in bf16 or float64, Lightning casts floating-point batches before they reach the device, when
    # the template's are still uint8: the data module casts its normalized batches the same way, in training,
    # validation and test.
    import lightning as L

    from project.models import MLP

    seen: set[torch.dtype] = set()

    class Inspect(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
            seen.add(batch[0].dtype)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            seen.add(batch[0].dtype)

    data = MNISTDataModule(root=str(data_root), batch_size=32, val_size=64, download=False)
    model = MLP(**data.model_args(), hidden_sizes=[32])
    trainer = quiet_trainer(precision=precision, max_epochs=1, limit_train_batches=4, callbacks=[Inspect()])
    trainer.fit(model, datamodule=data)
    (result,) = trainer.test(model, datamodule=data, verbose=False)
    assert seen == {dtype} and next(model.parameters()).dtype == dtype
    assert math.isfinite(result["test/loss"])


# ---------------------------------------------------------------------------------------------- accuracy and speed
def _context(root: Path, tmp_path: Path, *options: str) -> mlp.Context:
    args = benchmark.parse_args(["--data.root", str(root), "--runs", "A,C", *options])
    return mlp.Context(args, root, tmp_path, torch.device("cpu"), common.MNISTTensors.load(root))


def test_template_reaches_the_accuracy_of_the_per_sample_path(digits_root: Path, tmp_path: Path) -> None:
    # The same MLP, seed, data, batch size and epochs: A is the textbook loop over torchvision's per-sample
    # MNIST, C the template through its command line (fused Adam, gradient clipping, batch normalization).
    # (Both orders are random but different, so single runs differ by the noise of training: on 297 test images,
    # up to ~6 points after 4 epochs, ~1.5 after 8, measured over 5 seeds.)
    ctx = _context(digits_root, tmp_path, "--epochs", "8", "--batch_size", "64")
    for seed in (0, 1):
        textbook = mlp.run_a(ctx, seed)
        template = mlp.run_c(ctx, seed)
        assert textbook.samples == template.samples == 8 * 1500
        assert textbook.test_acc > 0.85 and template.test_acc > 0.85, (textbook.test_acc, template.test_acc)
        assert abs(textbook.test_acc - template.test_acc) < 0.03, (seed, textbook.test_acc, template.test_acc)


def test_benchmark_runs_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    argv = ["--quick", "--samples", "640", "--repeats", "1", "--runs", "A,B,B+fused,B+clip,C", "--json", str(out)]
    assert benchmark.main([*argv, "--workdir", str(tmp_path / "work")]) == 0
    report = json.loads(out.read_text())
    runs = report["mlp"]["runs"]
    assert set(runs) == {"A", "B", "B+fused", "B+clip", "C"}
    assert all(run["samples"] == 640 and run["median"] > 0 for run in runs.values())
    assert {"C/A", "C/B", "C/B+fused", "C/B+clip"} <= set(report["mlp"]["ratios"])
    assert report["environment"]["torch_threads"] == torch.get_num_threads()
    table = capsys.readouterr().out
    assert "samples/s" in table and "C/A =" in table and "torch.get_num_threads()" in table


def test_gpu_measurements_run_end_to_end_on_cpu(tmp_path: Path, data_root: Path) -> None:
    # The ResNet-18 part runs only on a GPU; its code (data, command line, timing, FLOPs, MFU) is checked here on the
    # CPU with a few tiny steps, so that the one GPU run the numbers come from does not fail on a typo.
    options = ["--gpu_batch_size", "4", "--gpu_steps", "2", "--gpu_warmup", "1", "--gpu_sizes", "32,40"]
    args = benchmark.parse_args([*options, "--peak_tflops", "1", "--gpu_ablations", "--gpu_repeats", "2"])
    out = gpu.benchmark_gpu(args, tmp_path, lambda message: None, device=torch.device("cpu"))
    kinds = ["plain", "template", *(f"template, {ablation}" for ablation in gpu.GPU_ABLATIONS)]
    assert set(out["runs"]) == {f"resnet18 {size}px {kind}" for size in (32, 40) for kind in kinds}
    for key, run in out["runs"].items():
        assert len(run["images_per_s_all"]) == 2 and run["images_per_s"] > 0 and run["mfu"] > 0
        assert run["vs_plain"] == 1.0 if key.endswith("plain") else run["vs_plain"] > 0
    assert out["runs"]["resnet18 32px plain"]["forward_gflops_per_image"] == pytest.approx(0.0740, rel=1e-2)
    assert out["data"].startswith("generated CIFAR-10")
    # With --data.root at real CIFAR-10 files (written in the true format here), the template trains on those.
    args = benchmark.parse_args([*options[:6], "--gpu_sizes", "32", "--data.root", str(data_root)])
    out = gpu.benchmark_gpu(args, tmp_path / "real", lambda message: None, device=torch.device("cpu"))
    assert out["data"] == f"CIFAR-10 files in {data_root}" and out["runs"]["resnet18 32px template"]["mfu"] is None
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989
    assert gpu.peak_tflops("NVIDIA H100 PCIe", None) == 756
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312
    assert gpu.peak_tflops("Unknown GPU", None) is None and gpu.peak_tflops("Unknown", 100.0) == 100.0
