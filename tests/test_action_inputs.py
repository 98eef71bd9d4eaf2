"""The action entry point: inputs, discovery, runs, reports, outputs, exit codes.

Settings are built from plain dicts, as the runner's environment would hold
them. Runs use embedded nodes in this process (the Docker path is covered by
test_action_e2e.py); their output is read back with the runner-side parsers
of test_report_github.py.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from calimero_workflow.action import (
    INPUTS,
    ActionSettings,
    InputError,
    discover_workflows,
    main,
    post,
    read_settings,
    run_action,
)
from calimero_workflow.interrupts import Interrupts
from test_report_github import read_env_file, runner_commands

ROOT = Path(__file__).resolve().parents[1]
ACTION = yaml.safe_load((ROOT / "action.yml").read_text())
DOCS = (ROOT / "docs" / "action.md").read_text()
APP = ROOT / "apps" / "kv-store" / "kv_store.wasm"

PASSING = """\
name: passing
steps:
  - name: greet
    type: assert
    actual: ${GREETING:-unset}
    equals: hello
"""

FAILING = """\
name: failing
nodes: {count: 1, prefix: node}
steps:
  - name: install
    type: install_application
    node: node-1
    path: ../kv_store.wasm
  - name: wrong
    type: assert
    statements:
      - equal(${results.install.node}, node-1)
      - equal(${results.install.node}, node-9)
"""

INVALID = """\
name: invalid
steps:
  - name: a
    type: no_such_step
