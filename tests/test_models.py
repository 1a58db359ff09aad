"""The networks, the shared training logic (optimizers, schedulers, loss) and ResNet transfer learning."""

from __future__ import annotations

import csv
import inspect
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY, quiet_trainer
from lightning import Trainer
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch._dynamo.utils import counters as dynamo_counters

from project.callbacks.finetuning import UnfreezeBackbone
from project.datamodules import MNISTDataModule
from project.engine.cli import main
from project.engine.options import model_preprocessing, resolve_normalize
from project.models import CNN, MLP, DeepNet, ResNet
from project.models.optimization import CosineSchedule


def _layers(model: nn.Module, kind: type[nn.Module]) -> list[nn.Module]:
    return [module for module in model.network.modules() if isinstance(module, kind)]


def test_mlp_is_the_textbook_mnistnet() -> None:
    model = MLP(num_classes=10, input_shape=(1, 28, 28))
    linears = _layers(model, nn.Linear)
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(784, 512), (512, 256), (256, 10)]
    assert [layer.p for layer in _layers(model, nn.Dropout)] == [0.2, 0.2]
    assert len(_layers(model, nn.ReLU)) == 2


def test_deepnet_is_the_textbook_deepnet() -> None:
    model = DeepNet(num_classes=10, input_shape=(3, 32, 32))
    linears = _layers(model, nn.Linear)
    assert [layer.out_features for layer in linears] == [512, 256, 128, 10]
    assert linears[0].in_features == 3 * 32 * 32
    assert [bn.num_features for bn in _layers(model, nn.BatchNorm1d)] == [512, 256, 128]
    assert {layer.p for layer in _layers(model, nn.Dropout)} == {0.5}


@pytest.mark.parametrize("model_class", [MLP, DeepNet, CNN, ResNet])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_every_network_maps_any_input_shape_to_logits(model_class: type, shape: tuple[int, int, int]) -> None:
    kwargs = {"weights": "none"} if model_class is ResNet else {}
    model = model_class(num_classes=7, input_shape=shape, **kwargs).eval()
    assert model(torch.randn(3, *shape)).shape == (3, 7)


def test_hyperparameters_are_plain_values_without_modules() -> None:
    model = CNN(num_classes=10, input_shape=(1, 28, 28), lr=0.01, scheduler="cosine")
    assert model.hparams.lr == 0.01 and model.hparams.channels == inspect.signature(CNN).parameters["channels"].default
    allowed = (int, float, str, bool, type(None), list, tuple, dict)
    assert all(isinstance(value, allowed) for value in model.hparams.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"lr": -1.0}, "lr must be positive"), ({"label_smoothing": 1.5}, "label_smoothing")],
)
def test_bad_training_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MLP(num_classes=10, input_shape=(1, 28, 28), **kwargs)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizers(optimizer: str) -> None:
    model = MLP(num_classes=10, input_shape=(1, 8, 8), optimizer=optimizer, lr=0.05, weight_decay=0.01, momentum=0.8)
    configured = model.configure_optimizers()
    expected = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optimizer]
    assert type(configured) is expected
    assert configured.param_groups[0]["lr"] == 0.05 and configured.param_groups[0]["weight_decay"] == 0.01
    if optimizer == "sgd":
        assert configured.param_groups[0]["momentum"] == 0.8


