"""Which node log lines are written: ``RUST_LOG`` filters, as merod reads them.

A filter is a comma-separated list of directives: a level alone (``info``)
sets the level of every target no directive names; ``target=level`` sets one
target and everything under it (the longest matching name wins); a target
alone lets all its lines through. Levels are ``off``, ``error``, ``warn``,
``info``, ``debug`` and ``trace`` (debug here, the finest level the nodes
log at). Without a level alone, unnamed targets log errors only.

An embedded node's lines belong to two of merod's targets: its own (merod's
``merod`` and ``calimero_*`` crates) and the app's ``log_utf8`` lines
(``runtime::guest::log``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["GUEST_TARGET", "LogFilter"]

LEVELS = {
    "off": logging.CRITICAL + 10,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}

#: merod's target for an app's log lines.
GUEST_TARGET = "runtime::guest::log"

#: Targets of merod's own lines: a directive naming one (or a prefix of one)
#: sets the level of the node's own lines.
_NODE_TARGETS = ("merod", "calimero_node", "calimero_context", "calimero_server")


@dataclass(frozen=True)
class LogFilter:
    """The lowest level written of the node's own lines and of the app's."""

    node: int = logging.INFO
    guest: int = logging.INFO

    @classmethod
    def parse(cls, spec: str | None) -> LogFilter:
        """Read a ``RUST_LOG`` value; ``None`` or blank: everything at INFO.

        Raises ValueError naming a level that is not one.
        """
        if spec is None or not spec.strip():
            return cls()
        default = logging.ERROR
        named: dict[str, int] = {}
        directives = [d for d in spec.split(",") if d.strip()]
        if len(directives) == 1 and "=" not in spec and spec.strip().lower() not in LEVELS:
            # merod would read a lone word as a target, and log errors only
            # for everything else; nobody means that by `log_level: verbose`
            raise ValueError(
                f"{spec.strip()!r} is not a log level; use off, error, warn, info, debug or trace "
                f"(or RUST_LOG directives such as {spec.strip()}=debug)"
            )
        for directive in directives:
            directive = directive.strip()
            if not directive:
                continue
            target, eq, level = directive.partition("=")
            target, level = target.strip(), level.strip().lower()
            if not eq:
                if target.lower() in LEVELS:
                    default = LEVELS[target.lower()]
                else:
                    named[target] = logging.DEBUG
                continue
            if level not in LEVELS:
                raise ValueError(
                    f"{level or '(nothing)'!r} in {directive!r} is not a log level; "
                    "use off, error, warn, info, debug or trace"
                )
            if target:
                named[target] = LEVELS[level]
            else:
                default = LEVELS[level]
        node = [lvl for name, lvl in named.items() if _names_node(name)]
        guest = max(
            ((len(name), lvl) for name, lvl in named.items() if _covers(name, GUEST_TARGET)),
            default=None,
        )
        return cls(
            node=min(node) if node else default,
            guest=guest[1] if guest else default,
        )

    @property
    def lowest(self) -> int:
        """The finest level any line needs to be logged at."""
        return min(self.node, self.guest)

    def allows(self, record: logging.LogRecord) -> bool:
        threshold = self.guest if getattr(record, "guest", False) else self.node
        return record.levelno >= threshold


def _covers(name: str, target: str) -> bool:
    """Whether a directive for ``name`` applies to ``target`` (its module path)."""
    return target == name or target.startswith(name + "::")


def _names_node(name: str) -> bool:
    return any(t.startswith(name) or name.startswith(t) for t in _NODE_TARGETS) or name.startswith(
        "calimero_"
    )
