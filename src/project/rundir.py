"""The run directory: every file a run writes lives under one folder, and none is overwritten silently.

runs/<model>-<data>-<YYYYmmdd-HHMMSS>/
    config.yaml          the resolved config (``--config`` it to repeat the run)
    checkpoints/         best.ckpt (by val accuracy) and last.ckpt
    metrics.csv          the metrics log (CSV logger), or the TensorBoard / W&B files
    summary.json         the headline numbers, written when the run ends
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from project.errors import UserError

SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"


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
    """``(run_dir, checkpoint)`` for ``--resume last | RUN_DIR | CHECKPOINT``."""
    if resume == "last":
        runs = [p for p in Path(runs_root).glob("*/") if (p / CHECKPOINTS / "last.ckpt").is_file()]
        if not runs:
            raise UserError(f"--resume last: no run with checkpoints/last.ckpt under {runs_root}")
        run_dir = max(runs, key=lambda p: (p / CHECKPOINTS / "last.ckpt").stat().st_mtime)
        return run_dir, run_dir / CHECKPOINTS / "last.ckpt"
    path = Path(resume)
    if path.is_dir():
        checkpoint = path / CHECKPOINTS / "last.ckpt"
        if not checkpoint.is_file():
            raise UserError(f"--resume {resume}: {checkpoint} does not exist")
        return path, checkpoint
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == CHECKPOINTS else path.parent
        return run_dir, path
    raise UserError(f"--resume {resume}: no such run directory or checkpoint file")


def write_summary(run_dir: str | os.PathLike[str], summary: dict[str, Any]) -> Path:
    path = Path(run_dir) / SUMMARY
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    os.replace(temporary, path)
    return path
