"""Folders too large for memory: what setup's decoding pass learned is kept between runs while the files are
unchanged (project.engine.data.scan_cache), outside the data root, and the second run decodes nothing at setup."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from fakedata import write_image_folder

from project.datamodules import FolderDataModule
from project.engine.data import scan_cache


def _setup(root: Path) -> FolderDataModule:
    data = FolderDataModule(root=str(root), image_size=16, cache="never", num_workers=0, val_size=0.2, test_size=0.2)
    with pytest.warns(UserWarning, match="unusable"):
        data.setup("fit")
    return data


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROJECT_CACHE_DIR", str(tmp_path / "cache"))
    root = write_image_folder(tmp_path / "images", per_class=6, size=(20, 24))
    (root / "cat" / "broken.png").write_bytes(b"not a png")  # a bad file: its reason is kept too
    return root


def _decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the real decoding passes (a spy: decode_files still runs)."""
    calls: list[int] = []
    real = scan_cache.decode_files

    def counted(paths, *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append(len(paths))
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(scan_cache, "decode_files", counted)
    return calls


def test_a_second_run_reads_what_the_first_decoded(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _decodes(monkeypatch)
    first = _setup(folder)
    assert len(calls) == 3  # train, val, test
    second = _setup(folder)
    assert len(calls) == 3  # nothing decoded again
    assert second._samples == first._samples and second.dataset_stats == first.dataset_stats
    assert first._reported == second._reported == {str(folder / "cat" / "broken.png")}
    assert len(list(scan_cache.cache_dir().glob("*.pt"))) == 3
    # The kept entries load as any checkpoint of the project does.
    for entry in scan_cache.cache_dir().glob("*.pt"):
        torch.load(entry, weights_only=True)


def test_a_changed_file_is_decoded_again(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _decodes(monkeypatch)
    first = _setup(folder)
    victim = next((folder / "dog").iterdir())
    victim.write_bytes(b"now broken")  # same name, other content: size and modification time change
    second = _setup(folder)
    assert len(calls) > 3
    assert str(victim) in second._reported and str(victim) not in first._reported


def test_a_file_rewritten_at_the_same_size_is_decoded_again(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the modification time tells this change: same name, same size, other bytes.
    calls = _decodes(monkeypatch)
    first = _setup(folder)
    victim = next((folder / "dog").iterdir())
    size, mtime = victim.stat().st_size, victim.stat().st_mtime_ns
    victim.write_bytes(b"\0" * size)
    os.utime(victim, ns=(mtime + 10**9, mtime + 10**9))
    assert victim.stat().st_size == size
    second = _setup(folder)
    assert len(calls) > 3
    assert str(victim) in second._reported and str(victim) not in first._reported


def test_a_scan_at_another_size_is_not_read_from_the_kept_one(
    folder: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The statistics come from images decoded at the size asked for: a scan kept at 16 px is not 24 px's.
    def setup_at(size: int) -> FolderDataModule:
        data = FolderDataModule(root=str(folder), image_size=size, cache="never", num_workers=0)
        with pytest.warns(UserWarning, match="unusable"):
            data.setup("fit")
        return data

    calls = _decodes(monkeypatch)
    setup_at(16)
    kept = len(calls)
    at_24 = setup_at(24)
    assert len(calls) == 2 * kept  # decoded again, every split
    monkeypatch.setenv("PROJECT_CACHE_DIR", str(tmp_path / "fresh"))
    assert at_24.dataset_stats == setup_at(24).dataset_stats != setup_at(16).dataset_stats  # the oracle: no cache


def test_a_read_only_data_root_is_left_as_it_is(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = sorted((path, path.stat().st_mtime_ns) for path in folder.rglob("*"))
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        _setup(folder)
        _setup(folder)
    finally:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert sorted((path, path.stat().st_mtime_ns) for path in folder.rglob("*")) == before


def test_an_unwritable_cache_warns_and_the_run_goes_on(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = folder.parent / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("PROJECT_CACHE_DIR", str(blocked))
    data = FolderDataModule(root=str(folder), image_size=16, cache="never", num_workers=0)
    with pytest.warns(UserWarning) as caught:  # the bad file's warning, and this one
        data.setup("fit")
    assert any("not kept for the next run" in str(warning.message) for warning in caught)
    assert data._samples["train"][0]


def test_a_damaged_entry_is_decoded_again(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _setup(folder)
    for entry in scan_cache.cache_dir().glob("*.pt"):
        entry.write_bytes(b"torn")
    with pytest.warns(UserWarning, match="cannot be read"):
        second = _setup(folder)
    assert second._samples == first._samples
    assert os.path.getsize(next(scan_cache.cache_dir().glob("*.pt"))) > 4  # written again, whole


def test_setup_leaves_the_random_stream_alone_decoded_or_kept(folder: Path) -> None:
    # A run's randomness (initial weights, dropout, order) must not depend on whether setup decoded the files or
    # read what an earlier run kept: the decoding pass draws nothing from the global generator.
    for _ in range(2):  # decoded, then kept
        torch.manual_seed(0)
        state = torch.get_rng_state()
        _setup(folder)
        assert torch.equal(torch.get_rng_state(), state)
