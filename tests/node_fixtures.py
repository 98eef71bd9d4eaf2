"""Shared fixtures and helpers for the embedded node tests.

Test modules import what they use (``from node_fixtures import ...``); pytest
registers imported fixtures by name. Nodes are real: uvicorn on loopback, the
swarm on loopback, the real wasmtime runtime and the committed kv-store app.
Waiting is done by polling with a deadline, never by fixed sleeps.
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from calimero_workflow.bundle import dev_bundle_for
from calimero_workflow.node.runtime import WasmRuntime
from calimero_workflow.node.server import EmbeddedNode, NodeConfig

REPO = Path(__file__).resolve().parent.parent
KV_STORE_WASM = REPO / "apps" / "kv-store" / "kv_store.wasm"
_BUNDLES: Path | None = None


def dev_bundle(wasm: Path, **coordinates: Any) -> Path:
    """A dev-signed ``.mpk`` of ``wasm`` (built once per test session), which is
    what current merod, and so the embedded node, installs."""
    global _BUNDLES
    if _BUNDLES is None:
        _BUNDLES = Path(tempfile.mkdtemp(prefix="cw-test-bundles-"))
        atexit.register(shutil.rmtree, _BUNDLES, True)
    return dev_bundle_for(wasm, _BUNDLES, **coordinates)


def kv_store_mpk() -> Path:
    return dev_bundle(KV_STORE_WASM)
#: Generous: convergence normally takes milliseconds; the deadline only bounds failures.
CONVERGE_TIMEOUT = 20.0
#: Fast background sync so catch-up tests do not wait a full second per round.
SYNC_INTERVAL_MS = 100


async def wait_until(
    check: Callable[[], Awaitable[Any]],
    *,
    timeout: float = CONVERGE_TIMEOUT,
    what: str = "",
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(
                f"timed out after {timeout}s waiting for {what or check}: last {last!r}"
            )
        await asyncio.sleep(0.01)


class Api:
    """A thin HTTP client for one node, asserting on transport-level surprises."""

    def __init__(self, node: EmbeddedNode, client: httpx.AsyncClient) -> None:
        self.node = node
        self.client = client

    @property
    def url(self) -> str:
        return self.node.url

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(self.url + path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        if body is None:
            return await self.client.post(self.url + path, **kw)
        return await self.client.post(self.url + path, json=body, **kw)

    async def delete(self, path: str) -> httpx.Response:
        return await self.client.delete(self.url + path)

    async def data(self, method: str, path: str, body: Any = None) -> Any:
        """Call an admin route that must succeed and return its ``data``."""
        if method == "GET":
            resp = await self.get(path)
        elif method == "DELETE":
            resp = await self.delete(path)
        else:
            resp = await self.post(path, body)
        assert resp.status_code == 200, (
            f"{method} {path}: {resp.status_code} {resp.text}"
        )
        return resp.json()["data"]

    async def rpc(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """A JSON-RPC call; returns the whole envelope."""
        envelope = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
        resp = await self.client.post(self.url + "/jsonrpc", json=envelope)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["id"] == 7
        return body

    async def execute(self, ctx: str, method: str, args: Any = None) -> dict[str, Any]:
        params = {"contextId": ctx, "method": method, "argsJson": args or {}}
        return await self.rpc("execute", params)

    async def call(self, ctx: str, method: str, args: Any = None) -> Any:
        """An execute that must succeed; returns ``result.output``."""
        body = await self.execute(ctx, method, args)
        assert "error" not in body, body
        return body["result"]["output"]

    async def state_hash(self, ctx: str) -> str | None:
        resp = await self.get(f"/admin-api/contexts/{ctx}")
        if resp.status_code != 200:
            return None
        return str(resp.json()["data"]["contextStateHash"])

    # -- the §1.4 flow in pieces ---------------------------------------------------

    async def install_file(self, path: Path) -> str:
        """Install a ``.mpk`` (a raw ``.wasm`` is dev-bundled first, as the engine does)."""
        body = {"path": str(dev_bundle(path))}
        return str(
            (await self.data("POST", "/admin-api/install-dev-application", body))[
                "applicationId"
            ]
        )

    async def install_kv_store(self) -> str:
        return await self.install_file(KV_STORE_WASM)

    async def create_namespace(self, app_id: str) -> str:
        body = {"applicationId": app_id}
        return str(
            (await self.data("POST", "/admin-api/namespaces", body))["namespaceId"]
        )

    async def create_context(self, app_id: str, ns: str) -> str:
        body = {"applicationId": app_id, "groupId": ns, "initializationParams": []}
        return str((await self.data("POST", "/admin-api/contexts", body))["contextId"])

    async def invite(self, ns: str, **body: Any) -> dict[str, Any]:
        data = await self.data("POST", f"/admin-api/namespaces/{ns}/invite", body)
        return dict(data["invitation"])

    async def join(self, ns: str, invitation: dict[str, Any]) -> dict[str, Any]:
        body = {"invitation": invitation}
        return dict(await self.data("POST", f"/admin-api/namespaces/{ns}/join", body))

    async def join_context(self, ctx: str) -> dict[str, Any]:
        return dict(await self.data("POST", f"/admin-api/contexts/{ctx}/join"))


class Cluster:
    """Starts embedded nodes in one test and stops them all at the end."""

    def __init__(
        self, tmp: Path, runtime: WasmRuntime, client: httpx.AsyncClient
    ) -> None:
        self.tmp = tmp
        self.runtime = runtime
        self.client = client
        self.nodes: dict[str, EmbeddedNode] = {}

    async def start(
        self, name: str, *, bootstrap: list[str] | None = None, **cfg: Any
    ) -> Api:
        """Start node ``name`` (bootstrapped to all running nodes unless told otherwise)."""
        if bootstrap is None:
            bootstrap = [n.swarm_multiaddr for n in self.nodes.values() if n.running]
        cfg.setdefault("sync_interval_ms", SYNC_INTERVAL_MS)
        config = NodeConfig(name=name, home=self.tmp / name, bootstrap=bootstrap, **cfg)
        node = EmbeddedNode(config, runtime=self.runtime)
        await node.start()
        self.nodes[name] = node
        return Api(node, self.client)

    def api(self, name: str) -> Api:
        return Api(self.nodes[name], self.client)

    async def connected(self, count: int | None = None) -> None:
        """Wait until every running node sees all the other running nodes."""
        running = [n for n in self.nodes.values() if n.running]
        want = len(running) - 1 if count is None else count

        async def meshed() -> bool:
            return all(n.peer_count >= want for n in running)

        await wait_until(meshed, what=f"a full mesh of {len(running)} nodes")

    async def shared_context(self, *names: str) -> str:
        """Install kv-store on the first node, share a context with the others."""
        first = self.api(names[0])
        app_id = await first.install_kv_store()
        ns = await first.create_namespace(app_id)
        ctx = await first.create_context(app_id, ns)
        for name in names[1:]:
            other = self.api(name)
            await other.join(ns, await first.invite(ns))
            await other.join_context(ctx)
        return ctx

    async def converged(self, ctx: str, *names: str) -> str:
        """Wait until the named nodes (default: all running) report one state hash."""
        apis = (
            [self.api(n) for n in names]
            if names
            else [Api(n, self.client) for n in self.nodes.values() if n.running]
        )

        async def same() -> str | None:
            hashes = {await a.state_hash(ctx) for a in apis}
            if len(hashes) == 1 and None not in hashes:
                (value,) = hashes
                return value
            return None

        return str(await wait_until(same, what=f"equal state hashes of {ctx}"))

    async def stop_all(self) -> None:
        for node in self.nodes.values():
            await node.stop()


@pytest.fixture(scope="session")
def node_runtime() -> Iterator[WasmRuntime]:
    """One wasm runtime for every node of the session (apps compile once)."""
    yield WasmRuntime()


@pytest.fixture
async def cluster(tmp_path: Path, node_runtime: WasmRuntime) -> AsyncIterator[Cluster]:
    """A :class:`Cluster` whose nodes are stopped after the test."""
    async with httpx.AsyncClient(timeout=30) as client:
        group = Cluster(tmp_path, node_runtime, client)
        try:
            yield group
        finally:
            await group.stop_all()