"""


def env_for(workspace: Path, **inputs: str) -> dict[str, str]:
    """The environment the runner gives the action; ``junit_path`` → ``INPUT_JUNIT-PATH``."""
    files = workspace.parent / "runner"
    files.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "GITHUB_ACTIONS": "true",
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_OUTPUT": str(files / "output"),
        "GITHUB_STEP_SUMMARY": str(files / "summary.md"),
        "GITHUB_STATE": str(files / "state"),
        "CW_WORKDIR": str(workspace.parent / "scratch"),
        "INPUT_BACKEND": "embedded",
    }
    for name, value in inputs.items():
        env[f"INPUT_{name.upper().replace('_', '-')}"] = value
    return env


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "wf").mkdir(parents=True)
    (ws / "kv_store.wasm").write_bytes(APP.read_bytes())
    return ws


def write(ws: Path, rel: str, text: str) -> Path:
    path = ws / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run(env: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    out = io.StringIO()
    code = run_action(env, out)
    output_file = Path(env["GITHUB_OUTPUT"])
    outputs = read_env_file(output_file) if output_file.exists() else {}
    return code, out.getvalue(), outputs


# -- consistency: action.yml, the entry point and the docs agree -------------------------


def test_action_yml_inputs_match_the_entry_point_and_the_docs():
    declared = ACTION["inputs"]
    assert list(declared) == list(INPUTS)
    for name, spec in declared.items():
        assert spec["description"], name
        assert str(spec.get("default", "")) == INPUTS[name], (
            f"default of {name} differs"
        )
        assert re.search(rf"^\| `{re.escape(name)}` \|", DOCS, flags=re.M), (
            f"docs/action.md lacks input {name}"
        )
    for name in ACTION["outputs"]:
        assert re.search(rf"^\| `{re.escape(name)}` \|", DOCS, flags=re.M), (
            f"docs/action.md lacks output {name}"
        )


#: Per input: a value different from its default, and how settings show it was read.
READS = {
    "workflows": ("a.yml\n  b/*.yml \n", lambda s: s.workflows == ("a.yml", "b/*.yml")),
    "image": ("my/node:1", lambda s: s.image == "my/node:1"),
    "backend": ("docker", lambda s: s.backend == "docker"),
    "env": ("A=1\n# note\nB = x=y\n", lambda s: dict(s.env) == {"A": "1", "B": " x=y"}),
    "working-directory": ("wf", lambda s: s.working_directory == s.workspace / "wf"),
    "junit-path": (
        "out/j.xml",
        lambda s: s.junit_path == s.workspace / "out" / "j.xml",
    ),
    "summary": ("false", lambda s: s.summary is False),
    "annotations": ("FALSE", lambda s: s.annotations is False),
    "retries": ("3", lambda s: s.retries == 3),
    "fail-on-failure": ("False", lambda s: s.fail_on_failure is False),
    "timeout-minutes": ("2.5", lambda s: s.timeout_minutes == 2.5),
    "node-logs-dir": ("logs", lambda s: s.node_logs_dir == s.workspace / "logs"),
}


def test_the_entry_point_reads_every_input(workspace):
    assert set(READS) == set(INPUTS)
    base = env_for(workspace, workflows="x.yml")
    for name, (value, shows) in READS.items():
        settings = read_settings({**base, f"INPUT_{name.upper()}": value})
        assert shows(settings), f"input {name} was not read"


def test_defaults_when_the_runner_passes_only_workflows(workspace):
    settings = read_settings(
        {"GITHUB_WORKSPACE": str(workspace), "INPUT_WORKFLOWS": "wf/*.yml"}
    )
    assert settings == ActionSettings(
        workspace=workspace.resolve(),
        workflows=("wf/*.yml",),
        image=None,
        backend="docker",
        env=settings.env,
        working_directory=workspace.resolve(),
        junit_path=workspace.resolve() / "calimero-workflow-results" / "junit.xml",
        summary=True,
        annotations=True,
        retries=0,
        fail_on_failure=True,
        timeout_minutes=0.0,
        node_logs_dir=workspace.resolve() / "calimero-workflow-results" / "node-logs",
        workdir=settings.workdir,
    )
    assert dict(settings.env) == {}
    assert not settings.workdir.is_relative_to(workspace)


def test_dashed_names_win_over_underscored_ones(workspace):
    env = {
        "GITHUB_WORKSPACE": str(workspace),
        "INPUT_WORKFLOWS": "a.yml",
        "INPUT_JUNIT-PATH": "dashed.xml",
        "INPUT_JUNIT_PATH": "underscored.xml",
        "INPUT_NODE_LOGS_DIR": "underscored-logs",
    }
    settings = read_settings(env)
    assert settings.junit_path.name == "dashed.xml"
    assert settings.node_logs_dir.name == "underscored-logs"


def test_every_invalid_input_is_reported_at_once(workspace):
    env = env_for(
        workspace,
        workflows="  \n",
        backend="kubernetes",
        retries="-1",
        timeout_minutes="soon",
        summary="yes",
        env="GOOD=1\nnot a pair\n1BAD=x",
        image="Calimero/Merod:edge",
    )
    with pytest.raises(InputError) as caught:
        read_settings(env)
    problems = "\n".join(caught.value.problems)
    assert "input workflows is empty" in problems
    assert "input backend must be one of embedded, docker, got 'kubernetes'" in problems
    assert "input retries must be a whole number from 0 to 10, got '-1'" in problems
    assert (
        "input timeout-minutes must be a number of minutes (0 for no limit), got 'soon'"
        in problems
    )
    assert "input summary must be true or false, got 'yes'" in problems
    # a line that is not KEY=VALUE may hold a secret: only its number and key show
    assert "input env, line 2 has no '=' (its text is not shown" in problems
    assert "not a pair" not in problems
    assert "input env, line 3: the key '1BAD' is not a variable name" in problems
    assert (
        "input image: 'Calimero/Merod:edge' is not a valid image reference: "
        "repository names must be lowercase" in problems
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("retries", "²"),  # str.isdigit() says yes, int() says no
        ("retries", "٣"),  # int() reads it as 3
        ("retries", "1_0"),
        ("retries", "+1"),
        ("timeout-minutes", "٣"),
        ("timeout-minutes", "1_0"),
        ("timeout-minutes", "1e-7"),
        ("timeout-minutes", "nan"),
        ("timeout-minutes", "inf"),
        ("timeout-minutes", "-0"),
        ("timeout-minutes", "0x10"),
    ],
)
def test_numeric_inputs_are_ascii_numbers(workspace, name, value):
    write(workspace, "wf/a.yml", PASSING)
    env = {**env_for(workspace, workflows="wf/a.yml"), f"INPUT_{name.upper()}": value}
    with pytest.raises(InputError, match=rf"input {name} must be"):
        read_settings(env)
    code, printed, outputs = run(env)  # as the runner gives it: exit 2, no traceback
    assert (code, outputs["status"]) == (2, "invalid")
    assert not (workspace / "calimero-workflow-results").exists()


def test_a_bad_wasm_time_limit_in_the_environment_is_invalid_input(workspace):
    write(workspace, "wf/a.yml", PASSING)
    env = {**env_for(workspace, workflows="wf/a.yml"), "CW_WASM_TIME_LIMIT": "abc"}
    with pytest.raises(InputError, match=r"environment: CW_WASM_TIME_LIMIT='abc' is not a number"):
        read_settings(env)
    code, printed, outputs = run(env)
    assert (code, outputs["status"]) == (2, "invalid")
    assert "Traceback" not in printed


def test_numeric_inputs_in_their_plain_spelling_are_read(workspace):
    settings = read_settings(
        env_for(workspace, workflows="a.yml", retries="10", timeout_minutes="0.5")
    )
    assert (settings.retries, settings.timeout_minutes) == (10, 0.5)
    settings = read_settings(env_for(workspace, workflows="a.yml", timeout_minutes=".25"))
    assert settings.timeout_minutes == 0.25


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("working-directory", ".."),
        ("working-directory", "/"),
        ("junit-path", "../junit.xml"),
        ("junit-path", "/etc/junit.xml"),
        ("node-logs-dir", "wf/../../logs"),
    ],
)
def test_path_inputs_cannot_leave_the_workspace(workspace, name, value):
    with pytest.raises(InputError, match=rf"input {name} .* is outside the workspace"):
        read_settings(
            {**env_for(workspace, workflows="a.yml"), f"INPUT_{name.upper()}": value}
        )


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        (
            "junit-path",
            "wf",
            "input junit-path 'wf' is a folder: name a file in it, e.g. wf/junit.xml",
        ),
        (
            "junit-path",
            "kv_store.wasm/junit.xml",
            "input junit-path 'kv_store.wasm/junit.xml': kv_store.wasm is a file, not a folder",
        ),
        (
            "node-logs-dir",
            "kv_store.wasm",
            "input node-logs-dir 'kv_store.wasm' is a file, not a folder",
        ),
        (
            "node-logs-dir",
            "kv_store.wasm/logs",
            "input node-logs-dir 'kv_store.wasm/logs': kv_store.wasm is a file, not a folder",
        ),
    ],
)
def test_path_inputs_must_fit_what_is_there(workspace, name, value, said):
    with pytest.raises(InputError) as caught:
        read_settings(
            {**env_for(workspace, workflows="a.yml"), f"INPUT_{name.upper()}": value}
        )
    assert said in caught.value.problems


@pytest.mark.parametrize("junit", ["wf/a.yml", "wf/junit.xml"])
def test_the_reports_never_overwrite_a_workflow_file(workspace, junit):
    # the summary, results and failed-steps files go beside the JUnit file
    write(workspace, "wf/a.yml", PASSING)
    clash = (
        write(workspace, "wf/results.json", "{}") if junit.endswith(".xml") else None
    )
    env = env_for(workspace, workflows="wf/*", junit_path=junit)
    code, printed, outputs = run(env)
    assert code == 2 and outputs["status"] == "invalid"
    target = "wf/results.json" if clash else "wf/a.yml"
    assert f"would overwrite the workflow file {target}" in printed
    assert (workspace / "wf" / "a.yml").read_text() == PASSING
    assert clash is None or clash.read_text() == "{}"


@pytest.mark.parametrize("inside", [False, True])
def test_no_path_to_write_goes_through_a_symlink(workspace, tmp_path, inside):
    target = workspace / "real" if inside else tmp_path / "outside"
    target.mkdir()
    (workspace / "reports").symlink_to(target)
    for name, value in (("junit_path", "reports/j.xml"), ("node_logs_dir", "reports/logs")):
        with pytest.raises(InputError) as caught:
            read_settings(env_for(workspace, workflows="a.yml", **{name: value}))
        dashed = name.replace("_", "-")
        assert (
            f"input {dashed} {value!r}: reports is a symbolic link; the action writes "
            "nothing through one (use a real folder)"
        ) in caught.value.problems
    assert not list(target.iterdir())


# -- discovery -----------------------------------------------------------------------------


def test_globs_expand_in_order_once_each_inside_the_workspace(workspace, tmp_path):
    for rel in ("wf/b.yml", "wf/a.yml", "wf/deep/c.yml", "wf/notes.txt", "other/d.yml"):
        write(workspace, rel, PASSING)
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside, "evil.yml", PASSING)
    (workspace / "wf" / "link").symlink_to(outside)
    settings = read_settings(
        env_for(
            workspace,
            working_directory="wf",
            workflows="b.yml\n*.yml\n**/*.yml\n../other/*.yml\n../../outside/*.yml\nnothing/*.yml",
        )
    )
    found = discover_workflows(settings)
    rel = [p.relative_to(workspace).as_posix() for p in found.files]
    assert rel == ["wf/b.yml", "wf/a.yml", "wf/deep/c.yml", "other/d.yml"]
    assert found.unmatched == {
        "../../outside/*.yml": "'../../outside/*.yml' only matches files outside the workspace "
        "(e.g. '../../outside/evil.yml')",
        "nothing/*.yml": "no workflow file matches 'nothing/*.yml' in wf",
    }


def test_an_absolute_pattern_inside_the_workspace_is_fine(workspace):
    write(workspace, "wf/a.yml", PASSING)
    settings = read_settings(
        env_for(workspace, workflows=f"{workspace}/wf/*.yml\n/etc/host*")
    )
    found = discover_workflows(settings)
    assert found.files == [(workspace / "wf" / "a.yml").resolve()]
    assert "/etc/host*" in found.unmatched


# -- whole runs (embedded nodes) -----------------------------------------------------------


def test_a_run_with_a_passing_a_failing_and_an_invalid_workflow(workspace):
    write(workspace, "wf/1-passing.yml", PASSING)
    write(workspace, "wf/2-failing.yml", FAILING)
    write(workspace, "wf/3-invalid.yml", INVALID)
    env = env_for(workspace, workflows="wf/*.yml", env="GREETING=hello")
    code, printed, outputs = run(env)

    # an invalid file makes the run invalid: exit 2, whatever fail-on-failure says
    assert code == 2
    assert set(outputs) == set(ACTION["outputs"])
    assert outputs["status"] == "invalid"
    assert (
        outputs["total"],
        outputs["passed"],
        outputs["failed"],
        outputs["cancelled"],
        outputs["skipped"],
        outputs["flaky"],
    ) == ("3", "1", "2", "0", "0", "0")
    results = json.loads(outputs["results"])
    assert results["wf/1-passing.yml"]["greet"]["actual"] == "hello"
    assert results["wf/2-failing.yml"]["install"]["node"] == "node-1"
    failed = json.loads(outputs["failed-steps"])
    assert [(f["file"], f["step"], f["line"]) for f in failed] == [
        ("wf/2-failing.yml", "wrong", 12),
        ("wf/3-invalid.yml", "phase load", 4),
    ]
    assert outputs["junit-path"] == "calimero-workflow-results/junit.xml"
    assert outputs["summary-path"] == "calimero-workflow-results/summary.md"

    # annotations at the failing statement's line and the invalid step's line
    errors = [
        (p.get("file"), p.get("line"), m)
        for name, p, m in runner_commands(printed)
        if name == "error"
    ]
    assert errors[0][:2] == ("wf/2-failing.yml", "12")
    assert "expected: node-9\nactual:   node-1" in errors[0][2]
    assert errors[1][:2] == ("wf/3-invalid.yml", "4")
    assert "no_such_step" in errors[1][2]

    # the reports, in the workspace
    junit = ET.parse(workspace / outputs["junit-path"]).getroot()
    assert [s.get("file") for s in junit] == [
        "wf/1-passing.yml",
        "wf/2-failing.yml",
        "wf/3-invalid.yml",
    ]
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert summary == (workspace / outputs["summary-path"]).read_text()
    assert "### ❌ failing (failed)" in summary and "### ✅ passing (passed)" in summary
    assert (
        workspace
        / "calimero-workflow-results"
        / "node-logs"
        / "wf-2-failing-yml"
        / "node-1.log"
    ).is_file()

    # the log: a group per workflow, then one per failing step
    groups = [m for name, _, m in runner_commands(printed) if name == "group"]
    assert groups[:2] == ["passing (wf/1-passing.yml)", "failing (wf/2-failing.yml)"]
    assert "failing (wf/2-failing.yml) › wrong logs" in groups


def test_fail_on_failure_false_passes_the_step_but_not_the_status(workspace):
    write(workspace, "wf/failing.yml", FAILING)
    code, _, outputs = run(
        env_for(workspace, workflows="wf/*.yml", fail_on_failure="false")
    )
    assert (code, outputs["status"]) == (0, "failed")
    code, _, _ = run(env_for(workspace, workflows="wf/*.yml"))
    assert code == 1


def test_a_pattern_that_matches_nothing_never_passes(workspace):
    write(workspace, "wf/ok.yml", PASSING)
    code, printed, outputs = run(
        env_for(
            workspace,
            workflows="wf/ok.yml\nwf/typo.yml",
            env="GREETING=hello",
            fail_on_failure="false",
        )
    )
    assert (code, outputs["status"], outputs["total"], outputs["failed"]) == (
        2,
        "invalid",
        "2",
        "1",
    )
    assert any(
        m.startswith("no workflow file matches 'wf/typo.yml'")
        for n, _, m in runner_commands(printed)
        if n == "error"
    )
    # no file to point at: the JUnit report names none (annotators would try it)
    junit = ET.parse(workspace / "calimero-workflow-results" / "junit.xml").getroot()
    typo = next(s for s in junit if s.get("name") == "wf/typo.yml")
    assert typo.get("file") is None
    assert [c.get("file") for c in typo.iter("testcase")] == [None]


def test_invalid_input_is_reported_as_annotations_and_status(workspace):
    code, printed, outputs = run(env_for(workspace, workflows="a.yml", retries="many"))
    assert code == 2 and outputs == {"status": "invalid"}
    [(name, props, message)] = runner_commands(printed)
    assert (name, props["title"]) == ("error", "calimero-workflow: invalid input")
    assert message == "input retries must be a whole number from 0 to 10, got 'many'"


FLAKY = """\
name: flaky
steps:
  - name: first-time-fails
    type: script
    run: if [ -f marker ]; then exit 0; else touch marker; exit 1; fi
