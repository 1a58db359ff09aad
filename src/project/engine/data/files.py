"""Finding the images of a folder: the class folders, the split folders (train/val/test), the files to use
and those refused (hidden, not images, symlinks out of the root), and the seeded carve of the missing splits.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

import torch
from PIL import Image, ImageFile

from project.engine.api import DataError

#: Formats never read though Pillow has a plugin for them: EPS runs Ghostscript, and Pillow reads only the header of
#: an MPEG video. (Pillow's stub plugins, e.g. HDF5 and WMF, cannot decode and are left out as well.)
_REFUSED_FORMATS = frozenset(("EPS", "MPEG"))
SPLITS = ("train", "val", "test")
_VAL_FOLDERS = ("val", "valid", "validation")
_SPLIT_FOLDERS = frozenset(("train", "test", *_VAL_FOLDERS))

#: ``(path, label)`` of one image file.
Item = tuple[str, int]


@functools.cache
def image_extensions() -> dict[str, str]:
    """File name ending (lower case, e.g. ``.tif``) → format, for every format Pillow decodes here (JPEG, PNG, TIFF,
    BMP, GIF, WebP, AVIF, JPEG 2000, PSD, ...). Files with other endings are not read as images."""
    Image.init()  # registers every plugin
    formats = {
        name for name, (opener, _) in Image.OPEN.items() if name not in _REFUSED_FORMATS and not _is_stub(opener)
    }
    formats.add("MPO")  # multi-picture JPEG from cameras, opened by the JPEG plugin
    return {ext: name for ext, name in sorted(Image.registered_extensions().items()) if name in formats}


def is_image_name(name: str) -> bool:
    """Whether a file of this name is read as an image (by its extension, in any case)."""
    return os.path.splitext(name)[1].lower() in image_extensions()


def extension_counts(paths: Sequence[str | os.PathLike[str]]) -> str:
    """``.txt: 2, .csv: 1``: how many of ``paths`` have each extension, the most frequent first."""
    counts = Counter(os.path.splitext(path)[1].lower() or "no extension" for path in paths)
    return ", ".join(f"{ext}: {count}" for ext, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _is_stub(opener: object) -> bool:
    return inspect.isclass(opener) and issubclass(opener, ImageFile.StubImageFile)


class Scan(NamedTuple):
    """What :func:`scan_folder` found."""

    class_names: list[str]
    #: Split folder ("train", "val", "test") → sorted ``(path, label)``; only the splits that have a folder.
    items: dict[str, list[Item]]
    #: ``(path, reason)`` of symlinks refused because they leave the root.
    refused: list[tuple[str, str]]
    #: Files in the class folders not read for their extension (not a format Pillow reads), e.g. ``notes.txt``.
    skipped: list[str]


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _inside(path: str, root_real: str) -> bool:
    try:
        return os.path.commonpath([path, root_real]) == root_real
    except ValueError:  # different drives
        return False


def _leaves_root(entry: os.DirEntry[str], root_real: str, refused: list[tuple[str, str]]) -> bool:
    """Whether ``entry`` is a symlink that resolves outside the root; such entries are recorded as refused."""
    if not entry.is_symlink():
        return False
    target = os.path.realpath(entry.path)
    if _inside(target, root_real):
        return False
    refused.append((entry.path, f"symlink to {target}, outside the root: refused"))
    return True


def _folders(path: str, root_real: str, refused: list[tuple[str, str]]) -> dict[str, str]:
    """Visible sub-folders of ``path`` inside the root: name → path. Symlinks out of the root are refused."""
    folders = {}
    with os.scandir(path) as entries:
        for entry in entries:
            if _hidden(entry.name) or not entry.is_dir() or _leaves_root(entry, root_real, refused):
                continue
            folders[entry.name] = entry.path
    return folders


def _image_files(folder: str, root_real: str, refused: list[tuple[str, str]], skipped: list[str]) -> list[str]:
    """Image files under ``folder`` (recursively, following symlinks that stay inside the root), sorted; the other
    files are added to ``skipped``."""
    files: list[str] = []
    visited: set[str] = set()

    def walk(path: str) -> None:
        real = os.path.realpath(path)
        if real in visited:  # a symlink loop, or a folder linked twice
            return
        visited.add(real)
        with os.scandir(path) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if _hidden(entry.name):
                    continue
                is_dir = entry.is_dir()
                if not is_dir and not is_image_name(entry.name):
                    skipped.append(entry.path)
                    continue
                if _leaves_root(entry, root_real, refused):
                    continue
                if is_dir:
                    walk(entry.path)
                else:
                    files.append(entry.path)  # a broken symlink stays: decoding reports it

    walk(folder)
    return files


def scan_folder(root: str) -> Scan:
    """Find the layout, the classes and the image files under ``root``; raise DataError when malformed."""
    if not os.path.isdir(root):
        raise DataError(
            f"image folder {root} does not exist or is not a folder: pass --data.root DIR with images in "
            f"DIR/<class>/ (or DIR/train/<class>/)"
        )
    root_real = os.path.realpath(root)
    refused: list[tuple[str, str]] = []
    top = _folders(root, root_real, refused)
    split_names = _SPLIT_FOLDERS & top.keys()
    if split_names:
        others = sorted(top.keys() - _SPLIT_FOLDERS)
        if others:
            raise DataError(
                f"{root} mixes split folders {sorted(split_names)} with other folders {others}: put classes "
                f"either in {root}/<class>/ or in {root}/train/<class>/, not both"
            )
        if "train" not in top:
            raise DataError(f"{root} has split folders {sorted(split_names)} but no train folder")
        val = [name for name in _VAL_FOLDERS if name in top]
        if len(val) > 1:
            raise DataError(f"{root} has several validation folders {val}: keep one")
        split_dirs = {"train": top["train"]}
        if val:
            split_dirs["val"] = top[val[0]]
        if "test" in top:
            split_dirs["test"] = top["test"]
    else:
        split_dirs = {"train": root}
    class_dirs = {}
    for split, path in split_dirs.items():
        class_dirs[split] = _folders(path, root_real, refused)
        if not class_dirs[split]:
            loose = any(is_image_name(name) and not _hidden(name) for name in os.listdir(path))
            hint = " (its images must be in class sub-folders)" if loose else ""
            raise DataError(f"{path} has no class folders{hint}: expected {path}/<class>/*.jpg")
    class_names = sorted(class_dirs["train"])
    for split, folders in class_dirs.items():
        if split != "train" and sorted(folders) != class_names:
            unknown = sorted(folders.keys() - set(class_names))
            missing = sorted(set(class_names) - folders.keys())
            raise DataError(
                f"the class folders of {split_dirs[split]} differ from those of {split_dirs['train']}: "
                + "; ".join(
                    part
                    for part in (
                        f"unknown classes {unknown}" if unknown else "",
                        f"missing classes {missing}" if missing else "",
                    )
                    if part
                )
            )
    items = {}
    skipped: list[str] = []
    for split, folders in class_dirs.items():
        items[split] = []
        for label, name in enumerate(class_names):
            before = len(skipped)
            files = _image_files(folders[name], root_real, refused, skipped)
            if not files:
                others = f" ({len(skipped) - before} other file(s), e.g. {skipped[before]})" if skipped[before:] else ""
                raise DataError(
                    f"class folder {folders[name]} has no images{others}: add some (any format Pillow reads: "
                    f".jpg, .png, .tif, .webp, ...) or remove the folder"
                )
            items[split] += [(path, label) for path in files]
    return Scan(class_names, items, refused, skipped)


def carve(train: list[Item], fractions: dict[str, float], seed: int) -> dict[str, list[Item]]:
    """Split ``train`` per class into train and the ``fractions``' splits, seeded; keep a training image."""
    out: dict[str, list[Item]] = {"train": [], **{split: [] for split in fractions}}
    if not fractions:
        out["train"] = list(train)
        return out
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[Item]] = {}
    for item in train:
        by_class.setdefault(item[1], []).append(item)
    for label in sorted(by_class):
        group = by_class[label]
        order = torch.randperm(len(group), generator=generator).tolist()
        start = 0
        for split, fraction in fractions.items():
            count = min(int(len(group) * fraction + 0.5), len(group) - 1 - start)
            out[split] += [group[i] for i in sorted(order[start : start + count])]
            start += count
        out["train"] += [group[i] for i in sorted(order[start:])]
    return out
