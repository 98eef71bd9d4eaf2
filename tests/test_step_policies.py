"""Per-step policies: retries with backoff, timeout, and the examples that use them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.results import Status
from calimero_workflow.workflow import load_workflow, parse_workflow

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "kv-store" / "kv_store.wasm"


async def run_text(text: str, tmp_path: Path, **kw):
    wf = parse_workflow(textwrap.dedent(text), file=tmp_path / "wf.yml", environ={})
    return await WorkflowExecutor(wf, env={}, workdir=tmp_path / "runs", **kw).run()


async def test_retries_ride_out_a_node_restart(tmp_path: Path):
    result = await run_text(
        f"""
        name: retry
        nodes: {{count: 1, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {APP}}}
          - {{type: stop_node, nodes: node-1}}
          - name: both
            type: parallel
            groups:
              - name: caller
                steps:
                  - name: ns
                    type: create_namespace
                    node: node-1
                    application_id: ${{results.install.application_id}}
                    retries: 8
                    retry_delay: 0.1
              - name: restarter
                steps:
                  - {{type: wait, seconds: 0.4}}
                  - {{type: start_node, nodes: node-1}}
        """,
        tmp_path,
    )
    assert result.passed, [(s.path, s.error) for s in result.all_steps() if s.error]
    ns = next(s for s in result.all_steps() if s.name == "ns")
    assert ns.attempts > 1
    assert any("retrying in" in line for line in ns.logs)


async def test_no_retries_fails_at_once(tmp_path: Path):
    result = await run_text(
        f"""
        name: retry
        nodes: {{count: 1, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {APP}}}
          - {{type: stop_node, nodes: node-1}}
          - {{name: ns, type: create_namespace, node: node-1, application_id: "${{results.install.application_id}}", retries: 0}}
        """,
        tmp_path,
    )
    ns = result.steps[2]
    assert ns.status is Status.FAILED and ns.attempts == 1


async def test_app_errors_are_not_retried(tmp_path: Path):
    result = await run_text(
        f"""
        name: retry
        nodes: {{count: 1, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {APP}}}
          - {{name: ns, type: create_namespace, node: node-1, application_id: "${{results.install.application_id}}"}}
          - {{name: ctx, type: create_context, node: node-1, application_id: "${{results.install.application_id}}", namespace_id: "${{results.ns.namespace_id}}"}}
          - {{name: bad, type: call, node: node-1, context_id: "${{results.ctx.context_id}}", method: nope, retries: 5}}
        """,
        tmp_path,
    )
    bad = result.steps[3]
    assert bad.status is Status.FAILED and bad.attempts == 1


async def test_timeout_on_any_step(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - {type: wait, seconds: 5, timeout: 0.2}
        """,
        tmp_path,
    )
    step = result.steps[0]
    assert step.error.kind == "timeout"
    assert "timed out after 0.2 s" in step.error.message
    assert step.error.location.line == 4


async def test_embedded_nuke_removes_node_data_of_earlier_runs(tmp_path: Path):
    text = "name: nuke me\nnodes: {count: 1}\nsteps: []\n"
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    first = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    old = next(tmp_path.glob(f"*{first.run_id}"))
    assert (old / "nodes").is_dir()
    second = await WorkflowExecutor(wf, env={}, workdir=tmp_path, nuke=True).run()
    nuke = next(p for p in second.phases if p.name == "nuke")
    assert nuke.status is Status.PASSED and nuke.data["removed"] == [old.name]
    assert not (old / "nodes").exists()


async def test_nuke_leaves_a_run_still_in_progress_alone(tmp_path: Path):
    busy = parse_workflow(
        "name: busy\nnodes: {count: 1}\nsteps:\n  - {type: wait, seconds: 1.5}\n", environ={}
    )
    first = asyncio.create_task(WorkflowExecutor(busy, env={}, workdir=tmp_path).run())
    while not list(tmp_path.glob("*/nodes")):
        await asyncio.sleep(0.01)
    (live,) = [p.parent for p in tmp_path.glob("*/nodes")]
    quick = parse_workflow("name: busy\nnodes: {count: 1}\nsteps: []\n", environ={})
    second = await WorkflowExecutor(quick, env={}, workdir=tmp_path, nuke=True).run()
    nuke = next(p for p in second.phases if p.name == "nuke")
    assert nuke.data == {"removed": [], "in_progress": [live.name]}
    assert "left 1 run(s) still in progress alone" in nuke.detail
    assert (await first).passed
    assert (live / "nodes").is_dir()
    # once it is over, it is a leftover like any other
    third = await WorkflowExecutor(quick, env={}, workdir=tmp_path, nuke=True).run()
    nuke = next(p for p in third.phases if p.name == "nuke")
    assert live.name in nuke.data["removed"] and nuke.data["in_progress"] == []
    assert not (live / "nodes").exists()


