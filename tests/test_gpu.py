"""What only a GPU can show: batches that never leave the device, channels-last conv nets, no host sync per step.

Every test here is marked ``gpu`` and skipped where no CUDA GPU is present (see conftest.py). The same checks on
the CPU, where they apply, live in test_in_memory_path.py and test_step_cost.py; the comparisons of the batch
augmentation with torchvision, in test_batch_augment.py, run on the GPU too through their ``cuda`` parameters (marked
``gpu``).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import TINY, run_train

from project.engine import evaluate
from project.engine.cli import TemplateCLI
from project.engine.configs import expand_args

pytestmark = pytest.mark.gpu


def _fit(argv: list[str], tmp_path: Path, callbacks: list[L.Callback]) -> TemplateCLI:
    argv = [*argv, "--accelerator", "gpu", "--devices", "1", "--trainer.default_root_dir", str(tmp_path)]
    cli = TemplateCLI(expand_args([*argv, "--no_test", "true"]), trainer_defaults={"callbacks": callbacks})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli


def test_conv_net_trains_on_device_resident_channels_last_batches(data_root: Path, tmp_path: Path) -> None:
    seen: list[tuple[torch.device, torch.dtype, bool]] = []

    class Inspect(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
            images = batch[0]
            channels_last = images.is_contiguous(memory_format=torch.channels_last)
            seen.append((images.device, images.dtype, channels_last))

    argv = ["--model", "resnet", "--model.weights", "none", "--data", "cifar10", "--data.root", str(data_root)]
    argv += ["--data.download", "false", "--data.batch_size", "16", "--data.val_size", "0.1"]
    argv += ["--data.crop_padding", "4", "--data.hflip", "true"]
    argv += ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "2"]
    cli = _fit(argv, tmp_path, [Inspect()])
    # The whole split was moved to the GPU once; every batch arrived there as normalized, augmented float32.
    assert cli.datamodule.splits["train"][0].device.type == "cuda"
    assert len(seen) == 5
    assert all(device.type == "cuda" and dtype == torch.float32 and last for device, dtype, last in seen), seen
    assert cli.model.network.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert cli.trainer.precision == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true")


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_training_steps_do_not_synchronize_with_the_gpu(data_root: Path, tmp_path: Path, precision: str) -> None:
    # CUDA's sync debug mode warns at every operation that waits for the GPU. Allowed: the steps that write logs
    # (log_every_n_steps), the non-finite check (every 50 steps), and the progress bar's redraws.
    controls = 10

    class SyncDebug(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
            torch.cuda.set_sync_debug_mode("warn")

        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            if batch_idx < controls:  # a control: a read of a GPU value, which the debug mode must report
                torch.ones((), device=pl_module.device).item()

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
            torch.cuda.set_sync_debug_mode("default")

    argv = ["--model", "cnn", "--data.root", str(data_root), "--data.download", "false", "--data.batch_size", "2"]
    argv += ["--data.val_size", "0", "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0"]
    argv += ["--trainer.log_every_n_steps", "50", "--precision", precision]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cli = _fit(argv, tmp_path, [SyncDebug()])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert cli.trainer.global_step == 200
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    # The counter counts: it saw the control reads (else no bound below means anything).
    assert len(syncs) >= controls, f"the {controls} control reads were not reported: {syncs[:5]}"
    # 200 steps: 4 logging steps, 4 non-finite checks, some bar redraws; not one per step.
    assert len(syncs) - controls <= 30, syncs[:5]


@pytest.mark.parametrize(("precision", "fused"), [("bf16-mixed", True), ("16-mixed", False)])
def test_gpu_training_clips_gradients(data_root: Path, tmp_path: Path, precision: str, fused: bool) -> None:
    # bf16-mixed: the template's clipping with the fused Adam; 16-mixed: Lightning's, after the GradScaler unscales,
    # with PyTorch's default Adam. Either way the gradients the step used have norm <= the clip value (a step the
    # GradScaler skipped for an overflow leaves non-finite ones: not counted).
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    norms: list[float] = []

    class GradNorm(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
            grads = [p.grad.flatten() for p in pl_module.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.cat(grads).float())))

    argv = ["--model", "cnn", "--data.root", str(data_root), "--data.download", "false", "--data.batch_size", "16"]
    argv += ["--data.val_size", "0", "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0"]
    argv += ["--trainer.limit_train_batches", "10", "--trainer.gradient_clip_val", "0.05", "--precision", precision]
    cli = _fit(argv, tmp_path, [GradNorm()])
    assert bool(cli.trainer.optimizers[0].defaults["fused"]) is fused
    finite = [norm for norm in norms if math.isfinite(norm)]
    assert len(norms) == 10 and len(finite) >= 5 and max(finite) <= 0.05 * (1 + 1e-4), norms


class SaveBatchNormStatistics(L.Callback):
    """Writes this rank's first BatchNorm running mean after each training step, to compare the ranks'.

    After the step, not at the end: DDP broadcasts rank 0's buffers at every forward, then each rank updates its own.
    """

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        norm = next(m for m in pl_module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
        torch.save(norm.running_mean.cpu(), self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="synchronized BatchNorm needs two GPUs")
@pytest.mark.parametrize("sync", [True, False])
def test_sync_batchnorm_gives_every_rank_the_statistics_of_all_ranks_batches(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: bool
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    save = json.dumps([{"class_path": "test_gpu.SaveBatchNormStatistics", "init_args": {"folder": str(tmp_path)}}])
    args = [*TINY, "--model", "cnn", "--data.root", str(data_root), "--accelerator", "gpu", "--devices", "2"]
    args += ["--strategy", "ddp", "--trainer.sync_batchnorm", str(sync).lower(), "--trainer.callbacks", save]
    result = run_train(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    # Each rank normalizes its own shard: only synchronized statistics agree.
    assert torch.allclose(rank0, rank1) == sync
    # The checkpoint of a synchronized run is a plain BatchNorm model's: evaluate.py tests it in one process.
    (best,) = tmp_path.glob("runs/*/checkpoints/best.ckpt")
    assert evaluate.main(["--ckpt", str(best), "--accelerator", "gpu"]) == 0
