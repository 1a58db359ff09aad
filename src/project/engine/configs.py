"""Short names and short flags: ``--model resnet`` is ``configs/model/resnet.yaml``, ``--precision`` is
``--trainer.precision``. Shared by every entry point; ``./configs`` (your project) is searched before the template's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from project.engine import rundir
from project.engine.errors import UserError, first_line

PACKAGE_CONFIGS = Path(__file__).resolve().parents[3] / "configs"

DEFAULT_MODEL = "mlp"
DEFAULT_DATA = {"resnet": "cifar10", "transfer": "cifar10"}  # every other model defaults to mnist
SHORT_FLAGS = {
    "--precision": "--trainer.precision",
    "--accelerator": "--trainer.accelerator",
    "--devices": "--trainer.devices",
    "--strategy": "--trainer.strategy",
    "--num_nodes": "--trainer.num_nodes",
    "--max_epochs": "--trainer.max_epochs",
    "--seed": "--seed_everything",
    "--model.ema_decay": "--ema_decay",  # a callback's, not the model's: the weights' average is Lightning's callback
}


# ---------------------------------------------------------------------------------------------- bounded YAML
#: A config is a few kilobytes; a run's config.yaml with 21,841 ImageNet-21k class names is about 400 KB.
MAX_CONFIG_BYTES = 4 * 2**20
#: Values (scalars and collections) after YAML aliases are expanded: bounds "billion laughs" and huge lists alike.
MAX_CONFIG_VALUES = 100_000
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when PyYAML has it: ~10x faster


def check_config_text(text: str, source: str) -> None:
    """Refuse a YAML text (from ``source``, named in the error) that is more than one document or expands, through
    its aliases, to more than :data:`MAX_CONFIG_VALUES` values; read as a stream of events, so it stops at the bound
    without building anything."""
    documents = total = 0
    anchors: dict[str, int] = {}  # anchor → how many values it expands to
    open_collections: list[tuple[str | None, int]] = []  # (anchor, total before it)
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise UserError(f"config {source} holds more than one YAML document: a config is one")
            elif isinstance(event, yaml.CollectionStartEvent):
                open_collections.append((event.anchor, total))
                total += 1
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, before = open_collections.pop()
                if anchor is not None:
                    anchors[anchor] = total - before
            elif isinstance(event, yaml.ScalarEvent):
                total += 1
                if event.anchor is not None:
                    anchors[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                total += anchors.get(event.anchor, 1)
            if total > MAX_CONFIG_VALUES:
                raise UserError(
                    f"config {source} holds more than {MAX_CONFIG_VALUES:,} values (with its YAML aliases expanded): "
                    "a config is bounded to that"
                )
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise UserError(f"config {source}: not valid YAML{where} ({problem})") from None


def read_config(path: str | os.PathLike[str]) -> str:
    """The text of a config file, refused (one line naming it) when it is too large or unbounded YAML."""
    try:
        size = os.path.getsize(path)
        if size > MAX_CONFIG_BYTES:
            limit = MAX_CONFIG_BYTES >> 20
            raise UserError(f"config {path} is {size / 2**20:.1f} MB: a config is bounded to {limit} MB")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"config {path}: cannot read it ({first_line(error)})") from None
    check_config_text(text, str(path))
    return text


def load_config(path: str | os.PathLike[str]) -> Any:
    """``yaml.safe_load`` of a config file within the bounds of :func:`read_config`."""
    return yaml.safe_load(read_config(path))


def check_config_files(args: Sequence[str]) -> None:
    """Every config file a command line names (``--config FILE``, a ``--model``/``--data`` YAML, a run's
    ``config.yaml`` on resume) within the bounds, before the parser (jsonargparse) reads any of it."""
    for index, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag == "--config" and eq:
            arg = value
        elif not (arg.endswith((".yaml", ".yml")) or (index > 0 and args[index - 1] == "--config")):
            continue
        if os.path.isfile(arg):
            read_config(arg)


def config_dirs() -> list[Path]:
    """Where short names are looked up: ``./configs`` first (your project), then the template's own."""
    dirs = [Path.cwd() / "configs", PACKAGE_CONFIGS]
    return list(dict.fromkeys(path.resolve() for path in dirs if path.is_dir()))


def short_names(group: str) -> dict[str, Path]:
    """``{name: yaml}`` for every ``configs/<group>/<name>.yaml``; earlier directories win."""
    names: dict[str, Path] = {}
    for directory in reversed(config_dirs()):
        names.update({path.stem: path for path in sorted((directory / group).glob("*.yaml"))})
    return names


def _resolve_name(group: str, value: str) -> str:
    """A short name → its YAML; a class path or a YAML file passes through; anything else is an error."""
    names = short_names(group)
    if value in names:
        return str(names[value])
    if "." in value or "/" in value or value[:1].isupper():
        return value  # a class path, a class name or a config file: the parser validates it
    raise UserError(
        f"unknown --{group} {value!r}: choose one of {', '.join(sorted(names))}, or give a class path "
        f"(e.g. my_package.MyModel) or a YAML file"
    )


