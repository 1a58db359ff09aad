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
import processes
import pytest
import torch
from conftest import REPO, RUN_TIMEOUT, TINY, TRAIN_SCRIPT, run_train
from test_resume import assert_same_training

from project.datamodules import MNISTDataModule
from project.engine.checkpoint import load_model

WHOLE_SETS = ["--trainer.limit_train_batches", "1.0", "--trainer.limit_val_batches", "1.0"]
WHOLE_SETS += ["--trainer.limit_test_batches", "1.0"]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_stops_resumes_and_matches_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    ddp = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]  # as configs/trainer/ddp_cpu.yaml
    # 41 validation images: shards of 21 and 20, whose means only exact sums and counts combine right.
    args = [*TINY, *WHOLE_SETS, *ddp, "--data.root", str(data_root), "--max_epochs", "2", "--data.val_size", "41"]
    # SIGTERM to rank 0 alone after step 5: the ranks agree at step 10 (they compare every 10 steps) and stop.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    stop = json.dumps([{"class_path": "test_resume.SignalAtStep", "init_args": {"step": 5, "rank": 0}}])
    result = run_train([*args, "--trainer.callbacks", stop], cwd=tmp_path)
    assert result.returncode == 143, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # rank 1 did not make a run directory of its own
    run = runs[0]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10

    result = run_train(["--resume", "last", "--trainer.callbacks", "[]"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "runs").iterdir()) == [run]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["devices"] == 2
    # 359 training images: each rank takes its 180 or 179 (every other sample), 12 batches of 16 per epoch, not 23.
    assert summary["global_step"] == 2 * 12
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]

    # The best checkpoint, evaluated by one process on the same data, scores what the two processes reported.
    best = run / "checkpoints" / "best.ckpt"
    model = load_model(best)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    datamodule = MNISTDataModule(root=str(data_root), batch_size=16, val_size=41)
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
    # Two "nodes" on one machine: each gets one core's worth of threads, as on a node of its own.
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning", "OMP_NUM_THREADS": "1"}
    nodes = []
    for node_rank in (0, 1):
        cwd = tmp_path / f"node{node_rank}"  # each node's working directory: nothing may be written there
        cwd.mkdir()
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node_rank)]
        torchrun += ["--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port]
        command = [*torchrun, str(TRAIN_SCRIPT), *args]
        nodes.append(processes.start(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = [node.communicate(timeout=RUN_TIMEOUT) for node in nodes]
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
    evaluate = processes.run(
        [sys.executable, REPO / "scripts" / "evaluate.py", "--ckpt", best, "--accelerator", "cpu"],
        RUN_TIMEOUT,
        cwd=tmp_path,
        env=env,
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

    from project.engine.callbacks.rng_state import RNGStateCheckpoint, capture_rng_states

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


# ---------------------------------------------------------------------------------------------- evaluate.py
def _torchrun_evaluate(args: list[str], tmp_path: Path, two_nodes: bool) -> list[subprocess.CompletedProcess[str]]:
    """``scripts/evaluate.py ARGS`` under torchrun on 127.0.0.1: two nodes of one process, or one node of two."""
    port = str(_free_port())
    # Two "nodes" on one machine: each gets one core's worth of threads, as on a node of its own.
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning", "OMP_NUM_THREADS": "1"}
    if two_nodes:
        launches = [["--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1"] for rank in (0, 1)]
    else:
        launches = [["--nnodes", "1", "--nproc_per_node", "2"]]
    nodes = []
    for index, launch in enumerate(launches):
        cwd = tmp_path / f"node{index}"  # each node's working directory: nothing may be written there
        cwd.mkdir()
        torchrun = [sys.executable, "-m", "torch.distributed.run", *launch, "--master_addr", "127.0.0.1"]
        command = [*torchrun, "--master_port", port, str(REPO / "scripts" / "evaluate.py"), *args]
        nodes.append(processes.start(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = [node.communicate(timeout=RUN_TIMEOUT) for node in nodes]
    return [
        subprocess.CompletedProcess(node.args, node.returncode, out.decode(), err.decode())
        for node, (out, err) in zip(nodes, outputs, strict=True)
    ]


def _per_class(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mnist-in-memory-two-nodes", "folder-dataloader-two-processes"])
def test_evaluate_under_torchrun_scores_each_test_sample_once_like_one_process(tmp_path: Path, case: str) -> None:
    from fakedata import write_image_folder, write_mnist

    from project.engine import evaluate
    from project.engine.cli import main as train

    # Odd test sets, and batch sizes that give the ranks different numbers of batches (33 + 32 in 3 + 2 of 16;
    # 8 + 7 in 2 + 1 of 7): a padded sampler would score a sample twice, a collective per batch would hang.
    if case.startswith("mnist"):
        size, data = 65, ["--data.root", str(write_mnist(tmp_path / "mnist", n_train=100, n_test=65))]
        eval_args = ["--data.batch_size", "16"]
    else:  # files decoded by a DataLoader, into which Lightning would inject its padded DistributedSampler
        root = write_image_folder(tmp_path / "images", size=(16, 16), layout="split", split_counts=(6, 2, 5))
        size, data = 15, ["--data", "folder", "--data.root", str(root), "--data.image_size", "16"]
        data += ["--data.cache", "never", "--data.num_workers", "0"]
        eval_args = ["--data.batch_size", "7"]
    run = tmp_path / "shared" / "run"
    assert train([*TINY, *data, "--run_dir", str(run)]) == 0
    best = str(run / "checkpoints" / "best.ckpt")
    single = tmp_path / "single" / "eval.json"
    common = ["--ckpt", best, "--accelerator", "cpu", *eval_args]
    assert evaluate.main([*common, "--output", str(single)]) == 0
    expected = json.loads(single.read_text())

    results = _torchrun_evaluate(common, tmp_path, two_nodes=case.endswith("two-nodes"))
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert [list(cwd.iterdir()) for cwd in sorted(tmp_path.glob("node*"))] == [[]] * len(results)
    written = [line for result in results for line in result.stdout.splitlines() if line.startswith("written:")]
    assert written == [f"written: {run / 'eval' / 'eval.json'} and the dashboard in {run / 'eval' / 'test'}"]
    if len(results) == 2:
        assert written[0] in results[0].stdout and "MEMBER: 2/2" in results[1].stderr  # rank 1 took part, silently
    assert sorted(path.name for path in (run / "eval").iterdir()) == ["eval.json", "test"]
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["test_acc"] == expected["test_acc"]
    assert result["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-6)  # summed in another order
    assert result["metrics"] == pytest.approx(expected["metrics"], rel=1e-6)
    # The dashboard counted every test sample once, and scores them as the single process did.
    rows = _per_class(run / "eval" / "test" / "per_class.csv")
    assert sum(int(row["support"]) for row in rows) == size
    assert rows == _per_class(single.parent / "test" / "per_class.csv")


def test_evaluate_takes_devices_and_nodes_from_torchrun_and_stays_one_device_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from project.engine import distributed_eval
    from project.engine.errors import UserError

    for name in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "3")  # e.g. one of several tasks of a SLURM step
    assert distributed_eval.trainer_options() == {"devices": 1}  # a plain process, as before
    assert distributed_eval.is_global_zero()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "eval")
    for name, value in {"WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "GROUP_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    assert distributed_eval.trainer_options() == {"devices": 1}  # torchrun with one process
    for name, value in {"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "GROUP_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    ddp = {"strategy": "ddp", "devices": 4, "num_nodes": 2, "use_distributed_sampler": False}
    assert distributed_eval.trainer_options() == ddp
    assert not distributed_eval.is_global_zero()
    monkeypatch.setenv("RANK", "0")
    assert distributed_eval.is_global_zero()
    monkeypatch.setenv("WORLD_SIZE", "6")  # nodes started with different --nproc_per_node
    with pytest.raises(UserError, match="the same --nproc_per_node"):
        distributed_eval.trainer_options()


def test_evaluate_refuses_test_loaders_it_cannot_split_without_repeats() -> None:
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, IterableDataset, TensorDataset

    from project.engine import distributed_eval
    from project.engine.errors import UserError
    from project.engine.loaders import InMemoryLoader

    trainer = SimpleNamespace(world_size=3, distributed_sampler_kwargs={"num_replicas": 3, "rank": 2})
    with pytest.raises(UserError, match="the test set has 2 sample"):
        distributed_eval.shard(DataLoader(TensorDataset(torch.arange(2))), trainer)

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(5))

    for loader in (DataLoader(Stream()), [torch.zeros(2)]):
        with pytest.raises(UserError, match="cannot split a .* test loader between 3 processes"):
            distributed_eval.shard(loader, trainer)
    loader = DataLoader(TensorDataset(torch.arange(7)), batch_size=2)
    assert [batch[0].tolist() for batch in distributed_eval.shard(loader, trainer)] == [[2, 5]]  # rank 2 of 3
    in_memory = InMemoryLoader(torch.zeros(7, 1), torch.arange(7), batch_size=2, rank=2, world_size=3)
    assert distributed_eval.shard(in_memory, trainer) is in_memory  # it shards itself
