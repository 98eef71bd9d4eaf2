"""One adapter for everything the action tells the GitHub Actions runner.

Two channels exist. Workflow commands are lines on stdout that the runner
parses (``::error file=…::message``, ``::group::``, ``::add-mask::``); their
data and properties must be escaped the way the runner unescapes them.
Environment files (``GITHUB_OUTPUT``, ``GITHUB_STEP_SUMMARY``,
``GITHUB_STATE``) are appended to; their paths come from the environment,
never from a hard-coded ``/github/...``. The runner's limits (10 annotations
of each level per step, 4096-character messages, 1 MiB of step summary,
1 MB of outputs per job) are enforced here, when the text is written.

The runner masks registered secrets only in the log it shows. Everything
that leaves through this adapter (log lines, the values in commands,
outputs, the summary) has them replaced by ``***`` here, in every escaped
form the reports use; report files are made of records redacted with
:meth:`Redactor.redact_data`. Plain lines are made inert
(:func:`~.console.inert_line`), so text quoted from the repository cannot
issue a command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import html
import io
import json
import secrets
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

from .console import inert_line, sanitize, sanitize_line

_T = TypeVar("_T")

__all__ = [
    "Annotation",
    "GitHub",
    "Level",
    "MAX_ANNOTATIONS_PER_LEVEL",
    "MAX_MESSAGE_CHARS",
    "MAX_TITLE_CHARS",
    "MIN_SECRET_CHARS",
    "OUTPUT_BUDGET_BYTES",
    "OUTPUT_VALUE_LIMIT_BYTES",
    "OutputWritten",
    "REDACTED",
    "Redactor",
    "SUMMARY_LIMIT_BYTES",
    "escape_data",
    "escape_property",
    "utf16_size",
]

Level = Literal["error", "warning", "notice"]

#: The runner keeps 10 error, 10 warning (and, with enhanced annotations,
#: 10 notice) annotations per step and drops the rest silently (toolkit PR #734).
MAX_ANNOTATIONS_PER_LEVEL = 10
#: The runner truncates an annotation message to 4096 characters.
MAX_MESSAGE_CHARS = 4096
#: Titles are shown on one line; longer ones are cut by the UI anyway.
MAX_TITLE_CHARS = 255
#: ``$GITHUB_STEP_SUMMARY`` over 1 MiB is dropped whole ("upload aborted").
SUMMARY_LIMIT_BYTES = 1024 * 1024
#: Outputs may total 1 MB per job, sized as UTF-16. This step keeps a margin
#: for the outputs of the job's other steps.
OUTPUT_BUDGET_BYTES = 900_000
#: No single output value may take more than this (UTF-16 bytes).
OUTPUT_VALUE_LIMIT_BYTES = 256 * 1024

#: Shorter values are not masked: masking ``1`` or ``on`` would hide those
#: characters everywhere in the log and the reports.
MIN_SECRET_CHARS = 4
#: What a secret value is replaced by.
REDACTED = "***"

_PROPERTY_ORDER = ("file", "line", "col", "endLine", "endColumn", "title")


def escape_data(text: str) -> str:
    """Escape the message part of a workflow command.

    ``%`` goes first so that the escapes added for CR and LF are not
    escaped a second time.
    """
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a property value: as data, plus ``:`` and ``,`` (separators)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _xml_attribute(text: str) -> str:
    # as ElementTree writes attribute values
    text = html.escape(text, quote=False).replace('"', "&quot;")
    return text.replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#09;")


def _repr_body(text: str, *, escape_quote: bool) -> str:
    """``text`` as Python's ``repr()`` spells it between its quotes.

    ``repr()`` of a longer text that holds both quote characters escapes
    ``'`` too, so both spellings are needed.
    """
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char == "'":
            out.append("\\'" if escape_quote else "'")
        else:
            out.append(repr(char)[1:-1] if char != '"' else '"')
    return "".join(out)


def _secret_forms(value: str) -> set[str]:
    """``value`` as the log, JSON, XML, HTML, Python's ``repr()`` (error
    messages quote values with ``!r``) and workflow commands may spell it."""
    # as text, or inside a JSON string, or inside a JSON string in a JSON
    # string (an app's log line, which quotes its values, in the results)
    inner = {value, sanitize(value), sanitize_line(value)}
    inner |= {_repr_body(value, escape_quote=q) for q in (False, True)}
    for _ in range(2):
        inner |= {json.dumps(t, ensure_ascii=a)[1:-1] for t in inner for a in (0, 1)}
    forms: set[str] = set()
    for text in inner:  # and then in markup or in a workflow command
        forms |= {
            text,
            html.escape(text, quote=False),
            html.escape(text),
            _xml_attribute(text),
            escape_data(text),
            escape_property(text),
        }
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


def _init_fields(value: Any) -> list[dataclasses.Field[Any]]:
    """The fields of a dataclass instance that its constructor takes."""
    return [f for f in dataclasses.fields(value) if f.init]


class Redactor:
    """Replaces secret values, in every spelling our logs and files may hold, by ``***``.

    One is shared by everything a run writes: the console, the JUnit XML, the
    JSON results and report, the summary and the node logs handed out as
    artifacts, so a value is masked the same way everywhere.

    Two rules keep what we write whole and the secrets whole-masked:

    * values, not syntax: structured output is redacted before it is
      serialised (:meth:`redact_data` on the records, then JSON, XML or
      markdown is made of them), so a secret that happens to be a word of
      the markup or a JSON key we use never breaks it;
    * redact, then cut: text is cut to a length limit only after it is
      redacted (:meth:`cut`), and a cut that ends in the start of a secret
      spelling drops that part too.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        #: Every spelling of every value, longest first.
        self._forms: list[str] = []
        for value in values:
            for part in self.parts(value):
                self.add(part)

    @staticmethod
    def parts(value: str) -> list[str]:
        """What of ``value`` is masked: the whole and each line, stripped, when
        at least :data:`MIN_SECRET_CHARS` long."""
        pieces = (p.strip() for p in [value, *value.splitlines()])
        return [p for p in dict.fromkeys(pieces) if len(p) >= MIN_SECRET_CHARS]

    def add(self, part: str) -> bool:
        """Mask one part (see :meth:`parts`); False when it was masked already."""
        if part in self._values:
            return False
        self._values.add(part)
        forms = set(self._forms) | _secret_forms(part)
        self._forms = sorted(forms, key=len, reverse=True)
        return True

    @property
    def values(self) -> list[str]:
        """The parts masked (see :meth:`parts`), in no particular order."""
        return list(self._values)

    def with_values(self, values: Iterable[str]) -> Redactor:
        """A new redactor masking what this one does, and ``values``."""
        return Redactor([*self._values, *values])

    def __bool__(self) -> bool:
        return bool(self._forms)

    def redact(self, text: str) -> str:
        """``text`` with every masked value (in each escaped form) as ``***``."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    def cut(
        self,
        text: str,
        limit: int,
        *,
        note: str = "",
        keep: Literal["head", "tail"] = "head",
    ) -> str:
        """``text`` redacted, then cut to ``limit`` characters with ``note``
        at the cut (after the head, or before the tail that is kept)."""
        text = self.redact(text)
        if len(text) <= limit:
            return text
        room = max(limit - len(note), 0)
        if keep == "tail":
            return note + self.trim_partial(text[len(text) - room :], keep="tail")
        return self.trim_partial(text[:room]) + note

    def trim_partial(self, text: str, *, keep: Literal["head", "tail"] = "head") -> str:
        """Drop the start of a secret spelling that ``text`` ends with (a head
        cut there), or the end of one it starts with (a tail cut there)."""
        longest = 0
        for form in self._forms:
            for size in range(min(len(form) - 1, len(text)), longest, -1):
                piece = form[:size] if keep == "head" else form[-size:]
                if (text.endswith if keep == "head" else text.startswith)(piece):
                    longest = size
                    break
        if not longest:
            return text
        return text[: len(text) - longest] if keep == "head" else text[longest:]

    def mask_partial(self, text: str) -> str:
        """``text``, cut short by someone else, with an end that is the start of
        a secret spelling (:data:`MIN_SECRET_CHARS` characters or more) masked.

        Unlike :meth:`trim_partial`, the text stays as long as it was but for
        the mask, and a shorter start is kept: it says as little as a value too
        short to be masked does, and the text is someone's data.
        """
        longest = 0
        for form in self._forms:
            for size in range(min(len(form) - 1, len(text)), max(longest, MIN_SECRET_CHARS - 1), -1):
                if text.endswith(form[:size]):
                    longest = size
                    break
        return text[: len(text) - longest] + REDACTED if longest else text

    def redact_data(self, value: _T) -> _T:
        """A copy of ``value`` with every text in it redacted.

        Strings anywhere inside dataclasses (the run records), mappings (keys
        too), lists and tuples are redacted; field names, enums, numbers and
        the shape stay as they are. Reports made from the copy need no
        redaction afterwards, which could change their syntax.
        """
        if not self._forms:
            return value
        return self._redact_value(value)

    def _redact_value(self, value: Any) -> Any:
        # Depth first with a stack of our own rather than recursion: a value
        # may be nested as deep as JSON parsing allows (a script's output, a
        # node's answer), and what the run wrote must never fail on it.
        leaf, children = self._open(value)
        if children is None:
            return leaf
        #: The containers on the way down: each with its children and the
        #: redacted copies of those done so far.
        stack: list[tuple[Any, list[Any], list[Any]]] = [(value, children, [])]
        path = {id(value)}
        while True:
            node, pending, done = stack[-1]
            if len(done) < len(pending):
                child = pending[len(done)]
                leaf, grandchildren = self._open(child)
                if grandchildren is None:
                    done.append(leaf)
                    continue
                if id(child) in path:
                    raise ValueError("cannot redact a value that contains itself")
                stack.append((child, grandchildren, []))
                path.add(id(child))
                continue
            stack.pop()
            path.discard(id(node))
            built = self._rebuild(node, done)
            if not stack:
                return built
            stack[-1][2].append(built)

    def _open(self, value: Any) -> tuple[Any, list[Any] | None]:
        """``(redacted value, None)`` for a value holding no others, or
        ``(None, its children)`` for a container, in :meth:`_rebuild`'s order."""
        if isinstance(value, enum.Enum | type):
            return value, None
        if isinstance(value, str):
            return self.redact(value), None
        if isinstance(value, dict):
            return None, list(value.values())
        if isinstance(value, list | tuple):
            return None, list(value)
        if dataclasses.is_dataclass(value):
            return None, [getattr(value, f.name) for f in _init_fields(value)]
        return value, None

    def _rebuild(self, value: Any, items: list[Any]) -> Any:
        """A copy of the container ``value`` holding ``items``, its children redacted."""
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for key, item in zip(value, items, strict=True):
                name = self.redact(key) if isinstance(key, str) else key
                while name in out:  # two keys masked alike: keep both
                    name = f"{name}+"
                out[name] = item
            return out
        if isinstance(value, list):
            return items
        if isinstance(value, tuple):
            return tuple(items)
        changes = {f.name: item for f, item in zip(_init_fields(value), items, strict=True)}
        return dataclasses.replace(value, **changes)

    def redact_bytes(self, data: bytes) -> bytes:
        """Text file contents redacted; bytes that are not UTF-8 are kept as they are."""
        if not self._forms:
            return data
        text = data.decode("utf-8", "surrogateescape")
        return self.redact(text).encode("utf-8", "surrogateescape")


