"""Fault steps on embedded nodes: stop/start with data kept, partition and heal."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from calimero_workflow.errors import WorkflowValidationError
from calimero_workflow.executor import WorkflowExecutor
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


async def test_a_call_to_a_stopped_node_says_it_is_not_running(tmp_path: Path):
    text = textwrap.dedent(f"""
        name: t
        nodes: {{count: 1, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {APP}}}
          - {{type: stop_node, nodes: node-1}}
          - {{type: create_namespace, node: node-1, application_id: "${{results.install.application_id}}", retries: 0}}
    """)
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    step = result.steps[2]
    assert step.status is Status.FAILED
    assert step.error.kind == "node_died"
    assert "node node-1 is not running (exit code 0)" in step.error.message


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
