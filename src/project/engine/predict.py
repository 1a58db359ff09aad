"""Classify image files: ``python scripts/predict.py --ckpt best.ckpt photo.jpg more_photos/``.

Every input goes through the preprocessing saved in the checkpoint, the same as in training: decoded (by the
image decoder :func:`~project.engine.data.images.load_image`: EXIF orientation, transparency on white,
16-bit and palette images handled), converted to the model's channels, resized to its image size, scaled to
[0, 1] and normalized with its mean and std. Files that cannot be read are listed with the reason instead of
stopping the run. The results go to a CSV file (path, prediction, confidence, top-k) and a short table; file and
class names that are not UTF-8 are written escaped (:mod:`~project.engine.filenames`). In folders, files whose
extension is not of a format Pillow reads are not read, and counted.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch

from project.engine import trust
from project.engine.checkpoint import load_model
from project.engine.data.files import extension_counts, is_image_name
from project.engine.entrypoint import CKPT_HELP, ArgumentParser, run_main
from project.engine.errors import DataError, UserError
from project.engine.filenames import escape_name
from project.engine.inputs import file_input, saved_preprocessing
from project.engine.options import uses_gpu

#: Rows shown in the printed table; the CSV has them all.
SHOWN = 20


@dataclass
class Prediction:
    """One input's result: the top classes with their probabilities, or why the file could not be used."""

    path: str
    topk: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""

    @property
    def label(self) -> str:
        return self.topk[0][0] if self.topk else ""

    @property
    def confidence(self) -> float | None:
        return self.topk[0][1] if self.topk else None


class Found(NamedTuple):
    """What :func:`find_images` found."""

    files: list[Path]
    #: Files in the folders not read for their extension (not a format Pillow reads).
    skipped: list[Path]


def find_images(inputs: Iterable[str | Path]) -> Found:
    """Files as given, and the image files (by extension) under folders, recursively, in sorted order."""
    files: list[Path] = []
    skipped: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file())
            files += [p for p in found if is_image_name(p.name)]
            skipped += [p for p in found if not is_image_name(p.name)]
        elif path.is_file():
            files.append(path)  # named explicitly: tried whatever its extension, reported if unreadable
        else:
            raise UserError(f"{escape_name(item)}: no such file or folder")
    if not files:
        inputs = ", ".join(escape_name(item) for item in inputs)
        raise UserError(f"no image files (formats Pillow reads: .jpg, .png, .tif, ...) in {inputs}{_skipped(skipped)}")
    return Found(files, skipped)


def _skipped(skipped: Sequence[Path]) -> str:
    return f"; {len(skipped)} file(s) not read for their extension ({extension_counts(skipped)})" if skipped else ""


def predict_files(
    model: L.LightningModule,
    paths: Sequence[Path],
    topk: int = 3,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> list[Prediction]:
    """Predictions for ``paths``, in order, with the model's saved preprocessing; unreadable files get an error."""
    names, preprocessing = saved_preprocessing(model)
    topk = max(1, min(topk, len(names)))
    model = model.to(device).eval()
    results: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        batch, ready = [], []
        for path in paths[start : start + batch_size]:
            result = Prediction(str(path))
            results.append(result)
            try:
                batch.append(file_input(path, preprocessing))
                ready.append(result)
            except DataError as error:
                result.error = str(error).removeprefix(f"{path}: ")
        if not batch:
            continue
        with torch.inference_mode():
            probabilities = model(torch.stack(batch).to(device)).float().softmax(dim=-1)
        values, indices = probabilities.topk(topk, dim=-1)
        for result, row_values, row_indices in zip(ready, values.tolist(), indices.tolist(), strict=True):
            result.topk = [(names[index], value) for index, value in zip(row_indices, row_values, strict=True)]
    return results


def write_csv(predictions: Sequence[Prediction], path: str | Path) -> Path:
    """``path,prediction,confidence,topk,error`` in UTF-8; top-k as ``name:prob;name:prob``; names escaped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "prediction", "confidence", "topk", "error"])
        for result in predictions:
            confidence = "" if result.confidence is None else f"{result.confidence:.6f}"
            topk = ";".join(f"{escape_name(name)}:{value:.6f}" for name, value in result.topk)
            label, error = escape_name(result.label), escape_name(result.error)
            writer.writerow([escape_name(result.path), label, confidence, topk, error])
    return path


def print_table(predictions: Sequence[Prediction]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Text objects, not strings: a file named "cat[1].jpg" must not be read as rich markup.
    table = Table("file", "prediction", "confidence", "top-k / error")
    for result in predictions[:SHOWN]:
        path = Text(escape_name(result.path))
        if result.error:
            table.add_row(path, "", "", Text(escape_name(result.error), style="red"))
        else:
            others = ", ".join(f"{escape_name(name)} {value:.1%}" for name, value in result.topk[1:])
            table.add_row(path, Text(escape_name(result.label)), f"{result.confidence:.1%}", Text(others))
    if len(predictions) > SHOWN:
        table.caption = f"first {SHOWN} of {len(predictions)}: see the CSV file for all"
    Console().print(table)


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="predict.py", description="Classify image files with a trained checkpoint.")
    parser.add_argument("--ckpt", required=True, help=CKPT_HELP)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="Image files or folders (searched recursively).")
    parser.add_argument("--output", default="predictions.csv", help="CSV file to write (default: predictions.csv).")
    parser.add_argument("--topk", type=int, default=3, help="How many classes to list per image (default: 3).")
    parser.add_argument("--batch_size", type=int, default=64, help="Images per forward pass (default: 64).")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, mps.")
    trust.add_arguments(parser)
    return parser


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if uses_gpu("auto") else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not uses_gpu("cuda"):
        raise UserError(f"--device {name}: no CUDA GPU is available here; use cpu or auto")
    return device


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.topk < 1 or args.batch_size < 1:
        raise UserError("--topk and --batch_size must be at least 1")
    device = _device(args.device)
    found = find_images(args.inputs)
    model = load_model(args.ckpt, limits=trust.limits_from_args(args))
    predictions = predict_files(model, found.files, args.topk, args.batch_size, device)
    output = write_csv(predictions, args.output)
    print_table(predictions)
    failed = sum(1 for result in predictions if result.error)
    summary = f"{len(predictions) - failed} predicted, {failed} unreadable{_skipped(found.skipped)}"
    print(f"{summary}; written to {escape_name(output)}")
    return 0 if failed < len(predictions) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/predict.py``: 0 when at least one image was predicted, 1 when none was, 2 for user mistakes."""
    return run_main(_main, argv)
