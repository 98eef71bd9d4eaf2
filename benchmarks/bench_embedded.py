"""Embedded nodes: the kv-store example end to end, call latency, ``wait_for_sync``, memory.

Issue 7, items 2, 3, 5 and 7 (the 10-node run). Wall times of whole runs are
taken from a child process (``python -m calimero_workflow.cli run``) so that
interpreter start, imports and wasm compilation are included, as a user sees
them. Latencies are taken in this process, where each call can be timed.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_harness import (
    KV_WASM,
    KV_WORKFLOW,
    Metric,
    Target,
    child_env,
    cli_argv,
    median,
    run_process,
)
from bench_workflows import many_nodes_workflow, sync_workflow, write

from calimero_workflow.bundle import SCHEME_V1
from calimero_workflow.client import NodeClient
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.node.ids import hex32
from calimero_workflow.node.runtime import WasmRuntime
from calimero_workflow.node.server import EmbeddedNode, NodeConfig
from calimero_workflow.steps.base import RunEvents
from calimero_workflow.workflow import parse_workflow

MS = 1000.0


# -- item 2: the kv-store example, process start to exit ------------------------------


def run_cli_workflow(
    workflow: Path, workdir: Path, *, extra: tuple[str, ...] = ()
) -> tuple[float, float, dict[str, Any]]:
    """Run ``calimero-workflow run`` on ``workflow``; return wall s, peak RSS MiB and the report."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / f"report-{time.perf_counter_ns()}.json"
    run = run_process(
        cli_argv("run", "-q", "--workdir", str(workdir / "runs"), "--report", str(report), *extra, str(workflow)),
        env=child_env(), cwd=workdir,
    )
    if run.returncode != 0:
        raise RuntimeError(f"{workflow.name} exited {run.returncode}: {run.stderr[-3000:]}")
    return run.wall_s, run.max_rss_mb, json.loads(report.read_text())


def breakdown(reports: list[dict[str, Any]], walls: list[float]) -> dict[str, Any]:
    """Median time per phase (and before the run began) over several run reports, in ms."""
    phases: dict[str, list[float]] = {}
    for report in reports:
        for phase in report["phases"]:
            if phase["status"] != "skipped":
                phases.setdefault(phase["name"], []).append(phase["duration_s"])
    steps: dict[str, list[float]] = {}
    for report in reports:
        for step in report["steps"]:
            steps.setdefault(step["name"], []).append(step["duration_s"])
    slowest = sorted(((median(v), k) for k, v in steps.items()), reverse=True)[:3]
    return {
        "startup_ms": round(median([w - r["duration_s"] for w, r in zip(walls, reports, strict=True)]) * MS, 1),
        "run_ms": round(median([r["duration_s"] for r in reports]) * MS, 1),
        "phases_ms": {k: round(median(v) * MS, 1) for k, v in phases.items()},
        "slowest_steps_ms": {k: round(v * MS, 1) for v, k in slowest},
    }


def bench_kv_wall(*, repeat: int, workdir: Path) -> Metric:
    """Item 2: the example with three embedded nodes, from process start to exit."""
    walls, rss, reports = [], [], []
    for i in range(repeat):
        wall, peak, report = run_cli_workflow(KV_WORKFLOW, workdir / f"kv-{i}")
        walls.append(wall)
        rss.append(peak)
        reports.append(report)
    imports = [_import_time(workdir) for _ in range(max(1, min(repeat, 3)))]
    detail = breakdown(reports, walls)
    detail["startup_what"] = "interpreter start, imports, parsing and validation: wall time minus the run's own duration"
    detail["interpreter_and_imports_ms"] = round(median(imports) * MS, 1)
    detail["peak_rss_mb"] = round(median(rss), 1)
    return Metric(
        key="kv_embedded_wall_s",
        title="kv-store example, 3 embedded nodes, process start to exit",
        unit="s",
        samples=walls,
        target=Target("<", 2.0, "< 2 s"),
        detail=detail,
    )


