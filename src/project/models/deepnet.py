"""The textbook's DeepNet: a deeper perceptron with batch normalization and heavy dropout."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from project.models.classifier import ImageClassifier


class DeepNet(ImageClassifier):
    """Flatten → (Linear → BatchNorm → ReLU → Dropout) per hidden size → Linear; the textbook's 512→256→128.

    Args:
        hidden_sizes: Width of each hidden layer.
        dropout: Dropout probability after each hidden layer.
        **kwargs: Training options of :class:`ImageClassifier`.
    """

    def __init__(
        self, hidden_sizes: list[int] | tuple[int, ...] = (512, 256, 128), dropout: float = 0.5, **kwargs: Any
    ):
        self.hidden_sizes = [int(size) for size in hidden_sizes]
        self.dropout = dropout
        super().__init__(**kwargs)

    def build_network(self, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size in self.hidden_sizes:
            # No bias before BatchNorm: its shift makes the bias redundant.
            layers += [nn.Linear(width, size, bias=False), nn.BatchNorm1d(size), nn.ReLU(inplace=True)]
            layers.append(nn.Dropout(self.dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        return nn.Sequential(*layers)
