"""Experiment loggers: a CSV metrics log always, plus TensorBoard or Weights & Biases on request."""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from project.errors import UserError

LoggerName = Literal["csv", "tensorboard", "wandb"]


@dataclass
class WandbOptions:
    """Weights & Biases settings; each also reads its ``WANDB_*`` environment variable when not given.

    Args:
        project: W&B project (``WANDB_PROJECT``).
        entity: Team or user (``WANDB_ENTITY``).
        name: Run name (``WANDB_NAME``); defaults to the run directory's name.
        tags: Run tags (``WANDB_TAGS``, comma-separated).
        group: Run group (``WANDB_RUN_GROUP``).
        watch: Log ``gradients``, ``parameters`` or ``all`` histograms (``off`` by default: it costs time).
        log_model: Upload checkpoints as model artifacts when online.
        mode: ``auto`` (online when an API key is configured, else offline), ``online``, ``offline``,
            ``disabled``.
    """

    project: str | None = None
    entity: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    group: str | None = None
    watch: Literal["off", "gradients", "parameters", "all"] = "off"
    log_model: bool = True
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"


def make_loggers(
    kind: LoggerName, run_dir: Path, wandb: WandbOptions | None = None, wandb_id: str | None = None
) -> list[Logger]:
    """The CSV logger writing ``run_dir/metrics.csv``, plus the one ``kind`` names."""
    loggers: list[Logger] = [CSVLogger(save_dir=run_dir, name="", version="")]
    if kind == "tensorboard":
        try:
            loggers.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard", version="", default_hp_metric=False))
        except ModuleNotFoundError:
            raise UserError("--logger tensorboard needs TensorBoard: pip install tensorboard") from None
    elif kind == "wandb":
        loggers.append(_wandb_logger(run_dir, wandb or WandbOptions(), wandb_id))
    return loggers


def wandb_mode(requested: str) -> str:
    """``online`` only when asked for or when an API key is configured: W&B must never wait on the network."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _has_wandb_key() else "offline"


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _wandb_logger(run_dir: Path, options: WandbOptions, wandb_id: str | None) -> Logger:
    try:
        import wandb  # noqa: F401  (WandbLogger imports it lazily; fail here with the fix instead)
        from lightning.pytorch.loggers import WandbLogger
    except ModuleNotFoundError:
        raise UserError("--logger wandb needs the wandb package: pip install -e '.[wandb]'") from None
    mode = wandb_mode(options.mode)
    env_tags = [tag for tag in os.environ.get("WANDB_TAGS", "").split(",") if tag]
    return WandbLogger(
        name=options.name or os.environ.get("WANDB_NAME") or run_dir.name,
        save_dir=str(run_dir),
        project=options.project or os.environ.get("WANDB_PROJECT") or "project",
        entity=options.entity or os.environ.get("WANDB_ENTITY"),
        group=options.group or os.environ.get("WANDB_RUN_GROUP"),
        tags=options.tags or env_tags or None,
        id=wandb_id,
        resume="allow" if wandb_id else None,
        offline=mode == "offline",
        mode=mode,
        log_model=options.log_model and mode == "online",
    )
