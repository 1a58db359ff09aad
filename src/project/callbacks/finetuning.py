"""Unfreeze a frozen backbone at a given epoch, on top of Lightning's ``BaseFinetuning``."""

from __future__ import annotations

import copy

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch.nn import Module
from torch.optim import Optimizer


class UnfreezeBackbone(BaseFinetuning):
    """Train only the head until ``unfreeze_at_epoch``, then the backbone too at ``lr * lr_ratio``.

    The module freezes its own backbone when it builds its network (it is built from the data module's shapes in
    ``setup``, after callbacks' ``setup``), so :meth:`freeze_before_training` has nothing left to do. The backbone's
    parameter group follows the head's learning-rate schedule, scaled by ``lr_ratio``.
    """

    def __init__(self, unfreeze_at_epoch: int, lr_ratio: float = 0.1) -> None:
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.lr_ratio = lr_ratio

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)  # a resumed run gets its backbone parameter group back here
        for optimizer in trainer.optimizers:
            schedule_added_param_groups(trainer, optimizer)
            if _holds(optimizer, pl_module.backbone):
                # Resumed after the unfreeze (requires_grad is not saved). Not left to finetune_function: Lightning
                # does not call on_train_epoch_start when it resumes in the middle of an epoch.
                self.make_trainable(pl_module.backbone)

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        pass

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        if epoch < self.unfreeze_at_epoch:
            return
        backbone = pl_module.backbone
        if _holds(optimizer, backbone):
            # Already unfrozen (at an earlier epoch, or restored from a checkpoint, where requires_grad is not saved).
            self.make_trainable(backbone)
        else:
            head = optimizer.param_groups[0]
            self.unfreeze_and_add_param_group(backbone, optimizer, lr=head["lr"] * self.lr_ratio, train_bn=True)
            # The schedule's starting point, as for the head: its initial learning rate, scaled the same way.
            optimizer.param_groups[-1]["initial_lr"] = head.get("initial_lr", head["lr"]) * self.lr_ratio
            schedule_added_param_groups(pl_module.trainer, optimizer)
        # The backbone's BatchNorm layers stayed in eval mode while frozen (see ResNet.train): they train from now on.
        if pl_module.training:
            pl_module.train()


def _holds(optimizer: Optimizer, module: Module) -> bool:
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return any(id(p) in in_optimizer for p in module.parameters())


def schedule_added_param_groups(trainer: L.Trainer, optimizer: Optimizer) -> None:
    """Extend ``optimizer``'s learning-rate schedulers to the parameter groups added after they were built.

    PyTorch's schedulers keep one base learning rate (and ``LambdaLR`` one factor function) per group and refuse a
    group they do not know. A new group gets the first group's factor function over its own ``initial_lr``.
    """
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        base_lrs = getattr(scheduler, "base_lrs", None)
        if getattr(scheduler, "optimizer", None) is not optimizer or base_lrs is None:
            continue  # another optimizer's, or one without per-group state (ReduceLROnPlateau adapts by itself)
        for group in optimizer.param_groups[len(base_lrs) :]:
            base_lrs.append(group.setdefault("initial_lr", group["lr"]))
            factors = getattr(scheduler, "lr_lambdas", None)
            if factors:
                factors.append(copy.copy(factors[0]))
