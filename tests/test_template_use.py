"""Using the template as the README says: your own model and data in your own folder, nothing edited in here."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TRAIN_SCRIPT
from PIL import Image

from project import evaluate, predict
from project.cli import main
from project.configs import short_names

MY_MODELS = '''
"""My model: one ImageClassifier subclass that builds its network; training, metrics, optimizers are inherited."""

from torch import nn

from project.models import ImageClassifier


class TinyNet(ImageClassifier):
    """Conv 3x3 -> ReLU -> global average pool -> Linear."""

    def __init__(self, width: int = 8, **kwargs):
        self.width = width
        super().__init__(**kwargs)

    def build_network(self, input_shape, num_classes):
        return nn.Sequential(
            nn.Conv2d(input_shape[0], self.width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(self.width, num_classes),
        )
'''

MY_DATA = '''
"""My data: 16x16 gray images of horizontal or vertical stripes, made in memory."""

import torch

from project.datamodules import ImageDataModule


class StripesDataModule(ImageDataModule):
    native_shape = (1, 16, 16)  # (channels, height, width) of the stored images
    dataset_stats = ((0.5,), (0.5,))  # mean and std of the pixels in [0, 1]

    def __init__(self, size: int = 400, **kwargs):
        self.size = size
        super().__init__(**kwargs)

    @property
    def class_names(self):
        return ["horizontal", "vertical"]

    def load_split(self, train):
        """uint8 images (N, 1, 16, 16) and int64 labels (N,) of the training or test split."""
        generator = torch.Generator().manual_seed(0 if train else 1)
        n = self.size if train else self.size // 4
        labels = torch.randint(0, 2, (n,), generator=generator)
        phase = torch.randint(0, 2, (n, 1, 1), generator=generator)
        rows = (torch.arange(16).view(1, 16, 1) + phase) % 2 * 255  # horizontal stripes
        images = torch.where(labels.view(n, 1, 1) == 1, rows.transpose(1, 2), rows).expand(n, 16, 16)
        return images.to(torch.uint8).unsqueeze(1).contiguous(), labels
'''

TINY_YAML = """
class_path: my_models.TinyNet
init_args:
  width: 12
  lr: 0.02
"""

STRIPES_YAML = """
class_path: my_data.StripesDataModule
init_args:
  size: 400
  batch_size: 32
  val_size: 0.2
"""

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture
def project_folder(tmp_path: Path) -> Path:
    """A user's project: two Python files and two configs, next to nothing else."""
    (tmp_path / "my_models.py").write_text(textwrap.dedent(MY_MODELS).lstrip())
    (tmp_path / "my_data.py").write_text(textwrap.dedent(MY_DATA).lstrip())
    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "data").mkdir(parents=True)
    (tmp_path / "configs" / "model" / "tiny.yaml").write_text(TINY_YAML.lstrip())
    (tmp_path / "configs" / "data" / "stripes.yaml").write_text(STRIPES_YAML.lstrip())
    return tmp_path


def test_short_names_of_your_own_configs_train_from_your_folder(project_folder: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project_folder), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "--model", "tiny", "--data", "stripes", "--max_epochs", "3", *QUIET],
        cwd=project_folder,
        env={**env, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=300,
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
