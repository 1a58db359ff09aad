"""Export a checkpoint's network for serving: ``python scripts/export.py --ckpt best.ckpt --format onnx``.

Four formats, each holding the network in eval mode (logits out, for ``(N, C, H, W)`` inputs preprocessed as
the checkpoint's ``preprocessing`` says, any batch size) and the metadata needed to use it without this package's
checkpoint: class names, preprocessing, input shape, model class and hyperparameters, as JSON strings.

* ``exported``: a ``torch.export`` program (``.pt2``), today's PyTorch format, metadata in its ``metadata.json``;
  load with :func:`~project.engine.checkpoint.load_exported` (``torch.export.load``) and call ``program.module()``.
* ``onnx``: the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, needs onnxscript), input ``images`` and
  output ``logits`` with a dynamic batch axis, metadata in the model's ``metadata_props``; run with onnxruntime.
  Where the dynamo exporter fails, the legacy TorchScript-based one is tried, and says so.
* ``torchscript`` (legacy): ``torch.jit.trace``, the textbook's path, metadata in ``metadata.json``; load with
  ``torch.jit.load(path)``. PyTorch has deprecated TorchScript: prefer ``exported`` or ONNX.
* ``safetensors``: the network's state dict alone, weights only (nothing to unpickle), metadata in the
  file's header; :func:`load_safetensors` rebuilds the model from it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from project.engine import trust
from project.engine.checkpoint import METADATA_FILE, decode_metadata, load_model, rebuild_model
from project.engine.entrypoint import CKPT_HELP, ArgumentParser, checkpoint_run_dir, run_main
from project.engine.errors import CheckpointError, UserError, first_line
from project.engine.options import constructor_args
from project.engine.trust import CheckpointLimits

FORMATS = {"exported": ".pt2", "onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}


def metadata(model: L.LightningModule) -> dict[str, str]:
    """What a user of the exported network needs, as JSON strings (safetensors and ONNX store only strings)."""
    return {
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "class_names": json.dumps(list(model.hparams.class_names)),
        "preprocessing": json.dumps(model.hparams.preprocessing),
        "input_shape": json.dumps(list(model.hparams.input_shape)),
        "hyper_parameters": json.dumps(constructor_args(dict(model.hparams)), default=list),
        "output": "logits",
    }


def default_output(checkpoint: str | Path, fmt: str) -> Path:
    """``<run>/export/<checkpoint name>.<ext>``, e.g. ``runs/x/export/best.onnx``."""
    return checkpoint_run_dir(checkpoint) / "export" / (Path(checkpoint).stem + FORMATS[fmt])


def export(
    checkpoint: str | Path, fmt: str, output: str | Path | None = None, limits: CheckpointLimits | None = None
) -> Path:
    """Export the network of ``checkpoint`` (loaded within ``limits``) as ``fmt`` to ``output`` (default:
    :func:`default_output`)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    model = load_model(checkpoint, limits=limits)
    if model.network is None or not model.hparams.get("input_shape"):
        raise UserError("the checkpoint has no built network or input shape: was it trained with this template?")
    network = model.network.eval()
    # Batch of 2: a batch of 1 lets tracers specialise on it (and BatchNorm's checks differ).
    example = torch.zeros(2, *model.hparams.input_shape)
    path = Path(output) if output else default_output(checkpoint, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporters: dict[str, Callable[[nn.Module, torch.Tensor, Path, dict[str, str]], None]] = {
        "exported": export_program,
        "torchscript": export_torchscript,
        "onnx": export_onnx,
        "safetensors": export_safetensors,
    }
    exporters[fmt](network, example, path, metadata(model))
    return path


def export_torchscript(network: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    with warnings.catch_warnings():
        # torch.jit warns that it is deprecated; this format exists for the textbook, the docstring says so.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=FutureWarning)
        with torch.no_grad():
            traced = torch.jit.trace(network, example)
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(meta)})


def batch_dimension() -> dict[int, Any]:
    """The inputs' first dimension is the batch, of any size."""
    return {0: torch.export.Dim("batch", min=1, max=65536)}


def export_program(network: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    with torch.no_grad():
        program = torch.export.export(network, (example,), dynamic_shapes=(batch_dimension(),))
    torch.export.save(program, str(path), extra_files={METADATA_FILE: json.dumps(meta)})


def export_onnx(network: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    try:
        import onnx
    except ImportError:
        raise UserError("--format onnx needs the onnx package: pip install -e '.[export]'") from None
    names = {"input_names": ["images"], "output_names": ["logits"]}
    try:
        import onnxscript  # noqa: F401 - what the dynamo exporter needs
    except ImportError:
        raise UserError("--format onnx needs the onnxscript package: pip install -e '.[export]'") from None
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                network, (example,), dynamo=True, dynamic_shapes=(batch_dimension(),), verbose=False, **names
            )
        program.save(str(path))
    except Exception as error:  # noqa: BLE001 - any exporter failure: the legacy exporter, said out loud
        print(f"note: the dynamo ONNX exporter failed ({first_line(error)}); using the legacy TorchScript-based one")
        with warnings.catch_warnings():
            # Deprecated upstream, and used here only where the dynamo exporter failed (said above).
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX", category=DeprecationWarning)
            torch.onnx.export(
                network, (example,), str(path), dynamo=False, dynamic_axes={"images": {0: "batch"}}, **names
            )
    model = onnx.load(str(path))
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def export_safetensors(network: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, str]) -> None:
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError("--format safetensors needs the safetensors package: pip install -e '.[export]'") from None
    # contiguous() and clone(): safetensors refuses views and tensors that share memory.
    state = {key: value.detach().contiguous().clone() for key, value in network.state_dict().items()}
    save_file(state, str(path), metadata=meta)


def load_safetensors(
    path: str | Path, limits: CheckpointLimits | None = None
) -> tuple[L.LightningModule, dict[str, Any]]:
    """Rebuild the model (in eval mode) from an exported safetensors file, its class and size checked against
    ``limits`` as a checkpoint's are; also return its decoded metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as file:
        raw = file.metadata() or {}
    if "model_class" not in raw:
        raise UserError(f"{path}: not a safetensors file exported by this template (no model_class metadata)")
    meta = decode_metadata(raw)
    model = rebuild_model(meta["model_class"], meta["hyper_parameters"], path, limits)
    try:
        model.network.load_state_dict(load_file(str(path)))
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights do not match {meta['model_class']}: {first_line(error)}") from None
    return model.eval(), meta


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="export.py", description="Export a checkpoint's network for serving.")
    parser.add_argument("--ckpt", required=True, help=CKPT_HELP)
    parser.add_argument("--format", required=True, choices=list(FORMATS), help="Export format.")
    parser.add_argument("--output", help="Output file (default: <run>/export/<checkpoint name>.<ext>).")
    trust.add_arguments(parser)
    return parser


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    path = export(args.ckpt, args.format, args.output, trust.limits_from_args(args))
    print(f"exported {args.format}: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/export.py``: returns the exit code (2 for user mistakes, with one ``error:`` line)."""
    return run_main(_main, argv)
