"""Pictures of a classifier's results: confusion matrix, sample predictions, learning curves, per-class table.

Plain functions from arrays to files, shared by the dashboard callback and ``scripts/evaluate.py``.
matplotlib is imported inside each function (it costs about a second) and drives its Agg canvas directly: no
pyplot, so no global figure state, no GUI backend and nothing that breaks in a worker thread or on a server.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Class names longer than this are shortened in pictures (files and tables keep them whole).
MAX_LABEL = 18
#: Confusion matrices with more classes than this get no per-cell counts (they would not be legible).
MAX_ANNOTATED_CLASSES = 30
#: Axis tick labels are left out beyond this many classes.
MAX_TICK_CLASSES = 60


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed: a dashboard open in a viewer never shows half a file.
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    os.replace(temporary, path)
    return path


def _short(name: str) -> str:
    return name if len(name) <= MAX_LABEL else name[: MAX_LABEL - 1] + "…"


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str], title: str = "Confusion matrix"
) -> Path:
    """Save :func:`confusion_matrix_figure` to ``path``."""
    return _save(confusion_matrix_figure(matrix, class_names, title), path)


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix") -> Figure:
    """Rows are true classes, columns predictions; cells coloured by the fraction of the row, labelled by count."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(class_names)
    rows = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    side = min(max(5.0, 0.55 * n + 2.5), 30.0)
    figure = _figure(side + 1.2, side)
    # Fixed margins in inches, room for the longest (shortened, 45°) class names: a layout engine would cost
    # more than the drawing itself.
    width, height = figure.get_size_inches()
    figure.subplots_adjust(left=1.5 / width, right=1 - 0.9 / width, bottom=1.3 / height, top=1 - 0.45 / height)
    axes = figure.add_subplot()
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.02)
    colorbar.set_label("fraction of the true class")
    if n <= MAX_TICK_CLASSES:
        labels = [_short(name) for name in class_names]
        font = 9 if n <= 20 else 7
        if max(map(len, labels)) > 3:  # long names slant so neighbours do not collide; digits stay upright
            axes.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=font)
        else:
            axes.set_xticks(range(n), labels, fontsize=font)
        axes.set_yticks(range(n), labels, fontsize=font)
    if n <= MAX_ANNOTATED_CLASSES:
        font = 9 if n <= 12 else 7
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    color = "white" if fractions[i, j] > 0.55 else "black"
                    axes.text(j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=font)
    axes.set_xlabel("Predicted class")
    axes.set_ylabel("True class")
    axes.set_title(title)
    return figure


def plot_predictions(
    images: Sequence[np.ndarray],
    true_names: Sequence[str],
    predicted_names: Sequence[str],
    confidences: Sequence[float],
    path: str | os.PathLike[str],
    title: str = "Predictions",
    columns: int = 4,
) -> Path:
    """Save :func:`predictions_figure` to ``path``."""
    return _save(predictions_figure(images, true_names, predicted_names, confidences, title, columns), path)


