"""Docker nodes: parallel start and readiness, and the kv-store example on Docker (items 4 and 6).

Start times use :class:`DockerBackend` directly, as the engine's
``nodes_start`` phase does. In separate starts, a probe polls each node's
``GET /admin-api/health`` (and ``/admin-api/peers``) every 5 ms on a bare
connection while ``start_nodes`` runs, so we know when a node first answered
and when it first met the backend's readiness rule (health 200 and every
sibling seen as a peer). The probe learns each node's URL from the backend as
soon as its container has started; this reads the backend's private ``_urls``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench_embedded import breakdown, run_cli_workflow
from bench_harness import (
    KV_WORKFLOW,
    NODE_IMAGE,
    Metric,
    Target,
    cpu_busy,
    cpu_times,
    median,
)

from calimero_workflow.backends.base import NodeSpec
from calimero_workflow.backends.docker import DockerBackend

#: Probe period; the backend itself polls every 50 ms.
PROBE_INTERVAL = 0.005


async def _get(url: str, path: str) -> tuple[int, bytes]:
    """A bare HTTP/1.1 GET on a fresh connection: status and body.

    Far cheaper than an HTTP client library, so polling five booting nodes
    every few milliseconds does not take CPU away from them on a small machine.
    """
    parts = urlsplit(url)
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parts.hostname, parts.port or 80), timeout=0.5
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), timeout=1.0)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


async def _probe_node(
    backend: DockerBackend, name: str, peers: int, marks: dict[str, dict[str, float]], stop: asyncio.Event
) -> None:
    """Record when ``name`` first answers health and first sees ``peers`` peers."""
    mine = marks.setdefault(name, {})
    while not stop.is_set():
        url = backend._urls.get(name)
        if url is None:
            await asyncio.sleep(PROBE_INTERVAL)
            continue
        mine.setdefault("url_known", time.perf_counter())
        try:
            status, _ = await _get(url, "/admin-api/health")
            now = time.perf_counter()
            if status == 200:
                mine.setdefault("health", now)
                if peers <= 0:
                    mine.setdefault("ready", now)
                    return
                status, body = await _get(url, "/admin-api/peers")
                payload = json.loads(body) if status == 200 else {}
                data = payload.get("data", payload) if isinstance(payload, dict) else {}
                if isinstance(data, dict) and int(data.get("count", 0) or 0) >= peers:
                    mine.setdefault("ready", time.perf_counter())
                    return
        except (OSError, TimeoutError, ValueError, IndexError):
            pass  # not listening yet, or an answer cut short: look again
        await asyncio.sleep(PROBE_INTERVAL)


async def _start_once(n: int, workdir: Path, image: str, *, probe: bool) -> dict[str, Any]:
    """Start ``n`` nodes with a fresh backend, then clean up; with ``probe``, watch them boot."""
    run_id = f"bench-{secrets.token_hex(4)}"
    backend = DockerBackend(run_id=run_id, workflow_name="bench-docker-start", workdir=workdir / run_id, image=image)
    specs = [NodeSpec(name=f"node-{i + 1}") for i in range(n)]
    marks: dict[str, dict[str, float]] = {}
    stop = asyncio.Event()
    # When the last `merod init` container finished (they run in parallel threads).
    init_ends: list[float] = []
    original_init = backend._init_node

    def timed_init(spec: NodeSpec, timeout: float) -> str:
        try:
            return original_init(spec, timeout)
        finally:
            init_ends.append(time.perf_counter())

    backend._init_node = timed_init  # type: ignore[method-assign]
    probes = [asyncio.create_task(_probe_node(backend, s.name, n - 1, marks, stop)) for s in specs] if probe else []
    cpu_before = cpu_times()
    started = time.perf_counter()
    try:
        await backend.start_nodes(specs, ready_timeout=120)
        returned = time.perf_counter()
        busy = cpu_busy(cpu_before, cpu_times())
        if probes:
            # Let the probes see what the backend saw (they may lag by one period).
            await asyncio.wait_for(asyncio.gather(*probes), timeout=5)
    finally:
        stop.set()
        for task in probes:
            task.cancel()
        t0 = time.perf_counter()
        await backend.cleanup()
        cleanup_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "start_s": returned - started,
        "init_s": max(init_ends) - started,
        "cleanup_s": cleanup_s,
        # Whole machine, every process: Docker daemon, containers and this engine.
        "cpu_busy": busy,
    }
    if probe:
        last_health = max(m["health"] for m in marks.values())
        last_ready = max(m["ready"] for m in marks.values())
        out.update(
            first_url_s=min(m["url_known"] for m in marks.values()) - started,
            all_urls_s=max(m["url_known"] for m in marks.values()) - started,
            all_health_s=last_health - started,
            all_ready_s=last_ready - started,
            lag_after_health_s=returned - last_health,
            lag_after_ready_s=returned - last_ready,
        )
    return out


def bench_docker_start(
    *, sizes: list[int], repeat: int, probed: int, workdir: Path, image: str = NODE_IMAGE
) -> list[Metric]:
    """Item 4: start 1..n Docker nodes until all are ready; parallelism and readiness lag.

    Start times come from ``repeat`` plain starts per size. The readiness lag
    and the boot timeline come from ``probed`` further starts with the probe
    running, kept apart because polling still costs the nodes some CPU.
    """
    if repeat < 1 or probed < 1 or len(sizes) < 2:
        raise ValueError(f"need repeat >= 1, probed >= 1 and two sizes or more, got {repeat}, {probed}, {sizes}")
    plain: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    watched: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    for i in range(max(repeat, probed)):
        for n in sizes:  # interleaved, so drift in the machine's load hits every size alike
            if i < repeat:
                plain[n].append(asyncio.run(_start_once(n, workdir / f"start-{n}-{i}", image, probe=False)))
            if i < probed:
                watched[n].append(asyncio.run(_start_once(n, workdir / f"probed-{n}-{i}", image, probe=True)))
    metrics = []
    for n in sizes:
        timeline = {
            k: round(median([r[k] for r in watched[n]]), 3)
            for k in ("init_s", "first_url_s", "all_urls_s", "all_health_s", "all_ready_s", "start_s")
        } if watched[n] else {}
        metrics.append(
            Metric(
                key=f"docker_start_{n}_s",
                title=f"Docker: start {n} node(s) until all are ready",
                unit="s",
                samples=[r["start_s"] for r in plain[n]],
                detail={
                    "what": "from start_nodes() to its return, without the probe",
                    "init_done_s": round(median([r["init_s"] for r in plain[n]]), 3),
                    "cleanup_s": round(median([r["cleanup_s"] for r in plain[n]]), 3),
                    "machine_cpu_busy": _rounded_median([r["cpu_busy"] for r in plain[n]]),
                    "probed_timeline_s": timeline,
                    "timeline_what": "medians over probed starts, seconds since start_nodes(): last merod init done, first/last container started, last node answering health, last node ready, return",
                },
            )
        )
    smallest, largest = min(sizes), max(sizes)
    ratio = median([r["start_s"] for r in plain[largest]]) / median([r["start_s"] for r in plain[smallest]])
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
    every = [r for rs in watched.values() for r in rs]
    metrics.append(
        Metric(
            key="docker_ready_lag_ms",
            title="Docker: start_nodes returns after the last node first answers health",
            unit="ms",
            samples=[r["lag_after_health_s"] * 1000 for r in every],
            target=Target("<", 100.0, "< 100 ms"),
            detail={
                "what": f"per probed start ({probed} per size): return time minus when the probe first got 200 from the last node's health; probe period {PROBE_INTERVAL * 1000:g} ms",
                "after_full_readiness_ms": round(median([r["lag_after_ready_s"] for r in every]) * 1000, 1),
                "full_readiness": "health 200 and every sibling seen in /admin-api/peers (the backend's rule)",
                "max_ms": round(max(r["lag_after_health_s"] for r in every) * 1000, 1),
            },
        )
    )
    return metrics


def _rounded_median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(median(known), 3) if known else None


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
