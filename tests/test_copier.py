"""A project of your own with copier: ``copier copy`` from a release of this template, your edits, then
``copier update`` to a later release brings its changes and keeps yours."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import copier
import jinja2
import processes
import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
ANSWERS = {"project_name": "leaf-disease", "description": "Leaves, sick or not.", "author_name": "A. Botanist"}
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org"}
GIT_IDENTITY |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}


def _git(cwd: Path, *args: str) -> str:
    result = processes.run(["git", *args], 60, cwd=cwd, env={**os.environ, **GIT_IDENTITY})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template's files as they are here (tracked and new, not ignored), as release v1 of a git repository."""
    root = tmp_path_factory.mktemp("template")
    files = _git(REPO, "ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "release 1")
    _git(root, "tag", "v1")
    return root


def test_copy_edit_update_brings_the_release_and_keeps_your_edit(template: Path, tmp_path: Path) -> None:
    mine = tmp_path / "leaf-disease"
    copier.run_copy(str(template), mine, data=ANSWERS, vcs_ref="v1", defaults=True, quiet=True)
    metadata = tomllib.loads((mine / "pyproject.toml").read_text())["project"]
    assert (metadata["name"], metadata["description"]) == ("leaf-disease", "Leaves, sick or not.")
    assert metadata["authors"] == [{"name": "A. Botanist"}]
    assert (mine / "src" / "project" / "models" / "mlp.py").read_text() == (
        template / "src" / "project" / "models" / "mlp.py"
    ).read_text()  # the import package stays project
    assert not (mine / "copier.yml").exists() and not (mine / "pyproject.toml.jinja").exists()
    assert yaml.safe_load((mine / ".copier-answers.yml").read_text())["_commit"] == "v1"

    # Your change to a model, committed (copier updates a clean working tree).
    _git(mine, "init", "-q")
    mlp = mine / "src" / "project" / "models" / "mlp.py"
    mlp.write_text(mlp.read_text() + "\n# my own note on the MLP\n")
    _git(mine, "add", "-A")
    _git(mine, "commit", "-q", "-m", "my project")

    # Release 2 of the template changes another model.
    cnn = template / "src" / "project" / "models" / "cnn.py"
    cnn.write_text(cnn.read_text() + "\n# release 2 of the template\n")
    _git(template, "commit", "-q", "-am", "release 2")
    _git(template, "tag", "v2")
    try:
        copier.run_update(mine, vcs_ref="v2", defaults=True, overwrite=True, quiet=True)
    finally:
        _git(template, "reset", "-q", "--hard", "v1")  # the module's template stays release 1
        _git(template, "tag", "-d", "v2")
    assert (mine / "src" / "project" / "models" / "cnn.py").read_text().endswith("# release 2 of the template\n")
    assert mlp.read_text().endswith("# my own note on the MLP\n")
    assert yaml.safe_load((mine / ".copier-answers.yml").read_text())["_commit"] == "v2"
    assert tomllib.loads((mine / "pyproject.toml").read_text())["project"]["name"] == "leaf-disease"
    assert not list(mine.rglob("*.rej")) and "<<<<<<<" not in mlp.read_text()


def test_the_template_pyproject_is_its_own_copy_with_the_templates_answers() -> None:
    # pyproject.toml.jinja is what a copy gets; rendered with the template's own answers it is pyproject.toml.
    ours = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    answers = {"project_name": ours["name"], "description": ours["description"]}
    answers["author_name"] = ours["authors"][0]["name"]
    environment = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    rendered = environment.from_string((REPO / "pyproject.toml.jinja").read_text()).render(answers)
    assert rendered == (REPO / "pyproject.toml").read_text()


def test_copier_answers_validate_the_project_name(template: Path, tmp_path: Path) -> None:
    with pytest.raises((ValueError, subprocess.CalledProcessError, copier.errors.CopierError)):
        copier.run_copy(
            str(template), tmp_path / "x", data={**ANSWERS, "project_name": "no spaces"}, vcs_ref="v1", defaults=True
        )
