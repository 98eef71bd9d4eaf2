"""``BaseStep``, the step registry, and the shared run context steps use.

A step goes through four stages, always in this order:

1. **validate**: at load time, against its pydantic model. Values that hold
   run-time placeholders are type-checked later, once resolved.
2. **resolve**: just before it runs, placeholders become values and the
   model is validated again, strictly.
3. **execute**: the step's own ``async`` work, with ``timeout``,
   ``retries`` for transient node errors and ``expected_failure`` applied
   around it by :meth:`BaseStep.run`.
4. **store**: a named step's data lands in ``workflow_results[name]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import json
import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..backends.base import (
    BackendError,
    NodeNotRunningError,
    NodeUnavailableError,
    is_warning_or_error,
)
from ..client import NodeApiError, NodeClient, NodeConnectionError, NodeError
from ..credentials import url_secrets, values_in
from ..errors import Location, PlaceholderError, Problem, StepFailure
from ..placeholders import Resolver, Scope
from ..results import ErrorInfo, Status, StepRecord, error_from_exception
from ..validation import MAX_SECONDS, contains_deferred, locate, validate_model
from ..yamlsrc import LocatedDict
from .ids import id_problems

if TYPE_CHECKING:
    from ..backends.base import NodeBackend
    from ..workflow import Workflow

log = logging.getLogger("calimero_workflow.steps")


class OutputSpec(BaseModel):
    """The mapping form of an ``outputs:`` entry."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    #: A top-level key of the step's response (no dots).
    field: str
    #: Parse the value as JSON text first (``json:`` in YAML).
    parse_json: bool = Field(default=False, alias="json")
    #: A dotted path into the (parsed) value.
    path: str | None = None
    #: The variable name; ``{node_name}`` becomes the step's node.
    target: str | None = None


class StepConfig(BaseModel):
    """Keys every step accepts."""

    # Ids that YAML reads as numbers stay usable as text.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, coerce_numbers_to_str=True)

    type: str
    name: str | None = None
    description: str | None = None
    #: Seconds the step may take before it fails.
    timeout: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    #: Extra attempts after a transient node error (unreachable, 503, uninitialised).
    retries: int | None = Field(default=None, ge=0, le=100)
    #: First delay between attempts, doubled each time.
    retry_delay: float = Field(default=0.2, ge=0, le=MAX_SECONDS)
    #: The step passes only if its operation fails.
    expected_failure: bool = False
    #: With expected_failure: a substring the error must contain.
    expected_error: str | None = None
    #: Capture values into ``{{name}}`` variables: ``name: dotted.path`` or
    #: ``name: {field, path, json, target}`` (merobox's ``outputs:``).
    outputs: dict[str, str | OutputSpec] | None = None
    #: merobox's per-step JWT: accepted, not used (a note says so); masked.
    token: str | None = None


class NodeStepConfig(StepConfig):
    """A step that talks to one node."""

    node: str


# -- values every file system and process takes --------------------------------

#: The longest name of one path component, and of a whole path, in bytes (Linux).
NAME_MAX = 255
PATH_MAX = 4096


def path_text_problem(value: str) -> str | None:
    """Why ``value`` cannot name a file at all (a NUL, a name too long), or None."""
    if "\0" in value:
        return "it holds a NUL character"
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > PATH_MAX:
        return f"it is {size} bytes long (a path may have at most {PATH_MAX})"
    for part in value.split("/"):
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX:
            return f"a name in it is {size} bytes long (a file name may have at most {NAME_MAX})"
    return None


def _usable_path(value: str) -> str:
    problem = path_text_problem(value)
    if problem:
        raise ValueError(f"not a usable path: {problem}")
    return value


def process_text_problem(value: str) -> str | None:
    """What in ``value`` no program can be given, as an argument or an
    environment value ("a NUL character"), or None. A NUL would end the text
    there; a lone surrogate (JSON's ``"\\ud800"``) has no bytes at all."""
    if "\0" in value:
        return "a NUL character"
    try:
        os.fsencode(value)
    except UnicodeEncodeError as exc:
        return f"{value[exc.start]!r} (a lone surrogate, which has no bytes)"
    return None


def _no_nul(value: str) -> str:
    problem = process_text_problem(value)
    if problem:
        raise ValueError(f"text passed to a program cannot hold {problem}")
    return value


