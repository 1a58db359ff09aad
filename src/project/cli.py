"""The command line: ``python scripts/train.py --model resnet`` trains, picks the best checkpoint, tests it.

The path of a run, top to bottom:

1. :func:`expand_args` turns the short forms into LightningCLI arguments: ``--model resnet`` becomes
   ``--model <configs/model/resnet.yaml>``, ``--precision X`` becomes ``--trainer.precision X``, and so on.
2. :class:`TemplateCLI` (Lightning's ``LightningCLI``) parses and validates everything, then builds the model,
   the data module and a ``Trainer`` whose loggers, checkpoints and config all write into one run directory.
3. :func:`train` fits, tests the best checkpoint and writes ``summary.json``.

User mistakes raise :class:`~project.errors.UserError` (or are parse errors): :func:`main` prints them as one
line and returns 2, with no traceback. A diverged run (non-finite loss) is one line and exit code 1; a run stopped
by SIGTERM or SIGINT writes ``last.ckpt`` and exits 128 + the signal number (143, 130).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

# LightningCLI still calls jsonargparse APIs that jsonargparse deprecates; the notices are Lightning's to act on,
# not the user's, so they are turned off (only these: the variable exists for exactly this).
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import torch
from jsonargparse import ArgumentError, Namespace
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from project import rundir
from project.callbacks.atomic_io import AtomicCheckpointIO
from project.callbacks.dashboard import ClassificationDashboard
from project.callbacks.nonfinite import NonFiniteLossCheck, NonFiniteLossError
from project.callbacks.progress import ThrottledRichProgressBar
from project.callbacks.rng_state import RNGStateCheckpoint
from project.callbacks.signals import GracefulInterrupt, TrainingInterrupted
from project.checkpoint import load_checkpoint_file
from project.configs import PACKAGE_CONFIGS, expand_args, short_names
from project.errors import UserError
from project.loggers import WANDB_RUN_ID_KEY, WandbOptions, finish_wandb, make_loggers, wandb_callbacks


class _WithoutLitLoggerTip(logging.Filter):
    """Drops the one message Lightning (2.6) logs at every ``Trainer`` start to advertise its cloud logger: this
    template logs to CSV and W&B. Every other message of that logger goes through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "try installing [litlogger]" not in str(record.msg)


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_WithoutLitLoggerTip())


