"""The fake data's bytes on disk: IDX files, CIFAR-10's Python 2 pickles, image files in any mode."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES: tuple[bytes, ...] = (
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
)


def _write_idx(path: Path, data: np.ndarray) -> None:
    """Write an uncompressed IDX file: big-endian magic 0x08 (unsigned byte) << 8 | ndim, dims, data."""
    header = struct.pack(f">I{data.ndim}I", 0x0800 | data.ndim, *data.shape)
    path.write_bytes(header + np.ascontiguousarray(data, dtype=np.uint8).tobytes())


def _cifar_batch(label: str, images: np.ndarray, labels: np.ndarray, first: int) -> dict[bytes, object]:
    names = [f"{CIFAR10_CLASSES[y].decode()}_s_{first + i:06d}.png".encode() for i, y in enumerate(labels)]
    return {
        b"batch_label": label.encode(),
        b"labels": [int(y) for y in labels],
        # (N, 3, 32, 32) in C order flattens to the R, G and B planes one after another, as in CIFAR-10.
        b"data": np.ascontiguousarray(images).reshape(len(images), 3 * 32 * 32),
        b"filenames": names,
    }


class _Py2Pickler(pickle._Pickler):
    """Pickles ``bytes`` as Python 2 ``str``, as the original CIFAR-10 files do.

    Python 3 pickles ``bytes`` as a call that always loads back as ``bytes``; a Python 2 ``str`` loads as
    ``bytes`` with ``encoding="bytes"`` and as ``str`` with ``encoding="latin1"`` (torchvision's choice).
    The C pickler cannot be told to do this, hence the pure-Python one.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump_py2(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _to_mode(rgb: np.ndarray, mode: str) -> Image.Image:
    """Convert an (H, W, 3) uint8 image to a PIL image of ``mode``."""
    image = Image.fromarray(rgb)
    if mode == "I;16":
        return Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE)
    if mode in ("RGB", "L", "RGBA"):
        return image.convert(mode)
    raise ValueError(f"unsupported image mode {mode!r}")


def _save_image(image: Image.Image, path: Path) -> Path:
    """Save ``image``, as PNG if its mode does not fit the format of ``path``; return the path used."""
    try:
        image.save(path)
    except OSError:
        path = path.with_suffix(".png")
        image.save(path)
    return path
