"""Serving speed: requests/s and p50/p99 latency of ``scripts/serve.py`` at batch 1 and with dynamic batching.

``python scripts/benchmark_serving.py [--requests 400] [--clients 16] [--json FILE]``. For the CNN at MNIST's 28 px
and ResNet-18 at its pretrained 224 px, each served by LitServe on 127.0.0.1 (one worker on the CPU), ``--clients``
threads of this process send PNG images as raw bytes, as fast as the answers come. The clients share the machine
with the server: on 2 cores, what is measured is the whole exchange, not the server alone. Checkpoints are trained
for a few steps on generated data (the weights do not change the speed).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

from benchmarks.common import fake_data_writers, quiet_warnings

REPO = Path(__file__).resolve().parents[1]
TINY = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
TINY += ["--no_test", "true", "--trainer.enable_progress_bar", "false", "--dashboard_every", "0"]
MODELS = {
    "cnn": ["--model", "cnn", "--data", "mnist", "--data.val_size", "0.1"],
    "resnet18": ["--model", "resnet", "--model.weights", "none", "--data", "cifar10", "--data.val_size", "0.1"],
}
SIZES = {"cnn": 28, "resnet18": 224}
MODES = {
    "batch 1": ["--max_batch_size", "1"],
    "dynamic batching": ["--max_batch_size", "16", "--batch_timeout", "0.01"],
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmark_serving.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="Requests per measurement (ResNet-18: a fifth).")
    parser.add_argument("--clients", type=int, default=16, help="Concurrent clients.")
    parser.add_argument("--models", default="cnn,resnet18", help="Comma-separated: cnn, resnet18.")
    parser.add_argument("--json", help="Also write the results to this file.")
    return parser.parse_args(argv)


def checkpoint(model: str, workdir: Path) -> Path:
    from project.engine.cli import main as train

    data = workdir / "data"
    if not data.exists():
        writers = fake_data_writers()
        writers.write_mnist(data, n_train=256, n_test=32)
        writers.write_cifar10(data, n_train=256, n_test=32)
    run = workdir / model
    extra = ["--data.image_size", str(SIZES[model])] if model == "resnet18" else []
    with quiet_warnings():
        code = train([*TINY, *MODELS[model], *extra, "--data.root", str(data), "--run_dir", str(run)])
    assert code == 0, f"training the {model} checkpoint failed"
    return run / "checkpoints" / "last.ckpt"


def png(size: int, channels: int) -> bytes:
    buffer = io.BytesIO()
    mode = "L" if channels == 1 else "RGB"
    Image.frombytes(mode, (size, size), os.urandom(size * size * channels)).save(buffer, format="PNG")
    return buffer.getvalue()


def measure(ckpt: Path, mode: list[str], body: bytes, requests: int, clients: int, cwd: Path) -> dict[str, float]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, str(REPO / "scripts" / "serve.py"), "--ckpt", str(ckpt), "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--accelerator", "cpu", *mode],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        headers = {"Content-Type": "image/png"}
        with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=clients)) as client:

            def ask(_: int) -> float:
                started = time.perf_counter()
                response = client.post(f"{url}/predict", content=body, headers=headers)
                response.raise_for_status()
                return time.perf_counter() - started

            for _ in range(clients):  # warm-up: connections, the first batches
                ask(0)
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=clients) as pool:
                latencies = sorted(pool.map(ask, range(requests)))
            wall = time.perf_counter() - started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait()
    return {
        "requests_per_s": requests / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, round(0.99 * len(latencies)))],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(temporary)
        for model in args.models.split(","):
            ckpt = checkpoint(model, workdir)
            body = png(SIZES[model], 1 if model == "cnn" else 3)
            requests = args.requests if model == "cnn" else max(args.clients, args.requests // 5)
            for mode, flags in MODES.items():
                row = {"model": model, "size": SIZES[model], "mode": mode, "clients": args.clients}
                row |= measure(ckpt, flags, body, requests, args.clients, workdir)
                results.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n| model | input | serving | requests/s | p50 | p99 |  ({args.clients} clients, {os.cpu_count()} cores)")
    print("|---|---|---|---|---|---|")
    for row in results:
        print(
            f"| {row['model']} | {row['size']} px | {row['mode']} | {row['requests_per_s']:.0f} "
            f"| {row['p50_ms']:.0f} ms | {row['p99_ms']:.0f} ms |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0
