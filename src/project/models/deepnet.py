"""The textbook's DeepNet: a deeper perceptron with batch normalization and heavy dropout."""

from __future__ import annotations

from typing import Any

from project.models.mlp import MLP


class DeepNet(MLP):
    """The :class:`MLP` with the textbook DeepNet's defaults: 512→256→128, BatchNorm, dropout 0.5.

    Args:
        hidden_sizes: Width of each hidden layer.
        dropout: Dropout probability after each hidden layer.
        batch_norm: BatchNorm after each hidden Linear layer.
        **kwargs: Shapes and training options of :class:`ImageClassifier`.
    """

    def __init__(
        self,
        hidden_sizes: list[int] | tuple[int, ...] = (512, 256, 128),
        dropout: float = 0.5,
        batch_norm: bool = True,
        **kwargs: Any,
    ):
        super().__init__(hidden_sizes=hidden_sizes, dropout=dropout, batch_norm=batch_norm, **kwargs)
