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

This file holds the command line and ``main``; ``mlp.py`` the MLP runs (A, B, C and their variants), ``gpu.py``
the ResNet-18 runs, ``report.py`` the environment and the table, ``common.py`` what they share (the data, the
template's command line, timing). ``README.md`` next to them is the diary of the measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .common import MNISTTensors, mnist_root
from .gpu import benchmark_gpu
from .mlp import MLP_RUNS, Context, benchmark_mlp
from .report import environment, render


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


# ---------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--time_to_accuracy" in argv:  # the other mode: whole processes to a target accuracy, on real MNIST
        from . import time_to_accuracy

        return time_to_accuracy.main([arg for arg in argv if arg != "--time_to_accuracy"])
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
        from project.engine.fastpath import plain_cuda_check_without_gpu

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
