"""The speed benchmark of the template (``python scripts/benchmark.py``); not part of the installed package."""
