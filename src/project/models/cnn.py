"""A small convolutional net for MNIST- and CIFAR-sized images (batch-normalized VGG-style stages)."""

from __future__ import annotations

from typing import Any

from torch import nn

from project.models.classifier import ImageClassifier


class CNN(ImageClassifier):
    """Stages of 3×3 conv → BatchNorm → ReLU, each stage followed by 2×2 max-pooling; global pooling; a linear head.

    Args:
        channels: Output channels of each stage (each stage halves the resolution).
        convs_per_stage: 3×3 convolutions in each stage.
        dropout: Dropout probability before the head.
        **kwargs: Shapes and training options of :class:`ImageClassifier`.
    """

    def __init__(
        self,
        channels: list[int] | tuple[int, ...] = (16, 32, 64),
        convs_per_stage: int = 2,
        dropout: float = 0.25,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        layers: list[nn.Module] = []
        width = self.hparams.input_shape[0]
        for out in channels:
            for conv_in in (width, *[out] * (convs_per_stage - 1)):
                layers += [nn.Conv2d(conv_in, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(True)]
            layers.append(nn.MaxPool2d(2))
            width = out
        layers += [
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(width, self.hparams.num_classes),
        ]
        self.network = nn.Sequential(*layers)
