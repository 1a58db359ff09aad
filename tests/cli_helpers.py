"""What the command-line tests share: a tiny training run through ``main`` in a temporary directory, and its run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY

from project.engine.cli import main


def _only_run(runs: Path) -> Path:
    run_dirs = [path for path in runs.iterdir() if path.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    return run_dirs[0]


def _train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, Path | None]:
    monkeypatch.chdir(tmp_path)
    code = main([*TINY, *args])
    runs = tmp_path / "runs"
    return code, _only_run(runs) if runs.exists() and any(runs.iterdir()) else None
