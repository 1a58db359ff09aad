"""Checkpoints: every one the project writes loads with ``weights_only=True``; bad or unsafe ones are refused."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import re
import shutil
import sys
from pathlib import Path

import lightning as L
import processes
import pytest
import torch
from conftest import REPO, RUN_TIMEOUT, TINY, copy_run, run_train
from torch import nn

from project.engine import export
from project.engine.callbacks.atomic_io import AtomicCheckpointIO
from project.engine.checkpoint import load_checkpoint_file, load_model
from project.engine.cli import main
from project.engine.errors import CheckpointError


class WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: the file appears if the loader runs code from the pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (builtins.open, (str(self.marker), "w"))


def _bad_checkpoint(kind: str, path: Path, good: Path, marker: Path) -> None:
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 20)
    elif kind == "code":  # a torch.save file (zip) and a plain pickle both go through the weights-only unpickler
        torch.save({"state_dict": {}, "epoch": WritesMarker(marker)}, path)
    elif kind == "code-pickle":
        path.write_bytes(pickle.dumps({"state_dict": WritesMarker(marker)}, protocol=2))


BAD_KINDS = ["truncated", "empty", "garbage", "code", "code-pickle"]
EXPECTED = {
    "truncated": "is truncated, corrupt or not a PyTorch checkpoint",
    "empty": "is empty (0 bytes)",
    "garbage": "is truncated, corrupt or not a PyTorch checkpoint",
    "code": "was refused: loading it would import io.open",
    "code-pickle": "was refused: loading it would import io.open",
}


def test_every_checkpoint_of_every_model_loads_with_weights_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_root: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    checkpoints: list[Path] = []
    for model in ("mlp", "deepnet", "cnn", "resnet"):
        # With a scheduler, so that optimizer and scheduler state are both in the checkpoints.
        args = ["--model", model, "--data.root", str(data_root), "--model.scheduler", "step"]
        args += ["--data.image_size", "32"]  # ResNet-18 too: what is saved is the point, not 224 px
        assert main([*TINY, *args, "--run_dir", model]) == 0
        found = sorted((tmp_path / model / "checkpoints").glob("*.ckpt"))
        assert [path.name for path in found] == ["best.ckpt", "last.ckpt"]
        checkpoints += found
        assert load_model(tmp_path / model / "checkpoints" / "last.ckpt").hparams.num_classes == 10
    # In a fresh interpreter with only torch imported, as a user would load them: nothing the project might have
    # allow-listed (torch.serialization.add_safe_globals) helps them load.
    script = (
        "import sys, torch\n"
        "for path in sys.argv[1:]:\n"
        "    keys = torch.load(path, weights_only=True).keys()\n"
        "    assert {'state_dict', 'optimizer_states', 'lr_schedulers', 'loops', 'rng_states'} <= keys, path\n"
    )
    result = processes.run([sys.executable, "-c", script, *checkpoints], RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]


def test_nothing_in_the_project_loads_with_weights_only_false() -> None:
    offenders = []
    for path in [*(REPO / "src").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            # Trainer.save_checkpoint(weights_only=False) means "the full state": it is about saving, not unpickling.
            code = line.partition("#")[0]
            if re.search(r"weights_only\s*=\s*False", code) and "save_checkpoint(" not in code:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


class PretrainedNet(L.LightningModule):
    """Reads "pretrained weights" in ``__init__`` unless ``weights="none"``, as ResNet does: offline, that fails."""

    restore_overrides = {"weights": "none"}

    def __init__(self, width: int = 3, weights: str = "imagenet") -> None:
        super().__init__()
        if weights != "none":
            raise OSError("the ImageNet weights cannot be downloaded here")
        self.save_hyperparameters()
        self.network = nn.Linear(width, 2)


@pytest.mark.parametrize("source", ["checkpoint", "safetensors"])
def test_rebuilding_a_model_reads_no_pretrained_weights_and_keeps_its_hparams(tmp_path: Path, source: str) -> None:
    trained = PretrainedNet(width=4, weights="none")
    hparams = {"width": 4, "weights": "imagenet"}  # as training saved them
    class_path = f"{PretrainedNet.__module__}.{PretrainedNet.__qualname__}"
    if source == "checkpoint":
        path = tmp_path / "pretrained.ckpt"
        saved = {**hparams, "_class_path": class_path, "_instantiator": "lightning.pytorch.cli.instantiate_module"}
        torch.save({"state_dict": trained.state_dict(), "hyper_parameters": saved}, path)
        model = load_model(path)
    else:
        pytest.importorskip("safetensors")
        path = tmp_path / "pretrained.safetensors"
        meta = {"model_class": class_path, "hyper_parameters": json.dumps(hparams), "output": "logits"}
        export.export_safetensors(trained.network, torch.zeros(2, 4), path, meta)
        model, _ = export.load_safetensors(path)
    assert type(model) is PretrainedNet and not model.training
    assert dict(model.hparams) == hparams  # still describes itself as trained from ImageNet weights
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)


@pytest.mark.skipif(os.name != "posix", reason="file modes and the umask are POSIX")
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_file_mode_follows_the_umask_as_a_plain_torch_save(tmp_path: Path, umask: int, mode: int) -> None:
    # Teammates sharing a run directory read its checkpoints when the umask lets them (not mkstemp's 0600).
    previous = os.umask(umask)
    try:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "a.ckpt")
        torch.save({"w": torch.ones(2)}, tmp_path / "plain.ckpt")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "plain.ckpt").stat().st_mode & 0o777 == mode  # what the umask gives a plain torch.save
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.ckpt", "plain.ckpt"]  # no temporary file left
    assert load_checkpoint_file(tmp_path / "a.ckpt")["state_dict"]["w"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_checkpoint_is_one_clear_error_from_load_model(tmp_path: Path, tiny_run: Path, kind: str) -> None:
    path, marker = tmp_path / "bad.ckpt", tmp_path / "marker"
    _bad_checkpoint(kind, path, tiny_run / "checkpoints" / "last.ckpt", marker)
    for load in (load_checkpoint_file, load_model):
        with pytest.raises(CheckpointError) as error:
            load(path)
        message = str(error.value)
        assert "\n" not in message and str(path) in message and EXPECTED[kind] in message
        assert error.value.exit_code == 2
    assert not marker.exists()
    if kind.startswith("code"):  # the payload is real: an unsafe load does run it
        if kind == "code":
            torch.load(path, weights_only=False)
        else:
            pickle.loads(path.read_bytes())
        assert marker.exists()


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage"])
def test_resume_from_a_bad_checkpoint_is_exit_code_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_run: Path, kind: str
) -> None:
    run = copy_run(tiny_run, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    good = tmp_path / "good.ckpt"
    shutil.copy(last, good)
    _bad_checkpoint(kind, last, good, tmp_path / "marker")
    monkeypatch.chdir(tmp_path)
    assert main(["--resume", str(run)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: checkpoint") and str(last) in error[-1] and EXPECTED[kind] in error[-1]
    assert (run / "checkpoints" / "best.ckpt").read_bytes() == (tiny_run / "checkpoints" / "best.ckpt").read_bytes()


def test_resume_from_a_checkpoint_that_runs_code_is_refused_in_a_real_process(tmp_path: Path, tiny_run: Path) -> None:
    run = copy_run(tiny_run, tmp_path)
    evil, marker = run / "checkpoints" / "last.ckpt", tmp_path / "marker"
    _bad_checkpoint("code", evil, evil, marker)
    result = run_train(["--resume", str(evil)], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(evil) in errors[0] and "was refused" in errors[0], result.stderr
    assert not marker.exists()
