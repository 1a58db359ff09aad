"""Transfer learning from any torchvision (or timm) classification network: pretrained weights, a new head."""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn

from project.callbacks.finetuning import UnfreezeBackbone
from project.engine.api import Preprocessing, UserError
from project.models import backbones
from project.models.classifier import ImageClassifier

#: Normalization layers with running statistics, which a frozen backbone keeps as pretrained.
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class Transfer(ImageClassifier):
    """A torchvision (or ``timm/NAME``) classification network with a new ``num_classes`` head.

    Args:
        backbone: Any name of ``torchvision.models.list_models(module=torchvision.models)`` (``resnet18``,
            ``mobilenet_v3_small``, ``efficientnet_b0``, ``convnext_tiny``, ``vit_b_16``...), or ``timm/NAME`` when
            timm is installed.
        weights: ``imagenet`` (the model's ``DEFAULT`` weights, from torchvision's cache or downloaded), ``none``
            (random init), or the path of a state dict of this network or of a checkpoint of this model.
        finetune: ``head`` trains only the new head (the backbone is frozen, its BatchNorm statistics too);
            ``all`` trains every layer.
        unfreeze_at_epoch: With ``finetune: head``, unfreeze the backbone at this epoch (Lightning's
            ``BaseFinetuning``) and train it with ``lr * backbone_lr_ratio``.
        backbone_lr_ratio: Learning-rate ratio of the backbone to the head once unfrozen.
        layer_decay: Layer-wise learning-rate decay with ``finetune: all``: the head trains at ``lr``, the layer
            below at ``lr * layer_decay``, the one below that at ``lr * layer_decay**2``... (the layers:
            :func:`project.models.backbones.layer_indices`).
        **kwargs: Shapes and training options of :class:`ImageClassifier`.

    With pretrained weights the command line normalizes inputs as the weights expect, and ``--data.image_size auto``
    resizes them to the weights' preferred size (:meth:`pretrained_preprocessing`).
    One-channel inputs (MNIST) get a one-channel first convolution whose kernel is the sum of the pretrained RGB
    kernels: the same output as the gray image on all three channels.
    """

    restore_overrides = {"weights": "none"}  # a checkpoint's weights replace the pretrained ones

    def __init__(
        self,
        backbone: str = "resnet18",
        weights: str = "imagenet",
        finetune: Literal["head", "all"] = "head",
        unfreeze_at_epoch: int | None = None,
        backbone_lr_ratio: float = 0.1,
        layer_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if unfreeze_at_epoch is not None and (unfreeze_at_epoch < 0 or finetune != "head"):
            raise ValueError("unfreeze_at_epoch needs finetune='head' and a value >= 0")
        if layer_decay is not None and (not 0 < layer_decay <= 1 or finetune != "all"):
            raise ValueError(f"layer_decay needs finetune='all' and a value in (0, 1], got {layer_decay}")
        pretrained = weights.lower() != "none"
        hp = self.hparams
        self.network = backbones.build(backbone, hp.num_classes, tuple(hp.input_shape), pretrained)
        self.head_name, _ = backbones.find_head(self.network)
        if weights.lower() == "imagenet":
            self._load_imagenet(backbone)
        elif pretrained:
            backbones.load_into(self.network, _load_state_file(weights), weights)
        if finetune == "head":
            BaseFinetuning.freeze(self.backbone, train_bn=False)

    @classmethod
    def pretrained_preprocessing(cls, *, backbone: str, weights: str, **init_args: Any) -> Preprocessing | None:
        """Pretrained weights (``imagenet`` or a file of them): the input size and normalization of the backbone's
        weights (torchvision's ``weights.transforms()``, timm's pretrained config); ``none``: the data's own."""
        if str(weights).lower() == "none":
            return None
        return backbones.preferred_preprocessing(backbone)

    def frozen_head(self) -> nn.Module | None:
        """The head, while the backbone is frozen for the whole run and runs no dropout."""
        if self.hparams.finetune != "head" or self.hparams.unfreeze_at_epoch is not None:
            return None
        # Dropout, and timm's DropPath/DropBlock (stochastic depth), draw at random in training.
        if any(isinstance(m, DROPOUTS) or type(m).__name__.startswith("Drop") for m in self.backbone.modules()):
            return None
        return self.network.get_submodule(self.head_name)

    @property
    def backbone(self) -> nn.Module:
        """Every layer but the head."""
        return backbones.backbone_of(self.network, self.head_name)

    def _load_imagenet(self, name: str) -> None:
        if name.startswith(backbones.TIMM_PREFIX):
            import timm

            try:  # from the Hugging Face hub's cache, or downloaded
                state = timm.create_model(name.removeprefix(backbones.TIMM_PREFIX), pretrained=True).state_dict()
            except (OSError, RuntimeError, ValueError) as error:
                reason = " ".join(str(error).split())[:200]
                raise UserError(
                    f"{name}: timm could not load its pretrained weights ({reason}); pass --model.weights PATH or none"
                ) from None
        else:
            state = backbones.pretrained_state(name, tuple(self.hparams.input_shape))
        backbones.load_into(self.network, state, "imagenet")

    def lr_scales(self) -> dict[str, float]:
        decay = self.hparams.get("layer_decay")
        if decay is None:
            return {}
        layers = backbones.layer_indices(self.network, self.head_name)
        depth = max(layers.values()) + 1
        return {f"network.{name}": decay ** (depth - index) for name, index in layers.items()}

    def configure_callbacks(self) -> list[Any]:
        if self.hparams.finetune == "head" and self.hparams.unfreeze_at_epoch is not None:
            return [UnfreezeBackbone(self.hparams.unfreeze_at_epoch, self.hparams.backbone_lr_ratio)]
        return []

    def on_train_start(self) -> None:
        super().on_train_start()
        self.train()  # Lightning does not call train() itself; it keeps each layer's mode as it finds it

    def train(self, mode: bool = True) -> Transfer:
        super().train(mode)
        # A frozen backbone keeps its ImageNet BatchNorm statistics and uses them while training, as it will when
        # evaluating: its BatchNorm layers stay in eval mode (Lightning restores each layer's mode after validation).
        if mode:
            for module in self.backbone.modules():
                if isinstance(module, BATCH_NORMS) and not module.weight.requires_grad:
                    module.eval()
        return self


def _load_state_file(weights: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(weights):
        raise UserError(f"--model.weights: no such file {weights!r}; use imagenet, none, or a state dict path")
    from project.engine.api import load_checkpoint_file

    loaded = load_checkpoint_file(weights)
    if "state_dict" in loaded:  # a checkpoint of this template: strip the LightningModule's prefix
        loaded = {k.removeprefix("network."): v for k, v in loaded["state_dict"].items() if k.startswith("network.")}
    return dict(loaded)
