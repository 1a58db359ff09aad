"""Serve a model over HTTP: ``python scripts/serve.py --ckpt runs/<run>/checkpoints/best.ckpt`` (see ``--help``)."""

import sys

from project.engine.serve import main

if __name__ == "__main__":
    sys.exit(main())
