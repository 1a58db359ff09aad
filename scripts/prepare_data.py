"""Write a data set's shards once, for ``--data streaming``: ``python scripts/prepare_data.py --data folder
--data.root data/images --output data/shards`` (see ``--help`` and the README)."""

import sys

from project.engine.prepare import main

if __name__ == "__main__":
    sys.exit(main())
