"""Loading checkpoints safely: ``weights_only=True`` always, one clear error for every bad file."""

from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from project.errors import CheckpointError


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
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0] if "Weights only load failed" not in str(error) else ""
        detail = _unsafe_global(str(error)) or reason
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused: it holds objects other than tensors and plain values"
            f"{' (' + detail + ')' if detail else ''}; only load checkpoints you trust, re-saved as state dicts"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or not a PyTorch checkpoint ({first})") from None
    if not isinstance(loaded, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(loaded).__name__}, not a dict")
    return loaded


def _unsafe_global(message: str) -> str:
    for line in message.splitlines():
        if "Unsupported global" in line or "GLOBAL" in line:
            return line.strip().split(". ")[0]
    return ""


def load_model(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> L.LightningModule:
    """Rebuild the LightningModule saved in a checkpoint of this template, from the checkpoint alone."""
    checkpoint = load_checkpoint_file(path, map_location)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    class_path = hparams.pop("_class_path", None)
    hparams.pop("_instantiator", None)
    if "state_dict" not in checkpoint or not class_path:
        raise CheckpointError(f"checkpoint {str(path)!r} has no model class or weights: not written by this template?")
    model_class = _import_module_class(class_path, path)
    try:
        model = model_class(**hparams)
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {str(path)!r} does not match {class_path}: {first}") from None
    return model.eval()


def _import_module_class(class_path: str, path: str | os.PathLike[str]) -> type[L.LightningModule]:
    module_name, _, class_name = class_path.rpartition(".")
    try:
        model_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise CheckpointError(
            f"checkpoint {str(path)!r} names model {class_path!r}, which cannot be imported"
        ) from None
    if not (isinstance(model_class, type) and issubclass(model_class, L.LightningModule)):
        raise CheckpointError(f"checkpoint {str(path)!r} names {class_path!r}, which is not a LightningModule")
    return model_class
