"""The cost of a training step: no device value read on the host at every step, batches in the weights' dtype."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import quiet_trainer

from project.datamodules.mnist import MNISTDataModule


@pytest.mark.parametrize("norm_on_host", [False, True], ids=["gpu-clipping-path", "control-cpu-clipping-path"])
def test_training_steps_do_not_read_device_values_on_the_host(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, norm_on_host: bool
) -> None:
    """A tensor turned into a Python value waits for the GPU: only every log_every_n_steps and at bar redraws."""
    import lightning as L

    from project.engine.cli import TemplateCLI
    from project.engine.configs import expand_args

    reads: list[str] = []
    counting = {"on": False}

    def counted(name: str):
        original = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            if counting["on"]:
                reads.append(name)
            return original(self, *args, **kwargs)

        return method

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    # On CPU the gradient clipping reads the norm once a step on purpose (free there: no device to wait for); on a
    # GPU it keeps the norm a tensor. Count what a GPU run would do: its clipping path, run here on CPU tensors. The
    # control keeps the CPU path, which reads at every step: the counter must see those reads.
    from project.engine.fastpath.clipping import FusedClipping

    monkeypatch.setattr(FusedClipping, "reads_norm_on_host", lambda self, grads: norm_on_host)

    class Count(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            counting["on"] = True

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            counting["on"] = False

    argv = ["--data.root", str(data_root), "--data.download", "false", "--data.batch_size", "2"]
    argv += ["--data.val_size", "0", "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0"]
    argv += ["--trainer.log_every_n_steps", "50", "--trainer.default_root_dir", str(tmp_path), "--no_test", "true"]
    cli = TemplateCLI(expand_args(argv), trainer_defaults={"callbacks": [Count()]})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 200
    if norm_on_host:  # the control: the norm read as a float at each of the 200 steps, every read counted
        assert Counter(reads)["__float__"] >= 200, Counter(reads)
    else:
        # 200 steps: 4 logging steps and at most ~10 progress-bar redraws may read a value; one read per step may not.
        assert len(reads) <= 20, Counter(reads)


@pytest.mark.parametrize(("precision", "dtype"), [("bf16-true", torch.bfloat16), ("64-true", torch.float64)])
def test_batches_take_the_dtype_of_the_weights(data_root: Path, precision: str, dtype: torch.dtype) -> None:
    # With weights in bf16 or float64, Lightning casts floating-point batches before they reach the device, when
    # the template's are still uint8: the data module casts its normalized batches the same way, in training,
    # validation and test.
    import lightning as L

    from project.models import MLP

    seen: set[torch.dtype] = set()

    class Inspect(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
            seen.add(batch[0].dtype)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            seen.add(batch[0].dtype)

    data = MNISTDataModule(root=str(data_root), batch_size=32, val_size=64, download=False)
    model = MLP(**data.model_args(), hidden_sizes=[32])
    trainer = quiet_trainer(precision=precision, max_epochs=1, limit_train_batches=4, callbacks=[Inspect()])
    trainer.fit(model, datamodule=data)
    (result,) = trainer.test(model, datamodule=data, verbose=False)
    assert seen == {dtype} and next(model.parameters()).dtype == dtype
    assert math.isfinite(result["test/loss"])
