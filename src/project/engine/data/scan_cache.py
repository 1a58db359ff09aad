"""What decoding a folder's files once learned, kept between runs while the files are unchanged.

Without the in-memory cache, the folder data module decodes every file at setup only to learn which are usable
(and why the others are not) and the training images' pixel histogram (the data set's statistics); the images are
decoded again in ``DataLoader`` workers. On ImageNet's 1.28 M files that first pass takes many minutes, every run.
:func:`decode_or_reuse` keeps its result in ``$PROJECT_CACHE_DIR`` (default ``~/.cache/project``; never in the data
root, which may be read-only), under a key made of the files' paths, sizes and modification times and the decoding
options: a later run with the same files reads it back instead (``os.stat`` per file, no decoding).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from project.engine.api import UserError, load_checkpoint_file
from project.engine.data.images import Decoded, decode_files

#: Bumped when what is kept, or how files are judged, changes: older entries are then not read.
FORMAT = 1


def cache_root() -> Path:
    """What the template keeps between runs (folder scans, streamed shards): ``$PROJECT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/project``, else ``~/.cache/project``."""
    root = os.environ.get("PROJECT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "project"
    )
    return Path(root)


def cache_dir() -> Path:
    """The folder scans' part of :func:`cache_root`."""
    return cache_root() / "folder-scans"


def scan_key(paths: Sequence[str], channels: int, size: int, max_pixels: int, histogram: bool) -> str:
    """A digest of the files (path, size, modification time) and of the options they were decoded with."""
    digest = hashlib.sha256(json.dumps([FORMAT, channels, size, max_pixels, histogram]).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(os.fsencode(path) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def decode_or_reuse(
    paths: Sequence[str], channels: int, size: int, max_pixels: int, histogram: bool, num_workers: int
) -> Decoded:
    """:func:`~project.engine.data.images.decode_files` without keeping the images, or what it found for the same
    files before."""
    try:
        entry = cache_dir() / f"{scan_key(paths, channels, size, max_pixels, histogram)}.pt"
    except OSError:  # a file vanished since the scan: decoding reports it
        entry = None
    if entry is not None and entry.is_file():
        try:
            saved = load_checkpoint_file(entry)  # weights_only, any damage one UserError
            return Decoded(None, list(saved["good"]), saved["histogram"], [tuple(bad) for bad in saved["bad"]])
        except (UserError, KeyError, TypeError) as error:
            rank_zero_warn(f"decoding the images again: the kept scan {entry} cannot be read ({error})")
    decoded = decode_files(paths, channels, size, max_pixels, False, histogram, num_workers)
    if entry is not None:
        _keep(entry, decoded)
    return decoded


def _keep(entry: Path, decoded: Decoded) -> None:
    saved = {"good": decoded.good, "histogram": decoded.histogram, "bad": [list(bad) for bad in decoded.bad]}
    temporary = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        torch.save(saved, temporary)
        os.replace(temporary, entry)  # whole or not at all, also with several processes
    except OSError as error:
        if temporary.exists():
            temporary.unlink()
        rank_zero_warn(f"the folder scan is not kept for the next run: cannot write {entry} ({error.strerror})")
