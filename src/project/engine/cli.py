"""The command line: ``python scripts/train.py --model resnet`` trains, picks the best checkpoint, tests it.

The path of a run, top to bottom:

1. :func:`~project.engine.configs.expand_args` turns the short forms into LightningCLI arguments: ``--model resnet``
   becomes ``--model <configs/model/resnet.yaml>``, ``--precision X`` becomes ``--trainer.precision X``, and so on.
2. :class:`TemplateCLI` (Lightning's ``LightningCLI``) parses and validates everything, builds the data module,
   then the model from the data's shapes and class names, then a ``Trainer`` whose loggers, checkpoints and config
   all write into one run directory.
3. :func:`~project.engine.training.train` fits, tests the best checkpoint and writes ``summary.json``.

User mistakes raise :class:`~project.engine.errors.UserError` (or are parse errors): :func:`main` prints them as one
line and returns 2, with no traceback. A diverged run (non-finite loss) is one line and exit code 1; a run stopped
by SIGTERM or SIGINT writes ``last.ckpt`` and exits 128 + the signal number (143, 130).
"""

from __future__ import annotations

import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ArgumentError
from lightning import LightningDataModule, LightningModule, Trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from project.engine import (
    compat,  # noqa: I001 - first: it quiets jsonargparse's notices before LightningCLI imports it
    fastpath,
    rundir,
)
from project.engine.callbacks import training_flags
from project.engine.callbacks.atomic_io import AtomicCheckpointIO
from project.engine.callbacks.dashboard import ClassificationDashboard
from project.engine.callbacks.nonfinite import NonFiniteLossCheck, NonFiniteLossError
from project.engine.callbacks.rng_state import RNGStateCheckpoint
from project.engine.callbacks.signals import GracefulInterrupt
from project.engine.checkpoint import check_resumable, load_checkpoint_file
from project.engine.configs import PACKAGE_CONFIGS, expand_args, short_names
from project.engine.entrypoint import own_modules_importable
from project.engine.errors import CheckpointWriteError, MissingDownload, UserError, explain, raised_within
from project.engine.filenames import escape_names
from project.engine.helptext import PlainHelpParser
from project.engine.loggers import WANDB_RUN_ID_KEY, WandbOptions, make_loggers, wandb_callbacks
from project.engine.options import (
    check_gpu,
    import_class,
    model_preprocessing,
    resolve_image_size,
    resolve_normalize,
    resolve_precision,
    uses_gpu,
)
from project.engine.suggest import explain_parse_error
from project.engine.training import train


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
            super().__init__(
                LightningModule,
                LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                run=False,
                parser_class=PlainHelpParser,
                seed_everything_default=42,
                auto_configure_optimizers=False,
                save_config_kwargs={"overwrite": True},
                parser_kwargs={
                    "exit_on_error": False,
                    "default_config_files": [str(PACKAGE_CONFIGS / "trainer" / "default.yaml")],
                    "description": (
                        "Train an image classifier, keep the best checkpoint, test it. Short forms: "
                        f"--model {'|'.join(sorted(short_names('model')))}, "
                        f"--data {'|'.join(sorted(short_names('data')))}, --precision, --accelerator, --devices, "
                        "--strategy, --num_nodes, --max_epochs, --seed, --compile."
                    ),
                },
                **kwargs,
            )
        finally:
            sys.argv = saved_argv

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:  # a misspelt option: name the close matches
            raise UserError(f"{explain_parse_error(error, parser)} (see --help)") from None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_dir", type=str | None, default=None, help="Run directory (default: a new one).")
        parser.add_argument(
            "--resume", type=str | None, default=None, help="Continue a run: last, a run directory or a checkpoint."
        )
        parser.add_argument(
            "--logger", type=Literal["csv", "tensorboard", "wandb"], default="csv", help="Experiment logger."
        )
        parser.add_argument("--no_test", type=bool, default=False, help="Skip testing the best checkpoint.")
        parser.add_argument(
            "--dashboard_every", type=int, default=5, help="Draw the validation dashboard every N epochs (0: never)."
        )
        parser.add_argument(
            "--fast_path", type=bool, default=True, help="The speed machinery (engine/fastpath); false to debug."
        )
        parser.add_class_arguments(WandbOptions, "wandb")
        training_flags.add_arguments(parser)  # --ema_decay, --swa_lrs, --find_lr, --find_batch_size
        # The groups' headings say what the options are for (jsonargparse takes the first paragraph of Lightning's base
        # classes' docstrings, about Lightning; the LightningDataModule's ends mid-sentence).
        for group, what in (("model", "a LightningModule"), ("data", "a LightningDataModule")):
            parser.groups[group].title = f"The {group}: {what} (--{group} NAME or a class path)"
            parser.groups[group].description = None
        # The data decides the shapes and class names; the model is built from them.
        for name in ("num_classes", "input_shape", "class_names"):
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.preprocessing", _preprocessing, apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        trainer = self.config["trainer"]
        check_gpu(trainer.get("accelerator"))
        if trainer.get("sync_batchnorm") and not uses_gpu(trainer.get("accelerator")):
            # PyTorch's DDP refuses SyncBatchNorm on CPU (with a traceback, once the processes have started).
            raise UserError("--trainer.sync_batchnorm true needs GPUs: PyTorch's SyncBatchNorm does not run on CPU")
        trainer["precision"] = resolve_precision(trainer.get("precision"), trainer.get("accelerator"))
        if uses_gpu(trainer.get("accelerator")):
            # TF32 matmuls: free speed for fp32 ops on Ampere and newer GPUs.
            torch.set_float32_matmul_precision("high")
        data = self.config["data"].get("init_args")
        if data is not None and ("normalize" in data or data.get("image_size") == "auto"):
            # The model says what its pretrained weights expect; the data's "auto" options become that.
            model = self.config["model"]
            model_class = import_class(model["class_path"], LightningModule, "--model")
            preferred = model_preprocessing(model_class, dict(model.get("init_args") or {}))
            if "normalize" in data:
                data["normalize"] = resolve_normalize(data["normalize"], preferred)
            data["image_size"] = resolve_image_size(data.get("image_size"), preferred)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (UserError, ValueError, TypeError, MisconfigurationException) as error:
            self.discard_unused_run_dir()
            missing = raised_within(error, MissingDownload)  # jsonargparse re-raises a class's error as ValueError
            if missing is not None:
                raise MissingDownload("; and ".join([str(missing), *self._missing_data()])) from None
            if isinstance(error, UserError):
                raise
            raise UserError(explain(error)) from None
        if self.config["fast_path"]:
            fastpath.install(self.trainer, self.model, self.datamodule)
        network = getattr(self.model, "network", None)
        if self.model.hparams.get("compile") and isinstance(network, torch.nn.Module):
            network.compile()  # --compile; unlike torch.compile(module), keeps the state_dict's keys

    def _missing_data(self) -> list[str]:
        """What the data set would download too (offline, the second missing file would come one run later)."""
        data = self.config["data"]
        try:
            data_class = import_class(data["class_path"], LightningDataModule, "--data")
            data_class(**dict(data.get("init_args") or {})).prepare_data()  # downloads what it can
        except UserError as error:
            return [str(error)]
        except (ValueError, TypeError) as error:  # its own arguments: reported as such once the model is there
            return [explain(error)]
        return []

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
        if resumed:  # before the loggers and the config are written: a failed resume leaves the run as it was
            check_resumable(self.model, resumed, self.ckpt_path)
            rundir.check_left_to_train(resumed, config["trainer"], self.run_dir)
            if rank_zero_only.rank == 0:
                print(f"resuming {escape_names(str(self.run_dir))} ({rundir.describe_checkpoint(resumed)})")
        if resumed and config.get("find_batch_size"):
            training_flags.restore_found_batch_size(self.datamodule, resumed)
        wandb_id = resumed.get(WANDB_RUN_ID_KEY) if config["logger"] == "wandb" else None
        kwargs["logger"] = make_loggers(config["logger"], self.run_dir, WandbOptions(**config["wandb"]), wandb_id)
        rundir.continue_metrics_log(kwargs["logger"], int(resumed.get("global_step", 0)))
        kwargs["default_root_dir"] = str(self.run_dir)
        kwargs["plugins"] = [AtomicCheckpointIO()]
        speed = fastpath.trainer_options(config["fast_path"], config["trainer"].get("enable_progress_bar") is not False)
        if config["trainer"].get("profiler") is None:
            kwargs["profiler"] = speed["profiler"]
        callbacks = list(self.config_init["trainer"].get("callbacks") or [])
        kwargs["callbacks"] = callbacks + self.default_callbacks(self.run_dir) + speed["callbacks"]
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
        the dashboard, the W&B hooks and the recipe's (EMA or SWA, the finders)."""
        accelerator = self.config["trainer"].get("accelerator")
        callbacks: list[Callback] = [
            *rundir.checkpoint_callbacks(run_dir / rundir.CHECKPOINTS),
            RNGStateCheckpoint(),
            NonFiniteLossCheck(),  # before GracefulInterrupt: a non-finite step must not be checkpointed
            # Before GracefulInterrupt: a step's weight average is updated before a stop saves it; before the
            # monitor: SWA sets the learning rate it logs.
            *training_flags.flag_callbacks(self.config, run_dir, self.ckpt_path is not None, uses_gpu(accelerator)),
            LearningRateMonitor(logging_interval="epoch"),
            GracefulInterrupt(),
            *wandb_callbacks(self.config["logger"], WandbOptions(**self.config["wandb"])),
        ]
        if self.config["dashboard_every"] > 0:
            callbacks.append(ClassificationDashboard(run_dir / "dashboard", self.config["dashboard_every"]))
        return callbacks


def _preprocessing(datamodule: LightningDataModule) -> dict[str, Any] | None:
    return datamodule.preprocessing() if hasattr(datamodule, "preprocessing") else None


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1].removesuffix("DataModule").lower()


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    compat.quiet_lightning_notices()
    own_modules_importable()
    cli: TemplateCLI | None = None
    try:
        cli = TemplateCLI(expand_args(rundir.slurm_job_args(argv)))  # a requeued SLURM job resumes
        summary = train(cli)
    except UserError as error:
        return _report(error, cli)
    except (MisconfigurationException, ValueError) as error:
        if not compat.lightning_refused_a_setting(error):
            raise  # a bug, in the model or here: the traceback is what its author needs
        # e.g. --trainer.limit_val_batches 0.01 of 50 batches, or a val_check_interval longer than the epoch
        return _report(UserError(" ".join(str(error).split())), cli)
    except (NonFiniteLossError, CheckpointWriteError) as error:  # not a usage mistake (2): the run itself failed
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ArgumentError as error:
        print(f"error: {explain(error)} (see --help)", file=sys.stderr)
        return 2
    except rundir.NothingToTrain as finished:  # not a mistake: the run is done, and stays as it is
        print(finished)
        return 0
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
