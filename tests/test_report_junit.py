"""JUnit XML: suites, testcases, positions, failures, logs, properties, retries."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from calimero_workflow.errors import Location
from calimero_workflow.report.junit import build_junit, junit_xml, write_junit
from calimero_workflow.results import ErrorInfo, PhaseRecord, RunResult, Status
from test_report_summary import (
    CHECK_STATEMENT_LINE,
    MISSING_STEP_LINE,
    run_of,
    sample_run,
    step,
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="module")
def failed_run(workspace: Path) -> RunResult:
    return sample_run(workspace)


def cases(suite: ET.Element) -> dict[str, ET.Element]:
    return {case.get("name"): case for case in suite.iter("testcase")}


def test_a_real_run_as_junit(failed_run, workspace, tmp_path):
    path = write_junit(tmp_path / "out" / "junit.xml", [[failed_run]], root=workspace)
    doc = ET.parse(path).getroot()
    assert doc.tag == "testsuites"
    [suite] = doc.findall("testsuite")
    assert suite.get("name") == "report sample"
    assert suite.get("file") == "wf/sample.yml"
    assert (
        suite.get("tests"),
        suite.get("failures"),
        suite.get("errors"),
        suite.get("skipped"),
    ) == (
        "8",
        "2",
        "0",
        "1",
    )
    assert doc.get("tests") == "8" and doc.get("failures") == "2"
    by_name = cases(suite)
    # a testcase per step; nested steps are named by their path
    assert list(by_name) == [
        "install",
        "ns",
        "ctx",
        "loop[1]/set",
        "loop[2]/set",
        "check",
        "missing",
        "after",
    ]
    for case in by_name.values():
        assert case.get("file") == "wf/sample.yml"
        assert case.get("classname") == "report sample"
        float(case.get("time"))
    assert by_name["install"].get("line") == "4"
    assert by_name["missing"].get("line") == str(MISSING_STEP_LINE)
    # the failure says what was expected and what came, and where
    check = by_name["check"].find("failure")
    assert check.get("type") == "assertion"
    assert (
        check.get("message")
        == "assertion failed: equal(${results.loop.iteration}, 3) (expected 3, actual 2)"
    )
    assert f"wf/sample.yml:{CHECK_STATEMENT_LINE}:9:" in check.text
    assert "expected: 3\nactual:   2" in check.text
    # step logs and the failing node's logs in system-out
    assert (
        "FAIL equal(${results.loop.iteration}, 3)"
        in by_name["check"].find("system-out").text
    )
    missing_out = by_name["missing"].find("system-out").text
    assert (
        "last log lines of node-1:" in missing_out and "no_such_method" in missing_out
    )
    assert by_name["after"].find("skipped") is not None
    assert by_name["install"].find("system-out") is None
    # run facts as properties; node log files at suite level
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["backend"] == "embedded" and props["run_id"] == failed_run.run_id
    assert props["status"] == "failed"
    assert "node-1: " in suite.find("system-out").text


def test_image_and_extra_properties_are_recorded():
    run = run_of(
        step("a"), image={"ref": "calimero-workflow/node:dev", "digest": "sha256:abc"}
    )
    suite = build_junit([[run]], properties={"action.run": "7"}).find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["image.ref"] == "calimero-workflow/node:dev"
    assert props["image.digest"] == "sha256:abc"
    assert props["action.run"] == "7"


def test_failed_phase_is_an_error_testcase_at_its_line():
    run = run_of(step("a", Status.SKIPPED), status=Status.FAILED)
    where = Location(Path("/ws/wf.yml"), 7, 3)
    run.phases = [
        PhaseRecord(
            "load",
            Status.FAILED,
            error=ErrorInfo(
                "unknown step type 'cal'",
                kind="invalid",
                location=where,
                hint="did you mean 'call'?",
            ),
        )
    ]
    suite = build_junit([[run]], root=Path("/ws")).find("testsuite")
    case = cases(suite)["phase load"]
    assert case.get("line") == "7" and case.get("file") == "wf.yml"
    error = case.find("error")
    assert error.get("type") == "invalid"
    assert (
        "wf.yml:7:3: unknown step type 'cal'" in error.text
        and "hint: did you mean 'call'?" in error.text
    )
    assert suite.get("errors") == "1" and suite.get("skipped") == "1"


def test_flaky_workflow_uses_surefire_flaky_elements():
    first = run_of(
        step("a", Status.FAILED, error=ErrorInfo("timeout", kind="sync_timeout")),
        status=Status.FAILED,
    )
    first.phases = [
        PhaseRecord("nodes_start", Status.FAILED, error=ErrorInfo("node-2 exited"))
    ]
    second = run_of(step("a"))
    second.run_id = "run-2"
    second.phases = [PhaseRecord("nodes_start", Status.PASSED)]
    suite = build_junit([[first, second]]).find("testsuite")
    by_name = cases(suite)
    flaky = by_name["a"].find("flakyFailure")
    assert (
        flaky.get("message") == "timeout" and flaky.find("stackTrace").text == "timeout"
    )
    assert by_name["a"].find("failure") is None
    # a phase that failed before and went well this time is flaky too
    assert by_name["phase nodes_start"].find("flakyError") is not None
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert (
        props["attempts"] == "2"
        and props["flaky"] == "true"
        and props["earlier_run_ids"] == "run-wf"
    )


def test_failing_again_records_each_earlier_attempt_as_a_rerun_failure():
    attempts = [
        run_of(
            step("a", Status.FAILED, error=ErrorInfo(f"try {i}")), status=Status.FAILED
        )
        for i in (1, 2, 3)
    ]
    case = cases(build_junit([attempts]).find("testsuite"))["a"]
    assert [(c.tag, c.get("message")) for c in case] == [
        ("failure", "try 3"),
        ("rerunFailure", "try 1"),
        ("rerunFailure", "try 2"),
    ]


def test_text_that_xml_cannot_hold_is_made_visible():
    nasty = "nul\x00 esc\x1b[0m surrogate\udcff bom\ufffe & <tag>"
    run = run_of(
        step("a", Status.FAILED, error=ErrorInfo(nasty), logs=[nasty]),
        name=nasty,
        status=Status.FAILED,
    )
    data = junit_xml([[run]])
    doc = ET.fromstring(data)  # parses: nothing illegal left
    case = doc.find("testsuite/testcase")
    assert (
        case.find("failure").get("message")
        == "nul\\x00 esc\\x1b[0m surrogate\\udcff bom\\ufffe & <tag>"
    )
    assert doc.find("testsuite").get("name").startswith("nul\\x00")


def test_no_workflows_is_an_empty_but_valid_report():
    doc = ET.fromstring(junit_xml([]))
    assert doc.get("tests") == "0" and list(doc) == []
