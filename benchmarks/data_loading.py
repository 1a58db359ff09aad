"""Data loading at 224 px: ``python -m benchmarks.data_loading --files 20000 [--json FILE]``.

Writes ``--files`` photo-sized JPEGs (320×240 and 500×375, photo-like content, ten classes) once, then measures
in one run:

- the folder module's setup, first run (every file decoded) and second (what the first kept: ``scan_cache``);
- ``scripts/prepare_data.py``'s time to write the shards (as the files are, and shrunk to ``--max_size 256``);
- training images/s of each path, as a training loop draws them (uint8 batches of 224 px; no model):
  the folder module, streaming from the local shards (both), streaming from an S3 server on 127.0.0.1 (moto, a cold
  cache: every shard is downloaded), each with the ``squash`` and the ``imagenet`` preset, against torchvision's
  ``ImageFolder`` + ``DataLoader`` with the same workers and the same transforms (PIL decoding, as its docs show).

Each throughput is the best of ``--repeats`` passes over ``--images`` training images, after one warm-up batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

SIZE = 224
SMALL = 256  # prepare_data.py --max_size: the shorter side ImageNet training recipes resize to


def photo(height: int, width: int, rng: np.random.Generator) -> Image.Image:
    """Smooth colour fields with mild grain: a photo's JPEG size and decoding cost (uniform noise, at three times
    the bytes, costs what no photo does)."""
    coarse = Image.fromarray(rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC)).astype(np.int16)
    return Image.fromarray(np.clip(smooth + rng.integers(-12, 13, (height, width, 3)), 0, 255).astype(np.uint8))


def write_folder(root: Path, files: int) -> None:
    rng = np.random.default_rng(0)
    shapes = [(240, 320), (375, 500)]
    photos = [photo(*shapes[i % 2], rng) for i in range(8)]
    for index in range(files):
        folder = root / f"class{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        photos[index % len(photos)].save(folder / f"{index}.jpg", quality=85)


def images_per_second(batches: Iterable, images: int, repeats: int, fresh: callable | None = None) -> float:
    """Best of ``repeats`` passes: ``images`` images drawn from a new iterator each time, after one warm-up batch."""
    best = 0.0
    for _ in range(repeats):
        if fresh is not None:
            fresh()
        iterator = iter(batches)
        next(iterator)
        seen, started = 0, time.perf_counter()
        for batch in iterator:
            seen += len(batch[1])
            if seen >= images:
                break
        best = max(best, seen / (time.perf_counter() - started))
    return best


def empty_cache(cache: Path) -> None:
    """Delete the downloaded shards (not the index, which the data set read when it was made)."""
    for chunk in cache.rglob("chunk-*.bin"):
        chunk.unlink()


def torchvision_baseline(root: Path, preset: str, workers: int, batch: int) -> DataLoader:
    if preset == "imagenet":
        transform = v2.Compose(
            [v2.PILToTensor(), v2.RandomResizedCrop(SIZE, antialias=True), v2.RandomHorizontalFlip()]
        )
    else:
        transform = v2.Compose([v2.PILToTensor(), v2.Resize((SIZE, SIZE), antialias=True)])
    dataset = datasets.ImageFolder(str(root), transform=transform)
    return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def start_s3_server(port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import boto3

    deadline = time.monotonic() + 60
    while True:
        try:
            boto3.client("s3").create_bucket(Bucket="bench")
            return server
        except Exception:  # noqa: BLE001 (still starting)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=3000, help="training images timed per pass")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--workdir", default="/tmp/data-loading-benchmark")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    root = work / f"images-{args.files}"
    if not root.exists():
        write_folder(root, args.files)
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    port = 5000 + os.getpid() % 1000
    os.environ.update(
        PROJECT_CACHE_DIR=str(cache),
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    from project.datamodules import FolderDataModule
    from project.datamodules.streaming import StreamingDataModule
    from project.engine import prepare

    results: dict = {"files": args.files, "workers": args.workers, "batch_size": args.batch_size, "size": SIZE}
    results["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    for run in ("first", "second"):
        data = FolderDataModule(root=str(root), image_size=SIZE, cache="never", num_workers=args.workers)
        started = time.perf_counter()
        data.setup("fit")
        results[f"folder_setup_{run}_s"] = round(time.perf_counter() - started, 2)
        print(f"folder setup, {run} run: {results[f'folder_setup_{run}_s']} s", flush=True)

    shards = work / f"shards-{args.files}"
    started = time.perf_counter()
    options = ["--data", "folder", "--data.root", str(root), "--data.image_size", str(SIZE)]
    assert prepare.main([*options, "--output", str(shards), "--overwrite"]) == 0
    results["prepare_s"] = round(time.perf_counter() - started, 1)
    small = work / f"shards-{args.files}-{SMALL}"
    started = time.perf_counter()
    assert prepare.main([*options, "--output", str(small), "--overwrite", "--max_size", str(SMALL)]) == 0
    results["prepare_max_size_s"] = round(time.perf_counter() - started, 1)
    server = start_s3_server(port)
    try:
        started = time.perf_counter()
        assert prepare.main([*options, "--output", "s3://bench/shards", "--overwrite"]) == 0
        results["prepare_s3_s"] = round(time.perf_counter() - started, 1)
        rows = []
        for preset in ("squash", "imagenet"):
            common = {"batch_size": args.batch_size, "num_workers": args.workers, "preset": preset}
            baseline = torchvision_baseline(root, preset, args.workers, args.batch_size)
            base = images_per_second(baseline, args.images, args.repeats)
            paths = {"ImageFolder + DataLoader (baseline)": (baseline, None)}
            folder = FolderDataModule(root=str(root), image_size=SIZE, cache="never", **common)
            folder.setup("fit")
            paths["folder module"] = (folder.train_dataloader(), None)
            local = StreamingDataModule(input_dir=str(shards), image_size=SIZE, **common)
            local.setup("fit")
            paths["streaming, local shards"] = (local.train_dataloader(), None)
            shrunk = StreamingDataModule(input_dir=str(small), image_size=SIZE, **common)
            shrunk.setup("fit")
            paths[f"streaming, local shards, --max_size {SMALL}"] = (shrunk.train_dataloader(), None)
            remote = StreamingDataModule(input_dir="s3://bench/shards", image_size=SIZE, **common)
            remote.setup("fit")
            # A cold cache at every pass: each shard comes from the server.
            paths["streaming, S3 (cold cache)"] = (remote.train_dataloader(), lambda: empty_cache(cache / "chunks"))
            for name, (loader, fresh) in paths.items():
                speed = base if loader is baseline else images_per_second(loader, args.images, args.repeats, fresh)
                rows.append(
                    {"preset": preset, "path": name, "images_s": round(speed, 1), "ratio": round(speed / base, 2)}
                )
                print(f"{preset:9s} {name:38s} {speed:8.0f} images/s  {speed / base:5.2f}x", flush=True)
        results["throughput"] = rows
    finally:
        server.terminate()
        server.wait()
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)  # the workers do the work; the main process only hands batches on
    raise SystemExit(main())
