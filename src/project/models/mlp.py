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
        **kwargs: Shapes and training options of :class:`ImageClassifier` (``num_classes``, ``lr``, ...).
    """

    def __init__(
        self,
        hidden_sizes: list[int] | tuple[int, ...] = (512, 256),
        dropout: float = 0.2,
        batch_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(self.hparams.input_shape)
        for size in hidden_sizes:
            layers.append(nn.Linear(width, size, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers += [nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, self.hparams.num_classes))
        self.network = nn.Sequential(*layers)
