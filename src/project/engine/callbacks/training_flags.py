"""The training flags of the command line, each one of Lightning's own callbacks (or the engine's).

``--ema_decay`` and ``--swa_lrs`` (``WeightAveraging``: validation, checkpoints, the test and exports use the
averaged weights; :mod:`project.callbacks.averaging`), ``--find_lr`` (``LearningRateFinder``: the suggestion
printed, its plot saved in the run directory, applied with ``apply``) and ``--find_batch_size`` (``BatchSizeFinder``,
GPU only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import BatchSizeFinder, Callback, LearningRateFinder
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from project.engine.callbacks.frozen_features import FrozenFeatures
from project.engine.errors import UserError
from project.engine.filenames import escape_name
from project.engine.options import import_class

LR_FIND_PLOT = "lr_find.png"
#: The averaging callbacks are the recipe's (``project/callbacks/averaging.py``, which users may change): named by
#: class path, as LightningCLI names every class, so the engine imports nothing of the recipe side.
EMA_CLASS = "project.callbacks.averaging.EMA"
SWA_CLASS = "project.callbacks.averaging.SWA"


def add_arguments(parser: Any) -> None:
    """The training flags, on LightningCLI's parser."""
    parser.add_argument(
        "--ema_decay", type=float | None, default=None, help="Keep an EMA of the weights (e.g. 0.999) and use it."
    )
    parser.add_argument(
        "--swa_lrs", type=float | None, default=None, help="Stochastic weight averaging, annealing to this rate."
    )
    parser.add_argument(
        "--swa_epoch_start", type=int | float, default=0.8, help="SWA's first epoch (from 1) or fraction of max_epochs."
    )
    parser.add_argument("--swa_annealing_epochs", type=int, default=1, help="Epochs SWA anneals the rate over.")
    parser.add_argument(
        "--find_lr",
        type=Literal["no", "report", "apply"],
        default="no",
        nargs="?",
        const="report",  # the bare flag
        help="Run Lightning's learning-rate finder first: report (the flag alone) its suggestion and plot, or apply.",
    )
    parser.add_argument("--find_lr_steps", type=int, default=100, help="Steps of the learning-rate finder.")
    parser.add_argument(
        "--find_batch_size", type=bool, default=False, help="Find the largest batch size that fits (GPU only)."
    )
    parser.add_argument(
        "--frozen_features",
        type=Literal["auto", "true", "false"],
        default="auto",
        help="Compute a frozen backbone's features once and train the head on them (auto: where the model and the "
        "in-memory data allow; the training augmentation then does not apply).",
    )


def flag_callbacks(config: Any, run_dir: Path, resumed: bool, on_gpu: bool) -> list[Callback]:
    """The callbacks the training flags ask for; a one-line :class:`UserError` for impossible ones."""
    callbacks: list[Callback] = []
    decay = config.get("ema_decay")
    if decay is not None:
        if not 0 < decay < 1:
            raise UserError(f"--ema_decay must be in (0, 1), got {decay}")
        callbacks.append(import_class(EMA_CLASS, Callback, "--ema_decay's callback")(decay=decay))
    if config.get("swa_lrs") is not None:
        if decay is not None:
            raise UserError("--ema_decay and --swa_lrs both average the weights: choose one")
        swa = import_class(SWA_CLASS, Callback, "--swa_lrs's callback")
        callbacks.append(swa(config["swa_lrs"], config["swa_epoch_start"], config["swa_annealing_epochs"]))
    if config.get("find_lr", "no") != "no" and not resumed:  # a resumed run keeps the rate it was trained with
        callbacks.append(ReportingLRFinder(run_dir, config["find_lr"] == "apply", config.get("find_lr_steps", 100)))
    if config.get("frozen_features", "auto") != "false":
        callbacks.append(FrozenFeatures(config.get("frozen_features", "auto")))
    if config.get("find_batch_size"):
        if not on_gpu:
            raise UserError("--find_batch_size needs a GPU: on CPU the largest batch that fits is not the limit")
        if not resumed:  # a resumed run trains on with the size found (restore_found_batch_size)
            callbacks.append(BatchSizeFinder(mode="binsearch"))
    return callbacks


def restore_found_batch_size(datamodule: L.LightningDataModule, checkpoint: dict[str, Any]) -> None:
    """Give a resumed ``--find_batch_size`` run the batch size its finder chose, which Lightning saved with the data
    module's hyperparameters: the checkpoint's position in the epoch counts batches of that size."""
    found = (checkpoint.get("datamodule_hyper_parameters") or {}).get("batch_size")
    if found and hasattr(datamodule, "batch_size"):
        datamodule.batch_size = found
        datamodule.hparams["batch_size"] = found


class ReportingLRFinder(LearningRateFinder):
    """Lightning's learning-rate finder, which prints its suggestion and saves its plot in the run directory."""

    def __init__(self, run_dir: Path, apply: bool, steps: int) -> None:
        super().__init__(num_training_steps=steps, update_attr=apply, attr_name="lr")
        self.run_dir = Path(run_dir)
        self.apply = apply

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self.report(pl_module)

    @rank_zero_only
    def report(self, pl_module: L.LightningModule) -> None:
        found = self.optimal_lr
        if found is None:
            return
        suggestion = found.suggestion()
        figure = found.plot(suggest=True)
        figure.savefig(self.run_dir / LR_FIND_PLOT, dpi=80)
        import matplotlib.pyplot as plt

        plt.close(figure)
        what = "applied" if self.apply and suggestion is not None else "not applied (--find_lr apply applies it)"
        print(
            f"learning-rate finder: suggests lr {suggestion}, {what}; plot: {escape_name(self.run_dir / LR_FIND_PLOT)}"
        )
