"""Crashes: SIGTERM/SIGINT stop cleanly with a checkpoint, kill -9 never tears one, a diverged loss stops the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import processes
import pytest
import torch
from conftest import RUN_TIMEOUT, TINY, TRAIN_SCRIPT, quiet_trainer, run_train
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from project.datamodules import MNISTDataModule
from project.engine.callbacks.atomic_io import AtomicCheckpointIO
from project.engine.callbacks.nonfinite import NonFiniteLossCheck, NonFiniteLossError
from project.engine.cli import main
from project.models import MLP

# A run that would go on for a long time: the tests stop it.
ENDLESS = [*TINY, "--trainer.limit_train_batches", "40", "--trainer.max_epochs", "1000", "--data.batch_size", "8"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning", "COLUMNS": "200"}
    command = [sys.executable, str(TRAIN_SCRIPT), *args]
    return processes.start(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(pattern: str, cwd: Path, process: subprocess.Popen[str], timeout: float = RUN_TIMEOUT) -> Path:
    """The first file matching ``pattern``, as soon as it appears; fails as soon as the process exits instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [path for path in cwd.glob(pattern) if not path.name.startswith(".")]
        if found:
            return found[0]
        if process.poll() is not None:
            pytest.fail(f"training exited with {process.returncode} early:\n{process.stderr.read()[-3000:]}")
        time.sleep(0.02)
    processes.end(process)
    pytest.fail(f"no {pattern} after {timeout}s")


def _real_checkpoints(run: Path) -> list[Path]:
    return sorted(path for path in (run / "checkpoints").glob("*.ckpt") if not path.name.startswith(".tmp-"))


# ---------------------------------------------------------------------------------------------- SIGTERM, SIGINT
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_writes_a_checkpoint_exits_128_plus_signal_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path, signum: int, code: int
) -> None:
    process = _start([*ENDLESS, "--data.root", str(data_root)], cwd=tmp_path)
    last = _wait_for("runs/*/checkpoints/last.ckpt", tmp_path, process)  # written after epoch 0 (40 steps)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=RUN_TIMEOUT)
    assert process.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr
    run = last.parent.parent
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signal"] == signal.Signals(signum).name
    assert summary["test_acc"] is None  # an interrupted run is not tested
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] > 40  # written on the signal, after the checkpoint of epoch 0
    assert summary["global_step"] == checkpoint["global_step"]
    assert [path.name for path in _real_checkpoints(run)] == ["best.ckpt", "last.ckpt"]

    monkeypatch.chdir(tmp_path)
    assert main(["--resume", "last", "--trainer.max_epochs", "2"]) == 0
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["interrupted"] is False and resumed["global_step"] == 80 and resumed["test_acc"] is not None


class SignalInLastValidation(Callback):
    """Sends SIGINT to this process while the last epoch is being validated, after the last training step."""

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == trainer.max_epochs - 1:
            os.kill(os.getpid(), signal.SIGINT)


def test_signal_after_the_last_step_still_stops_without_testing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    callbacks = json.dumps([{"class_path": "test_crash.SignalInLastValidation"}])
    assert main([*TINY, "--data.root", str(data_root), "--run_dir", "run", "--trainer.callbacks", callbacks]) == 130
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["signal"] == "SIGINT" and summary["test_acc"] is None and summary["global_step"] == 3
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


# ---------------------------------------------------------------------------------------------- kill -9
RESUMED: dict[str, object] = {}


