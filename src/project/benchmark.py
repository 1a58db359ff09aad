"""How fast the template trains, against the hand-written PyTorch loop it replaces: ``scripts/benchmark.py``.

Three ways to train the textbook MLP (784→512→256→10, ReLU, dropout 0.2, Adam lr 1e-3) on the same MNIST files,
with the same batch size, the same number of epochs and the same number of samples, run in one process,
interleaved and repeated (A B C, B C A, C A B, ...) so that a slow moment of the machine hits all of them:

* **A** the textbook loop: ``torchvision.datasets.MNIST`` with ``Compose([ToTensor(), Normalize(...)])`` (one PIL
  image per sample), ``DataLoader(batch_size, shuffle=True)``, ``nn.Sequential`` and the five-line loop;
* **B** the same loop over ``DataLoader(TensorDataset(x, y))`` of the normalized images as one float tensor;
* **C** the template: ``TemplateCLI`` (the command line's own code path: run directory, CSV logger, checkpoints,
  learning-rate monitor, progress bar, every default callback) building ``project.models.MLP`` and
  ``project.datamodules.MNISTDataModule`` (``--data.val_size 0``: all training images, as A and B) and the
  ``Trainer``; ``trainer.fit`` trains.

What is timed: the training epochs only. For A and B the ``for images, labels in loader`` loop (loading included);
for C Lightning's training epoch loop (``trainer.fit_loop.epoch_loop.run``: every step with its data fetching,
batch-transfer hooks, callbacks and logging), without parsing the command line, reading the files, or the
end-of-epoch work (checkpoint writing); the whole ``trainer.fit`` is reported too. After training, every model is
scored on the same normalized test images (outside the timed part), so that equal speed means equal work.

Three more lines: **B+fused** is B with ``Adam(fused=True)``, the implementation the template picks (the gap
between it and C-noclip is Lightning's own cost per step); **B+clip** is B with the chapter's
``clip_grad_norm_(parameters, 1.0)`` before every step, the same arithmetic as C, whose default configuration clips
gradients (``gradient_clip_val: 1.0``); and **C-noclip** is C without that clipping: the same arithmetic as A and B.

On a CUDA GPU (``--device cuda``), ResNet-18 too, at CIFAR-10's 32 px and at 224 px: images per second of a plain
bf16-autocast, channels-last loop over synthetic batches already on the GPU, and of the template
(``ResNet(weights="none", finetune="all")`` + ``CIFAR10DataModule``, upscaled on the GPU for 224 px, through the
Trainer with ``bf16-mixed``), with the fraction of the GPU's bf16 peak each achieves (MFU: FLOPs per image
× 3 for forward and backward × images/s ÷ peak; FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``).
``--gpu_ablations`` adds the template with each of its GPU defaults turned off in turn (channels-last, bf16
autocast, gradient clipping) and with cuDNN autotuning turned on, to show what each is worth; ``--compile`` adds
``torch.compile`` to both loops.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

MNIST_STATS = ((0.1307,), (0.3081,))
#: Dense bf16 tensor-core peak in TFLOPS, by a part of ``torch.cuda.get_device_name()`` (first match wins).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM and NVL
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
)


# ---------------------------------------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/benchmark.py",
        description="Training speed of the template (C) against the textbook loop (A) and a tensor loop (B).",
    )
    parser.add_argument(
        "--data.root",
        dest="root",
        default=None,
        help="Use the MNIST files under DIR/MNIST/raw and CIFAR-10's under DIR/cifar-10-batches-py when they are "
        "there (not with --quick); otherwise generated data in the same formats is written to a temporary directory.",
    )
    parser.add_argument("--source", choices=["random", "digits"], default="random", help="Content of generated data.")
    parser.add_argument(
        "--samples", type=int, default=None, help="Training images of generated data (default 60000, quick 6000)."
    )
    parser.add_argument("--epochs", type=int, default=1, help="Epochs per measurement.")
    parser.add_argument("--repeats", type=int, default=None, help="Measurements of each (default 5, quick 2).")
    parser.add_argument("--batch_size", type=int, default=64, help="Batch size of the MLP runs.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of repeat r is seed + r, the same for A, B, C.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="cpu",
        help="Where the MLP runs train; cuda (or auto with a GPU) adds the ResNet-18 GPU measurements.",
    )
    parser.add_argument("--quick", action="store_true", help="A smoke test: fewer samples, repeats and steps.")
    parser.add_argument(
        "--runs",
        default="A,B,B+fused,B+clip,C,C-noclip",
        help="Which MLP runs, comma-separated, of A, B, B+fused, B+clip, C, C-noclip (C without gradient clipping).",
    )
    parser.add_argument("--no_gpu_models", action="store_true", help="Skip the ResNet-18 measurements on a GPU.")
    parser.add_argument("--gpu_batch_size", type=int, default=256, help="Batch size of the ResNet-18 runs.")
    parser.add_argument("--gpu_steps", type=int, default=None, help="Timed ResNet-18 steps (default 100, quick 30).")
    parser.add_argument("--gpu_warmup", type=int, default=None, help="Untimed first steps (default 20, quick 10).")
    parser.add_argument("--gpu_sizes", default="32,224", help="Image sizes of the ResNet-18 runs, comma-separated.")
    parser.add_argument("--compile", action="store_true", help="Also time the ResNet-18 runs with torch.compile.")
    parser.add_argument(
        "--gpu_ablations",
        action="store_true",
        help="Also time the template with each of its GPU defaults turned off in turn (channels-last, bf16 "
        "autocast, gradient clipping) and with cuDNN autotuning on: whether each helps.",
    )
    parser.add_argument(
        "--gpu_repeats", type=int, default=None, help="Interleaved repeats of each ResNet-18 run (default 3, quick 1)."
    )
    parser.add_argument("--peak_tflops", type=float, default=None, help="The GPU's dense bf16 peak, for MFU.")
    parser.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    parser.add_argument("--workdir", default=None, help="Where generated data and runs go (default: a temp dir).")
    args = parser.parse_args(argv)
    args.samples = args.samples or (6000 if args.quick else 60000)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.gpu_steps = args.gpu_steps or (30 if args.quick else 100)
    args.gpu_warmup = args.gpu_warmup if args.gpu_warmup is not None else (10 if args.quick else 20)
    args.gpu_repeats = args.gpu_repeats or (1 if args.quick else 3)
    args.runs = [name.strip() for name in args.runs.split(",") if name.strip()]
    args.gpu_sizes = [int(size) for size in args.gpu_sizes.split(",") if size.strip()]
    unknown = set(args.runs) - set(MLP_RUNS)
    if unknown:
        parser.error(f"--runs: unknown {sorted(unknown)}; choose from {', '.join(MLP_RUNS)}")
    if min(args.epochs, args.repeats, args.batch_size, args.samples, args.gpu_steps, args.gpu_repeats) < 1:
        parser.error("--epochs, --repeats, --batch_size, --samples, --gpu_steps and --gpu_repeats must be positive")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available here")
    return args


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
    from project.fakedata import write_mnist

    root = workdir / "mnist"
    n_test = max(100, args.samples // 6)
    write_mnist(root, n_train=args.samples, n_test=n_test, source=args.source, seed=args.seed)
    return root, f"generated ({args.source}) MNIST IDX files, {args.samples} training images"


def cifar10_root(args: argparse.Namespace, workdir: Path) -> tuple[Path, str]:
    """The CIFAR-10 root of the ResNet-18 runs and a description: the real files when present, else generated ones."""
    from project.datamodules.cifar10 import FOLDER, TEST_FILES, TRAIN_FILES
    from project.fakedata import write_cifar10

    if args.root and not args.quick and all((Path(args.root) / FOLDER / f).is_file() for f in TRAIN_FILES + TEST_FILES):
        return Path(args.root), f"CIFAR-10 files in {args.root}"
    root = workdir / "cifar10"
    n_train = (args.gpu_warmup + args.gpu_steps) * args.gpu_batch_size
    write_cifar10(root, n_train=n_train, n_test=100, seed=args.seed)
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


# ---------------------------------------------------------------------------------------------- A and B
def textbook_mlp() -> nn.Sequential:
    """The chapter's MNISTNet, as it writes it."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 512),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(512, 256),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(256, 10),
    )


