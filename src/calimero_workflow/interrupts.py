"""SIGINT and SIGTERM for the whole action process.

The runner cancels a step with SIGINT, then SIGTERM, then kills it. They
may land at any time: while Python imports the engine, while workflows run,
or while the reports are written. :class:`Interrupts` handles both from the
first moment to the last: a signal while the run's event loop runs cancels
the run (which then cleans up); at any other time it is remembered. Either
way the action goes on to write its reports and outputs with the status
``cancelled`` and exits 130. No signal raises ``KeyboardInterrupt``, so none
cuts the reports or the hand-over of files short.

The action's console script starts in :func:`action_entry`, which installs
the handlers before the engine is imported. (As PID 1 of a container, the
process would otherwise ignore SIGTERM, and SIGINT would end the import
with a traceback.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType

__all__ = ["Interrupts", "action_entry"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupts:
    """Counts SIGINT and SIGTERM; the first cancels the attached task."""

    def __init__(self) -> None:
        self.count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None

    @property
    def cancelled(self) -> bool:
        """Whether a signal arrived."""
        return self.count > 0

    def install(self) -> Interrupts:
        """Handle both signals in this process from now on (main thread only)."""
        for sig in _SIGNALS:
            signal.signal(sig, self._handle)
        return self

    @staticmethod
    def restore_defaults() -> None:
        """Give the signals back to Python's defaults (for the command line)."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    @contextlib.contextmanager
    def cancelling(self, task: asyncio.Task) -> Iterator[None]:
        """While the block runs, a signal cancels ``task`` (once)."""
        if self.cancelled:  # it came before the run started
            task.cancel()
        self._loop, self._task = asyncio.get_running_loop(), task
        try:
            yield
        finally:
            self._loop = self._task = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Signals wait (pending) until the block ends.

        For the last word: the status is decided and written as one step, so
        a signal cannot land between the two; one that comes later finds the
        work done and changes nothing.
        """
        if not hasattr(signal, "pthread_sigmask"):
            yield
            return
        before = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        loop, task = self._loop, self._task
        if self.count == 1 and loop is not None and task is not None:
            if not loop.is_closed():
                # the handler runs between two bytecodes of the main thread,
                # maybe inside the loop: hand the cancellation to the loop
                loop.call_soon_threadsafe(task.cancel)
            return
        try:
            os.write(
                2,
                b"calimero-workflow: cancelled; finishing cleanup, the reports and the outputs first\n",
            )
        except OSError:
            pass


def action_entry() -> int:
    """The action's console script: signals are handled before the engine loads."""
    interrupts = Interrupts().install()
    from .action import main

    return main(interrupts=interrupts)
