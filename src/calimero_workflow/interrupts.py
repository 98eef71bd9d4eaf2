"""SIGINT and SIGTERM for the whole action process.

The runner cancels a step with SIGINT, then SIGTERM, then kills it. They
may land at any time: while Python imports the engine, while workflows run,
or while the reports are written. :class:`Interrupts` handles both from the
first moment to the last: a signal while the run's event loop runs cancels
the run (which then cleans up); at any other time it is remembered. Either
way the action goes on to write its reports and outputs with the status
``cancelled`` and exits 130. No signal raises ``KeyboardInterrupt``, so none
cuts the reports or the hand-over of files short.

The finishing is bounded, though: after a second signal it has
:data:`FINISH_GRACE_S` seconds (a third signal ends it at once). Then the
process stops where it is, with the status ``cancelled`` written if no
status was (the post step removes nodes left behind).

The action's entry script installs the handlers before anything else is
imported: this module imports only ``os`` and ``signal``. (As PID 1 of a
container, the process would otherwise ignore SIGTERM, and SIGINT would
end the import with a traceback.)
"""

from __future__ import annotations

import os
import signal

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and asyncio take tens of milliseconds to import
    import asyncio
    from collections.abc import Callable
    from types import FrameType

__all__ = ["FINISH_GRACE_S", "Interrupts", "action_entry"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds the action may still take after a second signal.
FINISH_GRACE_S = 30.0
_EXIT_CANCELLED = 130


class Interrupts:
    """Counts SIGINT and SIGTERM; the first cancels the attached task.

    Args:
        count: Signals that already arrived (one the entry script caught
            before the handlers were installed).
        grace: Seconds the action may take after a second signal.
    """

    def __init__(self, count: int = 0, *, grace: float = FINISH_GRACE_S) -> None:
        self.count = count
        self.grace = grace
        #: Writes the status ``cancelled`` when the action gives up before
        #: its outputs were written (set once the outputs can be written).
        self.last_word: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        #: The exit code, once the outputs are written.
        self._code: int | None = None
        self._giving_up = False
        #: Blocks of :meth:`held` running, and a give-up that waits for them.
        self._holding = 0
        self._deferred = False

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

    def cancelling(self, task: asyncio.Task) -> _Cancelling:
        """While the block runs, a signal cancels ``task`` (once)."""
        return _Cancelling(self, task)

    def held(self) -> _Held:
        """Signals (and the give-up alarm) wait, pending, until the block ends.

        For the last word: the status is decided and written as one step, so
        a signal cannot land between the two; one that comes later finds the
        work done and changes nothing. A handler Python runs inside the block
        anyway (for a signal that came just before it) does not give up
        there: that waits for the block's end.
        """
        return _Held(self)

    def finished(self, code: int) -> None:
        """The outputs are written: giving up now ends with ``code``."""
        self._code = code

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        loop, task = self._loop, self._task
        if self.count == 1 and loop is not None and task is not None:
            if not loop.is_closed():
                # the handler runs between two bytecodes of the main thread,
                # maybe inside the loop: hand the cancellation to the loop
                loop.call_soon_threadsafe(task.cancel)
            return
        if self.count >= 3:
            self._give_up()
        if self.count == 2 and hasattr(signal, "setitimer"):
            signal.signal(signal.SIGALRM, self._alarm)
            signal.setitimer(signal.ITIMER_REAL, self.grace)
            _say(
                f"calimero-workflow: cancelled again; finishing for at most {self.grace:g} "
                "more seconds (a third signal stops at once)\n"
            )
            return
        _say(
            "calimero-workflow: cancelled; finishing cleanup, the reports and the outputs first\n"
        )

    def _alarm(self, signum: int, frame: FrameType | None) -> None:
        self._give_up()

    def _give_up(self) -> None:
        """Stop where the action is: the status ``cancelled`` if none was written."""
        if self._holding:  # the outputs are being written: right after them
            self._deferred = True
            return
        if self._giving_up:  # a signal while the last word is being written
            os._exit(_EXIT_CANCELLED if self._code is None else self._code)
        self._giving_up = True
        if self._code is None and self.last_word is not None:
            try:
                self.last_word()
            except BaseException:  # nothing may stop the exit
                pass
        _say("calimero-workflow: stopped before the action finished, as it was cancelled\n")
        os._exit(_EXIT_CANCELLED if self._code is None else self._code)


def _say(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:
        pass


class _Cancelling:
    """:meth:`Interrupts.cancelling`."""

    def __init__(self, interrupts: Interrupts, task: asyncio.Task) -> None:
        self._interrupts = interrupts
        self._task = task

    def __enter__(self) -> None:
        if self._interrupts.cancelled:  # it came before the run started
            self._task.cancel()
        self._interrupts._loop = self._task.get_loop()
        self._interrupts._task = self._task

    def __exit__(self, *exc: object) -> None:
        self._interrupts._loop = self._interrupts._task = None


class _Held:
    """:meth:`Interrupts.held`."""

    _MASK = (*_SIGNALS, signal.SIGALRM) if hasattr(signal, "SIGALRM") else _SIGNALS

    def __init__(self, interrupts: Interrupts) -> None:
        self._interrupts = interrupts

    def __enter__(self) -> None:
        self._before = None
        self._interrupts._holding += 1
        if hasattr(signal, "pthread_sigmask"):
            self._before = signal.pthread_sigmask(signal.SIG_BLOCK, self._MASK)

    def __exit__(self, *exc: object) -> None:
        if self._before is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._before)
        self._interrupts._holding -= 1
        if self._interrupts._deferred and not self._interrupts._holding:
            self._interrupts._give_up()


def action_entry(interrupts: Interrupts | None = None) -> int:
    """The action's entry point: signals are handled before the engine loads.

    ``interrupts`` are the handlers the image's entry script installed
    first thing (docker/calimero-workflow-action); without them they are
    installed here.
    """
    if interrupts is None:
        interrupts = Interrupts().install()
    from .action import main

    return main(interrupts=interrupts)
