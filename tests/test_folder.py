"""FolderDataModule: layouts, splits, both cache modes, conversions, and every kind of bad input."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import quiet_trainer
from fakedata import write_image_folder
from PIL import Image
from torch.utils.data import DistributedSampler, TensorDataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from project.datamodules.folder import FolderDataModule
from project.datamodules.images import FolderImageDataset, load_image
from project.datamodules.loaders import EpochSeededSampler, ResumableDataLoader
from project.errors import DataError

REPO = Path(__file__).resolve().parents[1]
SIZE = 16


def _module(root: Path, **kwargs) -> FolderDataModule:
    options = {"image_size": SIZE, "batch_size": 8, "num_workers": 0, **kwargs}
    return FolderDataModule(root=str(root), **options)


def _folder(tmp_path: Path, **kwargs) -> Path:
    options = {"per_class": 10, "size": (20, 20), **kwargs}
    return write_image_folder(tmp_path / "images", **options)


def _names(items: list[tuple[str, int]]) -> set[str]:
    return {os.path.basename(path) for path, _ in items}


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def _setup_warnings(dm: FolderDataModule, stage: str = "fit") -> list[str]:
    """Run setup and return the messages of the unusable-file warnings it gave (any other warning fails)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup(stage)
    messages = [str(w.message) for w in caught]
    assert all("unusable" in message for message in messages), messages
    return messages


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _rgb(height: int = 12, width: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


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
    }
    root = tmp_path / "images"
    for folder in ("only", "other"):
        (root / folder).mkdir(parents=True)
        for name, (image, options, _, _) in files.items():
            image.save(root / folder / name, **options)  # PIL picks the format from the extension
    (root / "only" / "notes.txt").write_text("not an image, ignored")
    dm = _module(root, val_size=0.0, test_size=0.0)
    assert _setup_warnings(dm) == []
    images, labels = dm.splits["train"]
    assert images.shape == (14, 3, SIZE, SIZE) and labels.tolist() == [0] * 7 + [1] * 7
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


