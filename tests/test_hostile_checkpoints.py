"""Crafted checkpoints, as an attacker would write them, through every entry point: the paths, class paths and sizes
they hold are checked before use (``project.engine.trust``)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import torch
from conftest import copy_run
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from project.engine import compat, evaluate, export, predict, serve
from project.engine.cli import main as train


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    return victim


@pytest.mark.parametrize("form", ["local-protocol", "dot-dot", "s3"])
def test_resume_never_removes_a_path_its_checkpoint_names_outside_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_run: Path, form: str
) -> None:
    run, victim = copy_run(tiny_run, tmp_path), _victim(tmp_path)
    named = {
        "local-protocol": f"local://{victim}",
        "dot-dot": f"{run}/checkpoints/../../victim",
        "s3": "s3://bucket/victim",
    }[form]
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    states = [state for key, state in checkpoint["callbacks"].items() if key.startswith("ModelCheckpoint")]
    assert len(states) == 2  # the best and the last callback: both are pointed at the victim
    for state in states:
        state["best_model_path"] = state["kth_best_model_path"] = state["last_model_path"] = named
        state["best_k_models"] = {named: torch.tensor(0.0)}
        state["dirpath"] = str((run / "checkpoints").resolve())  # this run's: Lightning restores every field
    torch.save(checkpoint, last)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # were s3 reached, only a closed local port
    with pytest.warns(UserWarning) as record:
        assert train(["--resume", str(run), "--max_epochs", "2"]) == 0
    assert (victim / "precious.txt").read_text() == "keep me"
    warnings = [str(warning.message) for warning in record if "outside this run" in str(warning.message)]
    assert len(warnings) == 1 and repr(named) in warnings[0] and "\n" not in warnings[0], warnings
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()


def test_the_sanitized_fields_are_the_paths_lightning_saves() -> None:
    """compat's field names are ModelCheckpoint's (Lightning 2.6): a rename would leave a path unchecked."""
    state = ModelCheckpoint(dirpath="somewhere").state_dict()
    fields = {*compat.CHECKPOINT_PATH_FIELDS, compat.CHECKPOINT_DIR_FIELD, compat.CHECKPOINT_TOP_K_FIELD}
    assert fields <= state.keys()
    paths = {key for key, value in state.items() if isinstance(value, str) and key != "monitor"}
    assert paths <= fields  # every string it saves, bar the monitored metric's name, is a checked path


# ---------------------------------------------------------------------------------------------- class paths, sizes
ENTRY_POINTS = ["evaluate", "predict", "export", "serve"]


def _entry_point(name: str, checkpoint: Path, tmp_path: Path, *extra: str) -> int:
    """``scripts/NAME.py --ckpt CHECKPOINT ...`` called in this process (its ``main``), with what else it needs."""
    if name == "evaluate":
        return evaluate.main(["--ckpt", str(checkpoint), "--output", str(tmp_path / "eval.json"), *extra])
    if name == "predict":
        image = tmp_path / "digit.png"
        Image.new("L", (28, 28), 128).save(image)
        return predict.main(["--ckpt", str(checkpoint), str(image), "--output", str(tmp_path / "p.csv"), *extra])
    if name == "export":
        return export.main(["--ckpt", str(checkpoint), "--format", "safetensors", "--output", str(tmp_path / "x.st")])
    return serve.main(["--ckpt", str(checkpoint), "--port", "1", *extra])  # refused before anything listens


def _planted_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    """A module on ``sys.path`` whose import writes a marker file (any installed module's top-level code, e.g.
    ``PIL.__main__``'s report, in the attack); it also holds a valid model class, for the allowed case."""
    folder, marker = tmp_path / "planted", tmp_path / "marker"
    folder.mkdir()
    (folder / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "from project.models.mlp import MLP\n\nclass Model(MLP):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    return marker


def _crafted(tiny_run: Path, tmp_path: Path, **hparams: object) -> Path:
    checkpoint = torch.load(tiny_run / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["hyper_parameters"].update(hparams)
    path = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_checkpoint_naming_a_module_never_imports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_run: Path, entry: str
) -> None:
    name = f"planted_{entry}_{uuid.uuid4().hex[:8]}"
    marker = _planted_module(tmp_path, monkeypatch, name)
    checkpoint = _crafted(tiny_run, tmp_path, _class_path=f"{name}.Model")
    assert _entry_point(entry, checkpoint, tmp_path) == 2
    assert not marker.exists() and name not in sys.modules  # its code did not run
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: checkpoint") and f"--allow_module {name}" in err[0], err


def test_the_checkpoints_data_module_is_checked_before_it_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_run: Path
) -> None:
    name = f"planted_data_{uuid.uuid4().hex[:8]}"
    marker = _planted_module(tmp_path, monkeypatch, name)
    checkpoint = torch.load(tiny_run / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["datamodule_hyper_parameters"]["_class_path"] = f"{name}.Data"
    torch.save(checkpoint, tmp_path / "crafted.ckpt")
    assert _entry_point("evaluate", tmp_path / "crafted.ckpt", tmp_path) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data module" in err[0] and f"--allow_module {name}" in err[0], err


def test_a_module_the_user_allows_is_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_run: Path) -> None:
    name = f"planted_allowed_{uuid.uuid4().hex[:8]}"
    marker = _planted_module(tmp_path, monkeypatch, name)
    checkpoint = _crafted(tiny_run, tmp_path, _class_path=f"{name}.Model")
    assert _entry_point("predict", checkpoint, tmp_path, "--allow_module", name) == 0
    assert marker.exists() and (tmp_path / "p.csv").is_file()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_checkpoint_asking_for_a_huge_model_is_refused_before_it_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_run: Path, entry: str
) -> None:
    # 2,000 hidden layers of 4,096: 134 GB of float32 weights, past the default --max_model_memory of 8GB.
    checkpoint = _crafted(tiny_run, tmp_path, hidden_sizes=[4096] * 2000)
    assert _entry_point(entry, checkpoint, tmp_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "134.2 GB" in err[0] and "--max_model_memory" in err[0], err


def test_max_model_memory_is_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_run: Path) -> None:
    checkpoint = tiny_run / "checkpoints" / "best.ckpt"  # the default MLP: 784·512 + 512·256 + 256·10 weights
    assert _entry_point("predict", checkpoint, tmp_path, "--max_model_memory", "1MB") == 2
    assert "more than --max_model_memory" in capsys.readouterr().err
    assert _entry_point("predict", checkpoint, tmp_path, "--max_model_memory", "3MB") == 0
    assert _entry_point("predict", checkpoint, tmp_path, "--max_model_memory", "lots") == 2
    assert "error: --max_model_memory 'lots': not a size" in capsys.readouterr().err


def test_resume_does_not_import_the_module_its_checkpoint_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_run: Path
) -> None:
    """The resumed run's model is its config's; the checkpoint's class path is only compared, never imported."""
    run = copy_run(tiny_run, tmp_path)
    name = f"planted_resume_{uuid.uuid4().hex[:8]}"
    marker = _planted_module(tmp_path, monkeypatch, name)
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = checkpoint["hyper_parameters"]["_instantiator"] = f"{name}.Model"
    torch.save(checkpoint, last)
    monkeypatch.chdir(tmp_path)
    assert train(["--resume", str(run), "--max_epochs", "2"]) == 0
    assert not marker.exists()
