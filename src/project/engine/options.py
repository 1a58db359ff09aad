"""The rules every entry point shares, written once: is there a GPU, what ``--precision auto`` means, which
normalization ``auto`` picks, and how a class named in a config or a checkpoint is imported."""

from __future__ import annotations

import importlib
import math
import warnings
from typing import Any, TypeVar

import torch

from project.engine.errors import UserError

#: Mean and standard deviation of ImageNet's pixels in [0, 1], per RGB channel (what pretrained weights expect).
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: What Inception-style weights expect (torchvision's EfficientNetV2-L, many timm models): pixels mapped to [-1, 1].
INCEPTION_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
#: Keys LightningCLI adds to the saved hyperparameters of the classes it instantiates (not constructor arguments).
CLI_HPARAM_KEYS = ("_class_path", "_instantiator")
#: Model arguments the command line sets from the data module, not from options of their own.
FROM_THE_DATA = ("num_classes", "input_shape", "class_names", "preprocessing")

T = TypeVar("T")


def check_gpu(accelerator: str | None) -> None:
    """A one-line error for ``--accelerator gpu|cuda`` on a machine without a CUDA GPU."""
    if str(accelerator) in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"--accelerator {accelerator}: no CUDA GPU is available here; use --accelerator cpu or auto")


def uses_gpu(accelerator: str | None) -> bool:
    """Whether ``accelerator`` (``auto``, ``gpu``, ``cuda``, ``cpu``, ...) runs on a CUDA GPU here."""
    return torch.cuda.is_available() and str(accelerator or "auto") in ("auto", "gpu", "cuda")


def resolve_precision(precision: str | None, accelerator: str | None) -> str:
    """``auto`` (or ``None``): bf16 autocast on a GPU that supports it, full fp32 elsewhere (CPU autocast is slower)."""
    if precision not in (None, "auto", "null"):
        return str(precision)
    return "bf16-mixed" if uses_gpu(accelerator) and torch.cuda.is_bf16_supported() else "32-true"


def model_preprocessing(model_class: type, init_args: dict[str, Any]) -> dict[str, Any] | None:
    """The input size and normalization a model's pretrained weights expect, as its class declares them
    (``pretrained_preprocessing``, given its constructor arguments), or ``None``: the data set's own."""
    declare = getattr(model_class, "pretrained_preprocessing", None)
    return None if declare is None else declare(**constructor_args(init_args))


def resolve_normalize(normalize: str, preferred: dict[str, Any] | None) -> str:
    """``auto`` → the statistics a model's pretrained weights expect (``preferred``, from
    :func:`model_preprocessing`: ``imagenet``, or ``inception``'s 0.5), else the data set's own."""
    if normalize != "auto":
        return normalize
    if preferred is None:
        return "dataset"
    for name, stats in (("imagenet", IMAGENET_STATS), ("inception", INCEPTION_STATS)):
        pairs = zip([*stats[0], *stats[1]], [*preferred["mean"], *preferred["std"]], strict=True)
        if all(math.isclose(a, b, abs_tol=1e-3) for a, b in pairs):
            return name
    warnings.warn(f"no --data.normalize mode has the weights' statistics ({preferred}): using imagenet", stacklevel=2)
    return "imagenet"


def resolve_image_size(image_size: int | str | None, preferred: dict[str, Any] | None) -> int | str | None:
    """``auto`` → the input size a model's pretrained weights were trained at (``preferred``, from
    :func:`model_preprocessing`); without one, ``auto`` stays for the data module to read as its own size."""
    if image_size != "auto" or preferred is None:
        return image_size
    return int(preferred["image_size"])


def import_class(class_path: str, base: type[T], what: str) -> type[T]:
    """Import ``package.module.Class`` and check that it is a ``base``; ``what`` names it in the one-line error."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"{what} {class_path!r} cannot be imported (is its folder on PYTHONPATH?)") from None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise UserError(f"{what} {class_path!r} is not a {base.__name__}")
    return found


def constructor_args(hparams: dict[str, Any]) -> dict[str, Any]:
    """Saved hyperparameters without the keys LightningCLI adds: the arguments the class was built with."""
    return {key: value for key, value in hparams.items() if key not in CLI_HPARAM_KEYS}
