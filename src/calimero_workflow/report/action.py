"""Stage 5 of the action: everything a run leaves, made from its records.

:func:`write_reports` copies the node logs into the workspace, writes the
JUnit XML, the markdown summary and the JSON files beside it, appends the
step summary, annotates the failures and sets the outputs. Everything is
made of the run's records redacted first (:meth:`Redactor.redact_data`):
no file is redacted as text afterwards, which could change its syntax, and
no text is cut before it is redacted.

Every report counts workflows by :func:`~.summary.workflow_outcome` (passed,
flaky, failed, cancelled, skipped), so the outputs, the step summary, the
JUnit file and the closing log line agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK
from ..interrupts import Interrupts
from ..results import ErrorInfo, RunResult
from ..workspace import Workspace
from .github import Annotation, GitHub
from .junit import junit_xml
from .summary import (
    DEFAULT_BUDGET,
    build_summary,
    display_path,
    error_details,
    failures_of,
    is_flaky,
    workflow_outcome,
)

if TYPE_CHECKING:
    from ..action import ActionSettings

__all__ = [
    "STATUS_CANCELLED",
    "STATUS_FAILED",
    "STATUS_INVALID",
    "STATUS_PASSED",
    "ActionRun",
    "count_workflows",
    "exit_code",
    "node_log_folders",
    "write_reports",
]

STATUS_PASSED = "passed"
STATUS_FAILED = "failed"
STATUS_INVALID = "invalid"
STATUS_CANCELLED = "cancelled"

#: Below this many bytes of room a step summary is not worth writing.
_MIN_SUMMARY = 2000
#: Folder names in ``node-logs-dir`` are cut to this many characters.
_FOLDER_CHARS = 80


@dataclass
class ActionRun:
    """Everything the action ran, for the reports."""

    #: Per workflow, its attempts in order; the last one is reported.
    workflows: list[list[RunResult]] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    #: Per attempt, where the engine wrote its node logs (scratch space of
    #: ours) and the folder of the workspace they are copied to.
    node_logs: list[tuple[Path, Path]] = field(default_factory=list)
    cancelled: bool = False
    invalid: bool = False
    #: The run stopped on an error of the action itself (a bug).
    crashed: str | None = None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:_FOLDER_CHARS] or "workflow"


def node_log_folders(files: Sequence[Path], workspace: Path) -> dict[Path, str]:
    """Per workflow file, its folder's name in ``node-logs-dir``: the file's
    path as a slug (``tests/a-b.yml`` → ``tests-a-b-yml``), cut to 80
    characters. Files whose slugs collide (``tests/a_b.yml``) get ``-2``,
    ``-3``… in the order of ``files``, so the names are the same for the
    whole run and no two files share a folder."""
    natural = {file: _slug(display_path(file, workspace)) for file in files}
    # a suffixed name never takes another file's own name
    reserved = set(natural.values())
    folders: dict[Path, str] = {}
    for file, own in natural.items():
        name, number = own, 1
        while name in folders.values() or (name != own and name in reserved):
            number += 1
            suffix = f"-{number}"
            name = own[: _FOLDER_CHARS - len(suffix)] + suffix
        folders[file] = name
    return folders


def count_workflows(workflows: Sequence[Sequence[RunResult]]) -> dict[str, int]:
    """The outputs' counts, by :func:`workflow_outcome` (flaky ones are passed too)."""
    outcomes = [workflow_outcome(attempts) for attempts in workflows]
    return {
        "total": len(outcomes),
        "passed": outcomes.count("passed") + outcomes.count("flaky"),
        "failed": outcomes.count("failed"),
        "cancelled": outcomes.count("cancelled"),
        "skipped": outcomes.count("skipped"),
        "flaky": outcomes.count("flaky"),
    }


def _status(run: ActionRun) -> str:
    if run.cancelled:
        return STATUS_CANCELLED
    if run.invalid:
        return STATUS_INVALID
    if not run.crashed and all(
        workflow_outcome(attempts) in ("passed", "flaky") for attempts in run.workflows
    ):
        return STATUS_PASSED
    return STATUS_FAILED


def exit_code(status: str, settings: ActionSettings | None) -> int:
    """The process's exit code for ``status`` (``fail-on-failure`` applied)."""
    if status == STATUS_CANCELLED:
        return EXIT_INTERRUPTED
    if status == STATUS_INVALID:
        return EXIT_INVALID
    if status == STATUS_FAILED:
        return EXIT_FAILED if settings is None or settings.fail_on_failure else EXIT_OK
    return EXIT_OK


# -- annotations and failed steps -------------------------------------------------------


def _annotation_message(error: ErrorInfo) -> str:
    return "\n".join([error.message, *error_details(error)])


