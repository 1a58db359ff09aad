"""``--help`` as plain text: the docstrings it is made of (Lightning's, the template's) are written in reStructuredText,
whose markup (``code``, :class:`Name`) means nothing on a terminal."""

from __future__ import annotations

import re
from typing import Any

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser

#: ``:class:`datetime.timedelta``` → ``datetime.timedelta``; ``:meth:`~a.b.c``` → ``c``; ```code``` → ``code``.
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]*)``")


def plain(text: str) -> str:
    """reStructuredText's inline markup removed: roles keep their target (the last part after ``~``), literals
    their text."""

    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        return target.rsplit(".", 1)[-1] if "`~" in match.group(0) else target

    return _LITERAL.sub(r"\1", _ROLE.sub(role, text))


class PlainHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's formatter, with every heading, description and option help as :func:`plain` text."""

    def start_section(self, heading: str | None) -> None:
        super().start_section(plain(heading) if heading else heading)

    def _expand_help(self, action: Any) -> str:
        return plain(super()._expand_help(action))

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain(text))


class PlainHelpParser(LightningArgumentParser):
    """LightningCLI's parser with :class:`PlainHelpFormatter`, also for the parsers jsonargparse makes of it
    (``--model.help CLASS``, ``--data.help CLASS``: ``type(parser)(description=...)``)."""

    def __init__(self, *args: Any, formatter_class: type = PlainHelpFormatter, **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