def textbook_fit(
    loader: Any, epochs: int, device: torch.device, fused: bool = False, clip: float | None = None
) -> tuple[float, nn.Module]:
    """Train a fresh MLP with the chapter's loop (clipping the gradient norm at ``clip`` if given); return the
    seconds of the epochs and the model."""
    model = textbook_mlp().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True if fused else None)
    criterion = nn.CrossEntropyLoss()
    _sync(device)
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for images, labels in loader:
            if device.type != "cpu":
                images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
    _sync(device)
    return time.perf_counter() - started, model


def run_a(ctx: Context, seed: int) -> RunResult:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.manual_seed(seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*MNIST_STATS)])
    dataset = datasets.MNIST(ctx.root, train=True, transform=transform)
    loader = DataLoader(dataset, batch_size=ctx.args.batch_size, shuffle=True)
    seconds, model = textbook_fit(loader, ctx.args.epochs, ctx.device)
    return RunResult(seconds, len(dataset) * ctx.args.epochs, ctx.score(model))


def run_b(ctx: Context, seed: int, fused: bool = False, clip: float | None = None) -> RunResult:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(seed)
    data = ctx.tensors
    loader = DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=ctx.args.batch_size, shuffle=True)
    seconds, model = textbook_fit(loader, ctx.args.epochs, ctx.device, fused=fused, clip=clip)
    return RunResult(seconds, len(data.train_y) * ctx.args.epochs, ctx.score(model))


