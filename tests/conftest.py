"""Shared fixtures: tiny data sets in the real on-disk formats, offline settings, and a tiny-run CLI helper."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import processes
import pytest
import torch
from fakedata import write_cifar10, write_image_folder, write_mnist, write_resnet18_weights
from lightning import Trainer

from project.engine import compat

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "scripts" / "train.py"

# Shrinks any configuration to a run of a few seconds (the lightning-hydra-template idea).
TINY = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.limit_test_batches",
    "2",
    "--trainer.num_sanity_val_steps",
    "0",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--data.batch_size",
    "16",
    "--data.val_size",
    "0.1",
    "--dashboard_every",
    "0",  # drawing PNGs costs about a second a run; the dashboard tests switch it back on
]


def pytest_configure(config: pytest.Config) -> None:
    processes.mark_this_run()  # before any test starts a process: they all inherit the mark


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a process it started is still alive (a test, a fixture or the product left it behind)."""
    gc.collect()  # loaders that nothing references any more shut their workers down
    if "wandb" in sys.modules and sys.modules["wandb"] is not None:
        sys.modules["wandb"].teardown()  # W&B's service process of this one, which in-process runs started
    deadline = time.monotonic() + 15  # workers of a killed parent notice within 5 s
    while (left := processes.left_running()) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left:
        report = "\n".join(processes.describe(left))
        processes.kill(left)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"the test run left {len(left)} process(es) running (now killed):\n{report}"
        if reporter is not None:
            reporter.write_line(message, red=True)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _lightning_notices_quiet_as_for_users() -> None:
    """The entry points' own filters (compat), in tests that build a Trainer themselves too (pytest resets the
    warning filters for every test)."""
    compat.quiet_lightning_notices()


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    """Whatever a test started (fixtures of a wider scope start theirs before this) ends with it, passed or not."""
    first = len(processes.STARTED)
    yield
    for process in processes.STARTED[first:]:
        if processes.group_alive(process):
            processes.end(process, grace=5)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def offline_environment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No test touches the network: W&B is offline, torchvision's weight cache holds a saved ResNet-18; and none
    writes outside its temporary folders (the folder scans kept between runs too)."""
    torch_home = tmp_path_factory.mktemp("torch_home")
    os.environ["PROJECT_CACHE_DIR"] = str(tmp_path_factory.mktemp("project_cache"))
    write_resnet18_weights(torch_home)
    os.environ["TORCH_HOME"] = str(torch_home)
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"
    os.environ.pop("WANDB_API_KEY", None)
    return torch_home


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/`` as users have it: MNIST IDX files and CIFAR-10 pickle batches (random, learnable content)."""
    root = tmp_path_factory.mktemp("data")
    write_mnist(root, n_train=400, n_test=64)
    write_cifar10(root, n_train=400, n_test=64)
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[Path]:
    """One finished tiny run per test module, copied (copy_run) by the tests that damage or craft its checkpoints."""
    from project.engine.cli import main

    run = tmp_path_factory.mktemp("tiny") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(run.parent)
        assert main([*TINY, "--data.root", str(data_root), "--run_dir", str(run)]) == 0
    yield run


def copy_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of ``tiny_run`` that a test may change."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's real handwritten digits written out as MNIST IDX files: a set a model really learns."""
    root = tmp_path_factory.mktemp("digits")
    write_mnist(root, n_train=1500, n_test=297, source="digits")
    return root


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image folder of PNG and JPEG files, three classes."""
    root = tmp_path_factory.mktemp("images")
    return write_image_folder(root, per_class=20, size=(32, 32))


def quiet_trainer(**options: Any) -> Trainer:
    """A CPU ``Trainer`` that prints and logs nothing and saves no checkpoint unless ``options`` say otherwise."""
    defaults = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return Trainer(accelerator="cpu", enable_model_summary=False, **{**defaults, **options})


# A hang guard for a whole subprocess run (training, evaluation, a DDP or SLURM job), not a speed limit: a loaded
# 2-core machine runs them many times slower than an idle one, and a guard that fires there fails a correct run.
RUN_TIMEOUT = 900


def run_train(args: Sequence[str], cwd: Path, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``python scripts/train.py ARGS`` in a subprocess, as a user runs it."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning", "COLUMNS": "200"}
    return processes.run([sys.executable, TRAIN_SCRIPT, *args], timeout, cwd=cwd, env=env)