def _import_time(workdir: Path) -> float:
    """Wall time of a child that starts Python and imports what a run imports, then exits."""
    code = (
        "import calimero_workflow.cli, calimero_workflow.executor, calimero_workflow.workflow, "
        "calimero_workflow.backends.embedded, calimero_workflow.node.server, calimero_workflow.report.console;"
        "from calimero_workflow.steps import load_builtin_steps; load_builtin_steps()"
    )
    import sys

    run = run_process([sys.executable, "-c", code], env=child_env(), cwd=workdir)
    if run.returncode != 0:
        raise RuntimeError(f"importing the engine failed: {run.stderr[-2000:]}")
    return run.wall_s


# -- item 3: call latency ------------------------------------------------------------


async def _kv_context(nodes: list[EmbeddedNode], clients: list[NodeClient]) -> str:
    """Install kv-store on the first node, share one context with all; return its id."""
    first = clients[0]
    # As the engine installs a .wasm on an embedded node: as a dev-signed bundle.
    first.expect_bundles(SCHEME_V1)
    app = (await first.install_file(KV_WASM, bundle_dir=nodes[0].home.parent / "bundles")).application_id
    ns = await first.create_namespace(app)
    ctx = (await first.create_context(app, ns))["contextId"]
    for client in clients[1:]:
        invitation = (await first.create_namespace_invitation(ns))["invitation"]
        await client.join_namespace(ns, invitation)
    for client in clients[1:]:
        await client.join_context(ctx)
    return str(ctx)


