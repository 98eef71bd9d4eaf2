"""Embedded nodes run their wasm calls independently, as separate merod processes do.

The app is ``tests/wasm/kv_plus.c``, whose ``spin_host`` loops over a host
call until it is interrupted. Nodes, servers and the runtime are real, and
one runtime (one wasmtime engine) serves every node, as in a workflow run.
The tests wait for events (a call in progress, a guest inside wasm, a
request waiting for its context) rather than for time to pass.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.node import interrupt
from calimero_workflow.node.runtime import WasmRuntime
from calimero_workflow.workflow import parse_workflow
from node_fixtures import Api, Cluster, wait_until

# c_test_wasm builds tests/wasm/*.c (tests/wasm_fixtures.py).
pytest_plugins = ["wasm_fixtures"]

pytestmark = pytest.mark.wasm_toolchain


@pytest.fixture
def kv_plus(c_test_wasm: dict[str, bytes], tmp_path: Path) -> Path:
    path = tmp_path / "kv_plus.wasm"
    path.write_bytes(c_test_wasm["kv_plus"])
    return path


async def context_on(api: Api, kv_plus: Path) -> str:
    app_id = await api.install_file(kv_plus)
    ns = await api.create_namespace(app_id)
    return await api.create_context(app_id, ns)


async def nodes(
    cluster: Cluster, kv_plus: Path, count: int
) -> list[tuple[Api, str]]:
    """``count`` unconnected nodes, each with a kv_plus context of its own."""
    made = []
    for i in range(1, count + 1):
        api = await cluster.start(f"node-{i}", bootstrap=[])
        made.append((api, await context_on(api, kv_plus)))
    return made


def in_progress(api: Api) -> bool:
    """The node has a guest call under way (queued or running)."""
    return bool(api.node.service._calls)


async def guests_running(count: int) -> None:
    """Wait until ``count`` guests are inside wasm at the same time."""

    async def enough() -> bool:
        return interrupt._WATCHDOG.running() == count

    await wait_until(enough, timeout=20, what=f"{count} guest(s) inside wasm")


def wasm_threads(node: str) -> list[str]:
    prefix = f"calimero-wasm-{node}-"
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def error_of(body: dict[str, Any]) -> str:
    assert "error" in body, body
    return str(body["error"]["data"])


async def test_a_looping_call_on_one_node_does_not_delay_another_node(
    tmp_path: Path, kv_plus: Path
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        cluster = Cluster(tmp_path, WasmRuntime(time_limit=120), client)
        try:
            (one, ctx1), (two, ctx2) = await nodes(cluster, kv_plus, 2)
            looping = asyncio.create_task(one.execute(ctx1, "spin_host"))
            await guests_running(1)
            # node-2 answers while node-1's guest is still inside wasm.
            assert await asyncio.wait_for(two.call(ctx2, "len"), 20) == 0
            await two.call(ctx2, "set", {"key": "k", "value": "v"})
            assert await two.call(ctx2, "get", {"key": "k"}) == "v"
            assert in_progress(one) and not looping.done()
            assert interrupt._WATCHDOG.running() == 1
            await one.node.stop()
            assert error_of(await looping) == "execution interrupted: node node-1 is stopping"
        finally:
            await cluster.stop_all()


async def test_two_looping_calls_on_two_nodes_end_at_their_own_limits(
    tmp_path: Path, kv_plus: Path
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        cluster = Cluster(tmp_path, WasmRuntime(time_limit=2), client)
        try:
            (one, ctx1), (two, ctx2) = await nodes(cluster, kv_plus, 2)
            calls = [
                asyncio.create_task(one.execute(ctx1, "spin_host")),
                asyncio.create_task(two.execute(ctx2, "spin_host")),
            ]
            # Both guests are inside wasm at once: neither waits for the other.
            await guests_running(2)
            bodies = await asyncio.gather(*calls)
        finally:
            await cluster.stop_all()
    # Each stopped at its own limit; an interrupt meant for the other would
    # have ended it with another text.
    for body in bodies:
        assert error_of(body) == (
            "execution interrupted: it ran longer than the time limit of 2 s"
        )


class CountingLock(asyncio.Lock):
    """A context lock that tells how many requests wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    async def acquire(self) -> bool:
        self.waiting += 1
        try:
            return await super().acquire()
        finally:
            self.waiting -= 1


async def test_calls_on_one_context_take_turns_and_other_contexts_do_not_wait(
    tmp_path: Path, kv_plus: Path
) -> None:
    # merod serialises the executions of one context (its per-context lock)
    # and runs other contexts meanwhile; so does an embedded node.
    async with httpx.AsyncClient(timeout=30) as client:
        cluster = Cluster(tmp_path, WasmRuntime(time_limit=120), client)
        try:
            ((api, ctx),) = await nodes(cluster, kv_plus, 1)
            other = await context_on(api, kv_plus)
            service = api.node.service
            lock = service._locks[ctx] = CountingLock()
            finished: list[str] = []

            async def call(name: str, method: str) -> dict[str, Any]:
                body = await api.execute(ctx, method)
                finished.append(name)
                return body

            looping = asyncio.create_task(call("spin", "spin_host"))
            await guests_running(1)
            queued = asyncio.create_task(call("len", "len"))

            async def waits() -> bool:
                return lock.waiting == 1

            await wait_until(waits, timeout=20, what="the second call to wait for its context")
            # It waits for the context, not for a wasm thread: another
            # context of the same node runs meanwhile.
            assert await asyncio.wait_for(api.call(other, "len"), 20) == 0
            assert len(service._calls) == 1
            assert interrupt._WATCHDOG.running() == 1
            assert not queued.done()
            service._calls.copy().pop().cancel("the test is done with it")
            assert error_of(await looping) == "execution interrupted: the test is done with it"
            assert (await queued)["result"]["output"] == 0
            assert finished == ["spin", "len"]
        finally:
            await cluster.stop_all()