def _env_name(value: str) -> str:
    if not value or "=" in value or "\0" in value:
        raise ValueError(
            f"{value!r} cannot name an environment variable (it must be non-empty, "
            "without `=` or a NUL character)"
        )
    return value


#: A file name a step reads or writes: checked when the file loads, and again
#: once placeholders in it are resolved.
PathText = Annotated[str, AfterValidator(_usable_path)]
#: Text a program receives as an argument or an environment value.
ProcessText = Annotated[str, AfterValidator(_no_nul)]
#: The name of an environment variable.
EnvName = Annotated[str, AfterValidator(_env_name)]


# -- registry ----------------------------------------------------------------


class StepRegistry:
    """Maps a YAML ``type`` (and its aliases) to a step class."""

    def __init__(self) -> None:
        self._types: dict[str, type[BaseStep]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, cls: type[BaseStep]) -> type[BaseStep]:
        names = (cls.type_name, *cls.aliases)
        for name in names:
            if name in self._types or name in self._aliases:
                raise ValueError(f"step type {name!r} is registered twice")
        if not issubclass(cls.Config, StepConfig):
            raise TypeError(f"{cls.__name__}.Config must derive from StepConfig")
        self._types[cls.type_name] = cls
        for alias in cls.aliases:
            self._aliases[alias] = cls.type_name
        return cls

    def get(self, name: str) -> type[BaseStep] | None:
        canonical = self._aliases.get(name, name)
        return self._types.get(canonical)

    def canonical(self, name: str) -> str:
        return self._aliases.get(name, name)

    def names(self) -> list[str]:
        return sorted(self._types)

    def all_names(self) -> list[str]:
        return sorted([*self._types, *self._aliases])

    def classes(self) -> list[type[BaseStep]]:
        return [self._types[n] for n in self.names()]


registry = StepRegistry()


def register_step(cls: type[BaseStep]) -> type[BaseStep]:
    """Class decorator adding a step type to the default registry."""
    return registry.register(cls)


# -- run context ----------------------------------------------------------------


@dataclass
class NodeRef:
    """A node steps can address: local (started by a backend) or remote."""

    name: str
    url: str
    kind: str  # "embedded", "docker" or "remote"
    client: NodeClient
    info: dict[str, Any] = field(default_factory=dict)

    def as_placeholder(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "kind": self.kind, **self.info}


@dataclass(frozen=True)
class Halt:
    """A node that a fault step took down on purpose: stopped or paused."""

    #: "stopped" or "paused".
    how: str
    #: The step that did it, and its line.
    step: str
    line: int

    def describe(self, node: str) -> str:
        return f"{node} was {self.how} by step {self.step!r} (line {self.line})"

    def hint(self) -> str:
        if self.how == "paused":
            return "resume it with unpause_container before this step"
        return "start it again with start_node or restart_node before this step"


class RunEvents:
    """Callbacks the executor fires; reporters subclass this."""

    def phase_started(self, name: str) -> None: ...

    def phase_finished(self, record: Any) -> None: ...

    def step_started(self, step: BaseStep, path: str) -> None: ...

    def step_finished(self, record: StepRecord) -> None: ...

    def note(self, message: str) -> None: ...

    def secret(self, value: str) -> None:
        """``value`` is a credential found while the run goes on: mask it from now on."""


