"""One run: fit, test the best checkpoint, write ``summary.json``. The command line (:mod:`~project.engine.cli`)
builds the model, the data module and the ``Trainer``; this is what it does with them."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from project.engine import rundir
from project.engine.callbacks.signals import TrainingInterrupted
from project.engine.filenames import escape_names
from project.engine.loggers import finish_wandb


def train(cli: LightningCLI) -> dict[str, Any]:
    """Fit, test the best checkpoint, write and return the summary.

    A run stopped by SIGTERM or SIGINT (see :class:`~project.engine.callbacks.signals.GracefulInterrupt`) is not tested;
    its summary says ``"interrupted": true`` and names the signal, and ``--resume`` continues it.
    """
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    started = time.perf_counter()
    stopped_by: int | None = None
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cli.ckpt_path, weights_only=True)
    except TrainingInterrupted as interrupt:
        stopped_by = interrupt.signum
    except SIGTERMException:  # Lightning's own, for a SIGTERM before training started: no new checkpoint
        stopped_by = signal.SIGTERM
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    last = rundir.last_checkpoint_path(trainer)
    best_score = _float(checkpoint.best_model_score) if checkpoint is not None else None
    test_metrics: dict[str, float] = {}
    if not cli.config["no_test"] and not trainer.interrupted and stopped_by is None:
        results = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        test_metrics = {key: float(value) for key, value in (results[0] if results else {}).items()}
    summary = {
        "model": cli.config["model"]["class_path"],
        "data": cli.config["data"]["class_path"],
        "run_dir": str(cli.run_dir),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "best_val_acc": best_score,
        "test_acc": test_metrics.get("test/acc"),
        "test_loss": test_metrics.get("test/loss"),
        "checkpoints": {"best": best or None, "last": last if os.path.isfile(last) else None},
        "seed": cli.config["seed_everything"],
        "precision": str(trainer.precision),
        "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        "devices": trainer.num_devices,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "interrupted": trainer.interrupted or stopped_by is not None,
        "signal": signal.Signals(stopped_by).name if stopped_by else None,
    }
    if trainer.is_global_zero:
        rundir.write_summary(cli.run_dir, summary)
        _print_summary(summary)
        sync_hint = finish_wandb(trainer.loggers)  # ends the W&B run; offline runs say how to upload
        if sync_hint:
            print(sync_hint)
    return summary


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _print_summary(summary: dict[str, Any]) -> None:
    run_dir = escape_names(summary["run_dir"])
    if summary["interrupted"]:  # what the user wants to know now: what is kept, and how to go on
        how = f"by {summary['signal']}" if summary["signal"] else "by the user"
        where = f"at epoch {summary['epochs']}, step {summary['global_step']}"
        if summary["checkpoints"]["last"]:
            next_step = f"continue it with: python scripts/train.py --resume {run_dir}"
        else:
            next_step = "it stopped before its first checkpoint: nothing is saved to continue from"
        print(f"\nrun directory: {run_dir}\nstopped {how} {where}; {next_step}")
        return
    loss = "n/a" if summary["test_loss"] is None else f"{summary['test_loss']:.4f}"
    accuracies = f"best val acc {_percent(summary['best_val_acc'])} | test acc {_percent(summary['test_acc'])}"
    print(
        f"\nrun directory: {run_dir}\n{accuracies} | test loss {loss}"
        f" | {summary['epochs']} epochs in {summary['wall_time_s']:.1f}s\n"
        f"best checkpoint: {escape_names(summary['checkpoints']['best'])}"
    )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"
