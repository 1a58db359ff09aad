"""W&B sweep files: each one's command, as ``wandb agent`` builds it, parses with the training CLI."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from project.cli import TemplateCLI
from project.configs import expand_args

wandb_sweep_utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "configs" / "sweep").glob("*.yaml"))


def _sample(spec: dict[str, Any], rng: random.Random) -> Any:
    """One value of a sweep parameter, as the sweep controller would pick it."""
    if "values" in spec:
        return rng.choice(spec["values"])
    if "value" in spec:
        return spec["value"]
    low, high = spec["min"], spec["max"]
    distribution = spec.get("distribution", "int_uniform" if isinstance(low, int) else "uniform")
    if distribution == "log_uniform_values":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if distribution == "uniform":
        return rng.uniform(low, high)
    if distribution == "int_uniform":
        return rng.randint(low, high)
    raise AssertionError(f"no sampler for distribution {distribution!r}: add one to this test")


def _agent_command(sweep: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The command line ``wandb agent`` runs for these values (wandb_agent.Agent._command_run, without Popen)."""
    command = wandb_sweep_utils.create_sweep_command(list(sweep["command"]))
    macros = wandb_sweep_utils.create_sweep_command_args({"args": {key: {"value": v} for key, v in values.items()}})
    macros.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    expanded: list[str] = []
    for chunk in map(str, command):
        expanded += macros[chunk[2:-1]] if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return expanded


def _config_value(config: dict[str, Any], parameter: str) -> Any:
    """``model.lr`` (or ``model.init_args.lr``) → ``config["model"]["init_args"]["lr"]``."""
    keys = parameter.split(".")
    if keys[0] in ("model", "data") and keys[1] != "init_args":
        keys.insert(1, "init_args")
    node = config
    for key in keys:
        node = node[key]
    return node


def test_there_are_sweeps() -> None:
    assert {path.stem for path in SWEEPS} >= {"lr_batch", "resnet_finetune"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda path: path.stem)
def test_sweep_command_parses_with_the_cli(
    path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("random", "grid", "bayes")
    assert (REPO / sweep["program"]).is_file()
    assert sweep["metric"]["name"] == "val/acc"  # a key the W&B logger really logs
    assert "${args}" in sweep["command"] and "--logger=wandb" in sweep["command"]

    values = {name: _sample(spec, random.Random(name)) for name, spec in sweep["parameters"].items()}
    command = _agent_command(sweep, values)
    assert command[:3] == ["/usr/bin/env", "python", sweep["program"]]
    assert all(f"--{name}={value}" in command for name, value in values.items())  # W&B's --key=value form

    monkeypatch.chdir(REPO)  # the agent runs from the repository root
    with pytest.raises(SystemExit) as exit_info:
        TemplateCLI(expand_args([*command[3:], "--print_config"]))
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    for name, value in values.items():
        assert _config_value(config, name) == pytest.approx(value), name
    assert config["logger"] == "wandb"
