"""ResNet-18 transfer learning: torchvision's network, ImageNet (or your own) weights, a new head."""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.error import URLError

import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from project.callbacks.finetuning import UnfreezeBackbone
from project.errors import UserError
from project.models.classifier import ImageClassifier


class ResNet(ImageClassifier):
    """torchvision ResNet-18 with a new ``num_classes`` head.

    Args:
        weights: ``imagenet`` (torchvision's IMAGENET1K_V1, from its cache or downloaded), ``none`` (random init),
            or the path of a ResNet-18 state dict or of a checkpoint of this model.
        finetune: ``head`` trains only the new head (the backbone is frozen, its BatchNorm statistics too);
            ``all`` trains every layer.
        unfreeze_at_epoch: With ``finetune: head``, unfreeze the backbone at this epoch (Lightning's
            ``BaseFinetuning``) and train it with ``lr * backbone_lr_ratio``.
        backbone_lr_ratio: Learning-rate ratio of the backbone to the head once unfrozen.
        **kwargs: Shapes and training options of :class:`ImageClassifier`.

    With pretrained weights the command line normalizes inputs with ImageNet's statistics
    (:func:`project.options.resolve_normalize`). One-channel inputs (MNIST) get a one-channel first convolution
    whose kernel is the sum of the pretrained RGB kernels: the same output as the gray image on all three channels.
    """

    restore_overrides = {"weights": "none"}  # a checkpoint's weights replace the pretrained ones

    def __init__(
        self,
        weights: str = "imagenet",
        finetune: Literal["head", "all"] = "head",
        unfreeze_at_epoch: int | None = None,
        backbone_lr_ratio: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if unfreeze_at_epoch is not None and (unfreeze_at_epoch < 0 or finetune != "head"):
            raise ValueError("unfreeze_at_epoch needs finetune='head' and a value >= 0")
        channels = self.hparams.input_shape[0]
        self.network = resnet18(weights=None)
        if channels != 3:
            self.network.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.network.fc = nn.Linear(self.network.fc.in_features, self.hparams.num_classes)
        if weights.lower() != "none":
            self._load_pretrained(weights)
        if finetune == "head":
            BaseFinetuning.freeze(self.backbone, train_bn=False)

    @property
    def backbone(self) -> nn.Module:
        """Every layer but the head."""
        return nn.ModuleList(child for name, child in self.network.named_children() if name != "fc")

    def _load_pretrained(self, weights: str) -> None:
        state = _load_backbone_state(weights)
        conv1 = state["conv1.weight"]
        channels = self.network.conv1.in_channels
        if conv1.shape[1] != channels:
            # Summing the RGB kernels gives what feeding the gray image on all three channels would.
            state["conv1.weight"] = conv1.sum(dim=1, keepdim=True).repeat(1, channels, 1, 1) / channels
        head = {key for key in state if key.startswith("fc.")}
        if head and state["fc.weight"].shape != self.network.fc.weight.shape:
            state = {key: value for key, value in state.items() if key not in head}
        missing, unexpected = self.network.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
            raise UserError(f"--model.weights {weights}: not a ResNet-18 state dict ({unexpected or missing})")

    def configure_callbacks(self) -> list[Any]:
        if self.hparams.finetune == "head" and self.hparams.unfreeze_at_epoch is not None:
            return [UnfreezeBackbone(self.hparams.unfreeze_at_epoch, self.hparams.backbone_lr_ratio)]
        return []

    def on_train_start(self) -> None:
        super().on_train_start()
        self.train()  # Lightning does not call train() itself; it keeps each layer's mode as it finds it

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        # A frozen backbone keeps its ImageNet BatchNorm statistics and uses them while training, as it will when
        # evaluating: its BatchNorm layers stay in eval mode (Lightning restores each layer's mode after validation).
        if mode:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.weight.requires_grad:
                    module.eval()
        return self


def _load_backbone_state(weights: str) -> dict[str, torch.Tensor]:
    if weights.lower() == "imagenet":
        spec = ResNet18_Weights.IMAGENET1K_V1
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(spec.url))
        try:
            return spec.get_state_dict(progress=False, weights_only=True)
        except (URLError, OSError) as error:
            raise UserError(
                f"ResNet-18 ImageNet weights are not in torchvision's cache and could not be downloaded ({error}); "
                f"put the file at {cached} (from {spec.url}), or pass --model.weights PATH or none"
            ) from None
    if not os.path.isfile(weights):
        raise UserError(f"--model.weights: no such file {weights!r}; use imagenet, none, or a state dict path")
    from project.checkpoint import load_checkpoint_file

    loaded = load_checkpoint_file(weights)
    if "state_dict" in loaded:  # a checkpoint of this template: strip the LightningModule's prefix
        loaded = {k.removeprefix("network."): v for k, v in loaded["state_dict"].items() if k.startswith("network.")}
    return dict(loaded)
