"""FolderDataModule with ``preset="imagenet"``: crops of the original files decoded in workers, each sample's draws
from ``(seed, epoch, index)`` (so the epoch must reach persistent workers, also after Lightning swapped in its
DistributedSampler), and a resume mid-epoch that is bit-identical."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fakedata import write_image_folder
from folder_helpers import _all, _module
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _update_dataloader
from test_resume import DEEPNET, _run, _straight_and_interrupted, assert_same_training
from torch.utils.data import DataLoader, DistributedSampler

from project.datamodules.folder import FolderDataModule
from project.engine.data.folder_loading import FolderTrainLoader
from project.engine.data.images import load_image
from project.engine.data.presets import build_preset, sample_generator

SIZE = 16
SEED = 5


@pytest.fixture
def root(tmp_path: Path) -> Path:
    # Not square, and larger than the crops: the boxes and the centre crop matter.
    return write_image_folder(tmp_path / "images", per_class=6, size=(40, 30), formats=("jpg", "png"))


def _expected(dm: FolderDataModule, split: str, indices: list[int], epoch: int) -> torch.Tensor:
    """What the preset makes of these samples, computed here, in this process."""
    paths, _ = dm._samples[split]
    preset = build_preset("imagenet", split == "train", SIZE)
    return torch.stack([preset(load_image(paths[i]), sample_generator(SEED, epoch, i)) for i in indices])


def _imagenet(root: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> FolderDataModule:
    monkeypatch.setenv("PL_GLOBAL_SEED", str(SEED))
    dm = _module(root, preset="imagenet", num_workers=workers, val_size=0.25, test_size=0.0, batch_size=4)
    dm.setup("fit")
    assert dm.in_memory is False  # 'auto' would hold these few images in memory, squashed
    return dm


@pytest.mark.parametrize("workers", [0, 1])
def test_training_batches_are_the_presets_crops_drawn_per_sample_and_epoch(
    root: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    dm = _imagenet(root, monkeypatch, workers)
    loader = dm.train_dataloader()
    seen = []
    for epoch in (0, 1, 2):  # persistent workers, started in epoch 0, are told the later epochs
        loader.sampler.set_epoch(epoch)
        order = list(loader.sampler)
        images, labels = _all(loader)
        assert images.dtype == torch.uint8 and images.shape == (len(order), 3, SIZE, SIZE)
        assert torch.equal(images, _expected(dm, "train", order, epoch)), epoch
        assert labels.tolist() == [dm._samples["train"][1][i] for i in order]
        seen.append(images[torch.argsort(torch.tensor(order))])
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    del loader  # its workers stop now, not when the garbage collector frees the data module (after a 5 s timeout)


def test_evaluation_batches_are_the_centre_crops(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dm = _imagenet(root, monkeypatch, workers=0)
    images, _ = _all(dm.val_dataloader())
    assert torch.equal(images, _expected(dm, "val", list(range(len(images))), 0))


def test_the_epoch_reaches_the_workers_behind_lightnings_distributed_sampler(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm = _imagenet(root, monkeypatch, workers=1)
    # As Lightning does under DDP: the loader is requested with its arguments recorded, then rebuilt around a
    # DistributedSampler seeded with PL_GLOBAL_SEED, whose set_epoch Lightning calls (ours is gone).
    with _replace_dunder_methods(DataLoader, "dataset"):
        loader = dm.train_dataloader()
    for rank in (0, 1):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=SEED)
        replaced = _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)
        assert type(replaced) is FolderTrainLoader and replaced.skipped is loader.skipped
        assert replaced.persistent_workers and replaced.num_workers == 1
        for epoch in (1, 2):
            replaced.sampler.set_epoch(epoch)
            order = list(replaced.sampler)
            images, _ = _all(replaced)
            assert torch.equal(images, _expected(dm, "train", order, epoch)), (rank, epoch)
        del replaced  # its workers stop now (see above)


def test_the_in_memory_cache_is_refused_with_the_imagenet_preset(root: Path) -> None:
    with pytest.raises(ValueError, match="preset 'imagenet' crops the original files"):
        FolderDataModule(root=str(root), preset="imagenet", cache="always")
    with pytest.raises(ValueError, match="preset must be 'squash' or 'imagenet'"):
        FolderDataModule(root=str(root), preset="random")  # type: ignore[arg-type]


@pytest.mark.slow
def test_resume_mid_epoch_with_the_imagenet_preset_and_workers_is_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = write_image_folder(tmp_path / "images", per_class=20, size=(40, 30), formats=("jpg", "png"))
    source = ["--data", "folder", "--data.root", str(images), "--data.preset", "imagenet"]
    source += ["--data.image_size", "24", "--data.num_workers", "2"]
    common = [*DEEPNET, *source, "--trainer.max_epochs", "2", "--model.scheduler", "cosine"]
    # 48 training images in batches of 16: step 4 is the first batch of the second epoch.
    interrupted = _straight_and_interrupted(tmp_path, monkeypatch, common, 4)
    loader_state = interrupted["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state == [{"epoch": 1, "batches_done": 1}]
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["signal"] == "SIGTERM"
    assert _run(tmp_path, monkeypatch, "--resume", "resumed/checkpoints/last.ckpt", "--trainer.callbacks", "[]") == 0
    assert_same_training(tmp_path / "resumed", tmp_path / "straight")
