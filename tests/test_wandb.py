"""Weights & Biases: offline on its own, the nested config, artifacts, histograms, dashboards; optional import."""

from __future__ import annotations

import importlib.metadata
import json
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import processes
import pytest
import torch
from conftest import RUN_TIMEOUT, TINY

from project.engine.cli import main
from project.engine.loggers import WANDB_RUN_ID_KEY, WandbOptions, make_loggers, wandb_mode

# wandb is a dev dependency (pyproject.toml): where it is missing, the tests that use it fail (a broken install), they
# do not skip. It is not imported here, so that test_project_runs_without_wandb_installed, which hides it, runs
# whether it is installed or not.


def _records(path: Path) -> Iterator[Any]:
    """The protobuf records of a ``run-<id>.wandb`` file (a LevelDB-style log of 32 KiB blocks).

    wandb no longer ships a Python reader for its own file; this one is enough for a test: a 7-byte file header,
    then chunks with a 7-byte header (CRC32, length, type: 1 full, 2 first, 3 middle, 4 last).
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending = 32 * 1024, 7, b""
    while position + 7 <= len(data):
        left_in_block = block - position % block
        if left_in_block < 7:  # too small for a header: padding up to the next block
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _offline_run(run: Path) -> dict[str, Any]:
    """What an offline W&B run recorded: config items, artifacts, history keys, run settings."""
    (run_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    found: dict[str, Any] = {"config": {}, "artifacts": [], "history_keys": set(), "run": None}
    for record in _records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            found["config"].update({item.key: json.loads(item.value_json) for item in record.config.update if item.key})
        elif kind == "artifact":
            contents = [entry.path for entry in record.artifact.manifest.contents]
            found["artifacts"].append((record.artifact.type, record.artifact.name, contents))
        elif kind == "history":
            found["history_keys"].update(item.key or "/".join(item.nested_key) for item in record.history.item)
        elif kind == "run":
            found["run"] = record.run
    return found


def test_offline_run_on_its_own_logs_nested_config_artifacts_histograms_and_dashboards(
    tmp_path: Path, data_root: Path
) -> None:
    """No API key and no WANDB_MODE: the run goes offline by itself, finishes, and says how to upload it."""
    home = tmp_path / "home"  # no ~/.netrc with a W&B key in here
    home.mkdir()
    # No WANDB_* at all: W&B runs earlier in this process leave WANDB_MODE and WANDB_SERVICE (its socket) set.
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.update(HOME=str(home), MPLCONFIGDIR=str(Path.home() / ".config" / "matplotlib"), WANDB_SILENT="true")
    args = [*TINY, "--dashboard_every", "1", "--data.root", str(data_root), "--logger", "wandb", "--wandb.watch", "all"]
    args += ["--wandb.tags", "[baseline, tiny]", "--wandb.group", "tests", "--trainer.log_every_n_steps", "1"]
    result = processes.run(
        [sys.executable, Path(__file__).parents[1] / "scripts" / "train.py", *args],
        RUN_TIMEOUT,  # a hang guard (W&B waiting on the network, say), not a speed limit
        cwd=tmp_path,
        env={**env, "PYTHONWARNINGS": "ignore::DeprecationWarning"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = next((tmp_path / "runs").iterdir())
    (offline_dir,) = run.glob("wandb/offline-run-*")
    assert f"wandb sync {offline_dir.relative_to(tmp_path)}" in result.stdout

    recorded = _offline_run(run)
    config = recorded["config"]
    # The resolved config.yaml, nested as written, and not the flat hyperparameters besides it.
    assert config["model"]["class_path"] == "project.models.MLP"
    assert config["model"]["init_args"]["lr"] == 0.002  # the MLP recipe's (configs/model/mlp.yaml)
    assert config["data"]["init_args"]["root"] == str(data_root)
    assert config["trainer"]["max_epochs"] == 1 and config["logger"] == "wandb"
    assert not {"lr", "hidden_sizes", "batch_size", "class_names"} & set(config)
    artifacts = {(kind, name.split("-")[0]): files for kind, name, files in recorded["artifacts"]}
    assert artifacts[("config", "config")] == ["config.yaml"]
    assert not any(kind == "model" for kind, _ in artifacts)  # checkpoints are uploaded only online
    tables = {name for kind, name, _ in recorded["artifacts"] if kind == "run_table"}
    for stage in ("val", "test"):
        assert any(f"{stage}predictions" in name for name in tables)
        assert any(f"{stage}confusion_matrix" in name for name in tables)
    keys = recorded["history_keys"]
    assert any(key.startswith("gradients/") for key in keys) and any(key.startswith("parameters/") for key in keys)
    assert {"val/acc", "train/loss_epoch", "val/predictions", "test/per_class"} <= {k.split("/_")[0] for k in keys}
    assert list(recorded["run"].tags) == ["baseline", "tiny"] and recorded["run"].run_group == "tests"
    # The run id is in the checkpoints, so --resume continues this W&B run.
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert offline_dir.name.endswith(checkpoint[WANDB_RUN_ID_KEY])


def test_names_come_from_flags_first_then_wandb_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "env-project")
    monkeypatch.setenv("WANDB_ENTITY", "env-team")
    monkeypatch.setenv("WANDB_TAGS", "a,b")
    monkeypatch.setenv("WANDB_RUN_GROUP", "env-group")
    (_, from_env) = make_loggers("wandb", tmp_path, WandbOptions())
    settings = from_env._wandb_init  # the keyword arguments for wandb.init
    assert (settings["project"], settings["entity"], settings["group"]) == ("env-project", "env-team", "env-group")
    assert settings["tags"] == ["a", "b"] and settings["name"] == tmp_path.name
    options = WandbOptions(project="p", entity="e", name="n", tags=["t"], group="g")
    (_, from_flags) = make_loggers("wandb", tmp_path, options)
    assert {key: from_flags._wandb_init[key] for key in ("project", "entity", "name", "tags", "group")} == {
        "project": "p",
        "entity": "e",
        "name": "n",
        "tags": ["t"],
        "group": "g",
    }
    # Neither: your project's name, the installed distribution's whose package is ``project`` (copier names it).
    monkeypatch.delenv("WANDB_PROJECT")
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: {"project": ["leaf-disease"]})
    (_, by_default) = make_loggers("wandb", tmp_path, WandbOptions())
    assert by_default._wandb_init["project"] == "leaf-disease"


def test_auto_mode_is_online_only_with_an_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode("auto") == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode("auto") == "online"
    assert wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("auto") == "offline"


def test_project_runs_without_wandb_installed(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``import wandb`` failing, the package imports and trains (dashboard included) in a fresh process."""
    runner = (
        "import sys; sys.modules['wandb'] = None  # any 'import wandb' now raises ImportError\n"
        "try:\n    import wandb\nexcept ImportError:\n    pass\nelse:\n    sys.exit('wandb is still importable')\n"
        "from project.engine.cli import main\n"
        "import project.engine.evaluate, project.engine.predict, project.engine.export\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    trained = processes.run(
        [sys.executable, "-c", runner, *TINY, "--dashboard_every", "1", "--data.root", str(data_root)],
        RUN_TIMEOUT,
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"},
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert list((tmp_path / "runs").glob("*/dashboard/test/confusion_matrix.png"))
    # --logger wandb then says what to install, in one line.
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--data.root", str(data_root), "--logger", "wandb"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == ["error: --logger wandb needs the wandb package: pip install -e '.[wandb]'"]


def test_two_runs_in_one_process_get_two_wandb_runs(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first run's W&B run is finished, so Lightning does not attach the second run to it."""
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main([*TINY, "--data.root", str(data_root), "--logger", "wandb"]) == 0
    run_dirs = sorted(path.name for path in tmp_path.glob("runs/*/wandb/offline-run-*"))
    assert len(run_dirs) == 2 and run_dirs[0][-8:] != run_dirs[1][-8:]
