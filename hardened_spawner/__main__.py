"""``python -m hardened_spawner``: the same as the ``hardened-spawner`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
