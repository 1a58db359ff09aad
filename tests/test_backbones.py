"""Any torchvision backbone through ``--model transfer``: head, stem, weights, preprocessing, the whole run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import TINY
from fakedata import write_torchvision_weights

from project.engine import evaluate, export
from project.engine.checkpoint import load_model
from project.engine.cli import main as train
from project.engine.errors import UserError
from project.engine.options import model_preprocessing, resolve_image_size, resolve_normalize
from project.models import Transfer, backbones

# Small, and different in where their head (classifier[3], classifier[1], a 1x1 conv in classifier[1]) and stem sit.
SMALL = ["mobilenet_v3_small", "efficientnet_b0", "squeezenet1_1"]


def test_every_torchvision_classification_model_is_a_backbone_with_preprocessing() -> None:
    names = torchvision.models.list_models(module=torchvision.models)
    assert len(names) > 50 and "convnext_tiny" in names and "vit_b_16" in names
    for name in names:
        backbones.check_name(name)  # no error
        preferred = backbones.preferred_preprocessing(name)
        assert preferred["image_size"] >= 224 and len(preferred["mean"]) == len(preferred["std"]) == 3, name
        # What the default weights' own preprocessing does: its centre crop, mean and std.
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        assert preferred["image_size"] == transforms.crop_size[0], name
        assert preferred["mean"] == pytest.approx(transforms.mean) and preferred["std"] == pytest.approx(transforms.std)
    # A few by their documented values: not all are ImageNet's 224 px.
    known = {"resnet18": 224, "inception_v3": 299, "efficientnet_b7": 600, "vit_h_14": 518}
    assert {name: backbones.preferred_preprocessing(name)["image_size"] for name in known} == known


@pytest.mark.parametrize(
    ("name", "head", "size"),
    [
        ("mobilenet_v3_small", "classifier.3", 32),
        ("efficientnet_b0", "classifier.1", 32),
        ("squeezenet1_1", "classifier.1", 32),
        ("convnext_tiny", "classifier.2", 32),
        ("vit_b_16", "heads.head", 32),  # its position embeddings are built for (and interpolated to) the input
        ("swin_t", "head", 224),  # torchvision's minimum size for it
        ("densenet121", "classifier", 32),
        ("googlenet", "fc", 32),
    ],
)
def test_the_head_is_resized_and_only_it_trains_with_a_frozen_backbone(name: str, head: str, size: int) -> None:
    model = Transfer(backbone=name, weights="none", num_classes=7, input_shape=(1, size, size), finetune="head")
    assert model.head_name == head
    trainable = {key for key, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {f"network.{head}.{kind}" for kind in ("weight", "bias")}
    # The backbone is everything else, parameters held by a module itself (ViT's class token) included.
    frozen = sum(p.numel() for p in model.backbone.parameters())
    assert frozen + sum(p.numel() for p in model.network.get_submodule(head).parameters()) == sum(
        p.numel() for p in model.network.parameters()
    )
    assert backbones.find_stem(model.network)[1].in_channels == 1
    assert model.eval()(torch.randn(2, 1, size, size)).shape == (2, 7)


def test_an_unknown_backbone_names_close_matches() -> None:
    with pytest.raises(UserError, match=r"unknown backbone 'mobilenetv3_small'; did you mean mobilenet_v3_small"):
        Transfer(backbone="mobilenetv3_small", weights="none", num_classes=3, input_shape=(3, 32, 32))


def test_an_input_too_small_for_the_network_is_refused() -> None:
    with pytest.raises(ValueError, match="alexnet needs inputs of at least 63 px"):
        Transfer(backbone="alexnet", weights="none", num_classes=3, input_shape=(3, 32, 32))


def test_imagenet_weights_load_from_the_cache_and_gray_input_sums_the_stem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = write_torchvision_weights(tmp_path, "mobilenet_v3_small", seed=1)
    assert path.name == "mobilenet_v3_small-047dcff4.pth"
    saved = torch.load(path, weights_only=True)
    rgb = Transfer(backbone="mobilenet_v3_small", num_classes=4, input_shape=(3, 32, 32), finetune="all")
    assert torch.equal(rgb.network.features[3].block[0][0].weight, saved["features.3.block.0.0.weight"])
    assert rgb.network.classifier[3].out_features == 4  # a new head
    gray = Transfer(backbone="mobilenet_v3_small", num_classes=4, input_shape=(1, 32, 32), finetune="all")
    gray.network.classifier[3].load_state_dict(rgb.network.classifier[3].state_dict())
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        # The first blocks' features: a randomly initialised network's logits hardly depend on the input.
        features = gray.eval().network.features[:4](images)
        torch.testing.assert_close(features, rgb.eval().network.features[:4](images.expand(-1, 3, -1, -1)))
        assert not torch.allclose(features[0], features[1], atol=1e-3)  # they do depend on the image
        torch.testing.assert_close(gray(images), rgb(images.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_missing_weights_name_the_file_and_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models._api as weights_api

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(weights_api, "load_state_dict_from_url", no_network)
    folder = tmp_path / "empty" / "hub" / "checkpoints"
    with pytest.raises(UserError) as raised:
        Transfer(backbone="efficientnet_b0", num_classes=3, input_shape=(3, 32, 32))
    message = str(raised.value)
    assert "\n" not in message
    assert f"put the file efficientnet_b0_rwightman-7f5810bc.pth into {folder}" in message


def test_a_state_dict_file_of_the_architecture_keeps_a_head_of_the_same_size(tmp_path: Path) -> None:
    source = torchvision.models.get_model("squeezenet1_1", num_classes=5)
    torch.save(source.state_dict(), tmp_path / "mine.pth")
    shape = (3, 32, 32)
    model = Transfer(backbone="squeezenet1_1", weights=str(tmp_path / "mine.pth"), num_classes=5, input_shape=shape)
    assert torch.equal(model.network.classifier[1].weight, source.classifier[1].weight)
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a state dict of this network"):
        Transfer(backbone="squeezenet1_1", weights=str(tmp_path / "other.pth"), num_classes=5, input_shape=shape)


def test_preprocessing_follows_the_weights() -> None:
    def preferred(backbone: str, weights: str) -> dict | None:  # what Transfer declares; the command line asks it
        return model_preprocessing(Transfer, {"backbone": backbone, "weights": weights})

    pretrained = preferred("efficientnet_v2_l", "imagenet")
    assert resolve_normalize("auto", pretrained) == "inception"  # its weights' transforms: mean = std = 0.5
    assert resolve_image_size("auto", pretrained) == 480
    assert resolve_normalize("auto", preferred("convnext_tiny", "imagenet")) == "imagenet"
    assert resolve_image_size("auto", preferred("inception_v3", "imagenet")) == 299
    random = preferred("efficientnet_v2_l", "none")
    # Without pretrained weights: the data set's statistics, and "auto" stays for the data module (its own size).
    assert resolve_normalize("auto", random) == "dataset" and resolve_image_size("auto", random) == "auto"
    assert resolve_image_size(64, pretrained) == 64 and resolve_normalize("none", pretrained) == "none"


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL)
def test_a_backbone_trains_resumes_evaluates_and_exports(tmp_path: Path, data_root: Path, name: str) -> None:
    run = tmp_path / "run"
    args = [*TINY, "--model", "transfer", "--model.backbone", name, "--model.weights", "none"]
    args += ["--model.finetune", "all", "--data.root", str(data_root), "--trainer.limit_test_batches", "1.0"]
    args += ["--run_dir", str(run)]
    assert train(args) == 0
    assert train([*args[:-2], "--resume", str(run), "--trainer.max_epochs", "2"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "project.models.Transfer" and summary["global_step"] == 6
    best = run / "checkpoints" / "best.ckpt"
    hparams = torch.load(best, weights_only=True)["hyper_parameters"]
    assert hparams["backbone"] == name and hparams["weights"] == "none"
    assert evaluate.main(["--ckpt", str(best)]) == 0
    evaluated = json.loads((run / "eval" / "eval.json").read_text())
    assert evaluated["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-6)
    assert export.main(["--ckpt", str(best), "--format", "onnx"]) == 0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(run / "export" / "best.onnx"), providers=["CPUExecutionProvider"])
    inputs = torch.randn(3, 3, 32, 32)
    (outputs,) = session.run(["logits"], {"images": inputs.numpy()})
    with torch.no_grad():
        expected = load_model(best)(inputs)
    torch.testing.assert_close(torch.from_numpy(outputs), expected, rtol=1e-4, atol=1e-4)
