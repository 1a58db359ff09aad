"""The engine's public API: every name the recipe side (models, data modules, callbacks) may import from the engine
(``tests/test_recipe_side.py`` fails on any other). :class:`Batch` is what every step receives; a model with
pretrained weights declares a :class:`Preprocessing`; raise :class:`UserError` or :class:`DataError` for the
user's mistakes (one line, exit code 2); the loaders resume exactly mid-epoch; :func:`load_checkpoint_file` loads
safely (``weights_only=True``); :func:`optimizer_steps_per_epoch` is how often Lightning steps the optimizer.
"""

from __future__ import annotations

from typing import NamedTuple, TypedDict

from torch import Tensor

from project.engine.checkpoint import load_checkpoint_file
from project.engine.compat import allow_plain_http_endpoint, optimizer_steps_per_epoch
from project.engine.errors import DataError, MissingDownload, UserError, first_line
from project.engine.filenames import escape_name
from project.engine.loaders import EpochSeededSampler, InMemoryLoader, ResumableDataLoader, loader_seed
from project.engine.options import IMAGENET_STATS, INCEPTION_STATS
from project.engine.workers import DEFAULT_TIMEOUT as DEFAULT_LOADER_TIMEOUT
from project.engine.workers import BoundedWait, worker_options

__all__ = [
    "IMAGENET_STATS",
    "INCEPTION_STATS",
    "Batch",
    "BoundedWait",
    "DEFAULT_LOADER_TIMEOUT",
    "DataError",
    "MissingDownload",
    "EpochSeededSampler",
    "InMemoryLoader",
    "Preprocessing",
    "ResumableDataLoader",
    "UserError",
    "allow_plain_http_endpoint",
    "escape_name",
    "first_line",
    "load_checkpoint_file",
    "loader_seed",
    "optimizer_steps_per_epoch",
    "worker_options",
]


class Batch(NamedTuple):
    """One batch on the device, ready for the network: what every step receives.

    ``targets`` is what the loss takes: the class indices ``(N,)``, or class probabilities ``(N, num_classes)``
    when MixUp/CutMix mixed the batch. ``labels`` are always the class indices, for the accuracy.
    """

    images: Tensor  #: ``(N, C, H, W)`` floats, normalized, in the network's memory layout
    targets: Tensor
    labels: Tensor

    @classmethod
    def of(cls, images: Tensor, labels: Tensor) -> Batch:
        """A batch whose targets are its labels (no mixing)."""
        return cls(images, labels, labels)


class Preprocessing(TypedDict):
    """The input a model's pretrained weights expect: square ``image_size`` pixels, per-channel ``mean``/``std`` of
    pixels in [0, 1]. The command line turns ``--data.image_size auto`` and ``--data.normalize auto`` into these."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
