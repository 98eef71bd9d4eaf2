"""``python -m calimero_workflow``: the ``calimero-workflow`` command."""

from .cli import console_main

console_main()
