"""Engine overhead per step, and how it grows with the number of steps (issue 7, items 1 and 7).

The workflow is :func:`bench_workflows.steps_workflow`: one embedded node,
then steps that alternate an assert on a literal and a read-only ``get``
call. The run happens in this process so each step can be timestamped.

What counts as *node work* and is excluded: the time spent awaiting the
node's HTTP answer (``NodeClient._request``), measured by wrapping that one
method for the duration of the benchmark. The embedded node serves the
request on the same event loop, so this window holds the node's whole
handling of the call (routing, JSON-RPC, wasm) plus the HTTP client's own
send/receive. Everything else between one step finishing and the next one
finishing is engine overhead: resolving placeholders, validating the model,
building records, the retry/timeout wrapper, events, the executor loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_harness import (
    Metric,
    Target,
    child_env,
    cli_argv,
    linear_fit,
    median,
    run_process,
)
from bench_workflows import steps_workflow, write

from calimero_workflow.client import NodeClient
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.steps.base import RunEvents
from calimero_workflow.workflow import parse_workflow

#: Steps whose names start with this prepare the node; they are not measured.
SETUP_PREFIX = "setup-"


class _NodeTimer:
    """Accumulates wall time spent inside ``NodeClient._request``."""

    def __init__(self) -> None:
        self.total = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original = NodeClient._request
        timer = self

        async def timed(client: NodeClient, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(client, *args, **kwargs)
            finally:
                timer.total += time.perf_counter() - started

        NodeClient._request = timed  # type: ignore[method-assign]
        try:
            yield
        finally:
            NodeClient._request = original  # type: ignore[method-assign]


@dataclass
class _StepTime:
    name: str
    type: str
    started: float
    finished: float
    node_s: float


@dataclass
class StepClock(RunEvents):
    """Timestamps every step, with the node time accumulated while it ran."""

    timer: _NodeTimer
    steps: list[_StepTime] = field(default_factory=list)
    _started: float = 0.0
    _node_at_start: float = 0.0

    def step_started(self, step: Any, path: str) -> None:
        self._started = time.perf_counter()
        self._node_at_start = self.timer.total

    def step_finished(self, record: Any) -> None:
        now = time.perf_counter()
        self.steps.append(
            _StepTime(record.name, record.type, self._started, now, self.timer.total - self._node_at_start)
        )


@dataclass
class StepsRun:
    """One run of an ``n``-step workflow, reduced to engine-only times (seconds)."""

    n: int
    parse_s: float
    #: Per measured step: from the previous step's end to this one's end, minus node time.
    overhead: list[float]
    #: The same inside the step only (start to end), i.e. without the executor loop.
    in_step: list[float]
    assert_overhead: list[float]
    call_overhead: list[float]
    node_per_call: list[float]

    @property
    def total_overhead(self) -> float:
        return sum(self.overhead)


def run_steps(n: int, workdir: Path) -> StepsRun:
    """Parse and run the ``n``-step workflow in this process; return its timings."""
    path = write(workdir, f"steps-{n}.yml", steps_workflow(n))
    text = path.read_text()
    started = time.perf_counter()
    workflow = parse_workflow(text, file=path, environ={})
    parse_s = time.perf_counter() - started
    timer = _NodeTimer()
    clock = StepClock(timer)
    with timer.installed():
        executor = WorkflowExecutor(workflow, backend="embedded", env={}, events=clock, workdir=workdir / "runs")
        result = asyncio.run(executor.run())
    if not result.passed:
        failed = [s for s in result.all_steps() if str(s.status) == "failed"]
        raise RuntimeError(f"the {n}-step benchmark workflow failed: {failed[0].error if failed else result.phases}")
    overhead, in_step, asserts, calls, node = [], [], [], [], []
    previous_end: float | None = None
    for step in clock.steps:
        if step.name.startswith(SETUP_PREFIX):
            previous_end = step.finished
            continue
        assert previous_end is not None, "the setup steps come first"
        cost = (step.finished - previous_end) - step.node_s
        previous_end = step.finished
        overhead.append(cost)
        in_step.append((step.finished - step.started) - step.node_s)
        if step.type == "call":
            calls.append(cost)
            node.append(step.node_s)
        else:
            asserts.append(cost)
    if len(overhead) != n:
        raise RuntimeError(f"expected {n} measured steps, timed {len(overhead)}")
    return StepsRun(n, parse_s, overhead, in_step, asserts, calls, node)


def bench_step_overhead(*, n_steps: int, repeat: int, workdir: Path) -> tuple[Metric, list[StepsRun]]:
    """Item 1: median engine time per step over ``repeat`` runs of ``n_steps`` steps."""
    runs = [run_steps(n_steps, workdir / f"overhead-{i}") for i in range(repeat)]
    ms = 1000.0
    metric = Metric(
        key="engine_step_overhead_ms",
        title=f"engine overhead per step ({n_steps} steps, node work excluded)",
        unit="ms",
        samples=[median(r.overhead) * ms for r in runs],
        target=Target("<", 1.0, "< 1 ms"),
        detail={
            "steps": n_steps,
            "what": "per step: time from the previous step's end to this step's end minus time awaiting the node; median over the steps of a run, then median over runs",
            "mean_ms": median([statistics.fmean(r.overhead) * ms for r in runs]),
            "p90_ms": median([_quantile(r.overhead, 0.9) * ms for r in runs]),
            "assert_step_ms": median([median(r.assert_overhead) * ms for r in runs]),
            "call_step_ms": median([median(r.call_overhead) * ms for r in runs]),
            "inside_step_ms": median([median(r.in_step) * ms for r in runs]),
            "node_time_per_call_ms": median([median(r.node_per_call) * ms for r in runs]),
            "parse_ms_per_step": median([r.parse_s / (n_steps + 5) * ms for r in runs]),
        },
    )
    return metric, runs


def bench_scaling(
    *, sizes: list[int], repeats: dict[int, int], workdir: Path, known: dict[int, list[StepsRun]] | None = None
) -> list[Metric]:
    """Item 1, growth: engine-only total time against step count; slope and growth ratio.

    ``repeats`` gives the runs per size (the largest may repeat fewer times);
    runs already made (``known``) are reused.
    """
    per_size: dict[int, list[StepsRun]] = {}
    for n in sizes:
        runs = list((known or {}).get(n, []))[: repeats[n]]
        while len(runs) < repeats[n]:
            runs.append(run_steps(n, workdir / f"scale-{n}-{len(runs)}"))
        per_size[n] = runs
    totals = {n: median([r.total_overhead for r in runs]) for n, runs in per_size.items()}
    per_step = {n: totals[n] / n * 1000.0 for n in sizes}
    fit = linear_fit([float(n) for n in sizes], [totals[n] * 1000.0 for n in sizes])
    smallest, largest = min(sizes), max(sizes)
    growth = per_step[largest] / per_step[smallest]
    detail = {
        "sizes": sizes,
        "runs_per_size": {str(n): len(per_size[n]) for n in sizes},
        "total_engine_ms": {str(n): round(totals[n] * 1000.0, 3) for n in sizes},
        "mean_ms_per_step": {str(n): round(per_step[n], 4) for n in sizes},
        "parse_ms_per_step": {
            str(n): round(median([r.parse_s for r in per_size[n]]) / n * 1000.0, 4) for n in sizes
        },
        "fit_intercept_ms": round(fit["intercept"], 3),
        "fit_r2": round(fit["r2"], 6),
    }
    slope = Metric(
        key="engine_scaling_slope_ms",
        title=f"engine time slope, {smallest} to {largest} steps (least squares)",
        unit="ms/step",
        value=fit["slope"],
        samples=[fit["slope"]],
        target=Target("<", 1.0, "< 1 ms/step"),
        detail=detail,
    )
    ratio = Metric(
        key="engine_scaling_growth",
        title=f"mean engine time per step at {largest} / at {smallest} steps (1.0 = linear)",
        unit="x",
        value=growth,
        samples=[growth],
        target=Target("<=", 1.25, "<= 1.25 (linear)"),
        detail=detail,
    )
    return [slope, ratio]


def bench_memory_steps(*, n_steps: int, repeat: int, workdir: Path) -> Metric:
    """Item 7: peak RSS of ``calimero-workflow run`` on an ``n_steps``-step workflow."""
    path = write(workdir, f"memory-steps-{n_steps}.yml", steps_workflow(n_steps))
    samples, walls = [], []
    for i in range(repeat):
        run = run_process(
            cli_argv("run", "-q", "--workdir", str(workdir / f"mem-runs-{i}"), str(path)),
            env=child_env(), cwd=workdir,
        )
        if run.returncode != 0:
            raise RuntimeError(f"the {n_steps}-step workflow exited {run.returncode}: {run.stderr[-2000:]}")
        samples.append(run.max_rss_mb)
        walls.append(run.wall_s)
    return Metric(
        key="memory_steps_rss_mb",
        title=f"peak RSS, {n_steps}-step workflow (1 embedded node, CLI process)",
        unit="MiB",
        samples=samples,
        detail={"steps": n_steps, "wall_s": median(walls)},
    )


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


if __name__ == "__main__":  # a quick look: python benchmarks/bench_engine.py 1000
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        metric, _ = bench_step_overhead(n_steps=n, repeat=1, workdir=Path(tmp))
        print(metric.to_dict())
