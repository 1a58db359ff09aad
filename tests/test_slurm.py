"""SLURM, simulated on one machine: its environment variables, no srun (one task) and a stub ``scontrol`` that records
what it is asked. The requeue signal writes ``last.ckpt`` and requeues the job; the requeued job, started with the
same command and job id, continues the run in the same directory, to the weights an uninterrupted run ends with."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import processes
import pytest
import torch
from conftest import REPO, RUN_TIMEOUT, TINY, run_train
from test_resume import assert_same_training

from project.engine import rundir

# Dropout, batch norm, shuffling and augmentation, as in the DDP resume test; W&B (offline) to continue its run.
ARGS = ["--model", "deepnet", "--model.scheduler", "none", "--data.crop_padding", "2", "--data.rotation", "10"]
ARGS += ["--trainer.limit_train_batches", "4", "--max_epochs", "2", "--accelerator", "cpu", "--logger", "wandb"]


def slurm_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, job_id: str) -> Path:
    """One SLURM task of job ``job_id``; ``scontrol`` is a stub on PATH appending its arguments to the returned file."""
    for name in [name for name in os.environ if name.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    variables = {"SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}
    variables |= {"SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1", "SLURM_NODELIST": "localhost"}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    bin_dir, record = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "scontrol"
    stub.write_text(f'#!/bin/sh\necho "$@" >> "{record}"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.mark.slow
def test_requeue_signal_checkpoints_requeues_and_the_requeued_job_finishes_the_run_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    args = [*TINY, *ARGS, "--data.root", str(data_root)]
    record = slurm_environment(monkeypatch, tmp_path, "4243")
    result = run_train(args, cwd=tmp_path)  # the uninterrupted run, job 4243
    assert result.returncode == 0, result.stderr[-3000:]
    straight = tmp_path / "runs" / "slurm-4243"
    assert json.loads((straight / "summary.json").read_text())["global_step"] == 8
    assert not record.exists()  # nothing requeued

    record = slurm_environment(monkeypatch, tmp_path, "4242")
    # SIGUSR1 (the requeue signal, #SBATCH --signal=SIGUSR1@90) after step 3, in the first epoch. The callback is on
    # the command line of both starts: the resumed run starts after step 3 and never sends it again.
    usr1 = json.dumps([{"class_path": "test_resume.SignalAtStep", "init_args": {"step": 3, "signum": 10}}])
    command = [*args, "--trainer.callbacks", usr1]
    assert int(signal.SIGUSR1) == 10
    first = run_train(command, cwd=tmp_path)
    assert first.returncode == 128 + signal.SIGUSR1, first.stderr[-3000:]
    assert "Traceback" not in first.stderr
    run = tmp_path / "runs" / "slurm-4242"
    assert record.read_text() == "requeue 4242\n"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3
    assert sorted(p.name for p in run.rglob("*.ckpt")) == ["last.ckpt"]  # no Lightning hpc_ckpt_N.ckpt
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] and summary["signal"] == "SIGUSR1"

    second = run_train(command, cwd=tmp_path)  # the requeued job: the same command line, the same job id
    assert second.returncode == 0, second.stderr[-3000:]
    assert record.read_text() == "requeue 4242\n"  # not requeued again
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["slurm-4242", "slurm-4243"]
    assert_same_training(run, straight)
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["wandb_run_id"] == last["wandb_run_id"]  # the same W&B run
    assert json.loads((run / "summary.json").read_text())["test_acc"] is not None


@pytest.mark.parametrize(
    ("environment", "argv", "expected"),
    [
        ({}, ["--model", "cnn"], ["--model", "cnn"]),  # not under SLURM: unchanged
        ({"SLURM_JOB_NAME": "interactive"}, [], []),  # an interactive allocation is not a batch job
        ({}, ["--resume", "runs/x"], ["--resume", "runs/x"]),  # the user's resume stands
        ({"SLURM_JOB_ID": "17"}, ["--trainer.default_root_dir=out"], ["--trainer.default_root_dir=out"]),
    ],
)
def test_slurm_job_args_leave_other_starts_alone(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], argv: list[str], expected: list[str]
) -> None:
    for name in [name for name in os.environ if name.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    if environment:
        for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "5", **environment}.items():
            monkeypatch.setenv(name, value)
    if environment.get("SLURM_JOB_ID") == "17":
        expected = [*expected, "--run_dir", str(Path("out") / "slurm-17")]
    assert rundir.slurm_job_args(argv) == expected


def test_sbatch_script_starts_one_srun_task_per_gpu_that_trains_into_the_job_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    script = REPO / "scripts" / "slurm" / "train.sbatch"
    directives = [line.split(None, 1)[1] for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert {"--signal=SIGUSR1@90", "--requeue", "--ntasks-per-node=4", "--gres=gpu:4"} <= set(directives)
    assert not any("bash" in line or "interactive" in line for line in directives if "job-name" in line)
    slurm_environment(monkeypatch, tmp_path, "99")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "1")
    monkeypatch.setenv("SLURM_SUBMIT_DIR", str(tmp_path))
    # srun stands in as a stub that records its command line and runs it as the one task.
    stub = tmp_path / "bin" / "srun"
    stub.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path / "srun.log"}"\nexec "$@"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    path = [str(tmp_path / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    (tmp_path / "scripts").symlink_to(REPO / "scripts")  # the script runs from the submit directory, the repository
    # No GPU here: the arguments after the script's own override its --accelerator gpu and --strategy ddp.
    args = [*TINY, "--data.root", str(data_root), "--accelerator", "cpu", "--strategy", "auto"]
    result = processes.run(["bash", script, *args], RUN_TIMEOUT, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    srun = (tmp_path / "srun.log").read_text().split()
    assert srun[:2] == ["python", "scripts/train.py"]
    assert srun[srun.index("--devices") + 1] == "1" and srun[srun.index("--num_nodes") + 1] == "1"
    summary = json.loads((tmp_path / "runs" / "slurm-99" / "summary.json").read_text())
    assert summary["devices"] == 1 and summary["test_acc"] is not None


def _srun(args: list[str], cwd: Path, job_id: str, tasks: int = 2) -> list[subprocess.CompletedProcess[str]]:
    """What ``srun`` does for a job of ``tasks`` nodes × 1 task: one process each, with its SLURM variables."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    started = []
    for rank in range(tasks):
        env = {**os.environ, "SLURM_JOB_ID": job_id, "SLURM_NTASKS": str(tasks), "SLURM_NNODES": str(tasks)}
        env |= {"SLURM_PROCID": str(rank), "SLURM_NODEID": str(rank), "SLURM_LOCALID": "0", "MASTER_PORT": port}
        env |= {"SLURM_NTASKS_PER_NODE": "1", "SLURM_NODELIST": "127.0.0.1", "PYTHONWARNINGS": "ignore"}
        env |= {"OMP_NUM_THREADS": "1"}  # the "nodes" share this machine's cores: one thread's worth each
        command = [sys.executable, str(REPO / "scripts" / "train.py"), *args]
        started.append(processes.start(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = [task.communicate(timeout=RUN_TIMEOUT) for task in started]
    return [
        subprocess.CompletedProcess(p.args, p.returncode, out.decode(), err.decode())
        for p, (out, err) in zip(started, outputs, strict=True)
    ]


@pytest.mark.slow
def test_two_node_slurm_job_requeued_on_sigusr1_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    # 2 nodes × 1 task (DDP over gloo); SLURM signals every task. The ranks compare every 10 steps: the signal
    # after step 3 stops both at step 10, in the third epoch of 4 steps.
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    record = slurm_environment(monkeypatch, tmp_path, "0")
    args = [*TINY, "--data.root", str(data_root), "--model", "deepnet", "--model.scheduler", "none"]
    args += ["--trainer.limit_train_batches", "4", "--max_epochs", "3", "--accelerator", "cpu", "--devices", "1"]
    args += ["--num_nodes", "2", "--strategy", "ddp"]
    for task in _srun(args, tmp_path, "501"):
        assert task.returncode == 0, task.stderr[-3000:]
    usr1 = json.dumps([{"class_path": "test_resume.SignalAtStep", "init_args": {"step": 3, "signum": 10}}])
    command = [*args, "--trainer.callbacks", usr1]
    for task in _srun(command, tmp_path, "502"):
        assert task.returncode == 128 + signal.SIGUSR1, task.stderr[-3000:]
    assert record.read_text() == "requeue 502\n"  # once, by rank 0
    run = tmp_path / "runs" / "slurm-502"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    for task in _srun(command, tmp_path, "502"):  # the requeued job
        assert task.returncode == 0, task.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["slurm-501", "slurm-502"]
    assert_same_training(run, tmp_path / "runs" / "slurm-501")
    assert record.read_text() == "requeue 502\n"
