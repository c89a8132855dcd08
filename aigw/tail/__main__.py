"""``python -m aigw.tail``: :func:`aigw.tail.cli.main`."""

import sys

from aigw.tail.cli import main

if __name__ == "__main__":
    sys.exit(main())
