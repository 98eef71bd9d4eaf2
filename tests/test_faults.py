"""Fault steps on embedded nodes: stop/start with data kept, partition and heal."""

from __future__ import annotations

import asyncio
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


async def test_a_paused_node_answers_nothing_and_catches_up_once_unpaused(tmp_path: Path):
    text = textwrap.dedent(f"""
        name: t
        nodes: {{count: 2, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {APP}}}
          - {{name: ns, type: create_namespace, node: node-1, application_id: "${{results.install.application_id}}"}}
          - {{name: ctx, type: create_context, node: node-1, application_id: "${{results.install.application_id}}", namespace_id: "${{results.ns.namespace_id}}"}}
          - {{name: inv, type: invite, node: node-1, namespace_id: "${{results.ns.namespace_id}}"}}
          - {{type: join, node: node-2, namespace_id: "${{results.ns.namespace_id}}", invitation: "${{results.inv.invitation}}"}}
          - {{type: call, node: node-2, context_id: "${{results.ctx.context_id}}", method: set, args: {{key: before, value: "0"}}}}
          - {{name: freeze, type: pause_container, container: node-2}}
          - {{name: again, type: pause_container, container: node-2}}
          - {{name: frozen, type: call, node: node-2, context_id: "${{results.ctx.context_id}}", method: get, args: {{key: before}}, timeout: 0.5, expected_failure: true, expected_error: paused by step 'freeze'}}
          - {{type: call, node: node-1, context_id: "${{results.ctx.context_id}}", method: set, args: {{key: while-paused, value: "1"}}}}
          - {{name: apart, type: wait_for_sync, context_id: "${{results.ctx.context_id}}", timeout: 1, expected_failure: true}}
          - {{name: thaw, type: unpause_container, container: node-2}}
          - {{type: wait_for_sync, context_id: "${{results.ctx.context_id}}", timeout: 20}}
          - {{name: kept, type: call, node: node-2, context_id: "${{results.ctx.context_id}}", method: get, args: {{key: before}}, expected: "0"}}
          - {{name: caught_up, type: call, node: node-2, context_id: "${{results.ctx.context_id}}", method: get, args: {{key: while-paused}}, expected: "1"}}
          - {{name: bounce, type: restart_container, container: node-2}}
          - {{type: call, node: node-2, context_id: "${{results.ctx.context_id}}", method: get, args: {{key: while-paused}}, expected: "1"}}
    """)
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    assert result.passed, [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
    results = result.workflow_results
    assert results["freeze"]["outcome"] == "paused"
    assert results["again"]["outcome"] == "already paused"
    assert "timed out after 0.5 s: node-2 was paused by step 'freeze' (line 11)" in results["frozen"]["error"]
    assert results["thaw"]["outcome"] == "unpaused"
    assert results["bounce"]["outcome"] == "restarted"
    log = Path(result.node_log_files["node-2"]).read_text()
    assert "node paused by the workflow" in log and "node unpaused by the workflow" in log


async def test_pausing_a_node_another_group_stopped_names_the_step_that_stopped_it(tmp_path: Path):
    text = textwrap.dedent("""
        name: t
        nodes: {count: 2, prefix: n}
        steps:
          - name: par
            type: parallel
            groups:
              - {name: a, steps: [{name: stop, type: stop_node, nodes: n-2}]}
              - name: b
                steps:
                  - {type: wait, seconds: 0.3}
                  - {name: pause, type: pause_container, container: n-2}
          - {name: unpause, type: unpause_container, container: n-2, expected_failure: true,
             expected_error: "n-2 was stopped by step 'stop' (line"}
          - {name: pause-again, type: pause_container, container: n-2, expected_failure: true,
             expected_error: "n-2 was stopped by step 'stop' (line"}
    """)
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    pause = next(r for r in result.all_steps() if r.name == "pause")
    assert pause.status is Status.FAILED and pause.error.kind == "node_halted"
    assert pause.error.message == "n-2 was stopped by step 'stop' (line 8)"
    assert "start_node" in pause.error.hint
    # fail-slow: the steps after the parallel one do not run; run them on their own
    text = text.replace("  - name: par\n", "  - name: par\n    failure_mode: continue-on-error\n")
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    assert [r.status for r in result.steps[1:]] == [Status.PASSED, Status.PASSED]


async def test_a_stopped_node_can_be_disconnected_and_starts_cut_off(tmp_path: Path):
    text = textwrap.dedent(f"""
        name: t
        nodes: {{count: 2, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {APP}}}
          - {{name: mesh, type: create_mesh, context_node: node-1, application_id: "${{results.install.application_id}}", nodes: [node-2], path: {APP}}}
          - {{name: stop, type: stop_node, nodes: node-2}}
          - {{name: cut, type: disconnect_node, node: node-2}}
          - {{type: start_node, nodes: node-2, wait_for_ready: false}}
          - {{type: call, node: node-1, context_id: "${{results.mesh.context_id}}", method: set, args: {{key: k, value: v}}}}
          - {{name: apart, type: wait_for_sync, context_id: "${{results.mesh.context_id}}", timeout: 1, expected_failure: true}}
          - {{type: connect_node, node: node-2}}
          - {{type: wait_for_sync, context_id: "${{results.mesh.context_id}}", timeout: 20, expect: {{method: get, args: {{key: k}}, equals: v}}}}
    """)
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    assert result.passed, [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
    assert result.workflow_results["cut"] == {"node": "node-2", "connected": False}


async def test_partitioned_peers_stop_talking_and_the_others_do_not(tmp_path: Path):
    from calimero_workflow.backends.base import NodeSpec
    from calimero_workflow.backends.embedded import EmbeddedBackend
    from calimero_workflow.client import NodeClient

    backend = EmbeddedBackend(run_id="r1", workflow_name="t", workdir=tmp_path / "run")
    try:
        handles = await backend.start_nodes([NodeSpec(name=n) for n in "abc"], ready_timeout=20)
        clients = {n: NodeClient(h.url, name=n) for n, h in handles.items()}

        async def peers() -> dict[str, int]:
            return {n: await c.peers_count() for n, c in clients.items()}

        async def settle(expected: dict[str, int]) -> None:
            for _ in range(500):
                if await peers() == expected:
                    return
                await asyncio.sleep(0.01)
            assert await peers() == expected

        await settle({"a": 2, "b": 2, "c": 2})
        await backend.partition_peers("a", ["c"])
        await settle({"a": 1, "b": 2, "c": 1})
        await asyncio.sleep(1.5)  # redials come every second: the cut holds
        assert await peers() == {"a": 1, "b": 2, "c": 1}
        # a restarted node stays cut off from the same peers
        await backend.restart_node("c", ready_timeout=20)
        await settle({"a": 1, "b": 2, "c": 1})
        await backend.heal_peers("c", ["a"])
        await settle({"a": 2, "b": 2, "c": 2})
        for client in clients.values():
            await client.aclose()
    finally:
        await backend.cleanup()


async def test_partition_peers_keeps_two_sides_apart_until_healed(tmp_path: Path):
    text = textwrap.dedent(f"""
        name: t
        nodes: {{count: 3, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {APP}}}
          - {{name: ns, type: create_namespace, node: node-1, application_id: "${{results.install.application_id}}"}}
          - {{name: ctx, type: create_context, node: node-1, application_id: "${{results.install.application_id}}", namespace_id: "${{results.ns.namespace_id}}"}}
          - {{name: inv2, type: invite, node: node-1, namespace_id: "${{results.ns.namespace_id}}"}}
          - {{type: join, node: node-2, namespace_id: "${{results.ns.namespace_id}}", invitation: "${{results.inv2.invitation}}"}}
          - {{name: inv3, type: invite, node: node-1, namespace_id: "${{results.ns.namespace_id}}"}}
          - {{type: join, node: node-3, namespace_id: "${{results.ns.namespace_id}}", invitation: "${{results.inv3.invitation}}"}}
          - {{type: partition_peers, node: node-3, peers: [node-1, node-2]}}
          - {{type: call, node: node-3, context_id: "${{results.ctx.context_id}}", method: set, args: {{key: island, value: "3"}}}}
          - {{type: call, node: node-1, context_id: "${{results.ctx.context_id}}", method: set, args: {{key: main, value: "1"}}}}
          - {{name: main, type: wait_for_sync, context_id: "${{results.ctx.context_id}}", nodes: [node-1, node-2], timeout: 20}}
          - {{name: apart, type: wait_for_sync, context_id: "${{results.ctx.context_id}}", timeout: 1, expected_failure: true}}
          - {{type: heal_peers, node: node-3, peers: [node-1, node-2]}}
          - {{type: wait_for_sync, context_id: "${{results.ctx.context_id}}", timeout: 20, expect: {{method: len, equals: 2}}}}
    """)
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    assert result.passed, [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
    hashes = result.workflow_results["apart"]["hashes"]
    assert hashes["node-1"] == hashes["node-2"] != hashes["node-3"]


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


def test_container_and_peer_steps_are_checked_at_load(tmp_path: Path):
    text = textwrap.dedent("""
        name: t
        nodes: {count: 2, prefix: node}
        remote_nodes: {far: {url: "http://127.0.0.1:9"}}
        steps:
          - {type: pause_container, container: node-3}
          - {type: restart_container, container: far}
          - {type: partition_peers, node: node-1, peers: [node-1, node-2]}
          - {type: heal_peers, node: node-1, peers: []}
          - {type: partition_peers, node: far, peers: [node-9]}
    """)
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    messages = [p.render() for p in info.value.problems]
    assert any(":6:" in m and "'node-3', which the workflow does not define" in m for m in messages), messages
    assert any(":7:" in m and "remote node 'far'" in m for m in messages), messages
    assert any(":8:" in m and "among its own `peers`" in m for m in messages), messages
    assert any(":9:" in m and "peers" in m for m in messages), messages
    assert any(":10:" in m and "remote node 'far'" in m for m in messages), messages
    assert any(":10:" in m and "node-9" in m for m in messages), messages


@pytest.mark.parametrize(
    "step, key",
    [
        ("{type: stop_node, nodes: []}", "nodes"),
        ("{type: start_node, nodes: []}", "nodes"),
        ("{type: restart_node, nodes: []}", "nodes"),
        ("{type: partition_peers, node: node-1, peers: []}", "peers"),
        ("{type: heal_peers, node: node-1, peers: []}", "peers"),
    ],
)
def test_a_fault_step_on_no_node_is_refused_at_load(tmp_path: Path, step: str, key: str):
    # it used to pass, doing nothing
    text = f"name: t\nnodes: {{count: 2, prefix: node}}\nsteps:\n  - {step}\n"
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    (problem,) = info.value.problems
    assert f"{key}: name at least one node: with an empty list the step would pass doing nothing" in problem.message
    assert (problem.location.line, problem.location.col) == (4, step.index(f"{key}:") + len(key) + 7)
