"""The textbook's MNISTNet: a multi-layer perceptron over flattened pixels."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from project.models.classifier import ImageClassifier


class MLP(ImageClassifier):
    """Flatten → (Linear → [BatchNorm] → ReLU → Dropout) per hidden size → Linear; the textbook's 784→512→256→10.

    Args:
        hidden_sizes: Width of each hidden layer.
        dropout: Dropout probability after each hidden layer.
        batch_norm: BatchNorm after each hidden Linear layer (which then needs no bias).
        **kwargs: Training options of :class:`ImageClassifier` (``lr``, ``optimizer``, ``scheduler``, ...).
    """

    def __init__(
        self,
        hidden_sizes: list[int] | tuple[int, ...] = (512, 256),
        dropout: float = 0.2,
        batch_norm: bool = False,
        **kwargs: Any,
    ):
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.hidden_sizes = [int(size) for size in hidden_sizes]
        self.dropout, self.batch_norm = dropout, batch_norm
        super().__init__(**kwargs)

    def build_network(self, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in self.hidden_sizes:
            layers.append(nn.Linear(width, size, bias=not self.batch_norm))
            if self.batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers += [nn.ReLU(inplace=True), nn.Dropout(self.dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)
