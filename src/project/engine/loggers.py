"""Experiment loggers: a CSV metrics log always, plus TensorBoard or Weights & Biases on request.

With ``--logger wandb`` the W&B run gets the run's resolved ``config.yaml`` as its config (nested, as written)
and as an artifact, checkpoints as model artifacts when online, and, with ``--wandb.watch``, gradient and
parameter histograms. ``wandb`` stays an optional dependency: it is imported only when W&B is asked for.
"""

from __future__ import annotations

import importlib.metadata
import netrc
import os
from argparse import Namespace
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from project.engine import compat, configs, rundir
from project.engine.errors import UserError

#: Checkpoint key holding the W&B run id, so that ``--resume`` continues the same W&B run.
WANDB_RUN_ID_KEY = "wandb_run_id"

LoggerName = Literal["csv", "tensorboard", "wandb"]


@dataclass
class WandbOptions:
    """Weights & Biases settings; each also reads its ``WANDB_*`` environment variable when not given.

    Args:
        project: W&B project (``WANDB_PROJECT``); default: your project's name, from pyproject.toml.
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
    except ImportError:
        raise UserError("--logger wandb needs the wandb package: pip install -e '.[wandb]'") from None
    mode = wandb_mode(options.mode)
    env_tags = [tag for tag in os.environ.get("WANDB_TAGS", "").split(",") if tag]
    return ConfigWandbLogger(
        config_file=run_dir / rundir.CONFIG,
        name=options.name or os.environ.get("WANDB_NAME") or run_dir.name,
        save_dir=str(run_dir),
        project=options.project or os.environ.get("WANDB_PROJECT") or project_name(),
        entity=options.entity or os.environ.get("WANDB_ENTITY"),
        group=options.group or os.environ.get("WANDB_RUN_GROUP"),
        tags=options.tags or env_tags or None,
        id=wandb_id,
        resume="allow" if wandb_id else None,
        offline=mode == "offline",
        mode=mode,
        log_model=options.log_model and mode == "online",
    )


def project_name() -> str:
    """Your project's name: the distribution's in pyproject.toml (what copier asked), whose import package is
    ``project``; ``project`` when it is not installed."""
    names = importlib.metadata.packages_distributions().get("project") or ["project"]
    return names[0]


class ConfigWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` whose run config is the CLI's resolved ``config.yaml``, nested as written.

    Lightning hands every logger the model's and the data module's hyperparameters as one flat dict. The
    config file holds the same values under the keys users type (``model.init_args.lr``) plus the trainer and
    the rest; logging both would show every value twice in the W&B UI. So when ``config_file`` exists the flat
    dict is dropped and the file is logged instead, as the config and as a ``config`` artifact; without it (the
    logger used outside the CLI) Lightning's behaviour is kept.
    """

    def __init__(self, config_file: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        compat.without_unset_wandb_options(self)
        self.config_file = Path(config_file)
        self._config_logged = False

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        if not self.config_file.is_file():
            super().log_hyperparams(params)
            return
        if self._config_logged:  # fit and test both call this; the config is the same
            return
        import wandb

        config = configs.load_config(self.config_file) or {}
        self.experiment.config.update(config, allow_val_change=True)
        artifact = wandb.Artifact(f"config-{self.experiment.id}", type="config")
        artifact.add_file(str(self.config_file), name=rundir.CONFIG)
        self.experiment.log_artifact(artifact)
        self._config_logged = True


class WandbRunHooks(Callback):
    """What the W&B logger needs from the training loop.

    * ``watch``: gradient/parameter histograms (``wandb.watch``), registered at fit start because the network
      is built from the data module's shapes in ``setup``, after the logger exists.
    * the run id in every checkpoint, so ``--resume`` continues the same W&B run instead of starting a new one.
    """

    def __init__(self, watch: str = "off") -> None:
        self.watch = watch

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = _wandb_logger_of(trainer)
        if logger is not None and self.watch != "off" and trainer.is_global_zero:
            logger.watch(pl_module, log=self.watch, log_freq=trainer.log_every_n_steps, log_graph=False)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        logger = _wandb_logger_of(trainer)
        if logger is not None and trainer.is_global_zero:  # only rank 0 writes the file
            checkpoint[WANDB_RUN_ID_KEY] = logger.experiment.id


def wandb_callbacks(kind: LoggerName, options: WandbOptions) -> list[Callback]:
    """The callbacks ``--logger wandb`` needs (none for the other loggers)."""
    return [WandbRunHooks(options.watch)] if kind == "wandb" else []


def _wandb_logger_of(trainer: L.Trainer) -> WandbLogger | None:
    return next((logger for logger in trainer.loggers if isinstance(logger, WandbLogger)), None)


def finish_wandb(loggers: Iterable[Logger]) -> str | None:
    """Finish the W&B run; for an offline run return the command that uploads it (``wandb sync DIR``).

    Finishing flushes the run's files and lets a later run in the same process start its own W&B run (Lightning
    would otherwise attach it to this one). Call on rank 0 only.
    """
    hint = None
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            offline = bool(getattr(run, "offline", False))
            sync_dir = run.settings.sync_dir if offline else None
            run.finish()
            if sync_dir:
                hint = f"W&B ran offline; to upload this run: wandb sync {sync_dir}"
    return hint
