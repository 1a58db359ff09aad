"""scripts/export.py: every format gives the checkpoint's outputs, for any batch size, with its metadata."""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import pytest
import torch
from conftest import TINY
from safetensors import safe_open
from safetensors.torch import load_file

from project.engine import export
from project.engine.checkpoint import METADATA_FILE, load_exported, load_model
from project.engine.cli import main as train

DATA = {"mlp": "mnist", "cnn": "mnist", "resnet": "cifar10"}
CASES = [(model, fmt) for model in ("mlp", "cnn") for fmt in export.FORMATS]
CASES += [("resnet", "onnx"), ("resnet", "exported")]


class _Trained(dict):
    """``{model: best.ckpt}``, each model trained (once) when first asked for."""

    def __init__(self, root: Path, data_root: Path) -> None:
        super().__init__()
        self.root, self.data_root = root, data_root

    def __missing__(self, model: str) -> Path:
        run = self.root / model
        args = [*TINY, "--model", model, "--data", DATA[model], "--data.root", str(self.data_root)]
        if model == "resnet":  # at CIFAR's size: the export is the point, not 224 px
            args += ["--data.image_size", "32"]
        assert train([*args, "--run_dir", str(run)]) == 0
        self[model] = run / "checkpoints" / "best.ckpt"
        return self[model]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict[str, Path]:
    return _Trained(tmp_path_factory.mktemp("export"), data_root)


def _decoded(metadata: dict[str, str]) -> dict[str, Any]:
    return {key: value if key in ("model_class", "output") else json.loads(value) for key, value in metadata.items()}


def _run_exported(path: Path, fmt: str, inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """The exported model's outputs for ``inputs`` and its decoded metadata, read back as a user would."""
    if fmt == "torchscript":
        files = {"metadata.json": ""}
        with warnings.catch_warnings():  # "torch.jit.load is deprecated": known, see project.engine.export
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), _extra_files=files)
        return module(inputs), _decoded(json.loads(files["metadata.json"]))
    if fmt == "exported":
        files = {METADATA_FILE: ""}
        program = torch.export.load(str(path), extra_files=files)  # as a user would, without the template
        loaded, loaded_metadata = load_exported(path)
        assert loaded_metadata == _decoded(json.loads(files[METADATA_FILE]))
        return program.module()(inputs), loaded_metadata
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (outputs,) = session.run(["logits"], {"images": inputs.numpy()})
        metadata = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
        return torch.from_numpy(outputs), _decoded(metadata)
    # The file's header, read by the safetensors library (not by the template's loader, which decodes it itself).
    with safe_open(str(path), framework="pt") as file:
        metadata = _decoded(file.metadata())
    # The weights, into the model the metadata names, built from its hyperparameters: as a user without the
    # template's loader would; the loader (export.load_safetensors) must give the same model and metadata.
    module, _, name = metadata["model_class"].rpartition(".")
    model = getattr(importlib.import_module(module), name)(**metadata["hyper_parameters"])
    model.network.load_state_dict(load_file(str(path)))
    loaded, loaded_metadata = export.load_safetensors(path)
    assert loaded_metadata == metadata
    expected_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert loaded_state.keys() == expected_state.keys()
    assert all(torch.equal(loaded_state[key], value) for key, value in expected_state.items())
    return model.eval()(inputs), metadata


@pytest.mark.parametrize(("model", "fmt"), CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_exported_model_gives_the_checkpoints_outputs(
    checkpoints: dict[str, Path], model: str, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = checkpoints[model]
    assert export.main(["--ckpt", str(checkpoint), "--format", fmt]) == 0
    assert "legacy" not in capsys.readouterr().out  # ONNX through the dynamo exporter, not the fallback
    path = checkpoint.parent.parent / "export" / f"best{export.FORMATS[fmt]}"
    assert path.is_file()

    reference = load_model(checkpoint)
    inputs = torch.randn(5, *reference.hparams.input_shape)  # 5: not the batch size the export was traced with
    with torch.no_grad():
        expected = reference(inputs)
        outputs, metadata = _run_exported(path, fmt, inputs)
    assert outputs.shape == expected.shape
    torch.testing.assert_close(outputs, expected, rtol=1e-4, atol=1e-4)
    assert metadata["class_names"] == reference.hparams.class_names
    assert metadata["preprocessing"] == reference.hparams.preprocessing
    assert metadata["input_shape"] == list(reference.hparams.input_shape)
    module, _, name = metadata["model_class"].rpartition(".")
    assert getattr(importlib.import_module(module), name) is type(reference)


def test_safetensors_holds_only_the_network_weights(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "weights.safetensors"
    assert export.main(["--ckpt", str(checkpoints["mlp"]), "--format", "safetensors", "--output", str(output)]) == 0
    network = load_model(checkpoints["mlp"]).network
    assert set(load_file(str(output))) == set(network.state_dict())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--format", "onnx", "--ckpt", "{missing}"], "does not exist"),
        (["--format", "tflite", "--ckpt", "{best}"], "invalid choice: 'tflite'"),
        (["--ckpt", "{best}"], "the following arguments are required: --format"),
    ],
)
def test_export_mistakes_are_one_line_errors_with_exit_code_2(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    paths = {"missing": tmp_path / "missing.ckpt", "best": checkpoints["mlp"]}
    assert export.main([arg.format(**paths) for arg in args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0]


def test_the_onnx_exporter_falls_back_to_the_legacy_one_and_says_so(
    checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_export = torch.onnx.export

    def dynamo_fails(*args: Any, dynamo: bool = True, **kwargs: Any) -> Any:
        if dynamo:
            raise RuntimeError("an operator the dynamo exporter cannot translate")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    output = tmp_path / "legacy.onnx"
    assert export.main(["--ckpt", str(checkpoints["mlp"]), "--format", "onnx", "--output", str(output)]) == 0
    assert "using the legacy TorchScript-based one" in capsys.readouterr().out
    inputs = torch.randn(3, 1, 28, 28)
    outputs, _ = _run_exported(output, "onnx", inputs)
    torch.testing.assert_close(outputs, load_model(checkpoints["mlp"])(inputs), rtol=1e-4, atol=1e-4)
