"""``scripts/prepare_data.py``: write a data set's shards once, for ``--data streaming`` (layout: :mod:`.shards`).

    python scripts/prepare_data.py --data folder --data.root data/images --output data/shards
    python scripts/prepare_data.py --data cifar10 --output s3://bucket/cifar10

The splits are the data module's own (the same ``--data`` options as ``train.py``: a folder's seeded
validation and test split, MNIST's 5,000 held-out images, ...). Image files are stored as they are (their
compressed bytes), in-memory data sets as PNG. LitData writes the shards with every core, with a progress bar.
``dataset.json`` is written last: an interrupted preparation leaves a directory that does not train, and that
the next run of this command starts over.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import torch
from torchvision.io import encode_jpeg, encode_png
from torchvision.transforms.v2 import functional as TF

from project.engine.configs import named_data_config, parse_overrides
from project.engine.data import shards
from project.engine.data.images import decode_image_bytes
from project.engine.data.writing import WriteRefused, end_writers, write_refused
from project.engine.entrypoint import ArgumentParser, run_main
from project.engine.errors import UserError, first_line
from project.engine.options import import_class


class SampleSource(Protocol):
    """What this command needs of a data module (``ImageDataModule`` has it all): after ``setup("fit")``, its
    in-memory ``splits`` as ``uint8`` tensors, or ``usable_files(split)``: ``(paths, labels)`` of image files to
    store as they are; ``prepare_args``: init arguments it takes for a preparation (a folder's ``cache="never"``)."""

    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    class_names: list[str]
    native_shape: tuple[int, int, int]
    dataset_stats: tuple[tuple[float, ...], tuple[float, ...]]
    prepare_args: dict[str, Any]

    def prepare_data(self) -> None: ...

    def setup(self, stage: str) -> None: ...


#: What :class:`SampleSource` asks of the class itself (``splits`` is set in ``__init__``).
_CLASS_NEEDS = ("class_names", "native_shape", "dataset_stats", "prepare_args", "setup")
#: Left in the output while it is written: a directory with it (and no ``dataset.json``) may be started over.
PREPARING = ".preparing"


def one_thread() -> None:
    """In a forked writer process: torch on one thread, as in a DataLoader worker (an OpenMP thread pool the parent
    started does not survive a fork, and a parallel op on it never returns)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


class FileBytes:
    """A sample of an image folder: the file's bytes as they are, and its label. With ``max_size``, an image whose
    shorter side is longer is shrunk to it (aspect kept) and stored as a JPEG of quality 90 in ``channels``."""

    def __init__(self, max_size: int | None = None, channels: int = 3) -> None:
        self.max_size, self.channels = max_size, channels

    def __call__(self, item: tuple[str, int]) -> dict[str, Any]:
        path, label = item
        with open(path, "rb") as file:
            data = file.read()
        if self.max_size is not None:
            one_thread()
            image = decode_image_bytes(data, self.channels)  # the training decoder: alpha, 16 bits, EXIF alike
            if min(image.shape[-2:]) > self.max_size:
                image = TF.resize(image, [self.max_size], antialias=True)
                data = encode_jpeg(image.contiguous(), quality=90).numpy().tobytes()
        return {"image": data, "label": label}


class PngBytes:
    """A sample of an in-memory data set (MNIST, CIFAR-10): the ``uint8`` image as a PNG file (lossless)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __call__(self, index: int) -> dict[str, Any]:
        one_thread()
        return {"image": encode_png(self.images[index]).numpy().tobytes(), "label": int(self.labels[index])}


def samples(datamodule: SampleSource, split: str, max_size: int | None = None) -> tuple[Any, list[Any]]:
    """``(how to write a sample, the samples)`` of one split of a set-up data module."""
    if split in datamodule.splits:
        images, labels = datamodule.splits[split]
        return PngBytes(images.cpu(), labels.cpu()), list(range(len(labels)))
    if hasattr(datamodule, "usable_files"):
        paths, labels = datamodule.usable_files(split)
        return FileBytes(max_size, datamodule.native_shape[0]), list(zip(paths, labels, strict=True))
    raise UserError(f"{type(datamodule).__name__} keeps no images in memory and is not an image folder")


def metadata(datamodule: SampleSource, counts: dict[str, int], source: str, max_size: int | None) -> dict[str, Any]:
    channels, height, width = datamodule.native_shape
    mean, std = datamodule.dataset_stats
    in_memory = all(split in datamodule.splits for split in shards.SPLITS)
    return {
        "format": shards.FORMAT,
        "version": shards.VERSION,
        "source": source,
        "class_names": list(datamodule.class_names),
        "channels": channels,
        # One size for every image (in-memory sets); folders keep each image's own (the preset shapes them).
        "image_size": height if in_memory and height == width else None,
        "stats": {"mean": list(mean), "std": list(std)},
        "max_size": max_size,  # the shorter side of stored images is at most this (None: files as they were)
        "splits": counts,
    }


def start_output(output: Path, overwrite: bool) -> None:
    """Make ``output`` ready to be written: refuse to replace a finished data set (unless ``overwrite``) or
    anything this command did not write; start an interrupted preparation over."""
    if output.exists() and any(output.iterdir()):
        finished = (output / shards.METADATA).exists()
        if finished and not overwrite:
            raise UserError(f"{output} already holds a prepared data set: pass --overwrite to write it again")
        if not finished and not (output / PREPARING).exists():
            raise UserError(f"{output} is not empty and was not written by prepare_data.py: choose another --output")
        if not finished:
            print(f"{output}: an earlier preparation did not finish; starting it over")
        (output / shards.METADATA).unlink(missing_ok=True)  # first: from here on the directory does not train
        for split in shards.SPLITS:
            shutil.rmtree(output / split, ignore_errors=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / PREPARING).write_text("prepare_data.py is writing this data set\n")


def write(
    datamodule: SampleSource,
    output: Path,
    source: str,
    num_workers: int,
    chunk_bytes: str,
    max_size: int | None,
    seed: int,
) -> dict:
    from litdata import optimize  # LitData writes the shards: one process per core, a progress bar

    counts, checksums = {}, {}
    for split in shards.SPLITS:
        sample, inputs = samples(datamodule, split, max_size)
        counts[split] = len(inputs)
        # A seeded random order: LitData's shuffle mixes the shards' order and only a window of samples, so shards
        # in the data set's own (class) order would give batches of a few classes. The same data and seed give the
        # same shards.
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed)).tolist()
        inputs = [inputs[i] for i in order]
        if inputs:
            workers = max(1, min(num_workers, len(inputs)))
            print(f"writing {split}: {len(inputs)} images, {workers} processes", flush=True)
            # keep_data_ordered: each worker gets a fixed share, so the same inputs always give the same shards;
            # fork: the workers start at once instead of importing torch again (spawn), and nothing here uses CUDA.
            try:
                optimize(
                    fn=sample,
                    inputs=inputs,
                    output_dir=str(output / split),
                    chunk_bytes=chunk_bytes,
                    num_workers=workers,
                    mode="overwrite",
                    keep_data_ordered=True,
                    start_method="fork",
                    verbose=False,  # LitData's own lines (an invitation to its cloud, per-worker notes, its bar)
                )
            except RuntimeError as error:  # LitData reports a writer's failure as its traceback in a RuntimeError
                refused = write_refused(error)
                if refused is None:
                    raise
                end_writers()
                raise WriteRefused(
                    f"cannot write the shards of {output / split}: {refused} (disk full, quota or file-size limit?); "
                    f"{output} holds no data set that trains: free space and run prepare_data.py again"
                ) from None
        checksums[split] = _checksums(output / split)
    info = {**metadata(datamodule, counts, source, max_size), "seed": seed, "checksums": checksums}
    partial = output / (shards.METADATA + ".partial")
    partial.write_text(json.dumps(info, indent=1))
    os.replace(partial, output / shards.METADATA)  # last, and whole: now the data set trains
    (output / PREPARING).unlink()
    return info


