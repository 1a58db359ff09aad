"""Mistakes on the command line: an impossible config or a user's mistake is one error line, exit code 2, no run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import _train
from conftest import TINY, run_train

from project.engine.cli import main


# ---------------------------------------------------------------------------------------------- bad config
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data.val_size", "400"], "leaves no training images: the training split has 400"),
        (["--data.val_size", "0.9999"], "--data.val_size 0.9999 leaves no training images"),
        (["--data.val_size", "-1"], "val_size must not be negative"),
        (["--data.image_size", "-3"], "image_size must be positive"),
        (["--data.eval_batch_size", "0"], "batch_size must be at least 1"),
        (["--model.lr", "-0.1"], "lr must be positive, got -0.1"),
        (["--model.label_smoothing", "1.5"], "label_smoothing must be in [0, 1), got 1.5"),
        (["--data.batch_size", "many"], "--data.batch_size"),
        (["--trainer.max_epochs", "1.5"], "--trainer.max_epochs"),
        (["--data.no_such_option", "1"], "no_such_option"),
        (["--trainer.no_such_option", "1"], "no_such_option"),
        (["--config", "unknown_key.yaml"], "nonsense"),
        (["--model.lr", "fast"], "model.lr"),
        (["--trainer.max_epochs", "-5"], "max_epochs"),
        (["--data.batch_size", "0"], "batch_size must be at least 1"),
        (["--model.no_such_option", "1"], "no_such_option"),
        # Refused by Lightning once it sees the data, as fit starts: a raised MisconfigurationException, a ValueError.
        (["--trainer.limit_val_batches", "0.0001"], "limit_val_batches"),
        (["--trainer.val_check_interval", "100"], "val_check_interval"),
    ],
)
def test_impossible_config_is_one_line_exit_2_before_training(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    data_root: Path,
    args: list[str],
    expected: str,
) -> None:
    (tmp_path / "unknown_key.yaml").write_text(yaml.safe_dump({"model": {"init_args": {"nonsense": 1}}}))
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--data.root", str(data_root), *args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], errors
    assert not list(tmp_path.glob("runs/*/checkpoints")) and not list(tmp_path.glob("runs/*/metrics.csv"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--model", "transformer"],
            "unknown --model 'transformer': choose one of cnn, ",
        ),
        (["--data", "imagenet"], "unknown --data 'imagenet': choose one of cifar10, folder, mnist"),
        (
            ["--data.root", "/nonexistent/data", "--data.download", "false"],
            "MNIST is not in /nonexistent/data",
        ),
        pytest.param(
            ["--accelerator", "gpu"],
            "no CUDA GPU is available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present here"),
        ),
        (["--model", "resnet", "--model.weights", "/nonexistent.pth"], "--model.weights: no such file"),
        (["--model", "transfer", "--model.backbone", "resnet19"], "unknown backbone 'resnet19'; did you mean resnet18"),
    ],
)
def test_user_mistakes_are_one_line_errors_with_exit_code_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: str,
    data_root: Path,
) -> None:
    if "--data.root" not in args:
        args = [*args, "--data.root", str(data_root)]
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, *args]) == 2  # an exception (a traceback for the user) fails the test here
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0], error_lines
    # A run that fails on a mistake before saving anything leaves no run directory behind.
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


def test_a_mistake_is_one_line_and_exit_2_in_a_real_process_too(tmp_path: Path, data_root: Path) -> None:
    result = run_train([*TINY, "--data.root", str(data_root), "--model", "transformer"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "unknown --model 'transformer'" in error_lines[0], result.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_imagenet_weights_say_where_to_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torchvision.models._api as weights_api

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(weights_api, "load_state_dict_from_url", no_network)
    code, run = _train(tmp_path, monkeypatch, "--model", "resnet", "--data.root", str(data_root))
    assert code == 2 and run is None
    error = capsys.readouterr().err
    assert str(tmp_path / "empty-cache" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in error
