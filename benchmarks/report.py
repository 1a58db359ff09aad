"""The benchmark's report: the environment it ran in and the plain-text table."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import torch


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
