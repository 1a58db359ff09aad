"""Loading checkpoints safely: ``weights_only=True`` always, one clear error for every bad file."""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from project.engine import trust
from project.engine.errors import CheckpointError, UserError, first_line
from project.engine.options import FROM_THE_DATA, constructor_args, import_class
from project.engine.trust import CheckpointLimits


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


#: An argument one side does not have (told apart from one set to None).
_UNSET = object()


def check_resumable(model: L.LightningModule, checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Refuse to resume ``checkpoint`` (read from ``path``) into a ``model`` its weights do not fit, naming the
    model arguments that differ from the saved ones: Lightning finds out only in ``load_state_dict``, with a
    traceback, after the run's config and logs were rewritten. Called before anything is written."""
    saved = checkpoint.get("state_dict")
    if not isinstance(saved, dict):
        return  # not a training checkpoint: Lightning's restore says so
    current = model.state_dict()
    keys = [] if model.strict_loading is False else sorted(current.keys() ^ saved.keys())
    shapes = [key for key in sorted(current.keys() & saved.keys()) if current[key].shape != saved[key].shape]
    if not keys and not shapes:
        return
    hparams = checkpoint.get("hyper_parameters") or {}
    differences = [_difference(key, value, saved_value) for key, value, saved_value in _changed(model, hparams)]
    if not differences:  # the network changed though its arguments did not: say where
        key = (shapes or keys)[0]
        differences = [
            f"{key} has shape {tuple(current[key].shape)} now, {tuple(saved[key].shape)} in the checkpoint"
            if key in shapes
            else f"the weight {key} is only in {'the checkpoint' if key in saved else 'the model'}"
        ]
    raise UserError(
        f"cannot resume from {path}: the network configured now does not fit its weights: {'; '.join(differences)}. "
        "Resume without changing the network, or start a new run"
    )


def _changed(model: L.LightningModule, hparams: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(argument, value now, saved value)`` of the model's arguments that differ from the checkpoint's."""
    saved_class, current_class = str(hparams.get("_class_path", "")), type(model).__name__
    changed = []
    if saved_class and saved_class.rsplit(".", 1)[-1] != current_class:
        changed.append(("", current_class, saved_class.rsplit(".", 1)[-1]))
    given, saved = constructor_args(dict(model.hparams)), constructor_args(hparams)
    for key in sorted(given.keys() | saved.keys()):
        value, saved_value = given.get(key, _UNSET), saved.get(key, _UNSET)
        if _plain(value) != _plain(saved_value):
            changed.append((key, value, saved_value))
    return changed


def _difference(key: str, value: Any, saved: Any) -> str:
    option = "--model" if not key else f"{key} (from the data)" if key in FROM_THE_DATA else f"--model.{key}"
    return f"{option} is {_short(value)} now, {_short(saved)} in the checkpoint"


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: a config gives lists where the checkpoint may hold tuples."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _short(value: Any) -> str:
    text = "not set" if value is _UNSET else str(_plain(value))
    return text if len(text) <= 60 else text[:57] + "..."


def load_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", limits: CheckpointLimits | None = None
) -> L.LightningModule:
    """Rebuild the LightningModule saved in a checkpoint of this template, from the checkpoint alone, within
    ``limits`` (:mod:`project.engine.trust`: the modules its class may come from, the memory its model may need)."""
    return model_from_checkpoint(load_checkpoint_file(path, map_location), path, limits)


def model_from_checkpoint(
    checkpoint: dict[str, Any], path: str | os.PathLike[str], limits: CheckpointLimits | None = None
) -> L.LightningModule:
    """:func:`load_model` for a checkpoint already read with :func:`load_checkpoint_file` from ``path``."""
    hparams = checkpoint.get("hyper_parameters") or {}
    class_path = hparams.get("_class_path")
    if "state_dict" not in checkpoint or not class_path:
        raise CheckpointError(f"checkpoint {str(path)!r} has no model class or weights: not written by this template?")
    model = rebuild_model(class_path, hparams, path, limits)
    try:
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match {class_path}: {first_line(error)}") from None
    return model.eval()


def rebuild_model(
    class_path: str, hparams: dict[str, Any], path: str | os.PathLike[str], limits: CheckpointLimits | None = None
) -> L.LightningModule:
    """The model ``class_path`` names, built from its saved ``hparams`` to receive saved weights (from ``path``).

    Both come from the file, so both are checked first (:mod:`project.engine.trust`, within ``limits``): the class's
    module before it is imported, the memory of its weights on the ``meta`` device before it is built.

    The class's ``restore_overrides`` (e.g. ResNet's ``{"weights": "none"}``) replace the matching arguments for
    the build, so that nothing the saved weights replace is read (no ImageNet file, offline); the saved values are
    put back afterwards, so the model still describes itself as trained (``hparams.weights == "imagenet"``).
    """
    limits = limits or CheckpointLimits()
    try:
        trust.check_class_path(str(class_path), "model class", limits)
        model_class = import_class(class_path, L.LightningModule, "model class")
    except UserError as error:
        raise CheckpointError(f"checkpoint {str(path)!r}: {error}") from None
    saved = constructor_args(hparams)
    arguments = {**saved, **getattr(model_class, "restore_overrides", {})}
    try:
        trust.check_model_memory(lambda: model_class(**arguments), f"checkpoint {str(path)!r}", limits)
        model = model_class(**arguments)
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} does not match {class_path}: {first_line(error)}") from None
    model.hparams.update(saved)
    return model


#: The name of the metadata file inside exported ``.pt2`` and TorchScript archives (``export.py``).
METADATA_FILE = "metadata.json"


def load_exported(path: str | Path) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """A ``.pt2`` file written by :func:`export_program` and its decoded metadata."""
    files = {METADATA_FILE: ""}
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: does not exist")
    if not zipfile.is_zipfile(path):  # checked first: torch.export.load logs a traceback-like warning for it
        raise CheckpointError(f"{path}: not a torch.export program (not a zip archive)")
    try:
        program = torch.export.load(str(path), extra_files=files)
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: not a torch.export program ({first_line(error)})") from None
    if not files[METADATA_FILE]:
        raise CheckpointError(f"{path}: not exported by this template (no {METADATA_FILE})")
    return program, decode_metadata(json.loads(files[METADATA_FILE]))


def decode_metadata(raw: dict[str, str]) -> dict[str, Any]:
    """:func:`metadata` as stored (JSON strings) back to values."""
    return {key: value if key in ("model_class", "output") else json.loads(value) for key, value in raw.items()}