# ---------------------------------------------------------------------------------------------- C
@contextlib.contextmanager
def timed_epochs(trainer: Any, device: torch.device) -> Iterator[list[float]]:
    """Record the seconds of each training epoch loop of ``trainer`` (no callback: nothing added per step)."""
    seconds: list[float] = []
    loop = trainer.fit_loop.epoch_loop
    run = loop.run

    def timed_run(*args: Any, **kwargs: Any) -> Any:
        _sync(device)
        started = time.perf_counter()
        try:
            return run(*args, **kwargs)
        finally:
            _sync(device)
            seconds.append(time.perf_counter() - started)

    loop.run = timed_run
    try:
        yield seconds
    finally:
        del loop.run


def template_cli(args: Sequence[str], workdir: Path, callbacks: Sequence[Any] = ()) -> Any:
    """``TemplateCLI`` exactly as ``scripts/train.py`` builds it, writing its run directory under ``workdir``."""
    from project.cli import TemplateCLI
    from project.configs import expand_args

    argv = [*args, "--trainer.default_root_dir", str(workdir / "runs"), "--no_test", "true"]
    defaults = {"callbacks": list(callbacks)} if callbacks else None
    with _quiet_warnings():
        return TemplateCLI(expand_args(argv), trainer_defaults=defaults)


def run_c(ctx: Context, seed: int, clip: bool = True) -> RunResult:
    args = ctx.args
    argv = [
        "--model", "mlp",
        "--data", "mnist",
        "--data.root", str(ctx.root),
        "--data.download", "false",
        "--data.batch_size", str(args.batch_size),
        "--data.val_size", "0",
        "--trainer.max_epochs", str(args.epochs),
        "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0",
        "--accelerator", "gpu" if ctx.device.type == "cuda" else "cpu",
        "--devices", "1",
        "--precision", "32-true",  # the same arithmetic as A and B (auto would pick bf16-mixed on a GPU)
        "--seed", str(seed),
    ]  # fmt: skip
    if not clip:
        argv += ["--trainer.gradient_clip_val", "0"]
    started = time.perf_counter()
    cli = template_cli(argv, ctx.workdir)
    setup_s = time.perf_counter() - started
    trainer = cli.trainer
    with timed_epochs(trainer, ctx.device) as epochs, _quiet_warnings():
        started = time.perf_counter()
        trainer.fit(cli.model, datamodule=cli.datamodule)
        fit_s = time.perf_counter() - started
    if len(epochs) != args.epochs:
        raise RuntimeError(f"the template ran {len(epochs)} training epochs instead of {args.epochs}")
    samples = len(cli.datamodule.splits["train"][1]) * args.epochs
    return RunResult(sum(epochs), samples, ctx.score(cli.model.network), extra={"fit_s": fit_s, "cli_s": setup_s})


