"""What the serving tests share: a trained checkpoint, and ``scripts/serve.py`` running on a free port of 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import processes
from conftest import REPO, TINY

from project.engine.cli import main as train

SERVE_SCRIPT = REPO / "scripts" / "serve.py"


def train_checkpoint(root: Path, data_root: Path, model: str = "mlp") -> Path:
    run = root / model
    args = [*TINY, "--model", model, "--data.root", str(data_root), "--data.download", "false"]
    assert train([*args, "--data.val_size", "0.1", "--run_dir", str(run)]) == 0
    return run / "checkpoints" / "best.ckpt"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(source: Path, cwd: Path, *args: str, ready_within: float = 600) -> Iterator[str]:
    """``scripts/serve.py --ckpt SOURCE ARGS`` in a subprocess; yields its URL once ``/health`` answers 200."""
    with server_process(source, cwd, *args, ready_within=ready_within) as (url, _):
        yield url


@contextmanager
def server_process(
    source: Path,
    cwd: Path,
    *args: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
    ready_within: float = 600,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """:func:`serving`, yielding ``(url, process)``; on ``port`` (default: a free one), with ``env`` added (with
    ``LIT_SERVER_API_KEY`` the health checks send it)."""
    key = (env or {}).get("LIT_SERVER_API_KEY")
    headers = {"X-API-Key": key} if key else {}
    port = port or free_port()
    log = cwd / f"serve-{port}.log"
    command = [sys.executable, str(SERVE_SCRIPT), "--ckpt", str(source), "--port", str(port), *args]
    with log.open("w") as output:
        # A session of its own: LitServe's API server and workers are its children, stopped with it.
        process = processes.start(
            command, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_within  # generous: a loaded 2-core machine starts workers slowly
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", headers=headers, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield url, process
    finally:
        processes.end(process, grace=60)
        log.unlink(missing_ok=True)
