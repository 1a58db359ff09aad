"""The folder data module's setup, first and second run: ``python -m benchmarks.folder_setup --files 100000``.

Writes ``--files`` photo-sized JPEGs (320×240, ten classes) into ``--workdir`` once, then times
``FolderDataModule(cache="never").setup("fit")`` twice with an empty ``$PROJECT_CACHE_DIR``: the first run decodes
every file (which are usable, the pixel statistics), the second reads what the first kept (``scan_cache``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def write_folder(root: Path, files: int) -> None:
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(8)]
    for index in range(files):
        folder = root / f"class{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        photos[index % len(photos)].save(folder / f"{index}.jpg", quality=85)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--workdir", default="/tmp/folder-setup-benchmark")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    root = Path(args.workdir) / f"images-{args.files}"
    if not root.exists():
        write_folder(root, args.files)
    cache = Path(args.workdir) / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["PROJECT_CACHE_DIR"] = str(cache)
    from project.datamodules import FolderDataModule

    for run in ("first", "second"):
        data = FolderDataModule(root=str(root), image_size=64, cache="never", num_workers=args.workers)
        started = time.perf_counter()
        data.setup("fit")
        print(f"{run} run: setup {time.perf_counter() - started:.1f} s for {args.files} files", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
