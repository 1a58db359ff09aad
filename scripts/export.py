"""Export a checkpoint: ``python scripts/export.py --ckpt runs/<run>/checkpoints/best.ckpt --format onnx``."""

import sys

from project.engine.export import main

if __name__ == "__main__":
    sys.exit(main())