"""


def test_a_workflow_that_passes_on_a_retry_is_flaky(workspace):
    write(workspace, "wf/flaky.yml", FLAKY)
    code, printed, outputs = run(
        env_for(workspace, workflows="wf/flaky.yml", retries="2")
    )
    assert (code, outputs["status"], outputs["passed"], outputs["flaky"]) == (
        0,
        "passed",
        "1",
        "1",
    )
    suite = ET.parse(workspace / outputs["junit-path"]).getroot().find("testsuite")
    assert suite.find("testcase/flakyFailure") is not None
    warnings = [m for n, _, m in runner_commands(printed) if n == "warning"]
    assert warnings == [
        "passed on attempt 2 of 2; earlier attempts failed at: first-time-fails"
    ]


@pytest.fixture
def interrupts():
    """The action's signal handlers, installed in this process for one test."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield Interrupts().install()
    for sig, handler in before.items():
        signal.signal(sig, handler)


def signal_on_load(monkeypatch, number: int) -> None:
    """SIGINT to this process as the ``number``-th workflow load returns: the
    cancellation lands before the attempt's run begins."""
    from calimero_workflow import workflow

    real, calls = workflow.load_workflow, []

    def load(*args, **kwargs):
        calls.append(args)
        loaded = real(*args, **kwargs)
        if len(calls) == number:
            os.kill(os.getpid(), signal.SIGINT)
        return loaded

    monkeypatch.setattr(workflow, "load_workflow", load)


BOOM = "name: boom\nsteps:\n  - {name: boom, type: assert, actual: 1, equals: 2}\n"


def test_a_retry_cancelled_before_it_starts_leaves_the_failed_attempt_failed(
    workspace, monkeypatch, interrupts
):
    write(workspace, "wf/boom.yml", BOOM)
    signal_on_load(monkeypatch, 2)  # attempt 2
    env = env_for(workspace, workflows="wf/boom.yml", retries="1")
    out = io.StringIO()
    code = run_action(env, out, interrupts=interrupts)
    outputs = read_env_file(Path(env["GITHUB_OUTPUT"]))
    counts = {k: outputs[k] for k in ("total", "passed", "failed", "cancelled", "skipped", "flaky")}
    assert (code, outputs["status"]) == (130, "cancelled"), out.getvalue()
    assert counts == {"total": "1", "passed": "0", "failed": "1", "cancelled": "0", "skipped": "0", "flaky": "0"}
    assert [f["step"] for f in json.loads(outputs["failed-steps"])] == ["boom"]
    reports = workspace / "calimero-workflow-results"
    (suite,) = ET.parse(reports / "junit.xml").getroot()
    assert (suite.get("failures"), suite.get("skipped")) == ("1", "0")
    assert suite.find("testcase/flakyFailure") is None
    assert suite.find("properties/property[@name='status']").get("value") == "failed"
    (attempts,) = json.loads((reports / "report.json").read_text())
    assert [a["status"] for a in attempts] == ["failed"]
    assert attempts[0]["phases"][-1] == {
        "name": "retry", "status": "skipped", "duration_s": 0.0,
        "detail": "attempt 2 of 2 did not start: the action was cancelled; attempt 1 failed",
        "error": None, "data": {},
    }  # fmt: skip
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert summary.startswith("## ❌ calimero-workflow (cancelled): 1 of 1 workflow(s) failed")
    assert "### ❌ boom (failed)" in summary and "attempt 2 of 2 did not start" in summary
    assert "flaky" not in [n for n, _, _ in runner_commands(out.getvalue())]


def test_a_workflow_cancelled_before_it_starts_is_skipped_never_passed(
    workspace, monkeypatch, interrupts
):
    write(workspace, "wf/1-ok.yml", PASSING)
    write(workspace, "wf/2-boom.yml", BOOM)
    signal_on_load(monkeypatch, 2)  # the second workflow
    env = env_for(workspace, workflows="wf/*.yml", env="GREETING=hello")
    code = run_action(env, io.StringIO(), interrupts=interrupts)
    outputs = read_env_file(Path(env["GITHUB_OUTPUT"]))
    counts = {k: outputs[k] for k in ("total", "passed", "failed", "cancelled", "skipped")}
    assert (code, outputs["status"]) == (130, "cancelled")
    assert counts == {"total": "2", "passed": "1", "failed": "0", "cancelled": "0", "skipped": "1"}
    junit = ET.parse(workspace / "calimero-workflow-results" / "junit.xml").getroot()
    never = next(s for s in junit if s.get("file") == "wf/2-boom.yml")
    assert never.find("properties/property[@name='status']").get("value") == "skipped"
    assert never.find("testcase/skipped").get("message") == "not run: the action was cancelled"
    assert never.get("timestamp")[:4] == time.strftime("%Y", time.gmtime())
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert "### ⏭️ 2-boom.yml (skipped)" in summary


def test_a_failure_before_a_cancellation_stays_a_failure(workspace):
    write(
        workspace,
        "wf/fail-then-cancel.yml",
        """\
name: fail then cancel
steps:
  - {name: bad, type: assert, non_blocking: true, actual: 1, equals: 2}
  - {name: stop, type: script, run: 'kill -INT $PPID; sleep 30'}
  - {name: after, type: assert, actual: 1, equals: 1}
""",
    )
    env = env_for(workspace, workflows="wf/*.yml")
    proc = _start_action(env, workspace)
    out, err = proc.communicate(timeout=120)
    outputs = read_env_file(Path(env["GITHUB_OUTPUT"]))
    counts = {k: outputs[k] for k in ("total", "passed", "failed", "cancelled", "skipped")}
    assert (proc.returncode, outputs["status"]) == (130, "cancelled"), out + err
    assert counts == {"total": "1", "passed": "0", "failed": "1", "cancelled": "0", "skipped": "0"}
    assert [f["step"] for f in json.loads(outputs["failed-steps"])] == ["bad"]
    (suite,) = ET.parse(workspace / "calimero-workflow-results" / "junit.xml").getroot()
    assert (suite.get("failures"), suite.get("skipped")) == ("1", "2")
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert "### ❌ fail then cancel (failed)" in summary and "cancelled during" in summary
    assert "0 of 1 workflow(s) passed, 1 failed, 0 cancelled" in out


SLOW = """\
name: slow
nodes: {count: 1, prefix: node}
steps:
  - name: nap
    type: wait
    seconds: 600
"""


def test_a_workflow_over_its_time_is_stopped_cleaned_up_and_failed(workspace):
    write(workspace, "wf/slow.yml", SLOW)
    code, printed, outputs = run(
        env_for(workspace, workflows="wf/slow.yml", timeout_minutes="0.02")
    )
    assert (code, outputs["status"]) == (1, "failed")
    failure, running = json.loads(outputs["failed-steps"])
    assert failure["step"] == "phase steps"  # the phase that was running
    assert "did not finish within 0.02 minute(s)" in failure["message"]
    assert running["step"] == "nap"  # and the step it was in
    assert "still running when the workflow ran out of time" in running["message"]
    report = json.loads(
        (workspace / "calimero-workflow-results" / "report.json").read_text()
    )
    phases = {p["name"]: p["status"] for p in report[0][0]["phases"]}
    assert phases["cleanup"] == "passed" and phases["steps"] == "failed"


def test_text_from_the_run_cannot_issue_workflow_commands(workspace):
    write(
        workspace,
        "wf/hostile.yml",
        """\
name: hostile
steps:
  - name: speak
    type: script
    run: printf '::error file=x.yml::injected\\n::add-mask::everything\\n'
  - name: check
    type: assert
    actual: ${results.speak.stdout}
    equals: calm
    message: "oops\\n::warning::injected too"
""",
    )
    code, printed, _ = run(env_for(workspace, workflows="wf/hostile.yml"))
    assert code == 1
    assert "::error file=x.yml::injected" in printed  # shown ...
    executed = runner_commands(printed)
    assert all(
        m not in ("injected", "injected too", "everything") for _, _, m in executed
    )  # ... not executed
    assert not [c for c in executed if c[0] == "add-mask"]


def test_secrets_are_masked_before_anything_else_is_printed(workspace):
    write(
        workspace,
        "wf/remote.yml",
        """\
name: remote
remote_nodes:
  far:
    url: http://127.0.0.1:9
    auth: {method: password, username: ci, password: hunter2-pass}
  near:
    url: http://127.0.0.1:9
    auth: {method: api_key, api_key: k9}
steps:
  - name: a
    type: wait
    seconds: 0.01
""",
    )
    env = env_for(
        workspace,
        workflows="wf/remote.yml",
        env="API_TOKEN=tok-123\nPLAIN=visible\nSHORT_KEY=x9",
    )
    _, printed, _ = run(env)
    executed = runner_commands(printed)
    masks = [m for n, _, m in executed if n == "add-mask"]
    assert masks == ["tok-123", "hunter2-pass"]
    # too short to mask without hiding those characters everywhere: a
    # warning names them (never their values)
    warnings = [(p, m) for n, p, m in executed if n == "warning"]
    assert any(
        "SHORT_KEY: a secret in it is shorter than 4 characters" in m for _, m in warnings
    ), warnings
    assert any(
        p.get("file") == "wf/remote.yml"
        and "a credential in wf/remote.yml is shorter than 4 characters" in m
        for p, m in warnings
    ), warnings
    assert not [m for _, m in warnings if "x9" in m or "k9" in m]
    assert executed[0] == ("add-mask", {}, "tok-123")
    first_mask_line = printed.index("::add-mask::hunter2-pass")
    assert "hunter2-pass" not in printed[:first_mask_line]


