"""The dashboard's figures: when they are drawn, that the files show what they say, and that they are legible."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import quiet_trainer
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from PIL import Image
from torchvision import datasets

from project.datamodules import MNISTDataModule
from project.engine import plots
from project.engine.callbacks.dashboard import ClassificationDashboard
from project.models import MLP

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _png(path: Path, figure: Figure) -> tuple[np.ndarray, Any]:
    """The RGB pixels of ``path``, saved from ``figure`` (redrawn here: the same layout), and its renderer."""
    figure.canvas.draw()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels.shape[:2] == (int(figure.bbox.height), int(figure.bbox.width)), "the figure the file shows"
    return pixels, figure.canvas.get_renderer()


def _at(pixels: np.ndarray, x: float, y: float) -> tuple[int, int]:
    """``(row, column)`` in ``pixels`` of the display point ``(x, y)`` (matplotlib's origin is the bottom left)."""
    return round(len(pixels) - y - 0.5), round(x - 0.5)


# ---------------------------------------------------------------------------------------------- when it draws
def test_validation_is_drawn_every_n_epochs_and_after_the_last(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    titles: list[str] = []
    draw = plots.plot_confusion_matrix
    monkeypatch.setattr(plots, "plot_confusion_matrix", lambda *a, **k: titles.append(a[3]) or draw(*a, **k))
    shown: list[tuple[list[np.ndarray], list[str], list[str], list[float]]] = []
    draw_predictions = plots.plot_predictions
    monkeypatch.setattr(plots, "plot_predictions", lambda *a, **k: shown.append(a[:4]) or draw_predictions(*a, **k))
    trainer = quiet_trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        limit_test_batches=1,
        num_sanity_val_steps=1,
        callbacks=[ClassificationDashboard(tmp_path / "dashboard", every_n_epochs=2, num_samples=4)],
    )
    datamodule = MNISTDataModule(root=str(data_root), batch_size=8, val_size=0.1)
    model = MLP(**datamodule.model_args(), hidden_sizes=[16])
    trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, verbose=False)
    # Epochs 0, 1, 2 with every_n_epochs=2: the 2nd (index 1) and the last; never the sanity check.
    assert [title.split(":")[0] for title in titles] == ["Validation, epoch 1", "Validation, epoch 2", "Test"]
    assert "of 8 images" in titles[-1]  # one test batch of 8
    # The test's four worst predictions are four of its first 8 images (the unshuffled test batch), as torchvision
    # reads them from the MNIST files, each once.
    images, true_names, predicted_names, confidences = shown[-1]
    test_images = datasets.MNIST(str(data_root), train=False).data[:8].numpy() / 255
    assert len(images) == 4
    found = [
        [i for i, test_image in enumerate(test_images) if np.allclose(image[..., 0], test_image, rtol=0, atol=1e-5)]
        for image in images
    ]
    assert all(len(indices) == 1 for indices in found) and len({i for (i,) in found}) == 4, found
    # The file shows them: four tiles side by side, each pixel of each image at its place in its tile (nearest
    # neighbour: a tile is the image's pixels enlarged, in shades of grey), under its caption in its colour.
    path = tmp_path / "dashboard" / "test" / "predictions.png"
    figure = plots.predictions_figure(images, true_names, predicted_names, confidences, "Test")
    pixels, renderer = _png(path, figure)
    tiles = [artist.get_window_extent(renderer) for artist in figure.axes[0].images]
    assert len(tiles) == 4 and all(a.x1 <= b.x0 and a.y0 == b.y0 for a, b in pairwise(tiles)), "side by side"
    height, width = images[0].shape[:2]
    drawn = []
    for image, box in zip(images, tiles, strict=True):
        # At the centre of each image pixel's square in the tile.
        ys = box.y1 - (np.arange(height) + 0.5) * box.height / height
        xs = box.x0 + (np.arange(width) + 0.5) * box.width / width
        tile = np.array([[pixels[_at(pixels, x, y)] for x in xs] for y in ys])
        assert np.abs(tile - tile[..., :1]).max() <= 1, "shades of grey"
        assert np.abs(tile[..., 0] - image[..., 0] * 255).max() <= 3, "each pixel of the image in its place"
        assert tile.std() > 10, "not blank"
        drawn.append(tile)
    assert all(np.abs(a - b).mean() > 10 for i, a in enumerate(drawn) for b in drawn[i + 1 :]), "four different tiles"
    for caption, true, predicted in zip(figure.axes[0].texts, true_names, predicted_names, strict=True):
        colour = np.array([0xC6, 0x28, 0x28]) if true != predicted else np.array([0x2E, 0x7D, 0x32])
        box = caption.get_window_extent(renderer)
        (top, left), (bottom, right) = _at(pixels, box.x0, box.y1), _at(pixels, box.x1, box.y0)
        text = pixels[top : bottom + 1, left : right + 1].reshape(-1, 3)
        assert (np.abs(text - colour).max(axis=1) <= 8).sum() > 20, f"the caption {caption.get_text()!r} is drawn"


# ---------------------------------------------------------------------------------------------- legibility
def _overlaps(boxes: list) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]


def _clipped(figure: Figure) -> list[str]:
    """Axes (with their tick labels and titles) and figure titles that reach outside the figure: cut off."""
    renderer = figure.canvas.get_renderer()
    figure.canvas.draw()
    inside = figure.bbox.padded(1)
    boxes = {f"axes {i}": axes.get_tightbbox(renderer) for i, axes in enumerate(figure.axes)}
    boxes.update({text.get_text(): text.get_window_extent(renderer) for text in figure.texts})
    return [
        name
        for name, box in boxes.items()
        if not inside.contains(box.x0, box.y0) or not inside.contains(box.x1, box.y1)
    ]


