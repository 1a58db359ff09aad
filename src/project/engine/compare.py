"""``scripts/compare.py RUN_DIR...``: the runs' learning curves in one PNG and a table of their final metrics.

Reads only what every run writes (``metrics.csv`` and ``summary.json``), so it works without W&B and for runs of any
logger that also wrote the CSV (the default).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from project.engine.entrypoint import ArgumentParser, run_main
from project.engine.errors import UserError

#: The curves drawn, one panel each: (metrics.csv column, panel title).
CURVES = (("val/acc", "validation accuracy"), ("val/loss", "validation loss"), ("train/loss_epoch", "training loss"))
COLUMNS = ("run", "model", "epochs", "best_val_acc", "test_acc", "test_loss", "wall_time_s")


def read_run(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict]:
    """``({column: [(epoch, value), ...]}, summary)`` of one run directory."""
    metrics, summary = run_dir / "metrics.csv", run_dir / "summary.json"
    if not metrics.is_file():
        raise UserError(f"{run_dir}: no metrics.csv (not a run directory, or a run logged elsewhere only)")
    curves: dict[str, list[tuple[int, float]]] = {column: [] for column, _ in CURVES}
    with metrics.open(newline="") as file:
        for row in csv.DictReader(file):
            for column in curves:
                if row.get(column):
                    curves[column].append((int(float(row["epoch"])), float(row[column])))
    return curves, json.loads(summary.read_text()) if summary.is_file() else {}


def compare(run_dirs: Sequence[Path], output: Path) -> list[dict]:
    """Draw every run's curves into ``output`` (PNG); return the table's rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(path, *read_run(path)) for path in run_dirs]
    figure, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 4))
    for axis, (column, title) in zip(axes, CURVES, strict=True):
        for path, curves, _ in runs:
            if curves[column]:
                epochs, values = zip(*curves[column], strict=True)
                axis.plot(epochs, values, marker="o", label=path.name)
        axis.set(title=title, xlabel="epoch")
        axis.legend(fontsize="small")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80)
    plt.close(figure)
    rows = []
    for path, _, summary in runs:
        rows.append({"run": path.name, **{key: summary.get(key) for key in COLUMNS[1:]}})
    return rows


def format_table(rows: list[dict]) -> str:
    def cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else "n/a" if value is None else str(value)

    cells = [list(COLUMNS)] + [[cell(row[key]) for key in COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)) for line in cells)


def _main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="compare.py", description="Compare runs: learning curves (PNG) and final metrics.")
    parser.add_argument("run_dirs", nargs="+", type=Path, help="Run directories (runs/<name>).")
    parser.add_argument("--output", type=Path, default=Path("compare.png"), help="The PNG (default: compare.png).")
    args = parser.parse_args(argv)
    rows = compare(args.run_dirs, args.output)
    print(format_table(rows))
    print(f"learning curves: {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/compare.py``: returns the exit code (2 for user mistakes, with one ``error:`` line)."""
    return run_main(_main, argv)