class _LoginNode(http.server.BaseHTTPRequestHandler):
    """A remote node that gives a token for a user name and password."""

    token = "tok-from-login-8d21"

    def _answer(self, status: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        if self.path == "/admin-api/health":
            return self._answer(200, {"data": {"status": "alive"}})
        if self.headers.get("authorization") != f"Bearer {self.token}":
            return self._answer(401, {"error": "Unauthorized"})
        if self.path == "/admin-api/peers":
            return self._answer(200, {"count": 0})
        # a node that echoes the caller's credentials back
        return self._answer(200, {"data": {"seen": self.headers.get("authorization")}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        if self.path == "/auth/token" and body.get("provider_data") == {
            "username": "ci",
            "password": "pw-for-login-77",
        }:
            return self._answer(200, {"data": {"access_token": self.token}})
        return self._answer(401, {"error": "bad credentials"})

    def log_message(self, *args: object) -> None:
        pass


def test_a_token_a_node_gives_during_the_run_is_masked_by_the_runner_too(workspace):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _LoginNode)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        write(
            workspace,
            "wf/login.yml",
            f"""\
name: login
remote_nodes:
  far: {{url: "{url}", auth: {{method: password, username: ci, password: pw-for-login-77}}}}
steps:
  - name: echo
    type: assert_api_response
    node: far
    path: /admin-api/whoami
    match: {{data.seen: nobody}}
""",
        )
        code, printed, outputs = run(env_for(workspace, workflows="wf/login.yml"))
    finally:
        server.shutdown()
        server.server_close()
    token = _LoginNode.token
    assert code == 1  # the node's echo is shown, redacted, as the actual value
    assert "data.seen: expected" in printed
    executed = runner_commands(printed)
    masks = [m for n, _, m in executed if n == "add-mask"]
    assert masks[:1] == ["pw-for-login-77"]
    assert token in masks, masks
    # masked by the runner before anything the run prints could carry it
    assert printed.count(token) == 1, printed
    assert token not in json.dumps(outputs)


SECRET_USE = """\
name: secret use
nodes: {count: 1, prefix: node}
steps:
  - name: install
    type: install_application
    node: node-1
    path: ../kv_store.wasm
  - name: ns
    type: create_namespace
    node: node-1
    application_id: ${results.install.application_id}
  - name: ctx
    type: create_context
    node: node-1
    application_id: ${results.install.application_id}
    namespace_id: ${results.ns.namespace_id}
  - name: set
    type: call
    node: node-1
    context_id: ${results.ctx.context_id}
    method: set
    args: {key: token, value: "${API_TOKEN}"}
  - name: echo
    type: script
    run: printf 'token %s\\n' "$API_TOKEN"; printf 'pw %s' "$DB_PASSWORD" >&2
  - name: lookup
    type: get_application
    node: node-1
    application_id: ${APP_KEY}
  - name: check
    type: assert
    actual: ${API_TOKEN}
    equals: "x<&\\"y: ${DB_PASSWORD}"
"""


def test_secret_values_are_redacted_in_every_report_output_and_log_file(workspace):
    write(workspace, "wf/secret.yml", SECRET_USE)
    token, password = 'tok-<abc>&"123"', "pw:xyz,7%89"
    env = env_for(
        workspace,
        workflows="wf/secret.yml",
        env=f"API_TOKEN={token}\nDB_PASSWORD={password}\nPLAIN=visible",
    )
    # from the step's own `env:`; an application id that is not installed
    env["APP_KEY"] = b"secret given in the step env 32b".hex()
    code, printed, outputs = run(env)
    assert code == 1, printed
    shown = "\n".join(
        line for line in printed.splitlines() if not line.startswith("::add-mask::")
    )
    written = {
        "log": shown,
        "summary": Path(env["GITHUB_STEP_SUMMARY"]).read_text(),
        **{f"output {k}": v for k, v in outputs.items()},
    }
    files = [p for p in workspace.rglob("*") if p.is_file() and p.suffix != ".wasm"]
    node_log = next(p for p in files if p.name == "node-1.log")
    assert "GET /admin-api/applications/*** " in node_log.read_text()
    for path in files:
        written[str(path.relative_to(workspace))] = path.read_text(errors="replace")
    forms = [
        env["APP_KEY"],
        token,
        password,
        json.dumps(token)[1:-1],
        "tok-&lt;abc&gt;&amp;",
        "xyz%2C7",
        "xyz,7%2589",
    ]
    leaks = [(where, f) for where, text in written.items() for f in forms if f in text]
    assert leaks == []
    # what was there is still said, with the value replaced
    failed = {f["step"]: f["message"] for f in json.loads(outputs["failed-steps"])}
    assert failed["check"].startswith('expected "***" to equal')
    results = json.loads(outputs["results"])["wf/secret.yml"]
    assert results["echo"]["stdout"] == "token ***\n"
    assert results["set"]["args"] == {"key": "token", "value": "***"}
    masks = [m for n, _, m in runner_commands(printed) if n == "add-mask"]
    assert {token, password, env["APP_KEY"]} <= set(masks)
    assert "visible" not in masks


def test_a_script_steps_own_secret_env_is_masked_in_every_output(workspace):
    secret = "yaml-Sup3rS3cret-5"
    write(
        workspace,
        "wf/script.yml",
        f"""\
name: script env
steps:
  - name: sc
    type: script
    run: 'echo "pw is $DB_PASSWORD"; echo "again $DB_PASSWORD" >&2; exit 1'
    env: {{DB_PASSWORD: {secret}, LOG_LEVEL: debug}}
""",
    )
    env = env_for(workspace, workflows="wf/script.yml")
    code, printed, outputs = run(env)
    assert code == 1, printed
    assert ("add-mask", {}, secret) in runner_commands(printed)
    shown = "\n".join(
        line for line in printed.splitlines() if not line.startswith("::add-mask::")
    )
    written = {
        "log": shown,
        "summary": Path(env["GITHUB_STEP_SUMMARY"]).read_text(),
        **{f"output {k}": v for k, v in outputs.items()},
        **{
            str(p.relative_to(workspace)): p.read_text(errors="replace")
            for p in workspace.rglob("*")
            if p.is_file() and p.suffix not in (".wasm", ".yml")  # not the workflow itself
        },
    }
    assert [where for where, text in written.items() if secret in text] == []
    assert "pw is ***" in shown
    # a setting-like value under a non-secret key stays readable
    assert "debug" not in [m for n, _, m in runner_commands(printed) if n == "add-mask"]


def test_every_report_and_output_is_written_whatever_the_depth_of_a_scripts_json(workspace):
    # the records are redacted before the reports are made of them; that went
    # down a script's JSON one call per level, and a 600-level output turned a
    # passing run into status=failed with no report at all
    secret = "abcdefgh12"
    write(workspace, "wf/deep.json", "[" * 600 + f'"{secret}"' + "]" * 600)
    write(
        workspace,
        "wf/deep.yml",
        """\
name: deep
steps:
  - name: deep
    type: script
    run: cat deep.json
    json_output: true
""",
    )
    env = env_for(workspace, workflows="wf/deep.yml", env=f"API_TOKEN={secret}")
    code, printed, outputs = run(env)
    assert code == 0, printed
    assert outputs["status"] == "passed" and outputs["passed"] == "1"
    reports = workspace / "calimero-workflow-results"
    output = json.loads(outputs["results"])["wf/deep.yml"]["deep"]["output"]
    assert output == json.loads((reports / "results.json").read_text())["wf/deep.yml"]["deep"]["output"]
    levels = 0
    while isinstance(output, list):
        output, levels = output[0], levels + 1
    assert (levels, output) == (600, "***")
    case = ET.parse(reports / "junit.xml").getroot().find(".//testcase")
    assert case is not None and case.find("failure") is None
    assert json.loads((reports / "report.json").read_text())[0][0]["status"] == "passed"
    assert "deep" in Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    written = [p for p in reports.rglob("*") if p.is_file()]
    assert [p for p in written if secret in p.read_text(errors="replace")] == []
    assert secret not in "".join(outputs.values())


def test_a_secret_of_the_env_input_cut_in_two_at_the_output_limit_is_masked(workspace):
    # the run must know the action's secrets to mask one a cut has made partial
    token = "ZZsecretTOKEN1234567"
    write(
        workspace,
        "wf/cut.yml",
        """\
name: cut
steps:
  - name: big
    type: script
    run: 'head -c 1048566 /dev/zero | tr "\\0" A; printf "%s and more" "$API_TOKEN"'
""",
    )
    env = env_for(workspace, workflows="wf/cut.yml", env=f"API_TOKEN={token}")
    code, printed, outputs = run(env)
    assert code == 0, printed[-2000:]
    reports = workspace / "calimero-workflow-results"
    assert ("add-mask", {}, token) in runner_commands(printed)
    shown = "\n".join(
        line for line in printed.splitlines() if not line.startswith("::add-mask::")
    )
    written = {
        "log": shown,
        "summary": Path(env["GITHUB_STEP_SUMMARY"]).read_text(),
        **{f"output {k}": v for k, v in outputs.items()},
        **{str(p): p.read_text(errors="replace") for p in reports.rglob("*") if p.is_file()},
    }
    assert [where for where, text in written.items() if token[:4] in text] == []
    results = json.loads((reports / "results.json").read_text())
    assert results["wf/cut.yml"]["big"]["stdout"].endswith("AAAA***")


def test_the_action_environment_is_hidden_from_workflows_and_no_input_reaches_a_shell(
    workspace,
):
    write(
        workspace,
        "wf/env.yml",
        """\
name: env
steps:
  - name: token
    type: assert
    actual: ${ACTIONS_RUNTIME_TOKEN:-hidden}
    equals: hidden
  - name: input
    type: assert
    actual: ${INPUT_WORKFLOWS:-hidden}
    equals: hidden
  - name: value
    type: script
    run: printf '%s' "$TRICKY"
  - name: same
    type: assert
    actual: ${results.value.stdout}
    equals: $(touch pwned-env) `touch pwned-tick`
""",
    )
    env = env_for(
        workspace,
        workflows="wf/env.yml\nwf/env.yml; touch pwned-glob",
        env="TRICKY=$(touch pwned-env) `touch pwned-tick`",
    )
    env["ACTIONS_RUNTIME_TOKEN"] = "runtime-secret"
    code, _, outputs = run(env)
    failed = json.loads(outputs["failed-steps"])
    assert [f["step"] for f in failed] == ["phase discover"]  # only the odd pattern
    assert code == 2
    assert not list(workspace.rglob("pwned*")) and not list(Path.cwd().glob("pwned*"))


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="handing files over needs root, as in the action container",
)
def test_written_files_are_handed_to_the_workspace_owner(workspace):
    write(workspace, "wf/failing.yml", FAILING)
    os.chown(workspace, 4321, 4322)
    mine = write(workspace, "untouched.txt", "x")
    run(env_for(workspace, workflows="wf/*.yml"))
    reports = workspace / "calimero-workflow-results"
    written = [reports, *reports.rglob("*")]
    assert len(written) > 5
    assert {(p.stat().st_uid, p.stat().st_gid) for p in written} == {(4321, 4322)}
    assert mine.stat().st_uid == 0  # nothing else is touched


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="handing files over needs root, as in the action container",
)
def test_files_a_workflow_makes_in_the_workspace_are_handed_over_too(workspace):
    write(
        workspace,
        "wf/writes.yml",
        """\
name: writes
steps:
  - name: build
    type: script
    run: mkdir -p out/deep && echo built > out/deep/file.txt && ln -s /etc/hostname out/link
""",
    )
    os.chown(workspace, 4321, 4322)
    before = write(workspace, "wf/root-owned-before.txt", "x")  # not ours to change
    code, printed, _ = run(env_for(workspace, workflows="wf/writes.yml"))
    assert code == 0, printed
    made = [workspace / "wf" / "out", *(workspace / "wf" / "out").rglob("*")]
    assert len(made) == 4  # out, deep, file.txt, link
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in made} == {(4321, 4322)}
    assert Path("/etc/hostname").stat().st_uid == 0  # the link, not its target
    assert before.stat().st_uid == 0


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="handing files over needs root, as in the action container",
)
def test_handing_over_never_follows_a_folder_swapped_for_a_link(tmp_path):
    import ctypes
    import threading

    from calimero_workflow.workspace import NewFiles

    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        pytest.skip("needs renameat2 to swap folders")
    ws, victim = tmp_path / "ws", tmp_path / "victim"
    ws.mkdir()
    os.chown(ws, 4321, 4322)
    (victim / "sub").mkdir(parents=True)
    new_files = NewFiles(ws)  # what is root's before the run stays root's
    (ws / "x" / "sub").mkdir(parents=True)
    for i in range(200):
        (victim / "sub" / f"f{i}").touch()
        (ws / "x" / "sub" / f"f{i}").touch()
    (ws / "x.alt").symlink_to(victim)
    real, link = bytes(ws / "x"), bytes(ws / "x.alt")
    swaps, stop = [], threading.Event()

    def swap() -> None:  # exchange the folder and the link, again and again
        while not stop.is_set():
            swaps.append(libc.renameat2(-100, real, -100, link, 2))

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        for _ in range(30):
            new_files.hand_over()
    finally:
        stop.set()
        swapper.join()
    assert swaps.count(0) > 100
    assert [p for p in [victim, *victim.rglob("*")] if p.lstat().st_uid != 0] == []
    if (ws / "x").is_symlink():
        libc.renameat2(-100, real, -100, link, 2)
    new_files.hand_over()
    assert {p.lstat().st_uid for p in (ws / "x").rglob("*")} == {4321}


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="handing files over needs root, as in the image's command line",
)
def test_the_command_line_in_the_image_hands_its_files_to_the_folder_owner(
    workspace, monkeypatch
):
    path = write(workspace, "wf/ok.yml", PASSING)
    os.chown(workspace, 4321, 4322)
    monkeypatch.chdir(workspace)
    code = main(["run", str(path), "--env", "GREETING=hello", "--results", "r.json"])
    assert code == 0
    made = [
        workspace / "r.json",
        workspace / ".cw-runs",
        *(workspace / ".cw-runs").rglob("*"),
    ]
    assert all(p.exists() for p in made[:2]) and len(made) > 2
    assert {(p.stat().st_uid, p.stat().st_gid) for p in made} == {(4321, 4322)}
    assert (workspace / "wf").stat().st_uid == 0  # it was there before


