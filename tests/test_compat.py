"""Each assumption project.engine.compat makes about Lightning's and PyTorch's internals, checked against the installed
versions: when an upgrade changes one, it fails here, by name."""

from __future__ import annotations

import csv
import logging
import re
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.plugins.precision import DoublePrecision, FSDPPrecision, HalfPrecision, MixedPrecision, Precision
from lightning.pytorch.utilities import _pytree

from project.datamodules import MNISTDataModule
from project.engine import compat
from project.engine.cli import main
from project.models import MLP


def test_lightning_records_the_running_hook_in_current_fx_name(data_root) -> None:
    # FastHookBookkeeping bypasses nn.Module.__setattr__ for exactly this attribute.
    seen: list[str] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(pl_module._current_fx_name)

    data = MNISTDataModule(root=str(data_root), batch_size=32, val_size=0)
    model = MLP(**data.model_args(), hidden_sizes=[8])
    assert not isinstance(model, compat.FastHookBookkeeping)  # the recipe's class is plain Lightning
    model.__class__ = compat.with_fast_hook_bookkeeping(MLP)  # what the fast path does
    assert isinstance(model, MLP) and type(model).__name__ == "MLP"
    assert compat.with_fast_hook_bookkeeping(MLP) is type(model)  # one class per model class
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[Record()])
    trainer.fit(model, datamodule=data)
    assert seen == ["on_train_batch_start"] * 2
    assert "_current_fx_name" in vars(model) and "_current_fx_name" not in model._modules


def test_the_fast_hook_class_is_not_a_second_model_class_to_the_cli() -> None:
    # jsonargparse (4.53) finds a model by name among LightningModule's subclasses, skipping local classes: after a
    # run in the same process, "--model.help MLP" would otherwise name two MLPs and refuse.
    compat.with_fast_hook_bookkeeping(MLP)
    with pytest.raises(SystemExit) as exited:
        main(["--model", "mlp", "--model.help", "MLP"])
    assert exited.value.code == 0


@pytest.mark.parametrize("optimizer_class", compat.FUSABLE_OPTIMIZERS)
def test_an_optimizer_switched_to_the_fused_kernel_steps_as_one_built_fused(optimizer_class: type) -> None:
    # torch reads the kernel from each group's "fused" at every step: switched after construction, the step is the
    # fused one (it honours grad_scale, which the other kernels refuse), bit for bit as when built with fused=True.
    def run(make: object) -> list[torch.Tensor]:
        torch.manual_seed(0)
        weights = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
        optimizer = make(weights)
        for step in range(3):
            for weight in weights:
                weight.grad = torch.randn_like(weight) * (step + 1)
            optimizer.grad_scale = torch.tensor(2.0)
            optimizer.step()
        return [weight.detach().clone() for weight in weights]

    def switched(weights: list) -> torch.optim.Optimizer:
        optimizer = optimizer_class(weights, lr=0.1)
        assert compat.use_fused_kernel(optimizer)
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})  # a later group: fused too
        assert optimizer.param_groups[-1]["fused"] and optimizer._step_supports_amp_scaling
        return optimizer

    def built(weights: list) -> torch.optim.Optimizer:
        optimizer = optimizer_class(weights, lr=0.1, fused=True)
        optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
        return optimizer

    for ours, reference in zip(run(switched), run(built), strict=True):
        assert torch.equal(ours, reference)
    with pytest.raises((AssertionError, RuntimeError)):  # the unfused kernels refuse a grad_scale
        run(lambda weights: optimizer_class(weights, lr=0.1))


def test_an_optimizer_with_state_keeps_its_kernel_and_a_restored_fused_one_its_defaults() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([weight], lr=0.1)
    weight.grad = torch.ones(3)
    optimizer.step()
    assert not compat.use_fused_kernel(optimizer) and not optimizer.param_groups[0]["fused"]
    # A checkpoint saves the groups (fused among them), not the defaults: restored, later groups must fuse too.
    fused = torch.optim.Adam([weight], lr=0.1, fused=True)
    fused.step()
    restored = torch.optim.Adam([weight], lr=0.1)
    restored.load_state_dict(fused.state_dict())
    assert restored.param_groups[0]["fused"] and not restored.defaults["fused"]
    assert compat.use_fused_kernel(restored) and restored.defaults["fused"]


