"""Every reliance on a Lightning, PyTorch or jsonargparse internal, in one place, with the version it was written for.

Written against lightning 2.6.6, torch 2.14 and jsonargparse 4.53. ``tests/test_compat.py`` checks each assumption
against the installed versions, so an upgrade that changes one fails there, loudly, instead of somewhere else.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import os
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSamplerWrapper
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DataLoader

# LightningCLI 2.6 calls jsonargparse APIs that jsonargparse deprecates; the notices are Lightning's to act on, not the
# user's. The variable exists for exactly this; set before jsonargparse is imported.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

#: Lightning 2.6's ``utilities/_pytree.py`` calls a torch pytree API that torch 2.10+ deprecates, at every fit and test.
LEAF_SPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
#: Lightning 2.6 warns at every fit whose epochs are shorter than ``log_every_n_steps`` (a small data set): the
#: template logs each epoch's means as well, so nothing goes unlogged.
SHORT_EPOCH_WARNING = r"The number of training batches \(\d+\) is smaller than the logging interval"
#: Lightning 2.6 logs this advertisement for its cloud logger at every ``Trainer`` start.
LITLOGGER_TIP = "try installing [litlogger]"
#: Lightning 2.6's lines that say nothing on this template's machines: accelerators it does not use (the GPU line
#: stays: it says where the run trains), the seed (the run's config.yaml records it), and the restore of the best
#: checkpoint for the test (the run's summary names that checkpoint).
STARTUP_CHATTER = (
    "TPU available:",
    "HPU available:",
    "Seed set to ",
    "Restoring states from the checkpoint path at ",
    "Loaded model weights from the checkpoint at ",
)
#: The logger Lightning's rank-zero messages go through.
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
#: The logger of Lightning's ``seed_everything`` ("Seed set to 42").
SEED_LOGGER = "lightning.fabric.utilities.seed"


class FastHookBookkeeping:
    """Mixed into the LightningModule: Lightning (2.6) records the running hook in ``_current_fx_name`` before and
    after every hook call, dozens of times per step, and ``nn.Module.__setattr__`` is slow for a plain string."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


@functools.cache
def with_fast_hook_bookkeeping(module_class: type) -> type:
    """``module_class`` with :class:`FastHookBookkeeping` in front: the engine swaps a LightningModule's class for it
    (as for the precision plugin's), so the recipe's classes stay plain Lightning."""
    if issubclass(module_class, FastHookBookkeeping):
        return module_class
    # A local class by name: jsonargparse (4.53) skips those when it resolves "--model MLP", so a second run in the
    # same process does not find two classes of that name. Its __name__ is the model's, as checkpoints compare.
    qualname = f"{with_fast_hook_bookkeeping.__qualname__}.<locals>.{module_class.__qualname__}"
    return type(module_class.__name__, (FastHookBookkeeping, module_class), {"__qualname__": qualname})


#: The optimizers :func:`use_fused_kernel` switches to PyTorch's fused kernel.
FUSABLE_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def use_fused_kernel(optimizer: torch.optim.Optimizer) -> bool:
    """Switch a built Adam, AdamW or SGD to PyTorch's fused kernel, as ``fused=True`` in its constructor would;
    returns whether it did.

    torch (2.14) picks the kernel at every step from each parameter group's ``fused``; groups added later take
    ``defaults``; ``_step_supports_amp_scaling`` tells ``GradScaler`` and Lightning that the step reads
    ``grad_scale``. An optimizer with state for the other kernel (it stepped, or a checkpoint saved unfused restored
    it) keeps that kernel: the state is laid out for it. A restored fused one gets its ``defaults`` back (a checkpoint
    saves only the groups), for the groups added later.
    """
    groups = optimizer.param_groups
    if type(optimizer) not in FUSABLE_OPTIMIZERS:
        return False
    if optimizer.state and not all(group.get("fused") for group in groups):
        return False
    if any(group.get("foreach") or group.get("differentiable") for group in groups):
        return False
    optimizer.defaults["fused"] = True
    for group in groups:
        group["fused"] = True
    optimizer._step_supports_amp_scaling = True
    return True


class _WithoutLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return LITLOGGER_TIP not in message and not message.startswith(STARTUP_CHATTER)


