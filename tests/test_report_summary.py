"""The markdown step summary: content, order, escaping and the byte budget.

``sample_run`` runs a real workflow on embedded nodes (about a second), so the
summary is checked against records the engine really produces; edge cases
(huge logs, hostile text, thousands of workflows) use records built by hand.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from calimero_workflow.errors import Location
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.report.summary import (
    DEFAULT_BUDGET,
    build_summary,
    display_path,
    failures_of,
)
from calimero_workflow.results import (
    ErrorInfo,
    PhaseRecord,
    RunResult,
    Status,
    StepRecord,
)
from calimero_workflow.workflow import load_workflow

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "kv-store" / "kv_store.wasm"

SAMPLE = """\
name: report sample
nodes: {count: 2, prefix: node}
steps:
  - name: install
    type: install_application
    node: node-1
    path: ./kv_store.wasm
  - name: ns
    type: create_namespace
    node: node-1
    application_id: ${results.install.application_id}
  - name: ctx
    type: create_context
    node: node-1
    application_id: ${results.install.application_id}
    namespace_id: ${results.ns.namespace_id}
  - name: loop
    type: repeat
    count: 2
    steps:
      - name: set
        type: call
        node: node-1
        context_id: ${results.ctx.context_id}
        method: set
        args: {key: k, value: "v${iteration}"}
  - name: check
    type: assert
    non_blocking: true
    statements:
      - equal(1, 1)
      - equal(${results.loop.iteration}, 3)
  - name: missing
    type: call
    node: node-1
    context_id: ${results.ctx.context_id}
    method: no_such_method
    retries: 0
  - name: after
    type: wait
    seconds: 0.01