MLP_RUNS: dict[str, tuple[str, Callable[..., RunResult]]] = {
    "A": ("textbook: torchvision MNIST, per-sample PIL → ToTensor → Normalize, DataLoader", run_a),
    "B": ("same loop over DataLoader(TensorDataset(normalized float tensors))", run_b),
    "B+fused": ("B with Adam(fused=True), as the template picks", lambda ctx, seed: run_b(ctx, seed, fused=True)),
    "B+clip": ("B with clip_grad_norm_(1.0) each step, as C's defaults", lambda ctx, seed: run_b(ctx, seed, clip=1.0)),
    "C": ("template: TemplateCLI → MLP + MNISTDataModule + Trainer, default callbacks", run_c),
    "C-noclip": ("C with --trainer.gradient_clip_val 0 (no clipping, like A and B)", lambda c, s: run_c(c, s, False)),
}


# ---------------------------------------------------------------------------------------------- running them
@dataclass
class RunResult:
    seconds: float
    samples: int
    test_acc: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.samples / self.seconds


@dataclass
class Context:
    args: argparse.Namespace
    root: Path
    workdir: Path
    device: torch.device
    tensors: MNISTTensors

    @torch.no_grad()
    def score(self, model: nn.Module) -> float:
        """Accuracy on the test images, normalized once, the same for every model."""
        was_training = model.training
        model.eval().to(self.device)  # Lightning moves a model back to the CPU at the end of fit
        correct = 0
        for start in range(0, len(self.tensors.test_y), 1000):
            images = self.tensors.test_x[start : start + 1000].to(self.device)
            labels = self.tensors.test_y[start : start + 1000].to(self.device)
            correct += int((model(images).argmax(dim=-1) == labels).sum())
        model.train(was_training)
        return correct / len(self.tensors.test_y)


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


def benchmark_mlp(ctx: Context, log: Callable[[str], None]) -> dict[str, Any]:
    args = ctx.args
    results: dict[str, list[RunResult]] = {name: [] for name in args.runs}
    for repeat, name in interleaved(args.runs, args.repeats):
        result = MLP_RUNS[name][1](ctx, args.seed + repeat)
        results[name].append(result)
        rate, acc = result.rate, result.test_acc
        log(f"repeat {repeat + 1}/{args.repeats} {name:8s} {rate:9.0f} samples/s  test acc {acc:.4f}")
    out: dict[str, Any] = {}
    for name, runs in results.items():
        out[name] = {
            "what": MLP_RUNS[name][0],
            "samples_per_s": [r.rate for r in runs],
            "seconds": [r.seconds for r in runs],
            "samples": runs[0].samples,
            "test_acc": [r.test_acc for r in runs],
            **summarize([r.rate for r in runs]),
        }
        for key in runs[0].extra:
            out[name][key] = [r.extra[key] for r in runs]
    ratios, best_ratios = {}, {}
    for top in ("C", "C-noclip"):
        for bottom in ("A", "B", "B+fused", "B+clip"):
            if top in out and bottom in out:
                ratios[f"{top}/{bottom}"] = out[top]["median"] / out[bottom]["median"]
                best_ratios[f"{top}/{bottom}"] = out[top]["max"] / out[bottom]["max"]
    # On a shared machine the fastest of the repeats is the one least disturbed by other work: reported too.
    return {"runs": out, "ratios": ratios, "ratios_of_best": best_ratios}


