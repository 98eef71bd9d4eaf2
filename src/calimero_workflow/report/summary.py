"""The markdown step summary, built within a byte budget.

GitHub drops a step summary over 1 MiB whole, so the summary is assembled
from blocks with priorities: every workflow's status line first, then each
failure's headline (step and position), then the failure messages (each cut
to :data:`_MESSAGE_LIMIT` characters, so none can crowd out the others), then
the step tables, logs, passing steps and captured results. Blocks that do
not fit are cut (logs keep their last lines) or left out, a cut says how many
lines and characters it left out, and a closing note says what was cut or
left out. Everything that came from a node,
an app or a YAML file cannot add markup: text in ``<pre>`` blocks is
HTML-escaped, so it cannot close the block, and text on a line of markdown
(headings, table cells, ``<code>``, ``<summary>``) is shown on one line with
every character GitHub-flavoured markdown reads as syntax written as a
character reference (see :func:`_inline`).

The helpers :class:`Failure`, :func:`failures_of` and :func:`display_path`
are shared with the JUnit writer and the action's annotations.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import Location
from ..results import ErrorInfo, RunResult, Status, StepRecord
from .console import sanitize, sanitize_line

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
#: Characters of a failure's message (and of its expected and actual values)
#: the summary shows at most, so that one message cannot crowd out the rest.
_MESSAGE_LIMIT = 2000
#: Characters of a name or path the summary shows at most on a line of its own.
_NAME_LIMIT = 300

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
    """Text for the inside of a ``<pre>`` block.

    The block is an HTML block of GFM's first kind: markdown is not read in
    it and only a line holding ``</pre>`` (or ``</script>``, ``</style>``,
    ``</textarea>``) ends it, so with ``<`` escaped the text can neither add
    markup nor close it, blank lines and backtick fences included.
    """
    return html.escape(sanitize(text), quote=False)


#: Characters GitHub-flavoured markdown may read as syntax within a line,
#: as character references: the parser takes a reference as literal text,
#: never as syntax, and the browser shows the character. ``\`` escapes,
#: `` ` `` code, ``*``/``_``/``~`` emphasis and strikethrough, ``[``/``]``/``!``
#: links, images and footnotes, ``<``/``>``/``&`` HTML and references, ``|``
#: table cells (GFM splits a row on it before anything else), ``#`` a
#: heading's closing sequence and issue references, ``:`` URL autolinks
#: (``https:``, ``mailto:``) and ``$`` math. Syntax that needs the start of
#: a line (``-``, ``+``, ``1.``, ``>``, ``=``) cannot arise: the text never
#: starts one and its line breaks are shown as ``\n``.
_INLINE = str.maketrans(
    {
        **{c: f"&#{ord(c)};" for c in "\\`*_~[]!|#:$"},
        "<": "&lt;",
        ">": "&gt;",
        "&": "&amp;",
        # GFM finds e-mail autolinks in the parsed text, references decoded,
        # so an empty comment goes between the `@` and the domain
        "@": "&#64;<!-- -->",
    }
)
#: ``www.`` starts an autolink; a reference for its dot stops it.
_WWW_RE = re.compile(r"(www)\.", re.IGNORECASE)


def _inline(text: str, limit: int = _NAME_LIMIT) -> str:
    """``text`` on one line of markdown as inert text, at most ``limit`` characters.

    Control characters and line breaks are shown (``\\n``), so the text stays
    on the line it was put on, and every character that could start syntax
    there is a character reference (:data:`_INLINE`), so it shows as typed
    in headings, table cells, ``<code>`` and ``<summary>`` alike.
    """
    line = sanitize_line(text)
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    return _WWW_RE.sub(r"\1&#46;", line.translate(_INLINE))


def _cell(text: str) -> str:
    return _inline(text)


def _code(text: str) -> str:
    return f"<code>{_inline(text)}</code>"


def _where(location: Location, root: Path | None) -> str:
    return f"<code>{_inline(display_path(location.file, root))}:{location.line}</code>"


@dataclass
class _Block:
    """A piece of the summary; ``body`` (raw text) is what may be cut."""

    priority: int
    label: str
    head: str
    body: str = ""
    tail: str = ""
    keep: Literal["head", "tail"] = "head"
    #: Characters of ``body`` shown at most, however much room there is.
    limit: int | None = None

    def render(self, body: str | None = None) -> str:
        text = self.body if body is None else body
        return self.head + (_esc(text) if text else "") + self.tail

    def fit(self, room: int) -> str | None:
        """The block in at most ``room`` bytes: whole, cut, or None.

        A cut body keeps whole lines where it can, else part of one line,
        and a note in it says how many lines and characters it left out.
        """
        chars = len(self.body)
        if self.limit is not None:
            chars = min(chars, self.limit)
        full = self.render()
        if chars == len(self.body) and _size(full) <= room:
            return full
        fixed = _size(self.render(""))
        if not self.body or room - fixed < _MIN_BODY:
            return None
        # escaping can grow text, so shrink until the rendered block fits
        chars = min(chars, len(self.body) * (room - fixed) // max(_size(full) - fixed, 1))
        while chars >= _MIN_BODY // 8:
            text = self.render(_cut(self.body, chars, self.keep))
            if _size(text) <= room:
                return text
            chars = chars * 3 // 4
        return None


def _cut(text: str, chars: int, keep: Literal["head", "tail"]) -> str:
    """``text`` cut to its first (or last) ``chars`` characters or fewer, with a
    note at the cut of what it left out.

    The cut is moved back to a line break when that keeps at least half as
    much, so it keeps whole lines; otherwise a line is cut in two, and the
    note counts the characters of it left out as well as the lines.
    """
    chars = max(chars, 1)
    if chars >= len(text):
        return text
    if keep == "head":
        part = text[:chars]
        if text[chars] != "\n" and part.rfind("\n") >= chars // 2:
            part = part[: part.rindex("\n")]
        # what is left out of the line the cut is in (nothing at a line break)
        cut_line = text[len(part) :].split("\n", 1)[0]
        kept_of_line = part[part.rfind("\n") + 1 :]
    else:
        part = text[len(text) - chars :]
        start = len(text) - chars
        if text[start - 1] != "\n" and "\n" in part and part.index("\n") < chars // 2:
            part = part[part.index("\n") + 1 :]
        cut_line = text[: len(text) - len(part)].rsplit("\n", 1)[-1]
        kept_of_line = part.split("\n", 1)[0]
    lines = text.count("\n") + 1
    # the line cut in two is kept in part; only its characters are left out
    parts = []
    left_out = lines - part.count("\n") - 1
    if left_out:
        parts.append(f"{left_out} of {lines} lines")
    if cut_line:
        parts.append(
            f"{len(cut_line)} of {len(cut_line) + len(kept_of_line)} characters"
            " of the line cut here"
        )
    note = f"… {' and '.join(parts)} left out to fit the summary limit …"
    return f"{note}\n{part}" if keep == "tail" else f"{part}\n{note}"


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
    def names(labels: list[str], shown: int) -> str:
        listed = ", ".join(_inline(label, 60) for label in labels[:shown])
        more = len(labels) - shown
        if not listed:
            return f"{more} of them"
        return listed + (f" and {more} more" if more > 0 else "")

    # labels name workflows and steps: as many as fit are listed
    for shown in range(5, -1, -1):
        parts = []
        if left_out:
            parts.append(f"left out {len(left_out)} part(s) ({names(left_out, shown)})")
        if cut:
            parts.append(f"shortened {len(cut)} part(s) ({names(cut, shown)})")
        text = (
            f"\n> [!NOTE]\n> To stay under {budget} bytes this summary {'; '.join(parts)}. "
            "The JUnit report and the node logs have everything.\n"
        )
        if _size(text) <= _NOTE_RESERVE:
            break
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
    return _Block(0, "the header", f"## {icon} {_inline(title)}: {line}\n\n")


def _status_line(attempts: Sequence[RunResult], root: Path | None) -> _Block:
    final = attempts[-1]
    state = workflow_outcome(attempts)
    counts = final.counts()
    facts = [
        _code(display_path(final.workflow_file, root)),
        f"backend {_inline(final.backend)}",
        f"run {_code(final.run_id)}",
        f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped",
        format_duration(final.duration_s),
    ]
    text = f"### {_ICON[state]} {_inline(final.workflow_name)} ({state})\n\n" + " · ".join(
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
            text += f"<br>{_inline(phase.detail, 500)}"
    return _Block(0, f"the status of {final.workflow_name}", text + "\n\n")


def _failure_blocks(failure: Failure, root: Path | None, name: str) -> list[_Block]:
    error = failure.error
    where = ""
    if failure.location is not None:
        where = " at " + _where(failure.location, root)
    kind = f" ({_inline(failure.step.type)})" if failure.step is not None else ""
    blocks = [
        # the headline, before any message: every failure is named
        _Block(1, f"the failure of {failure.what}", f"**{_code(failure.what)}**{kind}{where}\n\n"),
        _Block(
            2,
            f"the message of {failure.what}",
            "<pre>",
            error.message,
            "</pre>\n\n",
            limit=_MESSAGE_LIMIT,
        ),
    ]
    details = error_details(error)
    if details:
        blocks.append(
            _Block(
                3,
                f"expected and actual of {failure.what}",
                "<pre>",
                "\n".join(details),
                "</pre>\n\n",
                limit=_MESSAGE_LIMIT,
            )
        )
    if failure.step is not None and failure.step.logs:
        blocks.append(
            _Block(
                4,
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
                5,
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
        where = _where(step.location, root)
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
                3, f"the failed and skipped steps of {name}", _TABLE_HEAD + rows + "\n"
            )
        )
    if passed:
        rows = "".join(_step_row(s, root) for s in passed)
        blocks.append(
            _Block(
                6,
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
        4,
        f"the earlier attempts of {attempts[-1].workflow_name}",
        f"<details><summary>{len(attempts) - 1} earlier attempt(s)</summary>\n\n<pre>",
        "\n".join(lines) or "no failure recorded",
        "</pre>\n</details>\n\n",
        limit=4 * _MESSAGE_LIMIT,
    )


def _captured_results(run: RunResult) -> _Block | None:
    if not run.workflow_results:
        return None
    text = json.dumps(run.workflow_results, indent=2, ensure_ascii=False, default=str)
    return _Block(
        7,
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
            blocks.append(_Block(1, "a heading", "#### Failures\n\n"))
        for failure in failures:
            blocks.extend(_failure_blocks(failure, root, final.workflow_name))
        blocks.extend(_step_tables(final, root))
        for block in (_earlier_attempts(attempts, root), _captured_results(final)):
            if block is not None:
                blocks.append(block)
    return _assemble(blocks, budget)