def test_confusion_matrix_labels_do_not_overlap_for_ten_classes() -> None:
    matrix = np.diag(np.full(10, 90)) + np.random.default_rng(0).integers(0, 20, (10, 10))
    figure = plots.confusion_matrix_figure(matrix, CIFAR_NAMES, "Test: accuracy 81.0% of 1000 images")
    renderer = figure.canvas.get_renderer()
    figure.canvas.draw()
    axes = figure.axes[0]
    x_labels = [label.get_window_extent(renderer) for label in axes.get_xticklabels()]
    y_labels = [label.get_window_extent(renderer) for label in axes.get_yticklabels()]
    assert [label.get_text() for label in axes.get_xticklabels()] == CIFAR_NAMES
    assert _overlaps(x_labels) == [] and _overlaps(y_labels) == []
    assert axes.get_xlabel() == "Predicted class" and axes.get_ylabel() == "True class"
    # Neither axis title collides with the class names, and every cell count fits the figure.
    assert not any(box.overlaps(axes.xaxis.label.get_window_extent(renderer)) for box in x_labels)
    assert not any(box.overlaps(axes.yaxis.label.get_window_extent(renderer)) for box in y_labels)
    counts = [text.get_window_extent(renderer) for text in axes.texts]
    assert len(counts) == np.count_nonzero(matrix) and _overlaps(counts) == []
    assert _clipped(figure) == []  # the colour bar's label included


def test_prediction_captions_do_not_overlap_and_stay_in_the_figure() -> None:
    rng = np.random.default_rng(0)
    images = [rng.random((32, 32, 3)) for _ in range(10)]
    confidences = [0.64, *rng.random(9)]
    figure = plots.predictions_figure(images, CIFAR_NAMES, CIFAR_NAMES[::-1], confidences, "Test")
    renderer = figure.canvas.get_renderer()
    figure.canvas.draw()
    assert _clipped(figure) == []
    captions = figure.axes[0].texts
    assert len(captions) == 10 and captions[0].get_text() == "true: airplane\npred: truck (64%)"
    boxes = [text.get_window_extent(renderer) for text in captions]
    assert _overlaps(boxes) == []
    figure_box = figure.bbox
    assert all(figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1 and box.y1 <= figure_box.y1 for box in boxes)
    # Each caption sits above its own image, not on top of another one.
    image_boxes = [image.get_window_extent(renderer) for image in figure.axes[0].images]
    assert not any(caption.overlaps(image) for caption in boxes for image in image_boxes)


def test_learning_curves_place_learning_rate_rows_in_their_epoch(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(
        "epoch,lr-Adam,step,train/acc,train/loss_epoch,val/acc,val/loss\n"
        ",0.001,0,,,,\n"
        "0,,9,,,0.5,1.2\n"
        "0,,9,0.4,1.5,,\n"
        ",0.0005,10,,,,\n"
        "1,,19,,,0.7,0.9\n"
        "1,,19,0.6,1.1,,\n"
    )
    curves = plots.read_metrics_csv(metrics)
    assert curves["lr-Adam"] == {0: 0.001, 1: 0.0005}
    assert curves["val/acc"] == {0: 0.5, 1: 0.7} and curves["train/loss_epoch"] == {0: 1.5, 1: 1.1}
    path = plots.plot_learning_curves(metrics, tmp_path / "curves.png")
    figure = plots.learning_curves_figure(curves)
    assert [axes.get_title() for axes in figure.axes] == ["Loss", "Accuracy", "Learning rate"]
    assert [len(axes.lines) for axes in figure.axes] == [2, 2, 1]
    drawn = {
        (axes.get_title(), line.get_label()): line.get_xydata().tolist() for axes in figure.axes for line in axes.lines
    }
    assert drawn == {
        ("Loss", "train"): [[0, 1.5], [1, 1.1]],
        ("Loss", "val"): [[0, 1.2], [1, 0.9]],
        ("Accuracy", "train"): [[0, 0.4], [1, 0.6]],
        ("Accuracy", "val"): [[0, 0.5], [1, 0.7]],
        ("Learning rate", "Adam"): [[0, 0.001], [1, 0.0005]],
    }
    assert all(axes.get_xlabel() == "epoch" for axes in figure.axes)
    assert _clipped(figure) == []
    # The file shows the curves: at each point of each line, a marker of the line's colour.
    pixels, _ = _png(path, figure)
    assert pixels.shape[1] > pixels.shape[0] > 200
    points = 0
    for axes in figure.axes:
        for line in axes.lines:
            colour = np.array([round(255 * c) for c in to_rgb(line.get_color())])
            for x, y in axes.transData.transform(line.get_xydata()):
                row, column = _at(pixels, x, y)
                around = pixels[row - 1 : row + 2, column - 1 : column + 2].reshape(-1, 3)
                assert np.abs(around - colour).max(axis=1).min() <= 8, (axes.get_title(), line.get_label(), x, y)
                points += 1
    assert points == 2 * 2 + 2 * 2 + 2
    # And the colours differ between the lines of a panel: train and val are told apart.
    assert all(len({line.get_color() for line in axes.lines}) == len(axes.lines) for axes in figure.axes)
