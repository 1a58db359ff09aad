"""Two-process DDP on CPU (gloo): sharded data, a signal to one rank, resume, metrics equal to one process's."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, TINY, TRAIN_SCRIPT, run_train
from test_resume import assert_same_training

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


# DeepNet (dropout, batch norm), a shuffled order and augmentation: every source of randomness a resume restores.
EXACT = ["--model", "deepnet", "--model.scheduler", "none", "--data.crop_padding", "2", "--data.rotation", "10"]
EXACT += ["--trainer.limit_train_batches", "6"]
DDP = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]


def _ok(result: subprocess.CompletedProcess[str], code: int = 0) -> None:
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_ddp_resume_and_sigterm_to_one_rank_are_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    args = [*TINY, *DDP, *EXACT, "--data.root", str(data_root)]
    _ok(run_train([*args, "--max_epochs", "4", "--run_dir", "straight"], cwd=tmp_path))

    # 2 epochs, then resumed to 4.
    _ok(run_train([*args, "--max_epochs", "2", "--run_dir", "resumed"], cwd=tmp_path))
    states = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["rng_states_per_rank"]
    assert len(states) == 2
    assert not torch.equal(states[0]["torch"], states[1]["torch"])  # each rank draws its own masks
    _ok(run_train(["--resume", "resumed", "--max_epochs", "4"], cwd=tmp_path))
    assert_same_training(tmp_path / "resumed", tmp_path / "straight")

    # SIGTERM to rank 1 alone after step 8 (the second batch of epoch 1): both ranks stop at step 10, where they
    # compare, and rank 0 writes the one checkpoint; the resume finishes the epoch and the run exactly.
    stop = json.dumps([{"class_path": "test_resume.SignalAtStep", "init_args": {"step": 8, "rank": 1}}])
    _ok(run_train([*args, "--max_epochs", "4", "--run_dir", "stopped", "--trainer.callbacks", stop], cwd=tmp_path), 143)
    last = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches_done": 4}]
    assert sorted(p.name for p in (tmp_path / "stopped").rglob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["signal"] == "SIGTERM"
    _ok(run_train(["--resume", "stopped", "--trainer.callbacks", "[]"], cwd=tmp_path))
    assert_same_training(tmp_path / "stopped", tmp_path / "straight")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_write_one_run_directory_and_score_like_one_process(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "shared" / "run"  # the shared file system both nodes see
    args = [*TINY, *WHOLE_SETS, "--data.root", str(data_root), "--max_epochs", "2", "--run_dir", str(run)]
    args += ["--accelerator", "cpu", "--devices", "1", "--num_nodes", "2", "--strategy", "ddp"]
    port = str(_free_port())
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    nodes = []
    for node_rank in (0, 1):
        cwd = tmp_path / f"node{node_rank}"  # each node's working directory: nothing may be written there
        cwd.mkdir()
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node_rank)]
        torchrun += ["--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port]
        command = [*torchrun, str(TRAIN_SCRIPT), *args]
        nodes.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, stderr.decode()[-3000:]
    assert [list((tmp_path / f"node{rank}").iterdir()) for rank in (0, 1)] == [[], []]
    assert list((tmp_path / "shared").iterdir()) == [run]
    written = ["checkpoints", "config.yaml", "hparams.yaml", "metrics.csv", "summary.json"]  # as by one process
    assert sorted(p.name for p in run.iterdir()) == written
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["devices"] == 1 and summary["global_step"] == 2 * 12  # 360 images over 2 ranks, batches of 16

    # The best checkpoint scored by scripts/evaluate.py in one process: the test metrics the two nodes reported.
    best = run / "checkpoints" / "best.ckpt"
    evaluate = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--ckpt", str(best), "--accelerator", "cpu"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["test_acc"] == summary["test_acc"]
    assert result["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)  # summed in another order
    # And its validation metrics, as logged by the two nodes.
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    datamodule = MNISTDataModule(root=str(data_root), batch_size=16, val_size=0.1)
    val = trainer.validate(load_model(best), datamodule=datamodule, verbose=False)[0]
    best_epoch = torch.load(best, weights_only=True)["epoch"]
    with open(run / "metrics.csv", newline="") as file:
        row = next(r for r in csv.DictReader(file) if r["val/acc"] and int(r["epoch"]) == best_epoch)
    assert val["val/acc"] == float(row["val/acc"]) == summary["best_val_acc"]
    assert val["val/loss"] == pytest.approx(float(row["val/loss"]), rel=1e-6)


def test_sync_batchnorm_on_cpu_is_a_one_line_error_before_any_process_starts(tmp_path: Path, data_root: Path) -> None:
    # PyTorch's DDP refuses SyncBatchNorm on CPU modules: say so, rather than a traceback from every rank.
    args = [*TINY, *DDP, "--model", "deepnet", "--data.root", str(data_root), "--trainer.sync_batchnorm", "true"]
    result = run_train(args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --trainer.sync_batchnorm true needs GPUs: PyTorch's SyncBatchNorm does not run on CPU"]
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()


def test_rng_states_of_another_process_count_restore_rank_0s_with_a_warning() -> None:
    # A DDP checkpoint resumed by one process (or by another number of them): rank 0's states, and a warning.
    from types import SimpleNamespace

    from project.callbacks.rng_state import RNGStateCheckpoint, capture_rng_states

    with torch.random.fork_rng():  # leaves this process's generator as it was
        torch.manual_seed(1)
        rank0 = capture_rng_states()
        torch.manual_seed(2)
        rank1 = capture_rng_states()
        checkpoint = {"rng_states": rank0, "rng_states_per_rank": [rank0, rank1]}
        callback = RNGStateCheckpoint()
        strategy = SimpleNamespace(root_device=torch.device("cpu"))
        with pytest.warns(UserWarning, match="random state of 2 process"):
            callback.on_load_checkpoint(
                SimpleNamespace(world_size=1, global_rank=0, strategy=strategy), None, checkpoint
            )
        assert torch.equal(torch.get_rng_state(), rank0["torch"])
        callback.on_load_checkpoint(SimpleNamespace(world_size=2, global_rank=1, strategy=strategy), None, checkpoint)
        assert torch.equal(torch.get_rng_state(), rank1["torch"])  # the same number of processes: each its own
