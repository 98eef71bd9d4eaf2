"""JUnit XML for test-report tools (mikepenz, dorny, EnricoMi, Jenkins...).

There is no formal schema; this follows the common ground the reference
notes describe: one ``<testsuite>`` per workflow file with ``file``, one
``<testcase>`` per step (nested steps named by their path), ``file`` and
``line`` on each testcase pointing at the step's YAML line, run facts as
``<properties>``, and logs in ``<system-out>``.

A failed step is a ``<failure>`` (the test's verdict); a failed phase (nodes
did not start, the file did not load) is an ``<error>`` (nothing could be
tested). Retried workflows use Surefire's convention, which the reporting
tools understand: in the last attempt's testcase, each earlier failure of the
same step is a ``<flakyFailure>`` when the step passed in the end, or a
``<rerunFailure>`` when it failed again.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..confined import replace_file
from ..results import RunResult, Status, StepRecord
from .console import sanitize
from .summary import (
    Failure,
    display_path,
    error_details,
    failures_of,
    format_value,
    is_flaky,
    reported_steps,
    workflow_outcome,
)

__all__ = ["build_junit", "junit_xml", "write_junit"]

#: Message attributes are shown on one line by most tools; the body has it all.
_MESSAGE_LIMIT = 1000

# Characters XML 1.0 cannot hold even as references: lone surrogates (from
# undecodable bytes) and U+FFFE/U+FFFF. sanitize() takes care of C0/C1 controls.
_NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")


def _text(value: str) -> str:
    return _NOT_XML.sub(lambda m: f"\\u{ord(m.group(0)):04x}", sanitize(value))


def _one_line(value: str, limit: int = _MESSAGE_LIMIT) -> str:
    flat = " ".join(_text(value).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _seconds(value: float) -> str:
    return f"{max(value, 0.0):.3f}"


@dataclass
class _Case:
    """One testcase being built; ``element`` is added to the suite at the end."""

    key: str
    element: ET.Element
    outcome: str  # passed, failure, error, skipped


def _failure_text(failure: Failure, root: Path | None) -> str:
    error = failure.error
    lines = []
    if failure.location is not None:
        where = display_path(failure.location.file, root)
        lines.append(
            f"{where}:{failure.location.line}:{failure.location.col}: {error.message}"
        )
    else:
        lines.append(error.message)
    return _text("\n".join(lines + error_details(error)))


def _failure_message(failure: Failure) -> str:
    error = failure.error
    message = error.message
    if error.expected is not None or error.actual is not None:
        message += f" (expected {format_value(error.expected)}, actual {format_value(error.actual)})"
    return _one_line(message)


def _logs_text(failure: Failure) -> str:
    parts = []
    if failure.step is not None and failure.step.logs:
        parts.append("step logs:\n" + "\n".join(failure.step.logs))
    for node, text in (failure.node_logs or {}).items():
        parts.append(f"last log lines of {node}:\n{text.rstrip()}")
    return _text("\n\n".join(parts))


def _verdict(tag: str, failure: Failure, root: Path | None) -> ET.Element:
    """``<failure>``/``<error>`` and their Surefire rerun/flaky variants."""
    element = ET.Element(
        tag, message=_failure_message(failure), type=_text(failure.error.kind)
    )
    if tag in ("failure", "error"):
        element.text = _failure_text(failure, root)
    else:
        # Surefire puts the detail of a rerun into child elements
        ET.SubElement(element, "stackTrace").text = _failure_text(failure, root)
        logs = _logs_text(failure)
        if logs:
            ET.SubElement(element, "system-out").text = logs
    return element


def _case_element(
    name: str, classname: str, seconds: float, file: str | None, line: int | None
) -> ET.Element:
    attrs = {
        "name": _text(name),
        "classname": _text(classname),
        "time": _seconds(seconds),
    }
    if file is not None:  # none for a pattern that matched no file
        attrs["file"] = _text(file)
    if line:
        attrs["line"] = str(line)
    return ET.Element("testcase", attrs)


def _file_of(run: RunResult, root: Path | None) -> str | None:
    return display_path(run.workflow_file, root) if run.workflow_file else None


def _skipped_message(run: RunResult, step: StepRecord) -> str:
    """Why a step did not run (or did not finish)."""
    if step.error is not None and step.error.kind == "cancelled":
        return _one_line(f"cancelled: {step.error.message}")
    if run.interrupted:
        return "not run: the run was interrupted"
    return "not run: an earlier step or phase failed"


def _cases_of(run: RunResult, root: Path | None) -> list[_Case]:
    """Testcases of one attempt: failed phases, then every step (leaves)."""
    file = _file_of(run, root)
    cases: list[_Case] = []
    failures = failures_of(run)
    by_step = {id(f.step): f for f in failures if f.step is not None}
    for failure in failures:
        if failure.step is not None:
            continue
        line = failure.location.line if failure.location is not None else None
        element = _case_element(
            failure.what, run.workflow_name, failure.duration_s, file, line
        )
        element.append(_verdict("error", failure, root))
        logs = _logs_text(failure)
        if logs:
            ET.SubElement(element, "system-out").text = logs
        cases.append(_Case(failure.what, element, "error"))
    for step in reported_steps(run):
        line = step.location.line if step.location is not None else None
        element = _case_element(
            step.path, run.workflow_name, step.duration_s, file, line
        )
        outcome = "passed"
        if step.status is Status.SKIPPED:
            outcome = "skipped"
            ET.SubElement(element, "skipped", message=_skipped_message(run, step))
        elif step.status is Status.FAILED:
            outcome = "failure"
            failure = by_step[id(step)]
            element.append(_verdict("failure", failure, root))
            logs = _logs_text(failure)
            if logs:
                ET.SubElement(element, "system-out").text = logs
        cases.append(_Case(step.path, element, outcome))
    if not cases and run.status is Status.SKIPPED:
        # never run (the action was cancelled first): say so in a testcase,
        # which is what report tools count
        for phase in run.phases:
            if phase.status is Status.SKIPPED:
                element = _case_element(
                    f"phase {phase.name}", run.workflow_name, 0.0, file, None
                )
                message = _one_line(phase.detail or "not run")
                ET.SubElement(element, "skipped", message=message)
                cases.append(_Case(f"phase {phase.name}", element, "skipped"))
    return cases


def _add_reruns(
    cases: list[_Case], attempts: Sequence[RunResult], root: Path | None
) -> list[_Case]:
    """Record the failures of earlier attempts on the last attempt's testcases."""
    final = attempts[-1]
    by_key = {case.key: case for case in cases}
    extra: list[_Case] = []
    for attempt in attempts[:-1]:
        for failure in failures_of(attempt):
            case = by_key.get(failure.what)
            if case is None:
                # failed before, absent now: a phase that went well this time
                # (or was not reached); keep the earlier failure visible
                file = _file_of(final, root)
                line = failure.location.line if failure.location is not None else None
                element = _case_element(
                    failure.what, final.workflow_name, 0.0, file, line
                )
                phase_ok = any(
                    f"phase {p.name}" == failure.what and p.status is Status.PASSED
                    for p in final.phases
                )
                outcome = "passed" if phase_ok else "skipped"
                if not phase_ok:
                    ET.SubElement(
                        element, "skipped", message="not reached in the last attempt"
                    )
                case = _Case(failure.what, element, outcome)
                by_key[failure.what] = case
                extra.append(case)
            base = "error" if failure.step is None else "failure"
            prefix = "flaky" if case.outcome == "passed" else "rerun"
            tag = prefix + base.capitalize()
            # as Surefire does: the verdict, then the reruns in order, then output
            position = len([c for c in case.element if c.tag != "system-out"])
            case.element.insert(position, _verdict(tag, failure, root))
    return cases + extra


