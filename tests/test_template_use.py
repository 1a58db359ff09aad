"""Using the template as the README says: your own model and data in your own folder, nothing edited in here."""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from pathlib import Path

import processes
import pytest
import torch
import torchvision
import yaml
from conftest import RUN_TIMEOUT, TRAIN_SCRIPT
from PIL import Image

from project.engine import evaluate, predict
from project.engine.cli import main
from project.engine.configs import short_names

REPO = Path(__file__).resolve().parents[1]


def readme_file(name: str) -> str:
    """The code block that begins with ``# <name>`` in README.md's "Start your own project" or in
    docs/own-project.md: the test runs the files as the user reads them."""
    readme = (REPO / "README.md").read_text().split("## Start your own project", 1)[1].split("\n## ", 1)[0]
    text = readme + (REPO / "docs" / "own-project.md").read_text()
    blocks = re.findall(r"```(?:python|yaml)\n(.*?)```", text, flags=re.DOTALL)
    (code,) = [block for block in blocks if block.startswith(f"# {name}\n")]
    return code


QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture
def project_folder(tmp_path: Path) -> Path:
    """A user's project: two Python files and two configs, next to nothing else."""
    (tmp_path / "my_models.py").write_text(readme_file("my_models.py"))
    (tmp_path / "my_data.py").write_text(readme_file("my_data.py"))
    (tmp_path / "my_loss.py").write_text(readme_file("my_loss.py"))
    (tmp_path / "my_pretrained.py").write_text(readme_file("my_pretrained.py"))
    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "data").mkdir(parents=True)
    (tmp_path / "configs" / "model" / "tiny.yaml").write_text(readme_file("configs/model/tiny.yaml"))
    (tmp_path / "configs" / "data" / "stripes.yaml").write_text(readme_file("configs/data/stripes.yaml"))
    return tmp_path


