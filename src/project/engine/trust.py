"""What a checkpoint may make this program do: it is data from someone else, checked before any of it is used.

- **Class paths** (``_class_path`` of the model and the data module) are imported only from a module that is already
  imported, the project's own package, or one the user allows (``--allow_module``): checked *before* anything is
  imported, so no module's top-level code runs because a checkpoint names it.
- **Sizes**: the model its hyperparameters describe is first built on PyTorch's ``meta`` device (shapes, no
  memory), and refused when its weights would need more than ``--max_model_memory``.
- **Paths** in restored callback state (``ModelCheckpoint``'s best, last and k-th best files, its folder) must be
  on the local file system inside the run's ``checkpoints/``; any other is dropped with one warning, so that the
  next save never removes a file outside the run (Lightning removes the previous best/last file it restored).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from project.engine import compat
from project.engine.errors import UserError

T = TypeVar("T")

#: The packages whose classes a checkpoint may always name: the project's own.
PROJECT_PACKAGES = ("project",)
#: ``--max_model_memory``'s default: far above this template's models (ResNet-18: 45 MB), far below a machine's RAM.
DEFAULT_MAX_MODEL_MEMORY = "8GB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str, flag: str) -> int:
    """``"8GB"``, ``"500MB"``, ``"2GiB"``, ``"1000"`` (bytes) → bytes; ``flag`` names it in the one-line error."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS:
        raise UserError(f"{flag} {text!r}: not a size (e.g. 8GB, 500MB, 2GiB)")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class CheckpointLimits:
    """What a checkpoint may ask for: the modules its classes may come from and the memory its model may need."""

    allow_modules: tuple[str, ...] = ()
    max_model_bytes: int = parse_size(DEFAULT_MAX_MODEL_MEMORY, "--max_model_memory")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--allow_module`` and ``--max_model_memory``, for every entry point that reads a checkpoint."""
    parser.add_argument(
        "--allow_module",
        action="append",
        default=[],
        metavar="MODULE",
        help="A module (and its submodules) whose classes a checkpoint may name besides the project's own and those "
        "already imported (repeatable), e.g. my_models.",
    )
    parser.add_argument(
        "--max_model_memory",
        default=DEFAULT_MAX_MODEL_MEMORY,
        help="Refuse a checkpoint whose model's weights would need more memory than this (default "
        f"{DEFAULT_MAX_MODEL_MEMORY}).",
    )


def limits_from_args(args: argparse.Namespace) -> CheckpointLimits:
    return CheckpointLimits(tuple(args.allow_module), parse_size(args.max_model_memory, "--max_model_memory"))


def is_allowed_module(module_name: str, allow: Sequence[str]) -> bool:
    """Whether importing ``module_name`` runs no code the user has not chosen: it is imported already, or it is in
    (or under) the project's packages or ``allow``."""
    if module_name in sys.modules:
        return True
    return any(module_name == name or module_name.startswith(name + ".") for name in (*PROJECT_PACKAGES, *allow))


def check_class_path(class_path: str, what: str, limits: CheckpointLimits) -> None:
    """Refuse a class path from a checkpoint whose module is not allowed, before anything is imported."""
    module_name = class_path.rpartition(".")[0]
    if not module_name or not is_allowed_module(module_name, limits.allow_modules):
        raise UserError(
            f"{what} {class_path!r} is in module {module_name or '(none)'!r}, which is neither imported nor allowed: "
            f"a checkpoint may name only the project's classes; if you trust it, pass --allow_module {module_name}"
        )


def check_model_memory(build: Callable[[], torch.nn.Module], what: str, limits: CheckpointLimits) -> None:
    """Build the model on the ``meta`` device (shapes only, no memory) and refuse it when its parameters and buffers
    would need more than ``limits.max_model_bytes``."""
    with torch.device("meta"):
        model = build()
    tensors = [*model.parameters(), *model.buffers()]
    needed = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    if needed > limits.max_model_bytes:
        raise UserError(
            f"{what}: its model would need {needed / 1e9:.1f} GB for its weights, more than --max_model_memory "
            f"{limits.max_model_bytes / 1e9:.1f} GB; raise the limit only for a checkpoint you trust"
        )


# ---------------------------------------------------------------------------------------------- restored paths
def inside(path: Any, folder: Path) -> bool:
    """Whether ``path`` (a string from a checkpoint) names a local file that resolves inside ``folder``."""
    if not isinstance(path, (str, os.PathLike)) or "://" in os.fspath(path) or "\x00" in os.fspath(path):
        return False
    return Path(path).resolve().is_relative_to(folder.resolve())


def sanitize_restored_paths(checkpoint: dict[str, Any], folder: Path) -> list[str]:
    """Drop, in place, every path in ``checkpoint``'s callback states that is not :func:`inside` ``folder``; return
    the dropped ones. The fields are Lightning's ``ModelCheckpoint``'s (:data:`compat.CHECKPOINT_PATH_FIELDS`)."""
    dropped: list[str] = []
    for state in (checkpoint.get("callbacks") or {}).values():
        if not isinstance(state, dict):
            continue
        for key in compat.CHECKPOINT_PATH_FIELDS:
            value = state.get(key)
            if value and not inside(value, folder):
                dropped.append(str(value))
                state[key] = ""
        if state.get(compat.CHECKPOINT_DIR_FIELD) and not inside(state[compat.CHECKPOINT_DIR_FIELD], folder):
            # Without it, Lightning compares nothing and restores the (sanitized) fields into the callback's own folder.
            dropped.append(str(state.pop(compat.CHECKPOINT_DIR_FIELD)))
        top_k = state.get(compat.CHECKPOINT_TOP_K_FIELD)
        if isinstance(top_k, dict):
            for path in [path for path in top_k if not inside(path, folder)]:
                dropped.append(str(path))
                del top_k[path]
    return list(dict.fromkeys(dropped))


class RestoredPathsCheck(Callback):
    """Sanitizes the checkpoint a run resumes from before any callback restores its state from it (Lightning calls
    every callback's ``on_load_checkpoint`` before any ``load_state_dict``)."""

    def __init__(self, checkpoints: str | os.PathLike[str]) -> None:
        self.checkpoints = Path(checkpoints)

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        dropped = sanitize_restored_paths(checkpoint, self.checkpoints)
        if dropped:
            shown = ", ".join(repr(path) for path in dropped[:3]) + (" ..." if len(dropped) > 3 else "")
            rank_zero_warn(
                f"the checkpoint's saved callback state names {len(dropped)} path(s) outside this run's "
                f"{self.checkpoints}: {shown}; dropped (nothing outside the run is ever removed)"
            )
