"""``python -m unmask.server`` = the ``unmask`` command."""
import sys

from unmask.server.cli import main

sys.exit(main())
