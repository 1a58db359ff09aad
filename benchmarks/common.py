"""What the benchmark's runs share: the data (real files or generated ones), the template's command line, timing.

Generated data comes from the tests' writers of the true on-disk formats, ``tests/fakedata.py``:
``fake_data_writers()`` is the one place the benchmark reaches into ``tests/``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

MNIST_STATS = ((0.1307,), (0.3081,))
TESTS = Path(__file__).resolve().parents[1] / "tests"


def fake_data_writers() -> ModuleType:
    """``tests/fakedata.py``, the writers of data in the true on-disk formats (puts ``tests/`` on sys.path)."""
    if str(TESTS) not in sys.path:
        sys.path.append(str(TESTS))
    import fakedata

    return fakedata


# ---------------------------------------------------------------------------------------------- data
def mnist_root(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """The MNIST root to train on and a description of it: the real files when present, else generated ones."""
    from torchvision.datasets import MNIST

    if args.root and not args.quick:
        try:
            MNIST(args.root, train=True)
            MNIST(args.root, train=False)
            return Path(args.root), f"MNIST files in {args.root}"
        except RuntimeError:
            pass
    root = workdir / "mnist"
    n_test = max(100, args.samples // 6)
    fake_data_writers().write_mnist(root, n_train=args.samples, n_test=n_test, source=args.source, seed=args.seed)
    return root, f"generated ({args.source}) MNIST IDX files, {args.samples} training images"


def cifar10_root(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """The CIFAR-10 root of the ResNet-18 runs and a description: the real files when present, else generated ones."""
    from project.datamodules.cifar10 import FOLDER, TEST_FILES, TRAIN_FILES

    if args.root and not args.quick and all((Path(args.root) / FOLDER / f).is_file() for f in TRAIN_FILES + TEST_FILES):
        return Path(args.root), f"CIFAR-10 files in {args.root}"
    root = workdir / "cifar10"
    n_train = (args.gpu_warmup + args.gpu_steps) * args.gpu_batch_size
    fake_data_writers().write_cifar10(root, n_train=n_train, n_test=100, seed=args.seed)
    return root, f"generated CIFAR-10 batch files, {n_train} training images"


@dataclass
class MNISTTensors:
    """The normalized float images of both splits, for B and for scoring every model the same way."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor

    @classmethod
    def load(cls, root: Path) -> MNISTTensors:
        from torchvision.datasets import MNIST

        (mean,), (std,) = MNIST_STATS

        def split(train: bool) -> tuple[Tensor, Tensor]:
            dataset = MNIST(root, train=train)
            return ((dataset.data.float() / 255 - mean) / std).unsqueeze(1).contiguous(), dataset.targets.long()

        return cls(*split(True), *split(False))


# ---------------------------------------------------------------------------------------------- the template, timing
def template_cli(args: Sequence[str], workdir: Path, callbacks: Sequence[Any] = ()) -> Any:
    """``TemplateCLI`` exactly as ``scripts/train.py`` builds it, writing its run directory under ``workdir``."""
    from project.engine.cli import TemplateCLI
    from project.engine.configs import expand_args

    argv = [*args, "--trainer.default_root_dir", str(workdir / "runs"), "--no_test", "true"]
    defaults = {"callbacks": list(callbacks)} if callbacks else None
    with quiet_warnings():
        return TemplateCLI(expand_args(argv), trainer_defaults=defaults)


def interleaved(names: Sequence[str], repeats: int) -> Iterator[tuple[int, str]]:
    """A B C, B C A, C A B, ...: every run takes every position equally often."""
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in [*names[shift:], *names[:shift]]:
            yield repeat, name


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "spread_pct": 100 * (max(values) - min(values)) / statistics.median(values),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        # Lightning's advice for real runs (more DataLoader workers, a logging interval for short epochs) and the
        # monitored val/acc that a benchmark without validation never logs.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
        yield
