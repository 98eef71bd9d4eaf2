"""Where the time goes: profile one benchmark scenario and group the cost by package.

    python benchmarks/bench_profile.py calls          # set/get over JSON-RPC on one embedded node
    python benchmarks/bench_profile.py kv             # the kv-store example, imports included
    python benchmarks/bench_profile.py steps [N]      # parse + run an N-step workflow (default 1000)

Prints the share of CPU time per package (own time of functions, so the
shares add up) and the functions with the most own time. cProfile slows
Python code down by a roughly constant factor, so compare shares, not
absolute times, with the benchmark table.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from bench_harness import KV_WORKFLOW  # noqa: E402

#: Path fragments that name a part of this project, most specific first.
OWN = (
    ("calimero_workflow/node/", "node (calimero_workflow.node)"),
    ("calimero_workflow/steps/", "engine steps"),
    ("calimero_workflow/", "engine (other)"),
)
#: C functions grouped by what they do for us.
C_FUNCTIONS = (
    (("load_verify_locations", "set_default_verify_paths", "_SSLContext"), "TLS context setup (one per httpx client)"),
    (("marshal.loads", "builtins.exec", "builtins.compile", "__build_class__", "posix.stat", "posix.listdir"), "imports (loading modules)"),
    (("sqlite3",), "sqlite"),
    (("epoll", "select"), "waiting (idle loop, or wasm in a worker thread)"),
    (("send", "recv", "socket", "connect"), "socket calls"),
)
STDLIB = sysconfig.get_paths()["stdlib"]
SITE = ("site-packages", "dist-packages")


def group_of(filename: str, function: str) -> str:
    """A readable bucket for one profiled function: project part, library, or kind of C call."""
    for fragment, name in OWN:
        if fragment in filename:
            return name
    if filename == "~" or filename.startswith("<"):
        if filename.startswith("<frozen importlib"):
            return "imports (loading modules)"
        for names, label in C_FUNCTIONS:
            if any(n in function for n in names):
                return label
        return "other C builtins"
    for marker in SITE:
        if f"/{marker}/" in filename:
            package = filename.split(f"/{marker}/", 1)[1].split("/", 1)[0]
            return package.removesuffix(".py").split(".", 1)[0].lower().rstrip("_") or package
    if filename.startswith(STDLIB):
        module = filename[len(STDLIB):].lstrip("/").split("/", 1)[0].removesuffix(".py")
        return f"stdlib {module}"
    return "other python"


def report(profile: cProfile.Profile, wall: float, top: int = 15) -> str:
    stats = pstats.Stats(profile)
    total = 0.0
    groups: dict[str, float] = defaultdict(float)
    funcs: list[tuple[float, str]] = []
    for (filename, line, function), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        groups[group_of(filename, function)] += tottime
        funcs.append((tottime, f"{Path(filename).name}:{line} {function}"))
    lines = [f"wall {wall:.3f} s under the profiler, {total:.3f} s accounted", "", "share  seconds  group"]
    for name, seconds in sorted(groups.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{seconds / total:5.1%}  {seconds:7.3f}  {name}")
    lines += ["", "top functions by own time:"]
    for seconds, name in sorted(funcs, reverse=True)[:top]:
        lines.append(f"  {seconds:7.3f}  {name}")
    return "\n".join(lines)


async def _calls(n: int) -> None:
    from bench_embedded import _kv_context, _start_nodes

    from calimero_workflow.client import NodeClient
    from calimero_workflow.node.runtime import WasmRuntime

    with tempfile.TemporaryDirectory() as tmp:
        nodes = await _start_nodes(1, Path(tmp), WasmRuntime())
        client = NodeClient(nodes[0].url, name="node-1")
        try:
            ctx = await _kv_context(nodes, [client])
            for i in range(20):
                await client.execute(ctx, "set", {"key": f"w{i}", "value": "x"})
            profile = cProfile.Profile()
            started = time.perf_counter()
            profile.enable()
            for i in range(n):
                await client.execute(ctx, "set", {"key": f"k{i}", "value": "v" * 32})
                await client.execute(ctx, "get", {"key": f"k{i}"})
            profile.disable()
            print(report(profile, time.perf_counter() - started))
        finally:
            await client.aclose()
            await nodes[0].stop()


def main(argv: list[str]) -> int:
    scenario = argv[0] if argv else "calls"
    if scenario == "calls":
        asyncio.run(_calls(int(argv[1]) if len(argv) > 1 else 500))
    elif scenario == "kv":
        from calimero_workflow import cli

        with tempfile.TemporaryDirectory() as tmp:
            profile = cProfile.Profile()
            started = time.perf_counter()
            profile.enable()
            code = cli.main(["run", "-q", "--workdir", tmp, str(KV_WORKFLOW)])
            profile.disable()
            print(report(profile, time.perf_counter() - started))
            return int(code or 0)
    elif scenario == "steps":
        from bench_engine import run_steps

        n = int(argv[1]) if len(argv) > 1 else 1000
        with tempfile.TemporaryDirectory() as tmp:
            profile = cProfile.Profile()
            started = time.perf_counter()
            profile.enable()
            run_steps(n, Path(tmp))
            profile.disable()
            print(report(profile, time.perf_counter() - started))
    else:
        print(f"unknown scenario {scenario!r}; use calls, kv or steps", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
