"""Serve a model over HTTP with LitServe: ``python scripts/serve.py --ckpt runs/<run>/checkpoints/best.ckpt``.

``POST /predict`` takes one image (the raw bytes with an ``image/*`` or ``application/octet-stream`` content type,
a multipart upload in the field ``image``, or JSON ``{"image": "<base64>"}``) and answers the top-k classes by name
with their probabilities, preprocessed as the checkpoint says: the answers of ``predict.py``. ``GET /`` is a page
to try it, ``GET /health`` says whether the workers are ready. Requests are batched dynamically
(``--max_batch_size``, ``--batch_timeout``), with ``--workers_per_device`` workers on each of ``--devices``.
A checkpoint or an exported ``.pt2`` program (``export.py --format exported``) can be served. Nothing is written.
"""

from __future__ import annotations

import base64
import binascii
import multiprocessing
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from project.engine import trust
from project.engine.checkpoint import load_exported, load_model
from project.engine.entrypoint import CKPT_HELP, ArgumentParser, run_main
from project.engine.errors import UserError
from project.engine.inputs import EmptyImage, ImageTooLarge, NotAnImage, bytes_input, saved_preprocessing
from project.engine.options import check_gpu
from project.engine.serve_http import DEFAULT_MAX_BODY_SIZE, PageAndRawImages
from project.engine.serve_metrics import BATCH_SIZE, MetricsLogger, metrics_folder
from project.engine.trust import CheckpointLimits

try:
    from fastapi import HTTPException
    from litserve import LitAPI, LitServer
except ImportError:  # the optional extra (pip install -e '.[serve]'): serve.py says so in one line
    LitAPI, LitServer, HTTPException = object, None, None


class Served(NamedTuple):
    """What serving needs of a model: a network from inputs to logits, its class names, its preprocessing."""

    network: Any
    class_names: list[str]
    preprocessing: dict[str, Any]


def load_served(path: str | Path, device: torch.device | str = "cpu", limits: CheckpointLimits | None = None) -> Served:
    """A checkpoint of this template (loaded within ``limits``), or a ``.pt2`` program exported from one, ready to
    serve on ``device``."""
    if Path(path).suffix == ".pt2":
        program, meta = load_exported(path)
        return Served(program.module().to(device), list(meta["class_names"]), meta["preprocessing"])
    model = load_model(path, map_location=device, limits=limits)
    return Served(model.eval(), *saved_preprocessing(model, path))


