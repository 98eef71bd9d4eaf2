"""Built-in step types. Importing a module registers its steps."""

from __future__ import annotations

_loaded = False


def load_builtin_steps() -> None:
    """Import every built-in step module once (registration is a side effect)."""
    global _loaded
    if _loaded:
        return
    from . import (  # noqa: F401
        api_response,
        asserts,
        control,
        faults,
        fuzzy,
        logs,
        more_steps,
        node_steps,
        script,
        sync,
    )

    _loaded = True