@dataclass
class RunContext:
    """State shared by every step of one run."""

    workflow: Workflow
    run_id: str
    workdir: Path
    resolver: Resolver
    env: dict[str, str]
    events: RunEvents
    backend: NodeBackend | None = None
    nodes: dict[str, NodeRef] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    #: ``{{name}}`` values: ``outputs:`` captures and per-node auto exports.
    captured: dict[str, Any] = field(default_factory=dict)
    #: Ready-wait timeout for start/restart steps.
    ready_timeout: float = 60.0
    #: Nodes the workflow stopped or paused, until a step brings them back.
    halted: dict[str, Halt] = field(default_factory=dict)
    #: Credentials masked wherever the run is shown or written (the run result's list).
    secrets: list[str] = field(default_factory=list)
    #: Local files the steps read (the run result's list): no result file may replace one.
    files_read: list[Path] = field(default_factory=list)

    def local_file(self, value: str) -> Path:
        """The file a step names (see :func:`workflow_file`), resolved and noted as read."""
        path = workflow_file(self.workflow.base_dir, value).resolve()
        if path not in self.files_read:
            self.files_read.append(path)
        return path

    def add_secret(self, value: str) -> None:
        """Mask ``value`` from now on, wherever the run is shown or written: a
        token obtained from a node, a credential a placeholder brought."""
        if isinstance(value, str) and value.strip() and value not in self.secrets:
            self.secrets.append(value)
            self.events.secret(value)

    @functools.cached_property
    def run_variables(self) -> dict[str, Any]:
        """``${run_id}``, ``${workflow_dir}`` and ``${workflow.*}``: fixed for the run."""
        folder = str(self.workflow.base_dir.resolve())
        return {
            "run_id": self.run_id,
            "workflow_dir": folder,
            "workflow": {
                "name": self.workflow.name,
                "file": str(self.workflow.path) if self.workflow.path else None,
                "dir": folder,
                "run_id": self.run_id,
            },
        }

    def scope(self, variables: dict[str, Any] | None = None, rng: random.Random | None = None) -> Scope:
        return Scope(
            results=self.results,
            nodes={n: ref.as_placeholder() for n, ref in self.nodes.items()},
            variables={**self.run_variables, **(variables or {})},
            env=self.env,
            captured=self.captured,
            rng=rng,
        )

    def node(self, name: str) -> NodeRef:
        if name not in self.nodes:
            raise StepFailure(
                f"no node named {name!r}",
                hint="nodes of this run: " + (", ".join(self.nodes) or "(none)"),
            )
        return self.nodes[name]

    def client(self, name: str) -> NodeClient:
        return self.node(name).client


@dataclass
class StepRun:
    """One execution of one step: where it sits, its variables, its log."""

    ctx: RunContext
    path: str
    variables: dict[str, Any] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    children: list[StepRecord] = field(default_factory=list)
    #: The node's own response (``data`` unwrapped, camelCase), which
    #: ``outputs:`` paths may name besides the step's snake_case results.
    response: Any = None
    #: Seeded random source for generators (fuzzy tests); None is unseeded.
    rng: random.Random | None = None
    #: Fire step events for reporters (off for the many operations of a fuzz).
    report: bool = True
    #: The record of this execution, as soon as it starts (kept when cancelled).
    record: StepRecord | None = None

    def log(self, line: str) -> None:
        self.logs.append(line)

    def scope(self) -> Scope:
        return self.ctx.scope(self.variables, self.rng)


# -- the step base class ------------------------------------------------------


@dataclass
class ValidationContext:
    """What static checks know about the workflow."""

    file: Path | None
    base_dir: Path
    node_names: set[str]
    remote_node_names: set[str]
    check_files: bool = True

    @property
    def all_nodes(self) -> set[str]:
        return self.node_names | self.remote_node_names


#: StepFailure kinds that never count as the expected failure: the workflow is
#: wrong, or (``response_assertion``) the operation worked and what it returned
#: missed the step's assertions, as merobox's assert_api_response has it.
_NOT_AN_OPERATION_FAILURE = frozenset(
    {"placeholder", "invalid", "capture", "expected_failure", "internal", "response_assertion"}
)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, NodeConnectionError):
        return True
    if isinstance(exc, NodeApiError):
        return exc.transient
    return False


