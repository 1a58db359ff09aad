"""The boundary between the recipe side (models, data modules, callbacks, configs) and the engine.

The recipe side imports from the engine only the names of ``project.engine.api``; a config sets only what differs
from the code's defaults, so a network's defaults live in one place.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from project.engine import api

SOURCE = Path(__file__).resolve().parents[1] / "src" / "project"
RECIPE_PACKAGES = ("models", "datamodules", "callbacks")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def engine_imports(path: Path) -> list[tuple[int, str, str]]:
    """``(line, module, name)`` of every ``project.engine`` import in a file (``name`` empty for ``import X``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            if node.module == "project" and any(alias.name == "engine" for alias in node.names):
                found.append((node.lineno, "project", "engine"))
            elif node.module.startswith("project.engine"):
                found += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, "") for alias in node.names if alias.name.startswith("project.engine")]
    return found


def recipe_files() -> list[Path]:
    return sorted(path for package in RECIPE_PACKAGES for path in (SOURCE / package).rglob("*.py"))


def test_the_recipe_side_imports_only_the_engines_public_api() -> None:
    assert len(recipe_files()) > 15  # the walk found the recipe side
    allowed = set(api.__all__)
    breaches = [
        f"{path.relative_to(SOURCE)}:{line}: {module} {name}".strip()
        for path in recipe_files()
        for line, module, name in engine_imports(path)
        if module != "project.engine.api" or name not in allowed
    ]
    assert not breaches, "the recipe side reaches into the engine:\n" + "\n".join(breaches)


def test_the_contract_check_sees_every_form_of_import(tmp_path: Path) -> None:
    # The oracle for the check above: each way of reaching past the API is found, the API itself is not.
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from project.engine.api import Batch\n"
        "from project.engine.compat import use_fused_kernel\n"
        "from project.engine import fastpath\n"
        "from project import engine\n"
        "import project.engine.cli\n"
        "def f():\n    from project.engine.checkpoint import load_model\n"
    )
    assert engine_imports(sample) == [
        (1, "project.engine.api", "Batch"),
        (2, "project.engine.compat", "use_fused_kernel"),
        (3, "project.engine", "fastpath"),
        (4, "project", "engine"),
        (5, "project.engine.cli", ""),
        (7, "project.engine.checkpoint", "load_model"),
    ]


def test_every_api_name_exists() -> None:
    for name in api.__all__:
        assert getattr(api, name) is not None


def constructor_defaults(cls: type) -> dict[str, object]:
    """The defaults of a class's constructor arguments, following ``**kwargs`` up to the base classes."""
    defaults: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for name, parameter in inspect.signature(init).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                defaults[name] = parameter.default
    return defaults


@pytest.mark.parametrize("path", sorted((CONFIGS / "model").glob("*.yaml")) + sorted((CONFIGS / "data").glob("*.yaml")))
def test_a_config_sets_only_what_differs_from_the_code(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    config = config.get("model", config) if path.parent.name == "model" else config
    module_name, _, class_name = config["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    defaults = constructor_defaults(cls)
    for key, value in (config.get("init_args") or {}).items():
        assert key in defaults, f"{path.name}: {key} is not an argument of {class_name}"
        default = defaults[key]
        same = list(value) == list(default) if isinstance(default, (list, tuple)) else value == default
        assert not same, f"{path.name}: {key}: {value!r} repeats {class_name}'s default; set it in one place"
