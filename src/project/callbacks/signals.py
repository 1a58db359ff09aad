"""SIGTERM and SIGINT (Ctrl+C) stop training cleanly: a checkpoint to resume from, then exit 128 + signal."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from project import rundir

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after writing ``checkpoint``; the exit code is ``128 + signum``.

    A ``SystemExit``, like Lightning's own ``SIGTERMException``: whoever does not catch it still exits with the
    right code and no traceback. :func:`project.cli.train` catches it to write the summary first.
    """

    def __init__(self, signum: int, checkpoint: str) -> None:
        super().__init__(128 + signum)
        self.signum, self.checkpoint = signum, checkpoint


class GracefulInterrupt(Callback):
    """On SIGTERM or SIGINT, finish the current batch, write ``checkpoints/last.ckpt`` and stop.

    Lightning's own handling is not enough: on SIGTERM it stops without a checkpoint, and on Ctrl+C it calls
    ``sys.exit(1)``. The handlers here replace both for the duration of training (they are installed in
    ``on_train_start``, after Lightning installs its own, and the previous ones are restored at the end). The
    handler only records the signal; the checkpoint is written at the end of the batch, where the training state
    is consistent, and training ends by raising :class:`TrainingInterrupted` rather than by ``trainer.should_stop``,
    which would first run a full validation pass (slow, and a preempted job has only seconds).

    Under DDP the ranks agree on stopping every ``sync_every_n_steps`` steps (one tiny all-reduce), so that all of
    them write the checkpoint together and stop at the same step even when only one received the signal.

    Args:
        sync_every_n_steps: Steps between the all-reduces that share the decision under DDP.
    """

    def __init__(self, sync_every_n_steps: int = 10) -> None:
        self.sync_every_n_steps = max(1, sync_every_n_steps)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum  # a second signal changes nothing: the checkpoint is already on its way

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = None
        for signum in SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook's worker thread): keep the default handling
                return

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A signal during the last validation: training is complete and checkpointed, but the user asked to stop.
        signum = self._agreed_signal(trainer)
        self._restore()
        if signum:
            raise TrainingInterrupted(signum, rundir.last_checkpoint_path(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.world_size > 1 and trainer.global_step % self.sync_every_n_steps:
            return
        signum = self._agreed_signal(trainer)
        if not signum:
            return
        path = rundir.last_checkpoint_path(trainer)
        # On every rank: the strategy writes once, from rank 0. The full resumable state, optimizer and loops included.
        trainer.save_checkpoint(path)
        raise TrainingInterrupted(signum, path)

    def _agreed_signal(self, trainer: L.Trainer) -> int:
        """The signal to stop for, or 0; under DDP the largest any rank received, so that all ranks agree."""
        if trainer.world_size == 1:
            return self.received or 0
        decision = torch.tensor(self.received or 0, device=trainer.strategy.root_device)
        return int(trainer.strategy.reduce(decision, reduce_op="max"))
