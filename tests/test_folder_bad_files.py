"""FolderDataModule and bad files: undecodable, truncated, symlinked out of the root, decompression bombs."""

from __future__ import annotations

from pathlib import Path

import pytest
from folder_helpers import _all, _folder, _module, _save, _setup_warnings
from PIL import Image

from project.engine.errors import DataError


# ---------------------------------------------------------------------- bad files
def _bad_files(root: Path) -> list[Path]:
    good = (root / "cat" / "cat_1.jpg").read_bytes()
    text = root / "cat" / "notes.jpg"
    text.write_text("this is not a JPEG")
    empty = root / "dog" / "empty.png"
    empty.write_bytes(b"")
    truncated = root / "frog" / "truncated.JPG"
    truncated.write_bytes(good[: len(good) // 2])
    return [text, empty, truncated]


def test_undecodable_files_are_skipped_with_one_warning(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    bad = _bad_files(root)
    dm = _module(root, val_size=0.0, test_size=0.0)
    messages = _setup_warnings(dm)
    assert len(messages) == 1
    assert "skipping 3 unusable file(s)" in messages[0]
    assert all(str(path) in messages[0] for path in bad)
    assert len(dm.splits["train"][1]) == 30
    dm.setup("fit")
    assert _setup_warnings(dm, "test") == []  # reported once


def test_undecodable_files_are_an_error_when_strict(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    bad = _bad_files(root)
    with pytest.raises(DataError, match="3 unusable file") as error:
        _module(root, strict=True).setup("fit")
    assert all(str(path) in str(error.value) for path in bad)


def test_undecodable_files_are_found_without_the_cache(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    bad = _bad_files(root)
    dm = _module(root, cache="never", val_size=0.0, test_size=0.0)
    messages = _setup_warnings(dm)
    assert len(messages) == 1 and all(str(path) in messages[0] for path in bad)
    assert dm.in_memory is False and len(_all(dm.train_dataloader())[1]) == 30


def test_a_class_of_only_bad_files_is_an_error(tmp_path: Path) -> None:
    root = _folder(tmp_path, per_class=2)
    (root / "broken").mkdir()
    (root / "broken" / "a.png").write_text("nope")
    with pytest.raises(DataError, match=r"\['broken'\] .* no usable training image"):
        _setup_warnings(_module(root, val_size=0.0, test_size=0.0))


def _symlink_or_skip(target: Path, link: Path) -> None:
    try:
        link.symlink_to(target, target_is_directory=target.is_dir())
    except (OSError, NotImplementedError):
        pytest.skip("symlinks are not available here")


def test_symlinks_out_of_the_root_are_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    outside = _folder(tmp_path / "outside", classes=("owl",))
    _symlink_or_skip(outside / "owl" / "owl_0.png", root / "cat" / "escape.png")
    _symlink_or_skip(outside / "owl", root / "owl")
    _symlink_or_skip(root / "dog" / "dog_1.jpg", root / "cat" / "inside.jpg")  # inside the root: followed
    dm = _module(root, val_size=0.0, test_size=0.0)
    assert dm.class_names == ["cat", "dog", "frog"]
    messages = _setup_warnings(dm)
    assert len(messages) == 1
    assert str(root / "cat" / "escape.png") in messages[0] and str(root / "owl") in messages[0]
    assert "outside the root" in messages[0] and "inside.jpg" not in messages[0]
    assert len(dm.splits["train"][1]) == 31
    with pytest.raises(DataError, match="escape.png"):
        _module(root, strict=True).setup("fit")


def test_decompression_bombs_are_refused_from_the_header(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    _save(Image.new("L", (1200, 1000)), root / "cat" / "bomb.png")
    dm = _module(root, max_image_pixels=1_000_000, val_size=0.0, test_size=0.0)
    messages = _setup_warnings(dm)
    assert len(messages) == 1
    assert "bomb.png: 1200x1000 = 1200000 pixels is more than max_image_pixels" in messages[0]
    assert len(dm.splits["train"][1]) == 30


def test_pil_decompression_bomb_warnings_and_errors_do_not_leak(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _folder(tmp_path)  # 20x20 = 400 pixels
    _save(Image.new("RGB", (40, 40)), root / "cat" / "big.png")  # 1600 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # PIL warns above 300 pixels and raises above 600
    dm = _module(root, val_size=0.0, test_size=0.0)
    messages = _setup_warnings(dm)  # fails on a DecompressionBombWarning
    assert len(messages) == 1 and "big.png: refused as a decompression bomb" in messages[0]
    assert len(dm.splits["train"][1]) == 30
