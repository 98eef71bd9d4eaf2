"""Fixtures every test gets."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

#: Loggers whose settings ``calimero_workflow.cli.main`` changes for its
#: process; tests that call ``main`` in-process must not leave them changed
#: for the tests after them (``caplog`` would see nothing of the node).
_CLI_LOGGERS = ("calimero_workflow.node", "uvicorn", "httpx")


@pytest.fixture(autouse=True)
def _restore_cli_logging() -> Iterator[None]:
    saved = [(logging.getLogger(n), logging.getLogger(n).propagate) for n in _CLI_LOGGERS]
    levels = [(logger, logger.level) for logger, _ in saved]
    yield
    for logger, propagate in saved:
        logger.propagate = propagate
    for logger, level in levels:
        logger.setLevel(level)
