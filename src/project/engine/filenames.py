"""File names as text that any file can hold: Linux allows names whose bytes are not UTF-8 (e.g. ``b"caf\\xe9.png"``).

Python decodes such a name to a string with lone surrogates (``"caf\\udce9.png"``), which no UTF-8 file, table or
terminal accepts. Everything the project writes (CSV, JSON, the dashboard's tables, W&B tables) therefore passes
names through :func:`escape_name`: each byte that is not UTF-8 becomes ``\\xNN`` (Python's ``backslashreplace``),
the rest is unchanged, and :func:`unescape_name` gives the name back (as long as the name itself has no ``\\xNN``).
"""

from __future__ import annotations

import os
import re
from typing import Any

_ESCAPED_BYTE = re.compile(rb"\\x([0-9a-f]{2})")


def escape_name(name: str | os.PathLike[str]) -> str:
    """``name`` as valid Unicode text: its bytes as the file system has them, those that are not UTF-8 as ``\\xNN``."""
    text = os.fspath(name)
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:  # a surrogate no file name decodes to (e.g. read from JSON): escaped as \udcNN
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def unescape_name(text: str) -> str:
    """The name :func:`escape_name` wrote as ``text``, as Python's ``os`` functions take it."""
    return os.fsdecode(_ESCAPED_BYTE.sub(lambda match: bytes.fromhex(match.group(1).decode()), text.encode("utf-8")))


def escape_names(value: Any) -> Any:
    """``value`` with every string and path in it (through dicts, lists, tuples) passed through :func:`escape_name`."""
    if isinstance(value, (str, os.PathLike)):
        return escape_name(value)
    if isinstance(value, dict):
        return {escape_names(key): escape_names(item) for key, item in value.items()}
    if isinstance(value, list):
        return [escape_names(item) for item in value]
    if isinstance(value, tuple):
        return tuple(escape_names(item) for item in value)
    return value
