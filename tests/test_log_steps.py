"""assert_log_present and assert_log_absent on the logs of embedded nodes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from calimero_workflow.errors import WorkflowValidationError
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.results import Status
from calimero_workflow.workflow import parse_workflow

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "kv-store" / "kv_store.wasm"


async def run_text(text: str, tmp_path: Path):
    wf = parse_workflow(textwrap.dedent(text), file=tmp_path / "wf.yml", environ={})
    return await WorkflowExecutor(wf, env={}, workdir=tmp_path / "runs").run()


async def test_patterns_present_and_absent_pass(tmp_path: Path):
    result = await run_text(
        f"""
        name: t
        nodes: {{count: 2, prefix: node}}
        steps:
          - {{type: install_application, node: node-1, path: {APP}}}
          - {{type: install_application, node: node-2, path: {APP}}}
          - name: present
            type: assert_log_present
            nodes: [node-1, node-2, node-1]
            patterns: ["installed application", "INSTALLED APP"]
            case_sensitive: false
            min_matches: 2
          - name: regex
            type: assert_log_present
            nodes: []
            patterns: ['node node-\\d started: server http://127\\.0\\.0\\.1:\\d+']
            regex: true
          - name: absent
            type: assert_log_absent
            nodes: [node-1, node-2]
            patterns: ["Traceback", "panicked at"]
          - name: tail
            type: assert_log_absent
            nodes: [node-1]
            patterns: ["generated node identity"]
            tail_lines: 1
        """,
        tmp_path,
    )
    assert result.passed, [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
    present = result.workflow_results["present"]
    assert present["nodes"] == ["node-1", "node-2"]  # each log read once
    assert present["hits"] == {"installed application": 2, "INSTALLED APP": 2}
    assert present["first_matches"]["installed application"]["node"] == "node-1"
    assert result.workflow_results["regex"]["hits"] == {
        r"node node-\d started: server http://127\.0\.0\.1:\d+": 2
    }
    assert result.workflow_results["absent"]["match_count"] == 0


async def test_an_apps_log_lines_are_in_the_node_log_as_merod_writes_them(tmp_path: Path):
    result = await run_text(
        f"""
        name: t
        nodes: {{count: 2, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {APP}}}
          - {{name: mesh, type: create_mesh, context_node: node-1, application_id: "${{results.install.application_id}}", nodes: [node-2], path: {APP}}}
          - {{type: call, node: node-1, context_id: "${{results.mesh.context_id}}", method: set, args: {{key: zebra, value: stripes}}}}
          - name: app-line
            type: assert_log_present
            nodes: [node-1]
            patterns: ['Setting key: "zebra" to value: "stripes"']
          - name: not-elsewhere
            type: assert_log_absent
            nodes: [node-2]
            patterns: ['Setting key: "zebra"']
        """,
        tmp_path,
    )
    assert result.passed, [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
    context = result.workflow_results["mesh"]["context_id"]
    line = result.workflow_results["app-line"]["first_matches"]['Setting key: "zebra" to value: "stripes"']["text"]
    assert f"context {context}: set: guest log: Setting key: " in line


@pytest.mark.parametrize(
    "log_level, own_info, app_line, debug",
    [
        (None, True, True, False),
        ("info", True, True, False),
        ("debug", True, True, True),
        ("warn", False, False, False),
        # merod's own default: its crates at INFO, so no app lines
        ("merod=info,calimero_=info", True, False, False),
        ("error,runtime::guest::log=info", False, True, False),
        ("info,runtime::guest::log=off", True, False, False),
    ],
)
async def test_log_level_filters_embedded_node_logs_as_rust_log_does(
    tmp_path: Path, log_level: str | None, own_info: bool, app_line: bool, debug: bool
):
    level = f"log_level: {log_level!r}" if log_level else ""
    result = await run_text(
        f"""
        name: t
        {level}
        nodes: {{count: 1, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {APP}}}
          - {{name: ns, type: create_namespace, node: node-1, application_id: "${{results.install.application_id}}"}}
          - {{name: ctx, type: create_context, node: node-1, application_id: "${{results.install.application_id}}", namespace_id: "${{results.ns.namespace_id}}"}}
          - {{type: call, node: node-1, context_id: "${{results.ctx.context_id}}", method: set, args: {{key: zebra, value: stripes}}}}
        """,
        tmp_path,
    )
    assert result.passed, [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
    (log,) = (tmp_path / "runs").glob("*/node-logs/node-1.log")
    text = log.read_text()
    assert ("INFO" in text and "installed application" in text) is own_info, text
    assert ('guest log: Setting key: "zebra"' in text) is app_line, text
    assert (" DEBUG " in text and ": set: ran in " in text) is debug, text


async def test_a_pattern_found_or_missing_fails_with_where(tmp_path: Path):
    result = await run_text(
        f"""
        name: t
        nodes: {{count: 1, prefix: node}}
        steps:
          - {{type: install_application, node: node-1, path: {APP}}}
          - name: absent
            type: assert_log_absent
            nodes: [node-1]
            patterns: ["installed application"]
        """,
        tmp_path,
    )
    step = result.steps[1]
    assert step.status is Status.FAILED and step.error.kind == "assertion"
    assert "node 'node-1' line" in step.error.message and "'installed application'" in step.error.message
    text = step.data["matches"][0]["text"]
    assert "installed application" in text and len(text) <= 200  # cut as merobox cuts

    result = await run_text(
        """
        name: t
        nodes: {count: 1, prefix: node}
        steps:
          - {type: assert_log_present, nodes: [node-1], patterns: ["node node-1 started", "never logged"], min_matches: 1}
        """,
        tmp_path,
    )
    step = result.steps[0]
    assert step.status is Status.FAILED
    assert step.error.message == "pattern 'never logged' had 0 hit(s), expected at least 1"
    assert step.data["hits"]["node node-1 started"] == 1


def test_log_steps_are_checked_at_load(tmp_path: Path):
    text = textwrap.dedent("""
        name: t
        nodes: {count: 1, prefix: node}
        remote_nodes: {far: {url: "http://127.0.0.1:9"}}
        steps:
          - {type: assert_log_present, nodes: [node-1], patterns: ["a("], regex: true}
          - {type: assert_log_absent, nodes: [far, node-2], patterns: ["x"]}
          - {type: assert_log_absent, nodes: [node-1], patterns: [""]}
          - {type: assert_log_present, nodes: [node-1], patterns: ["x"], min_matches: 0}
    """)
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    messages = [p.render() for p in info.value.problems]
    assert any(":6:" in m and "patterns[0]: invalid regular expression 'a('" in m for m in messages), messages
    assert any(":7:" in m and "remote node 'far'" in m for m in messages), messages
    assert any(":7:" in m and "'node-2'" in m for m in messages), messages
    assert any(":8:" in m and "would match every line" in m for m in messages), messages
    assert any(":9:" in m and "min_matches" in m for m in messages), messages


_A_RUN = "a" * 48


def _a_run_workflow(last: str) -> str:
    """One node, a line in its log holding a long run of `a` (the node logs
    the route it refused), then the step ``last``."""
    return (
        "name: t\n"
        "nodes: {count: 1, prefix: node}\n"
        "steps:\n"
        f"  - {{name: a, type: assert, actual: {_A_RUN}, equals: {_A_RUN}}}\n"
        "  - {type: get_application, node: node-1, application_id: \"${results.a.actual}\",\n"
        "     expected_failure: true, retries: 0}\n"
        f"{last}"
    )


@pytest.mark.parametrize("kind", ["assert_log_present", "assert_log_absent"])
async def test_a_catastrophic_log_pattern_fails_within_the_step_timeout(tmp_path: Path, kind: str):
    import time

    started = time.monotonic()
    result = await run_text(
        _a_run_workflow(
            f"  - {{type: {kind}, nodes: [node-1], patterns: [\"(a|aa)+$\"], regex: true, timeout: 1}}\n"
            "  - {name: after, type: node_identity, node: node-1, expected_failure: true}\n"
        ),
        tmp_path,
    )
    assert time.monotonic() - started < 6
    step = result.steps[2]
    assert step.status is Status.FAILED
    message = step.error.message
    assert "did not finish within 1 s" in message or "timed out after 1 s" in message, message
    # the run ends as after any failed step: the rest skipped, the nodes cleaned up
    assert result.steps[3].status is Status.SKIPPED
    assert result.phases[-1].name == "cleanup" and result.phases[-1].status is Status.PASSED


async def test_a_catastrophic_log_pattern_without_a_timeout_has_the_assert_bound(
    tmp_path: Path, monkeypatch
):
    from calimero_workflow.steps import regexes

    monkeypatch.setattr(regexes, "REGEX_TIMEOUT", 0.3)
    result = await run_text(
        _a_run_workflow('  - {type: assert_log_absent, patterns: ["(a|aa)+$"], regex: true}\n'),
        tmp_path,
    )
    error = result.steps[2].error
    assert "the regular expression '(a|aa)+$' did not finish within 0.3 s" in error.message
    assert "backtracks" in error.hint
    assert (error.location.line, error.location.col) == (7, 41)  # the step's `patterns:`


def test_ctrl_c_stops_a_catastrophic_log_pattern(tmp_path: Path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    wf = tmp_path / "wf.yml"
    wf.write_text(
        _a_run_workflow(
            "  - {type: wait, seconds: 0.01}\n"
            '  - {type: assert_log_absent, patterns: ["(a|aa)+$"], regex: true, timeout: 60}\n'
        )
    )
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "calimero_workflow.cli", "run", str(wf), "--report", str(report),
         "--workdir", str(tmp_path / "w"), "--color", "never"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 30
    while "[wait]" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, seen + rest
    # the run stops at once, without waiting for the matching thread
    assert time.monotonic() - started < 5
    assert "Traceback" not in rest
    data = json.loads(report.read_text())
    assert data["interrupted"] is True
    assert data["steps"][-1]["status"] == "skipped"
