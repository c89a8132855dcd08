"""``python -m aigw``."""

import sys

from aigw.cli import main

sys.exit(main())
