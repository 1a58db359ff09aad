"""Bad input: corrupt MNIST/CIFAR-10 files and impossible configs are one clear error (exit 2) before training."""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from fakedata import write_cifar10, write_mnist

from project.datamodules import CIFAR10DataModule, MNISTDataModule
from project.engine.cli import main
from project.engine.errors import DataError

Corrupt = Callable[[bytes], bytes]


def _idx_32x32(data: bytes) -> bytes:
    count = struct.unpack(">I", data[4:8])[0]
    return struct.pack(">IIII", 0x0803, count, 32, 32) + bytes(count * 32 * 32)


MNIST_CASES: dict[str, tuple[str, Corrupt, str]] = {
    "bad magic": ("train-images-idx3-ubyte", lambda d: b"\x89PNG" + d[4:], "not an MNIST IDX file"),
    "truncated": ("train-images-idx3-ubyte", lambda d: d[: len(d) // 2], "the file is truncated or corrupt"),
    "truncated header": ("t10k-images-idx3-ubyte", lambda d: d[:10], "the header is truncated"),
    "empty": ("train-labels-idx1-ubyte", lambda d: b"", "not an MNIST IDX file"),
    "32x32 images": ("train-images-idx3-ubyte", _idx_32x32, "holds items of shape (32, 32), MNIST's are (28, 28)"),
    "fewer labels": (
        "t10k-labels-idx1-ubyte",
        lambda d: struct.pack(">II", 0x0801, 5) + d[8:13],
        "5 labels for the 10 images",
    ),
    "labels out of range": ("train-labels-idx1-ubyte", lambda d: d[:8] + b"\x63" * (len(d) - 8), "labels do not"),
}


@pytest.mark.parametrize("case", MNIST_CASES)
def test_corrupt_mnist_file_is_named(tmp_path: Path, case: str) -> None:
    name, corrupt, expected = MNIST_CASES[case]
    write_mnist(tmp_path, n_train=50, n_test=10)
    path = tmp_path / "MNIST" / "raw" / name
    path.write_bytes(corrupt(path.read_bytes()))
    datamodule = MNISTDataModule(root=str(tmp_path), batch_size=8, val_size=5, download=False)
    with pytest.raises(DataError) as error:
        datamodule.prepare_data()
        datamodule.setup("fit")
    message = str(error.value)
    assert message.startswith(str(path)) and expected in message and "\n" not in message


class RunsShellCommand:
    """Unpickling this would call ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def _cifar_pickle(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=4)  # bytes and arrays as Python 3 writes them (no _codecs calls)


def _batch(data: object, labels: object) -> bytes:
    return _cifar_pickle({b"batch_label": b"x", b"data": data, b"labels": labels})


CIFAR_CASES: dict[str, tuple[Corrupt, str]] = {
    "truncated": (lambda d: d[: len(d) // 2], "is corrupt (UnpicklingError"),
    "empty": (lambda d: b"", "is corrupt (EOFError"),
    "garbage": (lambda d: b"\x80\x04garbage" * 50, "is corrupt"),
    "a list": (
        lambda d: _cifar_pickle([1, 2, 3]),
        "is not a CIFAR-10 batch: expected b'data' and b'labels', found a list",
    ),
    "no labels": (lambda d: _cifar_pickle({b"data": np.zeros((4, 3072), np.uint8)}), "found [b'data']"),
    "wrong width": (lambda d: _batch(np.zeros((4, 1024), np.uint8), [0] * 4), "got data of shape (4, 1024)"),
    "4-d data": (lambda d: _batch(np.zeros((4, 3, 32, 32), np.uint8), [0] * 4), "got data of shape (4, 3, 32, 32)"),
    "float pixels": (lambda d: _batch(np.zeros((4, 3072), np.float32), [0] * 4), "expected uint8 pixels, got float32"),
    "fewer labels": (lambda d: _batch(np.zeros((4, 3072), np.uint8), [0] * 3), "labels of shape (3,)"),
    "text labels": (lambda d: _batch(np.zeros((4, 3072), np.uint8), ["cat"] * 4), "is corrupt (ValueError"),
    "labels out of range": (lambda d: _batch(np.zeros((4, 3072), np.uint8), [10] * 4), "labels outside 0..9"),
}


@pytest.mark.parametrize("case", CIFAR_CASES)
def test_corrupt_cifar10_file_is_named(tmp_path: Path, case: str) -> None:
    corrupt, expected = CIFAR_CASES[case]
    write_cifar10(tmp_path, n_train=50, n_test=10)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(corrupt(path.read_bytes()))
    datamodule = CIFAR10DataModule(root=str(tmp_path), batch_size=8, val_size=5, download=False)
    with pytest.raises(DataError) as error:
        datamodule.setup("fit")
    message = str(error.value)
    assert message.startswith(f"CIFAR-10 file {path}") and expected in message and "\n" not in message


def test_cifar10_pickle_that_runs_a_command_is_refused(tmp_path: Path) -> None:
    write_cifar10(tmp_path, n_train=50, n_test=10)
    marker = tmp_path / "marker"
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(_batch(RunsShellCommand(f"touch {marker}"), [0]))
    datamodule = CIFAR10DataModule(root=str(tmp_path), batch_size=8, download=False)
    with pytest.raises(DataError, match=r"was refused: loading it would import posix\.system"):
        datamodule.setup("test")
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the payload is real: an unrestricted unpickler runs it
    assert marker.exists()


def _py3(value: object) -> object:
    """A value of a Python 2 CIFAR-10 pickle as Python 3 code re-saving the set holds it: bytes become str."""
    if isinstance(value, dict):
        return {_py3(key): _py3(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_py3(item) for item in value]
    return value.decode() if isinstance(value, bytes) else value


@pytest.mark.parametrize("protocol", sorted({pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL}))
def test_cifar10_batches_pickled_by_python3_with_str_keys_are_read(tmp_path: Path, protocol: int) -> None:
    write_cifar10(tmp_path / "original", n_train=50, n_test=10)
    source, resaved = tmp_path / "original" / "cifar-10-batches-py", tmp_path / "resaved" / "cifar-10-batches-py"
    resaved.mkdir(parents=True)
    for path in source.iterdir():
        with path.open("rb") as file:
            batch = pickle.load(file, encoding="bytes")
        (resaved / path.name).write_bytes(pickle.dumps(_py3(batch), protocol=protocol))
    test_batch = pickle.loads((resaved / "test_batch").read_bytes())
    assert sorted(test_batch) == ["batch_label", "data", "filenames", "labels"]
    assert test_batch["data"].dtype == np.uint8 and test_batch["data"].shape == (10, 3072)
    assert isinstance(test_batch["filenames"][0], str) and isinstance(test_batch["labels"][0], int)

    modules = [
        CIFAR10DataModule(root=str(tmp_path / name), batch_size=8, val_size=5, download=False)
        for name in ("original", "resaved")
    ]
    for datamodule in modules:
        datamodule.setup("fit")
    original, python3 = (datamodule.splits for datamodule in modules)
    assert original.keys() == python3.keys() == {"train", "val", "test"}
    for split, (images, labels) in original.items():
        assert torch.equal(python3[split][0], images) and torch.equal(python3[split][1], labels), split
    images, labels = next(iter(modules[1].train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (8, 3, 32, 32) and labels.shape == (8,)


@pytest.mark.parametrize("data", ["mnist", "cifar10"])
def test_corrupt_data_through_the_cli_is_exit_2_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data: str
) -> None:
    if data == "mnist":
        write_mnist(tmp_path / "data", n_train=50, n_test=10)
        path = tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    else:
        write_cifar10(tmp_path / "data", n_train=50, n_test=10)
        path = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(path.read_bytes()[:-7])
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--data", data, "--data.root", "data", "--data.val_size", "5"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and str(Path("data") / path.relative_to(tmp_path / "data")) in error
    assert not list(tmp_path.glob("runs/*/checkpoints"))  # nothing was trained


def test_a_value_error_from_the_model_keeps_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    # Only Lightning's own refusals of a setting become one-line errors; a ValueError raised by code (here the
    # model's training step) is a bug, and propagates with its traceback.
    from project.models import MLP

    def broken_step(self, batch, batch_idx):
        raise ValueError("a bug in the model")

    monkeypatch.setattr(MLP, "training_step", broken_step)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="a bug in the model"):
        main([*TINY, "--data.root", str(data_root)])