def quiet_lightning_notices() -> None:
    """Silence the notices Lightning prints at runs that are Lightning's to fix or say nothing (only these)."""
    warnings.filterwarnings("ignore", message=LEAF_SPEC_WARNING, category=FutureWarning)
    warnings.filterwarnings("ignore", message=SHORT_EPOCH_WARNING)
    for logger in map(logging.getLogger, (RANK_ZERO_LOGGER, SEED_LOGGER)):
        if not any(isinstance(f, _WithoutLitLoggerTip) for f in logger.filters):
            logger.addFilter(_WithoutLitLoggerTip())


def clips_like_clip_grad_norm(plugin: Precision) -> bool:
    """Whether a precision plugin clips by norm as ``clip_grad_norm_`` on the gradients as they are.

    True for Lightning's full, half, double and bf16-mixed plugins (bf16-mixed only adds a refusal of fused
    optimizers); false with a ``GradScaler`` (16-mixed) and for plugins that clip in their own way (FSDP, DeepSpeed).
    Lightning has no public flag for this: the plugin's methods are compared with the base classes' by identity.
    """
    return (
        getattr(plugin, "scaler", None) is None
        and type(plugin).clip_gradients in (Precision.clip_gradients, MixedPrecision.clip_gradients)
        and type(plugin).clip_grad_by_norm is Precision.clip_grad_by_norm
    )


def lightning_refused_a_setting(error: BaseException) -> bool:
    """Whether ``error`` is Lightning refusing a trainer setting once it sees the data, as training starts.

    Its ``MisconfigurationException`` always is; a ``ValueError`` is when Lightning raised it while setting up the
    loops' data (``fit_loop.setup_data``: batch limits and validation interval against the loaders' lengths). Any
    other ``ValueError`` is a bug and keeps its traceback.
    """
    if isinstance(error, MisconfigurationException):
        return True
    if not isinstance(error, ValueError):
        return False
    frames = traceback.extract_tb(error.__traceback__)
    raised_in_lightning = bool(frames) and "lightning" in Path(frames[-1].filename).parts
    return raised_in_lightning and any(frame.name == "setup_data" for frame in frames)


def loggers_write_this_step(trainer: Any) -> bool:
    """Whether the loggers write the values logged at this training batch (every ``log_every_n_steps``): Lightning's
    own decision, which only its private logger connector holds."""
    return bool(trainer._logger_connector.should_update_logs)


def cluster_environment(trainer: Any) -> Any:
    """The cluster environment (e.g. ``SLURMEnvironment``) the ``Trainer`` detected. A single-device strategy has no
    ``cluster_environment``; Lightning (2.6) keeps it in the private accelerator connector, where its own signal
    handling reads it too."""
    return trainer._accelerator_connector.cluster_environment


def without_repeats(loader: DataLoader, num_replicas: int, rank: int) -> DataLoader:
    """``loader`` rebuilt to read rank ``rank``'s share of its samples, every sample on exactly one of the ranks.

    For ``trainer.test`` Lightning (2.6) injects a ``DistributedSampler``, which repeats samples until every rank has
    as many; only ``trainer.predict`` gets its unrepeated one (``UnrepeatedDistributedSamplerWrapper``, which keeps
    the loader's own order), through the private ``_update_dataloader`` that rebuilds a ``DataLoader`` (subclasses
    too) around another sampler. Use it with ``Trainer(use_distributed_sampler=False)``, so Lightning leaves the
    loader as it is. Ranks may then run one batch more than others: safe, as Lightning wraps the model in
    ``DistributedDataParallel`` (whose forward synchronizes) only to fit.
    """
    sampler = UnrepeatedDistributedSamplerWrapper(loader.sampler, num_replicas=num_replicas, rank=rank, shuffle=False)
    return _update_dataloader(loader, sampler, mode=RunningStage.TESTING)


def ends_an_optimizer_step(trainer: Any, batch_idx: int) -> bool:
    """Whether Lightning (2.6) steps the optimizer after training batch ``batch_idx`` of the epoch: after every
    ``accumulate_grad_batches``-th batch, and after the epoch's last."""
    done = batch_idx + 1
    return done % trainer.accumulate_grad_batches == 0 or done >= trainer.num_training_batches


def optimizer_steps_per_epoch(trainer: Any) -> int | None:
    """The optimizer steps of a training epoch, by the rule of :func:`ends_an_optimizer_step`; ``None`` for
    training data of unknown length."""
    batches = trainer.num_training_batches
    return math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else None


