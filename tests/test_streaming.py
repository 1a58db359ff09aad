"""``scripts/prepare_data.py`` and ``--data streaming`` from a local directory: what is written, what trains, and
that a run stopped mid-epoch and resumed equals one that was never stopped."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import processes
import pytest
import torch
from conftest import REPO, RUN_TIMEOUT, TINY, run_train
from lightning.pytorch.callbacks import Callback
from test_resume import DEEPNET, _run, _straight_and_interrupted, assert_same_training
from torchvision.datasets import MNIST
from torchvision.io import decode_image

from project.datamodules.streaming import StreamingDataModule
from project.engine import prepare
from project.engine.cli import main
from project.engine.data import shards

#: TINY without ``--data.val_size``: a prepared data set's splits are fixed when it is written.
STREAM_TINY = [arg for pair in zip(TINY[::2], TINY[1::2], strict=True) if pair[0] != "--data.val_size" for arg in pair]


def prepare_mnist(data_root: Path, output: Path, *extra: str) -> int:
    args = ["--data", "mnist", "--data.root", str(data_root), "--data.val_size", "40", "--output", str(output)]
    return prepare.main([*args, "--num_workers", "2", "--chunk_bytes", "8KB", *extra])


@pytest.fixture(scope="module")
def mnist_shards(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("shards") / "mnist"
    assert prepare_mnist(data_root, output) == 0
    return output


def test_prepared_mnist_holds_every_image_of_each_split_exactly(mnist_shards: Path, data_root: Path) -> None:
    metadata = json.loads((mnist_shards / shards.METADATA).read_text())
    assert metadata["splits"] == {"train": 360, "val": 40, "test": 64}
    assert metadata["class_names"] == [str(digit) for digit in range(10)]
    assert (metadata["channels"], metadata["image_size"]) == (1, 28)
    assert len(list((mnist_shards / "train").glob("chunk-*.bin"))) > 1  # 8 KB shards: several
    assert not (mnist_shards / prepare.PREPARING).exists()
    # The oracle: torchvision's own reading of the IDX files, split as the MNIST module splits (seeded).
    source = MNIST(str(data_root), train=False)
    from litdata import StreamingDataset

    stored = StreamingDataset(str(mnist_shards / "test"))
    images = {}
    for i in range(len(stored)):
        item = stored[i]
        images[i] = (decode_image(torch.frombuffer(bytearray(item["image"]), dtype=torch.uint8)), item["label"])
    expected = sorted((source.data[i].flatten().tolist(), int(source.targets[i])) for i in range(len(source)))
    assert sorted((image.flatten().tolist(), label) for image, label in images.values()) == expected


def test_data_module_reads_shape_classes_and_statistics_from_the_data_set(mnist_shards: Path) -> None:
    data = StreamingDataModule(input_dir=str(mnist_shards), batch_size=8, num_workers=0)
    assert (data.class_names, data.input_shape) == ([str(d) for d in range(10)], (1, 28, 28))
    assert data.normalization() == ((0.1307,), (0.3081,))
    resized = StreamingDataModule(input_dir=str(mnist_shards), image_size=20, num_workers=0)
    assert resized.input_shape == (1, 20, 20)
    data.setup("fit")
    images, labels = next(iter(data.val_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 1, 28, 28) and labels.shape == (8,)


def test_training_from_shards_tests_and_saves_the_data_set_for_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_shards: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [*STREAM_TINY, "--data", "streaming", "--data.input_dir", str(mnist_shards), "--run_dir", "run"]
    assert main([*args, "--data.num_workers", "2"]) == 0
    # That shards learn as the folder does: test_streaming_shards.py (the accuracy of both on the same split).
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"].endswith("StreamingDataModule") and summary["test_acc"] is not None
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["datamodule_hyper_parameters"]["input_dir"] == str(mnist_shards)


@pytest.mark.slow
def test_resume_mid_epoch_from_shards_is_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_shards: Path
) -> None:
    # Two workers each stream their own shards and fetch ahead: the loader's saved position must count only the
    # batches trained on. 5 steps per epoch: step 7 is the second batch of the second epoch.
    source = ["--data", "streaming", "--data.input_dir", str(mnist_shards), "--data.num_workers", "2"]
    common = [*DEEPNET, *source, "--trainer.max_epochs", "2", "--model.scheduler", "cosine"]
    stop_at = 7
    interrupted = _straight_and_interrupted(tmp_path, monkeypatch, common, stop_at, tiny=STREAM_TINY)
    assert interrupted["global_step"] == stop_at
    loader_state = interrupted["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state["num_samples_yielded"] == 2 * 16
    assert _run(tmp_path, monkeypatch, "--resume", "resumed/checkpoints/last.ckpt", "--trainer.callbacks", "[]") == 0
    assert_same_training(tmp_path / "resumed", tmp_path / "straight")


def test_an_existing_data_set_is_not_overwritten_unless_asked(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out"
    assert prepare_mnist(data_root, output) == 0
    before = (output / shards.METADATA).stat().st_mtime_ns
    assert prepare_mnist(data_root, output) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {output} already holds a prepared data set: pass --overwrite to write it again"
    )
    assert (output / shards.METADATA).stat().st_mtime_ns == before
    assert prepare_mnist(data_root, output, "--overwrite") == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert prepare_mnist(data_root, foreign) == 2
    assert "was not written by prepare_data.py" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"


def _train_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data: Path
) -> str:
    """The one ``error:`` line of a run from ``data`` that must fail with exit code 2."""
    monkeypatch.chdir(tmp_path)
    assert main([*STREAM_TINY, "--data", "streaming", "--data.input_dir", str(data)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    return lines[-1]


def test_a_missing_or_truncated_shard_is_named_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_root: Path
) -> None:
    data = tmp_path / "shards"
    assert prepare_mnist(data_root, data) == 0
    capsys.readouterr()
    shard = sorted((data / "train").glob("chunk-*.bin"))[1]
    content = shard.read_bytes()
    shard.write_bytes(content[: len(content) // 2])
    assert _train_error(tmp_path, monkeypatch, capsys, data) == (
        f"error: shard {shard} is corrupt: {len(content) // 2} bytes where index.json says {len(content)}"
    )
    shard.unlink()
    assert _train_error(tmp_path, monkeypatch, capsys, data) == (
        f"error: shard {shard} is missing: the data set is incomplete"
    )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ckpt"))


def test_an_interrupted_preparation_does_not_train_and_is_started_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_root: Path
) -> None:
    # Killed (SIGKILL: no clean-up of any kind) once the training split's shards are written.
    data = tmp_path / "shards"
    command = [sys.executable, str(REPO / "scripts" / "prepare_data.py"), "--data", "mnist"]
    command += ["--data.root", str(data_root), "--data.val_size", "40", "--output", str(data), "--chunk_bytes", "4KB"]
    process = processes.start(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (data / "train" / shards.INDEX).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    processes.end(process, grace=0)  # SIGKILL: no clean-up of any kind
    assert (data / "train" / shards.INDEX).exists() and not (data / shards.METADATA).exists()
    assert _train_error(tmp_path, monkeypatch, capsys, data) == (
        f"error: {data} is not a complete prepared data set (no dataset.json): write it with "
        "scripts/prepare_data.py, or run that again if it was interrupted"
    )
    assert prepare_mnist(data_root, data) == 0
    assert "an earlier preparation did not finish; starting it over" in capsys.readouterr().out
    assert json.loads((data / shards.METADATA).read_text())["splits"] == {"train": 360, "val": 40, "test": 64}


class RecordSamples(Callback):
    """Writes, per rank, a digest of every training image of each epoch (no augmentation: an image's normalized
    pixels identify it) to ``samples-<rank>.json`` in the working directory."""

    def __init__(self) -> None:
        self.seen: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any) -> None:
        digests = [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in batch.images]
        self.seen.setdefault(trainer.current_epoch, []).extend(digests)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        Path(f"samples-{trainer.global_rank}.json").write_text(json.dumps(self.seen))


def _training_digests(shards_dir: Path) -> set[str]:
    data = StreamingDataModule(input_dir=str(shards_dir), batch_size=64, num_workers=0)
    data.setup("fit")
    loader = data._loader("train", shuffle=False)
    return {
        hashlib.sha1(image.numpy().tobytes()).hexdigest()
        for images, _ in loader
        for image in data.normalizer.from_uint8(images)
    }


@pytest.mark.slow
def test_ddp_ranks_read_each_sample_once_and_resume_bit_identically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_shards: Path
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    ddp = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    source = ["--data", "streaming", "--data.input_dir", str(mnist_shards), "--data.num_workers", "2"]
    args = [*STREAM_TINY, *ddp, *source, "--model", "deepnet", "--model.scheduler", "none", "--max_epochs", "2"]
    args += ["--trainer.limit_train_batches", "1.0", "--data.batch_size", "16"]
    record = json.dumps([{"class_path": "test_streaming.RecordSamples"}])
    result = run_train([*args, "--run_dir", "straight", "--trainer.callbacks", record], cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]

    # Each epoch: 360 images over 2 ranks of 16-image batches: 11 steps each, 352 images, none on both ranks.
    every = _training_digests(mnist_shards)
    seen = [json.loads((tmp_path / f"samples-{rank}.json").read_text()) for rank in (0, 1)]
    for epoch in ("0", "1"):
        ranks = [seen[rank][epoch] for rank in (0, 1)]
        assert [len(digests) for digests in ranks] == [176, 176]
        together = ranks[0] + ranks[1]
        assert len(set(together)) == 352 and set(together) <= every
    assert seen[0]["0"] != seen[0]["1"]  # a new order each epoch

    # SIGTERM to rank 1 after step 13 (the third batch of epoch 1): both ranks stop where they next compare, and
    # the resume finishes the epoch and the run exactly.
    stop = json.dumps([{"class_path": "test_resume.SignalAtStep", "init_args": {"step": 13, "rank": 1}}])
    result = run_train([*args, "--run_dir", "stopped", "--trainer.callbacks", stop], cwd=tmp_path)
    assert result.returncode == 143, result.stderr[-3000:]
    last = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)
    assert 13 <= last["global_step"] < 22
    result = run_train(["--resume", "stopped", "--trainer.callbacks", "[]"], cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert_same_training(tmp_path / "stopped", tmp_path / "straight")


def _stored(data: Path) -> list[tuple[bytes, int]]:
    from litdata import StreamingDataset

    items = []
    for split in shards.SPLITS:
        dataset = StreamingDataset(str(data / split))
        items += [(bytes(item["image"]), int(item["label"])) for item in (dataset[i] for i in range(len(dataset)))]
    return items


def test_a_folder_is_stored_as_its_files_and_max_size_shrinks_only_larger_images(tmp_path: Path) -> None:
    from fakedata import write_image_folder
    from torchvision.transforms.v2 import functional as TF

    from project.engine.data.images import decode_image_bytes

    root = write_image_folder(tmp_path / "images", per_class=10, size=(40, 30), formats=("png", "jpg", "bmp"))
    files = sorted(path for path in root.rglob("*") if path.is_file())
    classes = sorted(path.name for path in root.iterdir())
    expected = sorted((path.read_bytes(), classes.index(path.parent.name)) for path in files)
    source = ["--data", "folder", "--data.root", str(root), "--num_workers", "2"]

    assert prepare.main([*source, "--output", str(tmp_path / "as-is")]) == 0
    metadata = json.loads((tmp_path / "as-is" / shards.METADATA).read_text())
    assert metadata["class_names"] == classes and metadata["image_size"] is None
    assert sum(metadata["splits"].values()) == len(files) == 30
    assert sorted(_stored(tmp_path / "as-is")) == expected  # every file, byte for byte, with its class

    assert prepare.main([*source, "--output", str(tmp_path / "larger"), "--max_size", "64"]) == 0
    assert sorted(_stored(tmp_path / "larger")) == expected  # none is larger: kept as they are

    assert prepare.main([*source, "--output", str(tmp_path / "shrunk"), "--max_size", "20"]) == 0
    originals = {}
    for data, label in expected:
        image = decode_image_bytes(data, 3)
        originals.setdefault(label, []).append(TF.resize(image, [20], antialias=True).float())
    for data, label in _stored(tmp_path / "shrunk"):
        assert data[:3] == b"\xff\xd8\xff"  # re-encoded as JPEG
        image = decode_image_bytes(data, 3).float()
        assert image.shape == (3, 20, 26)  # 30 → 20 on the shorter side, 40 → 26.7 on the other (torchvision: 26)
        # The oracle: the original resized by torchvision. A JPEG of quality 90 of these noise images is within 6
        # levels of it on average; two different images of the set differ by about 85.
        assert min((image - original).abs().mean().item() for original in originals[label]) < 10


def test_a_prepared_data_sets_splits_cannot_be_changed_at_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mnist_shards: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [*STREAM_TINY, "--data", "streaming", "--data.input_dir", str(mnist_shards), "--data.val_size", "0.2"]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("error: --data.val_size: StreamingDataModule has no option")
    with pytest.raises(ValueError, match="splits are fixed: choose val_size when running prepare_data.py"):
        StreamingDataModule(input_dir=str(mnist_shards), val_size=0.2)
