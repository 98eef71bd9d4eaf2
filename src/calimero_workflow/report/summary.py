"""The markdown step summary, built within a byte budget.

GitHub drops a step summary over 1 MiB whole, so the summary is assembled
from blocks with priorities: status lines and failure messages first, then
the step tables, failing node logs, passing steps and captured results.
Blocks that do not fit are cut (logs keep their last lines) or left out,
and a closing note says what was left out. Everything that came from a node,
an app or a YAML file is HTML-escaped, so it cannot add markup or break out
of a ``<pre>`` block.

The helpers :class:`Failure`, :func:`failures_of` and :func:`display_path`
are shared with the JUnit writer and the action's annotations.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import Location
from ..results import ErrorInfo, RunResult, Status, StepRecord
from .console import sanitize

__all__ = [
    "DEFAULT_BUDGET",
    "Failure",
    "Outcome",
    "RETRY_PHASE",
    "build_summary",
    "display_path",
    "error_details",
    "failures_of",
    "format_duration",
    "format_value",
    "is_flaky",
    "reported_steps",
    "workflow_outcome",
]

#: Bytes a summary may take: GitHub's 1 MiB limit, less a margin for the
#: summaries other tools write in the same step.
DEFAULT_BUDGET = 1024 * 1024 - 16 * 1024

#: The closing note must always fit, so this much is held back for it.
_NOTE_RESERVE = 600
#: A cut block keeps at least this much of its body, or is left out.
_MIN_BODY = 160

#: The phase an attempt is given when the retry after it was cut short by a
#: cancellation; its detail says so (see :func:`workflow_outcome`).
RETRY_PHASE = "retry"

_ICON = {
    "passed": "✅",
    "failed": "❌",
    "skipped": "⏭️",
    "flaky": "⚠️",
    "cancelled": "⛔",
}


# -- shared views of a run ------------------------------------------------------------


def display_path(file: str | Path | None, root: Path | None) -> str:
    """``file`` relative to ``root`` (the workspace) in POSIX form, if inside it."""
    if file is None:
        return "<workflow>"
    path = Path(file)
    if root is not None and path.is_absolute():
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.as_posix()


@dataclass(frozen=True)
class Failure:
    """One reason a run failed: a failed step, or a failed phase."""

    #: Step path (``repeat[2]/call set``) or ``phase <name>``.
    what: str
    error: ErrorInfo
    #: The most precise position: the assertion's own line, else the step's.
    location: Location | None
    step: StepRecord | None = None
    #: Node log text that explains the failure, per node.
    node_logs: dict[str, str] | None = None
    #: How long the failed step or phase ran.
    duration_s: float = 0.0


def reported_steps(run: RunResult) -> list[StepRecord]:
    """The steps reports list, in order (see :meth:`RunResult.reported_steps`)."""
    return run.reported_steps()


def failures_of(run: RunResult) -> list[Failure]:
    """Every failure of ``run``: phases first, then steps.

    The ``steps`` phase fails whenever a step does; it is listed only when it
    failed for a reason of its own. A cancelled phase or step is no failure
    (the steps it cut short are skipped).
    """
    found: list[Failure] = []
    for phase in run.failed_phases():
        error = phase.error or ErrorInfo(message=f"phase {phase.name} failed")
        logs = phase.data.get("last_logs")
        found.append(
            Failure(
                what=f"phase {phase.name}",
                error=error,
                location=error.location,
                node_logs={"the node": str(logs)} if logs else None,
                duration_s=phase.duration_s,
            )
        )
    for step in reported_steps(run):
        if step.status is Status.FAILED:
            error = step.error or ErrorInfo(message=f"step {step.path!r} failed")
            found.append(
                Failure(
                    what=step.path,
                    error=error,
                    location=error.location or step.location,
                    step=step,
                    node_logs=dict(step.node_logs) or None,
                    duration_s=step.duration_s,
                )
            )
    return found


def is_flaky(attempts: Sequence[RunResult]) -> bool:
    """A workflow that failed, was run again and then passed."""
    return len(attempts) > 1 and attempts[-1].passed


#: What a workflow's attempts amount to; every report counts by these words.
Outcome = Literal["passed", "flaky", "failed", "cancelled", "skipped"]


def workflow_outcome(attempts: Sequence[RunResult]) -> Outcome:
    """What a workflow's attempts amount to, the same in every report.

    ``passed`` (``flaky`` after failed attempts) when the last attempt passed;
    ``failed`` when an attempt failed on its own, even if a cancellation cut
    it or a later attempt short; ``cancelled`` when a cancellation cut it
    short before anything failed; ``skipped`` when it never ran.
    """
    final = attempts[-1]
    if final.passed:
        return "flaky" if is_flaky(attempts) else "passed"
    if any(failures_of(attempt) for attempt in attempts):
        return "failed"
    if final.status is Status.SKIPPED:
        return "skipped"
    return "cancelled" if final.interrupted else "failed"


def format_duration(seconds: float) -> str:
    """``12 ms`` under a second, ``1.25 s`` under a minute, else ``3 min 4 s``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s"