def continue_csv_log(logger: CSVLogger, step: int) -> None:
    """Make a ``CSVLogger`` keep the rows of its ``metrics.csv`` logged before ``step`` and append after them.

    Lightning's CSV writer deletes the ``metrics.csv`` it finds, in ``ExperimentWriter._check_log_dir_exists``,
    called by its ``__init__`` (2.6); the logger creates its writer lazily on the first log, in the private
    ``_experiment``, so a writer installed there beforehand is the one used.
    """
    logger._experiment = _ContinuedMetricsWriter(logger.log_dir, step)


class _ContinuedMetricsWriter(ExperimentWriter):
    """Rows from ``step`` on were logged by the interrupted run after its checkpoint; the resumed run logs those
    steps again, so they are dropped rather than duplicated."""

    def __init__(self, log_dir: str, step: int) -> None:
        self._resume_step = step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # called by __init__, where Lightning deletes the file
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            rows = [row for row in reader if int(row["step"]) < self._resume_step]
            self.metrics_keys = list(reader.fieldnames or [])
        temporary = self.metrics_file_path + ".tmp"
        with open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, self.metrics_file_path)


def epochs_trained(checkpoint: dict[str, Any]) -> int:
    """The epochs whose training a Lightning (2.6) checkpoint has finished: its fit loop's
    ``epoch_progress.current.processed`` (an epoch stopped in the middle is not counted)."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    return int(progress.get("current", {}).get("processed", 0))


def without_unset_wandb_options(logger: Any) -> None:
    """Lightning's ``WandbLogger`` (2.6) passes ``anonymous=None`` to ``wandb.init`` even when it was not asked for,
    and W&B (0.19+) warns about any value of that setting ("The anonymous setting has no effect"): the key is
    dropped from the logger's private ``_wandb_init`` when it is ``None``."""
    if logger._wandb_init.get("anonymous", "") is None:
        del logger._wandb_init["anonymous"]


def option_strings(parser: Any) -> list[str]:
    """Every option string an argparse (or jsonargparse) parser accepts: argparse (Python 3.10-3.13) keeps them only
    in the private ``_option_string_actions``."""
    return list(parser._option_string_actions)


def argument_names(parser: Any) -> list[str]:
    """The destinations of a parser's arguments: argparse keeps its actions only in the private ``_actions``."""
    return [action.dest for action in parser._actions]


def allow_plain_http_endpoint() -> bool:
    """Let LitData fetch shards from an S3-compatible store at a plain ``http://`` endpoint (``AWS_ENDPOINT_URL``,
    e.g. MinIO on a private network, or a test server on 127.0.0.1); returns whether it was needed.

    litdata 0.2.76 fetches chunks with obstore, which refuses plain HTTP unless its client options say
    ``allow_http``, and passes its module-level ``_OBSTORE_CLIENT_OPTIONS`` with no way to add it. Only an
    ``http://`` endpoint the user configured turns it on; https endpoints are left as they are.
    """
    if not os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        return False
    from litdata.streaming import downloader

    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True
    return True


#: How torch's DataLoader (2.14, ``_MultiProcessingDataLoaderIter._get_data``) says that no batch came within its
#: ``timeout``: a ``RuntimeError`` with this message.
LOADER_TIMEOUT_MESSAGE = "DataLoader timed out after"


def loader_timed_out(error: BaseException) -> bool:
    """Whether ``error`` is a ``DataLoader`` giving up on a batch after its ``timeout``."""
    return isinstance(error, RuntimeError) and str(error).startswith(LOADER_TIMEOUT_MESSAGE)


def worker_error_message(error: BaseException) -> str | None:
    """The message a loader worker raised ``error`` with, or ``None`` if it was raised in this process.

    torch 2.14's ``ExceptionWrapper.reraise`` raises ``type(error)("Caught <type> in DataLoader worker process N.
    \nOriginal Traceback ...")``: the worker's whole traceback as the message, ending in ``<qualified type>: <the
    message>``; a one-line error needs the message alone.
    """
    text = str(error)
    if not text.startswith(f"Caught {type(error).__name__} ") or "\nOriginal Traceback" not in text:
        return None
    for name in (f"{type(error).__module__}.{type(error).__qualname__}", type(error).__qualname__):
        start = text.rfind(f"\n{name}: ")
        if start >= 0:
            return text[start + len(name) + 3 :].rstrip("\n")
    return None


