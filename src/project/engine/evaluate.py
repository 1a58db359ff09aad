"""Evaluate a checkpoint on a test set: ``python scripts/evaluate.py --ckpt runs/<run>/checkpoints/best.ckpt``.

The checkpoint alone is enough: it holds the model's class and hyperparameters (class names, preprocessing) and
the data module's class and arguments, as the training run configured them. Testing the ``best.ckpt`` of a run
therefore repeats the run's own test: the same ``test_acc`` and ``test_loss`` as its ``summary.json``.
``--data NAME|CLASS_PATH|FILE.yaml`` and ``--data.KEY VALUE`` evaluate on other data (e.g. ``--data.root DIR``).

The metrics are printed and written to ``<run>/eval/eval.json`` (or ``--output FILE``), with the classification
dashboard (confusion matrix, per-class scores, worst predictions) next to it under ``test/``.

Under torchrun (one node or several) each process tests its own share of the test set and global rank 0 writes
and prints the synchronized results, the same as one process's (:mod:`project.engine.distributed_eval`).
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException

from project.engine import distributed_eval, fastpath, trust
from project.engine.callbacks.dashboard import ClassificationDashboard
from project.engine.checkpoint import load_checkpoint_file, model_from_checkpoint
from project.engine.configs import named_data_config, parse_overrides
from project.engine.entrypoint import CKPT_HELP, ArgumentParser, checkpoint_run_dir, run_main
from project.engine.errors import UserError, first_line
from project.engine.filenames import escape_name, escape_names
from project.engine.options import (
    check_gpu,
    constructor_args,
    import_class,
    model_preprocessing,
    resolve_normalize,
    resolve_precision,
)
from project.engine.trust import CheckpointLimits


# ---------------------------------------------------------------------------------------------- the data
def data_config(
    checkpoint: dict[str, Any],
    data: str | None = None,
    overrides: dict[str, Any] | None = None,
    limits: CheckpointLimits | None = None,
) -> tuple[str, dict[str, Any]]:
    """``(class_path, init_args)`` of the data module: the checkpoint's (its module checked against ``limits``
    before anything imports it), or ``data``'s, updated by ``overrides``."""
    if data is None:
        saved = checkpoint.get("datamodule_hyper_parameters") or {}
        class_path = saved.get("_class_path")
        if not class_path:
            raise UserError("the checkpoint holds no data module configuration: pass --data NAME or CLASS_PATH")
        trust.check_class_path(str(class_path), "the checkpoint's data module", limits or CheckpointLimits())
        init_args = constructor_args(saved)
    else:
        class_path, init_args = named_data_config(data)
    return class_path, {**init_args, **(overrides or {})}


def make_datamodule(
    class_path: str, init_args: dict[str, Any], model: L.LightningModule
) -> tuple[L.LightningDataModule, dict[str, Any]]:
    """The data module ``class_path`` with ``init_args``, and the arguments it got; one-line errors for mistakes.

    ``normalize="auto"`` (or unset) is resolved for the model, as training resolved it: ImageNet statistics for
    a model with pretrained weights (e.g. a ResNet), else the data set's own.
    """
    data_class = import_class(class_path, L.LightningDataModule, "data module")
    # An image data module (it has ``normalization``), or one that takes a ``normalize`` argument.
    if hasattr(data_class, "normalization") or "normalize" in inspect.signature(data_class).parameters:
        preferred = model_preprocessing(type(model), dict(model.hparams))
        normalize = resolve_normalize(init_args.get("normalize", "auto"), preferred)
        init_args = {**init_args, "normalize": normalize}
    try:
        return data_class(**init_args), init_args
    except (TypeError, ValueError) as error:
        raise UserError(f"--data {class_path}: {first_line(error)}") from None


