"""FolderDataModule's batches: dtypes, both cache modes alike, statistics, shuffling, workers, a fit, resuming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import quiet_trainer
from folder_helpers import SIZE, _all, _folder, _module
from torch.utils.data import DistributedSampler, TensorDataset

from project.engine.loaders import EpochSeededSampler, ResumableDataLoader


# ---------------------------------------------------------------------- batches
@pytest.mark.parametrize("cache", ["auto", "always", "never"])
def test_batches_are_uint8_images_and_int64_labels(tmp_path: Path, cache: str) -> None:
    root = _folder(tmp_path, modes=("RGB", "L", "RGBA", "P", "I;16"))
    dm = _module(root, cache=cache)
    dm.setup("fit")
    assert dm.in_memory is (cache != "never")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    images, labels = _all(batches)
    assert images.dtype == torch.uint8 and images.shape == (24, 3, SIZE, SIZE)
    assert labels.dtype == torch.int64 and sorted(labels.tolist()) == [0] * 8 + [1] * 8 + [2] * 8
    # what the model gets: normalized floats with the training set's statistics
    floats = dm.on_after_batch_transfer(batches[0], 0).images
    mean, std = dm.normalization()
    mean, std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    expected = (batches[0][0].float() / 255 - mean) / std
    assert floats.dtype == torch.float32 and torch.allclose(floats, expected, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_cache_and_no_cache_give_identical_images(tmp_path: Path, channels: int) -> None:
    root = _folder(tmp_path, modes=("RGB", "L", "RGBA", "P", "I;16"), formats=("png", "jpg", "bmp"))
    cached, streamed = (_module(root, image_channels=channels, cache=cache) for cache in ("always", "never"))
    for dm in (cached, streamed):
        dm.setup("fit")
    for split in ("val", "test"):
        a = _all(getattr(cached, f"{split}_dataloader")())
        b = _all(getattr(streamed, f"{split}_dataloader")())
        assert a[0].shape == (3, channels, SIZE, SIZE)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert cached.dataset_stats == streamed.dataset_stats
    assert cached.preprocessing() == streamed.preprocessing()


def test_dataset_stats_are_the_training_images_mean_and_std(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    dm = _module(root)
    dm.setup("fit")
    train = dm.splits["train"][0].double() / 255
    mean, std = dm.dataset_stats
    assert np.allclose(mean, train.mean((0, 2, 3)).numpy(), atol=1e-5)
    assert np.allclose(std, train.std((0, 2, 3), unbiased=False).numpy(), atol=1e-5)
    expected = {"image_size": [SIZE, SIZE], "channels": 3, "mean": list(mean), "std": list(std)}
    assert dm.preprocessing() == expected
    assert _module(root, normalize="imagenet").preprocessing()["mean"] == [0.485, 0.456, 0.406]


def test_dataloader_path_shuffles_with_the_global_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path)
    dm = _module(root, cache="never")

    def order(seed: str) -> list[int]:
        monkeypatch.setenv("PL_GLOBAL_SEED", seed)
        return _all(dm.train_dataloader())[1].tolist()

    first = order("7")
    assert order("7") == first
    assert order("8") != first

    # Each epoch's order depends only on (seed, epoch): a fresh loader set to epoch 1, as after a resume,
    # gives the same order as a loader that went through epoch 0 first.
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    continuing = dm.train_dataloader()
    _all(continuing)
    continuing.sampler.set_epoch(1)
    resumed = dm.train_dataloader()
    resumed.sampler.set_epoch(1)
    second_epoch = _all(continuing)[1].tolist()
    assert second_epoch != first
    assert _all(resumed)[1].tolist() == second_epoch


def test_dataloader_path_with_worker_processes(tmp_path: Path) -> None:
    root = _folder(tmp_path, per_class=4)
    dm = _module(root, cache="never", num_workers=1, val_size=0.0, test_size=0.0, batch_size=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers and not loader.pin_memory
    images, labels = _all(loader)
    assert images.shape == (12, 3, SIZE, SIZE) and sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize("cache", ["auto", "never"])
def test_fit_with_a_trainer(tmp_path: Path, cache: str) -> None:

    from project.models import MLP

    root = _folder(tmp_path)
    dm = _module(root, cache=cache, hflip=True)
    model = MLP(**dm.model_args(), hidden_sizes=[16], lr=1e-3)
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    assert model.hparams.class_names == ["cat", "dog", "frog"]
    assert model.hparams.input_shape == (3, SIZE, SIZE)
    assert model.hparams.preprocessing["mean"] == list(dm.dataset_stats[0])


# ---------------------------------------------------------------------- resuming within an epoch
@pytest.mark.parametrize("sampler", ["epoch-seeded", "distributed"])
def test_resumable_loader_continues_the_epoch_where_the_checkpoint_left_it(sampler: str) -> None:
    dataset = TensorDataset(torch.arange(50))

    def loader() -> ResumableDataLoader:
        if sampler == "epoch-seeded":
            order = EpochSeededSampler(dataset, seed=3)
        else:  # what Lightning swaps in under DDP: the done batches are loaded and dropped instead of skipped
            order = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3)
        return ResumableDataLoader(dataset, batch_size=8, sampler=order)

    straight = loader()
    straight.sampler.set_epoch(2)
    batches = [batch[0].tolist() for batch in straight]
    interrupted = loader()
    interrupted.sampler.set_epoch(2)
    iterator = iter(interrupted)
    first = [next(iterator)[0].tolist() for _ in range(3)]
    state = interrupted.state_dict()
    assert first == batches[:3] and state == {"epoch": 2, "batches_done": 3}

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    assert [batch[0].tolist() for batch in resumed] == batches[3:]
    assert resumed.state_dict() == {"epoch": 2, "batches_done": len(batches)}
    # The next epoch is whole again, and a checkpoint from another epoch skips nothing.
    resumed.sampler.set_epoch(3)
    assert sum(len(batch[0]) for batch in resumed) == 50
    stale = loader()
    stale.load_state_dict({"epoch": 1, "batches_done": 4})
    stale.sampler.set_epoch(2)
    assert [batch[0].tolist() for batch in stale] == batches
