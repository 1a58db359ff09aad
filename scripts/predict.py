"""Classify images: ``python scripts/predict.py --ckpt runs/<run>/checkpoints/best.ckpt IMAGE_OR_FOLDER...``."""

import sys

from project.engine.predict import main

if __name__ == "__main__":
    sys.exit(main())