async def test_interrupting_a_call_on_one_node_leaves_another_nodes_call_running(
    tmp_path: Path, kv_plus: Path
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        cluster = Cluster(tmp_path, WasmRuntime(time_limit=120), client)
        try:
            (one, ctx1), (two, ctx2) = await nodes(cluster, kv_plus, 2)
            second = asyncio.create_task(two.execute(ctx2, "spin_host"))
            await guests_running(1)
            envelope = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "execute",
                "params": {"contextId": ctx1, "method": "spin_host", "argsJson": {}},
            }
            first = asyncio.create_task(
                client.post(one.url + "/jsonrpc", json=envelope, timeout=3600)
            )
            await guests_running(2)
            # node-1's client gives up: its guest is interrupted through the
            # engine both guests share.
            first.cancel()
            await guests_running(1)

            async def node_1_done() -> bool:
                return not in_progress(one)

            await wait_until(node_1_done, timeout=20, what="node-1's call to end")
            assert in_progress(two) and not second.done()
            # node-1 serves its next call at once.
            assert await asyncio.wait_for(one.call(ctx1, "len"), 20) == 0
            assert not second.done()
            # node-2's guest ran on and ends for its own reason.
            await two.node.stop()
            assert error_of(await second) == "execution interrupted: node node-2 is stopping"
        finally:
            await cluster.stop_all()


async def test_stopping_a_node_leaves_other_nodes_calls_running(
    tmp_path: Path, kv_plus: Path
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        cluster = Cluster(tmp_path, WasmRuntime(time_limit=120), client)
        try:
            (one, ctx1), (two, ctx2) = await nodes(cluster, kv_plus, 2)
            first = asyncio.create_task(one.execute(ctx1, "spin_host"))
            second = asyncio.create_task(two.execute(ctx2, "spin_host"))
            await guests_running(2)
            await one.node.stop()
            assert error_of(await first) == "execution interrupted: node node-1 is stopping"
            # node-1's threads are gone; node-2's guest still runs.
            assert wasm_threads("node-1") == []
            assert interrupt._WATCHDOG.running() == 1
            assert in_progress(two) and not second.done()
            assert wasm_threads("node-2") != []
            await two.node.stop()
            assert error_of(await second) == "execution interrupted: node node-2 is stopping"
            assert wasm_threads("node-2") == []
        finally:
            await cluster.stop_all()


async def test_node_restarts_leave_no_wasm_threads_behind(
    tmp_path: Path, kv_plus: Path
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        cluster = Cluster(tmp_path, WasmRuntime(time_limit=120), client)
        try:
            ((api, ctx),) = await nodes(cluster, kv_plus, 1)
            node = api.node
            counts = []
            for _ in range(3):
                # A finished call and a running one on each life of the node.
                assert await api.call(ctx, "len") == 0
                looping = asyncio.create_task(api.execute(ctx, "spin_host"))
                await guests_running(1)
                assert wasm_threads("node-1") != []
                await node.stop()
                await looping
                assert wasm_threads("node-1") == []
                # Every thread but the loop's executor (resolving names, lazily grown).
                counts.append(
                    sum(not t.name.startswith("asyncio_") for t in threading.enumerate())
                )
                await node.start()
            assert counts[1] == counts[0] and counts[2] == counts[0]
        finally:
            await cluster.stop_all()


async def test_a_parallel_step_is_not_held_up_by_a_looping_call_on_another_node(
    tmp_path: Path, kv_plus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reported case: a parallel step, a looping call on node-1 in one
    # group and a quick call on node-2 in the other, under a step timeout of
    # 3 s. node-2's call used to wait for node-1's guest and time out. The
    # quick group waits first so that the loop is under way; the loop's own
    # step times out later, and the quick call passes only if node-2 did not
    # wait for it.
    monkeypatch.setenv("CW_WASM_TIME_LIMIT", "120")
    steps = []
    for i in (1, 2):
        steps.append(
            f"""
  - {{name: install{i}, type: install_application, node: node-{i}, path: {kv_plus}}}
  - name: ns{i}
    type: create_namespace
    node: node-{i}
    application_id: ${{results.install{i}.application_id}}
  - name: ctx{i}
    type: create_context
    node: node-{i}
    application_id: ${{results.install{i}.application_id}}
    namespace_id: ${{results.ns{i}.namespace_id}}"""
        )
    text = f"""
name: independent nodes
nodes: {{count: 2, prefix: node}}
steps:{"".join(steps)}
  - name: both
    type: parallel
    groups:
      - name: loop
        steps:
          - name: spin
            type: call
            node: node-1
            context_id: ${{results.ctx1.context_id}}
            method: spin_host
            timeout: 8
            retries: 0
            expected_failure: true
      - name: quick
        steps:
          - {{name: settle, type: wait, seconds: 1}}
          - name: ok
            type: call
            node: node-2
            context_id: ${{results.ctx2.context_id}}
            method: len
            timeout: 3
            retries: 0
            expected: 0
"""
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path / "runs").run()
    failed = [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
    assert result.passed, failed
