"""SIGTERM and SIGINT (Ctrl+C) stop training cleanly: a checkpoint to resume from, then exit 128 + signal. Under
SLURM, its requeue signal (SIGUSR1) does the same and requeues the job."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback

from project.engine import compat, rundir

SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger(__name__)


class TrainingInterrupted(SystemExit):
    """Training stopped on a signal after writing ``checkpoint``; the exit code is ``128 + signum``.

    A ``SystemExit``, like Lightning's own ``SIGTERMException``: whoever does not catch it still exits with the
    right code and no traceback. :func:`project.engine.cli.train` catches it to write the summary first.
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

    Under SLURM with Lightning's ``SLURMEnvironment(auto_requeue=True)`` (what it detects when started by ``srun`` or
    ``sbatch``), the environment's requeue signal (SIGUSR1, ``#SBATCH --signal=SIGUSR1@90``) is handled the same way,
    and then rank 0 requeues the job (``scontrol requeue``, as Lightning does). Lightning's own handler is replaced
    because it writes its ``hpc_ckpt_N.ckpt`` inside the signal handler, wherever the training step happens to be
    (in the middle of an optimizer step, say), and then trains on: here the checkpoint is ``last.ckpt`` at a batch
    boundary, resumed exactly by the requeued job (see :func:`~project.engine.rundir.slurm_job_args`), and the process
    ends.

    Under DDP the ranks agree on stopping every ``sync_every_n_steps`` steps (one tiny all-reduce), so that all of
    them write the checkpoint together and stop at the same step even when only one received the signal.

    Args:
        sync_every_n_steps: Steps between the all-reduces that share the decision under DDP.
    """

    def __init__(self, sync_every_n_steps: int = 10) -> None:
        self.sync_every_n_steps = max(1, sync_every_n_steps)
        self.received: int | None = None
        self.requeue_signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum  # a second signal changes nothing: the checkpoint is already on its way

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = None
        environment = compat.cluster_environment(trainer)
        requeue = isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal
        self.requeue_signal = int(requeue) if requeue else None
        for signum in SIGNALS if self.requeue_signal is None else (*SIGNALS, self.requeue_signal):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook's worker thread): keep the default handling
                return

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A signal during the last validation: training is complete and checkpointed, but the user asked to stop.
        signum = self._agreed_signal(trainer)
        self._restore()
        if signum == self.requeue_signal and trainer.is_global_zero:
            requeue_slurm_job()  # the requeued job finds the run complete and tests it
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
        if not compat.ends_an_optimizer_step(trainer, batch_idx):
            return  # a checkpoint inside an accumulation window would lose the gradients accumulated so far
        if trainer.world_size > 1 and trainer.global_step % self.sync_every_n_steps:
            return
        signum = self._agreed_signal(trainer)
        if not signum:
            return
        path = rundir.last_checkpoint_path(trainer)
        # On every rank: the strategy writes once, from rank 0. The full resumable state, optimizer and loops included.
        trainer.save_checkpoint(path, weights_only=False)
        if signum == self.requeue_signal and trainer.is_global_zero:
            requeue_slurm_job()
        raise TrainingInterrupted(signum, path)

    def _agreed_signal(self, trainer: L.Trainer) -> int:
        """The signal to stop for, or 0; under DDP the largest any rank received, so that all ranks agree."""
        if trainer.world_size == 1:
            return self.received or 0
        decision = torch.tensor(self.received or 0, device=trainer.strategy.root_device)
        return int(trainer.strategy.reduce(decision, reduce_op="max"))


def requeue_slurm_job() -> bool:
    """``scontrol requeue`` this SLURM job (an array job's task by its array id), as Lightning's own handler does;
    whether ``scontrol`` succeeded."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job_id):
        log.warning(f"not requeueing SLURM job {job_id!r}: not a job id")
        return False
    try:
        result = subprocess.call(["scontrol", "requeue", job_id])
    except FileNotFoundError:
        result = -1
    if result != 0:
        log.warning(f"requeueing SLURM job {job_id} failed (scontrol: {result}); resubmit it to continue the run")
        return False
    print(f"requeued SLURM job {job_id}: it continues this run from its last checkpoint")
    return True
