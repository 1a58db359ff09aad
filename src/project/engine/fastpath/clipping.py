"""Gradient clipping by norm folded into a fused optimizer's step, as a precision plugin: where Lightning clips.

``clip_grad_norm_`` scales every gradient by ``clip / norm`` when the norm is above ``clip``: a pass over every
gradient before the step. PyTorch's fused Adam, AdamW and SGD divide each gradient by the optimizer's
``grad_scale`` as they read it (the hook ``GradScaler`` uses), so the scaling comes free inside the step. The
result is the same update as ``clip_grad_norm_`` followed by the step (tests/test_fastpath.py compares them).
"""

from __future__ import annotations

import functools
import math

import torch
from lightning.pytorch.plugins.precision import Precision
from torch import Tensor
from torch.optim import Optimizer

from project.engine import compat

_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


class FusedClipping:
    """Mixed into the precision plugin Lightning picked for ``--precision`` (see :func:`add_fused_clipping`)."""

    def clip_gradients(
        self, optimizer: Optimizer, clip_val: float = 0.0, gradient_clip_algorithm: str = "norm"
    ) -> None:
        if not clip_val or gradient_clip_algorithm == "value":
            super().clip_gradients(optimizer, clip_val, gradient_clip_algorithm)  # by value: Lightning's own
            return
        fused = all(group.get("fused") for group in optimizer.param_groups)
        if fused:
            optimizer.grad_scale = None  # set below for this step only, so it never outlives one
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        if self.reads_norm_on_host(grads):
            # A norm within bounds scales nothing.
            total = host_total_norm(grads)
            if total <= clip_val:
                return
            if fused:  # also when the norm is not finite: scaled to nan, as clip_grad_norm_ does
                optimizer.grad_scale = torch.tensor((total + 1e-6) / clip_val)
            else:
                torch.nn.utils.clip_grads_with_norm_(params, clip_val, torch.tensor(total))
            return
        # On a GPU the norm stays there (reading it would make the host wait); a fused step divides by a scale >= 1.
        total_norm = torch.nn.utils.get_total_norm(grads)
        if fused:
            # float32 whatever the gradients' dtype (bf16 weights give a bf16 norm): the fused kernels read it so.
            optimizer.grad_scale = ((total_norm.float() + 1e-6) / clip_val).clamp_(min=1.0)
        else:
            torch.nn.utils.clip_grads_with_norm_(params, clip_val, total_norm)

    def reads_norm_on_host(self, grads: list[Tensor]) -> bool:
        """On CPU, where reading the norm as a Python number waits for nothing."""
        return grads[0].device.type == "cpu"


@functools.cache
def _with_fused_clipping(plugin_class: type[Precision]) -> type[Precision]:
    return type(f"FusedClipping{plugin_class.__name__}", (FusedClipping, plugin_class), {})


def add_fused_clipping(plugin: Precision) -> bool:
    """Give the trainer's precision plugin the fused clipping, where it clips like ``clip_grad_norm_``.

    The plugin is the one Lightning picked for ``--precision`` (full, half, double, bf16-mixed); rather than choose it
    again, its class becomes a subclass of itself with :class:`FusedClipping` in front. Returns whether it did.
    """
    if isinstance(plugin, FusedClipping):
        return True
    if not compat.clips_like_clip_grad_norm(plugin):
        return False
    plugin.__class__ = _with_fused_clipping(type(plugin))
    return True


def fused_optimizer(trainer: object | None, params: list[Tensor]) -> bool | None:
    """``True`` where the fused kernel can run every step of this training, else ``None`` (PyTorch's default).

    The fused update is the same arithmetic in one pass over each tensor instead of a dozen. Lightning refuses fused
    optimizers with a ``GradScaler`` (16-mixed) and whenever its own mixed-precision plugin clips; the fused clipping
    above works with them, so they are used wherever it is installed (``--fast_path true``) or nothing is clipped.
    """
    if not params or not all(p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES for p in params):
        return None
    plugin = getattr(trainer, "precision_plugin", None)
    if plugin is None or getattr(plugin, "scaler", None) is not None:
        return None
    clips_by_norm = trainer.gradient_clip_algorithm != "value"
    if trainer.gradient_clip_val and not (clips_by_norm and isinstance(plugin, FusedClipping)):
        return None
    return True if isinstance(plugin, FusedClipping) else None


def host_total_norm(grads: list[Tensor]) -> float:
    """The gradients' total 2-norm as a Python float, for CPU tensors (reading it waits for nothing)."""
    if all(grad.dtype in (torch.float32, torch.float64) and not grad.is_sparse for grad in grads):
        # One dot product per tensor, summed in float64: faster on CPU than PyTorch's per-tensor norms.
        flats = [grad.reshape(-1) for grad in grads]
        return math.sqrt(sum(float(torch.dot(flat, flat)) for flat in flats))
    return float(torch.nn.utils.get_total_norm(grads))
