"""The markdown step summary: content, order, escaping and the byte budget.

``sample_run`` runs a real workflow on embedded nodes (about a second), so the
summary is checked against records the engine really produces; edge cases
(huge logs, hostile text, thousands of workflows) use records built by hand.
"""

from __future__ import annotations

import asyncio
import re
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
    assert "<code>loop&#91;2&#93;/set</code>" in text  # `[` cannot start a link
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


#: A workflow name that, read as markdown, forges a passing heading, a table,
#: an image (a tracking pixel) and links.
FORGING_NAME = (
    "innocent ![pixel](https://example.invalid/p.png) [click me](https://example.invalid/x)"
    "\n\n---\n## ✅ calimero-workflow: all workflows passed\n\n| fake | table |\n|---|---|\n"
    "| a | b |\n"
)
FORGING_STEP = (
    "s [link](https://example.invalid) **b** www.example.invalid me@example.invalid"
    " `c` ~~d~~ $x$ \\"
)


def test_names_cannot_add_markdown_in_headings_cells_code_or_summaries():
    failing = step(
        FORGING_STEP,
        Status.FAILED,
        error=ErrorInfo("it broke"),
        logs=["a log"],
        node_logs={FORGING_NAME: "node log"},
        location=Location(Path(f"/ws/{FORGING_NAME}.yml"), 3),
    )
    runs = [[run_of(failing, step(FORGING_STEP + " ok"), name=FORGING_NAME, status=Status.FAILED)]]
    for budget in (DEFAULT_BUDGET, 2500):  # the closing note names parts too
        text = build_summary(runs, root=Path("/ws"), budget=budget)
        # Rendered with GitHub's cmark-gfm, this summary has no <a>, <img>,
        # <em>, <del> or <hr> and only our own headings and tables: the names
        # stay on their line (`\n` shown as text), and every character GFM
        # reads as syntax there is a character reference, which the parser
        # takes as literal text and the browser shows as typed.
        for syntax in ("[", "]", "![", "](", "**b**", "`", "~~", "$", "https:", "www.", "\n## ✅"):
            assert syntax not in text.replace("> [!NOTE]", ""), syntax  # but our own
        assert "&#91;click me&#93;(https&#58;//example.invalid/x)" in text
        # an e-mail autolink is found after references are decoded: a comment breaks it
        assert "me&#64;<!-- -->example.invalid" in text
        lines = text.splitlines()
        headings = [line for line in lines if line.startswith("#")]
        assert all(h.startswith(("## ❌ calimero-workflow:", "### ❌ innocent", "#### Failures"))
                   for h in headings), headings
        # the only table rows are the step tables' own: `|` in a name is a reference
        rows = [line for line in lines if line.startswith("|")]
        assert all(r.startswith(("| |", "|---", "| ❌ |", "| ✅ |")) and r.count("|") == 6
                   for r in rows), rows
        # `---` mid-line is no thematic break: only at the start of a line
        assert not any(line.startswith(("---", "- ", "+ ", "1.")) for line in lines)
        # `<summary>` holds only the name, on its line
        for line in lines:
            if line.startswith("<details>"):
                assert line.endswith("</summary>") and "\\n" not in line, line


def test_a_message_cannot_close_its_pre_block():
    # A <pre> block is an HTML block that only a line holding </pre> (or
    # </script>, </style>, </textarea>) ends, markdown unread in it: with `<`
    # escaped, fences, blank lines and headings in the text stay in it.
    hostile = "boom\n```\n</pre>\n</PRE>\n\n# forged\n[x](https://example.invalid)\n```"
    failing = step(
        "s",
        Status.FAILED,
        error=ErrorInfo(hostile, expected="```\n</pre>", actual=hostile),
        logs=hostile.split("\n"),
        node_logs={"node-1": hostile},
    )
    text = build_summary([[run_of(failing, status=Status.FAILED, workflow_results={"k": hostile})]])
    assert text.count("<pre>") == text.count("</pre>") == 5
    inside = False
    for line in text.splitlines():
        if "<pre>" in line:
            inside = True
        if not inside:
            assert line != "# forged" and "](" not in line and "```" not in line, line
        if "</pre>" in line:
            assert line.startswith("</pre>") or line.endswith("</pre>"), line
            inside = False
    assert "\n&lt;/pre&gt;\n&lt;/PRE&gt;\n\n# forged\n" in text


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


def test_a_cut_line_is_counted_in_characters():
    # one huge line: the cut keeps its end and says how much of it went
    failing = step("big", Status.FAILED, error=ErrorInfo("it broke"), node_logs={"n": "y" * 2_000_000})
    text = build_summary([[run_of(failing, status=Status.FAILED)]], budget=64 * 1024)
    assert len(text.encode("utf-8")) <= 64 * 1024
    note = re.search(r"… (\d+) of 2000000 characters of the line cut here left out to fit the summary limit …", text)
    assert note, text[-2000:]
    kept = text.split(note.group(0))[1].split("</pre>")[0]
    assert kept.strip("… \n") == "y" * (2_000_000 - int(note.group(1)))


def test_a_long_message_is_cut_to_its_bound_with_a_count():
    message = "head " + "x" * 10_000
    failing = step("s", Status.FAILED, error=ErrorInfo(message + "\nsecond line"))
    text = build_summary([[run_of(failing, status=Status.FAILED)]])
    assert "head xxx" in text
    body = text.split("<pre>")[1].split("</pre>")[0]
    assert len(body) < 2200
    assert body.endswith(
        "… 1 of 2 lines and 8005 of 10005 characters of the line cut here left out to fit"
        " the summary limit …"
    )
    assert "shortened 1 part(s) (the message of s)" in text


def test_huge_failures_leave_room_for_every_workflows_status_and_headline():
    huge = "script exited with code 1: " + "y" * 2_000_000
    runs = [
        [
            run_of(
                step("boom", Status.FAILED, error=ErrorInfo(huge), logs=[huge]),
                name=f"huge{i}",
                status=Status.FAILED,
                node_log_files={},
            )
        ]
        for i in range(3)
    ] + [
        [run_of(step(f"small{i}", Status.FAILED, error=ErrorInfo(f"small {i} broke")),
                name=f"small{i}", status=Status.FAILED)]
        for i in range(40)
    ]
    text = build_summary(runs)
    assert len(text.encode("utf-8")) <= DEFAULT_BUDGET
    for i in range(3):
        assert f"### ❌ huge{i} (failed)" in text
    for i in range(40):
        assert f"### ❌ small{i} (failed)" in text
        assert f"**<code>small{i}</code>** (call)" in text and f"small {i} broke" in text
    assert text.count("**<code>boom</code>** (call)") == 3
    # each huge message is cut to its bound, and says by how much
    assert text.count("characters of the line cut here left out") >= 3
    assert "0 of 1 lines" not in text