"""

#: Lines of SAMPLE the reports must point at.
CHECK_STATEMENT_LINE = 32  # the failing statement inside `check`
MISSING_STEP_LINE = 33


def sample_run(workspace: Path, text: str = SAMPLE) -> RunResult:
    """Run ``text`` as ``<workspace>/wf/sample.yml`` on embedded nodes."""
    folder = workspace / "wf"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(APP, folder / "kv_store.wasm")
    path = folder / "sample.yml"
    path.write_text(text)
    workflow = load_workflow(path, environ={})
    executor = WorkflowExecutor(
        workflow, backend="embedded", env={}, workdir=workspace / "runs"
    )
    return asyncio.run(executor.run())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="module")
def failed_run(workspace: Path) -> RunResult:
    return sample_run(workspace)


def step(path: str, status: Status = Status.PASSED, **kwargs) -> StepRecord:
    return StepRecord(
        name=path.rsplit("/", 1)[-1], type="call", path=path, status=status, **kwargs
    )


def run_of(
    *steps: StepRecord, name: str = "wf", status: Status = Status.PASSED, **kwargs
) -> RunResult:
    return RunResult(
        workflow_name=name,
        workflow_file=f"/ws/{name}.yml",
        run_id=f"run-{name}",
        backend="embedded",
        status=status,
        steps=list(steps),
        **kwargs,
    )


# -- shared views ----------------------------------------------------------------------


def test_display_path_is_relative_to_the_workspace_when_inside():
    assert display_path("/ws/a/b.yml", Path("/ws")) == "a/b.yml"
    assert display_path("/elsewhere/b.yml", Path("/ws")) == "/elsewhere/b.yml"
    assert display_path(None, Path("/ws")) == "<workflow>"


def test_failures_of_a_real_run_point_at_the_assertion_and_the_step(
    failed_run, workspace
):
    failures = failures_of(failed_run)
    assert [f.what for f in failures] == ["check", "missing"]
    check, missing = failures
    assert check.location.line == CHECK_STATEMENT_LINE
    assert (check.error.expected, check.error.actual) == (3, 2)
    assert missing.location.line == MISSING_STEP_LINE
    assert "no_such_method" in missing.node_logs["node-1"]


def test_failures_include_failed_phases_and_parents_that_failed_alone():
    load = ErrorInfo("nodes did not start", kind="BackendError")
    parent = step(
        "loop",
        Status.FAILED,
        error=ErrorInfo("bad count"),
        children=[step("loop[1]/a")],
    )
    run = run_of(parent, status=Status.FAILED)
    run.phases = [
        PhaseRecord(
            "nodes_start", Status.FAILED, error=load, data={"last_logs": "boom"}
        )
    ]
    failures = failures_of(run)
    assert [f.what for f in failures] == ["phase nodes_start", "loop"]
    assert failures[0].node_logs == {"the node": "boom"}


# -- content ----------------------------------------------------------------------------


def test_summary_of_a_real_failed_run(failed_run, workspace):
    text = build_summary([[failed_run]], root=workspace)
    assert text.startswith("## ❌ calimero-workflow: 1 of 1 workflow(s) failed")
    assert "### ❌ report sample (failed)" in text
    assert "<code>wf/sample.yml</code> · backend embedded" in text
    # failures come first, each with its message and YAML position
    failures_at = text.index("#### Failures")
    check_at = text.index(f"<code>wf/sample.yml:{CHECK_STATEMENT_LINE}</code>")
    missing_at = text.index(f"<code>wf/sample.yml:{MISSING_STEP_LINE}</code>")
    passed_at = text.index("passed step(s)</summary>")
    assert failures_at < check_at < missing_at < passed_at
    assert "expected: 3\nactual:   2" in text
    assert 'method "no_such_method" not found' in text
    # node logs of the failing step, collapsed
    assert "<details><summary>node logs of node-1</summary>" in text
    # a table with durations; passing steps and captured results collapsed
    assert "| ❌ | <code>missing</code> | call |" in text
    assert "| ⏭️ | <code>after</code> | wait |" in text
    assert "<code>loop[2]/set</code>" in text
    assert "<details><summary>captured results</summary>" in text
    assert text.index("<details><summary>5 passed step(s)</summary>") < text.index(
        "captured results"
    )
    assert "[!NOTE]" not in text  # nothing was left out


def test_summary_of_a_flaky_workflow_names_the_earlier_attempts():
    failed = run_of(
        step("a", Status.FAILED, error=ErrorInfo("first try failed")),
        status=Status.FAILED,
    )
    passed = run_of(step("a"))
    text = build_summary([[failed, passed]])
    assert (
        "## ✅ calimero-workflow: 1 workflow(s) passed, 1 flaky (passed on a retry)"
        in text
    )
    assert "### ⚠️ wf (flaky)" in text
    assert "passed on attempt 2 of 2 (flaky: earlier attempts failed)" in text
    assert "attempt 1: a: first try failed" in text


def test_summary_of_an_interrupted_run_says_cancelled():
    run = run_of(step("a", Status.SKIPPED), status=Status.FAILED, interrupted=True)
    run.phases = [
        PhaseRecord(
            "steps", Status.FAILED, error=ErrorInfo("interrupted", kind="cancelled")
        )
    ]
    text = build_summary([[run]])
    assert "### ⛔ wf (cancelled)" in text
    assert "cancelled during <code>phase steps</code>" in text
    # a cancellation is no failure: the step it cut short is skipped
    assert "#### Failures" not in text
    assert "0 passed, 0 failed, 1 skipped" in text


def test_text_from_nodes_and_yaml_cannot_add_markup():
    hostile = "</pre><script>alert(1)</script>| --- |\x1b[31m"
    bad = step(
        "a|b",
        Status.FAILED,
        error=ErrorInfo(hostile),
        logs=[hostile],
        node_logs={"node<1>": hostile},
        location=Location(Path("/ws/wf.yml"), 3),
    )
    text = build_summary(
        [[run_of(bad, name="<img src=x>", status=Status.FAILED)]], root=Path("/ws")
    )
    assert "<script>" not in text and "<img" not in text and "\x1b" not in text
    assert "&lt;/pre&gt;&lt;script&gt;" in text
    assert "<code>a&#124;b</code>" in text  # a pipe cannot split the table row
    assert "node&lt;1&gt;" in text


# -- the budget ----------------------------------------------------------------------------


def test_huge_logs_are_cut_to_their_last_lines_within_the_budget():
    logs = "\n".join(f"log line {i}" for i in range(200_000))
    failing = step(
        "big",
        Status.FAILED,
        error=ErrorInfo("it broke", expected=1, actual=2),
        node_logs={"node-1": logs},
    )
    passing = [step(f"ok-{i}") for i in range(2000)]
    run = run_of(
        failing, *passing, status=Status.FAILED, workflow_results={"r": "x" * 300_000}
    )
    budget = 64 * 1024
    text = build_summary([[run]], budget=budget)
    assert len(text.encode("utf-8")) <= budget
    # the essentials survive: status, failure message, expected/actual
    assert "### ❌ wf (failed)" in text and "it broke" in text and "expected: 1" in text
    # the logs keep their end, and say how much is gone
    assert "log line 199999" in text and "log line 0\n" not in text
    assert "lines left out to fit the summary limit" in text
    assert "[!NOTE]" in text and "left out" in text.split("[!NOTE]")[1]


def test_default_budget_holds_for_thousands_of_failures():
    runs = [
        [
            run_of(
                step(
                    "s",
                    Status.FAILED,
                    error=ErrorInfo("é" * 500),
                    logs=["x" * 2000] * 5,
                ),
                name=f"wf{i}",
                status=Status.FAILED,
            )
        ]
        for i in range(3000)
    ]
    text = build_summary(runs)
    assert len(text.encode("utf-8")) <= DEFAULT_BUDGET < 1024 * 1024
    assert text.startswith("## ❌ calimero-workflow: 3000 of 3000 workflow(s) failed")
    assert text.rstrip().endswith("The JUnit report and the node logs have everything.")


@pytest.mark.parametrize("budget", [1200, 2000, 5000, 20_000])
def test_any_budget_is_respected(budget):
    run = run_of(
        step(
            "s",
            Status.FAILED,
            error=ErrorInfo("&<>" * 3000),
            node_logs={"n": "&" * 50_000},
        ),
        status=Status.FAILED,
        workflow_results={"k": "v" * 10_000},
    )
    assert len(build_summary([[run], [run]], budget=budget).encode("utf-8")) <= budget


def test_a_budget_too_small_for_the_note_is_refused():
    with pytest.raises(ValueError, match="too small"):
        build_summary([], budget=100)