def _checksums(split_dir: Path) -> dict[str, str]:
    """``{chunk file: SHA-256}`` of every chunk a split's ``index.json`` lists."""
    if not (split_dir / shards.INDEX).exists():
        return {}
    chunks = json.loads((split_dir / shards.INDEX).read_text())["chunks"]
    return {chunk["filename"]: shards.sha256_file(str(split_dir / chunk["filename"])) for chunk in chunks}


def upload(local: Path, url: str, overwrite: bool) -> None:
    """Copy a prepared data set to ``s3://bucket/prefix``, ``dataset.json`` last."""
    if not overwrite and shards.exists(shards.join(url, shards.METADATA)):
        raise UserError(f"{url} already holds a prepared data set: pass --overwrite to write it again")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    files = sorted(path for path in local.rglob("*") if path.is_file() and path.name != shards.METADATA)

    def send(client: Any) -> None:
        for path in [*files, local / shards.METADATA]:
            key = "/".join(filter(None, [prefix.rstrip("/"), path.relative_to(local).as_posix()]))
            client.upload_file(str(path), bucket, key)

    shards.s3_call(url, send)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0], prog="prepare_data.py")
    parser.add_argument("--data", required=True, help="A data set: mnist, cifar10, folder, a YAML or a class path.")
    parser.add_argument("--output", required=True, help="A directory, or s3://bucket/prefix.")
    parser.add_argument("--overwrite", action="store_true", help="Replace a data set already prepared there.")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count() or 1, help="Processes writing shards.")
    parser.add_argument("--chunk_bytes", default="64MB", help="Size of each shard, e.g. 64MB.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the samples' random order in the shards.")
    parser.add_argument(
        "--max_size",
        type=int,
        help="Shrink images whose shorter side is longer than this (aspect kept; JPEG, quality 90): every epoch then "
        "decodes fewer pixels. Default: image files stored as they are.",
    )
    args, rest = parser.parse_known_args(argv)
    if args.max_size is not None and args.max_size < 1:
        raise UserError(f"--max_size must be a positive number of pixels, got {args.max_size}")
    class_path, init_args = named_data_config(args.data)
    init_args = {**init_args, **parse_overrides(rest)}
    data_class = import_class(class_path, L.LightningDataModule, "data module")
    missing = [name for name in _CLASS_NEEDS if not hasattr(data_class, name)]
    if missing:
        raise UserError(f"--data {args.data}: {class_path} has no {', '.join(missing)}: not an ImageDataModule?")
    # e.g. a folder's cache "never": which files are usable, not their pixels; the shards keep the files
    init_args.update(data_class.prepare_args)
    try:
        datamodule = data_class(**init_args)
    except (TypeError, ValueError) as error:
        raise UserError(f"--data {args.data}: {first_line(error)}") from None
    datamodule.prepare_data()
    datamodule.setup("fit")
    source = f"--data {args.data}" + "".join(f" {token}" for token in rest)
    settings = (args.num_workers, args.chunk_bytes, args.max_size, args.seed)
    if shards.is_remote(args.output):
        with tempfile.TemporaryDirectory(prefix="prepare_data-") as staging:
            start_output(Path(staging), overwrite=False)
            info = write(
                datamodule, Path(staging), source, args.num_workers, args.chunk_bytes, args.max_size, args.seed
            )
            upload(Path(staging), args.output, args.overwrite)
    else:
        output = Path(args.output)
        start_output(output, args.overwrite)
        info = write(datamodule, output, source, *settings)
    counts = ", ".join(f"{count} {split}" for split, count in info["splits"].items())
    print(f"wrote {args.output}: {counts} images of {len(info['class_names'])} classes")
    return 0