def _annotate(
    gh: GitHub, workflows: Sequence[Sequence[RunResult]], workspace: Path
) -> None:
    for attempts in workflows:
        final = attempts[-1]
        for failure in failures_of(final):
            location = failure.location
            gh.annotate(
                Annotation(
                    "error",
                    _annotation_message(failure.error),
                    file=display_path(location.file, workspace)
                    if location and location.file
                    else None,
                    line=location.line if location else None,
                    col=location.col if location else None,
                    title=f"{final.workflow_name}: {failure.what}",
                )
            )
        if is_flaky(attempts):
            earlier = "; ".join(f.what for a in attempts[:-1] for f in failures_of(a))
            gh.annotate(
                Annotation(
                    "warning",
                    f"passed on attempt {len(attempts)} of {len(attempts)}; earlier attempts failed at: {earlier}",
                    file=display_path(final.workflow_file, workspace)
                    if final.workflow_file
                    else None,
                    line=1,
                    title=f"{final.workflow_name}: flaky",
                )
            )
    gh.flush_annotations()


def _failed_steps(
    gh: GitHub, workflows: Sequence[Sequence[RunResult]], workspace: Path
) -> list[dict[str, Any]]:
    rows = []
    for attempts in workflows:
        final = attempts[-1]
        for failure in failures_of(final):
            location = failure.location
            rows.append(
                {
                    "workflow": final.workflow_name,
                    "file": display_path(final.workflow_file, workspace)
                    if final.workflow_file
                    else None,
                    "step": failure.what,
                    "line": location.line if location else None,
                    # redacted, then cut: never half a secret
                    "message": gh.redactor.cut(failure.error.message, 300, note="…"),
                }
            )
    return rows


# -- files ------------------------------------------------------------------------------


def _json_bytes(data: Any, *, indent: int | None = 2) -> bytes:
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=str)
    return (text + "\n").encode("utf-8")


def _results_key(result: RunResult, workspace: Path) -> str:
    if result.workflow_file:
        return display_path(result.workflow_file, workspace)
    return result.workflow_name


def _log_redactor(gh: GitHub) -> Callable[[Path, bytes], bytes]:
    """Node logs and states as they go into the workspace: redacted, JSON as data."""

    def redact(source: Path, data: bytes) -> bytes:
        if source.suffix == ".json":
            try:
                parsed = json.loads(data)
            except (ValueError, RecursionError):  # redacted as text instead
                pass
            else:
                return _json_bytes(gh.redactor.redact_data(parsed))
        return gh.redactor.redact_bytes(data)

    return redact


def _relocate(value: Any, moves: Mapping[str, str]) -> Any:
    """``value`` with paths under a scratch folder pointing at their copies."""
    if isinstance(value, str):
        for old, new in moves.items():
            if value == old or value.startswith(old + os.sep):
                return new + value[len(old) :]
        return value
    if isinstance(value, dict):
        return {k: _relocate(v, moves) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocate(v, moves) for v in value]
    return value


def _copy_node_logs(
    gh: GitHub, run: ActionRun, files: Workspace, logs_dir: Path, trouble: list[str]
) -> dict[str, str]:
    """Copy each attempt's node logs into the workspace; the moves made.

    Each folder on the way from ``logs_dir`` lists the folder below it as
    the action's in its marker, so a later run may write there again.
    """
    moves: dict[str, str] = {}
    redact = _log_redactor(gh)
    for scratch, dest in run.node_logs:
        if not scratch.is_dir():
            continue
        try:
            written = files.copy_tree(scratch, dest, redact)
            for below in [dest, *dest.parents]:
                if below == logs_dir or logs_dir not in below.parents:
                    break
                files.record(below.parent, {below.name: None})
        except OSError as exc:
            trouble.append(f"node logs were not copied to {display_path(dest, files.root)}: {exc}")
            continue
        moves[str(scratch)] = str(dest)
        trouble += [
            f"{display_path(w.path, files.root)} was a symbolic link; it was replaced by the file"
            for w in written
            if w.replaced_link
        ]
    return moves


def _write_files(
    files: Workspace, contents: Sequence[tuple[Path, bytes]], trouble: list[str]
) -> dict[Path, dict[str, bytes | None]]:
    """Write each report file; per folder, what went into it."""
    written: dict[Path, dict[str, bytes | None]] = {}
    for path, data in contents:
        rel = display_path(path, files.root)
        try:
            done = files.write(path, data)
        except OSError as exc:
            trouble.append(f"{rel} was not written: {exc}")
            continue
        written.setdefault(path.parent, {})[path.name] = data
        if done.replaced_link:
            trouble.append(f"{rel} was a symbolic link; it was replaced by the report")
    return written