async def test_nuke_leaves_workflows_whose_name_only_starts_the_same(tmp_path: Path):
    # "kv" is a prefix of "kv store replicates" (folders kv-<run>, kv-store-replicates-<run>),
    # and "kv store" differs from "kv-store" only in punctuation (one slug).
    others = []
    for name in ("kv store replicates", "kv-store", "kv store"):
        wf = parse_workflow(f"name: {name}\nnodes: {{count: 1}}\nsteps: []\n", environ={})
        run = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
        others.append(next(tmp_path.glob(f"*{run.run_id}")))
    kv = parse_workflow("name: kv\nnodes: {count: 1}\nsteps: []\n", environ={})
    earlier = await WorkflowExecutor(kv, env={}, workdir=tmp_path).run()
    mine = next(tmp_path.glob(f"*{earlier.run_id}"))

    again = await WorkflowExecutor(kv, env={}, workdir=tmp_path, nuke=True).run()
    nuke = next(p for p in again.phases if p.name == "nuke")
    assert nuke.data["removed"] == [mine.name]
    assert not (mine / "nodes").exists()
    for other in others:
        assert (other / "nodes").is_dir(), other.name
    # and "kv store" removes its own only, not "kv-store"'s
    store = parse_workflow("name: kv store\nnodes: {count: 1}\nsteps: []\n", environ={})
    result = await WorkflowExecutor(store, env={}, workdir=tmp_path, nuke=True).run()
    assert next(p for p in result.phases if p.name == "nuke").data["removed"] == [others[2].name]
    assert (others[1] / "nodes").is_dir()


