"""Using the template as the README says: your own model and data in your own folder, nothing edited in here."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TRAIN_SCRIPT
from PIL import Image

from project import evaluate, predict
from project.cli import main
from project.configs import short_names

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_file(name: str) -> str:
    """The code block of README.md's "Start your own project" that begins with ``# <name>``: the test runs it."""
    section = README.read_text().split("## Start your own project", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    (code,) = [block for block in blocks if block.startswith(f"# {name}\n")]
    return code


TINY_YAML = """
class_path: my_models.TinyNet
init_args:
  width: 12
  lr: 0.02
"""

STRIPES_YAML = """
class_path: my_data.StripesDataModule
init_args:
  batch_size: 32
  val_size: 0.2
"""

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture
def project_folder(tmp_path: Path) -> Path:
    """A user's project: two Python files and two configs, next to nothing else."""
    (tmp_path / "my_models.py").write_text(readme_file("my_models.py"))
    (tmp_path / "my_data.py").write_text(readme_file("my_data.py"))
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
