"""The run directory: every file a run writes lives under one folder, and none is overwritten silently.

runs/<model>-<data>-<YYYYmmdd-HHMMSS>/
    config.yaml          the resolved config (``--config`` it to repeat the run)
    checkpoints/         best.ckpt (by val accuracy) and last.ckpt (the end of the latest epoch)
    metrics.csv          the metrics log (CSV logger), or the TensorBoard / W&B files
    summary.json         the headline numbers, written when the run ends
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from project.engine import compat
from project.engine.errors import UserError
from project.engine.filenames import escape_names
from project.engine.trust import RestoredPathsCheck

SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
LAST = "last"  # checkpoints/last.ckpt: the latest validation (each epoch's end), or where a signal stopped the run
LAST_FILE = LAST + ModelCheckpoint.FILE_EXTENSION
CONFIG = "config.yaml"
#: Lightning's DDP launcher starts ranks 1.. as copies of the command, with rank 0's environment: this variable
#: tells them which run directory rank 0 chose, so that the ranks of one run share one directory.
RUN_DIR_ENV = "PROJECT_RUN_DIR"


def new_run_dir(root: str | os.PathLike[str], name: str) -> Path:
    """A fresh ``root/name-<timestamp>`` directory (with a suffix if two runs start in the same second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    for attempt in range(1000):
        candidate = base if attempt == 0 else base.with_name(f"{base.name}-{attempt}")
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"could not create a new run directory next to {base}")


def claim_run_dir(path: str | os.PathLike[str]) -> Path:
    """Use ``path`` as a new run's directory; refuse one that already holds files."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(
            f"run directory {path} already exists and is not empty: pass --resume {path} to continue that run, "
            "or choose another --run_dir"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_resume_checkpoint(resume: str, runs_root: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(run_dir, checkpoint)`` for ``--resume last | RUN_DIR | CHECKPOINT``.

    ``last`` is the run started (or resumed) most recently under ``runs_root``, by its ``config.yaml``; if that one
    stopped before its first checkpoint, it is an error naming it, not a quiet turn to an older run. Only the location
    is checked here; the checkpoint itself is loaded (and refused if bad) before training.
    """
    if resume == "last":
        runs = [path.parent for path in Path(runs_root).glob(f"*/{CONFIG}")]
        if not runs:
            raise UserError(f"--resume last: no run under {runs_root}")
        run_dir = max(runs, key=lambda path: (path / CONFIG).stat().st_mtime_ns)
        if not (run_dir / CHECKPOINTS / LAST_FILE).is_file():
            raise UserError(
                f"--resume last: the latest run, {run_dir}, stopped before its first checkpoint: nothing to resume; "
                "start it again, or --resume an earlier run by its directory"
            )
        return run_dir, run_dir / CHECKPOINTS / LAST_FILE
    path = Path(resume)
    if path.is_dir():
        run_dir, checkpoint = path, path / CHECKPOINTS / LAST_FILE
        if not checkpoint.is_file():
            raise UserError(
                f"--resume {resume}: {checkpoint} does not exist (the run stopped before its first checkpoint?); "
                "start a new run instead"
            )
    elif path.is_file():
        run_dir, checkpoint = run_dir_of(path), path
    else:
        raise UserError(f"--resume {resume}: no such run directory or checkpoint file")
    if not (run_dir / CONFIG).is_file():
        # The run continues as it was configured, so its config is needed; a bare checkpoint is not a run.
        raise UserError(
            f"--resume {resume}: {run_dir} is not a run directory (it has no {CONFIG}); to start a new run from "
            "these weights, load them with project.engine.checkpoint.load_model"
        )
    return run_dir, checkpoint


class NothingToTrain(Exception):
    """A resumed run that has trained all it was asked to: the command line says so and exits 0, writing nothing."""


def check_left_to_train(checkpoint: dict[str, Any], trainer: dict[str, Any], run_dir: Path) -> None:
    """Raise :class:`NothingToTrain` when ``checkpoint`` (of ``run_dir``) has trained ``trainer``'s ``max_epochs``
    (or ``max_steps``) already: resuming it would only test it again and rewrite its summary."""
    epochs, steps = compat.epochs_trained(checkpoint), int(checkpoint.get("global_step", 0))
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps") or -1
    by_epochs = max_epochs is not None and max_epochs >= 0 and epochs >= max_epochs
    by_steps = max_steps > 0 and steps >= max_steps
    if by_epochs or by_steps:
        limit = f"--max_epochs {max_epochs}" if by_epochs else f"--trainer.max_steps {max_steps}"
        raise NothingToTrain(
            f"{escape_names(str(run_dir))} has finished: {epochs} epochs, {steps} steps ({limit}); nothing left to "
            f"train. To train it further, resume with a larger {limit.split()[0]}"
        )


