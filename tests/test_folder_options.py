"""FolderDataModule's arguments: invalid ones named, the config file and command line, no clash with the models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from folder_helpers import _folder, _module

from project.datamodules.folder import FolderDataModule

REPO = Path(__file__).resolve().parents[1]


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
