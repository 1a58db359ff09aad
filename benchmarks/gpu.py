"""ResNet-18 on a CUDA GPU: images/s and MFU of a plain bf16 channels-last loop and of the template, and ablations.

See ``benchmark.py`` for what is measured.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .common import cifar10_root, interleaved, quiet_warnings, sync, template_cli

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
    sync(device)
    started = time.perf_counter()
    for _ in range(args.gpu_steps):
        step()
    sync(device)
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
            sync(device)
            self.started = time.perf_counter()

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if warmup == 0:
                self._start()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == warmup - 1:
                self._start()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            sync(device)
            if self.started is not None:
                self.seconds = time.perf_counter() - self.started

    timer = StepTimer()
    # As in a fresh process: the Trainer keeps the session's setting unless --trainer.benchmark is given, and the
    # plain loop turned autotuning on.
    torch.backends.cudnn.benchmark = False
    cli = template_cli(argv, workdir, callbacks=[timer])
    with quiet_warnings():
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
    "no fast path": ["--fast_path", "false"],
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
