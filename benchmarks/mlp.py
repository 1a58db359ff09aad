"""The MLP runs: A and B, the textbook loop over two data paths, and C, the template through its command line.

See ``benchmark.py`` for what is measured and what is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .common import MNIST_STATS, MNISTTensors, interleaved, quiet_warnings, summarize, sync, template_cli


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
    sync(device)
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
    sync(device)
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
        sync(device)
        started = time.perf_counter()
        try:
            return run(*args, **kwargs)
        finally:
            sync(device)
            seconds.append(time.perf_counter() - started)

    loop.run = timed_run
    try:
        yield seconds
    finally:
        del loop.run


def run_c(ctx: Context, seed: int, clip: bool = True, fast_path: bool = True) -> RunResult:
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
    if not fast_path:
        argv += ["--fast_path", "false"]
    started = time.perf_counter()
    cli = template_cli(argv, ctx.workdir)
    setup_s = time.perf_counter() - started
    trainer = cli.trainer
    with timed_epochs(trainer, ctx.device) as epochs, quiet_warnings():
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
    "C-plain": (
        "C with --fast_path false (Lightning's defaults for what project.engine.fastpath does)",
        lambda c, s: run_c(c, s, fast_path=False),
    ),
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
    for top in ("C", "C-noclip", "C-plain"):
        for bottom in ("A", "B", "B+fused", "B+clip"):
            if top in out and bottom in out:
                ratios[f"{top}/{bottom}"] = out[top]["median"] / out[bottom]["median"]
                best_ratios[f"{top}/{bottom}"] = out[top]["max"] / out[bottom]["max"]
    # On a shared machine the fastest of the repeats is the one least disturbed by other work: reported too.
    return {"runs": out, "ratios": ratios, "ratios_of_best": best_ratios}
