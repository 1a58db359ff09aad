"""A file that decodes at setup but not later, in a worker (replaced or truncated since, or judged from a kept scan):
left out of its batch, listed in the run directory's skipped_files.txt, one warning; with --data.strict an error."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from conftest import TINY, quiet_trainer
from fakedata import write_image_folder
from folder_helpers import _module

from project.datamodules.folder import FolderDataModule
from project.engine.cli import main
from project.engine.data.folder_loading import (
    FolderEvalLoader,
    FolderTrainLoader,
    PresetImages,
    SkippedFiles,
    collate_kept,
)
from project.engine.data.presets import Squash
from project.engine.errors import DataError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images", per_class=10, size=(30, 20), formats=("jpg",))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _overwrite_keeping_stat(path: Path) -> None:
    """New content, same size and modification time: a kept scan (scan_cache) still takes it for the old file."""
    stat = path.stat()
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


class CountSamples(L.Callback):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.sizes.append(len(batch.labels))


@pytest.mark.parametrize(("preset", "workers"), [("imagenet", 2), ("squash", 0)])
def test_a_file_gone_bad_after_setup_is_left_out_and_listed_once(
    tmp_path: Path, root: Path, preset: str, workers: int
) -> None:
    from project.models import MLP

    dm = _module(root, preset=preset, cache="never", num_workers=workers, val_size=0.2, test_size=0.0, batch_size=4)
    dm.setup("fit")
    victim = Path(dm._samples["train"][0][5])
    _truncate(victim)
    counter = CountSamples()
    run = tmp_path / "run"
    trainer = quiet_trainer(max_epochs=2, default_root_dir=run, num_sanity_val_steps=0, callbacks=[counter])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(MLP(**dm.model_args(), hidden_sizes=[8]), datamodule=dm)
    assert trainer.current_epoch == 2 and trainer.global_step == 12  # 24 training images, 6 batches an epoch
    assert sum(counter.sizes) == 2 * 23 and sorted(counter.sizes).count(3) == 2  # one batch an epoch one shorter
    messages = [str(w.message) for w in caught if "decoded at setup" in str(w.message)]
    assert len(messages) == 1, messages
    assert messages[0].startswith(
        f"skipped 1 file(s) that decoded at setup but not for a batch (changed since?), first {victim}: "
    )
    assert f"all are listed in {run / 'skipped_files.txt'}" in messages[0]
    assert (run / "skipped_files.txt").read_text().splitlines() == [str(victim)]


def test_a_resumed_run_adds_to_the_list_without_repeating(tmp_path: Path) -> None:
    skipped = SkippedFiles(strict=False)
    skipped.place(str(tmp_path), rank=0)
    skipped.add([("/data/a.jpg", "truncated"), ("/data/b.jpg", "empty")])
    again = SkippedFiles(strict=False)  # the resumed process
    again.place(str(tmp_path), rank=0)
    again.add([("/data/b.jpg", "empty"), ("/data/caf\udce9.jpg", "truncated")])  # b"caf\xe9.jpg": not UTF-8
    listed = (tmp_path / "skipped_files.txt").read_text(encoding="utf-8").splitlines()
    assert listed == ["/data/a.jpg", "/data/b.jpg", "/data/caf\\xe9.jpg"]  # as every file the project writes
    other_rank = SkippedFiles(strict=False)
    other_rank.place(str(tmp_path), rank=1)
    other_rank.add([("/data/d.jpg", "empty")])
    assert (tmp_path / "skipped_files.rank1.txt").read_text() == "/data/d.jpg\n"


def test_a_batch_with_no_decodable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    dataset = PresetImages([str(bad), str(bad)], [0, 1], 3, Squash(8), 10**6, seed=0)
    evaluation = FolderEvalLoader(dataset, SkippedFiles(strict=False), batch_size=2, collate_fn=collate_kept)
    assert list(evaluation) == []  # left out: evaluation has no step to keep in step with other ranks
    assert list(evaluation.skipped.found) == [str(bad)]
    training = FolderTrainLoader(dataset, SkippedFiles(strict=False), batch_size=2, collate_fn=collate_kept)
    with pytest.raises(DataError, match=f"no file of a training batch decodes any more \\(first {bad}: not an image"):
        list(training)


def test_strict_stops_the_run_with_one_line_naming_the_file(
    tmp_path: Path, root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A first setup keeps its scan (scan_cache); the file is then overwritten in place, so the next run's setup
    # reads the kept scan and only a worker meets the file.
    options = {"image_size": 16, "preset": "imagenet", "num_workers": 0, "val_size": 0.1}
    first = FolderDataModule(root=str(root), **options)
    first.setup("fit")
    victim = Path(first._samples["train"][0][0])
    _overwrite_keeping_stat(victim)
    args = [*TINY, "--data", "folder", "--data.root", str(root), "--data.image_size", "16"]
    args += ["--data.preset", "imagenet", "--data.num_workers", "0", "--model.hidden_sizes", "[8]"]
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, "--run_dir", "lenient"]) == 0
    assert (tmp_path / "lenient" / "skipped_files.txt").read_text().splitlines() == [str(victim)]
    assert len([w for w in caught if "decoded at setup" in str(w.message)]) == 1
    capsys.readouterr()

    assert main([*args, "--run_dir", "strict", "--data.strict", "true"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        f"error: {victim}: not an image in a format Pillow reads; it decoded at setup but not for a batch "
        f"(--data.strict is true; set it to false to skip such files)"
    ]
    assert not (tmp_path / "strict").exists()  # nothing was saved in it: removed, as after any mistake
