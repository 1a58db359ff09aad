"""What the command-line entry points (evaluate, predict, export) share: their argument parser, how a user's
mistake ends the command (one ``error:`` line, exit code 2) and where a checkpoint's run directory is.

The entry points stand on this module and the library, never on each other.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from project.engine import compat, rundir
from project.engine.errors import UserError

#: The ``--ckpt`` help of every entry point.
CKPT_HELP = "Checkpoint file (e.g. runs/<run>/checkpoints/best.ckpt)."


class ArgumentParser(argparse.ArgumentParser):
    """argparse with mistakes raised as :class:`UserError`: one ``error: ...`` line, exit code 2, no usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see --help)")


def own_modules_importable() -> None:
    """Your modules (``--model my_models.TinyNet``, ``--data my_data.Stripes``) import from the working directory, the
    project's root, without ``PYTHONPATH=.``: ``python scripts/x.py`` puts only ``scripts/`` on the path. Last on the
    path, so that a file of yours never hides an installed package of the same name."""
    cwd = os.getcwd()
    if cwd not in sys.path and os.path.abspath(cwd) not in map(os.path.abspath, sys.path):
        sys.path.append(cwd)


def run_main(main: Callable[[list[str]], int], argv: Sequence[str] | None) -> int:
    """Call ``main(argv)`` (``sys.argv[1:]`` by default); print a :class:`UserError` as one line, return its code."""
    compat.quiet_lightning_notices()
    own_modules_importable()
    try:
        return main(list(sys.argv[1:] if argv is None else argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


def checkpoint_run_dir(checkpoint: str | Path) -> Path:
    """The run directory a checkpoint belongs to (:func:`project.engine.rundir.run_dir_of`), as an absolute path."""
    return rundir.run_dir_of(Path(checkpoint).resolve())