def utf16_size(text: str) -> int:
    """Size of ``text`` the way GitHub approximates output sizes (UTF-16)."""
    return len(text.encode("utf-16-le"))


def _cut(text: str, limit: int, note: str, redactor: Redactor | None) -> str:
    """``text`` cut to ``limit`` characters, ending with ``note`` when cut;
    redacted first."""
    if redactor is not None:
        return redactor.cut(text, limit, note=note)
    if len(text) <= limit:
        return text
    return text[: max(limit - len(note), 0)] + note


@dataclass(frozen=True)
class Annotation:
    """An error, warning or notice shown on a file and line of the change."""

    level: Level
    message: str
    #: Workspace-relative path (the runner also maps container paths back).
    file: str | None = None
    line: int | None = None
    col: int | None = None
    title: str | None = None

    def to_command(self, redactor: Redactor | None = None) -> str:
        """The workflow command line, escaped and cut to the runner's limits.

        With ``redactor``, the file, title and message are redacted before
        they are cut (never the command's own syntax).
        """
        props: dict[str, str] = {}
        if self.file:
            props["file"] = redactor.redact(self.file) if redactor else self.file
        # the runner drops a column given without a line (ValidateLinesAndColumns)
        if self.line is not None and self.line > 0:
            props["line"] = str(self.line)
            if self.col is not None and self.col > 0:
                props["col"] = str(self.col)
        if self.title:
            title = redactor.redact(self.title) if redactor else self.title
            title = " ".join(sanitize(title).split())
            props["title"] = _cut(title, MAX_TITLE_CHARS, "…", redactor)
        message = sanitize(redactor.redact(self.message) if redactor else self.message)
        message = _cut(
            message,
            MAX_MESSAGE_CHARS,
            "\n… (cut to 4096 characters; the step summary and the JUnit report have it all)",
            redactor,
        )
        return _format_command(self.level, props, message)


