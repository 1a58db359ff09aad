"""The engine's data layer: what the data modules (``project.datamodules``) build on, and the names they may import.

Decoding any image file safely (:mod:`.images`), finding a folder's images (:mod:`.files`) and keeping what setup
learned of them (:mod:`.scan_cache`), loading files in workers (:mod:`.folder_loading`) with the presets' crops
(:mod:`.presets`), the prepared shards (:mod:`.shards`, :mod:`.streamed`), and the device-side batch: augmentation
(:mod:`.transforms`, :mod:`.mixing`) and the batch hooks (:mod:`.device_batches`). ``tests/test_recipe_side.py``
allows the recipe side the names of ``__all__`` here and of ``project.engine.api``, nothing else.
"""

from __future__ import annotations

from typing import Any

from project.engine.data import shards
from project.engine.data.device_batches import DeviceBatches
from project.engine.data.files import SPLITS, Item, Scan, carve, extension_counts, scan_folder
from project.engine.data.folder_loading import PresetImages, SkippedFiles, folder_loader
from project.engine.data.images import DEFAULT_MAX_IMAGE_PIXELS, NotAnImage, decode_files
from project.engine.data.mixing import AutoAugmentName, BatchMixing, PerImagePolicy
from project.engine.data.presets import PresetName, build_preset, preset_preprocessing
from project.engine.data.scan_cache import decode_or_reuse
from project.engine.data.transforms import BatchAugment, Normalize

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "SPLITS",
    "AutoAugmentName",
    "BatchAugment",
    "BatchMixing",
    "DeviceBatches",
    "Item",
    "Normalize",
    "NotAnImage",
    "PerImagePolicy",
    "PresetImages",
    "PresetName",
    "Scan",
    "ShardLoader",
    "SkippedFiles",
    "build_preset",
    "carve",
    "decode_files",
    "decode_or_reuse",
    "extension_counts",
    "folder_loader",
    "preset_preprocessing",
    "scan_folder",
    "shard_loader",
    "shards",
]

#: Imported on first use: LitData (a third of a second) only for runs that stream.
_STREAMED = ("ShardLoader", "shard_loader")


def __getattr__(name: str) -> Any:
    if name in _STREAMED:
        from project.engine.data import streamed

        return getattr(streamed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
