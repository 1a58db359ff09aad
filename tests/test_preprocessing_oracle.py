"""What ``predict.py`` (and the server, which shares its code) feeds the model for an image file, against two oracles
that are not that code: torchvision's own transforms on the same file, and the folder data module's evaluation batch
for the same file (what the model saw in validation and test). Images that need resizing, as most real ones do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fakedata import write_image_folder
from PIL import Image
from torchvision.transforms import v2

from project.datamodules import FolderDataModule
from project.engine.inputs import file_input

SIZE = 32
#: One step of 8-bit rounding, in normalized units (std about 0.2): JPEG decoders of PIL and torchvision may differ
#: by that; resizing without antialiasing a 96 x 72 image to 32 px is off by far more.
TOLERANCE = 1.5 / 255 / 0.2


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("oracle")
    return write_image_folder(root, size=(96, 72), formats=("png", "jpg"), layout="split", split_counts=(4, 1, 3))


def _torchvision(path: str, preprocessing: dict) -> torch.Tensor:
    """torchvision's reference transforms, as its classification references compose them."""
    height, width = preprocessing["image_size"]
    if preprocessing.get("resize_shorter_to"):
        resize = [v2.Resize(preprocessing["resize_shorter_to"], antialias=True), v2.CenterCrop((height, width))]
    else:
        resize = [v2.Resize((height, width), antialias=True)]
    steps = [v2.PILToTensor(), *resize, v2.ToDtype(torch.float32, scale=True)]
    steps.append(v2.Normalize(preprocessing["mean"], preprocessing["std"]))
    return v2.Compose(steps)(Image.open(path).convert("RGB"))


def _evaluation_batches(data: FolderDataModule) -> torch.Tensor:
    """The test split as the model receives it in testing (normalized on the device, in order)."""
    data.setup("test")
    return torch.cat([data.on_after_batch_transfer(batch, 0).images for batch in data.test_dataloader()])


@pytest.mark.parametrize(
    "options",
    [{"cache": "always"}, {"cache": "never", "num_workers": 0}, {"preset": "imagenet", "num_workers": 0}],
    ids=["in-memory", "decoded-per-epoch", "imagenet-preset"],
)
def test_predict_feeds_the_model_what_torchvision_and_the_evaluation_batches_give(images: Path, options: dict) -> None:
    data = FolderDataModule(root=str(images), image_size=SIZE, batch_size=4, **options)
    evaluated = _evaluation_batches(data)
    preprocessing = data.preprocessing()
    paths = [path for path, _ in data.splits_files()["test"]]
    assert len(paths) == len(evaluated) == 9
    for path, seen in zip(paths, evaluated, strict=True):
        given = file_input(path, preprocessing)
        assert given.shape == (3, SIZE, SIZE)
        assert torch.allclose(given, seen, atol=TOLERANCE), (path, (given - seen).abs().max())
        reference = _torchvision(path, preprocessing)
        assert torch.allclose(given, reference, atol=TOLERANCE), (path, (given - reference).abs().max())
