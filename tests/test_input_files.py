"""Input files as users have them: every format Pillow reads (TIFF...), other files counted, and file names that are
not UTF-8 (legal on Linux), which every file the project writes must carry as valid text."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import processes
import pytest
import torch
from conftest import REPO, RUN_TIMEOUT, TINY
from fakedata import write_image_folder
from folder_helpers import SIZE, _folder, _module, _rgb
from PIL import Image

from project.engine import evaluate, predict
from project.engine.cli import main as train
from project.engine.filenames import escape_name, escape_names, unescape_name

#: Latin-1 bytes in a file name, as an old camera or a Windows zip leaves them: not UTF-8.
CAFE, DOG = os.fsdecode(b"caf\xe9.png"), os.fsdecode(b"d\xf6g")


@pytest.fixture(scope="module")
def mnist_checkpoint(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    run = tmp_path_factory.mktemp("mnist") / "run"
    assert train([*TINY, "--data.root", str(data_root), "--run_dir", str(run)]) == 0
    return run / "checkpoints" / "best.ckpt"


def _predict(checkpoint: Path, inputs: list[Path], output: Path) -> subprocess.CompletedProcess[str]:
    """scripts/predict.py as a user runs it, in a UTF-8 locale (where Python's stdout refuses undecodable names)."""
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONWARNINGS": "ignore", "COLUMNS": "250"}
    command = [sys.executable, str(REPO / "scripts" / "predict.py"), "--ckpt", str(checkpoint), "--output", str(output)]
    return processes.run([*command, *inputs], RUN_TIMEOUT, env=env)


# ---------------------------------------------------------------------------------------------- formats
def test_tiff_images_are_read_and_other_files_are_counted_in_the_setup_notice(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    rgb = _rgb(SIZE, SIZE)
    Image.fromarray(rgb).save(root / "cat" / "scan.tif", compression="tiff_lzw")
    gray16 = (np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 250).astype(np.uint16)
    Image.fromarray(gray16).save(root / "dog" / "scan.TIFF")  # 16-bit gray, upper-case extension
    (root / "frog" / "notes.txt").write_text("not an image")
    (root / "frog" / "labels.csv").write_text("a,b\n")
    dm = _module(root, val_size=0.0, test_size=0.0, strict=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
    images, labels = dm.splits["train"]
    assert labels.tolist() == [0] * 11 + [1] * 11 + [2] * 10  # both TIFF files are used
    assert torch.equal(images[10], torch.from_numpy(rgb).permute(2, 0, 1))  # cat/scan.tif, last of cat: lossless
    assert torch.equal(images[21], torch.from_numpy(gray16 >> 8).to(torch.uint8).expand(3, -1, -1))
    (notice,) = [str(w.message) for w in caught]
    assert "2 file(s)" in notice and ".csv: 1" in notice and ".txt: 1" in notice and str(root) in notice


def test_predict_reads_tiff_and_says_which_files_it_skipped(mnist_checkpoint: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_rgb(30, 40)).save(photos / "photo.tiff")
    (photos / "notes.txt").write_text("not an image")
    result = _predict(mnist_checkpoint, [photos], tmp_path / "p.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    with (tmp_path / "p.csv").open(newline="") as file:
        (row,) = list(csv.DictReader(file))
    assert row["path"] == str(photos / "photo.tiff") and row["error"] == "" and row["prediction"]
    assert "1 predicted, 0 unreadable" in result.stdout
    assert "1 file(s) not read for their extension (.txt: 1)" in result.stdout


# ---------------------------------------------------------------------------------------------- names
def test_escaped_names_are_valid_text_and_round_trip() -> None:
    for name in [CAFE, "plain.png", "日本.jpg", os.fsdecode(b"/a/\xff\xfe/b.png"), "tab\there"]:
        escaped = escape_name(name)
        escaped.encode("utf-8")  # valid text, whatever the bytes
        assert unescape_name(escaped) == name
    assert escape_name(CAFE) == "caf\\xe9.png" and escape_name(Path(DOG)) == "d\\xf6g"
    nested = {"paths": [CAFE, Path(DOG)], "n": 1, "inner": {"root": DOG}}
    assert escape_names(nested) == {"paths": ["caf\\xe9.png", "d\\xf6g"], "n": 1, "inner": {"root": "d\\xf6g"}}


def test_predict_writes_undecodable_file_names_as_escaped_text(mnist_checkpoint: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", CAFE, "z.png"):
        Image.fromarray(_rgb(28, 28)).save(photos / name)
    (photos / os.fsdecode(b"bad\xff.png")).write_bytes(b"")
    output = tmp_path / "predictions.csv"
    result = _predict(mnist_checkpoint, [photos], output)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    with output.open(newline="", encoding="utf-8") as file:  # valid UTF-8 throughout
        rows = list(csv.DictReader(file))
    assert [Path(unescape_name(row["path"])).name for row in rows] == sorted(
        ["a.png", CAFE, "z.png", os.fsdecode(b"bad\xff.png")], key=os.fsencode
    )
    assert {row["path"] for row in rows} >= {escape_name(photos / CAFE), str(photos / "bad\\xff.png")}
    assert all(Path(unescape_name(row["path"])).is_file() for row in rows)
    assert "caf\\xe9.png" in result.stdout and "3 predicted, 1 unreadable" in result.stdout


def test_undecodable_class_and_file_names_survive_training_dashboard_wandb_and_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_image_folder(tmp_path / "images", classes=["cat", DOG, "frog"], per_class=10, size=(16, 16))
    os.rename(root / "cat" / "cat_0.png", root / "cat" / CAFE)
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--data", "folder", "--data.root", str(root), "--data.image_size", "16", "--data.num_workers", "0"]
    args += ["--dashboard_every", "1", "--logger", "wandb", "--run_dir", "run"]
    assert train(args) == 0
    run = tmp_path / "run"
    per_class = (run / "dashboard" / "val" / "per_class.csv").read_text(encoding="utf-8")
    assert "d\\xf6g" in per_class and (run / "dashboard" / "val" / "confusion_matrix.png").is_file()
    tables = [path.read_text(encoding="utf-8") for path in run.glob("wandb/offline-run-*/files/media/table/**/*.json")]
    assert tables and all("\\udc" not in text for text in tables)
    assert any("d\\\\xf6g" in text for text in tables)  # the escape, itself escaped by JSON
    output = tmp_path / "eval" / "eval.json"
    assert evaluate.main(["--ckpt", str(run / "checkpoints" / "best.ckpt"), "--output", str(output)]) == 0
    text = output.read_text(encoding="utf-8")
    assert "\\udc" not in text  # no lone surrogates, which strict JSON readers refuse
    assert json.loads(text)["data_args"]["root"] == escape_name(root)
    assert "d\\xf6g" in (tmp_path / "eval" / "test" / "per_class.csv").read_text(encoding="utf-8")
    assert "\\udc" not in (run / "summary.json").read_text(encoding="utf-8")


def test_predict_labels_with_undecodable_class_names_are_escaped(tmp_path: Path) -> None:
    prediction = predict.Prediction(os.fsdecode(b"/x/\xe9.png"), topk=[(DOG, 0.75), ("cat", 0.25)])
    path = predict.write_csv([prediction], tmp_path / "p.csv")
    (row,) = list(csv.DictReader(path.open(newline="", encoding="utf-8")))
    assert row == {
        "path": "/x/\\xe9.png",
        "prediction": "d\\xf6g",
        "confidence": "0.750000",
        "topk": "d\\xf6g:0.750000;cat:0.250000",
        "error": "",
    }
