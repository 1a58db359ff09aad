"""Data modules: each gives batches of uint8 images plus the class names, input shape and normalization."""

from project.datamodules.base import ImageDataModule
from project.datamodules.cifar10 import CIFAR10DataModule
from project.datamodules.folder import FolderDataModule
from project.datamodules.mnist import MNISTDataModule

__all__ = ["CIFAR10DataModule", "FolderDataModule", "ImageDataModule", "MNISTDataModule"]
