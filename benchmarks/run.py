"""Run the benchmark suite: ``python benchmarks/run.py [--quick] [--no-docker] [--repeat N] [--out FILE]``.

Prints a table of medians over repeated runs with the targets of issue 7 and
the ratios, and writes every number (samples, details, the machine) as JSON,
by default to ``benchmarks/results/<timestamp>.json``. ``--compare OLD.json``
adds the previous medians and the change to the table.

These are benchmarks, not tests: nothing here fails on a slow number. The
exit code is 1 only when a benchmark could not run at all (its metrics are
then marked skipped with the error), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Measure this checkout, whatever else is installed (a CI clone, site-packages).
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from bench_harness import Metric, docker_available, machine, skipped  # noqa: E402

SCHEMA = "calimero-workflow-bench/1"


@dataclass(frozen=True)
class Settings:
    """Sizes and repetitions of one suite run."""

    repeat: int
    steps: int
    scaling: tuple[int, ...]
    #: Repetitions for the largest scaling size (a 10,000-step run takes ~20 s).
    scaling_large_repeat: int
    memory_steps: int
    memory_nodes: int
    memory_repeat: int
    latency_calls: int
    sync_rounds: int
    docker_sizes: tuple[int, ...]
    quick: bool

    @classmethod
    def make(cls, *, quick: bool, repeat: int | None) -> Settings:
        if quick:
            r = repeat or 1
            return cls(r, 200, (50, 200), r, 300, 4, 1, 20, 3, (1, 3), True)
        r = repeat or 5
        return cls(r, 1000, (100, 1000, 10000), min(r, 3), 10000, 10, min(r, 2), 100, 20, (1, 3, 5), False)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


#: Every metric a full report holds, in table order; ratios are listed apart.
METRICS: dict[str, tuple[str, str]] = {
    "engine_step_overhead_ms": ("engine overhead per step (node work excluded)", "ms"),
    "engine_load_per_step_ms": ("loading + validating the workflow, per step", "ms"),
    "engine_scaling_slope_ms": ("engine time slope over step counts", "ms/step"),
    "kv_embedded_wall_s": ("kv-store example, 3 embedded nodes, process start to exit", "s"),
    "call_set_ms": ("embedded `set` call latency", "ms"),
    "call_get_ms": ("embedded `get` call latency", "ms"),
    "docker_start_1_s": ("Docker: start 1 node until ready", "s"),
    "docker_start_3_s": ("Docker: start 3 nodes until ready", "s"),
    "docker_start_5_s": ("Docker: start 5 nodes until ready", "s"),
    "docker_ready_lag_ms": ("Docker: readiness noticed after health answers", "ms"),
    "wait_for_sync_lag_ms": ("wait_for_sync: final root -> step returns", "ms"),
    "kv_docker_wall_s": ("kv-store example, 3 Docker nodes, process start to exit", "s"),
    "memory_nodes_rss_mb": ("peak RSS, 10 embedded nodes", "MiB"),
    "memory_steps_rss_mb": ("peak RSS, 10,000-step workflow", "MiB"),
    "engine_scaling_growth": ("engine time per step, largest / smallest step count", "x"),
    "docker_start_ratio": ("Docker start time, 5 nodes / 1 node", "x"),
    "kv_docker_vs_embedded": ("kv-store example, Docker / embedded", "x"),
}
RATIOS = ("engine_scaling_growth", "docker_start_ratio", "kv_docker_vs_embedded")
DOCKER_METRICS = (
    "docker_start_1_s", "docker_start_3_s", "docker_start_5_s", "docker_ready_lag_ms",
    "docker_start_ratio", "kv_docker_wall_s", "kv_docker_vs_embedded",
)


class Suite:
    """Runs benchmark groups, keeps their metrics, and survives a group that breaks."""

    def __init__(self, settings: Settings, workdir: Path, *, verbose: bool = True):
        self.settings = settings
        self.workdir = workdir
        self.verbose = verbose
        self.metrics: dict[str, Metric] = {}
        self.errors: list[str] = []

    def say(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)

    def group(self, name: str, keys: tuple[str, ...], fn: Callable[[], list[Metric]]) -> None:
        started = time.perf_counter()
        self.say(f"bench: {name} ...")
        try:
            for metric in fn():
                self.metrics[metric.key] = metric
        except Exception as exc:  # one broken benchmark must not lose the others' numbers
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            self.say(traceback.format_exc())
            for key in keys:
                if key not in self.metrics:
                    title, unit = METRICS[key]
                    self.metrics[key] = skipped(key, title, unit, f"error: {type(exc).__name__}: {exc}")
        self.say(f"bench: {name} done in {time.perf_counter() - started:.1f}s")

    def skip(self, keys: tuple[str, ...], reason: str) -> None:
        for key in keys:
            if key not in self.metrics:
                title, unit = METRICS[key]
                self.metrics[key] = skipped(key, title, unit, reason)

    # -- groups ---------------------------------------------------------------------

    def run_engine(self) -> None:
        from bench_engine import bench_scaling, bench_step_overhead

        s = self.settings
        runs: dict[int, list[Any]] = {}

        def overhead() -> list[Metric]:
            metric, done = bench_step_overhead(n_steps=s.steps, repeat=s.repeat, workdir=self.workdir / "engine")
            runs[s.steps] = done
            load = Metric(
                key="engine_load_per_step_ms",
                title=f"loading + validating the workflow, per step ({s.steps} steps)",
                unit="ms",
                samples=[r.parse_s / s.steps * 1000.0 for r in done],
                detail={"what": "parse_workflow() on the YAML text: YAML, env expansion, step models; before any node starts"},
            )
            return [metric, load]

        self.group("engine overhead", ("engine_step_overhead_ms", "engine_load_per_step_ms"), overhead)

        def scaling() -> list[Metric]:
            largest = max(s.scaling)
            repeats = {n: (s.scaling_large_repeat if n == largest else s.repeat) for n in s.scaling}
            return bench_scaling(sizes=list(s.scaling), repeats=repeats, workdir=self.workdir / "scaling", known=runs)

        self.group("engine scaling", ("engine_scaling_slope_ms", "engine_scaling_growth"), scaling)

    def run_embedded(self) -> None:
        from bench_embedded import (
            bench_call_latency,
            bench_kv_wall,
            bench_wait_for_sync,
        )

        s = self.settings
        self.group("kv-store example (embedded)", ("kv_embedded_wall_s",), lambda: [bench_kv_wall(repeat=s.repeat, workdir=self.workdir / "kv")])
        self.group(
            "call latency",
            ("call_set_ms", "call_get_ms"),
            lambda: bench_call_latency(batches=s.repeat, calls=s.latency_calls, workdir=self.workdir / "calls"),
        )
        self.group(
            "wait_for_sync",
            ("wait_for_sync_lag_ms",),
            lambda: [bench_wait_for_sync(nodes=3, rounds=s.sync_rounds, repeat=s.repeat, workdir=self.workdir / "sync")],
        )

    def run_memory(self) -> None:
        from bench_embedded import bench_memory_nodes
        from bench_engine import bench_memory_steps

        s = self.settings
        self.group(
            "memory (nodes)",
            ("memory_nodes_rss_mb",),
            lambda: [bench_memory_nodes(nodes=s.memory_nodes, repeat=s.memory_repeat, workdir=self.workdir / "mem-nodes")],
        )
        self.group(
            "memory (steps)",
            ("memory_steps_rss_mb",),
            lambda: [bench_memory_steps(n_steps=s.memory_steps, repeat=s.memory_repeat, workdir=self.workdir / "mem-steps")],
        )

    def run_docker(self) -> None:
        from bench_docker import bench_docker_kv, bench_docker_start

        s = self.settings
        self.group(
            "docker start",
            ("docker_start_1_s", "docker_start_3_s", "docker_start_5_s", "docker_ready_lag_ms", "docker_start_ratio"),
            lambda: bench_docker_start(
                sizes=list(s.docker_sizes), repeat=s.repeat, probed=min(s.repeat, 3), workdir=self.workdir / "docker-start"
            ),
        )
        self.group(
            "kv-store example (docker)",
            ("kv_docker_wall_s", "kv_docker_vs_embedded"),
            lambda: bench_docker_kv(repeat=s.repeat, workdir=self.workdir / "docker-kv", embedded=self.metrics.get("kv_embedded_wall_s")),
        )
        if s.quick:
            self.skip(("docker_start_5_s",), "not run in --quick mode (sizes 1 and 3 only)")


# -- output -------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}"


def table(metrics: dict[str, dict[str, Any]], previous: dict[str, Any] | None = None, *, markdown: bool = False) -> str:
    """The result table from report metrics: metric, median, target, met; ratios in a second part."""
    head = ["metric", "median", "target", "met"]
    if previous is not None:
        head += ["previous", "change"]
    rows: list[list[str]] = []
    ratio_rows: list[list[str]] = []
    for key in METRICS:
        metric = metrics.get(key)
        if metric is None:
            continue
        met = {True: "yes", False: "**NO**" if markdown else "NO", None: "-"}[metric["met"]]
        median = "skipped" if metric["skipped"] else _fmt(metric["median"], metric["unit"])
        row = [metric["title"], median, metric["target"] or "-", met]
        if previous is not None:
            old = (previous.get("metrics") or {}).get(key) or {}
            old_median = old.get("median")
            row.append(_fmt(old_median, metric["unit"]) if old_median is not None else "-")
            new_median = metric["median"]
            row.append(f"{new_median / old_median:.2f}x" if old_median and new_median is not None else "-")
        (ratio_rows if key in RATIOS else rows).append(row)
    if markdown:
        cells = [[c.replace("|", "\\|") for c in r] for r in [head, *rows]]
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
        lines += ["| *ratios* |" + " |" * (len(head) - 1)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in ratio_rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *rows, *ratio_rows]) for i in range(len(head))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    out = [line(head), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    out += ["", "ratios:", line(head), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in ratio_rows]
    return "\n".join(out)


def machine_line(data: dict[str, Any]) -> str:
    m = data["machine"]
    load = data["load_average"]
    return (
        f"{m['cores']} cores, {m['ram_gb']} GB RAM, {m['cpu']}, {m['os']}; Python {m['python']}, "
        f"wasmtime {m['wasmtime']}, "
        # Older results files do not record it; without it uvicorn parses with h11.
        + (f"httptools {m['httptools']}, " if m.get("httptools") else "")
        + f"Docker engine {m.get('docker_engine') or '-'}; "
        f"load average {load['before'][0]:.2f} before, {load['after'][0]:.2f} after; "
        f"{data['duration_s']:.0f} s in all; commit {m.get('commit')}"
        + (" with uncommitted changes under src/" if m.get("src_modified") else "")
    )


def _portable(arg: str) -> str:
    """An argument as it can be shown anywhere: paths in the repo relative to it, others by name."""
    if not arg.startswith("/"):
        return arg
    path = Path(arg)
    try:
        return str(path.relative_to(HERE.parent))
    except ValueError:
        return path.name


def report(suite: Suite, started: float, load_before: tuple[float, ...], argv: list[str]) -> dict[str, Any]:
    metrics = {key: suite.metrics[key].to_dict() for key in METRICS if key in suite.metrics}
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/run.py " + " ".join(_portable(a) for a in argv),
        "settings": suite.settings.to_dict(),
        "machine": machine(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "duration_s": round(time.perf_counter() - started, 1),
        "metrics": metrics,
        "ratios": [k for k in RATIOS if k in metrics],
        "missed": [k for k, m in metrics.items() if m["met"] is False],
        "errors": suite.errors,
    }


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python benchmarks/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller runs (about 20 s with Docker, a few seconds without); numbers are rough")
    parser.add_argument("--no-docker", action="store_true", help="skip the Docker benchmarks")
    parser.add_argument("--repeat", type=int, metavar="N", help="runs per benchmark (default 5; --quick 1)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="JSON results (default benchmarks/results/<timestamp>.json)")
    parser.add_argument("--compare", type=Path, metavar="OLD.json", help="show medians of an earlier results file next to these")
    parser.add_argument(
        "--only", metavar="GROUPS",
        help="comma-separated subset of: engine, embedded, memory, docker (the others are marked skipped)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    parser.add_argument("--show", type=Path, metavar="FILE", help="print the table of an earlier results file; run nothing")
    args = parser.parse_args(args_list)
    if args.repeat is not None and args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    groups = ("engine", "embedded", "memory", "docker")
    only = set(groups) if not args.only else {g.strip() for g in args.only.split(",") if g.strip()}
    unknown = only - set(groups)
    if unknown:
        parser.error(f"unknown group(s) in --only: {', '.join(sorted(unknown))}; choose from {', '.join(groups)}")
    previous = None
    if args.compare:
        try:
            previous = json.loads(args.compare.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--compare {args.compare}: cannot read it as JSON ({exc})")

    if args.show:
        try:
            shown = json.loads(args.show.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--show {args.show}: cannot read it as JSON ({exc})")
        print(table(shown["metrics"], previous, markdown=args.markdown))
        print()
        print(machine_line(shown))
        return 0

    settings = Settings.make(quick=args.quick, repeat=args.repeat)
    out = args.out or HERE / "results" / (time.strftime("%Y%m%d-%H%M%S") + ".json")
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cw-bench-") as tmp:
        suite = Suite(settings, Path(tmp))
        if "engine" in only:
            suite.run_engine()
        if "embedded" in only:
            suite.run_embedded()
        if "memory" in only:
            suite.run_memory()
        if "docker" in only and not args.no_docker:
            why = docker_available()
            if why is None:
                suite.run_docker()
            else:
                suite.skip(DOCKER_METRICS, why)
        elif "docker" in only:
            suite.skip(DOCKER_METRICS, "--no-docker")
        for key in METRICS:
            if key not in suite.metrics:
                suite.skip((key,), "group not selected (--only)")
        data = report(suite, started, load_before, args_list)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(table(data["metrics"], previous, markdown=args.markdown))
    print()
    print(machine_line(data))
    if data["missed"]:
        print("missed targets: " + ", ".join(data["missed"]))
    for error in suite.errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"results: {out}")
    return 1 if suite.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
