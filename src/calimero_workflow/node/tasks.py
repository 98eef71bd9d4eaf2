"""Stopping a node's background tasks without losing the caller's own cancellation."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended.

    The task's own CancelledError is expected and dropped. If the caller is
    itself cancelled while it waits (Ctrl-C, a step timeout), that
    cancellation is raised, never absorbed as if it were the task's.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