class ClassifierAPI(LitAPI):
    """The LitServe API of a model: decode and check one image per request, batch, predict, answer the top-k.

    Built in the server process and sent to each worker, which loads the model in :meth:`setup`.
    """

    def __init__(
        self,
        source: str | Path,
        topk: int = 5,
        max_batch_size: int = 1,
        batch_timeout: float = 0.0,
        limits: CheckpointLimits | None = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.source, self.topk, self.limits = str(source), topk, limits

    def setup(self, device: str) -> None:
        self.device = torch.device(device)
        self.served = load_served(self.source, self.device, self.limits)

    def decode_request(self, request):  # noqa: ANN001 - unannotated: LitServe then hands over the parsed body
        """One image from the request, as the model input (a 4xx with a one-line reason when it is not usable)."""
        try:
            # the engine's decoding is crash-safe (PNG through Pillow): a corrupt file is a NotAnImage, a 415
            return bytes_input(image_bytes(request), self.served.preprocessing)
        except ImageTooLarge as error:
            raise HTTPException(413, str(error)) from None
        except EmptyImage as error:
            raise HTTPException(400, str(error)) from None
        except NotAnImage as error:
            raise HTTPException(415, str(error)) from None

    def batch(self, inputs: list[Tensor]) -> Tensor:
        return torch.stack(inputs)

    def predict(self, images: Tensor) -> Tensor:
        single = images.ndim == 3  # without batching (--max_batch_size 1) LitServe passes one input
        self.log(BATCH_SIZE, 1 if single else len(images))  # GET /metrics' batch-size histogram
        images = (images[None] if single else images).to(self.device, non_blocking=True)
        with torch.inference_mode():
            probabilities = self.served.network(images).float().softmax(dim=-1).cpu()
        return probabilities[0] if single else probabilities

    def unbatch(self, output: Tensor) -> list[Tensor]:
        return list(output)

    def encode_response(self, probabilities: Tensor) -> dict[str, Any]:
        names = self.served.class_names
        values, indices = probabilities.topk(min(self.topk, len(names)))
        pairs = zip(indices.tolist(), values.tolist(), strict=True)
        return {"predictions": [{"class": names[index], "probability": value} for index, value in pairs]}


def image_bytes(request: Any) -> bytes:
    """The image in a request: a multipart upload's ``image`` field, or JSON's base64 ``image``."""
    upload = request.get("image") if hasattr(request, "get") else None
    if upload is None:
        raise EmptyImage("no image: send its bytes, a multipart upload in the field 'image', or JSON {'image': base64}")
    if hasattr(upload, "file"):  # a multipart upload
        upload.file.seek(0)
        return upload.file.read()
    try:
        return base64.b64decode(upload, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise NotAnImage("the JSON field 'image' is not base64") from None


# ---------------------------------------------------------------------------------------------- command line
def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="serve.py", description="Serve a checkpoint over HTTP (POST /predict, GET /).")
    parser.add_argument("--ckpt", required=True, help=f"{CKPT_HELP} Or an exported .pt2 program.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
    parser.add_argument("--port", type=int, default=8000, help="Port (default 8000).")
    parser.add_argument("--topk", type=int, default=5, help="Classes in each answer (default 5).")
    parser.add_argument("--max_batch_size", type=int, default=16, help="Largest dynamic batch (1: no batching).")
    parser.add_argument("--batch_timeout", type=float, default=0.005, help="Seconds to wait to fill a batch.")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, cuda, mps (default auto).")
    parser.add_argument("--devices", default="auto", help="Devices to serve on (default: all of the accelerator's).")
    parser.add_argument("--workers_per_device", type=int, default=1, help="Model copies per device (default 1).")
    parser.add_argument("--timeout", type=float, default=30, help="Seconds before a request times out (default 30).")
    parser.add_argument(
        "--max_body_size",
        default=DEFAULT_MAX_BODY_SIZE,
        help=f"Larger request bodies get a 413 before they are read whole (default {DEFAULT_MAX_BODY_SIZE}).",
    )
    trust.add_arguments(parser)
    return parser


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    check_gpu(args.accelerator)
    for name in ("topk", "max_batch_size", "workers_per_device", "port"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if LitServer is None:
        raise UserError("serving needs LitServe: pip install -e '.[serve]'")
    limits = trust.limits_from_args(args)
    max_body_size = trust.parse_size(args.max_body_size, "--max_body_size")
    load_served(args.ckpt, limits=limits)  # a bad file is one line here, before any worker starts
    api = ClassifierAPI(args.ckpt, args.topk, args.max_batch_size, args.batch_timeout, limits)
    with metrics_folder():
        return _serve(args, api, max_body_size)


def _serve(args: Any, api: ClassifierAPI, max_body_size: int) -> int:
    devices = args.devices if args.devices == "auto" else int(args.devices)
    server = LitServer(
        api,
        accelerator=args.accelerator,
        devices=devices,
        workers_per_device=args.workers_per_device,
        timeout=args.timeout,
        middlewares=[(PageAndRawImages, {"max_body_size": max_body_size})],
        restart_workers=True,  # a worker that dies anyway (a native crash) is replaced; the others serve meanwhile
        loggers=[MetricsLogger()],  # GET /metrics
    )
    print(
        f"serving {args.ckpt} on http://{args.host}:{args.port}/ (POST /predict, GET /health, GET /metrics)", flush=True
    )
    # SIGTERM (kill, a supervisor, a container stop) ends the server as Ctrl+C does: LitServe's shutdown stops its
    # API servers, workers and manager; by default SIGTERM ends this process alone and leaves them serving the port.
    stopped_by: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        stopped_by.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        server.run(host=args.host, port=args.port, generate_client_file=False)
    except KeyboardInterrupt:
        pass  # a stop while LitServe was still starting (after, it handles it itself): its processes end below
    finally:
        for child in multiprocessing.active_children():  # whatever LitServe left running (a shutdown cut short)
            child.kill()
    return 128 + stopped_by[0] if stopped_by else 0  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/serve.py``: returns the exit code (2 for user mistakes, with one ``error:`` line)."""
    return run_main(_main, argv)
