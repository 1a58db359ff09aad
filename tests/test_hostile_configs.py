"""Configs from someone else are bounded (``project.engine.configs.read_config``): YAML aliases ("billion laughs"),
several documents, huge lists and huge files are one line naming the file, exit code 2, before anything is built."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import TINY, run_train

from project.engine import evaluate
from project.engine.cli import main as train
from project.engine.configs import MAX_CONFIG_VALUES


def billion_laughs() -> str:
    """438 bytes that expand to 9⁹ (387 million) values: each level is nine aliases of the one before."""
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for level in range(1, 9):
        lines.append(f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 9)}]")
    return "\n".join(lines) + "\nmodel:\n  init_args:\n    hidden_sizes: *a8\n"


HOSTILE = {
    "aliases": billion_laughs(),
    "documents": "trainer:\n  max_epochs: 1\n" + "---\ntrainer:\n  max_epochs: 2\n" * 1000,
    "huge-list": "model:\n  init_args:\n    hidden_sizes: [" + "1, " * (MAX_CONFIG_VALUES + 1) + "1]\n",
    "huge-file": "# padding\n" * 500_000 + "trainer:\n  max_epochs: 1\n",
    "not-yaml": "model: [unclosed\n",
}
EXPECTED = {
    "aliases": "values (with its YAML aliases expanded)",
    "documents": "more than one YAML document",
    "huge-list": "values (with its YAML aliases expanded)",
    "huge-file": "a config is bounded to 4 MB",
    "not-yaml": "not valid YAML at line",
}


def _one_error(err: str) -> str:
    errors = [line for line in err.strip().splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: config "), err[-2000:]
    return errors[0]


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_config_file_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    config = tmp_path / f"{kind}.yaml"
    config.write_text(HOSTILE[kind])
    monkeypatch.chdir(tmp_path)
    assert train(["--config", str(config), "--run_dir", str(tmp_path / "run")]) == 2
    error = _one_error(capsys.readouterr().err)
    assert str(config) in error and EXPECTED[kind] in error
    assert not (tmp_path / "run").exists()


def test_a_config_within_the_bounds_with_aliases_still_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_root: Path
) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text("model:\n  init_args:\n    hidden_sizes: &s [32, 16]\ntrainer:\n  max_epochs: 1\n")
    monkeypatch.chdir(tmp_path)
    args = [*TINY, "--data.root", str(data_root), "--data.download", "false", "--run_dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as printed:
        train(["--config", str(config), *args, "--print_config"])
    assert printed.value.code == 0
    out = capsys.readouterr().out
    assert "hidden_sizes:\n    - 32\n    - 16" in out or "hidden_sizes:\n      - 32\n      - 16" in out, out


def test_a_runs_config_yaml_is_bounded_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], data_root: Path
) -> None:
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    assert train([*TINY, "--data.root", str(data_root), "--run_dir", str(run)]) == 0
    capsys.readouterr()
    last = (run / "checkpoints" / "last.ckpt").read_bytes()
    (run / "config.yaml").write_text(billion_laughs())
    assert train(["--resume", str(run), "--max_epochs", "2"]) == 2
    error = _one_error(capsys.readouterr().err)
    assert str(run / "config.yaml") in error and EXPECTED["aliases"] in error
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == last  # nothing saved is lost

    # evaluate.py's --data FILE goes through the same loader
    bomb = tmp_path / "data.yaml"
    bomb.write_text(billion_laughs())
    shutil.copy(run / "checkpoints" / "best.ckpt", tmp_path / "best.ckpt")
    assert evaluate.main(["--ckpt", str(tmp_path / "best.ckpt"), "--data", str(bomb)]) == 2
    assert str(bomb) in _one_error(capsys.readouterr().err)


def test_billion_laughs_in_a_real_process_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "laughs.yaml"
    config.write_text(billion_laughs())
    result = run_train(["--config", str(config)], cwd=tmp_path, timeout=300)  # a hang guard, not a speed limit
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and str(config) in _one_error(result.stderr)
