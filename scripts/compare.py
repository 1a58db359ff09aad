"""Compare runs: ``python scripts/compare.py runs/a runs/b`` (learning curves in one PNG, a table of final metrics)."""

import sys

from project.engine.compare import main

if __name__ == "__main__":
    sys.exit(main())