# ---------------------------------------------------------------------------------------------- the CLI
class TemplateCLI(LightningCLI):
    """LightningCLI with the template's extra options and a Trainer that writes into one run directory."""

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        self.run_dir: Path | None = None
        self.fresh_run_dir = False  # created by this run (not resumed, not a DDP worker's)
        self.ckpt_path: str | None = None
        # LightningCLI reads sys.argv when args is None and warns when both are set; main() already expanded
        # sys.argv into args, so hand them over as the command line.
        saved_argv, sys.argv = sys.argv, [sys.argv[0], *args]
        try:
            self._init_cli(**kwargs)
        finally:
            sys.argv = saved_argv

    def _init_cli(self, **kwargs: Any) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            run=False,
            seed_everything_default=42,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "exit_on_error": False,
                "default_config_files": [str(PACKAGE_CONFIGS / "trainer" / "default.yaml")],
                "description": (
                    "Train an image classifier, keep the best checkpoint, test it. Short forms: "
                    f"--model {'|'.join(sorted(short_names('model')))}, "
                    f"--data {'|'.join(sorted(short_names('data')))}, "
                    "--precision, --accelerator, --devices, --strategy, --num_nodes, --max_epochs, --seed, --compile."
                ),
            },
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_dir", type=str | None, default=None, help="Run directory (default: a new one).")
        parser.add_argument(
            "--resume",
            type=str | None,
            default=None,
            help="Continue a run: last, a run directory or a checkpoint.",
        )
        parser.add_argument(
            "--logger",
            type=str,
            default="csv",
            choices=["csv", "tensorboard", "wandb"],
            help="Experiment logger.",
        )
        parser.add_argument("--no_test", type=bool, default=False, help="Skip testing the best checkpoint.")
        parser.add_argument(
            "--dashboard_every", type=int, default=5, help="Draw the validation dashboard every N epochs (0: never)."
        )
        parser.add_class_arguments(WandbOptions, "wandb")

    def before_instantiate_classes(self) -> None:
        trainer = self.config["trainer"]
        accelerator = str(trainer.get("accelerator") or "auto")
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise UserError(
                f"--accelerator {accelerator}: no CUDA GPU is available here; use --accelerator cpu or auto"
            )
        on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
        if trainer.get("precision") is None:
            # auto: bf16 autocast where the GPU supports it, full fp32 on CPU (CPU autocast is slower).
            trainer["precision"] = "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"
        if on_gpu:
            # TF32 matmuls: free speed for fp32 ops on Ampere and newer GPUs. cuDNN autotuning (--trainer.benchmark
            # true) is not a default: it gained nothing measurable for ResNet-18 on an H200 (README, Speed), and it
            # tunes again for every new input shape.
            torch.set_float32_matmul_precision("high")
        if trainer.get("profiler") is None:
            # Lightning's "no profiler" costs ~600 Python calls per training step; this one nothing (same results).
            trainer["profiler"] = Namespace(class_path="project.profiler.NoProfiler", init_args=Namespace())
        plain_cuda_check_without_gpu()

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except UserError:
            self.discard_unused_run_dir()
            raise
        except (ValueError, TypeError, MisconfigurationException) as error:
            self.discard_unused_run_dir()
            raise UserError(explain(error)) from None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config
        resume = config.get("resume")
        if resume:
            self.run_dir, checkpoint = rundir.find_resume_checkpoint(resume, config["trainer"]["default_root_dir"])
            self.ckpt_path = str(checkpoint)
            # ModelCheckpoint warns about a non-empty checkpoint directory; continuing in it is the point here.
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        elif inherited := rundir.inherited_run_dir():  # a DDP worker: the directory rank 0 chose and writes into
            self.run_dir = inherited
        elif config.get("run_dir") and rank_zero_only.rank > 0:
            # Started by torchrun or srun: every process gets the same --run_dir, and rank 0 claims it.
            self.run_dir = Path(config["run_dir"])
        elif config.get("run_dir"):
            self.run_dir = rundir.claim_run_dir(config["run_dir"])
            self.fresh_run_dir = True
        else:
            name = f"{_short(config['model']['class_path'])}-{_short(config['data']['class_path'])}"
            self.run_dir = rundir.new_run_dir(config["trainer"]["default_root_dir"], name)
            self.fresh_run_dir = True
        rundir.share_with_workers(self.run_dir)

        # The checkpoint is read now, so that a bad file fails before training, to continue metrics.csv from its
        # step and the W&B run from its id.
        resumed = load_checkpoint_file(self.ckpt_path) if self.ckpt_path else {}
        wandb_id = resumed.get(WANDB_RUN_ID_KEY) if config["logger"] == "wandb" else None
        kwargs["logger"] = make_loggers(config["logger"], self.run_dir, WandbOptions(**config["wandb"]), wandb_id)
        rundir.continue_metrics_log(kwargs["logger"], int(resumed.get("global_step", 0)))
        kwargs["default_root_dir"] = str(self.run_dir)
        kwargs["plugins"] = [AtomicCheckpointIO()]
        callbacks = list(self.config_init["trainer"].get("callbacks") or [])
        callbacks += self.default_callbacks(self.run_dir)
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def discard_unused_run_dir(self) -> None:
        """A run that failed on a user mistake before its first checkpoint leaves no directory behind."""
        run_dir = self.run_dir
        if not self.fresh_run_dir or run_dir is None or not run_dir.is_dir() or rank_zero_only.rank != 0:
            return
        if any(run_dir.joinpath(rundir.CHECKPOINTS).glob("*.ckpt")):
            return  # something worth keeping was saved
        shutil.rmtree(run_dir)

    def default_callbacks(self, run_dir: Path) -> list[Callback]:
        """Checkpointing, learning-rate monitoring, RNG state, the non-finite loss check, SIGTERM/SIGINT handling,
        the dashboard, W&B hooks and the progress bar."""
        callbacks: list[Callback] = [
            *rundir.checkpoint_callbacks(run_dir / rundir.CHECKPOINTS),
            LearningRateMonitor(logging_interval="epoch"),
            RNGStateCheckpoint(),
            NonFiniteLossCheck(),  # before GracefulInterrupt: a non-finite step must not be checkpointed
            GracefulInterrupt(),
            *wandb_callbacks(self.config["logger"], WandbOptions(**self.config["wandb"])),
        ]
        if self.config["dashboard_every"] > 0:
            callbacks.append(ClassificationDashboard(run_dir / "dashboard", self.config["dashboard_every"]))
        if self.config["trainer"].get("enable_progress_bar") is not False:
            callbacks.append(ThrottledRichProgressBar())
        return callbacks


def plain_cuda_check_without_gpu() -> None:
    """Without a GPU, undo Lightning's ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (set when it is imported).

    That setting (which keeps forked processes able to use CUDA) makes every ``torch.cuda.is_available()`` load
    the NVML library, and every optimizer step asks: on a machine without a GPU, a failing dlopen per step (~70 us,
    2% of an MLP's step on MNIST). With no GPU there is nothing to protect, and the plain check gives the same answer.
    """
    if not torch.cuda.is_available():
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1].removesuffix("DataModule").lower()


