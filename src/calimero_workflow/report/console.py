"""Console output: one line per phase and step, then a summary line.

Text that comes from nodes or apps (logs, error messages) is printed with
control characters made visible, so it can never move the cursor, change
colours or otherwise act on the terminal.
"""

from __future__ import annotations

import json
import re
import sys
from typing import TYPE_CHECKING, Any, TextIO

from ..results import PhaseRecord, RunResult, Status, StepRecord
from ..steps.base import RunEvents

if TYPE_CHECKING:
    from .github import Redactor

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def sanitize(text: str) -> str:
    """Make control characters visible (``\\x1b`` → ``\\x1b`` as text)."""
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


#: The runner's legacy command prefix, which it finds anywhere in a line.
_LEGACY_COMMAND = "##["


def inert_line(text: str) -> str:
    """``text`` as one line a CI runner can only show, never run as a command.

    The Actions runner splits its log on ``\\r``, ``\\n`` and ``\\r\\n``, reads a
    line that starts with ``::`` (after spaces) as a workflow command, and a
    legacy ``##[command]`` anywhere in a line. So: control characters and
    line breaks are made visible, ``##[`` gets an invisible zero-width space
    (``##\\u200b[``, shown as typed), and a leading ``::`` is put behind a
    ``| `` gutter.
    """
    line = sanitize_line(text).replace(_LEGACY_COMMAND, "##\u200b[")
    if line.lstrip().startswith("::"):
        line = "| " + line
    return line


_MARK = {Status.PASSED: "PASS", Status.FAILED: "FAIL", Status.SKIPPED: "SKIP"}
_COLOR = {Status.PASSED: "32", Status.FAILED: "31", Status.SKIPPED: "33"}


def sanitize_line(text: str) -> str:
    """:func:`sanitize`, with line breaks shown too (for one-line fields)."""
    return sanitize(text).replace("\n", "\\n").replace("\t", "\\t")


def _fmt_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f}ms"
    return f"{seconds:.2f}s"


def _short(value: Any, redactor: Redactor | None, limit: int = 300) -> str:
    """``value`` as text of at most ``limit`` characters, secrets masked first
    (cutting first could leave half a secret)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if redactor:
        return sanitize(redactor.cut(text, limit, note="…"))
    text = sanitize(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConsoleReporter(RunEvents):
    """Prints a run as it happens."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False,
                 quiet: bool = False, color: bool | None = None,
                 redactor: Redactor | None = None):
        self.stream = stream or sys.stdout
        self.verbose = verbose
        self.quiet = quiet
        self.color = self.stream.isatty() if color is None else color
        #: Values masked in every run shown (the action's secrets).
        self._base_redactor = redactor
        #: Masks those and the credentials of the running workflow, never printed.
        self.redactor: Redactor | None = redactor

    def _paint(self, status: Status, text: str) -> str:
        if not self.color:
            return text
        return f"\x1b[{_COLOR[status]}m{text}\x1b[0m"

    def _write(self, line: str = "") -> None:
        if self.redactor:
            line = self.redactor.redact(line)
        # under a CI runner, text from apps must not run a legacy ##[command]
        line = line.replace(_LEGACY_COMMAND, "##\u200b[")
        self.stream.write(line + "\n")
        self.stream.flush()

    def _block(self, lead: str, text: str) -> None:
        """``lead`` + text; further lines of the text continue under a ``| ``
        gutter, so text from apps or nodes never starts a line of its own (a CI
        runner reads a line starting with ``::`` as a command)."""
        first, *rest = sanitize(text).split("\n")
        self._write(lead + first)
        gutter = " " * len(lead) + "| "
        for line in rest:
            self._write(gutter + line)

    def run_started(self, result: RunResult) -> None:
        from .github import Redactor

        base = self._base_redactor
        self.redactor = base.with_values(result.secrets) if base else Redactor(result.secrets)
        where = f" ({result.workflow_file})" if result.workflow_file else ""
        self._write(f"== {sanitize_line(result.workflow_name)}{where}  backend={result.backend} run={result.run_id}")

    def secret(self, value: str) -> None:
        # found during the run (a token a node gave): masked from here on, by
        # the base too (the action's, which masks its outputs and files)
        for redactor in (self.redactor, self._base_redactor):
            if redactor is not None:
                for part in redactor.parts(value):
                    redactor.add(part)

    def note(self, message: str) -> None:
        if not self.quiet:
            self._block("  note: ", message)

    def phase_finished(self, record: PhaseRecord) -> None:
        if self.quiet and record.status is not Status.FAILED:
            return
        mark = self._paint(record.status, _MARK[record.status])
        detail = f"  {sanitize_line(record.detail)}" if record.detail else ""
        line = f"  {mark} phase {record.name} {_fmt_duration(record.duration_s)}{detail}"
        if record.status is Status.SKIPPED:
            line = f"  {mark} phase {record.name}{detail}"
        self._write(line)
        if record.error is not None and record.name != "steps":
            self._block("       error: ", record.error.message)
            if record.error.hint:
                self._block("       hint: ", record.error.hint)
            last = record.data.get("last_logs")
            if last:
                self._write("       last node log lines:")
                for line in str(last).splitlines()[-20:]:
                    self._write(f"         | {sanitize(line)}")

    def step_finished(self, record: StepRecord) -> None:
        if self.quiet and record.status is not Status.FAILED:
            return
        depth = record.path.count("/")
        indent = "    " + "  " * depth
        mark = self._paint(record.status, _MARK[record.status])
        extra = ""
        if record.attempts > 1:
            extra += f" after {record.attempts} attempts"
        if record.non_blocking:
            extra += " (non-blocking)"
        timing = "" if record.status is Status.SKIPPED else f" {_fmt_duration(record.duration_s)}"
        self._write(f"{indent}{mark} {sanitize_line(record.path)} [{record.type}]{timing}{extra}")
        if record.error is not None:
            err = record.error
            where = f"{err.location}: " if err.location else "error: "
            self._block(f"{indent}     {where}", err.message)
            if err.expected is not None or err.actual is not None:
                self._block(f"{indent}     expected: ", _short(err.expected, self.redactor))
                self._block(f"{indent}     actual:   ", _short(err.actual, self.redactor))
            if err.hint:
                self._block(f"{indent}     hint: ", err.hint)
        if record.logs and (self.verbose or record.status is Status.FAILED):
            for line in record.logs[-50:]:
                self._block(f"{indent}     | ", line)
        if record.status is Status.FAILED:
            for node, tail in record.node_logs.items():
                self._write(f"{indent}     last log lines of {node}:")
                for line in tail.splitlines()[-20:]:
                    self._write(f"{indent}       | {sanitize(line)}")

    def run_finished(self, result: RunResult) -> None:
        counts = result.counts()
        status = result.status
        word = "INTERRUPTED" if result.interrupted else str(status).upper()
        self._write(
            self._paint(status, word)
            + f" {sanitize_line(result.workflow_name)}: {counts['passed']} passed, {counts['failed']} failed,"
            f" {counts['skipped']} skipped in {_fmt_duration(result.duration_s)}"
        )
        if result.node_log_files and status is Status.FAILED:
            first = next(iter(result.node_log_files.values()))
            self._write(f"   node logs: {first.rsplit('/', 1)[0]}/")