async def _start_nodes(count: int, home: Path, runtime: WasmRuntime) -> list[EmbeddedNode]:
    nodes: list[EmbeddedNode] = []
    for i in range(count):
        config = NodeConfig(
            name=f"node-{i + 1}", home=home / f"node-{i + 1}", bootstrap=[n.swarm_multiaddr for n in nodes]
        )
        node = EmbeddedNode(config, runtime=runtime)
        await node.start()
        nodes.append(node)
    deadline = time.monotonic() + 30
    while any(n.peer_count < count - 1 for n in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded nodes did not connect: {[n.peer_count for n in nodes]}")
        await asyncio.sleep(0.01)
    return nodes


async def _call_latency(*, nodes: int, batches: int, calls: int, home: Path) -> dict[str, Any]:
    runtime = WasmRuntime()
    started = await _start_nodes(nodes, home, runtime)
    clients = [NodeClient(n.url, name=n.config.name) for n in started]
    try:
        ctx = await _kv_context(started, clients)
        client = clients[0]
        for i in range(20):  # warm up connections, code paths and the module cache
            await client.execute(ctx, "set", {"key": f"w{i}", "value": "x"})
            await client.execute(ctx, "get", {"key": f"w{i}"})
        out: dict[str, list[float]] = {"set": [], "get": [], "health": []}
        every: dict[str, list[float]] = {"set": [], "get": [], "health": []}
        for b in range(batches):
            times: dict[str, list[float]] = {"set": [], "get": [], "health": []}
            for i in range(calls):
                key = f"k{b}-{i}"
                t0 = time.perf_counter()
                await client.execute(ctx, "set", {"key": key, "value": "v" * 32})
                t1 = time.perf_counter()
                result = await client.execute(ctx, "get", {"key": key})
                t2 = time.perf_counter()
                await client.health()
                t3 = time.perf_counter()
                if result.output != "v" * 32:
                    raise RuntimeError(f"get returned {result.output!r} after set")
                times["set"].append(t1 - t0)
                times["get"].append(t2 - t1)
                times["health"].append(t3 - t2)
            for k, v in times.items():
                out[k].append(median(v))
                every[k].extend(v)
        # The same calls straight on the compiled module: what wasm itself costs.
        node = started[0]
        record = node.service.store.contexts[ctx]
        app = node.service.app(record.application_id)
        assert app is not None
        module = node.service.module(app)
        storage = _storage_of(node, ctx)
        raw: dict[str, list[float]] = {"set": [], "get": []}
        ctx_bytes, exec_bytes = bytes(32), bytes(range(32))
        for i in range(calls * batches):
            for method, args in (("set", {"key": f"r{i}", "value": "v" * 32}), ("get", {"key": "w1"})):
                t0 = time.perf_counter()
                outcome = module.run(
                    method, json.dumps(args).encode(), storage=storage, context_id=ctx_bytes, executor_id=exec_bytes
                )
                raw[method].append(time.perf_counter() - t0)
                if outcome.failure is not None:
                    raise RuntimeError(f"raw {method} failed: {outcome.failure}")
        return {"batches": out, "every": every, "raw": raw}
    finally:
        for c in clients:
            await c.aclose()
        for n in started:
            await n.stop()


def _storage_of(node: EmbeddedNode, ctx: str) -> Any:
    """The context's key-value view the service hands to the runtime (read-only here)."""
    return node.service.store.kv(ctx)


def bench_call_latency(*, batches: int, calls: int, workdir: Path) -> list[Metric]:
    """Item 3: ``set`` and ``get`` over JSON-RPC on an embedded node, module compiled and cached.

    The metric is one node alone. The same calls with three nodes in the
    context are reported beside it: there the writer's peers apply each
    ``set`` in the same process, and that work delays the next call.
    """
    data = asyncio.run(_call_latency(nodes=1, batches=batches, calls=calls, home=workdir / "one"))
    three = asyncio.run(_call_latency(nodes=3, batches=batches, calls=max(10, calls // 2), home=workdir / "three"))
    metrics = []
    for method in ("set", "get"):
        every = sorted(data["every"][method])
        metrics.append(
            Metric(
                key=f"call_{method}_ms",
                title=f"embedded `{method}` call latency (JSON-RPC over loopback HTTP, 1 node)",
                unit="ms",
                samples=[v * MS for v in data["batches"][method]],
                target=Target("<", 2.0, "< 2 ms"),
                detail={
                    "what": f"median of each batch of {calls} calls, {batches} batch(es); the module is compiled once and cached",
                    "p90_ms": round(every[int(0.9 * len(every))] * MS, 3),
                    "wasm_only_ms": round(median(data["raw"][method]) * MS, 3),
                    "http_health_roundtrip_ms": round(median(data["every"]["health"]) * MS, 3),
                    "three_nodes_ms": round(median(three["every"][method]) * MS, 3),
                },
            )
        )
    return metrics


# -- item 5: wait_for_sync ---------------------------------------------------------------


class _SyncProbe(RunEvents):
    """Watches every embedded node's context root in this process while steps run.

    Reading the root from the node's store costs microseconds, so the probe can
    look every half millisecond without loading the event loop the way HTTP
    polling would. It needs the embedded backend's node objects; this is the
    one place the suite reads a private attribute (``EmbeddedBackend._nodes``).
    """

    def __init__(self) -> None:
        self.executor: WorkflowExecutor | None = None
        self.timeline: list[tuple[float, tuple[bytes | None, ...]]] = []
        self.steps: list[tuple[str, str, float, float, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0
        self.names: list[str] = []

    def step_started(self, step: Any, path: str) -> None:
        self._started = time.perf_counter()
        if self._task is None and not step.display_name.startswith("setup-"):
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def step_finished(self, record: Any) -> None:
        self.steps.append((record.name, record.type, self._started, time.perf_counter(), dict(record.data)))

    async def _watch(self) -> None:
        assert self.executor is not None and self.executor.ctx is not None
        nodes = self.executor.backend._nodes  # type: ignore[union-attr]
        ctx_id = self.executor.ctx.results["setup-ctx"]["context_id"]
        self.names = list(nodes)
        last: tuple[bytes | None, ...] | None = None
        while True:
            roots = []
            for name in self.names:
                record = nodes[name].service.store.contexts.get(ctx_id) if name in nodes else None
                roots.append(record.root if record is not None else None)
            current = tuple(roots)
            if current != last:
                self.timeline.append((time.perf_counter(), current))
                last = current
            await asyncio.sleep(0.0005)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _sync_lags(probe: _SyncProbe) -> list[dict[str, float]]:
    """Per wait_for_sync step: when the last node reached the final root, and when the step returned."""
    out = []
    for name, type_, started, finished, data in probe.steps:
        if type_ != "wait_for_sync":
            continue
        final = data["context_state_hash"]
        reached: list[float] = []
        for i in range(len(probe.names)):
            # The moment node i last changed to the final root, at or before the step's end.
            when = None
            for t, roots in probe.timeline:
                if t > finished:
                    break
                value = roots[i]
                is_final = value is not None and hex32(value) == final
                if is_final and when is None:
                    when = t
                elif not is_final:
                    when = None
            if when is None:
                raise RuntimeError(f"{name}: the probe never saw node {probe.names[i]} at {final}")
            reached.append(when)
        last = max(reached)
        out.append(
            {
                # The step cannot return before it started; convergence before that is not its delay.
                "lag_s": finished - max(last, started),
                "step_s": finished - started,
                "converged_after_start_s": max(0.0, last - started),
                "polls": float(data.get("polls", 0)),
            }
        )
    return out


def bench_wait_for_sync(*, nodes: int, rounds: int, repeat: int, workdir: Path) -> Metric:
    """Item 5: time from the last node reaching the final root to ``wait_for_sync`` returning."""
    lags: list[dict[str, float]] = []
    per_run: list[float] = []
    for i in range(repeat):
        path = write(workdir / f"sync-{i}", "sync.yml", sync_workflow(nodes, rounds))
        workflow = parse_workflow(path.read_text(), file=path, environ={})
        probe = _SyncProbe()
        executor = WorkflowExecutor(workflow, backend="embedded", env={}, events=probe, workdir=workdir / f"sync-{i}" / "runs")
        probe.executor = executor

        async def go(ex: WorkflowExecutor = executor, pr: _SyncProbe = probe) -> Any:
            try:
                return await ex.run()
            finally:
                pr.stop()

        result = asyncio.run(go())
        if not result.passed:
            raise RuntimeError(f"the wait_for_sync workflow failed: {[s.error for s in result.failed_steps()]}")
        run_lags = _sync_lags(probe)
        lags.extend(run_lags)
        per_run.append(median([x["lag_s"] for x in run_lags]) * MS)
    all_lags = sorted(x["lag_s"] * MS for x in lags)
    return Metric(
        key="wait_for_sync_lag_ms",
        title=f"wait_for_sync: last node at final root -> step returns ({nodes} embedded nodes)",
        unit="ms",
        samples=per_run,
        target=Target("<", 100.0, "< 100 ms"),
        detail={
            "what": f"{rounds} rounds of set + wait_for_sync per run, median lag per run; roots read in-process every 0.5 ms",
            "steps_measured": len(lags),
            "p90_ms": round(all_lags[int(0.9 * len(all_lags))], 3),
            "max_ms": round(all_lags[-1], 3),
            "step_duration_ms": round(median([x["step_s"] for x in lags]) * MS, 3),
            "converged_after_step_start_ms": round(median([x["converged_after_start_s"] for x in lags]) * MS, 3),
            "polls": median([x["polls"] for x in lags]),
        },
    )


# -- item 7: memory of a 10-node run --------------------------------------------------------


def bench_memory_nodes(*, nodes: int, repeat: int, workdir: Path) -> Metric:
    """Item 7: peak RSS of ``calimero-workflow run`` with ``nodes`` embedded nodes."""
    path = write(workdir, f"nodes-{nodes}.yml", many_nodes_workflow(nodes))
    rss, walls, reports = [], [], []
    for i in range(repeat):
        wall, peak, report = run_cli_workflow(path, workdir / f"mem-nodes-{i}")
        rss.append(peak)
        walls.append(wall)
        reports.append(report)
    detail = breakdown(reports, walls)
    detail["wall_s"] = round(median(walls), 3)
    detail["nodes"] = nodes
    return Metric(
        key="memory_nodes_rss_mb",
        title=f"peak RSS, {nodes} embedded nodes (CLI process)",
        unit="MiB",
        samples=rss,
        detail=detail,
    )


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        for m in bench_call_latency(batches=2, calls=20, workdir=Path(tmp)):
            print(m.key, m.median, m.detail)
        m = bench_wait_for_sync(nodes=3, rounds=5, repeat=1, workdir=Path(tmp))
        print(m.key, m.median, m.detail)
