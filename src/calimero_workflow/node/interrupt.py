"""Stopping a running guest: a wall-clock limit per call, and cancellation.

merod bounds a call by gas alone (one point per wasm operator, 10^9 by
default; its ``metering.rs`` explains that a deadline would let nodes
disagree). Fuel does the same here, but the embedded node's host calls cost
about a microsecond each against merod's tens of nanoseconds, so a guest that
loops over host calls (``for (;;) register_len(1);``) takes minutes to spend
its gas where merod takes seconds. The wall-clock limit closes that gap: a
call that runs longer than :data:`DEFAULT_TIME_LIMIT_S` (or the limit the
runtime was given, or ``CW_WASM_TIME_LIMIT`` seconds) is interrupted.

Interruption uses wasmtime's epochs. Every guest entry sets its store's
deadline one epoch ahead, and a watchdog thread increments the engine's epoch
when a call's time is up, or at once when its :class:`Cancellation` is
cancelled; the guest then reaches its deadline at its next loop back-edge or
function entry. Guests of several nodes run at once, on their nodes' threads,
and the epoch belongs to the engine that they share, so every store running
on it reaches its deadline together. The runtime gives each store a deadline
callback that asks :func:`interrupted` about the call its thread runs: the
interrupted one stops, the others go on with a deadline one epoch further.
(Without that callback, in wasmtime-py's public API, the runtime runs one
guest at a time, and the plain trap at the deadline is meant for that one.)
One watchdog serves every call of the process, and it sleeps unless a call
outlives its limit: a call that ends in time costs a lock and two C calls
(the callback and the deadline) per guest entry.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_TIME_LIMIT_S",
    "TIME_LIMIT_ENV",
    "Cancellation",
    "Interrupted",
    "Watch",
    "interrupted",
    "time_limit_from",
]

#: Wall-clock seconds one call may run. A runaway loop without host calls
#: spends merod's 10^9 gas in about a second here too; this bounds the loops
#: that fuel cannot stop in time, and stays below the engine's 30 s HTTP
#: timeout so that the caller gets the node's answer, not a timeout.
DEFAULT_TIME_LIMIT_S = 10.0
#: The environment variable that sets the limit (seconds; 0 turns it off).
TIME_LIMIT_ENV = "CW_WASM_TIME_LIMIT"


def time_limit_from(environ: Mapping[str, str]) -> float | None:
    """The limit ``environ`` asks for: seconds, or None for none.

    Raises:
        ValueError: the value is not a non-negative number of seconds.
    """
    raw = environ.get(TIME_LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIME_LIMIT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        msg = (
            f"{TIME_LIMIT_ENV}={raw!r} is not a number of seconds; give the wall-clock "
            f"limit of one wasm call (default {DEFAULT_TIME_LIMIT_S:g}), or 0 for none"
        )
        raise ValueError(msg)
    return value or None


class Interrupted(Exception):
    """The call was stopped before its guest started; the message says why."""


class Cancellation:
    """Lets another thread stop one call: :meth:`cancel` interrupts its guest.

    Cancelled before the call starts, the call does not run at all.
    """

    __slots__ = ("reason",)

    def __init__(self) -> None:
        #: Why it was cancelled; None while it was not.
        self.reason: str | None = None

    def cancel(self, reason: str = "the call was cancelled") -> None:
        """Interrupt the call (the first reason given is kept)."""
        _WATCHDOG.cancel(self, reason)


class Watch:
    """One call as the watchdog sees it: its engine, deadline and fate.

    Args:
        engine: the wasmtime engine the call's store belongs to.
        limit: wall-clock seconds the call may spend in its guest, or None.
        cancellation: how its caller can stop it, or None.
    """

    __slots__ = ("engine", "limit", "deadline", "cancellation", "reason", "timed_out")

    def __init__(
        self, engine: Any, limit: float | None, cancellation: Cancellation | None
    ) -> None:
        self.engine = engine
        self.limit = limit
        #: time.monotonic() when the time is up; set on the first guest entry.
        self.deadline: float | None = None
        self.cancellation = cancellation
        #: Why the guest was interrupted; None while it was not.
        self.reason: str | None = None
        self.timed_out = False

    def enter(self, store: Any) -> None:
        """The call's guest starts running in ``store``, on this thread.

        Raises:
            Interrupted: it was cancelled or ran out of time before this entry.
        """
        _WATCHDOG.enter(self, store)
        _THREAD.watch = self

    def leave(self) -> None:
        """The guest returned or trapped."""
        _THREAD.watch = None
        _WATCHDOG.leave(self)


#: The watch of the guest running on each thread (``interrupted`` reads it).
_THREAD = threading.local()


def interrupted() -> bool:
    """Whether the call whose guest runs on this thread has been interrupted.

    Asked by the runtime's epoch-deadline callback, on the guest's thread,
    when the engine's epoch reaches the store's deadline: an increment meant
    for another call on the same engine answers False.
    """
    watch: Watch | None = getattr(_THREAD, "watch", None)
    return watch is not None and watch.reason is not None


class _Watchdog:
    """The thread that interrupts the guests running in this process."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        #: The calls whose guests run now.
        self._running: set[Watch] = set()
        #: When the thread wakes next (None: it waits for a call to watch).
        self._wakes_at: float | None = None
        self._thread: threading.Thread | None = None

    def enter(self, watch: Watch, store: Any) -> None:
        with self._cond:
            if watch.reason is None and watch.cancellation is not None:
                watch.reason = watch.cancellation.reason
            if watch.reason is None and watch.deadline is not None:
                if time.monotonic() >= watch.deadline:
                    self._time_is_up(watch)
            if watch.reason is not None:
                raise Interrupted(watch.reason)
            # Under the lock, so that a cancellation sees the call either not
            # yet running (and leaves the reason for this entry to find) or
            # running with its deadline set.
            store.set_epoch_deadline(1)
            self._running.add(watch)
            if watch.limit is None:
                return
            if watch.deadline is None:
                watch.deadline = time.monotonic() + watch.limit
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="calimero-wasm-watchdog", daemon=True
                )
                self._thread.start()
            elif self._wakes_at is None or watch.deadline < self._wakes_at:
                self._cond.notify()

    def leave(self, watch: Watch) -> None:
        with self._cond:
            self._running.discard(watch)

    def cancel(self, cancellation: Cancellation, reason: str) -> None:
        with self._cond:
            if cancellation.reason is None:
                cancellation.reason = reason
            for watch in self._running:
                if watch.cancellation is cancellation:
                    self._interrupt(watch, cancellation.reason)

    def running(self) -> int:
        """How many guests run now (for tests)."""
        with self._cond:
            return len(self._running)

    def _interrupt(self, watch: Watch, reason: str) -> None:
        if watch.reason is None:
            # Set before the increment: the deadline callbacks it triggers
            # (on this engine's other running stores too) read it.
            watch.reason = reason
            watch.engine.increment_epoch()

    def _time_is_up(self, watch: Watch) -> None:
        watch.timed_out = True
        self._interrupt(
            watch, f"it ran longer than the time limit of {watch.limit:g} s"
        )

    def _next(self) -> Watch | None:
        """The running call whose time is up first, if any has a limit left."""
        first, soonest = None, math.inf
        for watch in self._running:
            if watch.reason is None and watch.deadline is not None and watch.deadline < soonest:
                first, soonest = watch, watch.deadline
        return first

    def _serve(self) -> None:
        with self._cond:
            while True:
                watch = self._next()
                if watch is None:
                    self._wakes_at = None
                    self._cond.wait()
                    continue
                assert watch.deadline is not None
                remaining = watch.deadline - time.monotonic()
                if remaining <= 0:
                    self._time_is_up(watch)
                    continue
                # A call entering with a later deadline needs no wake-up.
                self._wakes_at = watch.deadline
                self._cond.wait(remaining)


_WATCHDOG = _Watchdog()
