"""FolderDataModule's layouts and splits, the image formats it reads, and folders it refuses or ignores."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from folder_helpers import SIZE, _folder, _module, _rgb, _save, _setup_warnings
from PIL import Image

from project.engine.errors import DataError


def _names(items: list[tuple[str, int]]) -> set[str]:
    return {os.path.basename(path) for path, _ in items}


# ---------------------------------------------------------------------- layouts and splits
def test_flat_layout_classes_and_stratified_split(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    dm = _module(root)
    assert dm.class_names == ["cat", "dog", "frog"]  # before setup: a listing only
    assert dm.num_classes == 3 and dm.input_shape == dm.native_shape == (3, SIZE, SIZE)
    files = dm.splits_files()
    assert {split: len(items) for split, items in files.items()} == {"train": 24, "val": 3, "test": 3}
    for split in ("val", "test"):  # stratified: one image of each class
        assert sorted(label for _, label in files[split]) == [0, 1, 2]
    everything = [_names(items) for items in files.values()]
    assert set.union(*everything) == {p.name for p in root.rglob("*.*")}
    assert sum(map(len, everything)) == 30  # disjoint


def test_split_layout_uses_the_folders(tmp_path: Path) -> None:
    root = _folder(tmp_path, layout="split", split_counts=(6, 2, 3))
    dm = _module(root)
    assert dm.class_names == ["cat", "dog", "frog"]
    files = dm.splits_files()
    for split, per_class in (("train", 6), ("val", 2), ("test", 3)):
        assert len(files[split]) == 3 * per_class
        assert all(f"{os.sep}{split}{os.sep}" in path for path, _ in files[split])
    dm.setup("fit")
    assert len(dm.splits["val"][1]) == 6 and len(dm.splits["test"][1]) == 9


def test_split_layout_carves_a_missing_val_folder(tmp_path: Path) -> None:
    root = _folder(tmp_path, layout="split", split_counts=(10, 2, 2))
    shutil.rmtree(root / "val")
    files = _module(root, val_size=0.2).splits_files()
    assert len(files["train"]) == 24 and len(files["val"]) == 6 and len(files["test"]) == 6
    assert all(f"{os.sep}train{os.sep}" in path for path, _ in files["val"])


def test_split_layout_with_an_unknown_class_is_an_error(tmp_path: Path) -> None:
    root = _folder(tmp_path, layout="split", split_counts=(4, 1, 1))
    shutil.copytree(root / "val" / "cat", root / "val" / "zebra")
    with pytest.raises(DataError, match=r"unknown classes \['zebra'\]"):
        _ = _module(root).class_names


def test_split_is_deterministic_and_follows_the_seed(tmp_path: Path) -> None:
    root = _folder(tmp_path, per_class=20)
    first, again = _module(root).splits_files(), _module(root).splits_files()
    assert first == again
    other = _module(root, split_seed=1).splits_files()
    assert _names(other["val"]) != _names(first["val"])
    assert len(other["val"]) == len(first["val"])


def test_extensions_in_any_case_and_more_formats(tmp_path: Path) -> None:
    noise = _rgb(SIZE, SIZE)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    # Lossy formats are checked on a smooth image: on noise their error is as large as the pixels themselves.
    smooth = np.stack([x * 8 + 20, y * 8 + 20, 200 - (x + y) * 4], axis=-1).astype(np.uint8)
    palette = _rgb(256, 1, seed=1)[:, 0]
    indices = np.random.default_rng(2).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    gif = Image.fromarray(indices, mode="P")
    gif.putpalette(palette.tobytes())
    files = {  # name: (image, save options, the pixels it must decode to, lossless)
        "a.JPG": (Image.fromarray(smooth), {}, smooth, False),
        "b.Png": (Image.fromarray(noise), {}, noise, True),
        "c.jpeg": (Image.fromarray(smooth), {}, smooth, False),
        "d.bmp": (Image.fromarray(noise), {}, noise, True),
        "e.gif": (gif, {}, palette[indices], True),
        "f.webp": (Image.fromarray(noise), {"lossless": True}, noise, True),
        "g.webp": (Image.fromarray(smooth), {}, smooth, False),
        "h.TIF": (Image.fromarray(noise), {}, noise, True),
    }
    root = tmp_path / "images"
    for folder in ("only", "other"):
        (root / folder).mkdir(parents=True)
        for name, (image, options, _, _) in files.items():
            image.save(root / folder / name, **options)  # PIL picks the format from the extension
    (root / "only" / "notes.txt").write_text("not an image: not read, and counted")
    dm = _module(root, val_size=0.0, test_size=0.0)
    (notice,) = _setup_warnings(dm)
    assert notice.startswith("not reading 1 file(s)") and "(.txt: 1;" in notice
    images, labels = dm.splits["train"]
    assert images.shape == (16, 3, SIZE, SIZE) and labels.tolist() == [0] * 8 + [1] * 8
    for image, (name, (_, _, source, lossless)) in zip(images, [*files.items()] * 2, strict=True):
        error = (image.permute(1, 2, 0).int() - torch.from_numpy(source).int()).abs().float()
        worst, mean = float(error.max()), float(error.mean())
        if lossless:
            assert worst == 0, name
        else:  # JPEG and WebP at PIL's default quality: within 16 levels everywhere, 4 on average
            assert worst <= 16 and mean <= 4, (name, worst, mean)


# ---------------------------------------------------------------------- bad folders
def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'} does not exist"):
        _ = _module(tmp_path / "nowhere").class_names


def test_root_without_class_folders_is_an_error(tmp_path: Path) -> None:
    _save(Image.fromarray(_rgb()), tmp_path / "images" / "loose.png")
    with pytest.raises(DataError, match="has no class folders .its images must be in class sub-folders"):
        _ = _module(tmp_path / "images").class_names


def test_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    (root / "empty").mkdir()
    (root / "empty" / ".DS_Store").write_bytes(b"\0\0")
    with pytest.raises(DataError, match=f"class folder {root / 'empty'} has no images"):
        _ = _module(root).class_names


def test_hidden_files_and_folders_are_ignored(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    (root / ".DS_Store").write_bytes(b"\0\1\2")
    (root / "cat" / "._cat_0.jpg").write_bytes(b"AppleDouble junk")
    (root / "cat" / ".hidden.png").write_bytes(b"")
    shutil.copytree(root / "dog", root / "cat" / ".ipynb_checkpoints")
    shutil.copytree(root / "dog", root / ".trash")
    shutil.copytree(root / "dog", root / "__MACOSX")
    dm = _module(root)
    assert dm.class_names == ["cat", "dog", "frog"]
    assert sum(len(items) for items in dm.splits_files().values()) == 30
    assert _setup_warnings(dm) == []
