"""Optimizers and learning-rate schedules by name, for :class:`~project.models.classifier.ImageClassifier`."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import nn

from project.engine.api import optimizer_steps_per_epoch

OptimizerName = Literal["adam", "adamw", "sgd"]
SchedulerName = Literal["none", "step", "plateau", "cosine", "warmup_cosine"]


def make_optimizer(
    name: OptimizerName, params: list[Any], lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Adam, AdamW (decoupled weight decay) or SGD with momentum. (The engine switches them to PyTorch's fused
    one-pass kernel where the run allows it.)"""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


#: Layers whose parameters scale or shift activations: weight decay pulls them towards 0, not towards simplicity.
NORM_LAYERS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)


def parameter_groups(
    module: nn.Module,
    params: list[nn.Parameter],
    lr: float,
    weight_decay: float,
    decay_norm_and_bias: bool,
    lr_scales: dict[str, float] | None = None,
) -> list[nn.Parameter] | list[dict[str, Any]]:
    """``params`` as they are, or in groups: with ``decay_norm_and_bias=False`` the biases and normalization layers'
    parameters (every 0- or 1-dimensional tensor too) without weight decay; with ``lr_scales`` (factors of ``lr`` by
    parameter name, e.g. layer-wise decay) one group per factor."""
    exempt_ids: set[int] = set()
    if not decay_norm_and_bias and weight_decay:
        norms = {id(p) for m in module.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
        exempt_ids = {id(p) for p in params if p.ndim <= 1 or id(p) in norms}
    if not exempt_ids and not lr_scales:
        return params
    scale_of = {id(p): (lr_scales or {}).get(name, 1.0) for name, p in module.named_parameters()}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for p in params:
        groups.setdefault((scale_of.get(id(p), 1.0), id(p) in exempt_ids), []).append(p)
    scales = list(dict.fromkeys(scale for scale, _ in groups))  # in the order of the parameters: input first
    ordered = sorted(groups.items(), key=lambda item: (scales.index(item[0][0]), item[0][1]))
    return [
        {"params": group, "lr": lr * scale, **({"weight_decay": 0.0} if exempt else {})}
        for (scale, exempt), group in ordered
    ]


def make_scheduler(
    name: SchedulerName, optimizer: torch.optim.Optimizer, step_size: int, gamma: float, warmup_epochs: float
) -> dict[str, Any] | None:
    """Lightning's ``lr_scheduler`` configuration for ``name``, or ``None`` for a constant learning rate."""
    if name == "none":
        return None
    if name == "step":
        return {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size, gamma), "interval": "epoch"}
    if name == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=gamma, patience=step_size)
        return {"scheduler": scheduler, "monitor": "val/acc", "interval": "epoch"}
    # Per step; the length is set when training starts (fit_cosine_schedules).
    schedule = CosineSchedule(warmup_epochs if name == "warmup_cosine" else 0)
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), "interval": "step"}


class CosineSchedule:
    """Learning-rate factor: linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to 0.

    A picklable function object (``LambdaLR`` saves plain attributes, not closures). Its length is set when training
    starts (:func:`fit_cosine_schedules`); until then the factor is 1.
    """

    def __init__(self, warmup_epochs: float = 0) -> None:
        self.warmup_epochs = warmup_epochs
        self.total_steps, self.warmup_steps = 0, 0

    def __call__(self, step: int) -> float:
        if not self.total_steps:
            return 1.0
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def fit_cosine_schedules(trainer: Any) -> None:
    """Give the cosine schedules the run's length in steps, when training starts.

    Not in ``configure_optimizers``: asking the trainer for the number of steps there loads the training data before a
    resumed run has restored the loader's position, and Lightning would restart the interrupted epoch from its first
    batch. A resumed run has its length from the checkpoint; a run extended with a larger ``--trainer.max_epochs`` is
    stretched to the new length instead of training at learning rate 0.
    """
    total_steps = max(1, int(trainer.estimated_stepping_batches))
    steps_per_epoch = optimizer_steps_per_epoch(trainer)
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        schedules = getattr(scheduler, "lr_lambdas", [])
        unfit = [s for s in schedules if isinstance(s, CosineSchedule) and s.total_steps != total_steps]
        if not unfit:
            continue
        if unfit[0].total_steps and trainer.ckpt_path:  # a resumed run's (not the batch-size finder's trials)
            rank_zero_warn(f"cosine schedule stretched from {unfit[0].total_steps} to {total_steps} steps")
        for schedule in unfit:
            if not schedule.total_steps:  # a new run: the warm-up's length in steps too
                epoch_steps = steps_per_epoch or total_steps / max(1, trainer.max_epochs or 1)
                schedule.warmup_steps = min(total_steps - 1, math.ceil(schedule.warmup_epochs * epoch_steps))
            schedule.total_steps = total_steps
        groups = scheduler.optimizer.param_groups
        for group, base_lr, schedule in zip(groups, scheduler.base_lrs, schedules, strict=True):
            group["lr"] = base_lr * schedule(scheduler.last_epoch)