def _format_command(name: str, props: Mapping[str, str], message: str) -> str:
    ordered = sorted(props, key=lambda k: (_PROPERTY_ORDER + (k,)).index(k))
    rendered = ",".join(f"{key}={escape_property(props[key])}" for key in ordered)
    head = f"::{name} {rendered}" if rendered else f"::{name}"
    return f"{head}::{escape_data(message)}"


@dataclass(frozen=True)
class OutputWritten:
    """What :meth:`GitHub.set_output` did with one value."""

    name: str
    #: UTF-16 bytes written for the value.
    size: int
    #: The value did not fit and was replaced by a cut copy with a note.
    truncated: bool


class _RedactingWriter(io.TextIOBase):
    """A text stream that writes whole lines, with secrets redacted, to another.

    Console output (the run as it happens) goes through it. A line is held
    until it ends, so a secret written in pieces is still found.
    """

    def __init__(self, gh: GitHub, target: TextIO):
        self._gh = gh
        self._target = target
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            done, _, self._pending = self._pending.rpartition("\n")
            self._target.write(self._gh.redact(done + "\n"))
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._target.write(self._gh.redact(self._pending))
            self._pending = ""
        self._target.flush()

    def end_line(self) -> None:
        """Finish a line left open, so that the next line can be a command."""
        if self._pending:
            self._pending += "\n"
        self.flush()


