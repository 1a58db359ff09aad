"""Unfreeze a frozen backbone at a given epoch, on top of Lightning's ``BaseFinetuning``."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch.optim import Optimizer


class UnfreezeBackbone(BaseFinetuning):
    """Train only the head until ``unfreeze_at_epoch``, then the backbone too at ``lr * lr_ratio``.

    The module freezes its own backbone when it builds its network (it is built from the data module's shapes in
    ``setup``, after callbacks' ``setup``), so :meth:`freeze_before_training` has nothing left to do.
    """

    def __init__(self, unfreeze_at_epoch: int, lr_ratio: float = 0.1) -> None:
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.lr_ratio = lr_ratio

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        pass

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch < self.unfreeze_at_epoch:
            return
        backbone = pl_module.backbone
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if any(id(p) in in_optimizer for p in backbone.parameters()):
            # Resumed after the unfreeze: Lightning restored the param group; requires_grad is not saved.
            self.make_trainable(backbone)
            return
        lr = optimizer.param_groups[0]["lr"] * self.lr_ratio
        self.unfreeze_and_add_param_group(backbone, optimizer, lr=lr, train_bn=True)
