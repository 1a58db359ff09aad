"""Evaluate a checkpoint: ``python scripts/evaluate.py --ckpt runs/<run>/checkpoints/best.ckpt`` (see ``--help``)."""

import sys

from project.engine.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
