"""What a misspelt option may have meant: ``--model.hiden_sizes`` → ``did you mean --model.hidden_sizes?``.

jsonargparse says only that an option "is not accepted" or "unrecognized"; the close matches come from
:mod:`difflib`, among the options of the class (``--model``, ``--data``) or of the whole command line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from jsonargparse import ArgumentError, ArgumentParser

from project.engine import compat
from project.engine.configs import SHORT_FLAGS
from project.engine.errors import explain
from project.engine.options import FROM_THE_DATA, import_class

_NOT_ACCEPTED = re.compile(r"Problem with given class_path '([\w.]+)':\s*Option '([\w.]+)' is not accepted")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (--[^\s=]+)")


def explain_parse_error(error: ArgumentError, parser: ArgumentParser) -> str:
    """:func:`~project.engine.errors.explain`'s one line, with the close matches of an unknown option."""
    text = str(error)
    unknown = _NOT_ACCEPTED.search(text)
    group = re.match(r'Parser key "(\w+)"', text)
    if unknown and group:
        class_path, name = unknown.groups()
        prefix = f"--{group.group(1)}."
        options = class_options(class_path)
        if group.group(1) == "model":
            options = [option for option in options if option not in FROM_THE_DATA]
        problem = f"{prefix}{name}: {class_path.rsplit('.', 1)[-1]} has no option {name!r}"
        return problem + _close(name, options, prefix, list_all=True)
    unrecognized = _UNRECOGNIZED.search(text)
    if unrecognized:
        # Compared within the flag's group (--trainer.): the common prefix would make every option look close.
        group, dot, name = unrecognized.group(1).rpartition(".")
        prefix = group + dot if dot else "--"
        # The short forms are rewritten before the parser sees them: they are options too.
        flags = [*compat.option_strings(parser), *(flag for flag in SHORT_FLAGS if "." not in flag), "--compile"]
        options = [flag.removeprefix(prefix) for flag in flags if flag.startswith(prefix)]
        return explain(error) + _close(name or unrecognized.group(1), options, prefix, list_all=False)
    return explain(error)


def class_options(class_path: str) -> list[str]:
    """The arguments the command line accepts for ``class_path``, as jsonargparse reads its signature."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(import_class(class_path, object, "class"))
    return sorted(name for name in compat.argument_names(parser) if name not in ("help", "__default_config__"))


def _close(name: str, options: Iterable[str], prefix: str, list_all: bool) -> str:
    options = list(options)
    matches = difflib.get_close_matches(name, options, n=3, cutoff=0.7)
    if matches:
        return f"; did you mean {' or '.join(prefix + match for match in matches)}?"
    return f"; its options: {', '.join(options)}" if list_all else ""
