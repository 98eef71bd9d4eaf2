"""What a run produced: phases, steps, captured results, as plain data.

Reporters (console, JSON, JUnit, step summary, annotations) read these
records and nothing else, so each can be tested by building records by hand.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import Location, Problem


class Status(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


@dataclass
class ErrorInfo:
    """Why something failed, with the YAML position that explains it."""

    message: str
    kind: str = "error"
    expected: Any = None
    actual: Any = None
    location: Location | None = None
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "message": self.message,
            "kind": self.kind,
            "hint": self.hint,
            "location": str(self.location) if self.location else None,
        }
        if self.expected is not None or self.actual is not None:
            data["expected"] = self.expected
            data["actual"] = self.actual
        return data


@dataclass
class StepRecord:
    """One executed (or skipped) step."""

    name: str
    type: str
    #: Path in the step tree, e.g. ``repeat[2]/call set``.
    path: str
    status: Status
    duration_s: float = 0.0
    location: Location | None = None
    error: ErrorInfo | None = None
    data: dict[str, Any] = field(default_factory=dict)
    #: Lines produced by the step: app logs, events, notes.
    logs: list[str] = field(default_factory=list)
    #: Tail of node logs captured when the step failed, per node.
    node_logs: dict[str, str] = field(default_factory=dict)
    children: list[StepRecord] = field(default_factory=list)
    attempts: int = 1
    #: The step failed but was configured not to stop the workflow.
    non_blocking: bool = False
    node: str | None = None

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "path": self.path,
            "status": str(self.status),
            "duration_s": round(self.duration_s, 6),
            "location": str(self.location) if self.location else None,
            "node": self.node,
            "attempts": self.attempts,
            "non_blocking": self.non_blocking,
            "error": self.error.to_dict() if self.error else None,
            # what a failed step got before it failed (a passed one's data is
            # in workflow_results)
            **({"data": self.data} if self.status is Status.FAILED and self.data else {}),
            "children": [c.to_dict() for c in self.children],
        }


@dataclass
class PhaseRecord:
    """One lifecycle phase of the run."""

    name: str
    status: Status
    duration_s: float = 0.0
    detail: str = ""
    error: ErrorInfo | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": str(self.status),
            "duration_s": round(self.duration_s, 6),
            "detail": self.detail,
            "error": self.error.to_dict() if self.error else None,
            "data": self.data,
        }


@dataclass
class RunResult:
    """Everything about one workflow run."""

    workflow_name: str
    workflow_file: str | None
    run_id: str
    backend: str
    #: Skipped until the run decides: a result whose run never began (the
    #: action was cancelled first) must never read as passed.
    status: Status = Status.SKIPPED
    phases: list[PhaseRecord] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    workflow_results: dict[str, Any] = field(default_factory=dict)
    image: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    node_log_files: dict[str, str] = field(default_factory=dict)
    started_at: float = 0.0
    duration_s: float = 0.0
    interrupted: bool = False
    #: Credentials of the workflow, masked wherever the run is shown or written.
    secrets: list[str] = field(default_factory=list, repr=False)
    #: Local files the steps read: no result file written after the run may replace one.
    files_read: list[Path] = field(default_factory=list, repr=False)

    @property
    def passed(self) -> bool:
        return self.status is Status.PASSED
    def all_steps(self):
        for step in self.steps:
            yield from step.walk()

    def reported_steps(self) -> list[StepRecord]:
        """The steps reports list and count, in order: every step without nested
        steps, plus a parent step that failed on its own (none of its nested
        steps failed, e.g. a ``repeat`` whose ``outputs:`` capture failed)."""
        out: list[StepRecord] = []

        def visit(step: StepRecord) -> bool:
            if not step.children:
                out.append(step)
                return step.status is Status.FAILED
            mark = len(out)
            failed_below = False
            for child in step.children:
                failed_below = visit(child) or failed_below
            if step.status is Status.FAILED and not failed_below:
                out.insert(mark, step)
                return True
            return failed_below

        for step in self.steps:
            visit(step)
        return out

    def failed_phases(self) -> list[PhaseRecord]:
        """Phases that failed for a reason of their own.

        Not the ``steps`` phase when it failed because a step did (the step is
        the failure), and not a phase cut short by a cancellation, which is no
        failure of the workflow.
        """
        return [
            phase
            for phase in self.phases
            if phase.status is Status.FAILED
            and not (phase.error is not None and phase.error.kind == "cancelled")
            and not (
                phase.name == "steps"
                and (phase.error is None or phase.error.kind == "steps")
            )
        ]

    def counts(self) -> dict[str, int]:
        """Counts of what the reports list: the steps of :meth:`reported_steps`,
        and each failed phase (:meth:`failed_phases`) as one more failure."""
        counts = {"total": 0, "passed": 0, "failed": 0, "skipped": 0}
        for step in self.reported_steps():
            counts["total"] += 1
            counts[str(step.status)] += 1
        failed_phases = len(self.failed_phases())
        counts["total"] += failed_phases
        counts["failed"] += failed_phases
        return counts

    def failed_steps(self) -> list[StepRecord]:
        return [s for s in self.reported_steps() if s.status is Status.FAILED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow": self.workflow_name,
            "file": self.workflow_file,
            "run_id": self.run_id,
            "backend": self.backend,
            "status": str(self.status),
            "interrupted": self.interrupted,
            "duration_s": round(self.duration_s, 6),
            "image": self.image,
            "nodes": self.nodes,
            "node_log_files": self.node_log_files,
            "counts": self.counts(),
            "phases": [p.to_dict() for p in self.phases],
            "steps": [s.to_dict() for s in self.steps],
            "workflow_results": self.workflow_results,
        }


def problems_result(
    name: str,
    file: str | None,
    backend: str,
    problems: Sequence[Problem],
    *,
    phase: str = "load",
) -> RunResult:
    """A failed result for a workflow that never ran: each problem is a failed
    ``phase`` at its ``file:line`` (reports show it as an error testcase). The
    phases share the name (``load``); their locations tell them apart."""
    result = RunResult(
        workflow_name=name,
        workflow_file=file,
        run_id="-",
        backend=backend,
        status=Status.FAILED,
        started_at=time.time(),
    )
    for problem in problems:
        result.phases.append(
            PhaseRecord(
                name=phase,
                status=Status.FAILED,
                error=ErrorInfo(
                    message=problem.message,
                    kind="invalid",
                    location=problem.location,
                    hint=problem.hint,
                ),
            )
        )
    return result


def error_from_exception(exc: BaseException) -> ErrorInfo:
    """Best-effort :class:`ErrorInfo` for any exception."""
    from .errors import StepFailure

    if isinstance(exc, StepFailure):
        return ErrorInfo(
            message=exc.message,
            kind=exc.kind,
            expected=exc.expected,
            actual=exc.actual,
            location=exc.location,
            hint=exc.hint,
        )
    hint = getattr(exc, "hint", None)
    return ErrorInfo(message=str(exc) or type(exc).__name__, kind=type(exc).__name__, hint=hint)


__all__ = [
    "ErrorInfo",
    "PhaseRecord",
    "RunResult",
    "Status",
    "StepRecord",
    "error_from_exception",
    "problems_result",
]
