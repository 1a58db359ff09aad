"""Training speed of the template against the textbook loop: ``python scripts/benchmark.py [--quick]``.

See ``benchmarks/benchmark.py`` for what is measured and ``--help`` for the options. The benchmark lives in
``benchmarks/`` next to its measurements, outside the installed package: the repository root goes on the path.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