def test_warmup_cosine_rises_then_decays_to_zero() -> None:
    schedule = CosineSchedule(warmup_epochs=1)
    assert schedule(0) == schedule(50) == 1.0  # until training starts and sets its length
    schedule.total_steps, schedule.warmup_steps = 100, 10
    factors = [schedule(step) for step in range(101)]
    assert factors[0] < 0.1 and factors[9] < factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[100] == pytest.approx(0.0, abs=1e-9)
    assert factors[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.mark.parametrize("scheduler", ["step", "plateau", "cosine", "warmup_cosine"])
def test_each_scheduler_runs_inside_the_trainer(tmp_path: Path, data_root: Path, scheduler: str) -> None:
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    # Plateau: a learning rate too small to change any prediction, so val/acc stays flat and, with a patience of
    # one epoch, the rate is cut once after the third.
    lr = 1e-6 if scheduler == "plateau" else 0.01
    L.seed_everything(0)
    data = MNISTDataModule(root=str(data_root), batch_size=32, val_size=0.2)
    model = MLP(**data.model_args(), hidden_sizes=[32], scheduler=scheduler, step_size=1, lr=lr)
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=3 if scheduler == "plateau" else 2,
        logger=CSVLogger(tmp_path, name="", version=""),
        callbacks=[LearningRateMonitor(logging_interval="step")],
        enable_checkpointing=False,
        enable_progress_bar=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, datamodule=data)
    final = trainer.optimizers[0].param_groups[0]["lr"]
    if scheduler == "step":
        assert final == pytest.approx(0.01 * 0.1**2)
    elif scheduler == "plateau":
        assert final == pytest.approx(1e-6 * 0.1, rel=1e-12)
    else:
        assert final < 0.01 * 0.05  # cosine decays towards zero by the last step
    if scheduler == "warmup_cosine":
        # 2 epochs of 10 steps, 1 of them warm-up: the first step trains at 1/11 of the learning rate.
        with open(tmp_path / "metrics.csv", newline="") as file:
            first = next(float(row["lr-Adam"]) for row in csv.DictReader(file) if row["lr-Adam"])
        assert first == pytest.approx(0.01 / 11)


def test_label_smoothing_changes_the_loss() -> None:
    logits, targets = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([0])
    smoothed = MLP(num_classes=3, input_shape=(1, 2, 2), label_smoothing=0.3).loss(logits, targets)[0]
    # By hand: the target gets 1 - 0.3 + 0.3/3 of the probability mass, each other class 0.3/3.
    log_p = torch.log_softmax(logits[0], dim=0)
    expected = -(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])
    torch.testing.assert_close(smoothed, expected, rtol=1e-6, atol=0)
    plain = MLP(num_classes=3, input_shape=(1, 2, 2)).loss(logits, targets)[0]
    torch.testing.assert_close(plain, -log_p[0], rtol=1e-6, atol=0)


