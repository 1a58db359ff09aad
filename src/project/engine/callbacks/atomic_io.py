"""Checkpoint writes that a crash cannot tear: write a temporary file, flush it to disk, rename it."""

from __future__ import annotations

import errno
import os
import tempfile
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from project.engine.errors import CheckpointWriteError


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, ``fsync``, then ``os.replace``.

    A ``kill -9`` at any moment leaves either the previous file or the new one, both whole. The file gets the mode
    ``torch.save`` to a plain path would give it (``0666 & ~umask``, e.g. 0644), not the temporary file's 0600, so
    teammates sharing a run directory can read it. A write the system refuses (a full disk, a quota, a file-size
    limit) raises :class:`CheckpointWriteError`, naming the file and the reason. Loading always uses
    ``weights_only=True``: a checkpoint can hold only tensors and plain values.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=directory)
        try:
            os.chmod(temporary, _new_file_mode())
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException as error:
            if os.path.exists(temporary):
                os.remove(temporary)
            refusal = _os_error(error)
            if refusal is None:
                raise
            raise CheckpointWriteError(_refused(os.fspath(path), refusal)) from error
        _fsync_directory(directory)

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        from project.engine.checkpoint import load_checkpoint_file

        if weights_only is False:
            raise ValueError("checkpoints are only ever loaded with weights_only=True")
        return load_checkpoint_file(path, map_location=map_location or "cpu")


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind ``error``: torch.save reports a failed write as a RuntimeError raised while handling it."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def _refused(path: str, error: OSError) -> str:
    """What failed and why, and what is still there: the files saved before (a failed write never touches them)."""
    code = f" ({errno.errorcode[error.errno]})" if error.errno in errno.errorcode else ""
    directory = os.path.dirname(os.path.abspath(path))
    saved = sorted(name for name in os.listdir(directory) if name.endswith(".ckpt") and not name.startswith("."))
    kept = f"the previous checkpoint(s) {', '.join(saved)} are intact" if saved else "no checkpoint was saved before"
    return f"cannot write checkpoint {path}: {error.strerror or error}{code}; {kept}"


def _new_file_mode() -> int:
    """``0666 & ~umask``: the mode ``open(path, "w")`` gives a new file. Reading the umask means setting it."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: str) -> None:
    # Makes the rename itself durable; not every file system allows opening a directory.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
