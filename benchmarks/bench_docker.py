"""Docker nodes: parallel start and readiness, and the kv-store example on Docker (items 4 and 6).

Start times use :class:`DockerBackend` directly, as the engine's
``nodes_start`` phase does. While ``start_nodes`` runs, a probe polls each
node's ``GET /admin-api/health`` (and ``/admin-api/peers``) every 5 ms on its
own connection, so we know when a node first answered and when it first met
the backend's readiness rule (health 200 and every sibling seen as a peer).
The probe learns each node's URL from the backend as soon as its container
has started; this reads the backend's private ``_urls`` map.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
from bench_embedded import breakdown, run_cli_workflow
from bench_harness import KV_WORKFLOW, NODE_IMAGE, Metric, Target, median

from calimero_workflow.backends.base import NodeSpec
from calimero_workflow.backends.docker import DockerBackend

#: Probe period; readiness is noticed by the backend within its own 50 ms poll.
PROBE_INTERVAL = 0.005


async def _probe_node(
    backend: DockerBackend, name: str, peers: int, marks: dict[str, dict[str, float]], stop: asyncio.Event
) -> None:
    """Record when ``name`` first answers health and first sees ``peers`` peers."""
    mine = marks.setdefault(name, {})
    # A fresh connection per request: a container that is not listening yet
    # refuses, and a pooled connection would hide when it started to accept.
    async with httpx.AsyncClient(timeout=0.5, trust_env=False) as http:
        while not stop.is_set():
            url = backend._urls.get(name)
            if url is None:
                await asyncio.sleep(PROBE_INTERVAL)
                continue
            mine.setdefault("url_known", time.perf_counter())
            try:
                health = await http.get(f"{url}/admin-api/health")
                now = time.perf_counter()
                if health.status_code == 200:
                    mine.setdefault("health", now)
                    if peers <= 0:
                        mine.setdefault("ready", now)
                        return
                    body = (await http.get(f"{url}/admin-api/peers")).json()
                    data = body.get("data", body) if isinstance(body, dict) else {}
                    if isinstance(data, dict) and int(data.get("count", 0) or 0) >= peers:
                        mine.setdefault("ready", time.perf_counter())
                        return
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(PROBE_INTERVAL)


async def _start_once(n: int, workdir: Path, image: str) -> dict[str, Any]:
    run_id = f"bench-{secrets.token_hex(4)}"
    backend = DockerBackend(run_id=run_id, workflow_name="bench-docker-start", workdir=workdir / run_id, image=image)
    specs = [NodeSpec(name=f"node-{i + 1}") for i in range(n)]
    marks: dict[str, dict[str, float]] = {}
    stop = asyncio.Event()
    # Time spent in `merod init` containers, per node (they run in parallel threads).
    init_spans: list[tuple[float, float]] = []
    original_init = backend._init_node

    def timed_init(spec: NodeSpec) -> str:
        t0 = time.perf_counter()
        try:
            return original_init(spec)
        finally:
            init_spans.append((t0, time.perf_counter()))

    backend._init_node = timed_init  # type: ignore[method-assign]
    probes = [asyncio.create_task(_probe_node(backend, s.name, n - 1, marks, stop)) for s in specs]
    started = time.perf_counter()
    try:
        await backend.start_nodes(specs, ready_timeout=120)
        returned = time.perf_counter()
        # Let the probes see what the backend saw (they may lag by one period).
        await asyncio.wait_for(asyncio.gather(*probes), timeout=5)
    finally:
        stop.set()
        for task in probes:
            task.cancel()
        t0 = time.perf_counter()
        await backend.cleanup()
        cleanup_s = time.perf_counter() - t0
    last_health = max(m["health"] for m in marks.values())
    last_ready = max(m["ready"] for m in marks.values())
    return {
        "start_s": returned - started,
        "init_s": max(e for _, e in init_spans) - started,
        "first_url_s": min(m["url_known"] for m in marks.values()) - started,
        "all_urls_s": max(m["url_known"] for m in marks.values()) - started,
        "all_health_s": last_health - started,
        "all_ready_s": last_ready - started,
        "lag_after_health_s": returned - last_health,
        "lag_after_ready_s": returned - last_ready,
        "cleanup_s": cleanup_s,
    }


def bench_docker_start(*, sizes: list[int], repeat: int, workdir: Path, image: str = NODE_IMAGE) -> list[Metric]:
    """Item 4: start 1..n Docker nodes until all are ready; parallelism and readiness lag."""
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    for i in range(repeat):
        for n in sizes:  # interleaved, so drift in the machine's load hits every size alike
            runs[n].append(asyncio.run(_start_once(n, workdir / f"docker-start-{n}-{i}", image)))
    metrics = []
    for n in sizes:
        phases = {
            k: round(median([r[k] for r in runs[n]]), 3)
            for k in ("init_s", "first_url_s", "all_urls_s", "all_health_s", "all_ready_s", "cleanup_s")
        }
        metrics.append(
            Metric(
                key=f"docker_start_{n}_s",
                title=f"Docker: start {n} node(s) until all are ready",
                unit="s",
                samples=[r["start_s"] for r in runs[n]],
                detail={"timeline_s": phases, "what": "from start_nodes() to its return; timeline marks are medians since the call"},
            )
        )
    smallest, largest = min(sizes), max(sizes)
    ratio = median([r["start_s"] for r in runs[largest]]) / median([r["start_s"] for r in runs[smallest]])
    metrics.append(
        Metric(
            key="docker_start_ratio",
            title=f"Docker: start time of {largest} nodes / {smallest} node(s)",
            unit="x",
            value=ratio,
            samples=[ratio],
            target=Target("<", 1.5, "< 1.5"),
            detail={"sizes": [smallest, largest]},
        )
    )
    every = [r for rs in runs.values() for r in rs]
    metrics.append(
        Metric(
            key="docker_ready_lag_ms",
            title="Docker: start_nodes returns after the last node first answers health",
            unit="ms",
            samples=[r["lag_after_health_s"] * 1000 for r in every],
            target=Target("<", 100.0, "< 100 ms"),
            detail={
                "what": "per start: return time minus when the probe first got 200 from the last node's health",
                "after_full_readiness_ms": round(median([r["lag_after_ready_s"] for r in every]) * 1000, 1),
                "full_readiness": "health 200 and every sibling seen in /admin-api/peers (the backend's rule)",
                "max_ms": round(max(r["lag_after_health_s"] for r in every) * 1000, 1),
            },
        )
    )
    return metrics


def bench_docker_kv(*, repeat: int, workdir: Path, embedded: Metric | None, image: str = NODE_IMAGE) -> list[Metric]:
    """Item 6: the kv-store example on Docker nodes, and its ratio to embedded nodes."""
    walls, reports = [], []
    for i in range(repeat):
        wall, _rss, report = run_cli_workflow(
            KV_WORKFLOW, workdir / f"docker-kv-{i}", extra=("--backend", "docker", "--image", image)
        )
        walls.append(wall)
        reports.append(report)
    docker_metric = Metric(
        key="kv_docker_wall_s",
        title="kv-store example, 3 Docker nodes, process start to exit",
        unit="s",
        samples=walls,
        detail=breakdown(reports, walls),
    )
    metrics = [docker_metric]
    if embedded is not None and embedded.median:
        ratio = median(walls) / embedded.median
        metrics.append(
            Metric(
                key="kv_docker_vs_embedded",
                title="kv-store example: Docker wall time / embedded wall time",
                unit="x",
                value=ratio,
                samples=[ratio],
                detail={"docker_s": round(median(walls), 3), "embedded_s": round(embedded.median, 3)},
            )
        )
    return metrics