def test_resnet_loads_imagenet_weights_from_the_torchvision_cache(offline_environment: Path) -> None:
    from torchvision.models import resnet18

    reference = resnet18()
    cached = next((offline_environment / "hub" / "checkpoints").glob("resnet18-*.pth"))
    reference.load_state_dict(torch.load(cached, weights_only=True))
    model = ResNet(weights="imagenet", num_classes=5, input_shape=(3, 32, 32))
    assert torch.equal(model.network.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    assert model.network.fc.out_features == 5
    # Its inputs get ImageNet's statistics.
    assert resolve_normalize("auto", model_preprocessing(type(model), dict(model.hparams))) == "imagenet"


def test_resnet_on_gray_images_matches_gray_copied_to_rgb(offline_environment: Path) -> None:
    gray = ResNet(weights="imagenet", num_classes=4, input_shape=(1, 32, 32), finetune="all")
    rgb = ResNet(weights="imagenet", num_classes=4, input_shape=(3, 32, 32), finetune="all")
    rgb.network.fc.load_state_dict(gray.network.fc.state_dict())
    images = torch.randn(2, 1, 32, 32)
    gray.eval(), rgb.eval()
    torch.testing.assert_close(gray(images), rgb(images.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_resnet_frozen_backbone_trains_only_the_head(offline_environment: Path) -> None:
    model = ResNet(weights="imagenet", num_classes=3, input_shape=(3, 32, 32))
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {"network.fc.weight", "network.fc.bias"}
    model.train()
    assert not model.network.bn1.training  # frozen BatchNorm keeps its ImageNet statistics
    full = ResNet(weights="imagenet", num_classes=3, input_shape=(3, 32, 32), finetune="all")
    assert all(parameter.requires_grad for parameter in full.parameters())


def test_resnet_weights_from_a_state_dict_file(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    source = resnet18(num_classes=10)
    path = tmp_path / "mine.pth"
    torch.save(source.state_dict(), path)
    model = ResNet(weights=str(path), num_classes=10, input_shape=(3, 32, 32), finetune="all")
    assert torch.equal(model.network.fc.weight, source.fc.weight)  # same head shape: kept


def test_unfreeze_at_epoch_adds_the_backbone_to_the_optimizer(tmp_path: Path, data_root: Path) -> None:
    from lightning.pytorch.callbacks import Callback

    from project.datamodules import CIFAR10DataModule

    modes: dict[int, set[bool]] = {0: set(), 1: set()}

    class BatchNormMode(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            modes[trainer.current_epoch].add(pl_module.network.layer1[0].bn1.training)

    # The default per-step cosine schedule: the backbone's new parameter group must join it.
    data = CIFAR10DataModule(root=str(data_root), batch_size=16, val_size=0.1)
    model = ResNet(
        **data.model_args(), weights="imagenet", unfreeze_at_epoch=1, backbone_lr_ratio=0.1, lr=0.01, scheduler="cosine"
    )
    assert any(isinstance(callback, UnfreezeBackbone) for callback in model.configure_callbacks())
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[BatchNormMode()])
    trainer.fit(model, datamodule=data)
    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.1)
    # It follows the head's schedule from the head's initial learning rate scaled by the ratio.
    base_lrs = trainer.lr_scheduler_configs[0].scheduler.base_lrs
    assert groups[1]["initial_lr"] == pytest.approx(0.001) and base_lrs == [0.01, pytest.approx(0.001)]
    assert all(parameter.requires_grad for parameter in model.parameters())
    # Frozen, the backbone's BatchNorm layers normalize with their ImageNet statistics; unfrozen, they train.
    assert modes == {0: {False}, 1: {True}}
    pretrained = ResNet(weights="imagenet", num_classes=10, input_shape=(3, 32, 32))
    # The backbone was trained in epoch 1, after the unfreeze.
    assert not torch.equal(pretrained.network.layer4[0].conv1.weight, model.network.layer4[0].conv1.weight)


def test_warm_up_counts_epochs_of_steps_when_training_is_limited_by_steps(data_root: Path) -> None:
    # max_steps instead of max_epochs: one warm-up epoch is still one epoch of steps (10 here), not the whole run.
    data = MNISTDataModule(root=str(data_root), batch_size=32, val_size=0.2)
    model = MLP(**data.model_args(), hidden_sizes=[32], scheduler="warmup_cosine", warmup_epochs=1, lr=0.01)
    trainer = quiet_trainer(max_epochs=-1, max_steps=30, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert (schedule.total_steps, schedule.warmup_steps) == (30, 10)


class KeepTrainedModel(Callback):
    """Keeps the module that ``main`` trained in this process (``--trainer.callbacks``), to run it afterwards."""

    model: L.LightningModule | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        KeepTrainedModel.model = pl_module


@pytest.mark.slow
def test_compiled_network_trains_and_its_checkpoint_loads_uncompiled(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --compile (torch.compile through Module.compile, applied by the engine): dynamo compiles the network, the
    # checkpoint has the same parameter names as without it, so it loads into a plain model, which predicts what the
    # compiled network and the same network run eagerly do.
    torch._dynamo.reset()
    dynamo_counters.clear()
    KeepTrainedModel.model = None
    monkeypatch.chdir(tmp_path)
    keep = json.dumps([{"class_path": "test_models.KeepTrainedModel"}])
    args = [*TINY, "--model", "mlp", "--model.hidden_sizes", "[32]", "--data.root", str(data_root)]
    args += ["--data.batch_size", "32", "--data.val_size", "64", "--trainer.limit_train_batches", "5"]
    assert main([*args, "--compile", "--trainer.callbacks", keep, "--run_dir", "run"]) == 0
    assert dynamo_counters["stats"]["unique_graphs"] > 0  # dynamo really captured and compiled a graph
    model = KeepTrainedModel.model
    assert model is not None and model.hparams.compile
    path = tmp_path / "run" / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 5
    state = checkpoint["state_dict"]
    assert set(state) == set(MLP(hidden_sizes=[32], num_classes=10, input_shape=(1, 28, 28)).state_dict())
    plain = MLP.load_from_checkpoint(path, weights_only=True, compile=False).eval()
    images = torch.randn(8, 1, 28, 28)
    torch._dynamo.reset()  # forget the compiled code: whatever is still compiled compiles again when called
    dynamo_counters.clear()
    with torch.no_grad():
        expected = plain(images)
        assert not dynamo_counters["stats"]  # the plain model ran uncompiled: dynamo saw no frame
        torch.testing.assert_close(expected, model.eval()(images), rtol=1e-5, atol=1e-5)
        assert dynamo_counters["stats"]["unique_graphs"] > 0  # the trained network is the compiled one
        torch.testing.assert_close(expected, model.network.forward(images), rtol=1e-5, atol=1e-5)  # run eagerly
