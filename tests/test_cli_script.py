"""The command line as a user runs it: the real script, a run on a GPU, and Lightning's messages it lets through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_train

from project.engine.configs import expand_args


# ---------------------------------------------------------------------------------------------- as a user runs it
def test_resnet_defaults_to_cifar10_from_the_real_script(tmp_path: Path, data_root: Path) -> None:
    result = run_train(["--model", "resnet", *TINY, "--data.root", str(data_root)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert summary["data"] == "project.datamodules.CIFAR10DataModule"
    assert "run directory:" in result.stdout and "test acc" in result.stdout


@pytest.mark.gpu
def test_gpu_run_uses_bf16_and_keeps_the_data_on_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    from project.engine.cli import TemplateCLI
    from project.engine.training import train

    monkeypatch.chdir(tmp_path)
    cli = TemplateCLI(expand_args([*TINY, "--model", "cnn", "--data.root", str(data_root), "--accelerator", "gpu"]))
    summary = train(cli)
    assert summary["accelerator"] == "cuda"
    expected = "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    assert summary["precision"] == expected
    # The splits were moved to the GPU once, and a batch reaches the model without a copy.
    images, labels = cli.datamodule.splits["train"]
    assert images.device.type == labels.device.type == "cuda"
    batch = next(iter(cli.datamodule.train_dataloader()))
    moved = cli.datamodule.transfer_batch_to_device(batch, images.device, 0)
    assert moved[0].data_ptr() == batch[0].data_ptr() and moved[0].device.type == "cuda"


def test_lightning_advertisement_is_dropped_and_its_other_messages_kept() -> None:
    import logging

    from lightning import Trainer

    import project.engine.cli  # noqa: F401 - installs the filter

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any("GPU available" in message for message in records), records
    assert not any("litlogger" in message for message in records), records
