"""Everything that is there only for speed, behind one seam; ``--fast_path false`` leaves all of it out.

The entry points call :func:`trainer_options` for the ``Trainer``'s arguments and :func:`install` once the
``Trainer``, the model and the data module exist. Nothing here changes what is computed: the fast path and the
plain one train to the same weights (``tests/test_fastpath.py``), up to the rounding of a fused kernel.

* the precision plugin folds gradient clipping into the fused optimizer step (:mod:`.clipping`), and the model's
  optimizer is the fused one wherever that is allowed (:func:`fused_optimizer`);
* a profiler that does nothing for free (:mod:`.profiler`), instead of Lightning's ``PassThroughProfiler``;
* a progress bar that redraws a few times a second (:mod:`.progress`), and the step loss logged only on the steps
  the loggers write (:class:`StepLossLogger`);
* batches normalized straight into the network's memory layout (channels-last for conv nets on a GPU);
* without a GPU, the plain CUDA check instead of the NVML one (:func:`plain_cuda_check_without_gpu`).

What each is worth is measured in ``benchmarks/README.md``.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar

from project import compat
from project.fastpath.clipping import add_fused_clipping, fused_optimizer
from project.fastpath.profiler import NoProfiler
from project.fastpath.progress import ThrottledRichProgressBar

__all__ = ["StepLossLogger", "fused_optimizer", "install", "plain_cuda_check_without_gpu", "trainer_options"]


class StepLossLogger(Callback):
    """Logs the training step's loss as ``train/loss_step``: on the steps the loggers write (every
    ``log_every_n_steps``) with the fast path, at every step without it (the loggers write the same values)."""

    def __init__(self, every_step: bool = False) -> None:
        self.every_step = every_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        if self.every_step or compat.loggers_write_this_step(trainer):
            pl_module.log("train/loss_step", loss, on_step=True, on_epoch=False)


def trainer_options(enabled: bool = True, progress_bar: bool = True) -> dict[str, Any]:
    """The ``Trainer`` arguments of the fast (or the plain) path: its profiler and callbacks."""
    callbacks: list[Callback] = [StepLossLogger(every_step=not enabled)]
    if progress_bar:
        callbacks.append(ThrottledRichProgressBar() if enabled else RichProgressBar())
    if enabled:
        plain_cuda_check_without_gpu()
    return {"profiler": NoProfiler() if enabled else None, "callbacks": callbacks}


def install(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule | None) -> None:
    """The fast path's changes to a built ``Trainer`` and data module: fused clipping, the batches' memory layout."""
    add_fused_clipping(trainer.precision_plugin)
    uses_channels_last = getattr(model, "uses_channels_last", None)
    if datamodule is not None and uses_channels_last is not None and uses_channels_last(trainer.strategy.root_device):
        # Normalizing a uint8 batch writes it anyway: straight into the layout the network computes in.
        datamodule.memory_format = torch.channels_last


def plain_cuda_check_without_gpu() -> None:
    """Without a GPU, undo Lightning's ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (set when it is imported).

    That setting (which keeps forked processes able to use CUDA) makes every ``torch.cuda.is_available()`` load the
    NVML library, and every optimizer step asks: on a machine without a GPU, a failing dlopen per step. With no GPU
    there is nothing to protect, and the plain check gives the same answer.
    """
    if not torch.cuda.is_available():
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
