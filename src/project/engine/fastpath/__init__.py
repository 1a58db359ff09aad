"""Everything that is there only for speed, behind one seam; ``--fast_path false`` leaves all of it out.

The entry points call :func:`trainer_options` for the ``Trainer``'s arguments and :func:`install` once the
``Trainer``, the model and the data module exist. Nothing here changes what is computed: the fast path and the
plain one train to the same weights (``tests/test_fastpath.py``), up to the rounding of a fused kernel.

* the precision plugin folds gradient clipping into the fused optimizer step (:mod:`.clipping`), and the model's
  optimizer is switched to the fused kernel wherever that is allowed (:class:`FusedOptimizers`);
* the LightningModule's class gets :class:`~project.engine.compat.FastHookBookkeeping` in front (Lightning records the
  running hook dozens of times per step);
* a profiler that does nothing for free (:mod:`.profiler`), instead of Lightning's ``PassThroughProfiler``;
* a progress bar that redraws a few times a second (:mod:`.progress`), and the step loss logged only on the steps
  the loggers write (:class:`StepLossLogger`);
* the network and its batches in channels-last for conv nets on a GPU (or as the model's ``channels_last`` says),
  batches normalized straight into that layout;
* without a GPU, the plain CUDA check instead of the NVML one (:func:`plain_cuda_check_without_gpu`).

What each is worth is measured in ``benchmarks/README.md``.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar

from project.engine import compat
from project.engine.fastpath.clipping import add_fused_clipping, fused_optimizer
from project.engine.fastpath.profiler import NoProfiler
from project.engine.fastpath.progress import ThrottledRichProgressBar

__all__ = [
    "FusedOptimizers",
    "StepLossLogger",
    "install",
    "plain_cuda_check_without_gpu",
    "trainer_options",
    "uses_channels_last",
]


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


class FusedOptimizers(Callback):
    """Switches the model's optimizers to PyTorch's fused kernels where this run allows it
    (:func:`~project.engine.fastpath.clipping.fused_optimizer`), before their first step."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if fused_optimizer(trainer, params):
                compat.use_fused_kernel(optimizer)


def trainer_options(enabled: bool = True, progress_bar: bool = True) -> dict[str, Any]:
    """The ``Trainer`` arguments of the fast (or the plain) path: its profiler and callbacks."""
    callbacks: list[Callback] = [StepLossLogger(every_step=not enabled)]
    if progress_bar:
        callbacks.append(ThrottledRichProgressBar() if enabled else RichProgressBar())
    if enabled:
        plain_cuda_check_without_gpu()
    return {"profiler": NoProfiler() if enabled else None, "callbacks": callbacks}


def install(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule | None) -> None:
    """The fast path's changes to a built ``Trainer``, model and data module: fused clipping and optimizers, the
    hook bookkeeping, the network's and the batches' memory layout."""
    add_fused_clipping(trainer.precision_plugin)
    if not any(isinstance(callback, FusedOptimizers) for callback in trainer.callbacks):
        trainer.callbacks.append(FusedOptimizers())
    model.__class__ = compat.with_fast_hook_bookkeeping(type(model))
    network = getattr(model, "network", None)
    if isinstance(network, torch.nn.Module) and uses_channels_last(model, trainer.strategy.root_device):
        network.to(memory_format=torch.channels_last)  # kept when the model moves to its device
        if datamodule is not None:
            # Normalizing a uint8 batch writes it anyway: straight into the layout the network computes in.
            datamodule.memory_format = torch.channels_last


def uses_channels_last(model: L.LightningModule, device: torch.device) -> bool:
    """Whether the network computes in channels-last: as the model's ``channels_last`` says, else for conv nets on a
    GPU (where cuDNN is fastest so)."""
    choice = model.hparams.get("channels_last")
    if choice is not None:
        return bool(choice)
    network = getattr(model, "network", model)
    return device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in network.modules())


def plain_cuda_check_without_gpu() -> None:
    """Without a GPU, undo Lightning's ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (set when it is imported).

    That setting (which keeps forked processes able to use CUDA) makes every ``torch.cuda.is_available()`` load the
    NVML library, and every optimizer step asks: on a machine without a GPU, a failing dlopen per step. With no GPU
    there is nothing to protect, and the plain check gives the same answer.
    """
    if not torch.cuda.is_available():
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