# ---------------------------------------------------------------------------------------------- ResNet-18 on a GPU
def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def resnet_flops_per_image(image_size: int) -> float:
    """Forward FLOPs of ResNet-18 (10 classes) for one ``3 × image_size²`` image, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models import resnet18

    with torch.device("meta"):
        model = resnet18(num_classes=10)
        images = torch.empty(2, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(images)
    return counter.get_total_flops() / 2


def plain_resnet_rate(args: argparse.Namespace, image_size: int, compile: bool, device: torch.device) -> float:
    """Images/s of a plain bf16-autocast, channels-last ResNet-18 loop over synthetic batches on the GPU.

    (On the CPU, only for testing this code: no autocast.)
    """
    from torchvision.models import resnet18

    torch.manual_seed(args.seed)
    model = resnet18(num_classes=10).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step_model = torch.compile(model) if compile else model
    images = torch.randn(args.gpu_batch_size, 3, image_size, image_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.gpu_batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = nn.functional.cross_entropy(step_model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.gpu_warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(args.gpu_steps):
        step()
    _sync(device)
    return args.gpu_steps * args.gpu_batch_size / (time.perf_counter() - started)


def template_resnet_rate(
    args: argparse.Namespace,
    root: Path,
    workdir: Path,
    image_size: int,
    compile: bool,
    device: torch.device,
    extra_args: Sequence[str] = (),
) -> float:
    """Images/s of the template training ResNet-18 on CIFAR-10 files through the Trainer, after the warm-up.

    ``extra_args`` are added to its command line (an ablation). On the CPU, only for testing this code: full precision.
    """
    import lightning as L

    warmup, steps = args.gpu_warmup, args.gpu_steps
    argv = [
        "--model", "resnet",
        "--model.weights", "none",
        "--model.finetune", "all",
        "--data", "cifar10",
        "--data.root", str(root),
        "--data.download", "false",
        "--data.batch_size", str(args.gpu_batch_size),
        "--data.val_size", "0",
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", str(warmup + steps),
        "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0",
        "--accelerator", "gpu" if device.type == "cuda" else "cpu",
        "--devices", "1",
        "--precision", "bf16-mixed" if device.type == "cuda" else "32-true",
        "--seed", str(args.seed),
        "--dashboard_every", "0",  # no plots at the end of these runs: they are timed only while training
    ]  # fmt: skip
    if image_size != 32:
        argv += ["--data.image_size", str(image_size)]
    if compile:
        argv += ["--compile"]
    argv += list(extra_args)

    class StepTimer(L.Callback):
        """From the end of the last warm-up step (so the next batch's loading counts) to the end of the epoch."""

        started: float | None = None
        seconds: float | None = None

        def _start(self) -> None:
            _sync(device)
            self.started = time.perf_counter()

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if warmup == 0:
                self._start()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == warmup - 1:
                self._start()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            _sync(device)
            if self.started is not None:
                self.seconds = time.perf_counter() - self.started

    timer = StepTimer()
    # As in a fresh process: the Trainer keeps the session's setting unless --trainer.benchmark is given, and the
    # plain loop turned autotuning on.
    torch.backends.cudnn.benchmark = False
    cli = template_cli(argv, workdir, callbacks=[timer])
    with _quiet_warnings():
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if timer.seconds is None:
        raise RuntimeError("the template's ResNet-18 run ended before the timed steps")
    return steps * args.gpu_batch_size / timer.seconds


#: The template's GPU defaults, each turned off in turn by ``--gpu_ablations`` (and cuDNN autotuning, not a default,
#: turned on): what each one is worth.
GPU_ABLATIONS: dict[str, list[str]] = {
    "no channels-last": ["--model.channels_last", "false"],
    "cuDNN autotuning": ["--trainer.benchmark", "true"],
    "fp32 (TF32), no bf16": ["--precision", "32-true"],
    # The plain loop does not clip: what the template's clipping (its norm; the scaling is inside the fused step) costs.
    "no gradient clipping": ["--trainer.gradient_clip_val", "0"],
}


def benchmark_gpu(
    args: argparse.Namespace, workdir: Path, log: Callable[[str], None], device: torch.device | None = None
) -> dict[str, Any]:
    """ResNet-18 images/s and MFU, plain loop and template, at each of ``args.gpu_sizes`` (a CPU device: tests).

    Every run is repeated ``args.gpu_repeats`` times, interleaved like the MLP runs; the median is reported.
    """
    device = device or torch.device("cuda")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(name, args.peak_tflops)
    root, data = cifar10_root(args, workdir)
    torch.set_float32_matmul_precision("high")

    def plain(image_size: int, compile: bool) -> Callable[[], float]:
        def run() -> float:
            torch.backends.cudnn.benchmark = True  # the template runs turn it off (its default)
            return plain_resnet_rate(args, image_size, compile, device)

        return run

    def template(image_size: int, compile: bool, extra_args: Sequence[str] = ()) -> Callable[[], float]:
        return lambda: template_resnet_rate(args, root, workdir, image_size, compile, device, extra_args)

    runs: dict[str, tuple[int, Callable[[], float]]] = {}
    for image_size in args.gpu_sizes:
        for compile in (False, True) if args.compile else (False,):
            suffix = " compiled" if compile else ""
            runs[f"resnet18 {image_size}px plain{suffix}"] = (image_size, plain(image_size, compile))
            runs[f"resnet18 {image_size}px template{suffix}"] = (image_size, template(image_size, compile))
        if args.gpu_ablations:
            for ablation, extra_args in GPU_ABLATIONS.items():
                runs[f"resnet18 {image_size}px template, {ablation}"] = (
                    image_size,
                    template(image_size, False, extra_args),
                )
    rates: dict[str, list[float]] = {key: [] for key in runs}
    for repeat, key in interleaved(list(runs), args.gpu_repeats):
        rates[key].append(runs[key][1]())
        log(f"repeat {repeat + 1}/{args.gpu_repeats} {key:48s} {rates[key][-1]:9.0f} images/s")

    out: dict[str, Any] = {
        "device": name,
        "data": data,
        "peak_bf16_tflops": peak,
        "batch_size": args.gpu_batch_size,
        "steps": args.gpu_steps,
        "repeats": args.gpu_repeats,
        "runs": {},
    }
    flops = {size: resnet_flops_per_image(size) for size in args.gpu_sizes}
    for key, (image_size, _) in runs.items():
        rate = statistics.median(rates[key])
        out["runs"][key] = {
            "images_per_s": rate,
            "images_per_s_all": rates[key],
            "forward_gflops_per_image": flops[image_size] / 1e9,
            "mfu": 3 * flops[image_size] * rate / (peak * 1e12) if peak else None,
        }
    for image_size in args.gpu_sizes:
        plain_rate = out["runs"][f"resnet18 {image_size}px plain"]["images_per_s"]
        for key, run in out["runs"].items():
            if key.startswith(f"resnet18 {image_size}px "):
                run["vs_plain"] = run["images_per_s"] / plain_rate
    return out


# ---------------------------------------------------------------------------------------------- report
def environment(args: argparse.Namespace) -> dict[str, Any]:
    import lightning
    import torchvision

    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def render(report: dict[str, Any]) -> str:
    """The results as a plain-text table."""
    env, config, mlp = report["environment"], report["config"], report["mlp"]
    lines = [
        f"MLP 784-512-256-10, batch {config['batch_size']}, {config['epochs']} epoch(s) of "
        f"{mlp['runs'][next(iter(mlp['runs']))]['samples'] // config['epochs']} samples, "
        f"{config['repeats']} interleaved repeats; {config['data']}",
        f"device {env['device']}{' (' + env['gpu'] + ')' if env['gpu'] else ''}; CPU {env['cpu']} "
        f"({env['cpu_count']} cores); torch.get_num_threads() = {env['torch_threads']}; torch {env['torch']}, "
        f"lightning {env['lightning']}",
        "timed: the training epochs only (A, B: the loop over the DataLoader; C: Lightning's epoch loop, every "
        "step with its hooks, callbacks and logging); not timed: building the model, reading the files, the CLI",
        "",
        f"{'run':9s} {'samples/s':>10s} {'min':>8s} {'max':>8s} {'spread':>7s} {'vs A':>6s} {'vs B':>6s} "
        f"{'test acc':>9s}  what",
    ]
    runs = mlp["runs"]
    for name, run in runs.items():
        vs_a = run["median"] / runs["A"]["median"] if "A" in runs else math.nan
        vs_b = run["median"] / runs["B"]["median"] if "B" in runs else math.nan
        acc = statistics.median(run["test_acc"])
        lines.append(
            f"{name:9s} {run['median']:10.0f} {run['min']:8.0f} {run['max']:8.0f} {run['spread_pct']:6.0f}% "
            f"{vs_a:6.2f} {vs_b:6.2f} {acc:9.4f}  {run['what']}"
        )
    if "C" in runs and "fit_s" in runs["C"]:
        fit = statistics.median(runs["C"]["fit_s"])
        cli = statistics.median(runs["C"]["cli_s"])
        lines.append(
            f"C: whole trainer.fit {fit:.2f} s (median; reading the files, checkpoints included), CLI {cli:.2f} s"
        )
    if mlp["ratios"]:
        lines.append("ratios of medians: " + ", ".join(f"{k} = {v:.2f}" for k, v in mlp["ratios"].items()))
        lines.append("ratios of best runs: " + ", ".join(f"{k} = {v:.2f}" for k, v in mlp["ratios_of_best"].items()))
    gpu = report.get("gpu")
    if gpu:
        peak = gpu["peak_bf16_tflops"]
        lines += [
            "",
            f"ResNet-18 on {gpu['device']}, batch {gpu['batch_size']}, {gpu['steps']} timed steps, median of "
            f"{gpu['repeats']} interleaved repeats, bf16 peak {peak} TFLOPS; {gpu['data']}",
        ]
        for key, run in gpu["runs"].items():
            mfu = f"{100 * run['mfu']:.1f}%" if run["mfu"] is not None else "n/a (pass --peak_tflops)"
            lines.append(
                f"  {key:48s} {run['images_per_s']:9.0f} images/s  {run['vs_plain']:.2f}x plain  "
                f"{run['forward_gflops_per_image']:.2f} GFLOP/image fwd  MFU {mfu}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = Path(args.workdir)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="benchmark-")))

        def log(message: str) -> None:
            print(f"[benchmark] {message}", file=sys.stderr, flush=True)

        if args.device == "cuda":
            # What the template's command line sets on a GPU (TF32 matmuls), for every run alike.
            torch.set_float32_matmul_precision("high")
        # Importing Lightning (done here for C) slows every optimizer step on a machine without a GPU, which a
        # textbook script never pays; the template's command line undoes it (see plain_cuda_check_without_gpu).
        # Undone here before any run, so that A, B and C all run as they would on their own.
        from project.cli import plain_cuda_check_without_gpu

        plain_cuda_check_without_gpu()
        root, data = mnist_root(args, workdir)
        ctx = Context(args, root, workdir, torch.device(args.device), MNISTTensors.load(root))
        threads = torch.get_num_threads()
        report: dict[str, Any] = {
            "config": {
                "batch_size": args.batch_size,
                "epochs": args.epochs,
                "repeats": args.repeats,
                "seed": args.seed,
                "data": data,
                "quick": args.quick,
            },
            "environment": environment(args),
            "mlp": benchmark_mlp(ctx, log),
        }
        if torch.get_num_threads() != threads:
            raise RuntimeError(f"torch threads changed during the runs: {threads} → {torch.get_num_threads()}")
        if args.device == "cuda" and not args.no_gpu_models:
            report["gpu"] = benchmark_gpu(args, workdir, log)
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        # Lightning's advice for real runs (more DataLoader workers, a logging interval for short epochs) and the
        # monitored val/acc that a benchmark without validation never logs.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
        yield