def test_lightning_still_warns_about_leafspec_and_the_filter_silences_only_that() -> None:
    with pytest.warns(FutureWarning, match=compat.LEAF_SPEC_WARNING):
        _pytree._tree_flatten(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compat.quiet_lightning_notices()
        _pytree._tree_flatten(1)
        warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another FutureWarning"]


def test_lightning_still_advertises_litlogger_and_the_filter_drops_only_that(caplog: pytest.LogCaptureFixture) -> None:
    loggers = [logging.getLogger(name) for name in (compat.RANK_ZERO_LOGGER, compat.SEED_LOGGER)]
    saved = [list(logger.filters) for logger in loggers]

    def start_up() -> list[str]:
        caplog.clear()
        with (
            caplog.at_level(logging.INFO, logger=compat.RANK_ZERO_LOGGER),
            caplog.at_level(logging.INFO, logger=compat.SEED_LOGGER),
        ):
            L.seed_everything(3)
            L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        return [record.getMessage() for record in caplog.records]

    try:
        for logger, filters in zip(loggers, saved, strict=True):
            for item in filters:
                logger.removeFilter(item)
        messages = start_up()
        assert any(compat.LITLOGGER_TIP in message for message in messages)
        assert all(any(m.startswith(chatter) for m in messages) for chatter in ("TPU available:", "Seed set to "))
        compat.quiet_lightning_notices()
        messages = start_up()
        assert not any(
            compat.LITLOGGER_TIP in message or message.startswith(compat.STARTUP_CHATTER) for message in messages
        )
        assert any(message.startswith("GPU available:") for message in messages)  # where the run trains: kept
    finally:
        for logger in loggers:
            for item in list(logger.filters):
                logger.removeFilter(item)


@pytest.mark.parametrize(
    ("plugin", "expected"),
    [
        (Precision(), True),
        (DoublePrecision(), True),
        (HalfPrecision("bf16-true"), True),
        (MixedPrecision("bf16-mixed", "cpu"), True),
        (MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu")), False),
        (FSDPPrecision("32-true"), False),
    ],
    ids=["32-true", "64-true", "bf16-true", "bf16-mixed", "16-mixed-scaler", "fsdp"],
)
def test_which_precision_plugins_clip_like_clip_grad_norm(plugin: Precision, expected: bool) -> None:
    assert compat.clips_like_clip_grad_norm(plugin) is expected


def test_lightning_still_refuses_clipping_with_a_fused_optimizer_under_mixed_precision() -> None:
    # The reason the fast path clips in its own plugin: Lightning's bf16-mixed refuses a fused optimizer with clipping.
    parameter = torch.nn.Parameter(torch.ones(3))
    parameter.grad = torch.ones(3)
    optimizer = torch.optim.Adam([parameter], fused=True)
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        MixedPrecision("bf16-mixed", "cpu").clip_gradients(optimizer, clip_val=1.0)


def test_fused_optimizers_still_take_a_grad_scale() -> None:
    # The fused clipping divides the gradients by optimizer.grad_scale inside the step.
    parameter = torch.nn.Parameter(torch.zeros(4))
    parameter.grad = torch.full((4,), 2.0)
    optimizer = torch.optim.SGD([parameter], lr=1.0, fused=True)
    optimizer.grad_scale = torch.tensor(4.0)
    optimizer.step()
    torch.testing.assert_close(parameter.detach(), torch.full((4,), -0.5))


def test_the_accelerator_connector_holds_the_slurm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # GracefulInterrupt reads the requeue signal from it, on one device too (where the strategy has no environment).
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    slurm = {"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    for name, value in {**slurm, "SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "train"}.items():
        monkeypatch.setenv(name, value)
    environment = compat.cluster_environment(quiet_trainer(devices=1))
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # Lightning's way out of SLURM detection
    assert isinstance(compat.cluster_environment(quiet_trainer(devices=1)), LightningEnvironment)


def test_lightning_pads_a_ddp_test_set_unless_told_not_to_and_without_repeats_splits_it_once() -> None:
    # evaluate.py under torchrun: Trainer(use_distributed_sampler=False) and compat.without_repeats per rank.
    from lightning.pytorch.trainer.states import RunningStage
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    def collate(batch):
        return torch.stack([sample[0] for sample in batch])

    loader = DataLoader(TensorDataset(torch.arange(7)), batch_size=2, collate_fn=collate)
    for sampler_option, padded in ((True, True), (False, False)):
        trainer = quiet_trainer(strategy="ddp", devices=2, use_distributed_sampler=sampler_option)
        prepared = trainer._data_connector._prepare_dataloader(loader, shuffle=False, mode=RunningStage.TESTING)
        if padded:  # the reason: 7 samples on 2 ranks become 8, sample 0 scored twice
            assert isinstance(prepared.sampler, DistributedSampler) and prepared.sampler.total_size == 8
        else:
            assert prepared is loader
    shards = [compat.without_repeats(loader, num_replicas=2, rank=rank) for rank in (0, 1)]
    assert all(type(shard) is DataLoader and shard.collate_fn is collate for shard in shards)
    batches = [[batch.tolist() for batch in shard] for shard in shards]
    assert batches == [[[0, 2], [4, 6]], [[1, 3], [5]]]  # each sample once, in order; ranks differ by a sample


def test_lightning_steps_the_optimizer_where_ends_an_optimizer_step_says(data_root) -> None:
    # 5 batches accumulated by 2: Lightning steps after batches 1, 3 and 4 (the epoch's last), 3 steps an epoch.
    seen: list[tuple[bool, bool]] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            stepped = trainer.global_step > sum(1 for _, did in seen if did)
            seen.append((compat.ends_an_optimizer_step(trainer, batch_idx), stepped))
            assert compat.optimizer_steps_per_epoch(trainer) == 3

    data = MNISTDataModule(root=str(data_root), batch_size=16, val_size=0.1)
    trainer = quiet_trainer(
        max_epochs=2, limit_train_batches=5, limit_val_batches=0, accumulate_grad_batches=2, callbacks=[Record()]
    )
    trainer.fit(MLP(**data.model_args()), datamodule=data)
    assert [said for said, _ in seen] == [False, True, False, True, True] * 2
    assert [said for said, _ in seen] == [stepped for _, stepped in seen]


def test_a_csv_logger_continues_its_metrics_file_through_the_installed_writer(tmp_path: Path) -> None:
    # Lightning (2.6) deletes an existing metrics.csv when its writer is created, and creates the writer lazily: the
    # writer compat installs keeps the rows before the resumed step and is the one the logger then writes with.
    from lightning.pytorch.loggers import CSVLogger

    first = CSVLogger(tmp_path, name="", version="")
    for step in range(4):
        first.log_metrics({"loss": float(step)}, step=step)
    first.save()
    resumed = CSVLogger(tmp_path, name="", version="")
    compat.continue_csv_log(resumed, step=2)
    resumed.log_metrics({"loss": 20.0}, step=2)
    resumed.save()
    with open(Path(resumed.log_dir) / "metrics.csv", newline="") as file:
        rows = [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(file)]
    assert rows == [(0, 0.0), (1, 1.0), (2, 20.0)]
    plain = CSVLogger(tmp_path, name="", version="")  # without it, Lightning starts the file again
    plain.log_metrics({"loss": 5.0}, step=0)
    plain.save()
    with open(Path(plain.log_dir) / "metrics.csv", newline="") as file:
        assert [row["loss"] for row in csv.DictReader(file)] == ["5.0"]


def test_argparse_still_keeps_its_options_where_compat_reads_them() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model.width", type=int, default=8)
    parser.add_argument("--run_dir", type=str, default="")
    assert {"--model.width", "--run_dir", "--help"} <= set(compat.option_strings(parser))
    assert {"model.width", "run_dir"} <= set(compat.argument_names(parser))


def test_litdata_builds_its_obstore_client_from_the_module_options(monkeypatch: pytest.MonkeyPatch) -> None:
    # allow_plain_http_endpoint adds allow_http to litdata 0.2.76's _OBSTORE_CLIENT_OPTIONS, which every obstore
    # store it builds is given; without it, obstore refuses an http:// endpoint ("builder error").
    import inspect

    from litdata.streaming import downloader

    assert isinstance(downloader._OBSTORE_CLIENT_OPTIONS, dict)
    assert "client_options=_OBSTORE_CLIENT_OPTIONS" in inspect.getsource(downloader._build_obstore_s3_store)
    monkeypatch.setitem(downloader._OBSTORE_CLIENT_OPTIONS, "allow_http", False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://storage.example")
    assert not compat.allow_plain_http_endpoint() and downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] is False
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert compat.allow_plain_http_endpoint() and downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] is True


def test_lightning_still_warns_about_short_epochs_and_the_filter_silences_only_that(
    tmp_path: Path, data_root: Path
) -> None:
    from lightning.pytorch.loggers import CSVLogger

    def fit() -> list[str]:
        trainer = quiet_trainer(logger=CSVLogger(tmp_path), max_epochs=1, limit_train_batches=2, limit_val_batches=1)
        data = MNISTDataModule(root=str(data_root), batch_size=16, val_size=0.1, download=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if quiet:
                compat.quiet_lightning_notices()
            trainer.fit(MLP(**data.model_args()), datamodule=data)
        return [str(warning.message) for warning in caught]

    quiet = False
    assert any(re.match(compat.SHORT_EPOCH_WARNING, message) for message in fit())
    quiet = True
    assert not any(re.match(compat.SHORT_EPOCH_WARNING, message) for message in fit())


def test_a_checkpoint_counts_its_finished_epochs_where_compat_reads_them(tmp_path: Path, data_root: Path) -> None:
    data = MNISTDataModule(root=str(data_root), batch_size=16, val_size=0.1, download=False)
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, default_root_dir=tmp_path)
    trainer.fit(MLP(**data.model_args()), datamodule=data)
    trainer.save_checkpoint(tmp_path / "done.ckpt")
    checkpoint = torch.load(tmp_path / "done.ckpt", weights_only=True)
    assert compat.epochs_trained(checkpoint) == 2 and checkpoint["global_step"] == 4


def test_lightning_still_hands_wandb_an_anonymous_setting_and_compat_drops_it() -> None:
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="p", offline=True)
    assert "anonymous" in logger._wandb_init and logger._wandb_init["anonymous"] is None
    compat.without_unset_wandb_options(logger)
    assert "anonymous" not in logger._wandb_init
    asked = WandbLogger(project="p", offline=True, anonymous=True)  # one that asks for it keeps it
    compat.without_unset_wandb_options(asked)
    assert asked._wandb_init["anonymous"] == "allow"
