"""Small command-line matters: ``--find_lr`` alone, misspelt options named with their close matches, and the data
sets' download errors giving the address to fetch them from."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY
from torchvision.datasets import CIFAR10, MNIST
from torchvision.models import ResNet18_Weights

from project.datamodules import CIFAR10DataModule, MNISTDataModule
from project.engine.callbacks.training_flags import LR_FIND_PLOT
from project.engine.cli import main
from project.engine.errors import DataError

#: A port nothing listens on: the download is refused at once, as without a network.
NOWHERE = "http://127.0.0.1:9/"


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    return line


def test_find_lr_alone_means_report(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    args = [*TINY, "--data.root", str(data_root), "--find_lr", "--find_lr_steps", "5", "--run_dir", str(run)]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    assert "learning-rate finder: suggests lr" in out and "not applied" in out
    assert (run / LR_FIND_PLOT).is_file()
    assert "find_lr: report" in (run / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model.hiden_sizes", "[8]"], "did you mean --model.hidden_sizes?"),
        (["--data.batchsize", "8"], "did you mean --data.batch_size or --data.eval_batch_size?"),
        (["--trainer.max_epohcs", "2"], "did you mean --trainer.max_epochs or"),
        (["--ema_decy", "0.9"], "did you mean --ema_decay?"),
        # Nothing close: the model's options are listed (not those the data sets, such as num_classes).
        (["--model", "cnn", "--model.widht", "8"], "CNN has no option 'widht'; its options: channels, channels_last,"),
    ],
)
def test_a_misspelt_option_names_the_close_matches(
    args: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    line = _error_line(capsys)
    assert expected in line, line
    assert "num_classes" not in line


def test_mnist_download_error_gives_torchvisions_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MNIST, "mirrors", [f"{NOWHERE}mnist/"])  # the address the error must come from
    with pytest.raises(DataError, match=f"download failed.*from {NOWHERE}mnist/"):
        MNISTDataModule(root=str(tmp_path)).prepare_data()
    with pytest.raises(DataError, match=f"download is false.*from {NOWHERE}mnist/"):
        MNISTDataModule(root=str(tmp_path), download=False).prepare_data()


def test_cifar10_download_error_gives_torchvisions_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"{NOWHERE}cifar-10-python.tar.gz"
    monkeypatch.setattr(CIFAR10, "url", url)
    with pytest.raises(DataError, match=f"download failed.*{url}"):
        CIFAR10DataModule(root=str(tmp_path)).prepare_data()
    with pytest.raises(DataError, match=f"download is false.*{url}"):
        CIFAR10DataModule(root=str(tmp_path), download=False).prepare_data()


@pytest.mark.parametrize(
    "args", [["--help"], ["--data.help", "FolderDataModule"], ["--model", "resnet", "--model.help", "ResNet"]]
)
def test_help_is_plain_text(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # The docstrings it is made of are reStructuredText (Lightning's Trainer's too): no markup reaches the terminal.
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert len(text.splitlines()) > 40
    for markup in ("``", ":class:`", ":mod:`", ":meth:`", ":func:`", "<function"):
        assert markup not in text, markup
    if args == ["--help"]:
        assert "The data: a LightningDataModule" in text and "The main advantage is:" not in text


def test_offline_the_main_job_names_every_missing_file_in_one_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A machine without the weights, without CIFAR-10, and without a network: one run says all there is to fetch.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(ResNet18_Weights.IMAGENET1K_V1.value, "url", f"{NOWHERE}resnet18-f37072fd.pth")
    monkeypatch.setattr(CIFAR10, "url", f"{NOWHERE}cifar-10-python.tar.gz")
    monkeypatch.chdir(tmp_path)
    assert main(["--model", "resnet"]) == 2
    line = _error_line(capsys)
    assert "resnet18 ImageNet weights are not in torchvision's cache" in line and "resnet18-f37072fd.pth" in line
    assert "; and CIFAR-10 is not in data/cifar-10-batches-py and the download failed" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
