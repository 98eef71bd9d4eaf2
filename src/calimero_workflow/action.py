"""The GitHub Action: environment in, reports and an exit code out.

The runner starts the action image with ``INPUT_<NAME>`` variables (dashes
kept, e.g. ``INPUT_JUNIT-PATH``) and the ``GITHUB_*`` paths of this step. The
entry point is a pipeline of small stages:

1. :func:`read_settings` validates every input into a frozen
   :class:`ActionSettings` (tests pass plain dicts);
2. :func:`discover_workflows` expands the ``workflows`` globs inside the
   workspace, refusing anything that escapes it;
3. each file is loaded; a file that does not load becomes a failed result
   with its problems at their ``file:line`` (no exception escapes);
4. each workflow runs with :class:`WorkflowExecutor`, again on failure up to
   ``retries`` times, each attempt bounded by ``timeout-minutes``;
5. JUnit XML, the step summary, annotations and outputs are written
   (:mod:`.report.action`), and the files handed to the workspace's owner
   (the action runs as root).

Called with arguments (``docker run <image> run wf.yml``) the image is the
plain ``calimero-workflow`` command line instead; ``post`` is the action's
post step, which removes whatever Docker objects a run left behind.
"""

from __future__ import annotations

import asyncio
import fnmatch
import glob
import logging
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

from .backends.docker import image_reference_problem
from .cli import EXIT_INTERRUPTED, EXIT_OK
from .errors import Problem, WorkflowValidationError
from .executor import BACKENDS, WorkflowExecutor, new_run_id
from .gitindex import tracked_paths
from .interrupts import Interrupts
from .masking import mask_env_secrets, runner_tokens, scrub_runner_tokens
from .node.interrupt import time_limit_from
from .report.action import (
    STATUS_CANCELLED,
    STATUS_FAILED,
    STATUS_INVALID,
    ActionRun,
    count_workflows,
    exit_code,
    node_log_folders,
    write_reports,
)
from .report.console import ConsoleReporter, inert_line, sanitize, sanitize_line
from .report.github import MIN_SECRET_CHARS, Annotation, GitHub, Redactor
from .report.summary import RETRY_PHASE, display_path, failures_of
from .results import (
    ErrorInfo,
    PhaseRecord,
    RunResult,
    Status,
    StepRecord,
    problems_result,
)
from .workspace import MARKER, NewFiles, Workspace, workspace_owner

__all__ = [
    "ActionSettings",
    "Discovery",
    "INPUTS",
    "InputError",
    "discover_workflows",
    "main",
    "post",
    "read_settings",
    "run_action",
]

log = logging.getLogger("calimero_workflow.action")

#: Every input of action.yml with the default the entry point assumes when
#: the variable is absent (a ``docker run`` without the runner).
INPUTS: Mapping[str, str] = MappingProxyType(
    {
        "workflows": "",
        "image": "",
        "backend": "docker",
        "env": "",
        "working-directory": ".",
        "junit-path": "calimero-workflow-results/junit.xml",
        "summary": "true",
        "annotations": "true",
        "retries": "0",
        "fail-on-failure": "true",
        "timeout-minutes": "0",
        "node-logs-dir": "calimero-workflow-results/node-logs",
    }
)

_MAX_RETRIES = 10
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Numeric inputs are ASCII digits: str.isdigit() and float() also take
#: '²', '٣', '1_0', '1e3', 'nan' and 'inf'.
_WHOLE_NUMBER = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
#: Variables of the action's own environment a workflow must not read:
#: the inputs, and the runner's tokens for the Actions services.
_HIDDEN_ENV = re.compile(r"^(INPUT_|ACTIONS_)")
_TRUE = ("true", "True", "TRUE")
_FALSE = ("false", "False", "FALSE")
#: Groups of step logs printed per workflow attempt; the rest is in the reports.
_MAX_LOG_GROUPS = 20
#: The files the reports are written to, beside ``junit-path`` (which may
#: not have one of their names, nor the marker's).
_REPORT_NAMES = ("summary.md", "results.json", "failed-steps.json", "report.json")
#: Files of a repository that ``junit-path`` may never name, whatever is
#: there: names, and the part of a name before its first dot (``README.md``,
#: ``LICENSE.txt``). Other files are safe by the rules of :mod:`.workspace`.
_REPOSITORY_NAMES = frozenset(
    {
        ".gitignore", ".gitattributes", ".gitmodules", ".mailmap", "action.yml",
        "action.yaml", "dockerfile", "makefile", "package.json", "pyproject.toml",
        "setup.py", "setup.cfg", "cargo.toml", "cargo.lock", "go.mod", "go.sum",
    }
)  # fmt: skip
_REPOSITORY_STEMS = frozenset(
    {
        "readme", "license", "licence", "copying", "changelog", "contributing",
        "security", "codeowners", "notice", "authors",
    }
)  # fmt: skip