def describe_checkpoint(checkpoint: dict[str, Any]) -> str:
    """``3 epochs done, step 120``: where a resumed run goes on from."""
    return f"{compat.epochs_trained(checkpoint)} epochs done, step {int(checkpoint.get('global_step', 0))}"


def run_dir_of(checkpoint: str | os.PathLike[str]) -> Path:
    """The run directory a checkpoint belongs to: ``runs/<run>`` for ``runs/<run>/checkpoints/x.ckpt``, else its
    folder."""
    path = Path(checkpoint)
    return path.parent.parent if path.parent.name == CHECKPOINTS else path.parent


def checkpoint_callbacks(checkpoints: str | os.PathLike[str]) -> list[Callback]:
    """``best.ckpt`` (highest val accuracy) and ``last.ckpt`` (the end of the latest epoch) in ``checkpoints``, after
    the check that a resumed checkpoint's saved paths stay in that folder
    (:class:`~project.engine.trust.RestoredPathsCheck`: Lightning removes the previous files they name).

    Two callbacks, because Lightning's ``save_last`` rewrites ``last.ckpt`` only when the best checkpoint changes
    (since 2.6): once validation accuracy stops improving, a resume would go back to the last improvement.
    """
    best = ModelCheckpoint(
        dirpath=checkpoints,
        filename="best",
        monitor="val/acc",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    # No monitor and top-1: the newest checkpoint, always under the same name.
    last = ModelCheckpoint(dirpath=checkpoints, filename=LAST, save_top_k=1, enable_version_counter=False)
    return [RestoredPathsCheck(checkpoints), best, last]


def last_checkpoint_path(trainer: L.Trainer) -> str:
    """Where this run's ``last.ckpt`` is (or will be) written: resumes, signals and error messages use it."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath and callback.filename == LAST:
            return os.path.join(callback.dirpath, LAST_FILE)
    return os.path.join(trainer.default_root_dir, CHECKPOINTS, LAST_FILE)


def slurm_job_args(argv: list[str]) -> list[str]:
    """Under SLURM, the command line of a job that continues its own run when it is requeued.

    When Lightning's ``SLURMEnvironment`` detects the job (started by ``sbatch``/``srun``, job name not ``bash`` or
    ``interactive``), the run directory is ``--run_dir`` or ``<default_root_dir>/slurm-<SLURM_JOB_ID>`` (a requeued
    job keeps its id), the same on every node. When that directory holds ``checkpoints/last.ckpt`` (written on the
    requeue signal, see :class:`~project.engine.callbacks.signals.GracefulInterrupt`), ``--resume DIR`` is added, so the
    requeued job, started with the very same command, continues the run (and its W&B run); else the run starts
    there. An explicit ``--resume`` is left as it is.
    """
    job_id = SLURMEnvironment.job_id() if SLURMEnvironment.detect() else None
    if job_id is None or flag_value(argv, "--resume") is not None:
        return argv
    given = flag_value(argv, "--run_dir")
    root = flag_value(argv, "--trainer.default_root_dir") or "runs"
    run_dir = Path(given) if given else Path(root) / f"slurm-{job_id}"
    if (run_dir / CHECKPOINTS / LAST_FILE).is_file():
        return [*argv, "--resume", str(run_dir)]
    return argv if given else [*argv, "--run_dir", str(run_dir)]


def flag_value(argv: list[str], flag: str) -> str | None:
    """The last value of ``flag`` (``--flag VALUE`` or ``--flag=VALUE``) in ``argv``."""
    value = None
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(flag + "="):
            value = arg.partition("=")[2]
    return value


def inherited_run_dir() -> Path | None:
    """In a DDP worker launched by rank 0 (``LOCAL_RANK`` > 0), the run directory rank 0 chose; else ``None``."""
    directory = os.environ.get(RUN_DIR_ENV)
    return Path(directory) if directory and int(os.environ.get("LOCAL_RANK", "0")) > 0 else None


def share_with_workers(run_dir: Path) -> None:
    """Pass ``run_dir`` on to the DDP workers that this process launches (see :data:`RUN_DIR_ENV`)."""
    os.environ[RUN_DIR_ENV] = str(run_dir)


def continue_metrics_log(loggers: Iterable[Logger], step: int) -> None:
    """Make the CSV loggers continue the run's ``metrics.csv`` from ``step`` (0 for a new run) instead of deleting it
    (:func:`~project.engine.compat.continue_csv_log`)."""
    if rank_zero_only.rank != 0:
        return  # only rank 0 writes logs; the others must not touch the file
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            compat.continue_csv_log(logger, step)


def write_summary(run_dir: str | os.PathLike[str], summary: dict[str, Any]) -> Path:
    path = Path(run_dir) / SUMMARY
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(escape_names(summary), indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path
