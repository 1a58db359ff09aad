"""The main job: a pretrained ResNet-18 trains at its weights' 224 px, and a frozen backbone's features are computed
once (``--frozen_features``): the head ends as when trained through the backbone on the same images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY
from fakedata import write_cifar10

from project.engine.cli import main

# No augmentation, so that both paths see the same images; no scheduler, so "1 then 2 epochs" equals "2".
RESNET = ["--model", "resnet", "--model.scheduler", "none", "--data.crop_padding", "0", "--data.hflip", "false"]
LIMITS = ["--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "3"]  # after TINY's, which they beat


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10's files with 120 training images: every one goes through ResNet-18 at 224 px once per run."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10(root, n_train=120, n_test=32)
    return root


def _train(root: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path, run: str, *args: str) -> Path:
    monkeypatch.chdir(root)
    assert main([*TINY, *RESNET, *LIMITS, "--data.root", str(data_root), "--run_dir", run, *args]) == 0
    return root / run


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_the_head_trained_on_features_once_is_the_head_trained_through_the_backbone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_cifar: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    once = _train(tmp_path, monkeypatch, small_cifar, "once", "--max_epochs", "2", "--frozen_features", "true")
    assert "features of 120 images computed once" in capsys.readouterr().out
    through = _train(tmp_path, monkeypatch, small_cifar, "through", "--max_epochs", "2", "--frozen_features", "false")
    once_state, through_state = _state(once), _state(through)
    assert once_state.keys() == through_state.keys()  # the checkpoint holds the whole network either way
    for name, value in through_state.items():
        torch.testing.assert_close(once_state[name], value, rtol=1e-4, atol=1e-5, msg=name)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (once, through)]
    assert summaries[0]["test_acc"] == pytest.approx(summaries[1]["test_acc"])
    hparams = torch.load(once / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["preprocessing"]["image_size"] == [224, 224]  # the weights' size, from CIFAR's 32 px


def test_features_once_resumes_bit_identically_from_the_middle_of_an_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_cifar: Path
) -> None:
    straight = _train(tmp_path, monkeypatch, small_cifar, "straight", "--max_epochs", "2")
    stop = json.dumps([{"class_path": "test_resume.SignalAtStep", "init_args": {"step": 6}}])  # epoch 2 of 4 steps
    monkeypatch.chdir(tmp_path)
    args = [*TINY, *RESNET, *LIMITS, "--data.root", str(small_cifar), "--max_epochs", "2"]
    assert main([*args, "--run_dir", "stopped", "--trainer.callbacks", stop]) == 143
    assert main([*TINY, *LIMITS, "--resume", "stopped", "--max_epochs", "2"]) == 0
    resumed, expected = _state(tmp_path / "stopped"), _state(straight)
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[name], value) for name, value in expected.items())


def test_frozen_features_true_is_refused_where_the_model_trains_more_than_its_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--model", "resnet", "--model.finetune", "all", "--data.root", str(data_root)]
    assert main([*args, "--frozen_features", "true"]) == 2
    assert "--frozen_features true: the model trains more than its head" in capsys.readouterr().err


def test_auto_trains_through_the_backbone_where_workers_decode_the_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--model", "resnet", "--data", "folder", "--data.root", str(folder_root)]
    args += ["--data.image_size", "32", "--data.cache", "never", "--data.num_workers", "0"]
    assert main([*args, "--run_dir", "auto"]) == 0
    assert "computed once" not in capsys.readouterr().out
    assert main([*args, "--run_dir", "true", "--frozen_features", "true"]) == 2
    assert "does not hold its images in memory" in capsys.readouterr().err
