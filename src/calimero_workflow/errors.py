"""Errors the engine raises, and the ``Problem`` record that points at YAML.

Every error a user can cause by writing a workflow carries a :class:`Problem`
with the file, line and column of the offending value, so the CLI can print
``path:line:col: message`` and the GitHub Action can annotate that line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Location:
    """A position in a workflow file (1-based line and column)."""

    file: Path | None
    line: int
    col: int = 1

    def __str__(self) -> str:
        name = str(self.file) if self.file is not None else "<workflow>"
        return f"{name}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workflow, located where the user can fix it."""

    message: str
    location: Location | None = None
    hint: str | None = None

    def render(self) -> str:
        where = f"{self.location}: " if self.location is not None else ""
        text = f"{where}{self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class WorkflowError(Exception):
    """Base class of the engine's own errors."""


class WorkflowValidationError(WorkflowError):
    """The workflow file (or the command line) is invalid. Exit code 2."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(p.render() for p in self.problems))


class StepValidationError(WorkflowValidationError):
    """A step's configuration is invalid."""


class StepFailure(WorkflowError):
    """A step ran and failed. ``expected``/``actual`` are set for assertions."""

    def __init__(
        self,
        message: str,
        *,
        kind: str = "error",
        expected: object = None,
        actual: object = None,
        location: Location | None = None,
        hint: str | None = None,
        data: dict | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.expected = expected
        self.actual = actual
        self.location = location
        self.hint = hint
        self.data = data or {}


class PlaceholderError(StepFailure):
    """A ``${...}`` reference names a step, field or node that does not exist."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message, kind="placeholder", hint=hint)
