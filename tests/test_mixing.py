"""MixUp/CutMix soft targets, per-image auto-augment and random erasing, on the device-side batch (training only)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torchvision
from conftest import TINY
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import Precision
from scipy import stats

from project.datamodules import MNISTDataModule
from project.engine.api import Batch
from project.engine.cli import main as train
from project.engine.data.mixing import BatchMixing
from project.models import MLP


def _mixup_weights(alpha: float, draws: int) -> list[float]:
    mixing = BatchMixing(mixup=alpha, cutmix=0.0, num_classes=4)
    images, labels = torch.rand(4, 1, 3, 3), torch.arange(4)
    weights = []
    for _ in range(draws):
        mixed, targets = mixing(images, labels)
        lam = float(targets[0, 0])  # the weight of each image's own label
        torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0))
        torch.testing.assert_close(targets, lam * torch.eye(4) + (1 - lam) * torch.eye(4).roll(1, 0))
        weights.append(lam)
    return weights


def test_mixup_targets_are_soft_with_beta_alpha_alpha_weights() -> None:
    torch.manual_seed(0)
    weights = _mixup_weights(0.4, 2000)
    assert stats.kstest(weights, "beta", args=(0.4, 0.4)).pvalue > 1e-3
    assert stats.kstest(weights, "beta", args=(1.0, 1.0)).pvalue < 1e-6  # the test tells alphas apart


def test_cutmix_weights_are_the_pasted_area() -> None:
    torch.manual_seed(0)
    mixing = BatchMixing(mixup=0.0, cutmix=1.0, num_classes=3)
    images = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 16, 16).contiguous()  # image i is all i
    for _ in range(20):
        mixed, targets = mixing(images, torch.arange(3))
        own = (mixed == images).float().mean(dim=(1, 2, 3))  # the share of each image's own pixels
        torch.testing.assert_close(targets.diagonal(), own)
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(3))


def test_the_loss_takes_soft_targets_and_the_accuracy_the_labels() -> None:
    model = MLP(num_classes=3, input_shape=(1, 2, 2)).eval()
    images = torch.randn(6, 1, 2, 2)
    with torch.no_grad():
        labels = model(images).argmax(dim=1)
    soft = torch.nn.functional.one_hot((labels + 1) % 3, 3).float() * 0.7 + 0.1  # its argmax is never the label
    loss = model.training_step(Batch(images, soft, labels), 0)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(model(images), soft))
    assert float(model.train_means.compute()["acc"]) == 1.0


def _data(data_root: Path, **augment: object) -> MNISTDataModule:
    data = MNISTDataModule(root=str(data_root), batch_size=16, val_size=0.1, **augment)
    data.setup("fit")
    return data


def _through(data: MNISTDataModule, batch: tuple[torch.Tensor, torch.Tensor], training: bool) -> Batch:
    data.trainer = SimpleNamespace(training=training, precision_plugin=Precision())
    return data.on_after_batch_transfer(batch, 0)


def test_mixing_reaches_training_batches_only(data_root: Path) -> None:
    data = _data(data_root, mixup=0.4, cutmix=1.0)
    images, labels = data.splits["train"][0][:16], data.splits["train"][1][:16]
    mixed_images, targets, hard = _through(data, (images, labels), training=True)
    assert targets.shape == (16, 10) and torch.equal(hard, labels)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(16))
    assert ((targets > 0).sum(dim=1) <= 2).all() and (targets.max(dim=1).values < 1).any()
    plain, _, plain_labels = _through(data, (images, labels), training=False)
    torch.testing.assert_close(plain, data.normalizer.from_uint8(images))
    assert torch.equal(plain_labels, labels) and not torch.equal(mixed_images, plain)


@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment", "augmix"])
def test_auto_augment_draws_per_image_within_bounds_and_spares_evaluation(data_root: Path, policy: str) -> None:
    torch.manual_seed(0)
    data = _data(data_root, auto_augment=policy)
    image = data.splits["train"][0][:1]
    images, labels = image.expand(16, -1, -1, -1).contiguous(), torch.zeros(16, dtype=torch.long)
    augmented = _through(data, (images, labels), training=True).images
    distinct = {tuple(sample.flatten().tolist()) for sample in augmented}
    assert len(distinct) > 4  # one image, sixteen draws
    low, high = data.normalizer.from_uint8(torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1))
    assert augmented.min() >= low.item() - 1e-6 and augmented.max() <= high.item() + 1e-6
    evaluated = _through(data, (images, labels), training=False).images
    torch.testing.assert_close(evaluated, data.normalizer.from_uint8(images))


def test_random_erasing_erases_a_rectangle_per_image(data_root: Path) -> None:
    torch.manual_seed(0)
    data = _data(data_root, random_erasing=1.0)
    images = torch.full((8, 1, 28, 28), 200, dtype=torch.uint8)
    labels = torch.zeros(8, dtype=torch.long)
    erased = _through(data, (images, labels), training=True).images
    masks = erased == 0  # erased to 0 (the mean colour); the image itself is 200 everywhere
    assert all(mask.any() and not mask.all() for mask in masks)
    for mask in masks:  # a rectangle: its bounding box is all erased
        rows, cols = mask[0].any(dim=1).nonzero(), mask[0].any(dim=0).nonzero()
        assert mask[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert len({tuple(mask.flatten().tolist()) for mask in masks}) > 4  # drawn per image
    evaluated = _through(data, (images, labels), training=False).images
    assert not (evaluated == 0).any()


def test_bad_values_are_refused(data_root: Path) -> None:
    with pytest.raises(ValueError, match="auto_augment"):
        MNISTDataModule(root=str(data_root), auto_augment="autoaugment")
    with pytest.raises(ValueError, match="random_erasing"):
        MNISTDataModule(root=str(data_root), random_erasing=1.5)
    with pytest.raises(ValueError, match="mixup and cutmix"):
        MNISTDataModule(root=str(data_root), mixup=-1.0)


class RecordBatches(Callback):
    """Keeps, in this process, the batches the model's training and validation steps receive."""

    training: list[Batch] = []
    validation: list[Batch] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Batch, index: int) -> None:
        RecordBatches.training.append(Batch(*(tensor.detach().clone() for tensor in batch)))

    def on_validation_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Batch, index: int, dataloader_idx: int = 0
    ) -> None:
        RecordBatches.validation.append(Batch(*(tensor.detach().clone() for tensor in batch)))


