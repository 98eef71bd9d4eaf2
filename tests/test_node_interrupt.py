"""A guest that never returns: the time limit, a client giving up, a node stopping.

The app is ``tests/wasm/kv_plus.c``, whose ``spin_host`` loops over a host
call forever. Fuel alone would let it run for minutes (each round costs the
guest ~2 points of merod's 10^9), holding the node's wasm thread the whole
time. Nodes, servers and the runtime are real.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import httpx
import pytest

from calimero_workflow.executor import WorkflowExecutor
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


async def one_node(
    tmp_path: Path, client: httpx.AsyncClient, kv_plus: Path, time_limit: float
) -> tuple[Cluster, Api, str]:
    """One node running kv_plus under ``time_limit``, and a context on it."""
    cluster = Cluster(tmp_path, WasmRuntime(time_limit=time_limit), client)
    api = await cluster.start("node-1")
    app_id = await api.install_file(kv_plus)
    ns = await api.create_namespace(app_id)
    ctx = await api.create_context(app_id, ns)
    return cluster, api, ctx


async def timed_call(api: Api, ctx: str, method: str) -> tuple[float, dict]:
    started = time.monotonic()
    body = await api.execute(ctx, method)
    return time.monotonic() - started, body


async def test_a_runaway_call_is_interrupted_at_the_time_limit(
    tmp_path: Path, kv_plus: Path
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        cluster, api, ctx = await one_node(tmp_path, client, kv_plus, time_limit=1)
        try:
            elapsed, body = await timed_call(api, ctx, "spin_host")
            assert body["error"]["type"] == "FunctionCallError"
            assert body["error"]["data"] == (
                "execution interrupted: it ran longer than the time limit of 1 s"
            )
            assert 1 <= elapsed < 5
            # The wasm thread is free again: the next call answers at once.
            elapsed, body = await timed_call(api, ctx, "len")
            assert body["result"]["output"] == 0
            assert elapsed < 1
        finally:
            await cluster.stop_all()


async def test_a_client_that_gives_up_interrupts_its_call(
    tmp_path: Path, kv_plus: Path
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        cluster, api, ctx = await one_node(tmp_path, client, kv_plus, time_limit=120)
        try:
            envelope = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "execute",
                "params": {"contextId": ctx, "method": "spin_host", "argsJson": {}},
            }
            with pytest.raises(httpx.ReadTimeout):
                await client.post(api.url + "/jsonrpc", json=envelope, timeout=0.5)
            # Without the interruption this call would wait out the 120 s limit.
            elapsed, body = await timed_call(api, ctx, "len")
            assert body["result"]["output"] == 0
            assert elapsed < 5
        finally:
            await cluster.stop_all()


async def test_stopping_a_node_with_a_running_call_is_clean(
    tmp_path: Path, kv_plus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with httpx.AsyncClient(timeout=30) as client:
        cluster, api, ctx = await one_node(tmp_path, client, kv_plus, time_limit=120)
        node = cluster.nodes["node-1"]
        call = asyncio.create_task(api.execute(ctx, "spin_host"))
        try:

            async def running() -> bool:
                return bool(node.service._calls)

            await wait_until(running, timeout=10, what="the call to start")
            started = time.monotonic()
            await node.stop()
            assert time.monotonic() - started < 2
            body = await asyncio.wait_for(call, 5)
        finally:
            call.cancel()
            await cluster.stop_all()
    # The caller hears why, and nothing is logged as a crash.
    assert body["error"]["data"] == "execution interrupted: node node-1 is stopping"
    assert not [r for r in caplog.records if "Exception in ASGI" in r.getMessage()]
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_step_timeout_frees_the_node_for_the_next_step(
    tmp_path: Path, kv_plus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The embedded backend's runtime reads its limit from the environment;
    # a long one shows that the step's own timeout interrupts the guest.
    monkeypatch.setenv("CW_WASM_TIME_LIMIT", "120")
    text = f"""
name: runaway
nodes: {{count: 1, prefix: node}}
steps:
  - {{name: install, type: install_application, node: node-1, path: {kv_plus}}}
  - name: ns
    type: create_namespace
    node: node-1
    application_id: ${{results.install.application_id}}
  - name: ctx
    type: create_context
    node: node-1
    application_id: ${{results.install.application_id}}
    namespace_id: ${{results.ns.namespace_id}}
  - name: spin
    type: call
    node: node-1
    context_id: ${{results.ctx.context_id}}
    method: spin_host
    timeout: 1
    retries: 0
    expected_failure: true
  - name: after
    type: call
    node: node-1
    context_id: ${{results.ctx.context_id}}
    method: len
    timeout: 5
    expected: 0
"""
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    started = time.monotonic()
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path / "runs").run()
    failed = [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
    assert result.passed, failed
    assert time.monotonic() - started < 20
