"""Every data module × every training option: each option changes training against the same seed without it, or is
refused with one line naming it (issue 28: MixUp and CutMix did nothing on folder and streaming data).

The oracle is the weights after the same few steps with the option off: the same seed must give other weights with
it on. Tiny data in the true formats (MNIST IDX, CIFAR-10 pickles, a folder of PNG/JPEG files, shards written by
prepare_data.py), loaders without worker processes, and a small MLP keep the whole matrix at a few seconds.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import quiet_trainer

from project.datamodules import CIFAR10DataModule, FolderDataModule, ImageDataModule, MNISTDataModule
from project.datamodules.streaming import StreamingDataModule
from project.engine import prepare
from project.models import MLP

#: Each training-time option at a value that is on (``preset`` changes the per-image crop and flip, the rest the
#: device-side batch).
OPTIONS: dict[str, dict[str, Any]] = {
    "crop_padding": {"crop_padding": 4},
    "hflip": {"hflip": True},
    "rotation": {"rotation": 30.0},
    "color_jitter": {"color_jitter": 0.5},
    "auto_augment": {"auto_augment": "trivialaugment"},
    "random_erasing": {"random_erasing": 1.0},
    "mixup": {"mixup": 1.0},
    "cutmix": {"cutmix": 1.0},
    "preset": {"preset": "imagenet"},
}
#: (module, option) pairs refused in ``__init__``: the in-memory sets hold decoded images, not the original files.
REFUSED = {("mnist", "preset"), ("cifar10", "preset")}


@pytest.fixture(scope="module")
def shards_dir(folder_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("options") / "shards"
    args = ["--data", "folder", "--data.root", str(folder_root), "--output", str(output), "--num_workers", "1"]
    assert prepare.main([*args, "--chunk_bytes", "64KB"]) == 0
    return output


def modules(data_root: Path, folder_root: Path, shards_dir: Path) -> dict[str, Callable[..., ImageDataModule]]:
    common = {"batch_size": 8}
    files = {"num_workers": 0, "image_size": 32}
    return {
        "mnist": lambda **o: MNISTDataModule(root=str(data_root), val_size=40, **common, **o),
        "cifar10": lambda **o: CIFAR10DataModule(root=str(data_root), val_size=40, **common, **o),
        # cache "auto" keeps 60 small images in memory; preset imagenet reads the files in the loader instead.
        "folder": lambda **o: FolderDataModule(root=str(folder_root), **files, **common, **o),
        "folder-files": lambda **o: FolderDataModule(root=str(folder_root), cache="never", **files, **common, **o),
        "streaming": lambda **o: StreamingDataModule(input_dir=str(shards_dir), **files, **common, **o),
    }


def trained_weights(make: Callable[..., ImageDataModule], **options: Any) -> torch.Tensor:
    """The first layer's weights after two training steps from seed 0."""
    L.seed_everything(0, verbose=False)
    data = make(**options)
    model = MLP(**data.model_args(), hidden_sizes=(16,), dropout=0.0)
    trainer = quiet_trainer(max_steps=2, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2
    return next(model.parameters()).detach().clone()


@pytest.fixture(scope="module")
def baselines(data_root: Path, folder_root: Path, shards_dir: Path) -> dict[str, torch.Tensor]:
    return {name: trained_weights(make) for name, make in modules(data_root, folder_root, shards_dir).items()}


def test_the_same_seed_trains_alike(data_root: Path, folder_root: Path, shards_dir: Path, baselines: dict) -> None:
    # The matrix's premise: without an option, a second run ends with the very same weights.
    for name, make in modules(data_root, folder_root, shards_dir).items():
        assert torch.equal(trained_weights(make), baselines[name]), name


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("module", ["mnist", "cifar10", "folder", "folder-files", "streaming"])
def test_every_option_changes_training_or_is_refused(
    module: str, option: str, data_root: Path, folder_root: Path, shards_dir: Path, baselines: dict
) -> None:
    make = modules(data_root, folder_root, shards_dir)[module]
    if (module, option) in REFUSED:
        with pytest.raises(ValueError, match=f"^preset 'imagenet' .*{type(make()).__name__}[^\n]*$"):
            make(**OPTIONS[option])
        return
    weights = trained_weights(make, **OPTIONS[option])
    assert weights.shape == baselines[module].shape
    assert not torch.equal(weights, baselines[module]), f"{option} does not change training on {module}"


def test_a_data_module_without_statistics_is_told_so_once() -> None:
    class NoStats(ImageDataModule):
        native_shape, class_names = (1, 8, 8), ["a", "b"]

    class WithStats(NoStats):
        dataset_stats = ((0.2,), (0.3,))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet = WithStats()
        assert quiet.normalization() == ((0.2,), (0.3,))
        assert not caught
        told = NoStats()
        assert told.normalization() == told.normalization() == ((0.5,), (0.5,))
    (warning,) = caught
    assert "NoStats has no dataset_stats: its images are normalized with mean 0.5 and std 0.5" in str(warning.message)
