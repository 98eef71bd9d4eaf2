"""The benchmark suite runs end to end in ``--quick`` mode and writes a complete report.

These check the harness, never the speed: every metric of the report is
present, measured ones carry numbers and a verdict where they have a target,
and the ones that were not run say why.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"


def _suite_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is made.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out), *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    return proc, json.loads(out.read_text())


def _check_measured(key: str, metric: dict) -> None:
    assert metric["skipped"] is None, f"{key} was skipped: {metric['skipped']}"
    assert isinstance(metric["median"], float | int) and math.isfinite(metric["median"]), (key, metric)
    assert metric["median"] >= 0, (key, metric)
    assert metric["n"] == len(metric["samples"]) >= 1, (key, metric)
    if metric["target"] is not None:
        assert metric["met"] in (True, False), (key, metric)


def test_quick_run_without_docker_reports_every_metric(tmp_path: Path) -> None:
    suite = _suite_module()
    proc, data = _run(tmp_path, "--no-docker")

    assert data["schema"] == suite.SCHEMA
    assert set(data["metrics"]) == set(suite.METRICS), "every metric is in the report, measured or not"
    for key, metric in data["metrics"].items():
        if key in suite.DOCKER_METRICS:
            assert metric["median"] is None and metric["skipped"] == "--no-docker", (key, metric)
        else:
            _check_measured(key, metric)
    assert data["errors"] == []
    assert data["missed"] == [k for k, m in data["metrics"].items() if m["met"] is False]
    for field in ("cores", "cpu", "ram_gb", "python", "wasmtime"):
        assert data["machine"][field], field
    assert data["settings"]["quick"] is True
    # The scaling fit used every size it names.
    detail = data["metrics"]["engine_scaling_slope_ms"]["detail"]
    assert sorted(map(int, detail["total_engine_ms"])) == sorted(data["settings"]["scaling"])
    # The table names each measured metric with its median.
    for key in ("engine_step_overhead_ms", "kv_embedded_wall_s", "wait_for_sync_lag_ms"):
        assert data["metrics"][key]["title"] in proc.stdout


@pytest.mark.docker
def test_quick_run_with_docker_measures_the_docker_metrics(tmp_path: Path) -> None:
    from docker_support import docker_client

    docker_client()  # skips (or fails under CI=true) without an engine and the node image
    suite = _suite_module()
    _proc, data = _run(tmp_path, "--only", "embedded,docker")

    for key in suite.DOCKER_METRICS:
        metric = data["metrics"][key]
        if key == "docker_start_5_s":
            assert "--quick" in (metric["skipped"] or ""), metric
        else:
            _check_measured(key, metric)
    assert data["errors"] == []
