"""``python -m specgrove_apps.cli``: the command line (how services/roles.py starts a role)."""

import sys

from specgrove_apps.cli import main

sys.exit(main())
