"""The fake data sets must be readable by the real loaders and learnable."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from fakedata import (
    CIFAR10_CLASSES,
    write_cifar10,
    write_image_folder,
    write_mnist,
    write_resnet18_weights,
)
from PIL import Image
from torchvision.datasets import CIFAR10, MNIST, ImageFolder
from torchvision.models import ResNet18_Weights


class UncheckedCIFAR10(CIFAR10):
    """CIFAR10 without the md5 sums of the real files, which the fake ones cannot match."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


def centroid_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of a nearest-class-mean classifier: high only if the content depends on the label."""
    x_train = x_train.reshape(len(x_train), -1).astype(np.float64)
    x_test = x_test.reshape(len(x_test), -1).astype(np.float64)
    classes = np.unique(y_train)
    centroids = np.stack([x_train[y_train == c].mean(0) for c in classes])
    distances = ((x_test[:, None] - centroids[None]) ** 2).sum(-1)
    return float((classes[distances.argmin(1)] == y_test).mean())


def read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("source", ["random", "digits"])
def test_mnist_loads_with_torchvision(tmp_path: Path, source: str) -> None:
    root = write_mnist(tmp_path, n_train=300, n_test=100, source=source)
    train, test = MNIST(root, train=True, download=False), MNIST(root, train=False, download=False)
    assert train.data.shape == (300, 28, 28) and test.data.shape == (100, 28, 28)
    assert train.data.dtype == torch.uint8
    assert set(train.targets.tolist()) == set(range(10))
    assert test.targets.min() >= 0 and test.targets.max() <= 9
    image, label = train[0]
    assert isinstance(image, Image.Image) and image.size == (28, 28) and label == int(train.targets[0])
    x_train, y_train = train.data.numpy(), train.targets.numpy()
    assert centroid_accuracy(x_train, y_train, test.data.numpy(), test.targets.numpy()) > 0.7


def test_mnist_files_are_uncompressed_idx(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path, n_train=12, n_test=5) / "MNIST" / "raw"
    images = (raw / "train-images-idx3-ubyte").read_bytes()
    labels = (raw / "t10k-labels-idx1-ubyte").read_bytes()
    assert images[:16] == bytes.fromhex("00000803 0000000c 0000001c 0000001c")
    assert len(images) == 16 + 12 * 28 * 28
    assert labels[:8] == bytes.fromhex("00000801 00000005") and len(labels) == 8 + 5


def test_mnist_rejects_empty_splits(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        write_mnist(tmp_path, n_test=0)


def test_mnist_digits_are_centred_and_splits_disjoint(tmp_path: Path) -> None:
    # 1900 + 100 is more than the 1797 digits, so the training split has to repeat shifted copies.
    root = write_mnist(tmp_path, n_train=1900, n_test=100, source="digits")
    train, test = MNIST(root, train=True), MNIST(root, train=False)
    assert len(train) == 1900 and len(test) == 100
    assert train.data[:10, :2].sum() == 0 and train.data[:10, :, -2:].sum() == 0  # an MNIST-like border
    train_images = {bytes(image) for image in train.data.numpy()}
    assert not any(bytes(image) in train_images for image in test.data.numpy())
    assert train.data.max() > 200


def test_writers_are_deterministic(tmp_path: Path) -> None:
    def write_all(root: Path, seed: int) -> dict[str, bytes]:
        write_mnist(root, n_train=20, n_test=10, seed=seed)
        write_cifar10(root, n_train=20, n_test=10, source="digits", seed=seed)
        write_image_folder(root / "folder", per_class=3, seed=seed)
        return read_tree(root)

    first = write_all(tmp_path / "a", seed=1)
    assert first == write_all(tmp_path / "b", seed=1)
    second = write_all(tmp_path / "c", seed=2)
    assert first.keys() == second.keys() and first != second


def test_cifar10_pickles_match_the_python_version(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, n_train=23, n_test=7) / "cifar-10-batches-py"
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        raw = (folder / name).read_bytes()
        assert raw[:2] == b"\x80\x02"  # pickle protocol 2
        batch = pickle.loads(raw, encoding="bytes")
        assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
        assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (len(batch[b"labels"]), 3072)
        assert all(type(y) is int and 0 <= y <= 9 for y in batch[b"labels"])
        assert all(isinstance(f, bytes) for f in batch[b"filenames"])
        assert isinstance(batch[b"batch_label"], bytes)
        batches.append(batch)
    assert [len(b[b"labels"]) for b in batches] == [5, 5, 5, 4, 4, 7]
    filenames = [f for b in batches for f in b[b"filenames"]]
    assert len(set(filenames)) == 30
    with (folder / "batches.meta").open("rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert meta == {b"label_names": list(CIFAR10_CLASSES), b"num_cases_per_batch": 5, b"num_vis": 3072}
    assert CIFAR10_CLASSES[3] == b"cat" and len(CIFAR10_CLASSES) == 10


def test_cifar10_is_refused_by_md5_but_otherwise_loads(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path, n_train=50, n_test=10, source="digits")
    with pytest.raises(RuntimeError, match="corrupted"):
        CIFAR10(root, train=True, download=False)
    train, test = UncheckedCIFAR10(root, train=True), UncheckedCIFAR10(root, train=False)
    assert train.data.shape == (50, 32, 32, 3) and test.data.shape == (10, 32, 32, 3)
    assert train.classes == [name.decode() for name in CIFAR10_CLASSES]
    with (root / "cifar-10-batches-py" / "data_batch_1").open("rb") as f:
        planes = pickle.load(f, encoding="bytes")[b"data"][0].reshape(3, 32, 32)
    np.testing.assert_array_equal(train.data[0], planes.transpose(1, 2, 0))  # R, G, B planes in order
    assert not np.array_equal(train.data[..., 0], train.data[..., 1])  # the digits are colourised


@pytest.mark.parametrize("source", ["random", "digits"])
def test_cifar10_content_is_learnable(tmp_path: Path, source: str) -> None:
    root = write_cifar10(tmp_path, n_train=300, n_test=100, source=source)
    train, test = UncheckedCIFAR10(root, train=True), UncheckedCIFAR10(root, train=False)
    accuracy = centroid_accuracy(train.data, np.array(train.targets), test.data, np.array(test.targets))
    assert accuracy > 0.6


def test_image_folder_flat_cycles_formats(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, per_class=6, size=(20, 16))
    dataset = ImageFolder(str(root))
    assert dataset.classes == ["cat", "dog", "frog"]
    assert len(dataset) == 18
    assert sorted(p.name for p in (root / "dog").iterdir())[:3] == ["dog_0.png", "dog_1.jpg", "dog_2.jpeg"]
    for path, _ in dataset.samples:
        with Image.open(path) as image:
            assert image.size == (20, 16) and image.mode == "RGB"
    images = np.stack([np.asarray(image) for image, _ in dataset])
    labels = np.array(dataset.targets)
    assert centroid_accuracy(images, labels, images, labels) == 1.0


def test_image_folder_modes_fall_back_to_png(tmp_path: Path) -> None:
    modes = ("RGB", "L", "RGBA", "P", "I;16")
    root = write_image_folder(tmp_path, classes=("a",), per_class=10, formats=("jpg", "png"), modes=modes)
    found = set()
    for path in (root / "a").iterdir():
        with Image.open(path) as image:
            found.add(image.mode)
            assert image.format == ("JPEG" if path.suffix == ".jpg" else "PNG")
            if image.mode not in ("RGB", "L"):
                assert path.suffix == ".png"
    assert found == set(modes)
    assert len(list((root / "a").iterdir())) == 10
    with Image.open(root / "a" / "a_9.png") as image:
        assert np.asarray(image).max() > 255  # really 16-bit


def test_image_folder_split_layout_with_digits(tmp_path: Path) -> None:
    counts = (4, 2, 1)
    root = write_image_folder(tmp_path, layout="split", split_counts=counts, source="digits", size=(16, 16))
    for split, count in zip(("train", "val", "test"), counts, strict=True):
        dataset = ImageFolder(str(root / split))
        assert dataset.classes == [str(d) for d in range(10)]
        assert np.bincount(dataset.targets).tolist() == [count] * 10
    image, _ = ImageFolder(str(root / "train"))[0]
    assert image.size == (16, 16)


def test_image_folder_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'0'..'9'"):
        write_image_folder(tmp_path, classes=("cat",), source="digits")
    with pytest.raises(ValueError, match="layout"):
        write_image_folder(tmp_path, layout="nested")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        write_image_folder(tmp_path, modes=("CMYK",))


def test_resnet18_weights_load_from_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_resnet18_weights(tmp_path, seed=3)
    url_name = ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    assert path == tmp_path / "hub" / "checkpoints" / url_name
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    # torchvision asks for check_hash=True, but torch hub checks the hash only after downloading.
    model = torchvision.models.resnet18(weights="IMAGENET1K_V1")
    saved = torch.load(path, weights_only=True)
    loaded = model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_resnet18_weights_depend_on_seed(tmp_path: Path) -> None:
    def conv1(seed: int, folder: str) -> torch.Tensor:
        path = write_resnet18_weights(tmp_path / folder, seed=seed)
        return torch.load(path, weights_only=True)["conv1.weight"]

    assert torch.equal(conv1(0, "a"), conv1(0, "b"))
    assert not torch.equal(conv1(0, "a"), conv1(1, "c"))
