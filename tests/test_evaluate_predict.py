"""scripts/evaluate.py and scripts/predict.py: the checkpoint alone is enough, results match training."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import processes
import pytest
import torch
from conftest import REPO, RUN_TIMEOUT, TINY
from fakedata import write_image_folder
from PIL import Image

from project.datamodules import MNISTDataModule
from project.engine import evaluate, predict
from project.engine.checkpoint import load_model
from project.engine.cli import main as train
from project.models import MLP, ResNet


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    """A CNN run on the tiny MNIST whose test covers the whole test split (64 images)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    args = [*TINY, "--model", "cnn", "--data.root", str(data_root), "--trainer.limit_test_batches", "1.0"]
    assert train([*args, "--run_dir", str(run)]) == 0
    return run


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------------------------------------- evaluate
def test_evaluate_script_repeats_the_runs_test_from_the_checkpoint_alone(trained: Path, tmp_path: Path) -> None:
    result = processes.run(
        [sys.executable, REPO / "scripts" / "evaluate.py", "--ckpt", trained / "checkpoints" / "best.ckpt"],
        RUN_TIMEOUT,
        cwd=tmp_path,  # nothing of the run's but the checkpoint is used: not its config, not its cwd
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((trained / "summary.json").read_text())
    evaluated = json.loads((trained / "eval" / "eval.json").read_text())
    assert evaluated["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-6)
    assert evaluated["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
    assert evaluated["data"] == "project.datamodules.MNISTDataModule"
    assert f"test acc {100 * summary['test_acc']:.2f}%" in result.stdout
    for name in ("confusion_matrix.png", "predictions.png", "per_class.csv"):
        assert (trained / "eval" / "test" / name).is_file()


def test_evaluate_on_named_data_with_overrides_and_output(trained: Path, tmp_path: Path, data_root: Path) -> None:
    output = tmp_path / "elsewhere" / "result.json"
    args = ["--ckpt", str(trained / "checkpoints" / "best.ckpt"), "--data", "mnist", "--data.root", str(data_root)]
    assert evaluate.main([*args, "--data.batch_size=7", "--data.download", "false", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["data_args"]["batch_size"] == 7 and result["data_args"]["download"] is False
    # From configs/data/mnist.yaml (batch size 128 there, overridden; val_size left to the class), not the checkpoint.
    saved = torch.load(trained / "checkpoints" / "best.ckpt", weights_only=True)["datamodule_hyper_parameters"]
    assert "val_size" in saved and "val_size" not in result["data_args"]
    summary = json.loads((trained / "summary.json").read_text())
    assert result["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-6)  # batch size changes nothing
    assert (output.parent / "test" / "confusion_matrix.png").is_file()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--ckpt", "{garbage}"], "garbage.ckpt' is truncated"),
        (["--ckpt", "{missing}"], "does not exist"),
        (["--ckpt", "{best}", "--data", "cifar10", "--data.root", "{data}"], "the model expects (1, 28, 28)"),
        (["--ckpt", "{best}", "--data", "imagenet"], "unknown --data 'imagenet'"),
        (["--ckpt", "{best}", "--data.no_such_option", "1"], "no_such_option"),
        (["--ckpt", "{best}", "--trainer.max_epochs", "1"], "unrecognized argument '--trainer.max_epochs'"),
        (["--ckpt", "{best}", "--accelerator", "gpu"], "no CUDA GPU"),
        ([], "the following arguments are required: --ckpt"),
    ],
)
def test_evaluate_mistakes_are_one_line_errors_with_exit_code_2(
    trained: Path,
    tmp_path: Path,
    data_root: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: str,
) -> None:
    if torch.cuda.is_available() and "gpu" in args:
        pytest.skip("a GPU is available here")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip archive")
    paths = {
        "garbage": garbage,
        "missing": tmp_path / "missing.ckpt",
        "best": trained / "checkpoints" / "best.ckpt",
        "data": data_root,
    }
    assert evaluate.main([arg.format(**paths) for arg in args]) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    (line,) = _error_lines(stderr)
    assert expected in line


@pytest.mark.parametrize(
    ("normalize", "model_args", "expected"),
    [
        (None, {"weights": "imagenet"}, "imagenet"),  # a pretrained ResNet is tested as it was trained
        ("auto", {"weights": "imagenet"}, "imagenet"),
        (None, None, "dataset"),  # an MLP
        ("auto", {"weights": "none"}, "dataset"),
        ("none", {"weights": "imagenet"}, "none"),  # as asked
    ],
)
def test_evaluate_resolves_auto_normalization_for_the_model(
    data_root: Path, normalize: str | None, model_args: dict[str, str] | None, expected: str
) -> None:
    shapes = {"num_classes": 10, "input_shape": (1, 28, 28)}
    model = MLP(**shapes) if model_args is None else ResNet(**shapes, **model_args)
    init_args = {"root": str(data_root)} if normalize is None else {"root": str(data_root), "normalize": normalize}
    datamodule, used = evaluate.make_datamodule("project.datamodules.MNISTDataModule", init_args, model)
    assert used["normalize"] == datamodule.hparams.normalize == expected


# ---------------------------------------------------------------------------------------------- predict
def test_predict_writes_a_row_per_file_and_reports_bad_ones(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = write_image_folder(tmp_path / "photos", per_class=2, size=(40, 30))  # RGB, 40x30: converted, resized
    (images / "cat" / "nested").mkdir()
    (images / "cat" / "nested" / "empty.png").write_bytes(b"")
    (images / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (images / "notes.txt").write_text("not an image: skipped in folders")
    output = tmp_path / "out" / "predictions.csv"
    code = predict.main(["--ckpt", str(trained / "checkpoints" / "best.ckpt"), str(images), "--output", str(output)])
    assert code == 0
    with output.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3 * 2 + 2 and not any(row["path"].endswith(".txt") for row in rows)
    bad = {Path(row["path"]).name: row for row in rows if row["error"]}
    assert set(bad) == {"empty.png", "broken.jpg"}
    assert bad["empty.png"]["error"] == "empty file" and bad["empty.png"]["prediction"] == ""
    class_names = [str(digit) for digit in range(10)]
    for row in rows:
        if row["error"]:
            continue
        topk = [(name, float(p)) for name, p in (item.split(":") for item in row["topk"].split(";"))]
        assert len(topk) == 3 and all(name in class_names for name, _ in topk)
        assert topk[0] == (row["prediction"], pytest.approx(float(row["confidence"])))
        assert [p for _, p in topk] == sorted((p for _, p in topk), reverse=True) and sum(p for _, p in topk) <= 1
    printed = capsys.readouterr().out
    assert "empty file" in printed and "6 predicted, 2 unreadable" in printed


def test_predict_gives_the_models_own_probabilities_for_the_test_images(
    trained: Path, tmp_path: Path, data_root: Path
) -> None:
    """Decoding a PNG and preprocessing it from the checkpoint's hparams = the data module's batch path."""
    datamodule = MNISTDataModule(root=str(data_root))
    datamodule.setup("test")
    images, labels = datamodule.splits["test"]
    paths = []
    for index, image in enumerate(images[:8]):
        paths.append(tmp_path / f"{index}_{labels[index]}.png")
        Image.fromarray(image[0].numpy()).save(paths[-1])
    model = load_model(trained / "checkpoints" / "best.ckpt")
    results = predict.predict_files(model, paths, topk=10, batch_size=3)
    with torch.inference_mode():
        inputs = datamodule.on_after_batch_transfer((images[:8], labels[:8]), 0).images
        expected = model(inputs).softmax(dim=-1)
    for result, row in zip(results, expected, strict=True):
        probabilities = dict(result.topk)
        assert [probabilities[str(digit)] for digit in range(10)] == pytest.approx(row.tolist(), abs=1e-5)


def test_predict_exit_codes(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = str(trained / "checkpoints" / "best.ckpt")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert predict.main(["--ckpt", checkpoint, str(empty), "--output", str(tmp_path / "p.csv")]) == 1
    assert (tmp_path / "p.csv").read_text().count("empty file") == 1  # still reported in the CSV
    capsys.readouterr()
    assert predict.main(["--ckpt", checkpoint, str(tmp_path / "nowhere")]) == 2
    assert _error_lines(capsys.readouterr().err) == [f"error: {tmp_path / 'nowhere'}: no such file or folder"]
    assert predict.main(["--ckpt", checkpoint, str(empty), "--topk", "0"]) == 2
    assert _error_lines(capsys.readouterr().err) == ["error: --topk and --batch_size must be at least 1"]
