"""Train a model: ``python scripts/train.py --model resnet`` (see ``--help`` and the README)."""

import sys

from project.engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
