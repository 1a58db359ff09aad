"""``--data streaming --data.preset imagenet`` trains on random resized crops and flips, and evaluates on the centre:
the training loader's images against torchvision's evaluation transform of the same stored files."""

from __future__ import annotations

from pathlib import Path

import torch
from fakedata import write_image_folder
from litdata import StreamingDataset
from torchvision.io import decode_image
from torchvision.transforms import v2

from project.datamodules.streaming import StreamingDataModule
from project.engine import prepare

SIZE = 24


def test_training_crops_at_random_and_evaluation_takes_the_centre(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", per_class=6, size=(64, 48), formats=("png",))
    shards = tmp_path / "shards"
    assert (
        prepare.main(["--data", "folder", "--data.root", str(root), "--output", str(shards), "--num_workers", "1"]) == 0
    )
    data = StreamingDataModule(input_dir=str(shards), image_size=SIZE, preset="imagenet", num_workers=0, batch_size=2)
    data.setup("fit")
    centre = v2.Compose([v2.Resize(round(SIZE * 256 / 224), antialias=True), v2.CenterCrop(SIZE)])
    for split in ("train", "val"):
        loader = data.train_dataloader() if split == "train" else data.val_dataloader()
        stored = StreamingDataset(str(shards / split))
        same = []
        for index in range(len(stored)):
            original = decode_image(torch.frombuffer(bytearray(stored[index]["image"]), dtype=torch.uint8))
            image, _ = loader.dataset[index]
            assert image.shape == (3, SIZE, SIZE)
            same.append(torch.equal(image, centre(original)))
        if split == "train":
            assert not any(same), same  # a random crop is (almost surely) never exactly the centre
        else:
            assert all(same), same
