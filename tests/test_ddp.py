"""Two-process DDP on CPU (gloo): sharded data, a signal to one rank, resume, metrics equal to one process's."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY, run_train

from project.checkpoint import load_model
from project.datamodules import MNISTDataModule

WHOLE_SETS = ["--trainer.limit_train_batches", "1.0", "--trainer.limit_val_batches", "1.0"]
WHOLE_SETS += ["--trainer.limit_test_batches", "1.0"]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_stops_resumes_and_matches_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    ddp = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]  # as configs/trainer/ddp_cpu.yaml
    args = [*TINY, *WHOLE_SETS, *ddp, "--data.root", str(data_root), "--max_epochs", "2"]
    # SIGTERM to rank 0 alone after step 5: the ranks agree at step 10 (they compare every 10 steps) and stop.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    stop = json.dumps([{"class_path": "test_resume.SignalAtStep", "init_args": {"step": 5, "rank": 0}}])
    result = run_train([*args, "--trainer.callbacks", stop], cwd=tmp_path, timeout=300)
    assert result.returncode == 143, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # rank 1 did not make a run directory of its own
    run = runs[0]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10

    result = run_train(["--resume", "last", "--trainer.callbacks", "[]"], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "runs").iterdir()) == [run]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["devices"] == 2
    # 360 training images: each rank takes its 180 (every other sample), 12 batches of 16 per epoch, not 23.
    assert summary["global_step"] == 2 * 12
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]

    # The best checkpoint, evaluated by one process on the same data, scores what the two processes reported.
    best = run / "checkpoints" / "best.ckpt"
    model = load_model(best)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    datamodule = MNISTDataModule(root=str(data_root), batch_size=16, val_size=0.1)
    test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    assert test["test/acc"] == summary["test_acc"]
    assert test["test/loss"] == pytest.approx(summary["test_loss"], rel=1e-6)  # summed in another order
    val = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    best_epoch = torch.load(best, weights_only=True)["epoch"]
    with open(run / "metrics.csv", newline="") as file:
        row = next(r for r in csv.DictReader(file) if r["val/acc"] and int(r["epoch"]) == best_epoch)
    assert val["val/acc"] == float(row["val/acc"]) == summary["best_val_acc"]
    assert val["val/loss"] == pytest.approx(float(row["val/loss"]), rel=1e-6)
