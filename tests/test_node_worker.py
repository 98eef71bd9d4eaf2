"""A node's wasm threads: calls leave the event loop and come back with their result."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from calimero_workflow.node.worker import WasmWorker, WorkerClosed


def wasm_threads(node: str) -> list[str]:
    """The live threads of ``node``'s worker (other tests' threads may come and go)."""
    prefix = f"calimero-wasm-{node}-"
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


@pytest.fixture
async def worker() -> AsyncIterator[WasmWorker]:
    wasm = WasmWorker("node-1")
    try:
        yield wasm
    finally:
        wasm.close()
        assert await wasm.wait_closed(5)


async def test_result_and_arguments_come_back_from_another_thread(
    worker: WasmWorker,
) -> None:
    def work(a: int, *, b: int) -> tuple[int, str]:
        return a + b, threading.current_thread().name

    total, thread = await worker.run(work, 2, b=3)
    assert total == 5
    assert thread == "calimero-wasm-node-1-1"


async def test_exceptions_reach_the_caller(worker: WasmWorker) -> None:
    def fail() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await worker.run(fail)


async def test_the_loop_keeps_running_during_a_long_call(worker: WasmWorker) -> None:
    release = threading.Event()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            if ticks == 10:
                release.set()
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    # The call returns only once the loop has gone round ten times meanwhile.
    assert await worker.run(release.wait, 10)
    ticker.cancel()


async def test_a_cancelled_wait_leaves_the_thread_usable(worker: WasmWorker) -> None:
    started = threading.Event()
    release = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(10)
        return "late"

    task = asyncio.create_task(worker.run(slow))
    await asyncio.to_thread(started.wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    assert await worker.run(lambda: "next") == "next"


def test_calls_from_successive_event_loops() -> None:
    # Each asyncio.run gets its answers on its own loop.
    worker = WasmWorker("node-1")
    for i in range(3):
        assert asyncio.run(worker.run(lambda i=i: i * 10)) == i * 10
    worker.close()
    assert asyncio.run(worker.wait_closed(5))


async def test_one_thread_serves_calls_one_after_another(worker: WasmWorker) -> None:
    names = {await worker.run(lambda: threading.current_thread().name) for _ in range(20)}
    assert names == {"calimero-wasm-node-1-1"}
    assert worker.threads == 1


async def test_a_busy_thread_gets_company_up_to_the_limit() -> None:
    worker = WasmWorker("node-1", max_threads=2)
    release = threading.Event()
    running: list[str] = []

    def hold() -> str:
        running.append(threading.current_thread().name)
        release.wait(10)
        return threading.current_thread().name

    first = asyncio.create_task(worker.run(hold))
    second = asyncio.create_task(worker.run(hold))
    # A third call queues behind them: the limit is two threads.
    third = asyncio.create_task(worker.run(hold))

    async def two_running() -> None:
        while len(running) < 2:
            await asyncio.sleep(0.001)

    await asyncio.wait_for(two_running(), 10)
    assert worker.threads == 2
    assert worker.busy == 3
    assert len(running) == 2
    release.set()
    names = await asyncio.gather(first, second, third)
    assert set(names) == {"calimero-wasm-node-1-1", "calimero-wasm-node-1-2"}
    worker.close()
    assert await worker.wait_closed(5)
    assert worker.threads == 0


async def test_close_finishes_queued_calls_and_stops_the_threads() -> None:
    worker = WasmWorker("node-close", max_threads=1)
    release = threading.Event()
    first = asyncio.create_task(worker.run(release.wait, 10))
    queued = asyncio.create_task(worker.run(lambda: "queued"))
    await asyncio.sleep(0)
    worker.close()
    with pytest.raises(WorkerClosed, match="node-close"):
        await worker.run(lambda: "refused")
    # A thread still in a call does not exit before the call returns.
    assert not await worker.wait_closed(0.05)
    release.set()
    assert await first is True
    assert await queued == "queued"
    assert await worker.wait_closed(5)
    assert worker.threads == 0
    assert wasm_threads("node-close") == []


async def test_a_worker_never_used_closes_at_once() -> None:
    worker = WasmWorker("node-1")
    worker.close()
    worker.close()
    assert await worker.wait_closed(0)
    with pytest.raises(RuntimeError, match="before close"):
        await WasmWorker("node-2").wait_closed()


async def test_started_and_stopped_workers_leave_no_threads() -> None:
    for _ in range(5):
        worker = WasmWorker("node-cycle", max_threads=3)
        release = threading.Event()
        calls = [asyncio.create_task(worker.run(release.wait, 10)) for _ in range(3)]
        while worker.threads < 3:
            await asyncio.sleep(0.001)
        release.set()
        await asyncio.gather(*calls)
        assert len(wasm_threads("node-cycle")) == 3
        worker.close()
        assert await worker.wait_closed(5)
    assert wasm_threads("node-cycle") == []


def test_max_threads_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WasmWorker("node-1", max_threads=0)


async def test_slow_and_quick_calls_finish_in_their_own_order(worker: WasmWorker) -> None:
    # The slow call holds one thread; the quick one runs on another meanwhile.
    release = threading.Event()
    slow = asyncio.create_task(worker.run(release.wait, 10))
    assert await worker.run(lambda: "quick") == "quick"
    assert not slow.done()
    release.set()
    assert await slow is True
