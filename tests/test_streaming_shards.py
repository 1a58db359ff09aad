"""Shards that train like the folder they were prepared from (issue 28): samples in a seeded random order, so that
streaming batches mix the classes as the folder's do, and a checksum per shard, so that a damaged shard of the right
size is one line naming it instead of a crashed worker.

The oracle is the folder path on the same files and the same split: its batches' class mix, its accuracy.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from conftest import run_train
from fakedata import write_image_folder
from test_streaming import STREAM_TINY

from project.datamodules import FolderDataModule
from project.datamodules.streaming import StreamingDataModule
from project.engine import prepare
from project.engine.data import shards

CLASSES = 10
BATCH = 32


def prepare_folder(root: Path, output: Path, *extra: str) -> None:
    args = ["--data", "folder", "--data.root", str(root), "--data.image_size", "16", "--output", str(output)]
    assert prepare.main([*args, "--num_workers", "2", "--chunk_bytes", "16KB", *extra]) == 0


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's handwritten digits as a folder of PNG files, one class folder per digit (in class order)."""
    return write_image_folder(
        tmp_path_factory.mktemp("digits") / "images", per_class=60, size=(16, 16), source="digits", formats=("png",)
    )


@pytest.fixture(scope="module")
def digit_shards(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("digit-shards") / "shards"
    prepare_folder(digits, output)
    return output


def chunk_bytes(split_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(split_dir.glob("chunk-*.bin"))}


def test_the_same_data_and_seed_give_the_same_shards_and_another_seed_another_order(
    digits: Path, digit_shards: Path, tmp_path: Path
) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    prepare_folder(digits, again)
    prepare_folder(digits, other, "--seed", "1")
    assert chunk_bytes(again / "train") == chunk_bytes(digit_shards / "train")
    assert chunk_bytes(other / "train") != chunk_bytes(digit_shards / "train")
    metadata = json.loads((digit_shards / shards.METADATA).read_text())
    assert metadata["version"] == shards.VERSION == 2 and metadata["seed"] == 0
    assert set(metadata["checksums"]["train"]) == set(chunk_bytes(digit_shards / "train"))


def distinct_classes(loader) -> list[int]:
    """How many classes each full training batch holds."""
    return [len(set(labels.tolist())) for _, labels in loader if len(labels) == BATCH]


def test_streaming_batches_mix_the_classes_as_the_folders_do(digits: Path, digit_shards: Path) -> None:
    torch.manual_seed(0)
    folder = FolderDataModule(root=str(digits), image_size=16, batch_size=BATCH, num_workers=0)
    folder.setup("fit")
    streaming = StreamingDataModule(input_dir=str(digit_shards), batch_size=BATCH, num_workers=0)
    streaming.setup("fit")
    assert len(folder.splits["train"][1]) == streaming.metadata["splits"]["train"]  # the same split
    reference, streamed = [], []
    for _ in range(3):  # three epochs: about 40 batches each way
        reference += distinct_classes(folder.train_dataloader())
        streamed += distinct_classes(streaming.train_dataloader())
    # Drawn with replacement, a batch of 32 from 10 balanced classes would hold 10 * (1 - 0.9**32) = 9.66 classes on
    # average; drawn without (a shuffled epoch of balanced classes), a little more.
    assert statistics.mean(reference) > CLASSES * (1 - (1 - 1 / CLASSES) ** BATCH) - 0.2  # the oracle is well mixed
    spread = statistics.variance(reference) / len(reference) + statistics.variance(streamed) / len(streamed)
    noise = 4 * math.sqrt(spread)
    assert abs(statistics.mean(streamed) - statistics.mean(reference)) < max(noise, 0.1), (
        statistics.mean(streamed),
        statistics.mean(reference),
    )


def test_a_damaged_shard_of_the_right_size_is_one_line_naming_it(digits: Path, tmp_path: Path) -> None:
    output = tmp_path / "shards"
    prepare_folder(digits, output)
    chunk = sorted((output / "train").glob("chunk-*.bin"))[1]
    data = bytearray(chunk.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(byte ^ 0xFF for byte in data[middle : middle + 64])  # 64 bytes flipped
    chunk.write_bytes(bytes(data))
    args = [*STREAM_TINY, "--model", "mlp", "--data", "streaming", "--data.input_dir", str(output), "--run_dir", "r"]
    result = run_train([*args, "--trainer.limit_train_batches", "100", "--data.num_workers", "1"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: shard {chunk} is damaged: its SHA-256 is not the one dataset.json records; "
        "restore it or run scripts/prepare_data.py again"
    ], result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_a_data_set_of_the_earlier_format_is_refused_with_one_line(digit_shards: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    metadata = json.loads((digit_shards / shards.METADATA).read_text())
    (old / shards.METADATA).write_text(json.dumps({**metadata, "version": 1}))
    with pytest.raises(shards.DataError, match="format version 1, this template reads 2: run scripts/prepare_data"):
        shards.read_metadata(str(old))


@pytest.mark.slow
def test_training_from_shards_reaches_the_folders_accuracy(digits: Path, digit_shards: Path, tmp_path: Path) -> None:
    common = ["--model", "cnn", "--trainer.max_epochs", "3", "--data.batch_size", str(BATCH), "--data.num_workers", "1"]
    common += ["--trainer.enable_progress_bar", "false", "--dashboard_every", "0", "--seed_everything", "0"]
    common += ["--data.image_size", "16"]  # the same input size both ways
    folder = run_train([*common, "--data", "folder", "--data.root", str(digits), "--run_dir", "folder"], tmp_path)
    source = ["--data", "streaming", "--data.input_dir", str(digit_shards)]
    streamed = run_train([*common, *source, "--run_dir", "streamed"], tmp_path)
    assert folder.returncode == 0 and streamed.returncode == 0, (folder.stderr[-2000:], streamed.stderr[-2000:])
    accuracy = {
        name: json.loads((tmp_path / name / "summary.json").read_text())["test_acc"] for name in ("folder", "streamed")
    }
    print(f"test accuracy on the same split: {accuracy}")  # the figures the closing note gives
    assert accuracy["folder"] > 0.5  # the oracle learned
    assert accuracy["streamed"] >= accuracy["folder"] - 0.05, accuracy
