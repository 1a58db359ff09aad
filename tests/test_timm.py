"""``--model.backbone timm/NAME``: timm's networks through the same Transfer class (the optional extra ``.[timm]``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY

from project.engine import evaluate
from project.engine.cli import main as train
from project.engine.errors import UserError
from project.engine.options import model_preprocessing, resolve_image_size, resolve_normalize
from project.models import Transfer, backbones

# An optional extra for users (.[timm]), and part of .[dev]: skipped only where the dev extra is not installed.
timm = pytest.importorskip("timm", reason="timm is not installed (pip install -e '.[dev]' or '.[timm]')")


def test_a_timm_network_gets_a_new_head_a_gray_stem_and_a_frozen_backbone() -> None:
    model = Transfer(backbone="timm/resnet10t", weights="none", num_classes=5, input_shape=(1, 32, 32))
    assert model.head_name == "fc" and model.network.fc.out_features == 5
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {"network.fc.weight", "network.fc.bias"}
    assert backbones.find_stem(model.network)[1].in_channels == 1
    assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_timm_preprocessing_comes_from_its_pretrained_config() -> None:
    resnet = model_preprocessing(Transfer, {"backbone": "timm/resnet10t", "weights": "imagenet"})
    vit = model_preprocessing(Transfer, {"backbone": "timm/vit_tiny_patch16_224", "weights": "imagenet"})
    assert resolve_image_size("auto", resnet) == 176
    assert resolve_normalize("auto", resnet) == "imagenet"
    assert resolve_normalize("auto", vit) == "inception"


def test_unknown_timm_names_and_missing_weights_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="did you mean resnet10t"):
        Transfer(backbone="timm/resnet10", weights="none", num_classes=5, input_shape=(3, 32, 32))

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(UserError, match="timm/resnet10t: timm could not load its pretrained weights") as raised:
        Transfer(backbone="timm/resnet10t", num_classes=5, input_shape=(3, 32, 32))
    assert "\n" not in str(raised.value) and "network unreachable" in str(raised.value)  # offline, by the patch


def test_a_timm_state_dict_file_loads(tmp_path: Path) -> None:
    source = timm.create_model("resnet10t", num_classes=5)
    torch.save(source.state_dict(), tmp_path / "mine.pth")
    model = Transfer(
        backbone="timm/resnet10t", weights=str(tmp_path / "mine.pth"), num_classes=5, input_shape=(3, 32, 32)
    )
    assert torch.equal(model.network.fc.weight, source.fc.weight)


@pytest.mark.slow
def test_a_timm_backbone_trains_and_evaluates(tmp_path: Path, data_root: Path) -> None:
    run = tmp_path / "run"
    args = [*TINY, "--model", "transfer", "--model.backbone", "timm/resnet10t", "--model.weights", "none"]
    args += ["--data.root", str(data_root), "--trainer.limit_test_batches", "1.0", "--run_dir", str(run)]
    assert train(args) == 0
    assert evaluate.main(["--ckpt", str(run / "checkpoints" / "best.ckpt")]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert json.loads((run / "eval" / "eval.json").read_text())["test_acc"] == pytest.approx(summary["test_acc"])


def test_timm_layers_for_layer_wise_decay_are_timms_own_groups() -> None:
    model = Transfer(backbone="timm/resnet10t", weights="none", num_classes=5, input_shape=(3, 32, 32), finetune="all")
    layers = backbones.layer_indices(model.network, model.head_name)
    matcher = timm.models.group_parameters(model.network, model.network.group_matcher(coarse=False))
    assert len(set(layers.values())) == len(matcher) - 1  # every group but the head's
    assert layers["conv1.0.weight"] == 0 and "fc.weight" not in layers
    deepest = max(layers, key=layers.__getitem__)
    assert deepest.startswith("layer4.")