def _distance_to_nearest(images: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    return torch.cdist(images.flatten(1).double(), originals.flatten(1).double()).min(dim=1).values


@pytest.mark.slow
def test_a_run_with_every_augmentation_of_the_recipe(tmp_path: Path, data_root: Path) -> None:
    RecordBatches.training, RecordBatches.validation = [], []
    record = json.dumps([{"class_path": "test_mixing.RecordBatches"}])
    args = [*TINY, "--model", "cnn", "--data.root", str(data_root), "--run_dir", str(tmp_path / "run")]
    args += ["--data.mixup", "0.2", "--data.cutmix", "1.0", "--data.auto_augment", "trivialaugment"]
    args += ["--data.random_erasing", "0.25", "--model.label_smoothing", "0.1", "--trainer.callbacks", record]
    assert train(args) == 0
    assert (tmp_path / "run" / "summary.json").is_file()

    # Every image of the training file, plainly normalized (MNIST's textbook mean and std), read by torchvision.
    pixels = torchvision.datasets.MNIST(str(data_root), train=True, download=False).data
    originals = ((pixels.float() / 255 - 0.1307) / 0.3081).unsqueeze(1)
    # The check sees through the pipeline: unaugmented validation images are exactly such originals...
    assert RecordBatches.validation
    for batch in RecordBatches.validation:
        assert batch.targets.shape == batch.labels.shape == (len(batch.images),)
        assert (_distance_to_nearest(batch.images, originals) < 1e-3).all()
    # ...and the training steps got soft targets over the 10 classes and augmented images, which none is. (Not every
    # image: TrivialAugment may draw the identity, MixUp a weight of almost 1, RandomErasing is off 3 times in 4.)
    assert len(RecordBatches.training) == 3
    changed, own_weights = [], []
    for batch in RecordBatches.training:
        size = len(batch.images)
        assert batch.images.shape == (size, 1, 28, 28) and batch.labels.shape == (size,)
        assert batch.targets.shape == (size, 10) and batch.targets.is_floating_point()
        assert (batch.targets >= 0).all() and ((batch.targets > 0).sum(dim=1) <= 2).all()  # two images mixed
        torch.testing.assert_close(batch.targets.sum(dim=1), torch.ones(size))
        own_weights.append(batch.targets.gather(1, batch.labels[:, None]).squeeze(1))
        changed.append(_distance_to_nearest(batch.images, originals) > 1e-3)
        assert changed[-1].any()
    assert (torch.cat(own_weights) < 0.99).any()  # really soft: part of some image is another's
    assert torch.cat(changed).float().mean() >= 0.5, changed
