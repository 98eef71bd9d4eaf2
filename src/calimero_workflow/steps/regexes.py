"""Regular expressions from workflow files, matched bounded and interruptibly.

Python's ``re`` cannot be stopped once it runs: a pattern that backtracks
without end (``(a|aa)+$`` over a long run of ``a``) would hold the interpreter
past the step's timeout and past Ctrl-C. The ``regex`` package reads the same
syntax, takes a timeout per match, and releases the interpreter while it
matches, so every match here runs in a daemon thread the step only waits for.
``assert`` (``matches``, ``regex(a, p)``) and the log steps
(``assert_log_present``, ``assert_log_absent`` with ``regex: true``) share it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import regex

from ..errors import StepFailure

__all__ = [
    "REGEX_TIMEOUT",
    "Deadline",
    "compile_pattern",
    "in_daemon_thread",
    "match_limit",
    "pattern_problem",
    "search",
    "too_slow",
]

_T = TypeVar("_T")

#: Seconds one value may take to match when the step sets no ``timeout:``.
REGEX_TIMEOUT = 5.0


def match_limit(timeout: float | None) -> float:
    """Seconds one value may take: the step's ``timeout``, else :data:`REGEX_TIMEOUT`."""
    return timeout or REGEX_TIMEOUT


def pattern_problem(pattern: str, *, ignore_case: bool = False) -> str | None:
    """Why ``pattern`` is not a regular expression, or None."""
    try:
        compile_pattern(pattern, ignore_case=ignore_case)
    except (regex.error, ValueError, OverflowError) as exc:
        return f"invalid regular expression {pattern!r}: {exc}"
    return None


def compile_pattern(pattern: str, *, ignore_case: bool = False) -> Any:
    """``pattern`` compiled with Python's syntax (the ``regex`` package's V0)."""
    return regex.compile(pattern, regex.IGNORECASE if ignore_case else 0)


class Deadline:
    """The time one match may still take, and whether its step gave up.

    Handed to the work running in the daemon thread: :meth:`remaining` is the
    ``timeout`` of the next match, and raises :class:`TimeoutError` once the
    step stopped waiting (its own timeout, Ctrl-C), so a scan over many lines
    ends at its next line instead of running on unseen.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.abandoned = threading.Event()

    def remaining(self) -> float:
        if self.abandoned.is_set():
            raise TimeoutError("the step stopped waiting")
        return self.limit


def too_slow(pattern: str, limit: float, text: str) -> StepFailure:
    """The failure of a match that did not finish within ``limit`` seconds."""
    return StepFailure(
        f"the regular expression {pattern!r} did not finish within {limit:g} s "
        f"on a {len(text)}-character value",
        kind="invalid",
        hint="the pattern backtracks catastrophically (nested repeats such as `(a|aa)+`); "
        "simplify it, or raise the step's `timeout:` if the value is just large",
    )


async def search(pattern: str, value: Any, limit: float) -> bool:
    """``re.search`` semantics, bounded by ``limit`` seconds and interruptible."""
    problem = pattern_problem(pattern)
    if problem:
        raise StepFailure(problem, kind="invalid")
    compiled = compile_pattern(pattern)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    try:
        found = await in_daemon_thread(
            lambda deadline: compiled.search(
                text, timeout=deadline.remaining(), concurrent=True
            ),
            limit,
        )
    except TimeoutError:
        raise too_slow(pattern, limit, text) from None
    return found is not None


async def in_daemon_thread(work: Callable[[Deadline], _T], limit: float) -> _T:
    """``work(deadline)`` in a daemon thread, each of its matches bounded by
    ``limit`` seconds (``deadline.remaining()``).

    A cancelled step (its timeout, Ctrl-C) stops waiting at once and marks the
    deadline abandoned; the process may exit without joining the thread, which
    ends by itself within one match's limit.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    deadline = Deadline(limit)

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def run() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (work(deadline), None)
        except BaseException as exc:  # handed to the awaiting step
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=run, name="cw-regex", daemon=True).start()
    try:
        return await done
    finally:
        deadline.abandoned.set()