# ---------------------------------------------------------------------- batches
@pytest.mark.parametrize("cache", ["auto", "always", "never"])
def test_batches_are_uint8_images_and_int64_labels(tmp_path: Path, cache: str) -> None:
    root = _folder(tmp_path, modes=("RGB", "L", "RGBA", "P", "I;16"))
    dm = _module(root, cache=cache)
    dm.setup("fit")
    assert dm.in_memory is (cache != "never")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    images, labels = _all(batches)
    assert images.dtype == torch.uint8 and images.shape == (24, 3, SIZE, SIZE)
    assert labels.dtype == torch.int64 and sorted(labels.tolist()) == [0] * 8 + [1] * 8 + [2] * 8
    # what the model gets: normalized floats with the training set's statistics
    floats, _ = dm.on_after_batch_transfer(batches[0], 0)
    mean, std = dm.normalization()
    mean, std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    expected = (batches[0][0].float() / 255 - mean) / std
    assert floats.dtype == torch.float32 and torch.allclose(floats, expected, atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_cache_and_no_cache_give_identical_images(tmp_path: Path, channels: int) -> None:
    root = _folder(tmp_path, modes=("RGB", "L", "RGBA", "P", "I;16"), formats=("png", "jpg", "bmp"))
    cached, streamed = (_module(root, image_channels=channels, cache=cache) for cache in ("always", "never"))
    for dm in (cached, streamed):
        dm.setup("fit")
    for split in ("val", "test"):
        a = _all(getattr(cached, f"{split}_dataloader")())
        b = _all(getattr(streamed, f"{split}_dataloader")())
        assert a[0].shape == (3, channels, SIZE, SIZE)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert cached.dataset_stats == streamed.dataset_stats
    assert cached.preprocessing() == streamed.preprocessing()


def test_dataset_stats_are_the_training_images_mean_and_std(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    dm = _module(root)
    dm.setup("fit")
    train = dm.splits["train"][0].double() / 255
    mean, std = dm.dataset_stats
    assert np.allclose(mean, train.mean((0, 2, 3)).numpy(), atol=1e-5)
    assert np.allclose(std, train.std((0, 2, 3), unbiased=False).numpy(), atol=1e-5)
    expected = {"image_size": [SIZE, SIZE], "channels": 3, "mean": list(mean), "std": list(std)}
    assert dm.preprocessing() == expected
    assert _module(root, normalize="imagenet").preprocessing()["mean"] == [0.485, 0.456, 0.406]


def test_dataloader_path_shuffles_with_the_global_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path)
    dm = _module(root, cache="never")

    def order(seed: str) -> list[int]:
        monkeypatch.setenv("PL_GLOBAL_SEED", seed)
        return _all(dm.train_dataloader())[1].tolist()

    first = order("7")
    assert order("7") == first
    assert order("8") != first

    # Each epoch's order depends only on (seed, epoch): a fresh loader set to epoch 1, as after a resume,
    # gives the same order as a loader that went through epoch 0 first.
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    continuing = dm.train_dataloader()
    _all(continuing)
    continuing.sampler.set_epoch(1)
    resumed = dm.train_dataloader()
    resumed.sampler.set_epoch(1)
    second_epoch = _all(continuing)[1].tolist()
    assert second_epoch != first
    assert _all(resumed)[1].tolist() == second_epoch


def test_dataloader_path_with_worker_processes(tmp_path: Path) -> None:
    root = _folder(tmp_path, per_class=4)
    dm = _module(root, cache="never", num_workers=1, val_size=0.0, test_size=0.0, batch_size=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers and not loader.pin_memory
    images, labels = _all(loader)
    assert images.shape == (12, 3, SIZE, SIZE) and sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4


@pytest.mark.parametrize("cache", ["auto", "never"])
def test_fit_with_a_trainer(tmp_path: Path, cache: str) -> None:

    from project.models import MLP

    root = _folder(tmp_path)
    dm = _module(root, cache=cache, hflip=True)
    model = MLP(**dm.model_args(), hidden_sizes=[16], lr=1e-3)
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2
    assert model.hparams.class_names == ["cat", "dog", "frog"]
    assert model.hparams.input_shape == (3, SIZE, SIZE)
    assert model.hparams.preprocessing["mean"] == list(dm.dataset_stats[0])


# ---------------------------------------------------------------------- conversions
def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red everywhere, transparent on the left half, half-opaque top right
    rgba[:, 4:, 3] = 255
    rgba[:4, 4:, 3] = 128
    image = load_image(_save(Image.fromarray(rgba), tmp_path / "a.png"))
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8
    assert (image[:, :, :4] == 255).all()  # fully transparent: white
    assert image[:, 6, 6].tolist() == [200, 0, 0]
    assert image[:, 1, 6].tolist() == [round((200 * 128 + 255 * 127) / 255), 127, 127]


def test_gray_palette_and_16_bit_are_converted(tmp_path: Path) -> None:
    rgb = _rgb(8, 8)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    three = load_image(_save(Image.fromarray(gray), tmp_path / "gray.png"))
    assert three.shape == (3, 8, 8) and all(torch.equal(plane, torch.from_numpy(gray)) for plane in three)
    one = load_image(_save(Image.fromarray(rgb), tmp_path / "rgb.png"), channels=1)
    assert one.shape == (1, 8, 8)
    assert (one[0].int() - torch.from_numpy(gray).int()).abs().max() <= 1  # PIL's luma weights
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    expected = torch.from_numpy(np.asarray(palette.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(load_image(_save(palette, tmp_path / "p.png")), expected)
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    sixteen = load_image(_save(Image.fromarray(deep), tmp_path / "deep.png"), channels=1)
    assert sixteen.dtype == torch.uint8
    assert torch.equal(sixteen[0], torch.from_numpy((deep >> 8).astype(np.uint8)))


def test_load_image_resizes_and_names_bad_files(tmp_path: Path) -> None:
    rgb = _rgb(30, 20)
    path = _save(Image.fromarray(rgb), tmp_path / "a.png")
    source = torch.from_numpy(rgb).permute(2, 0, 1)
    for size in (12, 40):  # shrinking (where antialiasing matters) and enlarging, both to a square
        expected = TF.resize(source, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        assert torch.equal(load_image(path, size=size), expected), size
    dataset = FolderImageDataset([str(tmp_path / "gone.png")], [0])
    with pytest.raises(DataError, match="gone.png: cannot be read"):
        dataset[0]


# ---------------------------------------------------------------------- arguments and config
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"val_size": 1.0}, "val_size"),
        ({"test_size": -0.1}, "test_size"),
        ({"val_size": 0.5, "test_size": 0.5}, "val_size \\+ test_size"),
        ({"image_size": 0}, "image_size"),
        ({"image_channels": 2}, "image_channels"),
        ({"num_workers": -1}, "num_workers"),
        ({"max_image_pixels": 0}, "max_image_pixels"),
        ({"cache": "sometimes"}, "cache"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        FolderDataModule(**kwargs)


def test_config_and_command_line_see_every_option(tmp_path: Path) -> None:
    from jsonargparse import ArgumentParser

    config = yaml.safe_load((REPO / "configs" / "data" / "folder.yaml").read_text())
    assert config["class_path"] == "project.datamodules.FolderDataModule"
    parser = ArgumentParser()
    parser.add_class_arguments(FolderDataModule, "data")
    args = parser.parse_args([f"--data.{key}={value}" for key, value in config["init_args"].items()])
    options = vars(args.data)
    assert {"image_channels", "cache", "strict", "batch_size", "normalize", "split_seed"} <= set(options)
    assert options["hflip"] is True and options["image_channels"] == 3
    dm = FolderDataModule(**{**options, "root": str(_folder(tmp_path))})
    assert dm.batch_size == 32 and dm.input_shape == (3, 64, 64) and dm.class_names == ["cat", "dog", "frog"]


def test_hyperparameters_do_not_clash_with_the_models(tmp_path: Path) -> None:
    # Lightning refuses to log a model and a data module that share a hyperparameter with different values.
    from project.models import CNN, MLP, DeepNet

    dm = _module(_folder(tmp_path))
    for model in (CNN(**dm.model_args()), MLP(**dm.model_args()), DeepNet(**dm.model_args())):
        assert not (set(model.hparams) & set(dm.hparams) - {"_class_path"}), type(model).__name__


@pytest.mark.parametrize("sampler", ["epoch-seeded", "distributed"])
def test_resumable_loader_continues_the_epoch_where_the_checkpoint_left_it(sampler: str) -> None:
    dataset = TensorDataset(torch.arange(50))

    def loader() -> ResumableDataLoader:
        if sampler == "epoch-seeded":
            order = EpochSeededSampler(dataset, seed=3)
        else:  # what Lightning swaps in under DDP: the done batches are loaded and dropped instead of skipped
            order = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=3)
        return ResumableDataLoader(dataset, batch_size=8, sampler=order)

    straight = loader()
    straight.sampler.set_epoch(2)
    batches = [batch[0].tolist() for batch in straight]
    interrupted = loader()
    interrupted.sampler.set_epoch(2)
    iterator = iter(interrupted)
    first = [next(iterator)[0].tolist() for _ in range(3)]
    state = interrupted.state_dict()
    assert first == batches[:3] and state == {"epoch": 2, "batches_done": 3}

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    assert [batch[0].tolist() for batch in resumed] == batches[3:]
    assert resumed.state_dict() == {"epoch": 2, "batches_done": len(batches)}
    # The next epoch is whole again, and a checkpoint from another epoch skips nothing.
    resumed.sampler.set_epoch(3)
    assert sum(len(batch[0]) for batch in resumed) == 50
    stale = loader()
    stale.load_state_dict({"epoch": 1, "batches_done": 4})
    stale.sampler.set_epoch(2)
    assert [batch[0].tolist() for batch in stale] == batches
