"""The fast path (project.engine.fastpath): each piece computes what the plain path does, and both train alike."""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY, quiet_trainer
from lightning.pytorch.plugins.precision import Precision

from project.datamodules import MNISTDataModule
from project.engine import fastpath
from project.engine.checkpoint import load_checkpoint_file
from project.engine.cli import main
from project.engine.fastpath.clipping import FusedClipping, add_fused_clipping
from project.models import MLP


@contextlib.contextmanager
def _raising_on_device_sync(device: str) -> Iterator[None]:
    """On a GPU, CUDA's sync debug mode raises at any operation that makes the host wait for the device."""
    if device != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(
    ("device", "on_host"),
    [("cpu", True), ("cpu", False), pytest.param("cuda", False, marks=pytest.mark.gpu)],
    ids=["cpu-path", "gpu-path-on-cpu", "gpu-path-on-gpu"],
)
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("scale", [1e-3, 1e2, float("nan")])
def test_gradient_clipping_equals_clip_grad_norm(
    scale: float, fused: bool, device: str, on_host: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The template's clipping against PyTorch's clip_grad_norm_ before the same optimizer's step, on both of its
    # paths: the CPU one (reads the norm) and the GPU one (keeps it a tensor), the latter also run on CPU tensors,
    # as the fused CPU kernels take a grad_scale too. On a GPU, nothing in the clipping or the step may wait for
    # the device. With a fused optimizer the scaling happens inside its step (grad_scale), so compare after the
    # step: parameters and the gradients it leaves. Two steps: the first clipped (or not), the second within
    # bounds, so a scale set for the first must not leak into the second.
    plugin = Precision()
    assert add_fused_clipping(plugin)
    if device == "cpu":
        monkeypatch.setattr(FusedClipping, "reads_norm_on_host", lambda self, grads: on_host)
    model = MLP(num_classes=10, input_shape=(1, 28, 28)).to(device)
    reference = [parameter.detach().clone().requires_grad_() for parameter in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused)
    reference_optimizer = torch.optim.Adam(reference, lr=1e-2, fused=fused)
    generator = torch.Generator().manual_seed(0)
    for step, step_scale in enumerate([scale, 1e-3]):
        for parameter, copy in zip(model.parameters(), reference, strict=True):
            parameter.grad = (torch.randn(parameter.shape, generator=generator) * step_scale).to(device)
            copy.grad = parameter.grad.clone()
        with _raising_on_device_sync(device):
            plugin.clip_gradients(optimizer, clip_val=1.0, gradient_clip_algorithm="norm")
            optimizer.step()
        torch.nn.utils.clip_grad_norm_(reference, max_norm=1.0)
        reference_optimizer.step()
        # Never clipped: bit for bit. Clipped: equal to the rounding of the norm (the CPU path sums it in float64,
        # PyTorch in float32 over 535k values, ~3e-6) and of dividing by a scale instead of multiplying.
        exact = scale < 1
        for parameter, copy in zip(model.parameters(), reference, strict=True):
            torch.testing.assert_close(parameter.grad, copy.grad, rtol=0 if exact else 1e-5, atol=0, equal_nan=True)
            torch.testing.assert_close(parameter, copy, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-7,
                                       equal_nan=True)  # fmt: skip
        if step == 0 and scale == 1e2:
            # And on target: the clipped gradients' exact norm is 1 (to 1e-6 from the float64 sum on CPU).
            grads = torch.cat([parameter.grad.double().flatten() for parameter in model.parameters()])
            assert abs(float(torch.linalg.vector_norm(grads)) - 1.0) < (1e-6 if on_host else 1e-5)
    # The last step was within bounds: no scale left (CPU path) or a scale of exactly 1 (GPU path, no host read).
    left = getattr(optimizer, "grad_scale", None)
    assert left is None if on_host or not fused else float(left) == 1.0


@pytest.mark.parametrize(
    ("precision", "on_host"),
    [(precision, on_host) for precision in ("32-true", "bf16-mixed", "bf16-true") for on_host in (True, False)],
)
def test_training_clips_gradients(
    data_root: Path, precision: str, on_host: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Through Lightning, on both clipping paths, under bf16-mixed (the GPU default, where Lightning itself would
    # refuse a fused optimizer) and with bf16 weights (bf16-true): after every optimizer step the gradients it used
    # have norm <= the clip value (a fused Adam scales them inside its step and writes them back), and without
    # clipping they exceed it.
    monkeypatch.setattr(FusedClipping, "reads_norm_on_host", lambda self, grads: on_host)
    norms: dict[float, list[float]] = {}

    class GradNorm(L.Callback):
        def __init__(self, clip: float) -> None:
            self.clip = clip

        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
            grads = [p.grad.flatten() for p in pl_module.parameters() if p.grad is not None]
            norms.setdefault(self.clip, []).append(float(torch.linalg.vector_norm(torch.cat(grads).float())))

    for clip in (0.05, 0.0):
        L.seed_everything(0)
        data = MNISTDataModule(root=str(data_root), batch_size=32, val_size=0)
        model = MLP(**data.model_args(), hidden_sizes=[64], lr=0.01)
        trainer = quiet_trainer(
            max_epochs=1, limit_val_batches=0, gradient_clip_val=clip, precision=precision, callbacks=[GradNorm(clip)]
        )
        fastpath.install(trainer, model, data)
        trainer.fit(model, datamodule=data)
        assert trainer.optimizers[0].defaults["fused"]
    # bf16 gradients are scaled in bf16: their norm is the clip value to bf16's rounding (8 bits, 0.4 %).
    tolerance = 1e-2 if precision == "bf16-true" else 1e-5
    assert len(norms[0.05]) >= 10 and max(norms[0.05]) <= 0.05 * (1 + tolerance)
    assert max(norms[0.0]) > 0.05  # the clip was doing something


def _train(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch, fast: bool) -> Path:
    run_dir = tmp_path / ("fast" if fast else "plain")
    args = [*TINY, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "6", "--data.root", str(data_root)]
    args += ["--trainer.log_every_n_steps", "2", "--fast_path", str(fast).lower(), "--run_dir", str(run_dir)]
    monkeypatch.chdir(tmp_path)
    assert main(args) == 0
    return run_dir


def _logged_steps(run_dir: Path, key: str) -> dict[int, float]:
    with open(run_dir / "metrics.csv", newline="") as file:
        return {int(row["step"]): float(row[key]) for row in csv.DictReader(file) if row.get(key)}


def test_fast_and_plain_paths_train_to_the_same_weights(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Same seed, same data, gradient clipping on (the default): the fast path (fused Adam with the clipping folded
    # into its step, the no-op profiler, the throttled bar, the step loss logged only when written) and the plain
    # one (PyTorch's default Adam, Lightning's clip_grad_norm_) differ only by the fused kernel's rounding.
    fast, plain = (_train(tmp_path, data_root, monkeypatch, fast) for fast in (True, False))
    states = [load_checkpoint_file(run / "checkpoints" / "last.ckpt") for run in (fast, plain)]
    assert [state["global_step"] for state in states] == [12, 12]
    assert {key for state in states for key in state["optimizer_states"][0]["param_groups"][0]} >= {"fused"}
    assert states[0]["optimizer_states"][0]["param_groups"][0]["fused"] is True
    assert not states[1]["optimizer_states"][0]["param_groups"][0]["fused"]
    fast_weights, plain_weights = (state["state_dict"] for state in states)
    assert fast_weights.keys() == plain_weights.keys()
    moved = 0
    for key, value in fast_weights.items():
        torch.testing.assert_close(value, plain_weights[key], rtol=1e-4, atol=1e-5)
        moved += int(not torch.equal(value, plain_weights[key]))
    assert moved > 0  # two implementations really ran: the fused kernel rounds differently
    # The step loss is written on the same steps, with the same values to rounding.
    fast_loss, plain_loss = (_logged_steps(run, "train/loss_step") for run in (fast, plain))
    assert sorted(fast_loss) == sorted(plain_loss) == [1, 3, 5, 7, 9, 11]
    for step, loss in fast_loss.items():
        assert loss == pytest.approx(plain_loss[step], rel=1e-4)


def test_the_plain_path_leaves_the_trainer_as_lightning_builds_it(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from project.engine.cli import TemplateCLI
    from project.engine.configs import expand_args

    monkeypatch.chdir(tmp_path)
    clis = {}
    for fast in (True, False):
        args = [*TINY, "--data.root", str(data_root), "--fast_path", str(fast).lower(), "--run_dir", f"r{fast}"]
        clis[fast] = TemplateCLI(expand_args(args))
    assert isinstance(clis[True].trainer.precision_plugin, FusedClipping)
    assert type(clis[False].trainer.precision_plugin) is Precision
    assert type(clis[True].trainer.profiler).__name__ == "NoProfiler"
    assert type(clis[False].trainer.profiler).__name__ == "PassThroughProfiler"


@pytest.mark.parametrize(
    ("precision", "clip", "algorithm", "fused"),
    [
        ("32-true", 1.0, "norm", True),
        ("bf16-mixed", None, None, True),
        ("bf16-mixed", 1.0, None, True),
        ("32-true", 1.0, "value", False),
        ("bf16-mixed", 1.0, "value", False),
    ],
)
def test_fused_optimizer_where_clipping_allows_it(
    data_root: Path, precision: str, clip: float | None, algorithm: str | None, fused: bool
) -> None:
    # Lightning refuses gradient clipping with a fused optimizer under its mixed-precision plugin (bf16-mixed is
    # the default on a GPU); the template clips by norm itself and keeps the fused kernel. Clipping by value goes
    # through Lightning: there the model keeps PyTorch's default implementation, and training runs.
    trainer = quiet_trainer(
        precision=precision,
        gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm,
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=0,
    )
    data = MNISTDataModule(root=str(data_root), batch_size=16, val_size=0, download=False)
    model = MLP(**data.model_args())
    fastpath.install(trainer, model, data)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2
    assert bool(trainer.optimizers[0].defaults["fused"]) is fused


def test_plain_cuda_check_only_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # Lightning sets the NVML-based check when imported; the template undoes it only where there is no GPU.
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fastpath.plain_cuda_check_without_gpu()
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fastpath.plain_cuda_check_without_gpu()
    assert os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "0"