class RecordResume(Callback):
    """Records in ``RESUMED`` the step and weights a run starts training from, and how many steps it then trains."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weights = {key: value.detach().clone() for key, value in pl_module.state_dict().items()}
        RESUMED.update(start_step=trainer.global_step, weights=weights, steps=0)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        RESUMED["steps"] += 1


def test_kill_9_during_training_leaves_only_loadable_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    # Validation, and so a checkpoint write, every 5 steps: the kill is likely to land near one.
    process = _start([*ENDLESS, "--data.root", str(data_root), "--trainer.val_check_interval", "5"], cwd=tmp_path)
    last = _wait_for("runs/*/checkpoints/last.ckpt", tmp_path, process)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=RUN_TIMEOUT)
    assert process.returncode == -signal.SIGKILL
    run = last.parent.parent
    assert {path.name for path in _real_checkpoints(run)} == {"best.ckpt", "last.ckpt"}
    for path in _real_checkpoints(run):
        assert "state_dict" in torch.load(path, weights_only=True)
    # last.ckpt is rewritten at every validation: resume from wherever it is and finish that epoch.
    killed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    epoch, step = killed["epoch"], killed["global_step"]
    monkeypatch.chdir(tmp_path)
    resume = ["--resume", "last", "--trainer.max_epochs", str(epoch + 1), "--trainer.val_check_interval", "1.0"]
    RESUMED.clear()
    callbacks = json.dumps([{"class_path": "test_crash.RecordResume"}])
    assert main([*resume, "--trainer.callbacks", callbacks]) == 0
    # It continued the killed run: from that checkpoint's step and weights, only the steps left to the epoch's end.
    assert RESUMED["start_step"] == step and RESUMED["steps"] == (epoch + 1) * 40 - step
    assert RESUMED["weights"].keys() == killed["state_dict"].keys()
    assert all(torch.equal(RESUMED["weights"][key], value) for key, value in killed["state_dict"].items())
    # And finished it: the whole epoch trained, tested, finite weights in its last checkpoint.
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is False and summary["signal"] is None
    assert summary["epochs"] == epoch + 1 and summary["global_step"] == (epoch + 1) * 40
    assert summary["test_acc"] is not None and 0 <= summary["test_acc"] <= 1
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == (epoch + 1) * 40
    assert all(tensor.isfinite().all() for tensor in final["state_dict"].values())


@pytest.mark.parametrize("death", [OSError("No space left on device"), KeyboardInterrupt()])
def test_a_write_that_fails_half_way_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, death: BaseException
) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    before = path.read_bytes()

    def dies_half_way(obj: object, file: object, *args: object, **kwargs: object) -> None:
        file.write(before[: len(before) // 2])  # part of the new file reaches the disk, then the write fails
        raise death

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(type(death)):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.ckpt"]  # the partial temporary file is gone
    monkeypatch.undo()
    io.save_checkpoint({"step": torch.tensor(3)}, path)
    assert int(io.load_checkpoint(path)["step"]) == 3 and os.listdir(tmp_path) == ["last.ckpt"]


def test_kill_9_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, path)
    before = path.read_bytes()
    # A process that dies by SIGKILL with half of the new checkpoint written: no cleanup code can run.
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from project.engine.callbacks.atomic_io import AtomicCheckpointIO

        def dies_half_way(obj, file, *args, **kwargs):
            file.write(b"PK" * 1000)
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = dies_half_way
        AtomicCheckpointIO().save_checkpoint({{"step": torch.tensor(2)}}, {str(path)!r})
        """
    )
    result = processes.run([sys.executable, "-c", script], RUN_TIMEOUT)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert path.read_bytes() == before
    assert int(torch.load(path, weights_only=True)["step"]) == 1
    leftovers = [name for name in os.listdir(tmp_path) if name != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")  # hidden, and never read as a checkpoint


# ---------------------------------------------------------------------------------------------- non-finite loss
class NaNAtStep(MLP):
    """An MLP whose training loss is NaN from step ``nan_at`` on."""

    def __init__(self, nan_at: int = 5, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.nan_at = nan_at

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step >= self.nan_at else loss


@pytest.mark.parametrize(
    ("every_n_steps", "stopped_at"),
    [(1, 6), (4, 8), (100, 8)],  # found at once; at the check after step 7; before the validation of epoch 0
)
def test_non_finite_loss_is_found_at_the_next_check_and_named_by_its_step(
    tmp_path: Path, data_root: Path, every_n_steps: int, stopped_at: int
) -> None:
    trainer = quiet_trainer(
        max_epochs=2,
        limit_train_batches=8,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        callbacks=[NonFiniteLossCheck(every_n_steps), ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        enable_checkpointing=True,
    )
    datamodule = MNISTDataModule(root=str(data_root), batch_size=16, val_size=0.1)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 5 \(epoch 0, batch 5\)"):
        trainer.fit(NaNAtStep(**datamodule.model_args(), nan_at=5), datamodule=datamodule)
    assert trainer.global_step == stopped_at
    assert not (tmp_path / "ckpt").exists()  # the validation-end checkpoint was never written


def test_diverged_run_is_one_line_exit_1_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    (tmp_path / "diverging.py").write_text("from test_crash import NaNAtStep\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(Path(__file__).parent)]))
    args = [*TINY, "--data.root", str(data_root), "--max_epochs", "3", "--run_dir", "run"]
    result = run_train([*args, "--model", "diverging.NaNAtStep", "--model.nan_at", "4"], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert len(errors) == 1 and "at step 4 (epoch 1, batch 1)" in errors[0], result.stderr[-3000:]
    assert f"the last good checkpoint is {last}" in errors[0]
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 3  # the end of epoch 0: nothing after the divergence was saved
    assert all(tensor.isfinite().all() for tensor in checkpoint["state_dict"].values())
