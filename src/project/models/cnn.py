"""A small convolutional net for MNIST- and CIFAR-sized images (batch-normalized VGG-style stages)."""

from __future__ import annotations

from typing import Any

from torch import nn

from project.models.classifier import ImageClassifier


class CNN(ImageClassifier):
    """Stages of two 3×3 conv → BatchNorm → ReLU, each followed by 2×2 max-pooling; global pooling; a linear head.

    Args:
        channels: Output channels of each stage (each stage halves the resolution).
        dropout: Dropout probability before the head.
        **kwargs: Training options of :class:`ImageClassifier`.
    """

    def __init__(self, channels: list[int] | tuple[int, ...] = (32, 64, 128), dropout: float = 0.25, **kwargs: Any):
        self.channels = [int(width) for width in channels]
        self.dropout = dropout
        super().__init__(**kwargs)

    def build_network(self, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        layers: list[nn.Module] = []
        width = input_shape[0]
        for out in self.channels:
            for conv_in in (width, out):
                layers += [
                    nn.Conv2d(conv_in, out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(True),
                ]
            layers.append(nn.MaxPool2d(2))
            width = out
        layers += [
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(self.dropout),
            nn.Linear(width, num_classes),
        ]
        return nn.Sequential(*layers)
