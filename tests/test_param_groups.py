"""Weight decay without the biases and normalization layers (``--model.decay_norm_and_bias false``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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
