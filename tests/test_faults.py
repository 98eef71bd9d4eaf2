"""Fault steps on embedded nodes: stop/start with data kept, partition and heal."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest

from calimero_workflow.errors import WorkflowValidationError
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.report.console import ConsoleReporter
from calimero_workflow.results import Status
from calimero_workflow.workflow import load_workflow, parse_workflow

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "kv-store" / "kv_store.wasm"


async def test_example_partition_and_restart_converge(tmp_path: Path):
    wf = load_workflow(ROOT / "examples" / "faults" / "workflow.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    assert result.passed, [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
    # while node-3 was cut off, the nodes disagreed (the step expected that)
    diverged = result.workflow_results["diverged"]
    assert diverged["error_type"] == "sync_timeout"
    hashes = diverged["hashes"]
    assert hashes["node-1"] == hashes["node-2"] != hashes["node-3"]
    # the restarted node kept its data and caught up
    assert result.workflow_results["g"]["output"] == "1"


async def test_a_call_to_a_stopped_node_names_the_step_that_stopped_it(tmp_path: Path):
    text = textwrap.dedent(f"""
        name: t
        nodes: {{count: 2, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-2, path: {APP}}}
          - {{name: stop2, type: stop_node, nodes: node-2}}
          - {{type: create_namespace, node: node-2, application_id: "${{results.install.application_id}}"}}
    """)
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    console = io.StringIO()
    result = await WorkflowExecutor(
        wf, env={}, workdir=tmp_path, events=ConsoleReporter(console, quiet=True)
    ).run()
    step = result.steps[2]
    assert step.status is Status.FAILED
    assert step.error.kind == "node_halted"
    assert step.error.message == "node-2 was stopped by step 'stop2' (line 6)"
    assert "start_node" in step.error.hint
    # at once: no retries (the node is not coming back by itself), no node log dump
    assert step.attempts == 1 and not step.logs
    assert step.duration_s < 0.5
    assert "node-2 was stopped by step 'stop2' (line 6)" in console.getvalue()
    assert "last log lines" not in console.getvalue()


async def test_starting_a_running_node_and_stopping_a_stopped_one_say_so(tmp_path: Path):
    text = textwrap.dedent("""
        name: t
        nodes: {count: 2, prefix: node}
        steps:
          - {name: start1, type: start_node, nodes: node-1}
          - {name: stop2, type: stop_node, nodes: node-2}
          - {name: stop2again, type: stop_node, nodes: [node-2, node-1]}
          - {name: start2, type: start_node, nodes: [node-2, node-1]}
    """)
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    assert result.passed, [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
    results = result.workflow_results
    assert results["start1"]["outcomes"] == {"node-1": "already running"}
    assert result.steps[0].logs == ["node-1 already running"]
    assert results["stop2"]["outcomes"] == {"node-2": "stopped"}
    assert results["stop2again"]["outcomes"] == {"node-2": "already stopped", "node-1": "stopped"}
    assert result.steps[2].logs == ["node-2 already stopped", "node-1 stopped"]
    assert results["start2"]["outcomes"] == {"node-2": "started", "node-1": "started"}


async def test_lifecycle_steps_on_one_node_in_parallel_groups_take_turns(tmp_path: Path):
    # Each group's step used to race the other's: two restarts bound one port
    # twice ("Address already in use"), and a stop met a half-stopped node
    # (KeyError). Now they run one after the other, each with a clear outcome.
    text = textwrap.dedent("""
        name: t
        nodes: {count: 2, prefix: n}
        steps:
          - name: restarts
            type: parallel
            groups:
              - {name: a, steps: [{name: ra, type: restart_node, nodes: n-2}]}
              - {name: b, steps: [{name: rb, type: restart_node, nodes: n-2}]}
          - name: mixed
            type: parallel
            groups:
              - {name: a, steps: [{name: s1, type: stop_node, nodes: n-2}]}
              - {name: b, steps: [{name: s2, type: stop_node, nodes: n-2}]}
              - {name: c, steps: [{name: up, type: start_node, nodes: n-2}]}
          - {type: start_node, nodes: n-2}
          - {type: stop_node, nodes: n-2}
    """)
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    for _ in range(3):
        result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
        assert result.passed, [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
        outcomes = [
            r.data["outcomes"]["n-2"] for r in result.all_steps() if r.name in ("s1", "s2", "up")
        ]
        # in the order asked: the first stop stops, the second finds it stopped
        assert outcomes == ["stopped", "already stopped", "started"]
        assert result.steps[-1].data["outcomes"] == {"n-2": "stopped"}


def test_fault_steps_name_unknown_and_remote_nodes(tmp_path: Path):
    text = textwrap.dedent("""
        name: t
        nodes: {count: 1, prefix: node}
        remote_nodes: {far: {url: "http://127.0.0.1:9"}}
        steps:
          - {type: stop_node, nodes: [node-1, node-9]}
          - {type: start_node, nodes: far}
    """)
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    messages = [p.render() for p in info.value.problems]
    assert any(":6:" in m and "node-9" in m for m in messages)
    assert any(":7:" in m and "remote node 'far'" in m for m in messages)
