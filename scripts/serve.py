"""Serve a model over HTTP: ``python scripts/serve.py --ckpt runs/<run>/checkpoints/best.ckpt`` (see ``--help``)."""

import sys

if __name__ == "__main__":
    # Imported here, not at the top: LitServe's spawned processes import this file again (as __mp_main__), and its
    # logger process needs none of torch and Lightning (about 0.5 GB less memory).
    from project.engine.serve import main

    sys.exit(main())