def format_value(value: Any) -> str:
    """An expected or actual value as text: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def error_details(error: ErrorInfo) -> list[str]:
    """The lines under an error's message: expected and actual, and the hint."""
    lines = []
    if error.expected is not None or error.actual is not None:
        lines.append(f"expected: {format_value(error.expected)}")
        lines.append(f"actual:   {format_value(error.actual)}")
    if error.hint:
        lines.append(f"hint: {error.hint}")
    return lines


# -- blocks and the budget ------------------------------------------------------------


def _esc(text: str) -> str:
    return html.escape(sanitize(text), quote=False)


def _cell(text: str) -> str:
    # GFM splits table cells on `|` before it reads inline markup
    return _esc(text).replace("|", "&#124;").replace("\n", " ")


def _code(text: str) -> str:
    return f"<code>{_cell(text)}</code>"


@dataclass
class _Block:
    """A piece of the summary; ``body`` (raw text) is what may be cut."""

    priority: int
    label: str
    head: str
    body: str = ""
    tail: str = ""
    keep: Literal["head", "tail"] = "head"

    def render(self, body: str | None = None) -> str:
        text = self.body if body is None else body
        return self.head + (_esc(text) if text else "") + self.tail

    def fit(self, room: int) -> str | None:
        """The block in at most ``room`` bytes: whole, cut, or None."""
        full = self.render()
        if _size(full) <= room:
            return full
        fixed = _size(self.render(""))
        if not self.body or room - fixed < _MIN_BODY:
            return None
        lines = self.body.split("\n")
        marker = "… {} of {} lines left out to fit the summary limit …"
        # escaping can grow text, so shrink until the rendered block fits
        keep = max(len(lines) * (room - fixed) // max(_size(full) - fixed, 1), 1)
        limit = room - fixed
        while limit >= _MIN_BODY // 2:
            note = marker.format(len(lines) - keep, len(lines))
            part = "\n".join(lines[-keep:] if self.keep == "tail" else lines[:keep])
            part = _clip(part, limit - _size(note) - 1, self.keep)
            body = f"{note}\n{part}" if self.keep == "tail" else f"{part}\n{note}"
            text = self.render(body)
            if _size(text) <= room:
                return text
            if keep > 1:
                keep = keep * 3 // 4 or 1
            else:
                limit = limit * 3 // 4
        return None


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _clip(text: str, limit: int, keep: Literal["head", "tail"] = "head") -> str:
    """Text of at most ``limit`` UTF-8 bytes (one huge line is cut, too)."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    room = max(limit - 3, 0)
    if keep == "tail":
        return "…" + data[len(data) - room :].decode("utf-8", errors="ignore")
    return data[:room].decode("utf-8", errors="ignore") + "…"


def _assemble(blocks: list[_Block], budget: int) -> str:
    room = budget - _NOTE_RESERVE
    chosen: dict[int, str] = {}
    left_out: list[str] = []
    cut: list[str] = []
    for index in sorted(range(len(blocks)), key=lambda i: (blocks[i].priority, i)):
        block = blocks[index]
        text = block.fit(room)
        if text is None:
            left_out.append(block.label)
            continue
        if text != block.render():
            cut.append(block.label)
        chosen[index] = text
        room -= _size(text)
    out = "".join(chosen[i] for i in sorted(chosen))
    if left_out or cut:
        out += _closing_note(left_out, cut, budget)
    return out


def _closing_note(left_out: list[str], cut: list[str], budget: int) -> str:
    def names(labels: list[str]) -> str:
        shown = ", ".join(labels[:5])
        more = f" and {len(labels) - 5} more" if len(labels) > 5 else ""
        return _esc(shown + more)

    parts = []
    if left_out:
        parts.append(f"left out {len(left_out)} part(s) ({names(left_out)})")
    if cut:
        parts.append(f"shortened {len(cut)} part(s) ({names(cut)})")
    text = (
        f"\n> [!NOTE]\n> To stay under {budget} bytes this summary {'; '.join(parts)}. "
        "The JUnit report and the node logs have everything.\n"
    )
    return _clip(text, _NOTE_RESERVE)


# -- the summary ----------------------------------------------------------------------


def _header(workflows: Sequence[Sequence[RunResult]], title: str) -> _Block:
    states = [workflow_outcome(a) for a in workflows]
    total = len(workflows)
    parts = []
    for state, words in (
        ("failed", "failed"),
        ("cancelled", "cancelled"),
        ("skipped", "not run"),
    ):
        count = states.count(state)
        if count:
            # the first part says "of how many"
            parts.append(f"{count} {words}" if parts else f"{count} of {total} workflow(s) {words}")
    if "failed" in states:
        icon = _ICON["failed"]
    elif parts:
        icon = _ICON["cancelled"]
    else:
        icon = _ICON["passed"]
    if not workflows:
        line = "no workflows ran"
    else:
        line = ", ".join(parts) or f"{total} workflow(s) passed"
    flaky = states.count("flaky")
    if flaky:
        line += f", {flaky} flaky (passed on a retry)"
    return _Block(0, "the header", f"## {icon} {_esc(title)}: {line}\n\n")


def _status_line(attempts: Sequence[RunResult], root: Path | None) -> _Block:
    final = attempts[-1]
    state = workflow_outcome(attempts)
    counts = final.counts()
    facts = [
        _code(display_path(final.workflow_file, root)),
        f"backend {_esc(final.backend)}",
        f"run {_code(final.run_id)}",
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped",
        format_duration(final.duration_s),
    ]
    text = f"### {_ICON[state]} {_esc(final.workflow_name)} ({state})\n\n" + " · ".join(
        facts
    )
    cut = [p.name for p in final.phases if p.error is not None and p.error.kind == "cancelled"]
    if final.interrupted and cut:
        text += f"<br>cancelled during {_code('phase ' + cut[0])}; what it cut short is skipped"
    if len(attempts) > 1:
        word = "passed" if final.passed else "failed"
        text += f"<br>{word} on attempt {len(attempts)} of {len(attempts)}"
        if state == "flaky":
            text += " (flaky: earlier attempts failed)"
    for phase in final.phases:
        # a retry the cancellation cut short, before anything of its own failed
        if phase.name == RETRY_PHASE and phase.status is Status.SKIPPED:
            text += f"<br>{_esc(phase.detail)}"
    return _Block(0, f"the status of {final.workflow_name}", text + "\n\n")


def _failure_blocks(failure: Failure, root: Path | None, name: str) -> list[_Block]:
    error = failure.error
    where = ""
    if failure.location is not None:
        where = " at " + _code(
            f"{display_path(failure.location.file, root)}:{failure.location.line}"
        )
    kind = f" ({_esc(failure.step.type)})" if failure.step is not None else ""
    blocks = [
        _Block(
            0,
            f"the failure of {failure.what}",
            f"**{_code(failure.what)}**{kind}{where}\n\n<pre>",
            error.message,
            "</pre>\n\n",
        )
    ]
    details = error_details(error)
    if details:
        blocks.append(
            _Block(
                1,
                f"expected and actual of {failure.what}",
                "<pre>",
                "\n".join(details),
                "</pre>\n\n",
            )
        )
    if failure.step is not None and failure.step.logs:
        blocks.append(
            _Block(
                2,
                f"the step logs of {failure.what}",
                f"<details><summary>step logs of {_cell(failure.what)}</summary>\n\n<pre>",
                "\n".join(failure.step.logs),
                "</pre>\n</details>\n\n",
                keep="tail",
            )
        )
    for node, text in (failure.node_logs or {}).items():
        blocks.append(
            _Block(
                3,
                f"the node logs of {node} ({name})",
                f"<details><summary>node logs of {_cell(node)}</summary>\n\n<pre>",
                text.rstrip("\n"),
                "</pre>\n</details>\n\n",
                keep="tail",
            )
        )
    return blocks


def _step_row(step: StepRecord, root: Path | None) -> str:
    where = ""
    if step.location is not None:
        where = _code(f"{display_path(step.location.file, root)}:{step.location.line}")
    timing = "" if step.status is Status.SKIPPED else format_duration(step.duration_s)
    extra = f" (after {step.attempts} attempts)" if step.attempts > 1 else ""
    extra += " (non-blocking)" if step.non_blocking else ""
    if step.status is Status.SKIPPED and _cancelled(step):
        extra += " (cancelled)"
    return (
        f"| {_ICON[str(step.status)]} | {_code(step.path)}{extra} | {_cell(step.type)} "
        f"| {timing} | {where} |\n"
    )


def _cancelled(step: StepRecord) -> bool:
    return step.error is not None and step.error.kind == "cancelled"


_TABLE_HEAD = "| | step | type | duration | where |\n|---|---|---|---|---|\n"


def _step_tables(run: RunResult, root: Path | None) -> list[_Block]:
    steps = reported_steps(run)
    # failures first, then what did not run
    order = {Status.FAILED: 0, Status.SKIPPED: 1, Status.PASSED: 2}
    shown = sorted(
        (s for s in steps if s.status is not Status.PASSED),
        key=lambda s: order[s.status],
    )
    passed = [s for s in steps if s.status is Status.PASSED]
    blocks = []
    name = run.workflow_name
    if shown:
        rows = "".join(_step_row(s, root) for s in shown)
        blocks.append(
            _Block(
                1, f"the failed and skipped steps of {name}", _TABLE_HEAD + rows + "\n"
            )
        )
    if passed:
        rows = "".join(_step_row(s, root) for s in passed)
        blocks.append(
            _Block(
                4,
                f"the passed steps of {name}",
                f"<details><summary>{len(passed)} passed step(s)</summary>\n\n"
                + _TABLE_HEAD
                + rows
                + "\n</details>\n\n",
            )
        )
    return blocks


def _earlier_attempts(
    attempts: Sequence[RunResult], root: Path | None
) -> _Block | None:
    if len(attempts) < 2:
        return None
    lines = []
    for number, attempt in enumerate(attempts[:-1], start=1):
        for failure in failures_of(attempt):
            lines.append(f"attempt {number}: {failure.what}: {failure.error.message}")
    return _Block(
        2,
        f"the earlier attempts of {attempts[-1].workflow_name}",
        f"<details><summary>{len(attempts) - 1} earlier attempt(s)</summary>\n\n<pre>",
        "\n".join(lines) or "no failure recorded",
        "</pre>\n</details>\n\n",
    )


def _captured_results(run: RunResult) -> _Block | None:
    if not run.workflow_results:
        return None
    text = json.dumps(run.workflow_results, indent=2, ensure_ascii=False, default=str)
    return _Block(
        5,
        f"the captured results of {run.workflow_name}",
        "<details><summary>captured results</summary>\n\n<pre>",
        text,
        "</pre>\n</details>\n\n",
    )


def build_summary(
    workflows: Sequence[Sequence[RunResult]],
    *,
    root: Path | None = None,
    budget: int = DEFAULT_BUDGET,
    title: str = "calimero-workflow",
) -> str:
    """The step summary of a run of several workflows, at most ``budget`` bytes.

    Args:
        workflows: Per workflow, its attempts in order; the last one counts.
        root: The workspace; file paths are shown relative to it.
        budget: Maximum size in UTF-8 bytes.
        title: The heading.
    """
    if budget < _NOTE_RESERVE * 2:
        raise ValueError(
            f"a summary budget of {budget} bytes is too small; allow at least {_NOTE_RESERVE * 2}"
        )
    blocks = [_header(workflows, title)]
    for attempts in workflows:
        final = attempts[-1]
        blocks.append(_status_line(attempts, root))
        failures = failures_of(final)
        if failures:
            blocks.append(_Block(0, "a heading", "#### Failures\n\n"))
        for failure in failures:
            blocks.extend(_failure_blocks(failure, root, final.workflow_name))
        blocks.extend(_step_tables(final, root))
        for block in (_earlier_attempts(attempts, root), _captured_results(final)):
            if block is not None:
                blocks.append(block)
    return _assemble(blocks, budget)