class InputError(Exception):
    """One or more inputs are invalid; each message names the input and value."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class ActionSettings:
    """Every input, validated, with paths resolved inside the workspace."""

    workspace: Path
    workflows: tuple[str, ...]
    image: str | None
    backend: str
    env: Mapping[str, str]
    working_directory: Path
    junit_path: Path
    summary: bool
    annotations: bool
    retries: int
    fail_on_failure: bool
    timeout_minutes: float
    node_logs_dir: Path
    #: Scratch space for node data, outside the workspace.
    workdir: Path

    @property
    def reports_dir(self) -> Path:
        """Where the summary, results and failed-steps files go: beside the JUnit file."""
        return self.junit_path.parent

    @property
    def report_files(self) -> tuple[Path, ...]:
        """Every file the reports are written to."""
        return (self.junit_path, *(self.reports_dir / n for n in _REPORT_NAMES))


# -- stage 1: settings ----------------------------------------------------------------


def _input(env: Mapping[str, str], name: str) -> str:
    """The runner's spelling (``INPUT_JUNIT-PATH``) first, then ``INPUT_JUNIT_PATH``."""
    for key in (f"INPUT_{name.upper()}", f"INPUT_{name.upper().replace('-', '_')}"):
        if key in env:
            return env[key].strip()
    return INPUTS[name]


def _bool(env: Mapping[str, str], name: str, problems: list[str]) -> bool:
    value = _input(env, name)
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    problems.append(f"input {name} must be true or false, got {value!r}")
    return INPUTS[name] == "true"


def _confined(
    workspace: Path,
    base: Path,
    value: str,
    what: str,
    problems: list[str],
    *,
    to_write: bool = False,
) -> Path:
    """``value`` against ``base``; it must stay inside ``workspace``.

    A path to read is resolved (links followed, so one that points outside
    is outside). A path ``to_write`` is normalised without following links:
    the action never writes through one (:func:`_folders_fit` refuses them).
    """
    if to_write:
        path = Path(os.path.normpath(base / value))
    else:
        path = (base / value).resolve()
    if path != workspace and not path.is_relative_to(workspace):
        problems.append(
            f"{what} {value!r} is outside the workspace {workspace}: use a path inside the repository"
        )
    return path


def _folders_fit(
    workspace: Path, folder: Path, what: str, value: str, problems: list[str]
) -> None:
    """Each existing part of ``folder`` below the workspace must be a folder,
    not a file nor a symbolic link (checked without following links)."""
    if not folder.is_relative_to(workspace):
        return  # reported as outside the workspace
    for part in [*reversed(folder.parents), folder]:
        if part == workspace or not part.is_relative_to(workspace):
            continue
        try:
            mode = part.lstat().st_mode
        except OSError:
            return  # missing from here on: the action makes the folders
        rel = part.relative_to(workspace)
        if stat.S_ISLNK(mode):
            problems.append(
                f"{what} {value!r}: {rel} is a symbolic link; the action writes nothing "
                "through one (use a real folder)"
            )
            return
        if not stat.S_ISDIR(mode):
            problems.append(f"{what} {value!r}: {rel} is a file, not a folder")
            return


def _junit_name_problems(text: str, path: Path) -> list[str]:
    """``junit-path`` may not take the name of a file written beside it, nor
    that of a well-known file of a repository."""
    name = path.name
    if name in _REPORT_NAMES or name == MARKER:
        return [
            f"input junit-path {text!r}: {name} is written beside the JUnit file; "
            f"name the JUnit file otherwise, e.g. {Path(text).with_name('junit.xml').as_posix()}"
        ]
    if name.lower() in _REPOSITORY_NAMES or name.lower().split(".")[0] in _REPOSITORY_STEMS:
        return [
            f"input junit-path {text!r} names a file of the repository ({name}); the action "
            f"never writes its reports there: use e.g. {INPUTS['junit-path']}"
        ]
    return []


