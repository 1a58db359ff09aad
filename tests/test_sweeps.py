"""W&B sweep files: each one's command, as ``wandb agent`` builds it, parses with the training CLI."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import wandb  # a dev dependency: missing, these tests fail (a broken install) rather than skip
import yaml

from project.engine.cli import TemplateCLI
from project.engine.configs import expand_args

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "configs" / "sweep").glob("*.yaml"))

# What W&B's sweep configuration reference (docs.wandb.ai, "Sweep configuration options") allows.
TOP_LEVEL_KEYS = {"program", "entity", "project", "description", "name", "method", "metric", "parameters"}
TOP_LEVEL_KEYS |= {"early_terminate", "command", "run_cap"}
CONSTRAINT_KEYS = {"values", "value", "distribution", "probabilities", "min", "max", "mu", "sigma", "q", "parameters"}
DISTRIBUTIONS = {"constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values"}
DISTRIBUTIONS |= {"q_log_uniform", "q_log_uniform_values", "inv_log_uniform", "inv_log_uniform_values", "normal"}
DISTRIBUTIONS |= {"q_normal", "log_normal", "q_log_normal", "beta", "q_beta"}
COMMAND_MACROS = {"env", "interpreter", "program", "args", "args_no_hyphens", "args_no_boolean_flags", "args_json"}
COMMAND_MACROS |= {"args_json_file"}


def _agent_utils() -> Any:
    """Where ``wandb agent`` builds a run's command line (``wandb_agent.Agent._command_run``).

    wandb has no public API for it, so this reaches into an internal module; a wandb upgrade that moves it fails here,
    loudly, instead of skipping the tests that need it.
    """
    try:
        from wandb.sdk.launch.sweeps import utils
    except ImportError as error:
        raise AssertionError(
            f"wandb {wandb.__version__} has no wandb.sdk.launch.sweeps.utils, where `wandb agent` built the command"
            " line of a sweep run: find where wandb_agent.Agent._command_run builds it now and update _agent_command"
        ) from error
    missing = [name for name in ("create_sweep_command", "create_sweep_command_args") if not hasattr(utils, name)]
    assert not missing, (
        f"wandb {wandb.__version__}: wandb.sdk.launch.sweeps.utils lacks {missing}: update _agent_command"
    )
    return utils


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
    utils = _agent_utils()
    command = utils.create_sweep_command(list(sweep["command"]))
    macros = utils.create_sweep_command_args({"args": {key: {"value": v} for key, v in values.items()}})
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
def test_sweep_file_is_a_valid_sweep_configuration(path: Path) -> None:
    # What `wandb sweep` would refuse (it validates on the server, so not here, offline): the keys and values W&B's
    # sweep configuration reference documents.
    sweep = yaml.safe_load(path.read_text())
    assert {"program", "method", "parameters"} <= set(sweep) <= TOP_LEVEL_KEYS, set(sweep) - TOP_LEVEL_KEYS
    assert sweep["method"] in ("grid", "random", "bayes")
    assert "metric" in sweep, "bayes search and hyperband need a metric; the template's sweeps all optimize one"
    assert set(sweep["metric"]) <= {"name", "goal", "target"} and sweep["metric"]["goal"] in ("minimize", "maximize")
    assert isinstance(sweep["parameters"], dict) and sweep["parameters"]
    for name, spec in sweep["parameters"].items():
        assert isinstance(spec, dict) and spec and set(spec) <= CONSTRAINT_KEYS, (name, spec)
        assert spec.get("distribution", "categorical") in DISTRIBUTIONS, name
        if "values" in spec:
            assert isinstance(spec["values"], list) and spec["values"], name
        elif "value" not in spec:
            assert spec["min"] < spec["max"], name  # a range needs both bounds
            if spec.get("distribution", "").endswith("log_uniform_values"):
                assert spec["min"] > 0, name
        if sweep["method"] == "grid":  # grid search only takes discrete values
            assert "values" in spec or "value" in spec, name
    if "early_terminate" in sweep:
        stop = sweep["early_terminate"]
        assert stop["type"] == "hyperband" and set(stop) <= {"type", "min_iter", "max_iter", "s", "eta", "strict"}
        assert "min_iter" in stop or "max_iter" in stop
    assert isinstance(sweep.get("run_cap", 1), int) and sweep.get("run_cap", 1) > 0
    macros = [chunk[2:-1] for chunk in map(str, sweep["command"]) if chunk.startswith("${") and chunk.endswith("}")]
    assert set(macros) <= COMMAND_MACROS and macros.count("args") == 1, macros


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