class BaseStep:
    """A step of a workflow. Subclasses set ``type_name``, ``Config``, ``execute``."""

    type_name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StepConfig]] = StepConfig
    #: Keys left unresolved by the generic resolver (nested steps resolve
    #: them themselves, per iteration).
    deferred_keys: ClassVar[frozenset[str]] = frozenset()
    #: Transient-error retries when the YAML does not say.
    default_retries: ClassVar[int] = 0
    #: One line for the README's step reference.
    summary: ClassVar[str] = ""
    #: Automatic ``{{…}}`` exports: variable template (``{node}`` is the
    #: step's node) → key of the step's data, or ``*`` for all of it.
    exports: ClassVar[dict[str, str]] = {}

    def __init__(self, raw: LocatedDict, *, file: Path | None, index: int):
        self.raw = raw
        self.file = file
        self.index = index
        self.location = Location(file, getattr(raw, "line", 0) or 1, getattr(raw, "col", 0) or 1)
        name = raw.get("name")
        self.explicit_name: str | None = name if isinstance(name, str) and name else None
        self.display_name = self.explicit_name or f"{self.type_name} #{index + 1}"
        #: The model built at load time when no placeholder was involved.
        self.static_config: StepConfig | None = None

    # -- stage 1: validation --------------------------------------------------

    def validate(self, vctx: ValidationContext) -> list[Problem]:
        not_json = self.non_json_problems()
        config, problems = validate_model(
            self.Config,
            self._validatable(self.raw),
            self.file,
            what=f"step {self.display_name!r} ({self.type_name})",
            tolerate_deferred=True,
        )
        # Said once: a date where text is wanted is the date's problem.
        said = {p.location for p in not_json}
        problems = not_json + [p for p in problems if p.location not in said]
        # Positions in the error refer to self.raw; _validatable keeps keys.
        if config is not None:
            self.static_config = config
            problems.extend(self.check(config, vctx))
        problems.extend(self.check_raw(vctx))
        problems.extend(
            p for p in id_problems(self.Config, self.raw, self.file, (), self._what())
            if p.location not in said
        )
        return problems

    def _what(self) -> str:
        return f"step {self.display_name!r} ({self.type_name})"

    def _validatable(self, raw: LocatedDict) -> Any:
        return raw

    def non_json_problems(self) -> list[Problem]:
        """Values YAML makes that JSON has no form for (a date, ``!!binary``,
        ``!!set``, ``.nan``): refused where they are written, since a step's
        values reach nodes, scripts and reports as JSON."""
        problems = []
        for key, item in self.raw.items():
            if key in _NESTED_STEP_KEYS:
                continue  # nested steps check their own values
            for path, value in _non_json_values(item, (key,)):
                kind, shown, hint = _non_json_kind(value)
                dotted = ".".join(str(p) for p in path)
                problems.append(
                    Problem(
                        f"step {self.display_name!r} ({self.type_name}): {dotted}: "
                        f"{shown} is a YAML {kind}, not JSON data",
                        locate(self.raw, path, self.file),
                        hint,
                    )
                )
        return problems

    def check(self, config: StepConfig, vctx: ValidationContext) -> list[Problem]:
        """Semantic checks on a valid model (node names, files...)."""
        problems: list[Problem] = []
        if config.expected_error is not None and not config.expected_failure:
            problems.append(
                self.problem(
                    "expected_error is set but expected_failure is not",
                    key="expected_error",
                    hint="add `expected_failure: true`",
                )
            )
        return problems

    def check_raw(self, vctx: ValidationContext) -> list[Problem]:
        """Checks that work on raw values even when they hold placeholders."""
        problems = []
        node = self.raw.get("node")
        if isinstance(node, str) and "${" not in node and "{{" not in node:
            if vctx.all_nodes and node not in vctx.all_nodes:
                problems.append(self.unknown_node_problem(node, "node", vctx))
        return problems

    def unknown_node_problem(self, node: str, key: str, vctx: ValidationContext) -> Problem:
        import difflib

        known = sorted(vctx.all_nodes)
        close = difflib.get_close_matches(node, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return self.problem(
            f"step {self.display_name!r} uses node {node!r}, which the workflow does not define",
            key=key,
            hint=hint + "nodes: " + ", ".join(known),
        )

    def problem(self, message: str, *, key: str | None = None, hint: str | None = None) -> Problem:
        return Problem(message, self.key_location(key), hint)

    def key_location(self, key: str | None) -> Location:
        if key is not None and isinstance(self.raw, LocatedDict) and key in self.raw:
            line, col = self.raw.value_pos(key)
            return Location(self.file, line, col)
        return self.location

    # -- stage 2: resolution ----------------------------------------------------

    def resolve(self, run: StepRun) -> StepConfig:
        """Resolve placeholders and validate the result strictly."""
        scope = run.scope()
        # Located like the step itself, so that a value found invalid once
        # resolved is reported at its own key.
        resolved = LocatedDict()
        try:
            for key, value in self.raw.items():
                if key not in self.deferred_keys:
                    resolved[key] = self._resolve_at(value, (key,), run.ctx.resolver, scope)
        finally:
            # as soon as they are known, before anything (a placeholder of
            # another key, the checks below) can fail the step
            self.register_secrets(resolved, run)
        resolved.line, resolved.col = self.location.line, self.location.col
        if isinstance(self.raw, LocatedDict):
            resolved.key_marks = dict(self.raw.key_marks)
            resolved.value_marks = dict(self.raw.value_marks)
        for key in self.deferred_keys:
            if key in self.raw:
                resolved[key] = self.raw[key]
        config, problems = validate_model(
            self.Config, resolved, self.file, what=f"step {self.display_name!r}"
        )
        if config is None:
            first = problems[0]
            raise StepFailure(
                "invalid value after resolving placeholders: "
                + "; ".join(p.message for p in problems),
                kind="invalid",
                location=self._relocate(first.location),
                hint=first.hint,
            )
        return config

    def register_secrets(self, resolved: Mapping[str, Any], run: StepRun) -> None:
        """Mask the credentials among the step's values, placeholders resolved
        (``resolved`` may lack the keys whose placeholders failed, and is not
        validated yet): by default those of URLs (a user part's password,
        token-like query values), wherever a placeholder put them. Those
        written out in the file are known from the load (Workflow.secret_values)."""
        placed = {k: v for k, v in resolved.items() if contains_deferred(self.raw.get(k))}
        for text in values_in(placed):
            if "://" in text:
                for secret in url_secrets(text):
                    run.ctx.add_secret(secret)

    def _resolve_at(self, value: Any, path: tuple[Any, ...], resolver: Resolver, scope: Scope) -> Any:
        """Resolve one value; a placeholder that fails is located at its own key."""
        if isinstance(value, dict):
            return {k: self._resolve_at(v, (*path, k), resolver, scope) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve_at(v, (*path, i), resolver, scope) for i, v in enumerate(value)]
        try:
            return resolver.resolve(value, scope)
        except PlaceholderError as exc:
            exc.location = exc.location or locate(self.raw, path, self.file) or self.location
            raise

    def _relocate(self, loc: Location | None) -> Location:
        # A resolved dict has no marks; point at the step's own key instead.
        return loc if loc is not None and loc.line > 0 else self.location

    # -- stage 3: execution -------------------------------------------------------

    async def execute(self, config: Any, run: StepRun) -> dict[str, Any]:
        """Do the step's work; return the data stored as its results."""
        raise NotImplementedError

    def node_of(self, config: Any) -> str | None:
        return getattr(config, "node", None)

    async def run(self, run: StepRun) -> StepRecord:
        """Resolve, execute with timeout/retries/expected_failure, and record."""
        ctx = run.ctx
        if run.report:
            ctx.events.step_started(self, run.path)
        started = time.perf_counter()
        #: Node log lines from here on belong to this step.
        since = time.time()
        record = StepRecord(
            name=self.display_name,
            type=self.type_name,
            path=run.path,
            status=Status.PASSED,
            location=self.location,
        )
        run.record = record
        config: StepConfig | None = None
        cause: BaseException | None = None
        try:
            config = self.resolve(run)
            record.node = self.node_of(config)
            data, attempts = await self._execute_with_policy(config, run)
            record.attempts = attempts
            if config.expected_failure:
                raise StepFailure(
                    "expected this step to fail, but it succeeded",
                    kind="expected_failure",
                    expected="failure" + (f" containing {config.expected_error!r}" if config.expected_error else ""),
                    actual="success",
                    location=self.location,
                    hint="remove `expected_failure` if the step is meant to succeed, or give "
                    "a `call` that may go either way `allow_failure` instead (older merobox "
                    "only warned when such a call succeeded; current merobox fails it too)",
                )
            record.data = data
            self.export(config, data, run)
        except StepFailure as exc:
            cause = exc
            if exc.location is None:
                exc.location = self.location
            # Configuration mistakes never count as the expected failure.
            expected = (
                config is not None
                and config.expected_failure
                and exc.kind not in _NOT_AN_OPERATION_FAILURE
            )
            if expected:
                record.data = {**exc.data, **self._expected_failure_data(exc)}
                self.export(config, record.data, run, lenient=True)
                problem = self._expected_error_mismatch(config, exc)
                if problem:
                    record.status = Status.FAILED
                    record.error = problem
                else:
                    run.log(f"failed as expected: {exc}")
            else:
                record.status = Status.FAILED
                record.error = error_from_exception(exc)
                record.data = exc.data
        except (NodeError, BackendError) as exc:
            cause = exc
            handled = config is not None and config.expected_failure
            if handled:
                record.data = self._expected_failure_data(exc)
                self.export(config, record.data, run, lenient=True)
                problem = self._expected_error_mismatch(config, exc)
                if problem:
                    record.status = Status.FAILED
                    record.error = problem
                else:
                    run.log(f"failed as expected: {exc}")
            else:
                record.status = Status.FAILED
                record.error = await self._error_for(exc, run)
        except TimeoutError:
            limit = config.timeout if config else None
            message = f"step timed out after {limit:g} s" if limit else "step timed out"
            node = self.node_of(config) if config is not None else None
            if node in ctx.halted:  # a paused node answers nothing
                message += f": {ctx.halted[node].describe(node)}"
            if config is not None and config.expected_failure:
                failure = StepFailure(message, kind="timeout")
                record.data = self._expected_failure_data(failure)
                problem = self._expected_error_mismatch(config, failure)
                if problem:
                    record.status = Status.FAILED
                    record.error = problem
                else:
                    run.log(f"failed as expected: {message}")
            else:
                record.status = Status.FAILED
                record.error = ErrorInfo(
                    message=message,
                    kind="timeout",
                    location=self.key_location("timeout"),
                    hint="raise `timeout:` on the step if the operation is legitimately slow",
                )
        except asyncio.CancelledError:
            # Cut short (an interrupt, a fail-fast sibling, a timeout): not a
            # failure of this step. Whoever cancelled it may say why.
            record.status = Status.SKIPPED
            record.error = ErrorInfo(
                message="stopped before it finished", kind="cancelled", location=self.location
            )
            record.duration_s = time.perf_counter() - started
            record.logs = run.logs
            record.children = run.children
            if run.report:
                ctx.events.step_finished(record)
            raise
        except Exception as exc:  # a bug in a step: fail it, keep the run going to cleanup
            log.exception("step %s crashed", self.display_name)
            record.status = Status.FAILED
            record.error = ErrorInfo(
                message=f"internal error in step {self.type_name}: {type(exc).__name__}: {exc}",
                kind="internal",
                location=self.location,
                hint="this is a bug in calimero-workflow; please report it with this workflow",
            )
        record.duration_s = time.perf_counter() - started
        record.logs = run.logs
        record.children = run.children
        kept: dict[str, str] = {}
        if record.status is Status.FAILED and record.node and ctx.backend is not None:
            record.node_logs, kept = await self._node_logs(ctx, record, since, cause)
        if record.status is Status.PASSED and self.explicit_name:
            ctx.results[self.explicit_name] = record.data
        if run.report:
            ctx.events.step_finished(record)
        if kept:
            # The console has shown what bears on the failure; the reports
            # written from the record after the run (JUnit, the summary) keep
            # the node's last lines whatever the failure.
            record.node_logs = kept
        return record

    def export(self, config: StepConfig, data: dict[str, Any], run: StepRun, *, lenient: bool = False) -> None:
        """Apply the automatic exports and the step's ``outputs:`` captures."""
        captured = run.ctx.captured
        node = self.node_of(config) or ""
        for template, key in self.exports.items():
            if key == "*":
                captured[template.format(node=node)] = data
            elif key in data and data[key] is not None:
                captured[template.format(node=node)] = data[key]
        if not config.outputs:
            return
        source: dict[str, Any] = {}
        if isinstance(run.response, dict):
            source.update(run.response)
        source.update(data)
        self.capture(config, source, run, lenient=lenient, data=data)

    def capture(
        self, config: StepConfig, source: dict[str, Any], run: StepRun, *,
        lenient: bool = False, data: dict[str, Any] | None = None,
    ) -> None:
        """Bind the step's ``outputs:`` from ``source`` into the ``{{…}}`` values."""
        from ..placeholders import split_path, traverse

        captured = run.ctx.captured
        node = self.node_of(config) or ""
        for name, spec in (config.outputs or {}).items():
            try:
                if isinstance(spec, str):
                    value = traverse(source, split_path(spec), "the response")
                    target = name.replace("{node_name}", node)
                else:
                    if spec.field not in source:
                        raise PlaceholderError(
                            f"the response has no field {spec.field!r}",
                            hint="available keys: " + ", ".join(map(str, source)),
                        )
                    value = source[spec.field]
                    if spec.parse_json and isinstance(value, str):
                        try:
                            value = json.loads(value)
                        except ValueError:
                            raise PlaceholderError(f"field {spec.field!r} is not JSON text: {value[:100]!r}") from None
                    if spec.path:
                        value = traverse(value, split_path(spec.path), spec.field)
                    target = (spec.target or name).replace("{node_name}", node)
            except PlaceholderError as exc:
                if lenient:
                    continue
                raise StepFailure(
                    f"output {name!r} cannot be captured: {exc.message}",
                    kind="capture",
                    location=self._output_location(name),
                    hint=exc.hint or ("available keys: " + ", ".join(map(str, source))),
                    data=data or {},
                ) from None
            captured[target] = value

    def _output_location(self, name: str) -> Location:
        outputs = self.raw.get("outputs")
        if isinstance(outputs, LocatedDict) and name in outputs:
            return Location(self.file, *outputs.key_pos(name))
        return self.key_location("outputs")

    def transient_retries(self, config: StepConfig) -> int:
        """Extra attempts after a transient node error (``retries``, else the default)."""
        return config.retries if config.retries is not None else self.default_retries

    async def _execute_with_policy(
        self, config: StepConfig, run: StepRun
    ) -> tuple[dict[str, Any], int]:
        retries = self.transient_retries(config)
        delay = config.retry_delay
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(config.timeout or None):
                    data = await self.execute(config, run)
                return (data if data is not None else {}), attempt
            except (NodeError, BackendError) as exc:
                halted = _halted(run.ctx, exc)
                explicit = config.retries is not None and attempt <= retries
                if halted is not None and (
                    not explicit or config.expected_failure or not _is_transient(exc)
                ):
                    # The workflow took the node down itself: say so, at once
                    # (unless the step asked for retries, to ride out a restart).
                    node, halt = halted
                    raise StepFailure(
                        halt.describe(node),
                        kind="node_halted",
                        hint=halt.hint(),
                        location=self.location,
                    ) from exc
                if attempt > retries or not _is_transient(exc) or config.expected_failure:
                    raise
                run.log(f"attempt {attempt} failed ({exc}); retrying in {delay:.2f}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    @staticmethod
    def _expected_failure_data(exc: BaseException) -> dict[str, Any]:
        data: dict[str, Any] = {"error": str(exc), "error_message": str(exc)}
        if isinstance(exc, NodeApiError):
            data.update(
                error_type=exc.error_type,
                # An HTTP failure's status; a JSON-RPC error has no code (as with merod).
                error_code=exc.status if exc.status is not None and exc.status >= 400 else None,
                error_message=exc.message,
                error_data=exc.data,
            )
        elif isinstance(exc, StepFailure):
            data.update(error_type=exc.kind, error_code=None)
        else:
            data.update(error_type=type(exc).__name__, error_code=None)
        return data

    def _expected_error_mismatch(self, config: StepConfig, exc: BaseException) -> ErrorInfo | None:
        wanted = config.expected_error
        text = str(exc)
        if isinstance(exc, NodeApiError):
            text = f"{exc.error_type}: {exc.message} {exc.data if exc.data is not None else ''}"
        if wanted and wanted not in text:
            return ErrorInfo(
                message="the step failed as expected, but not with the expected error",
                kind="expected_error",
                expected=wanted,
                actual=str(exc),
                location=self.key_location("expected_error"),
            )
        return None

    async def _error_for(self, exc: BaseException, run: StepRun) -> ErrorInfo:
        info = error_from_exception(exc)
        info.location = self.location
        if isinstance(exc, NodeApiError):
            info.kind = exc.error_type
        if isinstance(exc, NodeUnavailableError):
            info.kind = "node_unavailable"
        elif isinstance(exc, NodeConnectionError) and run.ctx.backend is not None:
            # Say it plainly when the node died under the step.
            node = exc.node
            if node in run.ctx.nodes and run.ctx.nodes[node].kind != "remote":
                try:
                    state = await run.ctx.backend.node_state(node)
                except Exception:  # the backend may not know the node any more
                    state = None
                if state is not None and not state.running:
                    info.message = f"node {node} {_death(state)}: {exc}"
                    info.kind = "node_died"
        return info

    @staticmethod
    async def _node_logs(
        ctx: RunContext, record: StepRecord, since: float, cause: BaseException | None
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The node log lines shown with a failure, and those kept for the reports.

        Shown: only what bears on this step. The last lines when the node
        died, the lines written during the step when the node failed (HTTP
        5xx), and otherwise the warnings and errors it logged during the
        step; nothing for a node the workflow stopped itself. Kept: the
        node's last lines. All of its log is in the run's ``node-logs/``.
        """
        node = record.node
        backend = ctx.backend
        if node not in ctx.nodes or ctx.nodes[node].kind == "remote" or backend is None:
            return {}, {}
        kind = record.error.kind if record.error else None
        try:
            tail = (await backend.tail_logs(node, 50)).splitlines()
            if node in ctx.halted:
                lines = []
            elif kind in ("node_died", "node_unavailable") or isinstance(cause, NodeUnavailableError):
                lines = tail
            else:
                lines = await backend.logs_since(node, since)
                failed = isinstance(cause, NodeApiError) and (cause.status or 0) >= 500
                if not failed:
                    lines = [line for line in lines if is_warning_or_error(line)]
        except Exception:  # logs are best effort; the failure itself matters more
            return {}, {}
        shown = {node: "\n".join(lines[-50:])} if lines else {}
        return shown, ({node: "\n".join(tail)} if tail else {})


def _halted(ctx: RunContext, exc: BaseException) -> tuple[str, Halt] | None:
    """The node an error is about, when the workflow took that node down: it
    does not answer, or (a fault step) it does not run."""
    node = getattr(exc, "node", None)
    if node not in ctx.halted:
        return None
    if isinstance(exc, (NodeConnectionError, NodeNotRunningError)):
        return node, ctx.halted[node]
    return None


def _non_json_values(value: Any, path: tuple[Any, ...]):
    """``(path, value)`` of every value below ``value`` that JSON cannot hold."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _non_json_values(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _non_json_values(item, (*path, index))
    elif isinstance(value, (datetime.date, bytes, set)) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        yield path, value


#: Keys whose values are nested steps, each validated on its own.
_NESTED_STEP_KEYS = frozenset({"steps", "groups", "operations"})


def _non_json_kind(value: Any) -> tuple[str, str, str]:
    """What a non-JSON value is, how to show it, and the hint."""
    if isinstance(value, datetime.date):
        text = value.isoformat(sep=" ") if isinstance(value, datetime.datetime) else value.isoformat()
        return "date", text, f"quote it to pass it as text: '{text}'"
    if isinstance(value, bytes):
        return "binary value (!!binary)", f"{len(value)} bytes", "give the data as text, e.g. base64 in quotes"
    if isinstance(value, set):
        shown = json.dumps(sorted(map(str, value)), ensure_ascii=False)
        return "set (!!set)", shown, "write a list instead: [a, b]"
    shown = ".nan" if math.isnan(value) else ".inf" if value > 0 else "-.inf"
    return "non-finite number", shown, f"JSON has no {shown}; quote it to pass it as text"


def _death(state: Any) -> str:
    """How a node ended: its exit code, the signal behind it, and the OOM flag."""
    code = state.exit_code
    if state.oom_killed:
        return f"died: exit code {code}, killed for lack of memory (OOM)"
    if code == 0:  # stopped, by stop_node or on its own
        return "is not running (exit code 0)"
    how = ""
    if isinstance(code, int) and 128 < code < 128 + signal.NSIG:
        with contextlib.suppress(ValueError):
            how = f" (killed by {signal.Signals(code - 128).name})"
    return f"died: exit code {code}{how}, not out of memory"


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long, a NUL: nothing is there
        return False


def workflow_file(base_dir: Path, value: str) -> Path:
    """Where a file a workflow names is: next to the workflow file, or, when
    nothing is there, under the working directory, where merobox files name
    their files from (``path: workflow-examples/res/app.wasm``)."""
    beside = base_dir / value
    if _exists(beside):
        return beside
    from_cwd = Path.cwd() / value
    return from_cwd if _exists(from_cwd) else beside


def file_hint(base_dir: Path) -> str:
    return (
        f"paths are relative to the workflow file's folder ({base_dir}), "
        f"else to the working directory ({Path.cwd()})"
    )


def child_run(run: StepRun, path: str, **variables: Any) -> StepRun:
    return StepRun(
        ctx=run.ctx, path=path, variables={**run.variables, **variables}, rng=run.rng, report=run.report
    )


StepFactory = Callable[[LocatedDict, int], BaseStep]