def expand_args(argv: list[str]) -> list[str]:
    """Rewrite the template's short forms into plain LightningCLI arguments."""
    args: list[str] = []
    for arg in argv:  # --flag=value → --flag value, for the flags rewritten below
        flag, eq, value = arg.partition("=")
        if eq and flag in {"--model", "--data", "--resume", *SHORT_FLAGS}:
            args += [flag, value]
        else:
            args.append(arg)

    out: list[str] = []
    model_name = data_name = whole_config = None
    index = 0
    while index < len(args):
        arg = args[index]
        value = args[index + 1] if index + 1 < len(args) else None
        if arg in ("--model", "--data") and value is not None and not value.startswith("--"):
            group, path = arg[2:], _resolve_name(arg[2:], value)
            if group == "model":
                model_name, whole_config = value, path if is_whole_config(path) else None
            else:
                data_name = value
            if not (group == "model" and whole_config):
                out += [arg, path]
            index += 2
            continue
        if arg in SHORT_FLAGS and value is not None:
            if arg == "--precision" and value == "auto":
                value = "null"
            out += [SHORT_FLAGS[arg], value]
            index += 2
            continue
        if arg == "--compile":
            out += ["--model.compile", "true"]
            index += 1
            continue
        out.append(arg)
        index += 1

    for group in ("--model", "--data"):
        out = _choice_before_options(out, group)
    # Defaults go first so that --config files and explicit flags, which come later, override them.
    defaults: list[str] = []
    if model_name is None:
        path = _resolve_name("model", DEFAULT_MODEL)
        whole_config = path if is_whole_config(path) else None
        if whole_config is None:
            defaults += ["--model", path]
    if whole_config is not None:  # before every flag, which override it
        defaults += ["--config", whole_config]
    if data_name is None:
        data_default = DEFAULT_DATA.get(model_name or DEFAULT_MODEL, "mnist")
        defaults += ["--data", _resolve_name("data", data_default)]
    resume = rundir.flag_value(out, "--resume")
    if resume is not None:
        root = rundir.flag_value(out, "--trainer.default_root_dir") or "runs"
        run_dir, _ = rundir.find_resume_checkpoint(resume, root)
        # The run's own config comes right after the defaults: the run continues as it was configured.
        defaults += ["--config", str(run_dir / rundir.CONFIG), "--run_dir", str(run_dir)]
    check_config_files(defaults + out)
    return defaults + out


def is_whole_config(path: str) -> bool:
    """Whether a model's YAML is a whole config (``model:`` and the ``trainer:`` settings that go with it, e.g. its
    number of epochs), as the template's are, rather than a class path and its arguments. It is passed as
    ``--config``."""
    if not path.endswith((".yaml", ".yml")) or not Path(path).is_file():
        return False
    loaded = load_config(path)
    return isinstance(loaded, dict) and "model" in loaded


def _choice_before_options(args: list[str], group: str) -> list[str]:
    """Move ``--model X`` before the first ``--model.*`` option: jsonargparse needs the class before its options."""
    choices = [i for i, arg in enumerate(args[:-1]) if arg == group]
    options = [i for i, arg in enumerate(args) if arg.startswith(group + ".")]
    if not choices or not options or choices[-1] < options[0]:
        return args
    choice = args[choices[-1] : choices[-1] + 2]
    rest = args[: choices[-1]] + args[choices[-1] + 2 :]
    return rest[: options[0]] + choice + rest[options[0] :]


def named_data_config(data: str) -> tuple[str, dict[str, Any]]:
    """``(class_path, init_args)`` of ``--data NAME`` (a short name, a YAML file or a class path), as in training."""
    names = short_names("data")  # the training CLI's lookup: ./configs first, then the template's
    path = names.get(data) or (Path(data) if data.endswith((".yaml", ".yml")) else None)
    if path is None:
        if "." not in data:
            raise UserError(f"unknown --data {data!r}: choose one of {', '.join(sorted(names))}, or a class path")
        return data, {}
    config = load_config(path) or {}
    if not isinstance(config, dict) or "class_path" not in config:
        raise UserError(f"--data {data}: {path} has no class_path")
    return config["class_path"], dict(config.get("init_args") or {})


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """``--data.KEY VALUE`` / ``--data.KEY=VALUE`` pairs as ``{KEY: value}``, values read as YAML (``64`` → 64)."""
    overrides: dict[str, Any] = {}
    index = 0
    while index < len(tokens):
        flag, eq, value = tokens[index].partition("=")
        if not flag.startswith("--data.") or len(flag) == len("--data."):
            raise UserError(f"unrecognized argument {tokens[index]!r} (see --help)")
        if not eq:
            if index + 1 >= len(tokens):
                raise UserError(f"{flag} needs a value")
            value = tokens[index + 1]
            index += 1
        overrides[flag.removeprefix("--data.")] = yaml.safe_load(value) if value else value
        index += 1
    return overrides
