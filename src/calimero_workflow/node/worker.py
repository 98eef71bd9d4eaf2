"""The thread that runs wasm calls for the event loops of this process.

A guest call must not block the loop: a runaway method can run for seconds
until its gas is gone, and meanwhile the loop still serves health checks,
peers and timeouts. ``asyncio.to_thread`` would do, but its hand-off (a
thread pool, a copied context, a wrapped concurrent future) cost more than
a cheap call itself, and the runtime runs one guest at a time anyway (see
``runtime._CALL_LOCK``). So every call goes to one daemon thread through a
queue and comes back with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["run_wasm"]

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class _WasmThread:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    thread = threading.Thread(
                        target=self._serve, name="calimero-wasm", daemon=True
                    )
                    thread.start()
                    self._thread = thread
        self._jobs.put((loop, future, job))
        return future

    def _serve(self) -> None:
        while True:
            loop, future, job = self._jobs.get()
            try:
                result, error = job(), None
            except BaseException as exc:  # handed to the awaiting task
                result, error = None, exc
            # The loop may be gone (closed while the guest ran); nobody waits then.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


_THREAD = _WasmThread()


async def run_wasm(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``func(*args, **kwargs)`` on the wasm thread and await its result.

    Cancelling the awaiting task does not stop the call; its result is dropped.
    A guest call is stopped through the :class:`~.runtime.Cancellation` it was
    given (``NodeService._run_guest`` cancels it when its caller is cancelled).
    """
    return await _THREAD.submit(functools.partial(func, *args, **kwargs))