def test_short_names_of_your_own_configs_train_from_your_folder(project_folder: Path) -> None:
    env = dict(os.environ)  # the folder is not on PYTHONPATH: your modules import from the folder you run in
    result = processes.run(
        [sys.executable, TRAIN_SCRIPT, "--model", "tiny", "--data", "stripes", "--max_epochs", "3", *QUIET],
        RUN_TIMEOUT,
        cwd=project_folder,
        env={**env, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (project_folder / "runs").iterdir()
    assert run.name.startswith("tinynet-stripes-")
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["model"], summary["data"]) == ("my_models.TinyNet", "my_data.StripesDataModule")
    assert summary["test_acc"] >= 0.9  # the stripes are learnable: the data really reached the model
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["init_args"]["width"] == 12  # from ./configs/model/tiny.yaml
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"] == ["horizontal", "vertical"]
    assert (run / "dashboard" / "test" / "confusion_matrix.png").is_file()


def test_class_paths_then_evaluate_and_predict_your_model(
    project_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(project_folder)
    monkeypatch.syspath_prepend(str(project_folder))
    assert {"tiny", "mlp", "cnn"} <= set(short_names("model")) and {"stripes", "mnist"} <= set(short_names("data"))
    run = project_folder / "run"
    args = ["--model", "my_models.TinyNet", "--model.width", "6", "--model.lr", "0.02"]
    args += ["--data", "my_data.StripesDataModule", "--data.val_size", "0.2", "--data.batch_size", "32"]
    assert main([*args, "--max_epochs", "3", *QUIET, "--run_dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "my_models.TinyNet"

    checkpoint = str(run / "checkpoints" / "best.ckpt")
    assert evaluate.main(["--ckpt", checkpoint]) == 0
    assert json.loads((run / "eval" / "eval.json").read_text())["test_acc"] == pytest.approx(summary["test_acc"])

    vertical = (torch.arange(16).view(1, 16) % 2 * 255).expand(16, 16).to(torch.uint8)
    Image.fromarray(vertical.numpy()).resize((48, 48), Image.NEAREST).save(project_folder / "vertical.png")
    capsys.readouterr()
    assert predict.main(["--ckpt", checkpoint, str(project_folder / "vertical.png"), "--topk", "2"]) == 0
    with (project_folder / "predictions.csv").open(newline="") as file:
        (row,) = csv.DictReader(file)
    assert row["prediction"] == "vertical" and float(row["confidence"]) > 0.5


def weighted_losses(
    checkpoint: Path, split: str, data_root: Path, weights: torch.Tensor, val_size: float = 0.2
) -> torch.Tensor:
    """The oracle: each sample's class-weighted cross-entropy under a checkpoint's weights, computed here from the
    checkpoint's state dict in a plain MLP, on images normalized here with the data set's statistics."""
    from project.datamodules import MNISTDataModule
    from project.models import MLP

    saved = torch.load(checkpoint, weights_only=True)
    args = saved["hyper_parameters"]
    model = MLP(num_classes=10, input_shape=(1, 28, 28), hidden_sizes=args["hidden_sizes"]).eval()
    state = saved["state_dict"].items()
    model.network.load_state_dict({k.removeprefix("network."): v for k, v in state if k.startswith("network.")})
    data = MNISTDataModule(root=str(data_root), val_size=val_size, download=False)
    data.setup("fit" if split != "test" else "test")
    images, labels = data.splits[split]
    mean, std = data.normalization()
    with torch.no_grad():
        logits = model((images.float() / 255 - mean[0]) / std[0])
    return torch.nn.functional.cross_entropy(logits, labels, weight=weights, reduction="none")


def test_a_loss_of_your_own_is_every_logged_loss(
    project_folder: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project_folder)
    monkeypatch.syspath_prepend(str(project_folder))
    weights = [1.0, 4.0, 0.25, 1.0, 2.0, 1.0, 0.5, 1.0, 3.0, 1.0]
    run = project_folder / "weighted"
    args = ["--model", "my_loss.WeightedMLP", "--model.class_weights", json.dumps(weights)]
    args += ["--model.hidden_sizes", "[32]", "--data", "mnist", "--data.root", str(data_root)]
    args += ["--data.download", "false", "--data.val_size", "0.2", "--data.batch_size", "32"]
    assert main([*args, "--max_epochs", "2", "--trainer.log_every_n_steps", "1", *QUIET, "--run_dir", str(run)]) == 0
    class_weights = torch.tensor(weights)
    best, last = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"

    test = weighted_losses(best, "test", data_root, class_weights)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_loss"] == pytest.approx(float(test.mean()), rel=1e-5)
    with open(run / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    last_val = [float(row["val/loss"]) for row in rows if row.get("val/loss")][-1]
    assert last_val == pytest.approx(float(weighted_losses(last, "val", data_root, class_weights).mean()), rel=1e-5)
    # The epoch's training loss is the mean over its samples of the logged step losses (each a batch mean).
    steps = [float(row["train/loss_step"]) for row in rows if row.get("train/loss_step") and int(row["epoch"]) == 1]
    epoch = [float(row["train/loss_epoch"]) for row in rows if row.get("train/loss_epoch") and int(row["epoch"]) == 1]
    assert len(steps) == 10  # 320 training images in batches of 32
    assert epoch[0] == pytest.approx(sum(steps) / len(steps), rel=1e-5)

    assert evaluate.main(["--ckpt", str(best)]) == 0
    evaluated = json.loads((run / "eval" / "eval.json").read_text())
    assert evaluated["test_loss"] == pytest.approx(float(test.mean()), rel=1e-5)
    # The weights made a difference: the plain cross-entropy of the same predictions is another number.
    plain = weighted_losses(best, "test", data_root, torch.ones(10))
    assert abs(float(plain.mean()) - float(test.mean())) > 1e-3


def test_a_training_step_trains_on_the_loss_of_your_own(project_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(project_folder))
    from my_loss import WeightedMLP

    from project.engine.api import Batch

    model = WeightedMLP(class_weights=[1.0, 9.0, 0.1], num_classes=3, input_shape=(1, 2, 2)).eval()  # no dropout
    images, labels = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = model.training_step(Batch.of(images, labels), 0)
    weighted = torch.nn.functional.cross_entropy(model(images), labels, weight=torch.tensor([1.0, 9.0, 0.1]))
    per_sample = weighted * torch.tensor([1.0, 9.0, 0.1])[labels].sum() / 6  # torch's weighted mean → our mean
    torch.testing.assert_close(loss, per_sample)


def test_a_pretrained_model_of_your_own_gets_the_preprocessing_it_declares(
    project_folder: Path, data_root: Path, folder_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MyResNet's argument is `pretrained: bool`, a name the engine knows nothing of; its class says what its
    # weights expect, and `auto` becomes that, for the in-memory and the folder data modules alike.
    monkeypatch.chdir(project_folder)
    monkeypatch.syspath_prepend(str(project_folder))
    expected = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()  # the oracle: torchvision's own
    limits = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    limits += ["--trainer.limit_test_batches", "1", "--max_epochs", "1", "--data.batch_size", "4", *QUIET]
    cifar = ["--data", "cifar10", "--data.root", str(data_root), "--data.download", "false", "--data.val_size", "0.1"]
    folder = ["--data", "folder", "--data.root", str(folder_root)]

    def trained(name: str, *args: str) -> tuple[dict, dict]:
        run = project_folder / name
        assert main([*args, "--data.image_size", "auto", *limits, "--run_dir", str(run)]) == 0
        saved = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["hyper_parameters"]
        return saved["preprocessing"], yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]

    for name, data in (("cifar", cifar), ("folder", folder)):
        preprocessing, data_args = trained(name, "--model", "my_pretrained.MyResNet", *data)
        assert preprocessing["image_size"] == [expected.crop_size[0]] * 2 == [224, 224]
        assert preprocessing["mean"] == pytest.approx(expected.mean) and preprocessing["std"] == pytest.approx(
            expected.std
        )
        assert (data_args["normalize"], data_args["image_size"]) == ("imagenet", 224)
    # evaluate.py rebuilds it from the checkpoint (restore_overrides: nothing downloaded) and asks it for `auto`.
    checkpoint = str(project_folder / "folder" / "checkpoints" / "best.ckpt")
    assert evaluate.main(["--ckpt", checkpoint, "--data.normalize", "auto"]) == 0
    evaluated = json.loads((project_folder / "folder" / "eval" / "eval.json").read_text())
    assert evaluated["data_args"]["normalize"] == "imagenet"

    # Without its weights, the data decides: CIFAR-10's statistics and size; the folder's own size.
    preprocessing, data_args = trained(
        "random", "--model", "my_pretrained.MyResNet", "--model.pretrained", "false", *cifar
    )
    from project.datamodules import CIFAR10DataModule

    assert preprocessing["image_size"] == [32, 32] and data_args["normalize"] == "dataset"
    assert preprocessing["mean"] == pytest.approx(CIFAR10DataModule.dataset_stats[0])
    preprocessing, _ = trained("mlp", "--model", "mlp", *folder)
    assert preprocessing["image_size"] == [64, 64]


@pytest.mark.slow
def test_a_loss_of_your_own_is_exact_under_ddp(project_folder: Path, data_root: Path) -> None:
    # Two processes, 41 validation images (shards of 21 and 20): the logged means are those of every sample's loss.
    weights = [1.0, 4.0, 0.25, 1.0, 2.0, 1.0, 0.5, 1.0, 3.0, 1.0]
    run = project_folder / "ddp"
    args = ["--model", "my_loss.WeightedMLP", "--model.class_weights", json.dumps(weights)]
    args += ["--model.hidden_sizes", "[32]", "--data", "mnist", "--data.root", str(data_root)]
    args += ["--data.download", "false", "--data.val_size", "41", "--data.batch_size", "16", "--max_epochs", "1"]
    args += ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", *QUIET, "--run_dir", str(run)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}  # every rank imports my_loss from the folder it runs in
    result = processes.run([sys.executable, TRAIN_SCRIPT, *args], RUN_TIMEOUT, cwd=project_folder, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["devices"] == 2
    class_weights = torch.tensor(weights)
    val = weighted_losses(run / "checkpoints" / "last.ckpt", "val", data_root, class_weights, val_size=41)
    test = weighted_losses(run / "checkpoints" / "best.ckpt", "test", data_root, class_weights, val_size=41)
    with open(run / "metrics.csv", newline="") as file:
        logged_val = [float(row["val/loss"]) for row in csv.DictReader(file) if row.get("val/loss")][-1]
    assert len(val) == 41 and logged_val == pytest.approx(float(val.mean()), rel=1e-5)
    assert summary["test_loss"] == pytest.approx(float(test.mean()), rel=1e-5)