def _suite(
    attempts: Sequence[RunResult], root: Path | None, properties: Mapping[str, str]
) -> ET.Element:
    final = attempts[-1]
    outcome = workflow_outcome(attempts)
    cases = _cases_of(final, root)
    if len(attempts) > 1:
        cases = _add_reruns(cases, attempts, root)
    outcomes = [c.outcome for c in cases]
    suite = ET.Element(
        "testsuite",
        {
            "name": _text(final.workflow_name),
            "tests": str(len(cases)),
            "failures": str(outcomes.count("failure")),
            "errors": str(outcomes.count("error")),
            "skipped": str(outcomes.count("skipped")),
            "time": _seconds(final.duration_s),
        },
    )
    if final.started_at:  # a run that never began has no start to tell
        started = dt.datetime.fromtimestamp(final.started_at, tz=dt.UTC)
        suite.set("timestamp", started.isoformat(timespec="seconds"))
    if final.workflow_file:
        suite.set("file", _text(_file_of(final, root) or ""))
    props = ET.SubElement(suite, "properties")
    facts = {
        "backend": final.backend,
        "run_id": final.run_id,
        # the same word every report counts by (flaky ones are passed)
        "status": outcome if outcome != "flaky" else "passed",
        **{f"image.{k}": str(v) for k, v in final.image.items() if v is not None},
        **properties,
    }
    if len(attempts) > 1:
        facts["attempts"] = str(len(attempts))
        facts["flaky"] = "true" if is_flaky(attempts) else "false"
        facts["earlier_run_ids"] = ",".join(a.run_id for a in attempts[:-1])
    for name, value in facts.items():
        ET.SubElement(props, "property", name=_text(name), value=_text(str(value)))
    for case in cases:
        suite.append(case.element)
    if final.node_log_files:
        out = ET.SubElement(suite, "system-out")
        out.text = _text(
            "node logs:\n"
            + "\n".join(
                f"{node}: {display_path(path, root)}"
                for node, path in final.node_log_files.items()
            )
        )
    return suite


def build_junit(
    workflows: Sequence[Sequence[RunResult]],
    *,
    root: Path | None = None,
    name: str = "calimero-workflow",
    properties: Mapping[str, str] | None = None,
) -> ET.Element:
    """The ``<testsuites>`` element for a run of several workflows.

    Args:
        workflows: Per workflow, its attempts in order; the last one counts.
        root: The workspace; ``file`` attributes are relative to it.
        name: The ``name`` of ``<testsuites>``.
        properties: Extra properties recorded on every suite.
    """
    root_element = ET.Element("testsuites", name=_text(name))
    totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    seconds = 0.0
    for attempts in workflows:
        suite = _suite(attempts, root, properties or {})
        root_element.append(suite)
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
        seconds += attempts[-1].duration_s
    for key, value in totals.items():
        root_element.set(key, str(value))
    root_element.set("time", _seconds(seconds))
    return root_element


def junit_xml(
    workflows: Sequence[Sequence[RunResult]],
    *,
    root: Path | None = None,
    name: str = "calimero-workflow",
    properties: Mapping[str, str] | None = None,
) -> bytes:
    """:func:`build_junit` serialised as indented UTF-8 XML with a declaration."""
    element = build_junit(workflows, root=root, name=name, properties=properties)
    ET.indent(element)
    return ET.tostring(element, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(
    path: Path,
    workflows: Sequence[Sequence[RunResult]],
    *,
    root: Path | None = None,
    name: str = "calimero-workflow",
    properties: Mapping[str, str] | None = None,
) -> Path:
    """Write the JUnit XML to ``path`` (atomically) and return ``path``."""
    replace_file(path, junit_xml(workflows, root=root, name=name, properties=properties))
    return path
