"""``--seed N``: two CPU runs with the same seed are bit-identical; another seed gives another run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY

from project.engine.cli import main


def _train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path, seed: int, name: str) -> Path:
    monkeypatch.chdir(tmp_path)
    # CIFAR-10's random crops and flips, DeepNet's dropout and the shuffled order: every use of randomness.
    args = ["--model", "deepnet", "--data", "cifar10", "--data.root", str(data_root), "--max_epochs", "2"]
    args += ["--accelerator", "cpu"]  # bit for bit is a CPU promise: a GPU's kernels need not be deterministic
    assert main([*TINY, *args, "--seed", str(seed), "--run_dir", name]) == 0
    assert json.loads((tmp_path / name / "summary.json").read_text())["accelerator"] == "cpu"
    return tmp_path / name


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_same_seed_same_run_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path) -> None:
    first = _train(tmp_path, monkeypatch, data_root, seed=7, name="first")
    second = _train(tmp_path, monkeypatch, data_root, seed=7, name="second")
    other = _train(tmp_path, monkeypatch, data_root, seed=8, name="other")
    weights, same, different = _weights(first), _weights(second), _weights(other)
    assert all(torch.equal(weights[key], same[key]) for key in weights)
    assert (first / "metrics.csv").read_text() == (second / "metrics.csv").read_text()
    assert not all(torch.equal(weights[key], different[key]) for key in weights)
