"""Models: one LightningModule with the training logic (:class:`ImageClassifier`), one subclass per network."""

from project.models.classifier import ImageClassifier
from project.models.cnn import CNN
from project.models.deepnet import DeepNet
from project.models.mlp import MLP
from project.models.resnet import ResNet
from project.models.transfer import Transfer

__all__ = ["CNN", "MLP", "DeepNet", "ImageClassifier", "ResNet", "Transfer"]
