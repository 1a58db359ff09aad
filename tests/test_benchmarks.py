"""The time-to-accuracy benchmark runs end to end (on the tests' tiny MNIST files; real numbers need real MNIST)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import benchmark, data_loading


def test_time_to_accuracy_runs_the_loop_and_the_template_and_reports_them(tmp_path: Path, data_root: Path) -> None:
    out = tmp_path / "tta.json"
    argv = ["--time_to_accuracy", "--data.root", str(data_root), "--models", "mlp", "--repeats", "1"]
    argv += ["--loop_epochs", "2", "--json", str(out), "--train_args", "--data.val_size 0.1 --trainer.max_epochs 1"]
    assert benchmark.main(argv) == 0
    report = json.loads(out.read_text())
    (loop,), (mlp,) = report["runs"]["loop"], report["runs"]["mlp"]
    assert [epoch["epoch"] for epoch in loop["per_epoch"]] == [1, 2]
    assert 0 <= loop["reached_s"] <= loop["wall_s"] and loop["test_acc"] == loop["per_epoch"][-1]["test_acc"]
    assert mlp["target"] == loop["test_acc"] and mlp["epochs"] == 1 and 0 <= mlp["test_acc"] <= 1
    assert (mlp["reached_s"] is not None) == (mlp["test_acc"] >= loop["test_acc"])
    assert report["summary"]["mlp"]["wall_ratio_to_loop"] == mlp["wall_s"] / loop["wall_s"]


@pytest.mark.slow
def test_data_loading_benchmark_measures_every_path_against_the_baseline(tmp_path: Path) -> None:
    out = tmp_path / "data.json"
    argv = ["--files", "60", "--images", "16", "--repeats", "1", "--batch_size", "8", "--workdir", str(tmp_path)]
    assert data_loading.main([*argv, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    # Measured times are only checked for being there: a fast machine (or the kept scan) rounds them to 0.0.
    assert all(report[key] >= 0 for key in ("folder_setup_first_s", "folder_setup_second_s", "prepare_s"))
    paths = {(row["preset"], row["path"]): row for row in report["throughput"]}
    assert {path for _, path in paths} == {
        "ImageFolder + DataLoader (baseline)",
        "folder module",
        "streaming, local shards",
        "streaming, local shards, --max_size 256",
        "streaming, S3 (cold cache)",
    }
    assert {preset for preset, _ in paths} == {"squash", "imagenet"}
    for (preset, _), row in paths.items():
        baseline = paths[(preset, "ImageFolder + DataLoader (baseline)")]["images_s"]
        assert row["images_s"] > 0 and row["ratio"] == pytest.approx(row["images_s"] / baseline, rel=0.02)
