"""Loading one image file: RGBA on white, grey, palette and 16-bit converted, resized, unreadable files named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from folder_helpers import _rgb, _save
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from project.engine.data.images import FolderImageDataset, load_image
from project.engine.errors import DataError


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
