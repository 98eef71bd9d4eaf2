"""Per-node loggers: many nodes share one process, so every record names its node."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["NodeLogger", "node_logger"]

NodeLogger = logging.LoggerAdapter  # type: ignore[type-arg]


class _Adapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        # Keep the node name on the record (``record.node``) for handlers that
        # sort lines per node, and in the text for plain stdout logs.
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return f"[{(self.extra or {}).get('node')}] {msg}", kwargs


def node_logger(node: str, component: str) -> NodeLogger:
    """A logger ``calimero_workflow.node.<component>`` whose records carry ``node``."""
    return _Adapter(
        logging.getLogger(f"calimero_workflow.node.{component}"), {"node": node}
    )
