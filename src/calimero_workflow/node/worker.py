"""The threads that run one node's wasm calls for its event loop.

A guest call must not block the loop: a runaway method runs until its time
limit or gas is gone, and meanwhile the loop still serves health checks,
peers and timeouts. ``asyncio.to_thread`` would do, but its hand-off (a
thread pool, a copied context, a wrapped concurrent future) cost more than a
cheap call itself. So a call goes to a worker thread through a queue and
comes back with ``call_soon_threadsafe``.

Each node has its own :class:`WasmWorker`, as each merod is its own process:
a call that runs for seconds on one node delays no call of another. Within a
node, calls on different contexts run side by side too, as merod runs them,
on up to ``max_threads`` threads started as they are needed; calls on one
context take turns under the node's context lock (``NodeService.lock``), as
merod's per-context lock has them. wasmtime releases the GIL while a guest
runs its own code, so two guests use two cores; host functions are Python
and take turns on the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["DEFAULT_MAX_THREADS", "WasmWorker", "WorkerClosed"]

T = TypeVar("T")

#: Threads one node runs guests on at most: as many contexts of one node run
#: at once, the others queue.
DEFAULT_MAX_THREADS = 4

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]
#: Tells one thread to exit.
_STOP = None


class WorkerClosed(RuntimeError):
    """A call was handed to a worker whose node has stopped."""


class WasmWorker:
    """The wasm threads of one node; started on the first call, stopped by :meth:`close`.

    Args:
        name: the node's name, for the threads' names.
        max_threads: how many calls run at once at most.
    """

    def __init__(self, name: str, *, max_threads: int = DEFAULT_MAX_THREADS) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1, got {max_threads}")
        self.name = name
        self.max_threads = max_threads
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        #: Threads that left their loop: alive for a moment after they say so.
        self._ended: list[threading.Thread] = []
        #: Calls handed over and not yet finished (running or queued).
        self._pending = 0
        self._started = 0
        self._closed = False
        #: Loops and futures waiting in :meth:`wait_closed`.
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def threads(self) -> int:
        """How many threads are alive now."""
        with self._lock:
            return len(self._threads)

    @property
    def busy(self) -> int:
        """How many calls were handed over and have not finished."""
        with self._lock:
            return self._pending

    async def run(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``func(*args, **kwargs)`` on one of the node's threads and await its result.

        Cancelling the awaiting task does not stop the call; its result is
        dropped. A guest call is stopped through the
        :class:`~.runtime.Cancellation` it was given (``NodeService._run_guest``
        cancels it when its caller is cancelled).

        Raises:
            WorkerClosed: the worker was closed (its node stopped).
        """
        return await self.submit(functools.partial(func, *args, **kwargs))

    def submit(self, job: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``job``; the future settles on the running loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise WorkerClosed(f"the wasm threads of node {self.name} are stopped")
            self._pending += 1
            if self._pending > len(self._threads) and len(self._threads) < self.max_threads:
                self._started += 1
                thread = threading.Thread(
                    target=self._serve,
                    name=f"calimero-wasm-{self.name}-{self._started}",
                    daemon=True,
                )
                self._threads.add(thread)
                thread.start()
        self._jobs.put((loop, future, job))
        return future

    def close(self) -> None:
        """Refuse new calls and let each thread exit once the queued calls are done."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            count = len(self._threads)
            done = not self._threads
        for _ in range(count):
            self._jobs.put(_STOP)
        if done:
            self._wake_waiters()

    async def wait_closed(self, timeout: float | None = None) -> bool:
        """After :meth:`close`: wait until every thread has exited; False on timeout.

        A thread still in a guest exits when the guest returns, which an
        interrupted guest does within milliseconds; one waiting in a host
        call (a blob fetched from a peer) may take longer.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        deadline = None if timeout is None else loop.time() + timeout
        with self._lock:
            if not self._closed:
                raise RuntimeError("wait_closed() before close()")
            running = bool(self._threads)
            if running:
                self._waiters.append((loop, future))
        if running:
            try:
                await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                return False
        # The last thread wakes us on its way out; let every one be gone.
        while any(t.is_alive() for t in self._ended):
            if deadline is not None and loop.time() >= deadline:
                return False
            await asyncio.sleep(0.001)
        return True

    def _serve(self) -> None:
        me = threading.current_thread()
        try:
            while True:
                item = self._jobs.get()
                if item is _STOP:
                    return
                loop, future, job = item
                try:
                    result, error = job(), None
                except BaseException as exc:  # handed to the awaiting task
                    result, error = None, exc
                with self._lock:
                    self._pending -= 1
                # The loop may be gone (closed while the guest ran); nobody waits then.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, future, result, error)
                del item, future, job, result, error
        finally:
            with self._lock:
                self._threads.discard(me)
                self._ended.append(me)
                last = self._closed and not self._threads
            if last:
                self._wake_waiters()

    def _wake_waiters(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, None, None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
