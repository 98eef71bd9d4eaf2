"""Shared pieces of the benchmark suite: metrics, statistics, machine facts, processes.

Every benchmark returns :class:`Metric` values. A metric holds the samples of
its repeated runs; the table and the JSON report show their median. Targets
come from issue 7 and are checked here, in one place, so the table, the JSON
and the README say the same thing.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The repository this suite belongs to; benchmarks measure its ``src/`` tree.
REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
KV_WORKFLOW = REPO / "examples" / "kv-store" / "workflow.yml"
KV_WASM = REPO / "apps" / "kv-store" / "kv_store.wasm"
NODE_IMAGE = os.environ.get("CW_NODE_IMAGE", "calimero-workflow/node:dev")


@dataclass
class Target:
    """A goal a metric's median must meet: ``median <op> limit``."""

    op: str  # "<" or "<="
    limit: float
    text: str

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value < self.limit if self.op == "<" else value <= self.limit


@dataclass
class Metric:
    """One measured quantity: its samples, unit, target and supporting detail.

    ``samples`` holds one value per repetition (or per call, for latencies);
    ``value`` overrides the median for derived numbers such as a slope.
    """

    key: str
    title: str
    unit: str
    samples: list[float] = field(default_factory=list)
    target: Target | None = None
    value: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    @property
    def median(self) -> float | None:
        if self.value is not None:
            return self.value
        return statistics.median(self.samples) if self.samples else None

    @property
    def met(self) -> bool | None:
        if self.skipped or self.target is None:
            return None
        return self.target.met(self.median)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "unit": self.unit,
            "median": _round(self.median),
            "min": _round(min(self.samples)) if self.samples else None,
            "max": _round(max(self.samples)) if self.samples else None,
            "n": len(self.samples),
            "samples": [_round(s) for s in self.samples],
            "target": self.target.text if self.target else None,
            "met": self.met,
            "skipped": self.skipped,
            "detail": self.detail,
        }


def skipped(key: str, title: str, unit: str, reason: str, target: Target | None = None) -> Metric:
    """A metric that could not be measured on this run, with why."""
    return Metric(key=key, title=title, unit=unit, target=target, skipped=reason)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values; did every repetition fail?")
    return statistics.median(values)


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares line through ``(xs, ys)``: slope, intercept and R²."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"a line needs at least two points, got xs={xs!r} ys={ys!r}")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"slope": slope, "intercept": intercept, "r2": r2}


# -- processes ------------------------------------------------------------------


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for child processes: this checkout's ``src`` first on the path.

    A package installed elsewhere (a CI clone, site-packages) must not be what
    gets measured.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    if extra:
        env.update(extra)
    return env


@dataclass
class ProcessRun:
    """A finished child process: wall time, peak RSS and exit status."""

    wall_s: float
    max_rss_mb: float
    returncode: int
    stderr: str


#: Runs as a small intermediate process: spawns the measured command, waits for
#: it and writes its wall time and peak RSS as JSON to the file named first.
_LAUNCHER = """
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(out, "w") as f:
    json.dump({"wall_s": wall, "max_rss_kb": usage.ru_maxrss, "code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_process(argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 300) -> ProcessRun:
    """Run ``argv`` to completion; time it from spawn to exit and read its own peak RSS.

    Linux carries a process's peak RSS across ``exec``: a child spawned
    straight from this (large) benchmark process would report at least our
    own size. So a small launcher process spawns the command and reads its
    ``wait4`` usage; the launcher's own ~15 MiB is far below what any measured
    run reaches. The wall time is taken by the launcher too, around the spawn,
    so its own start-up is not counted.
    """
    import json
    import signal
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cw-bench-proc-") as tmp:
        out = Path(tmp) / "usage.json"
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(out), *argv],
            env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,  # one process group: a timeout ends the command too
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            raise RuntimeError(f"{' '.join(argv)} did not finish within {timeout:g}s") from None
        stderr = err.decode("utf-8", "replace")
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"the launcher for {argv[0]} failed (exit {proc.returncode}): {stderr[-2000:]}")
        usage = json.loads(out.read_text())
    return ProcessRun(
        wall_s=usage["wall_s"],
        max_rss_mb=usage["max_rss_kb"] / 1024.0,
        returncode=usage["code"],
        stderr=stderr,
    )


def cli_argv(*args: str) -> list[str]:
    """``calimero-workflow ...`` run from this checkout's source."""
    return [sys.executable, "-m", "calimero_workflow.cli", *args]


def repeat(n: int, fn: Callable[[int], float]) -> list[float]:
    return [fn(i) for i in range(n)]


def cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat; None where there is no /proc."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [float(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    return sum(values) - idle, sum(values)


def cpu_busy(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """Share of the machine's CPU capacity (all cores) that was busy between two samples."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


# -- machine facts ----------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Where the numbers came from: cores, memory, CPU, Python and library versions."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "ram_gb": _ram_gb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }
    from importlib import metadata

    for package in ("wasmtime", "uvicorn", "httptools", "httpx", "pydantic", "pyyaml", "docker"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    info["docker_engine"] = _docker_version()
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True, text=True, timeout=10,
        )
        info["commit"] = commit.stdout.strip() or None
        # Other work in progress under src/ changes what is measured; say so.
        info["src_modified"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _docker_version() -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return str(client.version().get("Version"))
        finally:
            client.close()
    except Exception:  # no engine is a normal state for this suite
        return None


def docker_available(image: str = NODE_IMAGE) -> str | None:
    """None when a Docker engine answers and ``image`` is present, else why not."""
    try:
        import docker

        client = docker.from_env(timeout=10)
    except Exception as exc:
        return f"no Docker engine ({type(exc).__name__}: {exc}); start one with `bash scripts/start-docker.sh`"
    try:
        client.ping()
        client.images.get(image)
    except Exception as exc:
        return f"Docker engine or image {image} unavailable ({type(exc).__name__}); build it with `bash scripts/build-images.sh`"
    finally:
        client.close()
    return None
