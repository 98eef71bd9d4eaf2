"""Errors raised inside the embedded node and how they reach API callers.

``NodeError``
 ├── ``ApiError``       an admin API failure: carries the HTTP status, shown as
 │                      ``{"error": message}``
 └── ``RpcError``       a JSON-RPC failure: carries merod's ``{"type", "data"}``
                        error object, shown inside the JSON-RPC envelope
``PeerError``           a swarm request to another node failed (unreachable,
                        timed out, or the peer refused); callers try another peer
"""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "NodeError", "PeerError", "RpcError"]


class NodeError(Exception):
    """Base of the errors the node turns into API answers."""


class ApiError(NodeError):
    """An admin API error: ``status`` and a message that names the bad value.

    ``plain`` sends the message as a ``text/plain`` body instead of
    ``{"error": message}``, as merod's install handlers do.
    """

    def __init__(self, status: int, message: str, *, plain: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.plain = plain


class RpcError(NodeError):
    """A JSON-RPC error object ``{"type": kind, "data": data}`` plus extra fields."""

    def __init__(self, kind: str, data: Any = None, **extra: Any) -> None:
        super().__init__(f"{kind}: {data!r}" if data is not None else kind)
        self.kind = kind
        self.data = data
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        """The error object as merod shows it (``data`` omitted when None)."""
        body: dict[str, Any] = {"type": self.kind}
        if self.data is not None:
            body["data"] = self.data
        body.update(self.extra)
        return body


class PeerError(Exception):
    """A request to a peer failed; the message says which peer and why."""
