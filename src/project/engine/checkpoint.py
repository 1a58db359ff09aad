"""Loading checkpoints safely: ``weights_only=True`` always, one clear error for every bad file."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch

from project.engine.errors import CheckpointError, UserError, first_line
from project.engine.options import constructor_args, import_class


def load_checkpoint_file(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``, with a one-line :class:`CheckpointError` for bad files.

    ``weights_only=True`` refuses anything but tensors and plain containers, so a file that would run code when
    unpickled is rejected before any of it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): the write was interrupted?")
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as error:  # a damaged file fails in many ways (RuntimeError, EOFError, KeyError...)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if isinstance(error, pickle.UnpicklingError) and unsafe:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was refused: loading it would import {unsafe.group(1)}, and a checkpoint may"
                " hold only tensors and plain values; load only checkpoints you trust, re-saved as state dicts"
            ) from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated, corrupt or not a PyTorch checkpoint ({_reason(error)})"
        ) from None
    if not isinstance(loaded, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(loaded).__name__}, not a dict")
    return loaded


def _reason(error: BaseException) -> str:
    """The informative part of torch's many-line errors, e.g. ``Unsupported operand 53``, as one short line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            detail = line.partition("WeightsUnpickler error:")[2].strip()
            lines = [detail] if detail else lines[index + 1 :]
            break
    reason = lines[0].split(". ")[0] if lines else ""
    return f"{type(error).__name__}: {reason}" if reason else type(error).__name__


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> L.LightningModule:
    """Rebuild the LightningModule saved in a checkpoint of this template, from the checkpoint alone."""
    return model_from_checkpoint(load_checkpoint_file(path, map_location), path)


def model_from_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> L.LightningModule:
    """:func:`load_model` for a checkpoint already read with :func:`load_checkpoint_file` from ``path``."""
    hparams = checkpoint.get("hyper_parameters") or {}
    class_path = hparams.get("_class_path")
    if "state_dict" not in checkpoint or not class_path:
        raise CheckpointError(f"checkpoint {str(path)!r} has no model class or weights: not written by this template?")
    model = rebuild_model(class_path, hparams, path)
    try:
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match {class_path}: {first_line(error)}") from None
    return model.eval()


def rebuild_model(class_path: str, hparams: dict[str, Any], path: str | os.PathLike[str]) -> L.LightningModule:
    """The model ``class_path`` names, built from its saved ``hparams`` to receive saved weights (from ``path``).

    The class's ``restore_overrides`` (e.g. ResNet's ``{"weights": "none"}``) replace the matching arguments for
    the build, so that nothing the saved weights replace is read (no ImageNet file, offline); the saved values are
    put back afterwards, so the model still describes itself as trained (``hparams.weights == "imagenet"``).
    """
    try:
        model_class = import_class(class_path, L.LightningModule, "model class")
    except UserError as error:
        raise CheckpointError(f"checkpoint {str(path)!r}: {error}") from None
    saved = constructor_args(hparams)
    try:
        model = model_class(**{**saved, **getattr(model_class, "restore_overrides", {})})
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match {class_path}: {first_line(error)}") from None
    model.hparams.update(saved)
    return model
