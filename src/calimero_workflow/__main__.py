"""``python -m calimero_workflow``: the ``calimero-workflow`` command."""

import sys

from .cli import main

sys.exit(main())