@pytest.mark.parametrize("name", ["kv-store", "control", "fuzzy", "faults"])
async def test_examples_pass_on_embedded_nodes(name: str, tmp_path: Path):
    wf = load_workflow(ROOT / "examples" / name / "workflow.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    assert result.passed, [(s.path, s.error.message) for s in result.all_steps() if s.error]


def test_a_failed_call_shows_no_unrelated_node_log_lines(tmp_path: Path):
    # A wrong value and an unknown method are the app's answer; the node's
    # INFO lines ("GET /admin-api/health 200") explain nothing and used to
    # bury the failure, even with -q.
    wf = tmp_path / "wf.yml"
    wf.write_text(textwrap.dedent(f"""
        name: t
        nodes: {{count: 1, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {APP}}}
          - {{name: ns, type: create_namespace, node: node-1, application_id: "${{results.install.application_id}}"}}
          - {{name: ctx, type: create_context, node: node-1, application_id: "${{results.install.application_id}}", namespace_id: "${{results.ns.namespace_id}}"}}
          - {{type: call, node: node-1, context_id: "${{results.ctx.context_id}}", method: len, expected: 5}}
    """))
    done = subprocess.run(
        [sys.executable, "-m", "calimero_workflow.cli", "run", str(wf), "-q",
         "--workdir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "len returned an unexpected value" in done.stdout
    assert "last log lines" not in done.stdout, done.stdout
    assert "INFO" not in done.stdout, done.stdout
    # every line is still in the node's log file
    log = next((tmp_path / "runs").glob("*/node-logs/node-1.log")).read_text()
    assert "POST /jsonrpc 200" in log


async def test_the_results_keep_the_node_log_lines_the_console_leaves_out(tmp_path: Path):
    from io import StringIO

    from calimero_workflow.report.console import ConsoleReporter

    console = StringIO()
    result = await run_text(
        f"""
        name: t
        nodes: {{count: 1, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {APP}}}
          - {{name: ns, type: create_namespace, node: node-1, application_id: "${{results.install.application_id}}"}}
          - {{name: ctx, type: create_context, node: node-1, application_id: "${{results.install.application_id}}", namespace_id: "${{results.ns.namespace_id}}"}}
          - {{name: missing, type: call, node: node-1, context_id: "${{results.ctx.context_id}}", method: no_such_method}}
        """,
        tmp_path,
        events=ConsoleReporter(console, quiet=True),
    )
    missing = result.steps[-1]
    assert missing.status is Status.FAILED
    assert "last log lines" not in console.getvalue()
    assert "no_such_method" in missing.node_logs["node-1"]  # for JUnit and the summary


async def test_node_log_lines_shown_with_a_failure_are_the_relevant_ones(tmp_path: Path):
    from calimero_workflow.backends.base import NodeSpec, NodeUnavailableError
    from calimero_workflow.backends.embedded import EmbeddedBackend
    from calimero_workflow.client import NodeApiError
    from calimero_workflow.errors import StepFailure
    from calimero_workflow.node.logs import node_logger
    from calimero_workflow.results import ErrorInfo, StepRecord
    from calimero_workflow.steps.base import BaseStep, Halt, NodeRef, RunContext

    backend = EmbeddedBackend(run_id="r", workflow_name="t", workdir=tmp_path / "run")
    try:
        await backend.start_nodes([NodeSpec(name="n")], ready_timeout=20)
        ctx = RunContext(
            workflow=None, run_id="r", workdir=tmp_path, resolver=None, env={}, events=None,
            backend=backend, nodes={"n": NodeRef(name="n", url="", kind="embedded", client=None)},
        )
        log = node_logger("n", "test")
        log.info("an old line, from before the step")
        await asyncio.sleep(0.01)
        since = time.time()
        log.info("an ordinary line")
        log.warning("something the node did not like")

        def record(kind: str) -> StepRecord:
            return StepRecord(
                name="s", type="call", path="s", status=Status.FAILED, node="n",
                error=ErrorInfo(message="failed", kind=kind),
            )

        async def shown(kind: str, cause: BaseException) -> str:
            shown, kept = await BaseStep._node_logs(ctx, record(kind), since, cause)
            assert "old line" in kept["n"]  # the reports keep the last lines, whatever the cause
            return shown.get("n", "")

        # an assertion: only the warnings and errors logged during the step
        text = await shown("assertion", StepFailure("x", kind="assertion"))
        assert text.splitlines() == [line for line in text.splitlines() if "did not like" in line]
        assert "did not like" in text
        # the node failed (HTTP 5xx): all it logged during the step
        text = await shown("HTTP 500", NodeApiError("x", node="n", route="r", status=500))
        assert "an ordinary line" in text and "did not like" in text and "old line" not in text
        # the node died: its last lines, from before the step too
        text = await shown("node_unavailable", NodeUnavailableError("gone", node="n"))
        assert "old line" in text
        # nothing relevant: nothing shown
        since = time.time() + 1
        assert await shown("assertion", StepFailure("x", kind="assertion")) == ""
        # a node the workflow stopped itself needs no log to explain it
        since = 0
        ctx.halted["n"] = Halt(how="stopped", step="stop", line=3)
        assert await shown("node_halted", StepFailure("x", kind="node_halted")) == ""
    finally:
        await backend.cleanup()


async def test_on_failure_does_not_wait_on_a_paused_node(tmp_path: Path):
    result = await run_text(
        """
        name: paused at failure
        nodes: {count: 2, prefix: node}
        steps:
          - {name: freeze, type: pause_container, container: node-2}
          - {type: assert, actual: 1, equals: 2}
        """,
        tmp_path,
    )
    phase = next(p for p in result.phases if p.name == "on_failure")
    assert phase.status is Status.PASSED, phase.error
    states = json.loads(Path(phase.data["states"]).read_text())
    assert states["node-2"]["contexts_error"] == "not read: node-2 was paused by step 'freeze' (line 5)"
    assert states["node-1"]["contexts"] == []


async def test_a_signal_during_the_teardown_of_a_passed_run_leaves_it_passed(tmp_path: Path):
    from calimero_workflow.steps.base import RunEvents

    class CancelAtCleanup(RunEvents):
        task: asyncio.Task | None = None

        def phase_started(self, name: str) -> None:
            if name == "cleanup" and self.task is not None:
                self.task.cancel()

    events = CancelAtCleanup()
    wf = parse_workflow(
        "name: t\nnodes: {count: 1}\nsteps: [{type: wait, seconds: 0.01}]\n", environ={}
    )
    task = asyncio.ensure_future(WorkflowExecutor(wf, env={}, workdir=tmp_path, events=events).run())
    events.task = task
    result = await task
    assert result.interrupted and result.passed
    cleanup = next(p for p in result.phases if p.name == "cleanup")
    assert cleanup.status is Status.PASSED and "stopped 1 embedded node(s)" in cleanup.detail

    # cut during its steps, it is failed
    slow = parse_workflow("name: t\nnodes: {count: 1}\nsteps: [{type: wait, seconds: 30}]\n", environ={})
    task = asyncio.ensure_future(WorkflowExecutor(slow, env={}, workdir=tmp_path).run())
    await asyncio.sleep(0.5)
    task.cancel()
    result = await task
    assert result.interrupted and not result.passed
