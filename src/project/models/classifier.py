"""The training logic for image classification, written once.

Every model in the template is an :class:`ImageClassifier` subclass that only says how to build its network
(:meth:`ImageClassifier.build_network`). Loss, metrics, optimizers and schedulers live here.

The input shape, the number of classes, the class names and the preprocessing come from the data module when
they are not given: the network is then built in :meth:`setup`, and all four are written into the
hyperparameters, so a checkpoint alone is enough to rebuild the model later.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

Optimizer = Literal["adam", "adamw", "sgd"]
Scheduler = Literal["none", "step", "plateau", "cosine", "warmup_cosine"]


class ImageClassifier(L.LightningModule):
    """Cross-entropy classification of ``(N, C, H, W)`` float images into ``num_classes`` classes.

    Args:
        num_classes: Number of classes; taken from the data module when ``None``.
        input_shape: ``(channels, height, width)`` of one input; taken from the data module when ``None``.
        class_names: Names of the classes, in label order; taken from the data module when ``None``.
        preprocessing: How raw images become inputs (size, mean, std); taken from the data module when ``None``.
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        lr: Learning rate.
        momentum: SGD momentum (ignored by Adam and AdamW).
        weight_decay: Weight decay (decoupled for AdamW).
        scheduler: ``none``, ``step`` (StepLR), ``plateau`` (on val accuracy), ``cosine`` (per step) or
            ``warmup_cosine`` (linear warm-up for ``warmup_epochs``, then cosine, per step).
        step_size: Epochs between decays for ``step``; patience in epochs for ``plateau``.
        gamma: Decay factor for ``step`` and ``plateau``.
        warmup_epochs: Warm-up length for ``warmup_cosine``.
        label_smoothing: Label smoothing of the cross-entropy loss.
        compile: Compile the network with ``torch.compile`` when training starts.
        channels_last: Use the channels-last memory format; ``None`` picks it for conv nets on a GPU.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        input_shape: tuple[int, int, int] | None = None,
        class_names: list[str] | None = None,
        preprocessing: dict[str, Any] | None = None,
        optimizer: Optimizer = "adam",
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        scheduler: Scheduler = "none",
        step_size: int = 10,
        gamma: float = 0.1,
        warmup_epochs: int = 1,
        label_smoothing: float = 0.0,
        compile: bool = False,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__()
        _check_positive(lr=lr, step_size=step_size, gamma=gamma)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if weight_decay < 0 or warmup_epochs < 0:
            raise ValueError("weight_decay and warmup_epochs must not be negative")
        # Everything here is a plain value, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters()
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.network: nn.Module | None = None
        # A buffer, not a Python float: it is saved in checkpoints, so resuming keeps the best value.
        self.register_buffer("best_val_acc", torch.tensor(0.0))
        if num_classes is not None and input_shape is not None:
            self._build(num_classes, tuple(input_shape))

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning records the running hook in _current_fx_name before and after every hook call, ~40 times per
        # training step; nn.Module.__setattr__ first checks whether the value is a parameter, buffer or module,
        # ~1 us each time. A plain string attribute needs none of that.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ the network
    def build_network(self, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        """Return the network mapping ``(N, *input_shape)`` images to ``(N, num_classes)`` logits."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_network")

    def _build(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        self.network = self.build_network(input_shape, num_classes)
        # validate_args=False: the checks (torch.unique of the targets) wait for the GPU at every step; the labels
        # were checked when the data set was loaded, and cross_entropy rejects any out of range.
        metric = MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)
        self.val_acc, self.test_acc = metric.clone(), metric.clone()
        self.train_means = TrainingMeans()

    def setup(self, stage: str) -> None:
        if self.network is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "num_classes"):
            raise ValueError(
                f"{type(self).__name__} needs num_classes and input_shape, or a data module that provides them"
            )
        self.hparams.update(
            num_classes=datamodule.num_classes,
            input_shape=tuple(datamodule.input_shape),
            class_names=list(datamodule.class_names),
            preprocessing=datamodule.preprocessing(),
        )
        self._build(datamodule.num_classes, tuple(datamodule.input_shape))
        self.init_weights()

    def init_weights(self) -> None:
        """Called once for a fresh model built from the data module (e.g. to load pretrained weights)."""

    @property
    def preferred_normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(mean, std)`` this model expects its inputs normalized with, or ``None`` for the data set's own."""
        return None

    def configure_model(self) -> None:
        if self.network is None:
            return
        if self._use_channels_last():
            self.network.to(memory_format=torch.channels_last)
            # The data module hands over batches in the same layout (see input_memory_format).
            self._input_memory_format = torch.channels_last
        if self.hparams.compile and not getattr(self, "_compiled", False):
            # Module.compile() keeps the state_dict keys unchanged, unlike torch.compile(module).
            self.network.compile()
            self._compiled = True

    def _use_channels_last(self) -> bool:
        setting = self.hparams.channels_last
        if setting is None:
            has_conv = any(isinstance(m, nn.Conv2d) for m in self.network.modules())
            # configure_model runs before the model is moved to its device: ask the trainer where it goes.
            device = self.trainer.strategy.root_device if self._trainer is not None else self.device
            return has_conv and device.type == "cuda"
        return bool(setting)

    @property
    def input_memory_format(self) -> torch.memory_format:
        """The memory layout the network wants its input batches in (channels-last for conv nets on a GPU)."""
        return getattr(self, "_input_memory_format", torch.contiguous_format)

    def forward(self, images: Tensor) -> Tensor:
        if self.network is None:
            raise RuntimeError("the network is not built yet: pass num_classes and input_shape, or fit first")
        return self.network(images)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, targets = batch
        logits = self(images)
        loss = self.criterion(logits, targets)
        # Per step only device-side updates: no host sync, and no self.log (a few hundred microseconds of Python
        # each, as long as a small model's whole step on CPU) except on the steps the loggers write (every
        # log_every_n_steps). Not prog_bar: Lightning converts progress-bar values to Python numbers after every
        # batch, a host sync per step on a GPU; the progress bar shows the step loss itself when it redraws.
        # Loss and accuracy of the epoch are computed once, in on_train_epoch_end.
        self.train_means.update(loss, logits, targets)
        if self._logging_step():
            self.log("train/loss_step", loss, on_step=True, on_epoch=False)
        return loss

    def _logging_step(self) -> bool:
        """Whether the loggers write this step's values (as Lightning decides: every ``log_every_n_steps``)."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        return bool(trainer.fast_dev_run) or (every > 0 and (self.global_step + 1) % every == 0)

    def on_train_epoch_end(self) -> None:
        if self.train_means.update_count == 0:
            return  # no training step ran this epoch
        means = self.train_means.compute()  # synchronized across processes
        self.log("train/loss_epoch", means["loss"], on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", means["acc"], on_step=False, on_epoch=True)
        self.train_means.reset()

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        images, targets = batch
        logits = self(images)
        loss = nn.functional.cross_entropy(logits, targets)
        metric = self.val_acc if stage == "val" else self.test_acc
        metric.update(logits, targets)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=stage == "val")
        # Returned for callbacks (the classification dashboard); detached so nothing holds the graph.
        return {"logits": logits.detach(), "targets": targets}

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: Tensor | tuple[Tensor, ...], batch_idx: int) -> Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(dim=-1)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        # compute() is cached for the epoch, so logging the metric object above costs nothing extra.
        self.best_val_acc = torch.maximum(self.best_val_acc, self.val_acc.compute().to(self.best_val_acc))
        self.log("val/acc_best", self.best_val_acc)

    # ------------------------------------------------------------------ optimization
    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by norm as ``clip_grad_norm_`` does, with the scaling folded into a fused optimizer's step.

        PyTorch's fused Adam, AdamW and SGD divide each gradient by the optimizer's ``grad_scale`` as they read it
        (the hook ``GradScaler`` uses) and write it back: ``clip_grad_norm_``'s scaling for free, instead of a pass
        over every gradient before the step. ``grad_scale`` is set at every step, so it never outlives one. Clipping
        by value, and precision plugins that clip in their own way (a ``GradScaler``, FSDP, DeepSpeed), take
        Lightning's ``clip_gradients``.
        """
        if not gradient_clip_val or gradient_clip_algorithm not in (None, "norm") or not _clips_like_torch(self):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        fused = bool(optimizer.defaults.get("fused"))
        if fused:
            optimizer.grad_scale = None  # this step's, if any, is set below
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        if self._reads_norm_on_host():
            # Nothing is scaled when the norm is within bounds.
            total = _host_total_norm(grads)
            clipping = not total <= gradient_clip_val  # also when not finite: scaled to nan, as clip_grad_norm_
            if clipping and fused:
                optimizer.grad_scale = torch.tensor((total + 1e-6) / gradient_clip_val)
            elif clipping:
                torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, torch.tensor(total))
            return
        # On a GPU the norm stays there: reading it would make the host wait for the step. A fused optimizer divides
        # by a scale >= 1 (exactly 1 within bounds; nan when the norm is not finite, as clip_grad_norm_).
        total_norm = torch.nn.utils.get_total_norm(grads)
        if fused:
            # float32 whatever the gradients' dtype (bf16 weights give a bf16 norm): the fused kernels read it so.
            optimizer.grad_scale = ((total_norm.float() + 1e-6) / gradient_clip_val).clamp_(min=1.0)
        else:
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, total_norm)

    def on_train_start(self) -> None:
        # The cosine schedules learn their length here, not in configure_optimizers: asking the trainer for the number
        # of steps there loads the training data before a resumed run has restored the loader's position, and
        # Lightning would then restart the interrupted epoch from its first batch. A resumed run restores the length
        # from its checkpoint; when the run was extended (--trainer.max_epochs raised), the schedule is stretched to
        # the new length instead of training at learning rate 0.
        trainer = self.trainer
        total_steps = max(1, int(trainer.estimated_stepping_batches))
        batches = trainer.num_training_batches
        steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else None
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            schedules = getattr(scheduler, "lr_lambdas", [])
            unfit = [s for s in schedules if isinstance(s, _cosine) and s.total_steps != total_steps]
            if not unfit:
                continue
            if unfit[0].total_steps:
                rank_zero_warn(f"cosine schedule stretched from {unfit[0].total_steps} to {total_steps} steps")
            for schedule in unfit:
                if not schedule.total_steps:  # a new run: the warm-up's length in steps too
                    epoch_steps = steps_per_epoch or total_steps / max(1, trainer.max_epochs or 1)
                    schedule.warmup_steps = min(total_steps - 1, math.ceil(schedule.warmup_epochs * epoch_steps))
                schedule.total_steps = total_steps
            groups = scheduler.optimizer.param_groups
            for group, base_lr, schedule in zip(groups, scheduler.base_lrs, schedules, strict=True):
                group["lr"] = base_lr * schedule(scheduler.last_epoch)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        # Only trainable parameters: a frozen backbone is added later by the fine-tuning callback.
        params = [p for p in self.parameters() if p.requires_grad]
        fused = self._fused_optimizer(params)
        if hp.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay, fused=fused)
        elif hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, fused=fused)
        else:
            optimizer = torch.optim.SGD(
                params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, fused=fused
            )

        if hp.scheduler == "none":
            return optimizer
        if hp.scheduler == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hp.step_size, gamma=hp.gamma)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        if hp.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="max", factor=hp.gamma, patience=hp.step_size
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val/acc", "interval": "epoch"},
            }
        # Per step; the schedule's length is set in on_train_start.
        warmup_epochs = hp.warmup_epochs if hp.scheduler == "warmup_cosine" else 0
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(warmup_epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _reads_norm_on_host(self) -> bool:
        """Whether gradient clipping reads the norm as a Python number: on CPU, where that waits for nothing."""
        return self.device.type == "cpu"

    def _fused_optimizer(self, params: list[Tensor]) -> bool | None:
        """``True`` where PyTorch has a fused kernel for every parameter, else ``None`` (PyTorch's default).

        The fused kernel is the same update in one pass over each tensor instead of a dozen: on CPU, where PyTorch's
        default is a Python loop of per-tensor ops, Adam's step gets ~3x faster (a fifth of an MLP's step on MNIST);
        on a GPU it is a few kernel launches instead of dozens. Lightning refuses fused optimizers (they can unscale
        gradients inside ``step()``) with a ``GradScaler`` (``16-mixed``), and with gradient clipping under its
        mixed-precision plugin; the template's own clipping (:meth:`configure_gradient_clipping`) works with them
        wherever there is no ``GradScaler``. Elsewhere PyTorch's default implementation is kept.
        """
        trainer = self._trainer
        if trainer is not None:
            if getattr(trainer.precision_plugin, "scaler", None) is not None:
                return None
            clips_itself = trainer.gradient_clip_algorithm in (None, "norm") and _clips_like_torch(self)
            if trainer.gradient_clip_val and not clips_itself:
                return None
        return True if _fused_supported(params) else None


class TrainingMeans(Metric):
    """The epoch's mean training loss (per sample) and accuracy, from three sums kept on the device.

    What ``MeanMetric`` and ``MulticlassAccuracy`` give, for a seventh of their cost per step (a few tensor
    additions instead of ~30 ops and ~700 Python calls: as much as a small model's forward pass on CPU). Nothing is
    read on the host until :meth:`compute`, once per epoch; under DDP the sums are added across processes.
    """

    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("loss_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, loss: Tensor, logits: Tensor, targets: Tensor) -> None:
        count = targets.numel()
        # In place: one kernel each, and no attribute assignment (nn.Module.__setattr__ is slow). Under no_grad
        # rather than with detach(): two tensor ops fewer per step.
        with torch.no_grad():
            self.loss_sum.add_(loss, alpha=count)  # loss is the batch mean: weight it by the batch size
            self.correct.add_((logits.argmax(dim=-1) == targets).sum())
            self.count.add_(count)

    def compute(self) -> dict[str, Tensor]:
        return {"loss": self.loss_sum / self.count, "acc": self.correct / self.count}


def _fused_supported(params: list[Tensor]) -> bool:
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES for p in params)


_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _clips_like_torch(model: L.LightningModule) -> bool:
    """Whether the trainer's precision plugin clips gradients as ``clip_grad_norm_`` on the gradients as they are.

    True for full, half and bf16-mixed precision (whose only addition is refusing fused optimizers); false with a
    ``GradScaler`` and for plugins with their own clipping (FSDP, DeepSpeed).
    """
    trainer = model._trainer
    if trainer is None:
        return True
    plugin = trainer.precision_plugin
    return (
        getattr(plugin, "scaler", None) is None
        and type(plugin).clip_gradients in (Precision.clip_gradients, MixedPrecision.clip_gradients)
        and type(plugin).clip_grad_by_norm is Precision.clip_grad_by_norm
    )


def _host_total_norm(grads: list[Tensor]) -> float:
    """The gradients' total 2-norm as a Python float (CPU tensors: reading it waits for nothing)."""
    if all(grad.dtype in (torch.float32, torch.float64) and not grad.is_sparse for grad in grads):
        # The squared norm as one dot product per tensor, summed in float64: ~4x faster on CPU than PyTorch's
        # per-tensor norms (torch._foreach_norm loops over them there), ~0.1 ms of an MLP's 3 ms step.
        flats = [grad.reshape(-1) for grad in grads]
        return math.sqrt(sum(float(torch.dot(flat, flat)) for flat in flats))
    return float(torch.nn.utils.get_total_norm(grads))


class _cosine:  # noqa: N801 - a picklable function object (LambdaLR saves plain attributes, not closures)
    """Learning-rate factor: linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to 0.

    Its length is set when training starts (:meth:`ImageClassifier.on_train_start`); until then the factor is 1.
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


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
