"""The presets of project.engine.data.presets, with torchvision as the oracle: the same pixels as its transforms on
the same tensor, the same crop boxes as its RandomResizedCrop from the same random stream."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop, v2

from project.engine.data.images import decode_image_bytes
from project.engine.data.presets import RandomResizedCropFlip, build_preset, sample_generator


def _image(height: int = 375, width: int = 500, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, height, width), dtype=np.uint8))


def _jpeg(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("shape", [(375, 500), (500, 375), (60, 40), (224, 224)])
def test_imagenet_eval_is_resize_then_center_crop(shape: tuple[int, int]) -> None:
    image = _image(*shape)
    for size in (224, 32):
        expected = v2.CenterCrop(size)(v2.Resize(round(size * 256 / 224), antialias=True)(image))
        output = build_preset("imagenet", train=False, size=size)(image, sample_generator(0, 0, 0))
        assert output.dtype == torch.uint8 and output.shape == (3, size, size)
        assert torch.equal(output, expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_squash_is_what_decoding_at_the_size_gives(channels: int) -> None:
    data = _jpeg(_image(75, 100))
    for size in (32, 224):
        original = decode_image_bytes(data, channels, size=None)
        for train in (True, False):
            output = build_preset("squash", train, size)(original, sample_generator(1, 2, 3))
            assert torch.equal(output, decode_image_bytes(data, channels, size)), (size, train)


def test_the_crop_box_is_torchvisions_from_the_same_stream() -> None:
    # RandomResizedCrop.get_params draws from the global generator; seeded alike, the box is the same.
    crop = RandomResizedCropFlip(224)
    for seed in range(200):
        for height, width in ((375, 500), (30, 400), (20, 20)):  # (30, 400): often the fallback to the centre
            torch.manual_seed(seed)
            expected = RandomResizedCrop.get_params(torch.empty(3, height, width), [0.08, 1.0], [3 / 4, 4 / 3])
            assert crop.box(height, width, torch.Generator().manual_seed(seed)) == expected


@pytest.mark.parametrize("box", [(10, 20, 300, 250), (0, 0, 375, 500), (100, 300, 60, 80)])  # shrink, all, enlarge
@pytest.mark.parametrize("channels", [1, 3])
def test_a_fixed_box_is_torchvisions_resized_crop_and_flip(
    monkeypatch: pytest.MonkeyPatch, box: tuple[int, int, int, int], channels: int
) -> None:
    image = _image()[:channels]
    crop = RandomResizedCropFlip(224)
    monkeypatch.setattr(crop, "box", lambda height, width, generator: box)
    expected = v2.functional.resized_crop(image, *box, [224, 224], antialias=True)
    for flip in (False, True):
        monkeypatch.setattr(crop, "flips", lambda generator, flip=flip: flip)
        output = crop(image, torch.Generator())
        assert torch.equal(output, v2.functional.horizontal_flip(expected) if flip else expected)


def _draws(height: int, width: int, n: int = 4000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area fraction, aspect ratio (w / h) and flip of ``n`` samples' draws."""
    crop = RandomResizedCropFlip(224)
    areas, ratios, flips = [], [], []
    for index in range(n):
        generator = sample_generator(0, 0, index)
        top, left, h, w = crop.box(height, width, generator)
        assert top >= 0 and top + h <= height and left >= 0 and left + w <= width
        areas.append(h * w / (height * width))
        ratios.append(w / h)
        flips.append(crop.flips(generator))
    return np.array(areas), np.array(ratios), np.array(flips)


def test_drawn_boxes_keep_to_the_scale_and_ratio_and_half_are_flipped() -> None:
    areas, ratios, flips = _draws(375, 500)
    # Bounds up to the rounding of w and h to whole pixels.
    assert areas.min() >= 0.08 * 0.97 and areas.max() <= 1.0
    assert areas.min() < 0.1 and areas.max() > 0.9  # the whole range is drawn
    assert ratios.min() >= 3 / 4 * 0.97 and ratios.max() <= 4 / 3 * 1.03
    # 4000 fair coins: the standard deviation of the fraction is 0.008; 0.04 is five of them.
    assert abs(flips.mean() - 0.5) < 0.04


def test_drawn_boxes_are_uniform_in_area_and_log_ratio() -> None:
    # On a square image no box of at most 3/4 of its area is rejected: there, the area is uniform in [0.08, 0.75]
    # (mean 0.415, standard error about 0.004) and log(ratio) uniform in [log 3/4, log 4/3] (mean 0, about 0.003).
    areas, ratios, _ = _draws(400, 400)
    kept = areas <= 0.75
    assert kept.mean() > 0.6
    assert abs(areas[kept].mean() - 0.415) < 0.02
    assert abs(np.log(ratios[kept]).mean()) < 0.02


def test_the_augmentation_depends_only_on_seed_epoch_and_index() -> None:
    image = _image()
    train = build_preset("imagenet", train=True, size=64)

    def output(seed: int, epoch: int, index: int) -> torch.Tensor:
        return train(image, sample_generator(seed, epoch, index))

    reference = output(42, 3, 7)
    assert output(42, 3, 7).shape == (3, 64, 64)
    assert torch.equal(output(42, 3, 7), reference)
    for other in ((42, 4, 7), (42, 3, 8), (43, 3, 7), (42, 7, 3)):
        assert not torch.equal(output(*other), reference), other
    # The global random state is neither used nor changed.
    state = torch.get_rng_state()
    output(42, 3, 7)
    assert torch.equal(torch.get_rng_state(), state)


def test_sample_generators_are_distinct_streams() -> None:
    firsts = {sample_generator(0, epoch, index).initial_seed() for epoch in range(10) for index in range(1000)}
    assert len(firsts) == 10_000
    assert sample_generator(0, 1, 2).initial_seed() == sample_generator(0, 1, 2).initial_seed()


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ValueError, match="preset must be"):
        build_preset("random", True, 32)  # type: ignore[arg-type]
    assert math.isclose(build_preset("imagenet", False, 224).resize, 256)  # type: ignore[union-attr]


def test_prediction_repeats_the_imagenet_evaluation_saved_with_the_model(tmp_path) -> None:
    # A checkpoint of a model trained with the imagenet preset carries what evaluation did, so that predict.py,
    # export and the server crop the centre as evaluation did instead of squashing the whole image.
    from fakedata import write_image_folder

    from project.datamodules.folder import FolderDataModule
    from project.engine.inputs import model_input

    root = write_image_folder(tmp_path / "images", per_class=10, size=(50, 30))
    data = FolderDataModule(root=str(root), image_size=24, preset="imagenet", num_workers=0, normalize="imagenet")
    preprocessing = data.preprocessing()
    assert preprocessing["resize_shorter_to"] == round(24 * 256 / 224)
    image = torch.randint(0, 256, (3, 30, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = v2.Normalize(preprocessing["mean"], preprocessing["std"])(
        v2.CenterCrop(24)(v2.Resize(27, antialias=True)(image)).float() / 255
    )
    torch.testing.assert_close(model_input(image, preprocessing), expected, rtol=0, atol=1e-6)
    squash = FolderDataModule(root=str(root), image_size=24, num_workers=0).preprocessing()
    assert "resize_shorter_to" not in squash
    assert model_input(image, squash).shape == (3, 24, 24)
