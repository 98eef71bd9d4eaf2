"""The wasm thread: calls leave the event loop and come back with their result."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from calimero_workflow.node.worker import run_wasm


async def test_result_and_arguments_come_back_from_another_thread() -> None:
    def work(a: int, *, b: int) -> tuple[int, str]:
        return a + b, threading.current_thread().name

    total, thread = await run_wasm(work, 2, b=3)
    assert total == 5
    assert thread != threading.current_thread().name


async def test_exceptions_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        await run_wasm(fail)


async def test_the_loop_keeps_running_during_a_long_call() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(tick())
    await run_wasm(time.sleep, 0.2)
    ticker.cancel()
    assert ticks >= 10


async def test_a_cancelled_wait_leaves_the_thread_usable() -> None:
    started = threading.Event()

    def slow() -> str:
        started.set()
        time.sleep(0.1)
        return "late"

    task = asyncio.create_task(run_wasm(slow))
    await asyncio.to_thread(started.wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await run_wasm(lambda: "next") == "next"


def test_calls_from_successive_event_loops() -> None:
    # Each asyncio.run gets its answers on its own loop.
    for i in range(3):
        assert asyncio.run(run_wasm(lambda i=i: i * 10)) == i * 10