def test_cancelling_the_action_cleans_up_and_never_passes(workspace):
    write(workspace, "wf/1-slow.yml", SLOW)
    write(workspace, "wf/2-ok.yml", PASSING)
    env = env_for(workspace, workflows="wf/*.yml")
    env["PYTHONPATH"] = str(ROOT / "src")
    proc = subprocess.Popen(
        [sys.executable, "-m", "calimero_workflow.action"],
        env=env,
        cwd=workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # wait until the first workflow's nodes run, then cancel as the runner does
    seen = ""
    deadline = time.monotonic() + 60
    while "phase nodes_start" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    printed = seen + rest
    assert proc.returncode == 130, printed
    outputs = read_env_file(Path(env["GITHUB_OUTPUT"]))
    # cut short before anything failed: cancelled, not failed
    counts = {k: outputs[k] for k in ("total", "passed", "failed", "cancelled", "skipped")}
    assert outputs["status"] == "cancelled"
    assert counts == {"total": "2", "passed": "0", "failed": "0", "cancelled": "1", "skipped": "1"}
    assert json.loads(outputs["failed-steps"]) == []
    report = json.loads(
        (workspace / "calimero-workflow-results" / "report.json").read_text()
    )
    slow = report[0][-1]
    assert slow["interrupted"] is True
    assert {p["name"]: p["status"] for p in slow["phases"]}["cleanup"] == "passed"
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    assert summary.startswith(
        "## ⛔ calimero-workflow (cancelled): 1 of 2 workflow(s) cancelled, 1 not run"
    )
    assert "### ⛔ slow (cancelled)" in summary
    assert "calimero-workflow: cancelled: 0 of 2 workflow(s) passed, 0 failed, 1 cancelled" in printed
    # the workflow that never ran is a skipped testcase, not an empty suite
    junit = ET.parse(workspace / "calimero-workflow-results" / "junit.xml").getroot()
    never = next(s for s in junit if s.get("file") == "wf/2-ok.yml")
    assert (never.get("tests"), never.get("skipped")) == ("1", "1")
    [case] = never.iter("testcase")
    assert case.find("skipped").get("message") == "not run: the action was cancelled"
    assert never.get("timestamp")[:4] == time.strftime("%Y", time.gmtime())
    # the step the cancellation cut short is skipped too, and says why
    slow_suite = next(s for s in junit if s.get("file") == "wf/1-slow.yml")
    (cut,) = slow_suite.iter("testcase")
    assert cut.find("skipped").get("message") == "cancelled: the run was interrupted"
    assert (junit.get("skipped"), junit.get("failures"), junit.get("errors")) == (
        "2",
        "0",
        "0",
    )


# -- the other entry points ------------------------------------------------------------------


def test_post_without_runs_has_nothing_to_do():
    out = io.StringIO()
    assert post({}, out) == 0
    assert out.getvalue() == "calimero-workflow post: nothing to clean up\n"


def test_post_never_fails_the_job_when_docker_is_gone(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    out = io.StringIO()
    assert post({"STATE_run_ids": "r1,r2"}, out) == 0
    assert out.getvalue().startswith("calimero-workflow post: no Docker cleanup (")


def test_with_arguments_the_image_is_the_command_line(workspace, capsys):
    path = write(workspace, "wf/ok.yml", PASSING)
    assert (
        main(
            [
                "run",
                str(path),
                "--env",
                "GREETING=hello",
                "--workdir",
                str(workspace.parent / "w"),
            ]
        )
        == 0
    )
    assert "PASSED passing" in capsys.readouterr().out


# -- what a repository's files and names cannot make the action do ------------------------


@pytest.mark.parametrize(
    "name",
    ["a\r::warning::CR.yml", "b ##[error]LEGACY.yml", "c\n::error::NL.yml"],
)
def test_hostile_file_names_are_shown_not_run(workspace, name):
    write(workspace, f"wf/{name}", PASSING.replace("${GREETING:-unset}", "hello"))
    code, printed, outputs = run(env_for(workspace, workflows="wf/*.yml"))
    assert (code, outputs["status"]) == (0, "passed"), printed
    executed = runner_commands(printed)
    assert [c for c in executed if c[0] not in ("group", "endgroup")] == []
    shown = printed.replace("\u200b", "")
    visible = name.replace("\r", "\\x0d").replace("\n", "\\n")
    assert f"  - wf/{visible}\n" in shown


def test_a_hostile_workflow_name_is_shown_not_run(workspace):
    # more failing steps than log groups: the line that says so quotes the name
    steps = (
        "  - {name: loop, type: repeat, count: 22, stop_on_failure: false,"
        " steps: [{type: script, run: 'echo out; exit 1'}]}\n"
    )
    for number, name in enumerate(
        [r"x\r::warning::NAMECR ##[warning]NAMELEGACY", r"x\n::error::NAMENL"]
    ):
        write(workspace, f"wf/{number}.yml", f'name: "{name}"\nsteps:\n{steps}')
    code, printed, outputs = run(env_for(workspace, workflows="wf/*.yml"))
    assert (code, outputs["status"]) == (1, "failed"), printed
    assert printed.count("(more step logs are in the JUnit report:") == 2
    executed = runner_commands(printed)
    # shown in group titles and in the annotations' titles (as properties),
    # never run as commands of their own
    assert {name for name, _, _ in executed} == {"group", "endgroup", "error", "warning"}
    assert all("NAME" not in data for name, _, data in executed if name == "warning")
    assert all(props.get("legacy") is None for _, props, _ in executed)


def test_reports_never_go_through_a_symlink_a_run_puts_there(workspace, tmp_path):
    # an earlier run of the action wrote the reports (and listed them) ...
    write(workspace, "wf/ok.yml", PASSING.replace("${GREETING:-unset}", "hello"))
    assert run(env_for(workspace, workflows="wf/ok.yml"))[0] == 0
    reports = workspace / "calimero-workflow-results"
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    # ... then a workflow's script swaps one for a link out of the workspace,
    # and plants links where temporary files used to go
    write(
        workspace,
        "wf/swap.yml",
        f"""\
name: swap
steps:
  - name: swap
    type: script
    run: |
      rm -f {reports}/summary.md
      ln -s {outside} {reports}/summary.md
      for f in junit.xml results.json report.json failed-steps.json; do ln -sf {outside} {reports}/$f.tmp; done
""",
    )
    code, printed, outputs = run(env_for(workspace, workflows="wf/*.yml"))
    assert (code, outputs["status"]) == (0, "passed"), printed
    assert outside.read_text() == "keep me"
    summary = reports / "summary.md"
    assert not summary.is_symlink() and "calimero-workflow" in summary.read_text()
    warnings = [m for n, _, m in runner_commands(printed) if n == "warning"]
    assert (
        "calimero-workflow-results/summary.md was a symbolic link; it was replaced by the report"
        in warnings
    )


def test_the_reports_folder_swapped_for_a_link_is_refused_not_followed(
    workspace, tmp_path
):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    write(
        workspace,
        "wf/swap.yml",
        f"name: swap\nsteps:\n  - {{type: script, run: 'rm -rf out; ln -s {outside} out'}}\n",
    )
    (workspace / "wf" / "out").mkdir()
    code, printed, outputs = run(
        env_for(workspace, workflows="wf/swap.yml", junit_path="wf/out/junit.xml")
    )
    assert list(outside.iterdir()) == []
    assert outputs["status"] == "failed" and code == 1
    errors = [m for n, _, m in runner_commands(printed) if n == "error"]
    assert any(
        "wf/out/junit.xml was not written: wf/out is a symbolic link" in m for m in errors
    ), errors


@pytest.mark.parametrize(
    ("junit", "existing"),
    [
        ("docs/junit.xml", "docs/summary.md"),
        ("notes.xml", "notes.xml"),
        ("calimero-workflow-results/junit.xml", "calimero-workflow-results/report.json"),
    ],
)
def test_the_reports_never_replace_a_file_the_action_did_not_write(
    workspace, junit, existing
):
    write(workspace, "wf/ok.yml", PASSING)
    mine = write(workspace, existing, "the repository's own file\n")
    code, printed, outputs = run(env_for(workspace, workflows="wf/ok.yml", junit_path=junit))
    assert (code, outputs["status"]) == (2, "invalid")
    assert mine.read_text() == "the repository's own file\n"
    errors = [m for n, _, m in runner_commands(printed) if n == "error"]
    assert any(
        f"{existing} is already there, and this action did not write it" in m for m in errors
    ), errors


def test_the_reports_replace_what_an_earlier_run_wrote(workspace):
    write(workspace, "wf/ok.yml", PASSING)
    env = env_for(workspace, workflows="wf/ok.yml", junit_path="docs/junit.xml")
    assert run(env)[0] == 1  # GREETING unset: the workflow fails, the reports are written
    listed = json.loads((workspace / "docs" / ".calimero-workflow.json").read_text())
    assert set(listed["written"]) == {
        "junit.xml", "summary.md", "results.json", "failed-steps.json", "report.json",
    }  # fmt: skip
    env["GREETING"] = "hello"
    code, printed, outputs = run(env)
    assert (code, outputs["status"]) == (0, "passed"), printed
    assert "passed" in (workspace / "docs" / "summary.md").read_text()


def test_node_logs_folders_are_never_links_nor_someone_elses(workspace, tmp_path):
    write(workspace, "wf/a.yml", "name: a\nnodes: {count: 1}\nsteps: [{type: wait, seconds: 0.01}]\n")
    logs = workspace / "calimero-workflow-results" / "node-logs"
    logs.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (logs / "wf-a-yml").symlink_to(outside)
    code, printed, outputs = run(env_for(workspace, workflows="wf/a.yml"))
    assert (code, outputs["status"]) == (2, "invalid")
    assert "calimero-workflow-results/node-logs/wf-a-yml is a symbolic link" in printed
    (logs / "wf-a-yml").unlink()
    code, printed, outputs = run(env_for(workspace, workflows="wf/a.yml"))
    assert code == 0, printed
    assert (logs / "wf-a-yml" / "calimero-node-1.log").is_file()
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(
    "name", ["summary.md", "results.json", "report.json", "failed-steps.json", ".calimero-workflow.json"]
)
def test_junit_path_cannot_take_the_name_of_a_file_written_beside_it(workspace, name):
    write(workspace, "wf/ok.yml", PASSING)
    code, printed, outputs = run(env_for(workspace, workflows="wf/ok.yml", junit_path=f"out/{name}"))
    assert (code, outputs["status"]) == (2, "invalid")
    errors = [m for n, _, m in runner_commands(printed) if n == "error"]
    assert errors == [
        f"input junit-path 'out/{name}': {name} is written beside the JUnit file; "
        "name the JUnit file otherwise, e.g. out/junit.xml"
    ]
    assert not (workspace / "out").exists()


@pytest.mark.parametrize(
    ("input_name", "value", "said"),
    [
        ("junit_path", "README.md", "names a file of the repository (README.md)"),
        ("junit_path", "docs/LICENSE.txt", "names a file of the repository (LICENSE.txt)"),
        ("junit_path", "pkg/package.json", "names a file of the repository (package.json)"),
        ("junit_path", ".git/config", "lies in .git, the repository's own data"),
        ("node_logs_dir", ".git/hooks", "lies in .git, the repository's own data"),
    ],
)
def test_the_reports_never_go_to_a_repository_file_nor_into_git(
    workspace, input_name, value, said
):
    write(workspace, "wf/ok.yml", PASSING)
    # whatever a marker there says
    write(workspace, ".calimero-workflow.json", json.dumps({"written": ["README.md"]}))
    code, printed, outputs = run(env_for(workspace, workflows="wf/ok.yml", **{input_name: value}))
    assert (code, outputs["status"]) == (2, "invalid")
    errors = [m for n, _, m in runner_commands(printed) if n == "error"]
    assert any(said in m for m in errors), errors


def _git(workspace: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(workspace), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="makes a checkout with git")
def test_a_forged_marker_cannot_make_the_reports_replace_a_file(workspace):
    write(workspace, "wf/ok.yml", PASSING)
    env = env_for(workspace, workflows="wf/ok.yml", junit_path="out/junit.xml", env="GREETING=hello")
    # an earlier run's marker, as the action writes it
    assert run(env)[0] == 0
    marker = workspace / "out" / ".calimero-workflow.json"
    listed = json.loads(marker.read_text())["written"]
    assert listed["junit.xml"]["size"] == (workspace / "out" / "junit.xml").stat().st_size
    assert len(listed["junit.xml"]["sha256"]) == 64

    # a file changed since the action wrote it is someone else's now
    (workspace / "out" / "summary.md").write_text("edited by hand\n")
    code, printed, _ = run(env)
    assert code == 2
    assert "out/summary.md is already there and changed since this action wrote it" in printed
    (workspace / "out" / "summary.md").unlink()
    assert run(env)[0] == 0

    # the repository's own files: a marker may list them, hashes and all
    _git(workspace, "init", "-q")
    _git(workspace, "add", "out/summary.md")
    code, printed, _ = run(env)
    assert code == 2
    assert "out/summary.md is tracked by git in the workspace" in printed
    _git(workspace, "rm", "-q", "--cached", "out/summary.md")
    assert run(env)[0] == 0

    # a committed marker is never the action's: what it lists is not believed
    _git(workspace, "add", "out/.calimero-workflow.json")
    code, printed, _ = run(env)
    assert code == 2
    assert "out/junit.xml is already there, and this action did not write it" in printed
    _git(workspace, "rm", "-q", "--cached", "out/.calimero-workflow.json")

    # nor is a marker of the old format, which lists bare names
    marker.write_text(json.dumps({"written": ["junit.xml", "summary.md"]}))
    code, printed, _ = run(env)
    assert code == 2 and "out/junit.xml is already there" in printed


@pytest.mark.skipif(shutil.which("git") is None, reason="makes a checkout with git")
def test_node_logs_folders_holding_a_repository_file_are_not_replaced(workspace):
    write(workspace, "wf/a.yml", "name: a\nnodes: {count: 1}\nsteps: [{type: wait, seconds: 0.01}]\n")
    env = env_for(workspace, workflows="wf/a.yml")
    assert run(env)[0] == 0
    folder = workspace / "calimero-workflow-results" / "node-logs" / "wf-a-yml"
    assert json.loads((folder / ".calimero-workflow.json").read_text())["written"]
    write(workspace, "calimero-workflow-results/node-logs/wf-a-yml/extra.txt", "mine\n")
    code, printed, _ = run(env)
    assert code == 2
    assert "node-logs/wf-a-yml/extra.txt is already there, and this action did not write it" in printed
    (folder / "extra.txt").unlink()
    _git(workspace, "init", "-q")
    _git(workspace, "add", "calimero-workflow-results/node-logs/wf-a-yml/calimero-node-1.log")
    code, printed, _ = run(env)
    assert code == 2
    assert "node-logs/wf-a-yml is tracked by git in the workspace" in printed


def test_a_fifo_where_the_action_reads_never_hangs_it(workspace):
    write(workspace, "wf/ok.yml", PASSING)
    reports = workspace / "calimero-workflow-results"
    reports.mkdir()
    os.mkfifo(reports / ".calimero-workflow.json")
    started = time.monotonic()
    code, printed, outputs = run(env_for(workspace, workflows="wf/ok.yml"))
    assert time.monotonic() - started < 30
    assert (code, outputs["status"]) == (2, "invalid")
    assert ".calimero-workflow.json is neither a file nor a folder" in printed
    (reports / ".calimero-workflow.json").unlink()
    (reports / ".calimero-workflow.json").symlink_to(workspace / "README.md")
    code, printed, outputs = run(env_for(workspace, workflows="wf/ok.yml"))
    assert (code, outputs["status"]) == (2, "invalid")
    assert ".calimero-workflow.json is a symbolic link; the action's marker never is one" in printed
    # a workflow file (or one it names) swapped for a FIFO is refused, never read
    from calimero_workflow.errors import WorkflowValidationError
    from calimero_workflow.workflow import load_workflow

    os.mkfifo(workspace / "wf" / "fifo.yml")
    with pytest.raises(WorkflowValidationError, match="not a regular file"):
        load_workflow(workspace / "wf" / "fifo.yml")


def test_workflows_whose_paths_map_alike_get_their_own_node_logs_folder(workspace):
    write(workspace, "tests/a-b.yml", "name: first\nnodes: {count: 1, prefix: one}\nsteps: [{type: wait, seconds: 0.01}]\n")
    write(workspace, "tests/a_b.yml", "name: second\nnodes: {count: 1, prefix: two}\nsteps: [{type: wait, seconds: 0.01}]\n")
    env = env_for(workspace, workflows="tests/*.yml")
    for _ in range(2):  # the same folders again on a second run
        code, printed, _ = run(env)
        assert code == 0, printed
    logs = workspace / "calimero-workflow-results" / "node-logs"
    assert sorted(p.name for p in logs.iterdir()) == [".calimero-workflow.json", "tests-a-b-yml", "tests-a-b-yml-2"]
    assert [p.name for p in (logs / "tests-a-b-yml").glob("*.log")] == ["one-1.log"]
    assert [p.name for p in (logs / "tests-a-b-yml-2").glob("*.log")] == ["two-1.log"]
    junit = ET.parse(workspace / "calimero-workflow-results" / "junit.xml").getroot()
    links = {s.get("file"): s.find("system-out").text for s in junit}
    assert "node-logs/tests-a-b-yml/one-1.log" in links["tests/a-b.yml"]
    assert "node-logs/tests-a-b-yml-2/two-1.log" in links["tests/a_b.yml"]


def test_a_secret_at_a_cut_is_never_half_shown(workspace):
    secret = "tok-" + "0123456789abcdefghij"
    steps = "".join(
        f"  - {{name: s{pad}, type: assert, non_blocking: true, "
        f"actual: '{'x' * pad}${{API_TOKEN}}', equals: other}}\n"
        for pad in range(240, 300, 3)
    )
    write(workspace, "wf/cut.yml", f"name: cut\nsteps:\n{steps}")
    code, printed, outputs = run(
        env_for(workspace, workflows="wf/cut.yml", env=f"API_TOKEN={secret}")
    )
    assert code == 1
    failed = json.loads(outputs["failed-steps"])
    assert len(failed) == 20 and all(len(f["message"]) <= 300 for f in failed)
    written = [
        outputs["failed-steps"],
        *(p.read_text() for p in (workspace / "calimero-workflow-results").rglob("*.*")),
        Path(env_for(workspace)["GITHUB_STEP_SUMMARY"]).read_text(),
        printed.replace(f"::add-mask::{secret}", ""),
    ]
    assert not [t for t in written if secret[:6] in t]


def test_only_values_that_cannot_be_secrets_stay_unmasked_and_a_warning_names_them(
    workspace,
):
    write(workspace, "wf/ok.yml", PASSING)
    settings = {"AUTH_REQUIRED": "true", "SESSION_LIMIT": "null", "RETRY_TOKEN": "3", "API_PORT_KEY": "8080"}
    secrets = {
        "API_TOKEN": "84726193051234567890",
        "DB_PASSWORD": "letmein",
        "SESSION_KEY": "Zebra",
        "KEY_MODE": "failed",  # a word of the reports' own: masked, and they stay whole
        "SESSION_STORE": "file",
    }
    text = "\n".join(f"{k}={v}" for k, v in {**settings, **secrets}.items())
    code, printed, outputs = run(env_for(workspace, workflows="wf/ok.yml", env=text))
    executed = runner_commands(printed)
    assert [m for n, _, m in executed if n == "add-mask"] == list(secrets.values())
    (warning,) = [m for n, _, m in executed if n == "warning"]
    assert "AUTH_REQUIRED, SESSION_LIMIT, RETRY_TOKEN, API_PORT_KEY: each reads as a setting" in warning
    assert "8080" not in warning and "true" not in warning.split(":")[0]

    # what the action writes stays whole: its own words and the syntax are never masked
    assert (code, outputs["status"], outputs["failed"]) == (1, "failed", "1")
    json.loads(outputs["results"]) and json.loads(outputs["failed-steps"])
    reports = workspace / "calimero-workflow-results"
    for name in ("results.json", "failed-steps.json", "report.json"):
        json.loads((reports / name).read_text())
    assert json.loads((reports / "report.json").read_text())[0][0]["status"] == "failed"
    junit = ET.parse(reports / "junit.xml").getroot()
    assert junit.find("testsuite").get("file") == "wf/ok.yml"
    written = [
        printed.replace("::add-mask::", "").split("\n", len(secrets))[-1],
        Path(env_for(workspace)["GITHUB_STEP_SUMMARY"]).read_text(),
        *(p.read_text() for p in reports.rglob("*") if p.is_file()),
    ]
    for value in ("84726193051234567890", "letmein", "Zebra"):
        assert not [t for t in written if value in t], value


def test_secrets_are_found_by_their_key_and_by_their_shape(workspace):
    write(workspace, "wf/ok.yml", PASSING)
    values = {
        "GH_PAT": "pat-value-1234",
        "DEPLOY_PAT": "pat-value-5678",
        "SLACK_WEBHOOK": "https://hooks.slack.com/services/T0001/B0001/XyZsecretpath",
        "SEED_PHRASE": "abandon ability able about above absent",
        "WALLET_SEED": "seed-value-0000",
        "APP_MNEMONIC": "mnemonic-words-here",
        "OTP_SECRET_BASE": "JBSWY3DPEHPK3PXP",
        "OTP_CODE_KEYS": "otp-value-9999",
        # not a secret-looking key: only what is shaped like a secret is masked
        "DATABASE_URL": "postgres://app:Sup3r%40Secret@db:5432/x",
        "NOTES": "pass ghp_AbCdEf0123456789AbCdEf0123456789abcd along",
        "MORE": "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
        "PATH_HINT": "/usr/local/bin",
    }
    text = "\n".join(f"{k}={v}" for k, v in values.items())
    _, printed, _ = run(env_for(workspace, workflows="wf/ok.yml", env=text))
    masks = [m for n, _, m in runner_commands(printed) if n == "add-mask"]
    assert masks == [
        *(values[k] for k in list(values)[:8]),
        "Sup3r%40Secret",
        "Sup3r@Secret",
        "ghp_AbCdEf0123456789AbCdEf0123456789abcd",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    ]


def test_an_explicit_secret_that_is_a_word_of_our_syntax_breaks_nothing(workspace):
    # a remote node's password is always masked, even "failed"
    write(
        workspace,
        "wf/remote.yml",
        """\
name: remote
remote_nodes:
  far: {url: "http://127.0.0.1:9", auth: {method: password, username: u, password: "failed"}}
steps: [{type: wait, seconds: 0.01}]
""",
    )
    code, printed, outputs = run(env_for(workspace, workflows="wf/remote.yml"))
    assert (code, outputs["status"], outputs["failed"]) == (1, "failed", "1")
    reports = workspace / "calimero-workflow-results"
    report = json.loads((reports / "report.json").read_text())
    assert report[0][0]["status"] == "failed"  # the key and our word, unmasked
    ET.parse(reports / "junit.xml")


@pytest.mark.parametrize(
    "key", ["DB_PASSPHRASE", "CREDS", "AWS_CREDS", "JWT", "SENTRY_DSN", "DB_PWD", "BEARER"]
)
def test_more_secret_looking_keys_are_masked(workspace, key):
    write(workspace, "wf/ok.yml", PASSING)
    value = "v4lue-of-" + key.lower()
    code, printed, _ = run(env_for(workspace, workflows="wf/ok.yml", env=f"{key}={value}"))
    assert ("add-mask", {}, value) in runner_commands(printed)


def test_pwd_alone_is_the_shells_folder_not_a_secret(workspace):
    write(workspace, "wf/ok.yml", PASSING)
    env = env_for(workspace, workflows="wf/ok.yml")
    env["PWD"] = "/github/workspace"
    _, printed, _ = run(env)
    assert "add-mask" not in [n for n, _, _ in runner_commands(printed)]


def test_globstar_does_not_follow_symlinked_folders(workspace):
    write(workspace, "t/ok.yml", PASSING)
    (workspace / "t" / "l1").symlink_to(".")
    (workspace / "t" / "l2").symlink_to(".")
    (workspace / "t" / "root").symlink_to("/")
    started = time.monotonic()
    found = discover_workflows(read_settings(env_for(workspace, workflows="**/*.yml")))
    assert time.monotonic() - started < 5
    assert [p.relative_to(workspace).as_posix() for p in found.files] == ["t/ok.yml"]
    # a link named on purpose is still read where it lands, once
    found = discover_workflows(read_settings(env_for(workspace, workflows="t/l1/*.yml")))
    assert [p.relative_to(workspace).as_posix() for p in found.files] == ["t/ok.yml"]


def test_the_runners_tokens_are_masked_first(workspace):
    write(workspace, "wf/ok.yml", PASSING)
    env = env_for(workspace, workflows="wf/ok.yml")
    env["ACTIONS_RUNTIME_TOKEN"] = "runtime-token-value"
    env["ACTIONS_ID_TOKEN_REQUEST_TOKEN"] = "id-token-value"
    env["ACTIONS_RUNTIME_URL"] = "http://runtime.example/"
    _, printed, _ = run(env)
    masks = [m for n, _, m in runner_commands(printed) if n == "add-mask"]
    assert masks[:2] == ["runtime-token-value", "id-token-value"]
    assert "http://runtime.example/" not in masks


def test_many_nodes_out_of_time_while_starting_fail_cleanly(workspace):
    write(workspace, "wf/many.yml", "name: many\nnodes: {count: 40}\nsteps: [{type: wait, seconds: 0.01}]\n")
    code, printed, outputs = run(
        env_for(workspace, workflows="wf/many.yml", timeout_minutes="0.0000001")
    )
    assert (code, outputs["status"]) == (1, "failed"), printed
    (failure,) = json.loads(outputs["failed-steps"])
    assert failure["step"] == "phase nodes_start"
    assert "did not finish within" in failure["message"]


# -- signals at any time --------------------------------------------------------------------


def _start_action(env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """The action's entry script, as the image starts it (``python -S``)."""
    env = {**env, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-S", str(ROOT / "docker" / "calimero-workflow-action")],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _handles(pid: int, sig: int) -> bool:
    """Whether the process has a handler of its own for ``sig``."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # it ended
        return False
    caught = int(re.search(r"SigCgt:\s*([0-9a-f]+)", status).group(1), 16)
    return bool(caught & (1 << (sig - 1)))


def _cancelled_with_everything(workspace: Path, env: dict[str, str], proc) -> None:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    outputs = read_env_file(Path(env["GITHUB_OUTPUT"]))
    assert outputs["status"] == "cancelled", outputs
    assert {"total", "passed", "failed", "skipped", "results", "failed-steps"} <= set(outputs)
    reports = workspace / "calimero-workflow-results"
    ET.parse(reports / "junit.xml")
    for name in ("results.json", "failed-steps.json", "report.json"):
        json.loads((reports / name).read_text())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_engine_loads_ends_cancelled_with_every_output(workspace, sig):
    write(workspace, "wf/ok.yml", PASSING)
    env = env_for(workspace, workflows="wf/ok.yml")
    proc = _start_action(env, workspace)
    deadline = time.monotonic() + 30
    while not _handles(proc.pid, signal.SIGTERM):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.001)
    proc.send_signal(sig)  # the engine is still being imported
    _cancelled_with_everything(workspace, env, proc)
    report = json.loads((workspace / "calimero-workflow-results" / "report.json").read_text())
    assert report[0][0]["status"] == "skipped"  # nothing ran


def test_a_signal_while_the_reports_are_written_ends_cancelled_with_every_output(
    workspace,
):
    steps = "".join(
        f"  - {{name: a{i}, type: assert, non_blocking: true, actual: '{'v' * 200}', equals: w}}\n"
        for i in range(20)
    )
    for i in range(3):
        write(workspace, f"wf/w{i}.yml", f"name: w{i}\nsteps:\n{steps}")
    env = env_for(workspace, workflows="wf/*.yml", env="API_TOKEN=abcdefghijklmnop")
    # the step summary is a pipe nobody reads yet: the reports wait there
    summary = Path(env["GITHUB_STEP_SUMMARY"])
    os.mkfifo(summary)
    proc = _start_action(env, workspace)
    groups = 0
    for line in proc.stdout:
        groups += line.startswith("::endgroup::")
        if groups == 3:  # the last workflow ran: the reports are next
            break
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    with summary.open() as fh:  # let the reports go on
        text = fh.read()
    assert text.startswith("## ")
    _cancelled_with_everything(workspace, env, proc)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_a_sigint_as_python_starts_ends_cancelled_with_every_output(workspace):
    write(workspace, "wf/ok.yml", PASSING)
    env = env_for(workspace, workflows="wf/ok.yml")
    for delay in (0.003, 0.005, 0.008, 0.012, 0.02, 0.04):
        for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"):
            Path(env[name]).unlink(missing_ok=True)
        proc = _start_action(env, workspace)
        # once Python handles SIGINT at all, with its own handler (which raises
        # KeyboardInterrupt) until the entry script installs ours; the first
        # millisecond of that is Python's own start, before any code of ours
        deadline = time.monotonic() + 30
        while not _handles(proc.pid, signal.SIGINT):
            assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _cancelled_with_everything(workspace, env, proc)


def test_a_hung_finish_ends_cancelled_when_signalled_again(workspace):
    write(workspace, "wf/ok.yml", PASSING)
    env = env_for(workspace, workflows="wf/ok.yml")
    os.mkfifo(env["GITHUB_STEP_SUMMARY"])  # nobody reads it: the reports hang there
    proc = _start_action(env, workspace)
    for line in proc.stdout:
        if line.startswith("::endgroup::"):
            break
    time.sleep(0.5)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):  # the third stops it
        assert proc.poll() is None
        proc.send_signal(sig)
        time.sleep(0.2)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert "stopped before the action finished" in err and "Traceback" not in err
    assert read_env_file(Path(env["GITHUB_OUTPUT"])) == {"status": "cancelled"}


def test_after_a_second_signal_the_action_has_a_bounded_time(tmp_path):
    script = (
        "import os, sys\n"
        "from calimero_workflow.interrupts import Interrupts\n"
        "interrupts = Interrupts(grace=0.5).install()\n"
        "interrupts.last_word = lambda: open(sys.argv[1], 'w').write('cancelled')\n"
        "os.mkfifo(sys.argv[2])\n"
        "print('ready', flush=True)\n"
        "open(sys.argv[2]).read()  # hangs: nobody writes\n"
    )
    said, fifo = tmp_path / "said", tmp_path / "fifo"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(said), str(fifo)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert proc.poll() is None  # the first signal only asks
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and 0.3 < time.monotonic() - started < 10, err
    assert said.read_text() == "cancelled"



def test_giving_up_waits_for_the_outputs_being_written(tmp_path):
    # a handler Python runs inside the block (its signal came just before)
    script = (
        "import os, signal, sys\n"
        "from calimero_workflow.interrupts import Interrupts\n"
        "interrupts = Interrupts(2).install()  # two signals came already\n"
        "interrupts.last_word = lambda: open(sys.argv[1], 'a').write('last word\\n')\n"
        "with interrupts.held():\n"
        "    interrupts._handle(signal.SIGTERM, None)  # the third: stop at once\n"
        "    open(sys.argv[1], 'a').write('every output\\n')\n"
        "    interrupts.finished(0)\n"
        "print('not reached')\n"
    )
    written = tmp_path / "outputs"
    done = subprocess.run(
        [sys.executable, "-c", script, str(written)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr  # the code of the status written
    assert written.read_text() == "every output\n"
    assert "not reached" not in done.stdout
