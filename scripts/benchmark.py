"""Training speed of the template against the textbook loop: ``python scripts/benchmark.py [--quick]``.

See ``src/project/benchmark.py`` for what is measured and ``--help`` for the options.
"""

import sys

from project.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