def predictions_figure(
    images: Sequence[np.ndarray],
    true_names: Sequence[str],
    predicted_names: Sequence[str],
    confidences: Sequence[float],
    title: str = "Predictions",
    columns: int = 4,
) -> Figure:
    """A grid of images ``(H, W, C)`` in [0, 1], each captioned true / predicted (confidence); mistakes in red.

    All tiles share one axes, placed by ``extent`` (one unit = one tile's width): a subplot per image would
    take three times as long to draw, and this runs after every validation that draws the dashboard.
    """
    count = len(images)
    columns = max(1, min(columns, count))
    rows = max(1, math.ceil(count / columns))
    aspect = images[0].shape[0] / images[0].shape[1] if count else 1.0
    gap, caption, inch = 0.08, 0.3, 2.4  # in tile widths; inches per tile width
    cell_width, cell_height = 1 + gap, aspect + caption
    figure = _figure(columns * cell_width * inch, rows * cell_height * inch + 0.5)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1 - 0.5 / figure.get_figheight()))
    axes.set_axis_off()
    for index in range(count):
        row, column = divmod(index, columns)
        left, top = column * cell_width + gap / 2, row * cell_height + caption
        image = np.clip(np.asarray(images[index], dtype=float), 0.0, 1.0)
        gray = image.ndim == 2 or image.shape[-1] == 1
        axes.imshow(
            image.reshape(image.shape[:2]) if gray else image,
            cmap="gray" if gray else None,
            vmin=0.0,
            vmax=1.0,
            extent=(left, left + 1, top + aspect, top),
            interpolation="nearest" if max(image.shape[:2]) < 64 else "antialiased",
        )
        wrong = true_names[index] != predicted_names[index]
        axes.text(
            left + 0.5,
            top - 0.03,
            f"true: {_short(true_names[index])}\npred: {_short(predicted_names[index])} ({confidences[index]:.0%})",
            ha="center",
            va="bottom",
            fontsize=9,
            color="#c62828" if wrong else "#2e7d32",
        )
    if count == 0:
        axes.text(0.5, 0.5, "no samples", ha="center", va="center")
    axes.set_xlim(0, columns * cell_width)
    axes.set_ylim(rows * cell_height, 0)
    figure.suptitle(title, y=1 - 0.1 / figure.get_figheight(), va="top")
    return figure


def read_metrics_csv(path: str | os.PathLike[str]) -> dict[str, dict[int, float]]:
    """``{column: {epoch: last value logged in that epoch}}`` from Lightning's CSV logger file.

    Rows logged without an epoch (the learning-rate monitor's, at the start of each epoch) are given the
    first epoch whose rows reach their step.
    """
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    last_step: dict[int, int] = {}
    for row in rows:
        if row.get("epoch") and row.get("step"):
            epoch = int(float(row["epoch"]))
            last_step[epoch] = max(last_step.get(epoch, 0), int(float(row["step"])))
    curves: dict[str, dict[int, float]] = {}
    for row in rows:
        if row.get("epoch"):
            epoch = int(float(row["epoch"]))
        else:
            step = int(float(row.get("step") or 0))
            later = [e for e, s in last_step.items() if s >= step]
            epoch = min(later) if later else max(last_step, default=-1) + 1
        for column, value in row.items():
            if column not in ("epoch", "step") and value:
                curves.setdefault(column, {})[epoch] = float(value)
    return curves


def plot_learning_curves(metrics_csv: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Save :func:`learning_curves_figure` of the run's ``metrics.csv`` to ``path``."""
    return _save(learning_curves_figure(read_metrics_csv(metrics_csv)), path)


def learning_curves_figure(curves: dict[str, dict[int, float]]) -> Figure:
    """Loss, accuracy and learning rate per epoch, from :func:`read_metrics_csv`'s curves."""
    panels = [
        ("Loss", {"train": "train/loss_epoch", "val": "val/loss"}, False),
        ("Accuracy", {"train": "train/acc", "val": "val/acc"}, False),
        ("Learning rate", {name.removeprefix("lr-"): name for name in sorted(curves) if name.startswith("lr-")}, True),
    ]
    figure = _figure(13.0, 3.8)
    figure.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.91, wspace=0.28)
    for index, (title, series, log_scale) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        epochs_drawn: set[int] = set()
        for label, column in series.items():
            points = sorted(curves.get(column, {}).items())
            if points:
                epochs, values = zip(*points, strict=True)
                axes.plot(epochs, values, marker="o", markersize=3, label=label)
                epochs_drawn.update(epochs)
        if epochs_drawn:
            axes.legend()
            if log_scale:
                axes.set_yscale("log")
            if len(epochs_drawn) == 1:  # one epoch: centre it instead of a zoomed-in ±0.05 axis
                (epoch,) = epochs_drawn
                axes.set_xlim(epoch - 1, epoch + 1)
        else:
            axes.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axes.transAxes)
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.set_ylabel(title.lower())
        axes.grid(alpha=0.3)
        # Epochs are whole numbers: no 0.5 ticks on short runs.
        axes.xaxis.get_major_locator().set_params(integer=True)
    return figure


def write_per_class_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """One row per class: name, support and the per-class scores."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0]) if rows else ["class"]
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
