"""The rules every entry point shares, written once: is there a GPU, what ``--precision auto`` means, which
normalization ``auto`` picks, and how a class named in a config or a checkpoint is imported."""

from __future__ import annotations

import importlib
import math
import warnings
from typing import Any, TypeVar

import torch

from project.errors import UserError

#: Mean and standard deviation of ImageNet's pixels in [0, 1], per RGB channel (what pretrained weights expect).
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: What Inception-style weights expect (torchvision's EfficientNetV2-L, many timm models): pixels mapped to [-1, 1].
INCEPTION_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
#: Keys LightningCLI adds to the saved hyperparameters of the classes it instantiates (not constructor arguments).
CLI_HPARAM_KEYS = ("_class_path", "_instantiator")

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


def resolve_normalize(normalize: str, model_args: dict[str, Any]) -> str:
    """``auto`` → the statistics a model's pretrained ``weights`` expect (``imagenet``, or ``inception``'s 0.5 for
    the backbones trained so, from their weights' transforms), else the data set's own."""
    if normalize != "auto":
        return normalize
    preferred = pretrained_preprocessing(model_args)
    if preferred is None:
        return "dataset"
    for name, stats in (("imagenet", IMAGENET_STATS), ("inception", INCEPTION_STATS)):
        pairs = zip([*stats[0], *stats[1]], [*preferred["mean"], *preferred["std"]], strict=True)
        if all(math.isclose(a, b, abs_tol=1e-3) for a, b in pairs):
            return name
    warnings.warn(f"no --data.normalize mode has the weights' statistics ({preferred}): using imagenet", stacklevel=2)
    return "imagenet"


def resolve_image_size(image_size: int | str | None, model_args: dict[str, Any]) -> int | None:
    """``auto`` → the input size a model's pretrained ``weights`` were trained at (224 for most), else the data's."""
    if image_size != "auto":
        return image_size  # type: ignore[return-value]
    preferred = pretrained_preprocessing(model_args)
    return None if preferred is None else int(preferred["image_size"])


def pretrained_preprocessing(model_args: dict[str, Any]) -> dict[str, Any] | None:
    """Input size, mean and std of a model's pretrained weights, or ``None`` without (``weights: none``)."""
    weights = str(model_args.get("weights", "none")).lower()
    if weights == "none":
        return None
    from project.models.backbones import preferred_preprocessing  # the models import this module

    return preferred_preprocessing(str(model_args.get("backbone") or "resnet18"))


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