def _parse_env(text: str, problems: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` lines. A line that is not one is named by its number and
    at most its key: the rest of it may be a secret."""
    pairs: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            problems.append(
                f"input env, line {number} has no '=' (its text is not shown: it may hold "
                "a secret); write one KEY=VALUE per line, e.g. APP_PATH=./app.wasm"
            )
            continue
        if not _ENV_KEY.fullmatch(key):
            shown = sanitize_line(key[:40]) + ("…" if len(key) > 40 else "")
            problems.append(
                f"input env, line {number}: the key {shown!r} is not a variable name "
                "(letters, digits and '_', not starting with a digit), e.g. APP_PATH=./app.wasm"
            )
            continue
        pairs[key] = value
    return pairs


def read_settings(env: Mapping[str, str]) -> ActionSettings:
    """Validate every input up front.

    Raises:
        InputError: listing every invalid input, not just the first.
    """
    problems: list[str] = []
    workspace = Path(env.get("GITHUB_WORKSPACE") or os.getcwd()).resolve()

    workflows = tuple(
        line.strip() for line in _input(env, "workflows").splitlines() if line.strip()
    )
    if not workflows:
        problems.append(
            "input workflows is empty: list workflow files or globs, one per line "
            "(e.g. `workflows: tests/workflows/*.yml`)"
        )

    backend = _input(env, "backend") or INPUTS["backend"]
    if backend not in BACKENDS:
        problems.append(
            f"input backend must be one of {', '.join(BACKENDS)}, got {backend!r}"
        )

    retries_text = _input(env, "retries") or "0"
    retries = 0
    if not _WHOLE_NUMBER.fullmatch(retries_text) or int(retries_text) > _MAX_RETRIES:
        problems.append(
            f"input retries must be a whole number from 0 to {_MAX_RETRIES}, got {retries_text!r}"
        )
    else:
        retries = int(retries_text)

    timeout_text = _input(env, "timeout-minutes") or "0"
    timeout = 0.0
    try:
        if not _DECIMAL.fullmatch(timeout_text):
            raise ValueError
        timeout = float(timeout_text)
        if not timeout < 10_000:
            raise ValueError
    except ValueError:
        problems.append(
            f"input timeout-minutes must be a number of minutes (0 for no limit), got {timeout_text!r}"
        )

    working_directory = _confined(
        workspace,
        workspace,
        _input(env, "working-directory") or ".",
        "input working-directory",
        problems,
    )
    if not problems and not working_directory.is_dir():
        problems.append(
            f"input working-directory {_input(env, 'working-directory')!r} is not a directory"
        )

    junit_text = _input(env, "junit-path") or INPUTS["junit-path"]
    junit_path = _confined(
        workspace, workspace, junit_text, "input junit-path", problems, to_write=True
    )
    if junit_path == workspace or junit_text.endswith("/"):
        problems.append(
            f"input junit-path {junit_text!r} must name a file, e.g. reports/junit.xml"
        )
    elif junit_path.is_dir() and not junit_path.is_symlink():
        rel = junit_text.rstrip("/")
        problems.append(
            f"input junit-path {junit_text!r} is a folder: name a file in it, e.g. {rel}/junit.xml"
        )
    else:
        _folders_fit(
            workspace, junit_path.parent, "input junit-path", junit_text, problems
        )
        problems += _junit_name_problems(junit_text, junit_path)
    logs_text = _input(env, "node-logs-dir") or INPUTS["node-logs-dir"]
    node_logs_dir = _confined(
        workspace, workspace, logs_text, "input node-logs-dir", problems, to_write=True
    )
    for what, text, path in (
        ("junit-path", junit_text, junit_path),
        ("node-logs-dir", logs_text, node_logs_dir),
    ):
        if path.is_relative_to(workspace) and ".git" in path.relative_to(workspace).parts:
            problems.append(
                f"input {what} {text!r} lies in .git, the repository's own data; "
                f"use a folder of its own, e.g. {INPUTS[what]}"
            )
    if node_logs_dir.is_file() and not node_logs_dir.is_symlink():
        problems.append(f"input node-logs-dir {logs_text!r} is a file, not a folder")
    else:
        _folders_fit(
            workspace, node_logs_dir, "input node-logs-dir", logs_text, problems
        )

    image = _input(env, "image") or None
    if image is not None and (problem := image_reference_problem(image)):
        problems.append(
            f"input image: {problem} (e.g. ghcr.io/calimero-network/merod:edge)"
        )
    settings_env = _parse_env(_input(env, "env"), problems)
    try:  # read by the embedded nodes' runtime
        time_limit_from(env)
    except ValueError as exc:
        problems.append(f"environment: {exc}")
    summary = _bool(env, "summary", problems)
    annotations = _bool(env, "annotations", problems)
    fail_on_failure = _bool(env, "fail-on-failure", problems)
    if problems:
        raise InputError(problems)

    # node scratch data stays in the container (not RUNNER_TEMP, which is the
    # host's: root-owned files there would outlive the job); CW_WORKDIR is the
    # engine's own override
    scratch = Path(
        env.get("CW_WORKDIR") or Path(tempfile.gettempdir()) / "calimero-workflow"
    )
    return ActionSettings(
        workspace=workspace,
        workflows=workflows,
        image=image,
        backend=backend,
        env=MappingProxyType(settings_env),
        working_directory=working_directory,
        junit_path=junit_path,
        summary=summary,
        annotations=annotations,
        retries=retries,
        fail_on_failure=fail_on_failure,
        timeout_minutes=timeout,
        node_logs_dir=node_logs_dir,
        workdir=scratch,
    )


# -- stage 2: discovery ----------------------------------------------------------------


@dataclass
class Discovery:
    """The workflow files the patterns matched, and what went wrong."""

    files: list[Path] = field(default_factory=list)
    #: Per pattern that matched nothing usable, why.
    unmatched: dict[str, str] = field(default_factory=dict)


def _join(prefix: str, name: str) -> str:
    if not prefix:
        return name
    return prefix + name if prefix.endswith("/") else f"{prefix}/{name}"


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as found:
            return sorted(found, key=lambda e: e.name)
    except OSError:  # not a folder, gone, or not readable: no matches here
        return []


def _folders_below(prefix: str, folder: Path) -> list[str]:
    """``prefix`` and every folder below it, never entering a symlinked one
    nor a hidden one (as glob's ``**`` skips hidden names)."""
    found = [prefix]
    for entry in _entries(folder):
        if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
            found += _folders_below(_join(prefix, entry.name), Path(entry.path))
    return found


def expand_pattern(pattern: str, base: Path) -> list[str]:
    """``glob.glob(pattern, root_dir=base, recursive=True)``, sorted, except that
    ``**`` never enters a symlinked folder.

    glob's ``**`` follows symlinked folders: a link to ``.`` makes it loop
    and one to ``/`` walks the whole machine. Other parts of a pattern may
    still name a link (one level, no loop); where the match then lands is
    checked by the caller.
    """
    parts = [part for part in pattern.split("/") if part]
    current = ["/" if pattern.startswith("/") else ""]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        following: list[str] = []
        for prefix in current:
            folder = base / prefix if prefix else base
            if part == "**":
                folders = _folders_below(prefix, folder)
                if not last:
                    following += folders
                    continue
                for below in folders:
                    where = base / below if below else base
                    following += [
                        _join(below, e.name)
                        for e in _entries(where)
                        if not e.name.startswith(".")
                    ]
            elif glob.has_magic(part):
                hidden = part.startswith(".")
                following += [
                    _join(prefix, e.name)
                    for e in _entries(folder)
                    if (hidden or not e.name.startswith("."))
                    and fnmatch.fnmatchcase(e.name, part)
                ]
            else:
                following.append(_join(prefix, part))
        current = following
    return sorted(
        {m for m in current if m and os.path.lexists(base / m)}
    )


def discover_workflows(settings: ActionSettings) -> Discovery:
    """Expand the ``workflows`` patterns inside the workspace, in order, once each.

    Patterns are relative to ``working-directory``; ``**`` crosses folders.
    A match outside the workspace (through ``..``, an absolute path or a
    symlink) is refused, never read.
    """
    found = Discovery()
    seen: set[Path] = set()
    base = settings.working_directory
    for pattern in settings.workflows:
        matches = expand_pattern(pattern, base)
        kept: list[Path] = []
        outside: list[str] = []
        for match in matches:
            path = (base / match).resolve()
            if path != settings.workspace and not path.is_relative_to(
                settings.workspace
            ):
                outside.append(match)
                continue
            if path.is_file():
                kept.append(path)
        if not kept:
            if outside:
                reason = f"{pattern!r} only matches files outside the workspace (e.g. {outside[0]!r})"
            else:
                where = (
                    display_path(base, settings.workspace)
                    if base != settings.workspace
                    else "the workspace"
                )
                reason = f"no workflow file matches {pattern!r} in {where}"
            found.unmatched[pattern] = reason
            continue
        for path in kept:
            if path not in seen:
                seen.add(path)
                found.files.append(path)
    return found


# -- stage 3 and 4: load and run --------------------------------------------------------


def _problem_result(
    name: str, file: Path | None, backend: str, phase: str, problems: Sequence[Problem]
) -> RunResult:
    """A failed result for a workflow that never ran, its problems as phases."""
    where = str(file) if file is not None else None
    return problems_result(name, where, backend, problems, phase=phase)


def _skipped_result(file: Path, backend: str) -> RunResult:
    result = RunResult(
        workflow_name=file.name,
        workflow_file=str(file),
        run_id="-",
        backend=backend,
        status=Status.SKIPPED,
        started_at=time.time(),
    )
    result.phases.append(
        PhaseRecord("steps", Status.SKIPPED, detail="not run: the action was cancelled")
    )
    return result


class _ActionEvents(ConsoleReporter):
    """The console reporter, plus putting Docker nodes on the job's network."""

    def __init__(
        self,
        stream: TextIO,
        *,
        run_id: str,
        job_network: str | None,
        redactor: Redactor | None = None,
        add_mask: Callable[[str], object] | None = None,
    ):
        # with the action's secrets: text is cut (expected/actual) after redaction
        super().__init__(stream, color=True, redactor=redactor)
        self.run_id = run_id
        self.job_network = job_network
        self._add_mask = add_mask

    def secret(self, value: str) -> None:
        # a token a node gave mid-run: the runner masks it too (first, while
        # the value is new to the shared redactor, which then knows it)
        if self._add_mask is not None:
            self._add_mask(value)
        super().secret(value)

    def phase_finished(self, record: PhaseRecord) -> None:
        super().phase_finished(record)
        if (
            record.name == "nodes_start"
            and record.status is Status.PASSED
            and self.job_network
        ):
            # a few quick Docker calls; the event hook is synchronous, and the
            # run waits for its nodes at this point anyway
            attached = _attach_to_network(self.run_id, self.job_network)
            self._write(
                f"  nodes on the job network {self.job_network}: {', '.join(attached) or 'none'}"
            )


def _docker_client() -> Any:
    import docker

    return docker.from_env(timeout=30)


def _job_network() -> str | None:
    """The network the runner put this container on (job with services), if any."""
    try:
        from .backends.docker import own_container_id

        client = _docker_client()
        own = own_container_id(client)
        if own is None:
            return None
        networks = client.containers.get(own).attrs["NetworkSettings"]["Networks"] or {}
    except Exception as exc:  # no Docker here: then there is no job network either
        log.debug("no job network: %s", exc)
        return None
    # asked before any run started: the network the runner gave us is the only one
    for name in networks:
        if name not in ("bridge", "host", "none"):
            return name
    return None


def _attach_to_network(run_id: str, network_name: str) -> list[str]:
    """Connect this run's node containers to ``network_name``, known by their names.

    Known limit: the nodes then share a network besides *peers*, so a merod
    that finds its peers by itself (mDNS, announced addresses) can still
    reach a disconnected node over it; docs/action.md says so.
    """
    from .backends.docker import LABEL_NODE, LABEL_RUN

    client = _docker_client()
    network = client.networks.get(network_name)
    attached = []
    for container in client.containers.list(filters={"label": f"{LABEL_RUN}={run_id}"}):
        if LABEL_NODE not in container.labels:
            continue
        network.connect(container, aliases=[container.name])
        attached.append(container.name)
    return attached


def _load_env(env: Mapping[str, str], settings: ActionSettings) -> dict[str, str]:
    """What ``${VAR}`` in a workflow (and its scripts) may read."""
    base = {k: v for k, v in env.items() if not _HIDDEN_ENV.match(k)}
    base.update(settings.env)
    return base


class _Runner:
    """Stage 3 and 4: load, run with retries and a timeout, print grouped logs."""

    def __init__(
        self,
        settings: ActionSettings,
        gh: GitHub,
        env: Mapping[str, str],
        folders: Mapping[Path, str],
    ):
        self.settings = settings
        self.gh = gh
        self.load_env = _load_env(env, settings)
        #: Per workflow file, its folder in ``node-logs-dir``.
        self.folders = folders
        self.run = ActionRun()
        self.job_network = _job_network() if settings.backend == "docker" else None
        self._executor: WorkflowExecutor | None = None
        #: Attempts of the workflow being run, kept if the action is cancelled.
        self._pending_attempts: list[RunResult] = []
        #: Files whose short credentials were warned about already.
        self._warned: set[str] = set()

    async def run_all(self, files: Sequence[Path]) -> ActionRun:
        for index, file in enumerate(files):
            try:
                self.run.workflows.append(await self._attempts(file))
            except Exception as exc:  # a bug: this workflow fails, the others run
                log.error("running %s failed", file, exc_info=True)
                self.run.workflows.append(
                    self._pending_attempts + [self._crashed(file, exc)]
                )
            except asyncio.CancelledError:
                self.run.cancelled = True
                self.run.workflows.append(self._cut_short(file))
                for rest in files[index + 1 :]:
                    self.run.workflows.append(
                        [_skipped_result(rest, self.settings.backend)]
                    )
                break
        return self.run

    def _cut_short(self, file: Path) -> list[RunResult]:
        """The attempts of the workflow a cancellation landed in.

        An attempt that had not begun is none: the workflow was not run, or
        its earlier attempt stands. So does an earlier attempt when the
        retry was cut short before anything in it failed: a retry can turn a
        failure into a pass, never into a cancellation. The attempt that
        stands then says what became of the retry.
        """
        attempts = list(self._pending_attempts)
        executor = self._executor
        if executor is not None and executor.started:
            if not attempts or failures_of(executor.result):
                return [*attempts, executor.result]
            what = "was cancelled before it finished"
        elif attempts:
            what = "did not start: the action was cancelled"
        else:
            return [_skipped_result(file, self.settings.backend)]
        number, total = len(attempts) + 1, self.settings.retries + 1
        attempts[-1].phases.append(
            PhaseRecord(
                RETRY_PHASE,
                Status.SKIPPED,
                detail=f"attempt {number} of {total} {what}; attempt {number - 1} failed",
            )
        )
        return attempts

    def _crashed(self, file: Path, exc: Exception) -> RunResult:
        rel = display_path(file, self.settings.workspace)
        problem = Problem(
            f"internal error: {type(exc).__name__}: {exc}",
            hint="this is a bug in calimero-workflow; please report it with this workflow",
        )
        result = _problem_result(rel, file, self.settings.backend, "run", [problem])
        result.phases[0].error.kind = "internal"
        return result

    async def _attempts(self, file: Path) -> list[RunResult]:
        from .workflow import load_workflow

        settings = self.settings
        rel = display_path(file, settings.workspace)
        self._pending_attempts = []
        self._executor = None
        total = settings.retries + 1
        for attempt in range(1, total + 1):
            try:
                workflow = load_workflow(
                    file, environ=self.load_env, backend=settings.backend, for_run=True
                )
            except WorkflowValidationError as exc:
                self.run.invalid = True
                return [
                    _problem_result(rel, file, settings.backend, "load", exc.problems)
                ]
            for secret in workflow.secret_values():
                if not self.gh.add_mask(secret) and rel not in self._warned:
                    self._warned.add(rel)
                    self.gh.annotate(
                        Annotation(
                            "warning",
                            f"a credential in {rel} is shorter than {MIN_SECRET_CHARS} "
                            "characters and is not masked (masking it would hide those "
                            "characters everywhere)",
                            file=rel,
                            title="calimero-workflow: values left unmasked",
                        )
                    )

            run_id = new_run_id()
            self.run.run_ids.append(run_id)
            # before the nodes exist: the post step must find them even if this
            # process is killed
            self.gh.save_state("run_ids", ",".join(self.run.run_ids))
            # the engine writes node logs to scratch space of ours; the report
            # stage copies them into the workspace (redacted, through no link)
            logs_dir = settings.workdir / "node-logs" / run_id
            dest = settings.node_logs_dir / self.folders[file]
            if total > 1:
                dest = dest / f"attempt-{attempt}"
            self.run.node_logs.append((logs_dir, dest))
            events = _ActionEvents(
                self.gh.stream,
                run_id=run_id,
                job_network=self.job_network,
                redactor=self.gh.redactor,
                add_mask=self.gh.add_mask,
            )
            executor = WorkflowExecutor(
                workflow,
                backend=settings.backend,
                image=settings.image,
                env=self.load_env,
                events=events,
                workdir=settings.workdir,
                logs_dir=logs_dir,
                run_id=run_id,
                # what the action masks (the env input's secrets...), so that
                # the run knows them too: a script's output cut in the middle
                # of one is masked where it is cut
                secret_values=self.gh.redactor.values,
            )
            self._executor = executor
            title = f"{workflow.name} ({rel})" + (
                f", attempt {attempt} of {total}" if total > 1 else ""
            )
            with self.gh.group(title):
                with self.gh.stop_commands():
                    events.run_started(executor.result)
                    result = await self._run_once(executor)
                    events.run_finished(result)
            self._print_step_logs(result, title)
            self._executor = None
            self._pending_attempts.append(result)
            if result.passed:
                break
        return self._pending_attempts

    async def _run_once(self, executor: WorkflowExecutor) -> RunResult:
        """One attempt; cancelled (with node cleanup) after ``timeout-minutes``."""
        minutes = self.settings.timeout_minutes
        # a task of its own, so that cancelling the action is never swallowed
        # by the executor, which turns its own cancellation into a result
        task = asyncio.ensure_future(executor.run())
        try:
            result = await asyncio.wait_for(
                task, timeout=minutes * 60 if minutes else None
            )
        except TimeoutError:
            result = executor.result
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            # the action was cancelled just as the attempt ended
            raise asyncio.CancelledError
        if not result.interrupted:
            return result
        # interrupted without the action being cancelled: our timeout fired.
        # The phase that was running recorded the cancellation; say why.
        result.interrupted = False
        result.status = Status.FAILED
        timeout = ErrorInfo(
            message=f"the workflow did not finish within {minutes:g} minute(s); its nodes were stopped",
            kind="timeout",
            hint="raise the action's timeout-minutes, or look at the step that was running",
        )
        cancelled = [
            p
            for p in result.phases
            if p.error is not None and p.error.kind == "cancelled"
        ]
        for phase in cancelled:
            phase.error = timeout
        for top in result.steps:
            _blame_running_step(top, minutes)
        if not cancelled:
            result.phases.append(PhaseRecord("timeout", Status.FAILED, error=timeout))
        return result

    def _print_step_logs(self, result: RunResult, title: str) -> None:
        """A log group per step that has logs: a failing step, or one with app logs."""
        shown = 0
        for step in result.all_steps():
            if step.children or not (
                step.node_logs or (step.logs and step.status is Status.FAILED)
            ):
                continue
            if shown == _MAX_LOG_GROUPS:
                self.gh.echo(
                    f"(more step logs are in the JUnit report: {sanitize_line(title)})"
                )
                break
            shown += 1
            with self.gh.group(f"{title} › {step.path} logs"):
                lines = [*step.logs]
                for node, text in step.node_logs.items():
                    lines.append(f"--- last log lines of {node} ---")
                    lines.extend(text.rstrip("\n").split("\n"))
                self.gh.untrusted(lines)


def _blame_running_step(step: StepRecord, minutes: float) -> bool:
    """Fail the step that was running when the time ran out, and its parents.

    A cancelled step is skipped, but here it was the one too slow: the
    failure is its own. Returns whether ``step`` or a nested step was it.
    """
    cut = step.error is not None and step.error.kind == "cancelled"
    below = [_blame_running_step(child, minutes) for child in step.children]
    if not cut or not (any(below) or not step.children):
        return any(below)
    step.status = Status.FAILED
    step.error = ErrorInfo(
        message=f"still running when the workflow ran out of time ({minutes:g} minute(s))",
        kind="timeout",
        location=step.error.location if step.error else None,
    )
    return True


# -- the entry points -------------------------------------------------------------------


class _LineSafeFormatter(logging.Formatter):
    """Log records on stderr, which the runner also parses: no line may run a
    command, and no masked value may show."""

    #: Set to the run's :meth:`GitHub.redact` once secrets are known.
    redact: Callable[[str], str] = staticmethod(str)

    def format(self, record: logging.LogRecord) -> str:
        first, *rest = self.redact(super().format(record)).split("\n")
        return "\n".join([inert_line(first), *("| " + inert_line(r) for r in rest)])


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineSafeFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    # node log lines go to per-node files, not to the console
    logging.getLogger("calimero_workflow.node").propagate = False
    logging.getLogger("uvicorn").propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _claims(
    settings: ActionSettings, files: Workspace, folders: Mapping[Path, str]
) -> list[str]:
    """Why the reports or node logs may not be written where the inputs say.

    The action replaces only what an earlier run of it wrote, unchanged
    since (see :meth:`Workspace.claims`): the report files beside the JUnit
    file, and a folder per workflow in ``node-logs-dir``.
    """

    def rel(path: Path) -> str:
        return display_path(path, settings.workspace)

    names = [path.name for path in settings.report_files]
    problems = [
        f"input junit-path {rel(settings.junit_path)!r}: {why}"
        for why in files.claims(settings.reports_dir, names)
    ]
    problems += [
        f"input node-logs-dir {rel(settings.node_logs_dir)!r}: {why}"
        for why in files.claims(settings.node_logs_dir, sorted(set(folders.values())))
    ]
    if problems:
        problems.append(
            "the action writes its reports only where nothing is, or over what an earlier "
            "run of it wrote there and nobody changed since: choose another junit-path or "
            f"node-logs-dir, e.g. {INPUTS['junit-path']}"
        )
    return problems


def _start(
    settings: ActionSettings,
    gh: GitHub,
    env: Mapping[str, str],
    found: Discovery,
    folders: Mapping[Path, str],
) -> _Runner:
    """The runner, with the patterns that matched nothing as failed workflows."""
    runner = _Runner(settings, gh, env, folders)
    for pattern, reason in found.unmatched.items():
        runner.run.invalid = True
        problem = Problem(
            reason, hint="check the action's `workflows` and `working-directory` inputs"
        )
        runner.run.workflows.append(
            [_problem_result(pattern, None, settings.backend, "discover", [problem])]
        )
    listed = "\n".join(
        f"  - {sanitize_line(display_path(f, settings.workspace))}" for f in found.files
    )
    gh.echo(
        f"calimero-workflow: {len(found.files)} workflow file(s), backend {settings.backend}\n{listed}"
    )
    if runner.job_network:
        gh.echo(f"job network: {runner.job_network}")
    return runner


async def _run_cancellable(
    runner: _Runner, files: Sequence[Path], interrupts: Interrupts
) -> None:
    task = asyncio.current_task()
    assert task is not None
    with interrupts.cancelling(task):
        await runner.run_all(files)


def _run(
    settings: ActionSettings,
    gh: GitHub,
    env: Mapping[str, str],
    found: Discovery,
    folders: Mapping[Path, str],
    interrupts: Interrupts,
) -> ActionRun:
    """Stages 3 and 4; whatever happens, a record of what ran."""
    run = ActionRun()
    try:
        runner = _start(settings, gh, env, found, folders)
        run = runner.run
        if interrupts.cancelled:  # before anything ran
            run.workflows += [[_skipped_result(f, settings.backend)] for f in found.files]
        else:
            asyncio.run(_run_cancellable(runner, found.files, interrupts))
    except asyncio.CancelledError:  # it came just as the run ended
        pass
    except Exception as exc:  # a bug of ours: reported, never a traceback alone
        log.error("the run stopped on an internal error", exc_info=True)
        run.crashed = (
            f"the run stopped on an internal error: {type(exc).__name__}: {exc}; "
            "this is a bug in calimero-workflow, please report it"
        )
    ran = {a[0].workflow_file for a in run.workflows}
    run.workflows += [
        [_skipped_result(f, settings.backend)] for f in found.files if str(f) not in ran
    ]
    run.cancelled = run.cancelled or interrupts.cancelled
    return run


def _invalid(gh: GitHub, problems: Sequence[str], interrupts: Interrupts) -> int:
    """Report invalid inputs; nothing has run and no file is written. A signal
    that came meanwhile makes it cancelled, as at any other time."""
    for problem in problems:
        gh.annotate(
            Annotation("error", problem, title="calimero-workflow: invalid input")
        )
    gh.flush_annotations()
    with interrupts.held():
        status = STATUS_CANCELLED if interrupts.cancelled else STATUS_INVALID
        gh.set_output("status", status, redact=False)
        interrupts.finished(exit_code(status, None))
    return exit_code(status, None)


def run_action(
    env: Mapping[str, str],
    stream: TextIO | None = None,
    *,
    interrupts: Interrupts | None = None,
) -> int:
    """Run the action for ``env`` (the process environment); return the exit code.

    ``interrupts`` are the process's signal handlers (see
    :mod:`~calimero_workflow.interrupts`); a signal at any time makes the run
    cancelled, still with every report and output written.
    """
    interrupts = interrupts or Interrupts()
    gh = GitHub(env, stream)
    # the runner's tokens never reach a workflow, but a script could find them
    for value in runner_tokens(env).values():
        gh.add_mask(value)
    # if the action gives up, cancelled, before its outputs are written
    interrupts.last_word = lambda: gh.set_output("status", STATUS_CANCELLED, redact=False)
    try:
        settings = read_settings(env)
    except InputError as exc:
        return _invalid(gh, exc.problems, interrupts)

    found = discover_workflows(settings)
    folders = node_log_folders(found.files, settings.workspace)
    files = Workspace(
        settings.workspace,
        workspace_owner(settings.workspace),
        tracked=tracked_paths(settings.workspace),
    )
    clashes = [
        f"input junit-path {display_path(settings.junit_path, settings.workspace)!r}: "
        f"the reports would overwrite the workflow file {display_path(path, settings.workspace)}"
        for path in settings.report_files
        if path in found.files
    ]
    clashes = clashes or _claims(settings, files, folders)
    if clashes:
        return _invalid(gh, clashes, interrupts)

    readable = _load_env(env, settings)
    mask_env_secrets(gh, {**{k: readable[k] for k in settings.env}, **readable})
    _LineSafeFormatter.redact = staticmethod(gh.redact)
    new_files = NewFiles(settings.workspace)
    status = STATUS_FAILED
    run = ActionRun()
    try:
        run = _run(settings, gh, env, found, folders, interrupts)
        status = write_reports(settings, gh, run, files, interrupts)
    except Exception as exc:  # a bug in the reports: still a status, never a traceback alone
        log.error("writing the reports failed", exc_info=True)
        gh.annotate(
            Annotation(
                "error",
                f"writing the reports failed: {type(exc).__name__}: {exc}",
                title="calimero-workflow: internal error",
            )
        )
        with interrupts.held():
            status = STATUS_CANCELLED if interrupts.cancelled else STATUS_FAILED
            gh.set_output("status", status, redact=False)
            interrupts.finished(exit_code(status, settings))
    finally:
        new_files.hand_over()
    # a signal after the status was written changes nothing: the work is done
    counts = count_workflows(run.workflows)
    gh.echo(
        f"calimero-workflow: {status}: {counts['passed']} of {counts['total']} workflow(s) passed, "
        f"{counts['failed']} failed, {counts['cancelled']} cancelled, {counts['skipped']} not run, "
        f"{counts['flaky']} flaky; JUnit report at "
        f"{display_path(settings.junit_path, settings.workspace)}"
    )
    return exit_code(status, settings)


def post(env: Mapping[str, str], stream: TextIO | None = None) -> int:
    """The post step: remove every Docker object of this job's runs, by label.

    The main step cleans up after itself; this catches what a killed or
    cancelled main step left. It never fails the job.
    """
    gh = GitHub(env, stream)
    run_ids = [r for r in env.get("STATE_run_ids", "").split(",") if r.strip()]
    if not run_ids:
        gh.echo("calimero-workflow post: nothing to clean up")
        return EXIT_OK
    try:
        from .backends.docker import remove_run

        for run_id in run_ids:
            containers, networks, volumes = remove_run(run_id)
            gh.echo(
                f"calimero-workflow post: run {run_id}: removed {containers} container(s), "
                f"{networks} network(s), {volumes} volume(s)"
            )
    except (
        Exception
    ) as exc:  # Docker gone or never used (embedded runs): nothing to remove
        gh.echo(
            f"calimero-workflow post: no Docker cleanup ({sanitize(str(exc)).splitlines()[0]})"
        )
    return EXIT_OK


def main(
    argv: Sequence[str] | None = None, *, interrupts: Interrupts | None = None
) -> int:
    """``python -m calimero_workflow.action [post | CLI ARGS…]``.

    ``interrupts`` are the signal handlers :func:`~calimero_workflow.interrupts.action_entry`
    installed before this module was imported; without them they are
    installed here.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["post"]:
        return post(dict(os.environ))
    if args:
        from .cli import main as cli_main

        if interrupts is not None:
            # the command line handles its signals itself
            Interrupts.restore_defaults()
            if interrupts.cancelled:
                return EXIT_INTERRUPTED
        # the image as the command line, run as root on a mounted folder:
        # what the run writes there belongs to the folder's owner
        new_files = NewFiles(Path.cwd())
        try:
            return cli_main(args)
        finally:
            new_files.hand_over()
    if interrupts is None:
        interrupts = Interrupts().install()
    _setup_logging()
    env = dict(os.environ)
    scrub_runner_tokens(list(runner_tokens(env)))
    return run_action(env, interrupts=interrupts)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
