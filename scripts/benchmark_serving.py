"""Serving speed of ``scripts/serve.py``: ``python scripts/benchmark_serving.py`` (see ``benchmarks/serving.py``).

The benchmark lives in ``benchmarks/`` next to its measurements, outside the installed package: the repository root
goes on the path.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.serving import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
