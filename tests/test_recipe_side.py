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
from project.engine import data as data_api

SOURCE = Path(__file__).resolve().parents[1] / "src" / "project"
RECIPE_PACKAGES = ("models", "datamodules", "callbacks")
PROJECT_PACKAGES = tuple(f"project.{path.name}" for path in SOURCE.iterdir() if (path / "__init__.py").exists())
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def module_name(path: Path) -> str:
    """``project.engine.cli`` for ``src/project/engine/cli.py`` (a package's ``__init__.py`` is the package)."""
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str, str]]:
    """``(line, absolute module, name)`` of every import in a file (``name`` empty for ``import X``); relative imports
    resolved against the file's package, and ``from project import engine`` read as the module ``project.engine``."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                # ``from project import engine`` / ``from . import shards``: the name may be a module itself.
                if module in ("project", *PROJECT_PACKAGES) or node.module is None:
                    found.append((node.lineno, f"{module}.{alias.name}", ""))
                else:
                    found.append((node.lineno, module, alias.name))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, "") for alias in node.names]
    return [entry for entry in found if entry[1] == "project" or entry[1].startswith("project.")]


def engine_imports(path: Path) -> list[tuple[int, str, str]]:
    """The imports of ``project.engine`` (any part of it) in a file."""
    return [entry for entry in imports(path) if _within(entry[1], "project.engine")]


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def recipe_files() -> list[Path]:
    return sorted(path for package in RECIPE_PACKAGES for path in (SOURCE / package).rglob("*.py"))


def engine_files() -> list[Path]:
    return sorted((SOURCE / "engine").rglob("*.py"))


#: The public API of the engine: its modules the recipe side may import, each only the names of its ``__all__``.
PUBLIC = {"project.engine.api": set(api.__all__), "project.engine.data": set(data_api.__all__)}


def test_the_recipe_side_imports_only_the_engines_public_api() -> None:
    assert len(recipe_files()) > 10  # the walk found the recipe side
    breaches = [
        f"{path.relative_to(SOURCE)}:{line}: {module} {name}".strip()
        for path in recipe_files()
        for line, module, name in engine_imports(path)
        if name not in PUBLIC.get(module, ())
    ]
    assert not breaches, "the recipe side reaches into the engine:\n" + "\n".join(breaches)


def test_the_engine_imports_nothing_of_the_recipe_side() -> None:
    assert len(engine_files()) > 30  # the walk found the engine
    breaches = [
        f"{path.relative_to(SOURCE)}:{line}: {module} {name}".strip()
        for path in engine_files()
        for line, module, name in imports(path)
        if any(_within(module, f"project.{package}") for package in RECIPE_PACKAGES)
    ]
    assert not breaches, "the engine imports the recipe side:\n" + "\n".join(breaches)


def test_the_contract_check_sees_every_form_of_import(tmp_path: Path) -> None:
    # The oracle for the checks above: each way of reaching across the boundary is found, wherever the file is.
    sample = SOURCE / "engine" / "data" / "_sample_for_test.py"
    sample.write_text(
        "from project.engine.api import Batch\n"
        "from project.engine.compat import use_fused_kernel\n"
        "from project.engine import fastpath\n"
        "from project import engine\n"
        "import project.engine.cli\n"
        "def f():\n    from project.engine.checkpoint import load_model\n"
        "from ...datamodules.base import ImageDataModule\n"
        "from .. import cli\n"
        "from . import shards\n"
        "from ...models import MLP\n"
        "import numpy\n"
    )
    try:
        found = imports(sample)
    finally:
        sample.unlink()
    assert found == [
        (1, "project.engine.api", "Batch"),
        (2, "project.engine.compat", "use_fused_kernel"),
        (3, "project.engine.fastpath", ""),
        (4, "project.engine", ""),
        (5, "project.engine.cli", ""),
        (8, "project.datamodules.base", "ImageDataModule"),
        (9, "project.engine.cli", ""),
        (10, "project.engine.data.shards", ""),
        (11, "project.models.MLP", ""),
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
