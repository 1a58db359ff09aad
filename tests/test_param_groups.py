"""Parameter groups: weight decay without the biases and normalization layers (``--model.decay_norm_and_bias
false``), and layer-wise learning-rate decay (``--model.layer_decay``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY
from torch import nn

from project.engine.cli import main as train
from project.models import MLP, Transfer


def _step_with_zero_gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    """One SGD step where the loss contributes nothing: what moves, moves by weight decay alone."""
    optimizer = model.configure_optimizers()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    return before


@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_biases_and_norms_are_exempt_from_weight_decay_on_request(decay_norm_and_bias: bool) -> None:
    model = MLP(
        num_classes=3,
        input_shape=(1, 4, 4),
        hidden_sizes=[8],
        batch_norm=True,
        optimizer="sgd",
        momentum=0.0,
        lr=0.5,
        weight_decay=0.1,
        decay_norm_and_bias=decay_norm_and_bias,
    )
    before = _step_with_zero_gradients(model)
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    for name, parameter in model.named_parameters():
        exempt = parameter.ndim == 1  # here: the Linear biases and BatchNorm's weights and biases
        if exempt and not decay_norm_and_bias:
            assert torch.equal(parameter, before[name]), name
        else:  # SGD's decay: p <- p - lr * wd * p
            torch.testing.assert_close(parameter, before[name] * (1 - 0.5 * 0.1), msg=name)
    groups = model.configure_optimizers().param_groups
    assert len(groups) == (1 if decay_norm_and_bias else 2)


def test_a_vision_transformers_layer_norms_and_biases_are_exempt() -> None:
    model = Transfer(
        backbone="vit_b_16",
        weights="none",
        num_classes=3,
        input_shape=(3, 32, 32),
        finetune="all",
        weight_decay=0.05,
        optimizer="adamw",
        decay_norm_and_bias=False,
    )
    decayed, exempt = model.configure_optimizers().param_groups
    assert exempt["weight_decay"] == 0.0 and decayed["weight_decay"] == 0.05
    names = {id(p): n for n, p in model.named_parameters()}
    exempt_names = {names[id(p)] for p in exempt["params"]}
    assert "network.encoder.ln.weight" in exempt_names and "network.heads.head.bias" in exempt_names
    assert all(p.ndim >= 2 for p in decayed["params"])
    assert "network.heads.head.weight" in {names[id(p)] for p in decayed["params"]}


@pytest.mark.parametrize(
    ("backbone", "expected"),
    [
        # ResNet-18: conv1, bn1, layer1..layer4 below the head (6 layers).
        ("resnet18", {"network.conv1.weight": 6, "network.layer1.0.conv1.weight": 4, "network.layer4.1.bn2.bias": 1}),
        # ViT: class token, patch projection, position embedding, 12 encoder layers, the final norm (16 layers).
        (
            "vit_b_16",
            {
                "network.class_token": 16,
                "network.encoder.layers.encoder_layer_0.ln_1.weight": 13,
                "network.encoder.layers.encoder_layer_11.mlp.0.weight": 2,
                "network.encoder.ln.bias": 1,
            },
        ),
        ("mobilenet_v3_small", {"network.features.0.0.weight": 14, "network.features.12.0.weight": 2}),
    ],
)
def test_layer_wise_decay_scales_each_layers_rate_by_its_depth(backbone: str, expected: dict[str, int]) -> None:
    model = Transfer(
        backbone=backbone,
        weights="none",
        num_classes=3,
        input_shape=(3, 32, 32),
        finetune="all",
        optimizer="sgd",
        momentum=0.0,
        lr=0.1,
        layer_decay=0.5,
    )
    lr_of = {id(p): group["lr"] for group in model.configure_optimizers().param_groups for p in group["params"]}
    learning_rates = {name: lr_of[id(p)] for name, p in model.named_parameters()}
    for name, exponent in expected.items():
        assert learning_rates[name] == pytest.approx(0.1 * 0.5**exponent), name
    head = [name for name in learning_rates if name.startswith(f"network.{model.head_name}.")]
    assert head and all(learning_rates[name] == 0.1 for name in head)
    ordered = list(learning_rates.values())  # parameters in module order: the rate never falls towards the head
    assert all(a <= b for a, b in zip(ordered, ordered[1:], strict=False))

    # One SGD step on gradients of ones moves every parameter by exactly its group's rate.
    optimizer = model.configure_optimizers()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.ones_like(parameter)
    optimizer.step()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(before[name] - parameter.detach(), torch.full_like(parameter, learning_rates[name]))


def test_layer_wise_decay_needs_the_whole_network_training() -> None:
    shapes = {"backbone": "resnet18", "weights": "none", "num_classes": 3, "input_shape": (3, 32, 32)}
    with pytest.raises(ValueError, match="layer_decay needs finetune='all'"):
        Transfer(**shapes, finetune="head", layer_decay=0.5)
    with pytest.raises(ValueError, match="layer_decay needs finetune='all' and a value in"):
        Transfer(**shapes, finetune="all", layer_decay=1.5)


@pytest.mark.slow
def test_layer_wise_decay_from_the_command_line_keeps_its_ratios_under_the_schedule(
    tmp_path: Path, data_root: Path
) -> None:
    run = tmp_path / "run"
    args = [*TINY, "--model", "resnet", "--model.weights", "none", "--model.finetune", "all", "--data", "cifar10"]
    args += ["--data.root", str(data_root), "--model.layer_decay", "0.7"]
    args += ["--model.scheduler", "step", "--model.step_size", "1", "--model.gamma", "0.5"]
    assert train([*args, "--trainer.max_epochs", "2", "--no_test", "true", "--run_dir", str(run)]) == 0
    groups = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]["param_groups"]
    lr = groups[-1]["initial_lr"]  # the head's
    assert sorted({round(math.log(g["initial_lr"] / lr, 0.7), 6) for g in groups}) == [0, 1, 2, 3, 4, 5, 6]
    assert all(g["lr"] == pytest.approx(g["initial_lr"] * 0.25) for g in groups)  # each decayed twice by the schedule
