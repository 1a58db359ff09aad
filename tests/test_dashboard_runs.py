"""The dashboard in training runs: the files it writes, all DDP processes' samples, off for a model without outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, quiet_trainer, run_train
from PIL import Image

from project.datamodules import MNISTDataModule
from project.engine.callbacks.dashboard import ClassificationDashboard
from project.engine.cli import main
from project.models import MLP


def _per_class(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


# ---------------------------------------------------------------------------------------------- a training run
def test_training_run_writes_the_dashboard(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "run"
    assert (
        main(
            [
                *TINY,
                "--dashboard_every",
                "1",
                "--trainer.max_epochs",
                "2",
                "--data.root",
                str(data_root),
                "--run_dir",
                str(run),
            ]
        )
        == 0
    )
    dashboard = run / "dashboard"
    for stage in ("val", "test"):
        for name in ("confusion_matrix.png", "predictions.png", "per_class.csv"):
            assert (dashboard / stage / name).is_file(), f"{stage}/{name}"
    assert (dashboard / "learning_curves.png").is_file()

    rows = _per_class(dashboard / "test" / "per_class.csv")
    assert [row["class"] for row in rows] == [str(digit) for digit in range(10)]
    assert list(rows[0]) == ["class", "support", "accuracy", "precision", "recall", "f1"]
    support = [int(row["support"]) for row in rows]
    assert sum(support) == 2 * 16  # limit_test_batches 2 of batch size 16
    # Per-class accuracy is per-class recall; weighted by support it is the run's own test accuracy.
    correct = sum(float(row["recall"]) * count for row, count in zip(rows, support, strict=True))
    summary = json.loads((run / "summary.json").read_text())
    assert correct / sum(support) == pytest.approx(summary["test_acc"], abs=1e-5)
    for png in dashboard.rglob("*.png"):
        with Image.open(png) as image:
            pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 10, f"{png} looks blank"


def test_ddp_dashboard_counts_every_process_samples(tmp_path: Path, data_root: Path) -> None:
    """Two CPU processes: the test set is split between them, the dashboard still covers all of it."""
    ddp = Path(__file__).resolve().parents[1] / "configs" / "trainer" / "ddp_cpu.yaml"
    # With the progress bar on, as users run it: it is drawn by rank 0 and disabled on rank 1.
    args = ["--config", str(ddp), *TINY, "--dashboard_every", "1", "--trainer.enable_progress_bar", "true"]
    result = run_train([*args, "--data.root", str(data_root)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = next((tmp_path / "runs").iterdir())
    rows = _per_class(run / "dashboard" / "test" / "per_class.csv")
    support = [int(row["support"]) for row in rows]
    assert sum(support) == 2 * 2 * 16  # two processes, each two batches of 16
    correct = sum(float(row["recall"]) * count for row, count in zip(rows, support, strict=True))
    assert correct / sum(support) == pytest.approx(json.loads((run / "summary.json").read_text())["test_acc"])


def test_a_model_without_step_outputs_turns_the_dashboard_off_with_a_warning(tmp_path: Path, data_root: Path) -> None:
    class LossOnly(MLP):
        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
            super().validation_step(batch, batch_idx)  # logs val/loss and val/acc, returns nothing

    trainer = quiet_trainer(
        limit_val_batches=1,
        callbacks=[ClassificationDashboard(tmp_path / "dashboard")],
        enable_checkpointing=True,
    )
    with pytest.warns(UserWarning, match="ClassificationDashboard is turned off: validation_step"):
        data = MNISTDataModule(root=str(data_root), val_size=0.1)
        trainer.validate(LossOnly(**data.model_args(), hidden_sizes=[8]), datamodule=data)
    assert not (tmp_path / "dashboard").exists()