def awaited_worker(iterator: Any) -> int | None:
    """The worker a multi-process ``DataLoader`` iterator waits for (torch 2.14 keeps it only in the private
    ``_task_info[_rcvd_idx]``: ``(worker_id,)`` while the batch is outstanding), or ``None``."""
    info = getattr(iterator, "_task_info", {}).get(getattr(iterator, "_rcvd_idx", None))
    return int(info[0]) if info else None


def count_batch_as_its_length(loader: Any, length: int) -> None:
    """litdata 0.2.76's ``StreamingDataLoader.__iter__`` counts each batch it yields as ``batch_size`` samples
    (``_num_samples_yielded_streaming``), each worker's last, shorter batch too: the position saved at an epoch's end
    then overshoots the split (1,472 of 1,439 samples) and a resume from it fails. Counted as its length instead,
    the count also replays right, since a worker's short batch is its last."""
    loader._num_samples_yielded_streaming -= loader.batch_size - length


def number_next_epoch(loader: Any, epoch: int) -> None:
    """Make litdata 0.2.76's ``StreamingDataLoader`` stream its next iteration as epoch ``epoch`` (its shuffle and
    our crops are drawn from it), from its start unless it was restored in the middle of that very epoch.

    It numbers epochs by counting its own iterations (``current_epoch += 1`` unless ``restore``), and clears
    ``restore`` only when an iteration runs to its end; Lightning stops at an epoch's last batch by its length, so
    after a resume in the middle of an epoch the next epoch would be a replay of the restored position (no batches),
    and a run resumed at an epoch's end iterates once more than one never stopped (every later epoch another's)."""
    if loader.restore and loader.current_epoch == epoch:
        return
    loader.restore = False
    loader.current_epoch = epoch - 1


def __getattr__(name: str) -> Any:
    # Built on first use, so that LitData (a third of a second) is imported only by runs that stream.
    if name == "CheckedChunkLoader":
        return _checked_chunk_loader()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _checked_chunk_loader() -> type:
    """LitData's default item loader, calling ``check(path)`` once per chunk file (again when the file changes: a
    remote cache evicts and fetches it anew) when it is on disk and before any item of it is read.

    litdata 0.2.76's ``PyTreeLoader.load_item_from_chunk`` calls ``_wait_until_chunk_ready`` exactly there, once per
    chunk it moves to; and its ``ChunksConfig`` refuses an item loader whose class ``__name__`` is not the one in
    ``index.json`` ("PyTreeLoader"), so the class bears that name (pickled by its qualified name, this attribute).
    """
    from litdata.streaming.item_loader import PyTreeLoader

    class CheckedChunkLoader(PyTreeLoader):
        def __init__(self, check: Any) -> None:
            super().__init__()
            self.check, self.checked = check, set()

        def _wait_until_chunk_ready(self, chunk_index: int, chunk_filepath: str, filesize_bytes: int) -> None:
            super()._wait_until_chunk_ready(chunk_index, chunk_filepath, filesize_bytes)
            stat = os.stat(chunk_filepath)
            key = (chunk_filepath, stat.st_size, stat.st_mtime_ns, stat.st_ino)
            if key not in self.checked:
                self.check(chunk_filepath)
                self.checked.add(key)

    CheckedChunkLoader.__name__ = "PyTreeLoader"
    CheckedChunkLoader.__qualname__ = "CheckedChunkLoader"
    CheckedChunkLoader.__module__ = __name__
    return CheckedChunkLoader


#: The paths Lightning 2.6's ``ModelCheckpoint.state_dict`` saves and ``load_state_dict`` restores: at its next save
#: it removes the restored previous best/last/k-th file (``_remove_checkpoint``, ``fs.rm``), checking the folder for
#: the ``file`` protocol only and on unresolved paths. :mod:`project.engine.trust` sanitizes them before the restore.
CHECKPOINT_PATH_FIELDS = ("best_model_path", "kth_best_model_path", "last_model_path")
CHECKPOINT_DIR_FIELD = "dirpath"
#: ``{path: score}`` of the kept top-k files, also restored and removed from.
CHECKPOINT_TOP_K_FIELD = "best_k_models"


def litserve_api_key() -> str | None:
    """LitServe 0.2's API key: ``LIT_SERVER_API_KEY``, read once when ``litserve.server`` is imported; its endpoints
    compare the ``X-API-Key`` header with it. The serving middleware checks it too, before it reads any body."""
    from litserve import server

    return server.LIT_SERVER_API_KEY