# ---------------------------------------------------------------------------------------------- the run
def train(cli: TemplateCLI) -> dict[str, Any]:
    """Fit, test the best checkpoint, write and return the summary.

    A run stopped by SIGTERM or SIGINT (see :class:`~project.callbacks.signals.GracefulInterrupt`) is not tested;
    its summary says ``"interrupted": true`` and names the signal, and ``--resume`` continues it.
    """
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    started = time.perf_counter()
    stopped_by: int | None = None
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cli.ckpt_path, weights_only=True)
    except TrainingInterrupted as interrupt:
        stopped_by = interrupt.signum
    except SIGTERMException:  # Lightning's own, for a SIGTERM before training started: no new checkpoint
        stopped_by = signal.SIGTERM
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None else ""
    last = rundir.last_checkpoint_path(trainer)
    best_score = _float(checkpoint.best_model_score) if checkpoint is not None else None
    test_metrics: dict[str, float] = {}
    if not cli.config["no_test"] and not trainer.interrupted and stopped_by is None:
        results = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        test_metrics = {key: float(value) for key, value in (results[0] if results else {}).items()}
    summary = {
        "model": cli.config["model"]["class_path"],
        "data": cli.config["data"]["class_path"],
        "run_dir": str(cli.run_dir),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "best_val_acc": best_score,
        "test_acc": test_metrics.get("test/acc"),
        "test_loss": test_metrics.get("test/loss"),
        "checkpoints": {"best": best or None, "last": last if os.path.isfile(last) else None},
        "seed": cli.config["seed_everything"],
        "precision": str(trainer.precision),
        "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        "devices": trainer.num_devices,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "interrupted": trainer.interrupted or stopped_by is not None,
        "signal": signal.Signals(stopped_by).name if stopped_by else None,
    }
    if trainer.is_global_zero:
        rundir.write_summary(cli.run_dir, summary)
        _print_summary(summary)
        sync_hint = finish_wandb(trainer.loggers)  # ends the W&B run; offline runs say how to upload
        if sync_hint:
            print(sync_hint)
    return summary


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _print_summary(summary: dict[str, Any]) -> None:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    loss = "n/a" if summary["test_loss"] is None else f"{summary['test_loss']:.4f}"
    print(
        f"\nrun directory: {summary['run_dir']}\n"
        f"best val acc {pct(summary['best_val_acc'])} | test acc {pct(summary['test_acc'])} | test loss {loss}"
        f" | {summary['epochs']} epochs in {summary['wall_time_s']:.1f}s\n"
        f"best checkpoint: {summary['checkpoints']['best']}"
    )


# ---------------------------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    cli: TemplateCLI | None = None
    try:
        cli = TemplateCLI(expand_args(argv))
        summary = train(cli)
    except UserError as error:
        return _report(error, cli)
    except (MisconfigurationException, ValueError) as error:
        if not _lightning_refused_a_setting(error):
            raise  # a bug, in the model or here: the traceback is what its author needs
        # e.g. --trainer.limit_val_batches 0.01 of 50 batches, or a val_check_interval longer than the epoch
        return _report(UserError(" ".join(str(error).split())), cli)
    except NonFiniteLossError as error:  # not a usage mistake (2): the run itself failed
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ArgumentError as error:
        print(f"error: {explain(error)} (see --help)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C before training started (during it, GracefulInterrupt handles it)
        print("interrupted", file=sys.stderr)
        return 130
    if summary["signal"]:
        return 128 + signal.Signals[summary["signal"]]  # the shell's convention: 143 for SIGTERM, 130 for SIGINT
    return 130 if summary["interrupted"] else 0


def _report(error: UserError, cli: TemplateCLI | None) -> int:
    """Print a user's mistake as one line, remove the run directory if nothing was saved in it; the exit code."""
    print(f"error: {error}", file=sys.stderr)
    if cli is not None:
        cli.discard_unused_run_dir()
    return error.exit_code


def _lightning_refused_a_setting(error: Exception) -> bool:
    """Whether ``error`` is Lightning refusing a trainer setting once it sees the data, as training starts.

    Its ``MisconfigurationException`` always is; a ``ValueError`` is when Lightning itself raised it while setting up
    the loops' data (``fit_loop.setup_data``: the batch limits and validation interval against the loaders' lengths).
    Any other ``ValueError`` is a bug and keeps its traceback.
    """
    if isinstance(error, MisconfigurationException):
        return True
    frames = traceback.extract_tb(error.__traceback__)
    raised_in_lightning = bool(frames) and "lightning" in Path(frames[-1].filename).parts
    return raised_in_lightning and any(frame.name == "setup_data" for frame in frames)


_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Expected a <class 'NoneType'>",
    "Subtypes:",
    "Errors:",
    "Given value",
    "Problem with given class_path",
)


def explain(error: BaseException) -> str:
    """jsonargparse explains a bad value over many nested lines; keep the key path and the innermost reason."""
    text = str(error)
    keys = re.findall(r'Parser key "([^"]+)"', text)
    reasons = [line.strip().lstrip("- ").strip() for line in text.splitlines()]
    reasons = [line for line in reasons if line and not line.startswith(_NOISE) and not line.startswith("Parser key")]
    reason = reasons[0] if reasons else text.strip().splitlines()[0]
    reason = re.sub(r"<class '(\w+)'>", r"\1", reason)
    return f"--{'.'.join(keys)}: {reason}" if keys else reason