class GitHub:
    """Workflow commands on ``stream`` and environment files from ``env``.

    Args:
        env: The process environment (injected, so tests pass a dict).
        stream: Where commands go; the runner reads stdout.
        output_budget: UTF-16 bytes all outputs of this step may use.
        output_value_limit: UTF-16 bytes one output value may use.
        summary_limit: Bytes ``$GITHUB_STEP_SUMMARY`` may hold.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        stream: TextIO | None = None,
        *,
        output_budget: int = OUTPUT_BUDGET_BYTES,
        output_value_limit: int = OUTPUT_VALUE_LIMIT_BYTES,
        summary_limit: int = SUMMARY_LIMIT_BYTES,
    ) -> None:
        self._out = stream if stream is not None else sys.stdout
        #: For text printed by others (the console reporter): secrets redacted.
        self.stream = _RedactingWriter(self, self._out)
        self.output_file = _env_path(env, "GITHUB_OUTPUT")
        self.summary_file = _env_path(env, "GITHUB_STEP_SUMMARY")
        self.state_file = _env_path(env, "GITHUB_STATE")
        self.output_budget = output_budget
        self.output_value_limit = output_value_limit
        self.summary_limit = summary_limit
        self._output_used = 0
        self._annotations: dict[str, int] = {"error": 0, "warning": 0, "notice": 0}
        self._dropped: dict[str, int] = {"error": 0, "warning": 0, "notice": 0}
        #: Every value masked so far, in all its spellings.
        self.redactor = Redactor()
        self._in_group = False
        #: The resume token while command processing is off (stop_commands).
        self._stop_token: str | None = None

    # -- workflow commands ----------------------------------------------------------

    def _emit(self, line: str) -> None:
        """Print one finished line (a command, or text made inert) as it is."""
        # one write and a flush per line: stderr (logging) is unbuffered, and
        # the runner must see a stop-commands line before anything after it.
        # What the console reporter wrote comes first, and the runner reads
        # a command only at the start of a line.
        self.stream.end_line()
        self._out.write(line + "\n")
        self._out.flush()

    def _command(self, name: str, props: Mapping[str, str], message: str) -> None:
        """A workflow command with its values (never its syntax) redacted."""
        values = {key: self.redact(value) for key, value in props.items()}
        self._emit(_format_command(name, values, self.redact(message)))

    def redact(self, text: str) -> str:
        """``text`` with every masked value (in each escaped form) as ``***``."""
        return self.redactor.redact(text)

    def echo(self, text: str = "") -> None:
        """Print our own text, one line per ``\\n``, as plain text.

        Each line is redacted and made inert (:func:`inert_line`): what it
        quotes (a file or workflow name from the repository) is shown, with
        its control characters visible, and can never issue a command.
        """
        for line in text.split("\n"):
            self._emit(inert_line(self.redact(line)))

    def add_mask(self, value: str) -> bool:
        """Mask ``value`` in every later log line of the job and in what we write.

        The runner masks line by line, so a multi-line value is also masked
        one line at a time. Values (or lines) shorter than
        :data:`MIN_SECRET_CHARS` are not masked; returns False when nothing
        of ``value`` could be.
        """
        parts = Redactor.parts(value)
        new = [part for part in parts if self.redactor.add(part)]
        if new:
            # the runner's mask, before anything else can print the value;
            # with commands off (a run in progress), on for just these lines
            stopped = self._stop_token is not None
            if stopped:
                self._emit(f"::{self._stop_token}::")
            for part in new:
                self._emit(_format_command("add-mask", {}, part))
            if stopped:
                self._stop_token = self._new_stop_token()
                self._emit(f"::stop-commands::{self._stop_token}")
        return bool(parts)

    @contextlib.contextmanager
    def group(self, title: str) -> Iterator[None]:
        """A collapsible log group. The runner does not nest groups, so neither do we."""
        if self._in_group:
            raise RuntimeError(
                f"group {title!r} opened inside another group; groups do not nest"
            )
        self._in_group = True
        self._command("group", {}, " ".join(sanitize(self.redact(title)).split()))
        try:
            yield
        finally:
            self._emit("::endgroup::")
            self._in_group = False

    @contextlib.contextmanager
    def stop_commands(self, avoid: str = "") -> Iterator[str]:
        """Turn command processing off until the block ends.

        Everything printed inside, by us or by anything sharing stdout and
        stderr, is shown as text. The resume token is random, so text from a
        node cannot guess it; ``avoid`` is text already known to be printed,
        and the token is drawn again in the (unlikely) case it occurs there.
        """
        if self._stop_token is not None:
            # already off: the runner would not read a second stop anyway
            yield self._stop_token
            return
        token = self._new_stop_token(avoid)
        self._stop_token = token
        self._emit(f"::stop-commands::{token}")
        try:
            yield token
        finally:
            # add_mask may have changed the token meanwhile
            self._emit(f"::{self._stop_token}::")
            self._stop_token = None

    @staticmethod
    def _new_stop_token(avoid: str = "") -> str:
        token = secrets.token_hex(16)
        while token in avoid:
            token = secrets.token_hex(16)
        return token

    def untrusted(self, text: str | Iterable[str]) -> None:
        """Print text we do not control (node logs, app output) inertly."""
        lines = text.split("\n") if isinstance(text, str) else list(text)
        lines = [sanitize(self.redact(line)) for line in lines]
        with self.stop_commands(avoid="\n".join(lines)):
            for line in lines:
                self._emit(line)

    def debug(self, message: str) -> None:
        """A line shown only when step debug logging is on."""
        self._command("debug", {}, sanitize(self.redact(message)))

    # -- annotations ------------------------------------------------------------------

    def annotate(self, annotation: Annotation) -> bool:
        """Emit ``annotation`` if its level still has room in this step.

        Past the limit the annotation is counted, not printed, and
        :meth:`flush_annotations` reports the count. One warning is kept free
        for that report. Returns whether the annotation was printed.
        """
        level = annotation.level
        room = MAX_ANNOTATIONS_PER_LEVEL - (1 if level == "warning" else 0)
        if self._annotations[level] >= room:
            self._dropped[level] += 1
            return False
        self._annotations[level] += 1
        self._emit(annotation.to_command(self.redactor))
        return True

    @property
    def dropped_annotations(self) -> dict[str, int]:
        """How many annotations of each level did not fit, so far."""
        return dict(self._dropped)

    def flush_annotations(
        self, where: str = "the step summary and the JUnit report"
    ) -> None:
        """Say in one warning how many annotations were left out, if any.

        A warning, not a notice: the runner shows notices only where
        enhanced annotations are on.
        """
        parts = [
            f"{count} {level}{'s' if count > 1 else ''}"
            for level, count in self._dropped.items()
            if count
        ]
        if not parts:
            return
        message = (
            f"{', '.join(parts)} more not annotated: GitHub keeps "
            f"{MAX_ANNOTATIONS_PER_LEVEL} annotations of each level per step. "
            f"See {where}."
        )
        self._annotations["warning"] += 1
        self._emit(
            Annotation(
                "warning", message, title="More results than annotations"
            ).to_command()
        )
        self._dropped = dict.fromkeys(self._dropped, 0)

    # -- environment files ------------------------------------------------------------

    def set_output(
        self,
        name: str,
        value: str,
        *,
        is_json: bool = False,
        full_value: str | None = None,
        redact: bool = True,
    ) -> OutputWritten:
        """Append ``name`` = ``value`` to ``$GITHUB_OUTPUT`` as a heredoc.

        Values too large for the per-value limit or the remaining budget are
        cut with a note naming ``full_value`` (where the caller keeps the whole
        value). A cut JSON value is replaced by a small JSON object saying so,
        so ``fromJSON`` still works on it.

        ``redact=False`` is for values that are ours (a status, a count) or
        made of redacted data (JSON of :meth:`Redactor.redact_data`), which
        redacting as text could break.

        Raises:
            ValueError: ``name`` is not a valid output name.
        """
        if not _valid_name(name):
            raise ValueError(
                f"output name {name!r} is not valid: use letters, digits, '_' and '-', "
                "starting with a letter or '_'"
            )
        if redact:
            value = self.redact(value)
        limit = min(
            self.output_value_limit,
            self.output_budget - self._output_used - utf16_size(name),
        )
        size = utf16_size(value)
        truncated = size > limit
        if truncated:
            value = _shrink_output(
                value,
                size,
                max(limit, 0),
                is_json=is_json,
                full_value=full_value,
                redactor=self.redactor,
            )
        written = utf16_size(value)
        self._output_used += written + utf16_size(name)
        if self.output_file is not None:
            delimiter = f"ghadelimiter_{uuid.uuid4()}"
            while delimiter in value:
                delimiter = f"ghadelimiter_{uuid.uuid4()}"
            with self.output_file.open("a", encoding="utf-8") as fh:
                fh.write(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
        return OutputWritten(name=name, size=written, truncated=truncated)

    def save_state(self, name: str, value: str) -> None:
        """Pass ``value`` to this action's post step (as ``STATE_<name>``)."""
        if not _valid_name(name):
            raise ValueError(f"state name {name!r} is not valid")
        if self.state_file is None:
            return
        delimiter = f"ghadelimiter_{uuid.uuid4()}"
        with self.state_file.open("a", encoding="utf-8") as fh:
            fh.write(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")

    def summary_room(self) -> int:
        """Bytes the step summary can still take."""
        used = 0
        if self.summary_file is not None and self.summary_file.exists():
            used = self.summary_file.stat().st_size
        return max(self.summary_limit - used, 0)

    def append_summary(self, markdown: str, *, redact: bool = True) -> bool:
        """Append to ``$GITHUB_STEP_SUMMARY``; False when there is no such file.

        ``redact=False`` is for markdown made of redacted records, where
        redacting the text could break its markup.

        Raises:
            ValueError: the text would push the summary over its limit, which
                would make the runner drop the whole summary.
        """
        data = (self.redact(markdown) if redact else markdown).encode("utf-8")
        room = self.summary_room()
        if len(data) > room:
            raise ValueError(
                f"step summary of {len(data)} bytes does not fit the {room} bytes left "
                f"of GitHub's {self.summary_limit}-byte limit; build it with that budget"
            )
        if self.summary_file is None:
            return False
        with self.summary_file.open("ab") as fh:
            fh.write(data)
        return True


def _env_path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name, "").strip()
    return Path(value) if value else None


def _valid_name(name: str) -> bool:
    return (
        bool(name)
        and (name[0].isalpha() or name[0] == "_")
        and all(c.isalnum() or c in "_-" for c in name)
        and name.isascii()
    )


def _shrink_output(
    value: str,
    size: int,
    limit: int,
    *,
    is_json: bool,
    full_value: str | None,
    redactor: Redactor,
) -> str:
    where = f"; the full value is in {full_value}" if full_value else ""
    note = (
        f"cut: {size} UTF-16 bytes do not fit the {limit} left for this output{where}"
    )
    if is_json:
        return json.dumps(
            {"truncated": True, "size": size, "file": full_value, "note": note}
        )
    tail = f"\n… {note}"
    # UTF-16 counts 2 bytes per BMP character and 4 beyond; cut by characters
    # until it fits, so the note always survives
    keep = max(limit // 2 - len(tail), 0)
    head = value[:keep]
    while head and utf16_size(head + tail) > limit:
        head = head[: len(head) - max(len(head) // 16, 1)]
    return redactor.trim_partial(head) + tail