def _check_compatible(model: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """The model can only be scored on data with its input shape and its classes, in its order."""
    hparams = model.hparams
    shape = tuple(getattr(datamodule, "input_shape", ()) or ())
    if shape and tuple(hparams.input_shape) != shape:
        raise UserError(
            f"the data gives {shape} inputs but the model expects {tuple(hparams.input_shape)}: "
            f"set --data.image_size (and the channels) to match"
        )
    names = getattr(datamodule, "class_names", None)
    if names is not None and hparams.get("class_names") and list(names) != list(hparams.class_names):
        raise UserError(f"the data's classes {list(names)} are not the model's {list(hparams.class_names)}")


# ---------------------------------------------------------------------------------------------- evaluating
def evaluate(
    checkpoint: str | Path,
    data: str | None = None,
    overrides: dict[str, Any] | None = None,
    accelerator: str = "auto",
    precision: str = "auto",
    output: str | Path | None = None,
    limits: CheckpointLimits | None = None,
) -> dict[str, Any]:
    """Test ``checkpoint`` on its data (or ``data``); write and return the result (``test_acc``, ``test_loss``).
    What the checkpoint may ask for is bounded by ``limits`` (:mod:`project.engine.trust`)."""
    saved = load_checkpoint_file(checkpoint)
    class_path, init_args = data_config(saved, data, overrides, limits)
    model = model_from_checkpoint(saved, checkpoint, limits)  # the file is read once
    datamodule, init_args = make_datamodule(class_path, init_args, model)
    _check_compatible(model, datamodule)
    output = Path(output) if output else checkpoint_run_dir(checkpoint) / "eval" / "eval.json"
    speed = fastpath.trainer_options(progress_bar=sys.stdout.isatty())
    try:
        trainer = L.Trainer(
            accelerator=accelerator,
            **distributed_eval.trainer_options(),
            precision=resolve_precision(precision, accelerator),
            logger=False,
            profiler=speed["profiler"],
            callbacks=[ClassificationDashboard(output.parent), *speed["callbacks"]],
            enable_progress_bar=sys.stdout.isatty(),
            enable_model_summary=False,
            enable_checkpointing=False,
            default_root_dir=output.parent,
        )
    except (MisconfigurationException, ValueError) as error:
        raise UserError(first_line(error)) from None
    fastpath.install(trainer, model, datamodule)
    distributed_eval.distribute(trainer, datamodule)
    metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    result = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "data": class_path,
        "data_args": init_args,
        "test_acc": float(metrics["test/acc"]),
        "test_loss": float(metrics["test/loss"]),
        "metrics": {key: float(value) for key, value in metrics.items()},
        "dashboard": str(output.parent / "test"),
        "output": str(output),
    }
    if trainer.is_global_zero:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(escape_names(result), indent=2, default=str) + "\n", encoding="utf-8")
        _warn_if_preprocessing_differs(model, datamodule)
    return result


def _warn_if_preprocessing_differs(model: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    # e.g. a folder data set normalized with its own statistics: the model saw other inputs in training.
    preprocessing = getattr(datamodule, "preprocessing", None)
    expected = model.hparams.get("preprocessing")
    if callable(preprocessing) and expected and preprocessing() != expected:
        print(
            f"warning: the data was preprocessed as {preprocessing()}, the model was trained on {expected}",
            file=sys.stderr,
        )


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="evaluate.py",
        description="Test a checkpoint on its data set (or another); write eval.json and the dashboard.",
        epilog="Any --data.KEY VALUE sets an argument of the data module, e.g. --data.root DIR --data.batch_size 256.",
    )
    parser.add_argument("--ckpt", required=True, help=CKPT_HELP)
    parser.add_argument("--data", help="Data set: a short name (mnist, cifar10, folder), class path or YAML file.")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, gpu, mps (default: auto).")
    parser.add_argument(
        "--precision", default="auto", help="Lightning precision; auto (default) is the training default."
    )
    parser.add_argument("--output", help="Where to write eval.json (default: <run>/eval/eval.json).")
    trust.add_arguments(parser)
    return parser


def _main(argv: list[str]) -> int:
    args, rest = build_parser().parse_known_args(argv)
    overrides = parse_overrides(rest)
    check_gpu(args.accelerator)
    limits = trust.limits_from_args(args)
    result = evaluate(args.ckpt, args.data, overrides, args.accelerator, args.precision, args.output, limits)
    if distributed_eval.is_global_zero():
        print(
            f"test acc {100 * result['test_acc']:.2f}% | test loss {result['test_loss']:.4f} | data {result['data']}\n"
            f"written: {escape_name(result['output'])} and the dashboard in {escape_name(result['dashboard'])}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/evaluate.py``: returns the exit code (2 for user mistakes, with one ``error:`` line)."""
    return run_main(_main, argv)