# -- the stage --------------------------------------------------------------------------


def write_reports(
    settings: ActionSettings,
    gh: GitHub,
    run: ActionRun,
    files: Workspace,
    interrupts: Interrupts,
) -> str:
    """Write every report and output; return the status."""
    workspace = settings.workspace
    trouble: list[str] = []
    moves = _copy_node_logs(gh, run, files, settings.node_logs_dir, trouble)
    workflows = gh.redactor.redact_data(run.workflows)
    for attempts in workflows:
        for result in attempts:
            result.node_log_files = _relocate(result.node_log_files, moves)
            for phase in result.phases:
                phase.data = _relocate(phase.data, moves)

    properties = {"action.backend": settings.backend}
    if settings.image:
        properties["action.image"] = settings.image
    properties = gh.redactor.redact_data(properties)
    cancelled = run.cancelled or interrupts.cancelled
    title = "calimero-workflow" + (" (cancelled)" if cancelled else "")
    summary_text = build_summary(
        workflows, root=workspace, budget=DEFAULT_BUDGET, title=title
    )
    results = {_results_key(a[-1], workspace): a[-1].workflow_results for a in workflows}
    failed_steps = _failed_steps(gh, workflows, workspace)
    junit_path, summary_path, results_path, failed_path, report_path = (
        settings.report_files
    )
    contents = [
        (junit_path, junit_xml(workflows, root=workspace, properties=properties)),
        (summary_path, summary_text.encode("utf-8")),
        (results_path, _json_bytes(results)),
        (failed_path, _json_bytes(failed_steps)),
        (report_path, _json_bytes([[r.to_dict() for r in a] for a in workflows])),
    ]
    # what we wrote, so that a later run of the action may replace it
    for folder, written in _write_files(files, contents, trouble).items():
        with contextlib.suppress(OSError):  # the folder is unusable: said above
            files.record(folder, written)

    if settings.summary:
        _append_summary(gh, workflows, workspace, title, summary_text, summary_path)
    for problem in trouble:
        level = "error" if "not written" in problem or "not copied" in problem else "warning"
        gh.annotate(Annotation(level, problem, title="calimero-workflow: reports"))
    if run.crashed:
        gh.annotate(
            Annotation("error", run.crashed, title="calimero-workflow: internal error")
        )
    if settings.annotations:
        _annotate(gh, workflows, workspace)
    else:
        gh.flush_annotations()

    # the status is decided and written as one step: a signal waits for it
    with interrupts.held():
        run.cancelled = run.cancelled or interrupts.cancelled
        status = _status(run)
        if status == STATUS_PASSED and any("not written" in t for t in trouble):
            status = STATUS_FAILED
        _write_outputs(settings, gh, status, workflows, results, failed_steps)
        interrupts.finished(exit_code(status, settings))
    return status


def _append_summary(
    gh: GitHub,
    workflows: Sequence[Sequence[RunResult]],
    workspace: Path,
    title: str,
    text: str,
    summary_path: Path,
) -> None:
    room = gh.summary_room()
    if len(text.encode("utf-8")) > room:
        # other tools filled this step's summary first: fit into what is left
        text = (
            build_summary(workflows, root=workspace, budget=room, title=title)
            if room >= _MIN_SUMMARY
            else ""
        )
    if text:
        gh.append_summary(text, redact=False)
    else:
        gh.echo(
            f"the step summary has only {room} bytes left; the summary is in {display_path(summary_path, workspace)}"
        )


def _write_outputs(
    settings: ActionSettings,
    gh: GitHub,
    status: str,
    workflows: Sequence[Sequence[RunResult]],
    results: Any,
    failed_steps: list[dict[str, Any]],
) -> None:
    """The step's outputs: our own words and counts, and JSON of redacted records
    (so none is redacted as text, which could break it)."""
    workspace = settings.workspace
    junit_path, summary_path, results_path, failed_path, _ = settings.report_files

    def rel(path: Path) -> str:
        return display_path(path, workspace)

    gh.set_output("status", status, redact=False)
    for name, value in count_workflows(workflows).items():
        gh.set_output(name, str(value), redact=False)
    gh.set_output(
        "results",
        json.dumps(results, ensure_ascii=False, default=str),
        is_json=True,
        full_value=rel(results_path),
        redact=False,
    )
    gh.set_output(
        "failed-steps",
        json.dumps(failed_steps, ensure_ascii=False, separators=(",", ":")),
        is_json=True,
        full_value=rel(failed_path),
        redact=False,
    )
    gh.set_output("junit-path", rel(junit_path), redact=False)
    gh.set_output("summary-path", rel(summary_path), redact=False)
