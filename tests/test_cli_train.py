"""Training from the command line: short names, class paths, configs, overrides, recipes, the run directory."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from cli_helpers import _train
from conftest import TINY
from lightning.pytorch.callbacks import Callback

from project.engine.cli import main
from project.engine.configs import expand_args, short_names


def test_short_names_come_from_configs() -> None:
    assert set(short_names("model")) >= {"mlp", "deepnet", "cnn", "resnet", "transfer"}
    assert set(short_names("data")) >= {"mnist", "cifar10", "folder"}


def test_every_model_config_has_one_shape() -> None:
    # The model and, where it has them, the trainer settings that go with it: what the README shows a user.
    for name, path in short_names("model").items():
        config = yaml.safe_load(path.read_text())
        assert set(config) <= {"model", "trainer"} and "class_path" in config["model"], name


def test_default_data_follows_the_model() -> None:
    resnet = expand_args(["--model", "resnet"])
    assert resnet[resnet.index("--data") + 1].endswith("cifar10.yaml")
    cnn = expand_args(["--model=cnn"])
    assert cnn[cnn.index("--data") + 1].endswith("mnist.yaml")
    assert expand_args(["--precision", "bf16-mixed", "--devices", "2"])[-4:] == [
        "--trainer.precision",
        "bf16-mixed",
        "--trainer.devices",
        "2",
    ]


def test_run_directory_holds_config_checkpoints_metrics_and_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    code, run = _train(tmp_path, monkeypatch, "--model", "mlp", "--data.root", str(data_root))
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "project.models.MLP"
    assert summary["data"] == "project.datamodules.MNISTDataModule"
    assert summary["epochs"] == 1 and summary["global_step"] == 3
    assert 0.0 <= summary["best_val_acc"] <= 1.0 and 0.0 <= summary["test_acc"] <= 1.0
    assert summary["test_loss"] > 0 and summary["wall_time_s"] >= 0
    assert Path(summary["checkpoints"]["best"]) == run / "checkpoints" / "best.ckpt"
    assert Path(summary["checkpoints"]["last"]) == run / "checkpoints" / "last.ckpt"
    for name in ("config.yaml", "metrics.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["class_path"] == "project.models.MLP"
    assert "val/acc" in (run / "metrics.csv").read_text().splitlines()[0]


def test_class_paths_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path) -> None:
    code, run = _train(
        tmp_path,
        monkeypatch,
        "--model",
        "project.models.CNN",
        "--data",
        "project.datamodules.MNISTDataModule",
        "--data.root",
        str(data_root),
        "--model.lr",
        "0.01",
        "--model.channels",
        "[8, 16]",
        "--data.batch_size",
        "8",
        "--seed",
        "7",
    )
    assert code == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["init_args"]["lr"] == 0.01
    assert config["model"]["init_args"]["channels"] == [8, 16]
    assert config["data"]["init_args"]["batch_size"] == 8
    assert config["seed_everything"] == 7


def test_config_files_compose_and_later_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path) -> None:
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump({"model": {"init_args": {"lr": 0.05, "dropout": 0.3}}}))
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump({"model": {"init_args": {"lr": 0.002}}, "trainer": {"max_epochs": 1}}))
    code, run = _train(
        tmp_path, monkeypatch, "--data.root", str(data_root), "--config", str(first), "--config", str(second)
    )
    assert code == 0
    model = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]
    assert (model["lr"], model["dropout"]) == (0.002, 0.3)


def test_print_config_prints_and_trains_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "deepnet", "--model.dropout", "0.1", "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "project.models.DeepNet"
    assert printed["model"]["init_args"]["dropout"] == 0.1
    assert printed["trainer"]["gradient_clip_val"] == 1.0
    assert not (tmp_path / "runs").exists()


def test_explicit_run_dir_is_never_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "my-run"
    code, _ = _train(tmp_path, monkeypatch, "--data.root", str(data_root), "--run_dir", str(run_dir))
    assert code == 0
    before = (run_dir / "checkpoints" / "best.ckpt").read_bytes()
    assert main([*TINY, "--data.root", str(data_root), "--run_dir", str(run_dir)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (run_dir / "checkpoints" / "best.ckpt").read_bytes() == before


def test_reloaded_best_checkpoint_gives_the_reported_test_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    from lightning import Trainer

    from project.datamodules import MNISTDataModule
    from project.engine.checkpoint import load_model

    code, run = _train(tmp_path, monkeypatch, "--model", "cnn", "--data.root", str(data_root))
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    model = load_model(summary["checkpoints"]["best"])
    assert model.hparams.class_names == [str(digit) for digit in range(10)]
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_test_batches=2)
    results = trainer.test(model, datamodule=MNISTDataModule(root=str(data_root), batch_size=16), verbose=False)
    assert results[0]["test/acc"] == pytest.approx(summary["test_acc"], abs=1e-6)
    assert results[0]["test/loss"] == pytest.approx(summary["test_loss"], rel=1e-5)


class RecordInitialWeights(Callback):
    """Keeps, in this process, the weights a run starts training from and which of its parameters train."""

    weights: dict[str, torch.Tensor] = {}
    trainable: set[str] = set()
    frozen: set[str] = set()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        RecordInitialWeights.weights = {key: value.detach().clone() for key, value in pl_module.state_dict().items()}
        parameters = dict(pl_module.named_parameters())
        RecordInitialWeights.trainable = {name for name, parameter in parameters.items() if parameter.requires_grad}
        RecordInitialWeights.frozen = set(parameters) - RecordInitialWeights.trainable


@pytest.mark.parametrize("model", ["mlp", "deepnet", "cnn", "resnet"])
@pytest.mark.parametrize("data", ["mnist", "cifar10", "folder"])
def test_every_model_trains_on_every_data_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path, folder_root: Path, model: str, data: str
) -> None:
    root = folder_root if data == "folder" else data_root
    extra = ["--data.image_size", "32"]  # ResNet-18 at 224 px (its default) is tests/test_frozen_features.py's
    RecordInitialWeights.weights = {}
    record = json.dumps([{"class_path": "test_cli_train.RecordInitialWeights"}])
    extra += ["--trainer.callbacks", record]
    code, run = _train(tmp_path, monkeypatch, "--model", model, "--data", data, "--data.root", str(root), *extra)
    assert code == 0
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    expected_classes = {
        "mnist": [str(digit) for digit in range(10)],
        "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        "folder": ["cat", "dog", "frog"],
    }[data]
    assert hparams["class_names"] == expected_classes and hparams["num_classes"] == len(expected_classes)
    channels = 1 if data == "mnist" else 3
    assert hparams["input_shape"][0] == channels
    # It trained: three optimizer steps (TINY), a finite training loss logged, and weights that moved.
    assert checkpoint["global_step"] == 3
    with open(run / "metrics.csv", newline="") as file:
        losses = [float(row["train/loss_epoch"]) for row in csv.DictReader(file) if row.get("train/loss_epoch")]
    assert len(losses) == 1 and math.isfinite(losses[0])
    start, trained = RecordInitialWeights, checkpoint["state_dict"]  # the weights the run recorded at its start
    assert start.weights.keys() == trained.keys()
    moved = {key for key, value in start.weights.items() if not torch.equal(value, trained[key])}
    assert start.trainable and start.trainable <= moved  # every trainable tensor changed...
    assert not start.frozen & moved  # ...and a frozen backbone did not: the comparison starts from the same weights
    from project.engine.checkpoint import load_model

    network = load_model(run / "checkpoints" / "last.ckpt")
    assert network(torch.zeros(2, *hparams["input_shape"])).shape == (2, hparams["num_classes"])


def test_a_model_recipe_sets_its_epochs_and_any_flag_overrides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    # configs/model/mlp.yaml is a recipe (model + trainer settings): passed first, whatever the order on the line.
    from project.engine.cli import TemplateCLI

    monkeypatch.chdir(tmp_path)
    assert expand_args(["--model", "mlp"])[:2] == ["--config", str(short_names("model")["mlp"])]
    quiet = ["--data.root", str(data_root), "--data.val_size", "0.1", "--trainer.enable_progress_bar", "false"]
    epochs = {}
    for name, args in {"recipe": [], "flag first": ["--max_epochs", "5", "--model", "mlp"]}.items():
        cli = TemplateCLI(expand_args([*args, *quiet, "--run_dir", name.replace(" ", "-")]))
        epochs[name] = (cli.trainer.max_epochs, cli.model.hparams.lr, cli.datamodule.batch_size)
    assert epochs == {"recipe": (3, 0.002, 128), "flag first": (5, 0.002, 128)}
