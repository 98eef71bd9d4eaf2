"""The ``calimero-workflow`` command line.

Exit codes are stable: 0 every workflow passed, 1 a step or phase failed,
2 a workflow file or the command line is invalid, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .confined import replace_file
from .credentials import secret_env_values
from .errors import Problem, WorkflowValidationError
from .results import RunResult, problems_result

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep its text short
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID)


def _image(value: str) -> str:
    from .backends.docker import image_reference_problem

    problem = image_reference_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem} (e.g. ghcr.io/calimero-network/merod:edge)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgParser(
        prog="calimero-workflow",
        description="Run YAML test workflows against Calimero nodes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_ArgParser)

    run = sub.add_parser("run", help="run workflow files")
    run.add_argument("files", nargs="+", type=Path, metavar="FILE")
    run.add_argument(
        "--backend", choices=("embedded", "docker"),
        help="where local nodes run (default: the workflow's `backend`, else embedded)",
    )
    run.add_argument("--image", type=_image, help="node image for the docker backend (overrides the workflow)")
    run.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="set a variable for ${KEY} expansion (wins over the environment); repeatable",
    )
    run.add_argument("--results", type=Path, metavar="FILE", help="write workflow_results as JSON")
    run.add_argument("--report", type=Path, metavar="FILE", help="write the full run report as JSON")
    run.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML (a testsuite per workflow, a testcase per step)")
    run.add_argument("--logs-dir", type=Path, metavar="DIR", help="where node logs are written")
    run.add_argument("--workdir", type=Path, metavar="DIR", help="scratch directory for node data (default $CW_WORKDIR, else ./.cw-runs)")
    run.add_argument("--nuke", action="store_true", default=None, help="remove leftovers of an earlier run first")
    run.add_argument(
        "--force-pull", action="store_true", default=None,
        help="pull the node images even if present (--image's too)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="show step logs of passing steps too")
    run.add_argument("-q", "--quiet", action="store_true", help="show only failures and the summary")
    run.add_argument("--color", choices=("auto", "always", "never"), default="auto")

    validate = sub.add_parser("validate", help="check workflow files without running them")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE")
    validate.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="set a variable for ${KEY} expansion; repeatable",
    )
    sub.add_parser("steps", help="list the step types and what they do")
    return parser


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    problems = []
    for number, pair in enumerate(pairs, start=1):
        key, sep, value = pair.partition("=")
        # the value may be a secret: a message shows the key at most
        if not sep:
            problems.append(
                Problem(
                    f"--env number {number} has no '=' (its text is not shown: it may hold a secret)",
                    hint="for example --env APP_PATH=./app.wasm",
                )
            )
            continue
        if not key or not key.isascii() or not key.replace("_", "a").isalnum() or key[0].isdigit():
            problems.append(
                Problem(
                    f"--env {key[:40]!r}=…: the key is not a variable name",
                    hint="letters, digits and '_', not starting with a digit; for example --env APP_PATH=./app.wasm",
                )
            )
            continue
        env[key] = value
    if problems:
        raise WorkflowValidationError(problems)
    return env


def _print_problems(exc: WorkflowValidationError) -> None:
    from .report.console import sanitize

    for problem in exc.problems:
        print(sanitize(problem.render()), file=sys.stderr)


def _cmd_validate(args: argparse.Namespace) -> int:
    from .workflow import load_workflow

    args.files = _unique_files(args.files)
    env = _parse_env(args.env)
    status = EXIT_OK
    for file in args.files:
        try:
            workflow = load_workflow(file, environ=env)
        except WorkflowValidationError as exc:
            _print_problems(exc)
            status = EXIT_INVALID
            continue
        print(f"{file}: ok ({len(workflow.nodes)} node(s), {len(workflow.steps)} step(s))")
        for note in workflow.notes:
            print(f"  note: {note}")
    return status


def _cmd_steps() -> int:
    from .steps import load_builtin_steps
    from .steps.base import registry

    load_builtin_steps()
    for cls in registry.classes():
        aliases = f" (also: {', '.join(cls.aliases)})" if cls.aliases else ""
        print(f"{cls.type_name}{aliases}\n    {cls.summary}")
    return EXIT_OK


async def _run_all(
    args: argparse.Namespace, env: dict[str, str], results: list[RunResult]
) -> int:
    """Run every file, adding each result to ``results`` as it is done (so a
    cancellation that lands between two runs keeps what ran)."""
    from .executor import WorkflowExecutor
    from .report.console import ConsoleReporter
    from .workflow import load_workflow

    # Every file is loaded first, so its problems show before anything runs.
    # A file that does not load is a failed result in the reports; the others
    # still run, and the exit code says 2.
    loaded: list[Any] = []
    invalid = False
    for file in args.files:
        try:
            loaded.append(load_workflow(file, environ=env, backend=args.backend, for_run=True))
        except WorkflowValidationError as exc:
            _print_problems(exc)
            invalid = True
            loaded.append(problems_result(file.name, str(file), args.backend or "-", exc.problems))
    workflows = [w for w in loaded if not isinstance(w, RunResult)]
    _check_files_read(args, workflows)
    # the environment's credentials (--env MY_API_TOKEN=…), by the action's rule
    env_secrets = secret_env_values(env)
    color = {"always": True, "never": False}.get(args.color)
    reporter = ConsoleReporter(verbose=args.verbose, quiet=args.quiet, color=color)
    folders: list[str] = []
    for workflow in loaded:
        if isinstance(workflow, RunResult):
            results.append(workflow)
            continue
        # one folder per workflow under --logs-dir, even when two share a name
        folder = _safe_name(workflow)
        if folder in folders:
            folder = f"{folder}-{len(folders) + 1}"
        folders.append(folder)
        executor = WorkflowExecutor(
            workflow,
            backend=args.backend,
            image=args.image,
            env=env,
            events=reporter,
            workdir=args.workdir.resolve() if args.workdir else None,
            logs_dir=(args.logs_dir / folder) if args.logs_dir and len(workflows) > 1 else args.logs_dir,
            nuke=args.nuke,
            force_pull=args.force_pull,
            secret_values=env_secrets,
        )
        reporter.run_started(executor.result)
        result = await executor.run()
        reporter.run_finished(result)
        results.append(result)
        if result.interrupted:
            _print_overall(loaded, results, interrupted=True)
            return EXIT_INTERRUPTED
    _print_overall(loaded, results, interrupted=False)
    if invalid:
        return EXIT_INVALID
    return EXIT_OK if all(r.passed for r in results) else EXIT_FAILED


def _print_overall(loaded: list[Any], results: list[RunResult], *, interrupted: bool) -> None:
    """With more than one file, the last line says how all of them went (the
    last workflow's own line is not the run's outcome)."""
    if len(loaded) < 2:
        return
    invalid = sum(isinstance(w, RunResult) for w in loaded)
    ran = [r for r in results if not any(r is w for w in loaded)]
    passed = sum(r.passed for r in ran)
    counts = f"{passed} passed, {len(ran) - passed} failed, {invalid} invalid"
    if interrupted:
        counts += f", {len(loaded) - invalid - len(ran)} not run"
    word = "INTERRUPTED" if interrupted else "PASSED" if passed == len(loaded) else "FAILED"
    print(f"{word} {len(loaded)} workflows: {counts}", flush=True)


def _safe_name(workflow: Any) -> str:
    from .executor import _slug

    return _slug(workflow.name)


def _write_file(path: Path, text: str) -> None:
    """Write ``text`` atomically: never half a file, never through a link."""
    replace_file(path, text.encode("utf-8"))


def _write_json(path: Path, data: Any) -> None:
    _write_file(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


class _Interrupts:
    """SIGINT and SIGTERM for one ``run``: the first cancels the run, which
    then cleans up; any later one only says so, so that cleanup and the
    result files are never cut short. Installed with ``signal.signal`` rather
    than on the event loop, so they also cover the time after the loop
    (writing the files) and are restored only when the command is done."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.count = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not on the main thread
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            # Once interrupted, the command is on its way out with 130: a
            # further signal must not turn that into a death by signal. Nor
            # may one that lands as the command's own process is exiting
            # with its code, the result files written: it is too late to stop.
            late = _own_process and handler in (signal.SIG_DFL, signal.default_int_handler)
            signal.signal(sig, signal.SIG_IGN if self.count or late else handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count == 1:
            if self.task is None:
                raise KeyboardInterrupt  # nothing started yet, nothing to clean up
            if self.loop is not None and not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self.task.cancel)
                return
        try:
            os.write(2, b"calimero-workflow: interrupted; finishing cleanup and the result files first\n")
        except OSError:
            pass


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse result paths that cannot be written before anything runs."""
    problems = []
    given = _result_files(args)
    for flag, path in given:
        if path.is_dir():
            example = path / ("junit.xml" if flag == "--junit" else "out.json")
            problems.append(Problem(f"{flag} {path} is a directory", hint=f"give a file name, e.g. {flag} {example}"))
    for i, (flag, path) in enumerate(given):
        for other, other_path in given[i + 1:]:
            if path.resolve() == other_path.resolve():
                problems.append(Problem(f"{flag} and {other} name the same file", hint="give each its own file"))
    problems += _overwritten(given, [(file, f"the workflow file {file}") for file in args.files])
    # Found now rather than after the whole run: a folder that is a file, or
    # one that cannot be written.
    places = [(flag, path.parent, False) for flag, path in given if not path.is_dir()]
    places += [(flag, path, True) for flag, path in (("--workdir", args.workdir), ("--logs-dir", args.logs_dir)) if path]
    for flag, path, is_the_dir in places:
        problem = _unwritable(path)
        if problem:
            what = f"{flag} {path}" if is_the_dir else f"the folder of {flag} ({path})"
            wanted = "a folder that can be created and written" if is_the_dir else "a file in a writable folder"
            problems.append(Problem(f"{what} {problem}", hint=f"give {flag} {wanted}"))
    if problems:
        raise WorkflowValidationError(problems)


def _result_files(args: argparse.Namespace) -> list[tuple[str, Path]]:
    pairs = (("--results", args.results), ("--report", args.report), ("--junit", args.junit))
    return [(flag, path) for flag, path in pairs if path is not None]


def _overwritten(given: list[tuple[str, Path]], read: list[tuple[Path, str]]) -> list[Problem]:
    """Result files that are files the run reads (``read``: each file and how
    to name it), which writing the results would replace."""
    from .confined import same_file

    problems = []
    for flag, path in given:
        for file, what in read:
            if same_file(path, file):
                problems.append(
                    Problem(
                        f"{flag} {path} is {what}: writing the result would overwrite it",
                        hint=f"give {flag} a file of its own, e.g. {flag} "
                        + ("junit.xml" if flag == "--junit" else f"{flag.lstrip('-')}.json"),
                    )
                )
    return problems


def _check_files_read(args: argparse.Namespace, workflows: list[Any]) -> None:
    """Refuse, before anything runs, result files that are files the loaded
    workflows read (an app's `path`, a script, a file to upload)."""
    read = [
        (file, f"{file}, which {workflow.path} reads")
        for workflow in workflows
        for file in workflow.files_read()
    ]
    problems = _overwritten(_result_files(args), read)
    if problems:
        raise WorkflowValidationError(problems)


def _unwritable(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (made when missing), or None."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot be a folder: {existing} is a file" if existing != folder else "is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot be written: {existing} is not writable"
    return None


def _check_environment() -> None:
    """Settings the engine reads from its own environment, checked before anything runs."""
    from .node.interrupt import TIME_LIMIT_ENV, time_limit_from

    try:
        time_limit_from(os.environ)
    except ValueError as exc:
        raise WorkflowValidationError(
            [Problem(f"environment: {exc}", hint=f"unset {TIME_LIMIT_ENV}, or set it to e.g. 30")]
        ) from None


def _unique_files(files: list[Path]) -> list[Path]:
    """``files`` with each file once (the first time it is named): a workflow
    named twice (``wf/*.yml wf/a.yml``) runs once, and its results keep one key."""
    seen: set[Path] = set()
    unique = []
    for file in files:
        try:
            key = file.resolve()
        except OSError:
            key = file
        if key in seen:
            print(f"calimero-workflow: {file} is named twice; it runs once", file=sys.stderr)
            continue
        seen.add(key)
        unique.append(file)
    return unique


def _cmd_run(args: argparse.Namespace) -> int:
    args.files = _unique_files(args.files)
    env = _parse_env(args.env)
    _check_environment()
    _check_outputs(args)
    results: list[RunResult] = []
    with _Interrupts() as interrupts:

        async def main() -> int:
            # A shell starts background jobs with SIGINT ignored, and `kill -INT`
            # from a CI wrapper must still stop the run cleanly: both signals
            # are handled here whatever they were before.
            interrupts.loop = asyncio.get_running_loop()
            interrupts.task = asyncio.current_task()
            return await _run_all(args, env, results)

        try:
            code = asyncio.run(main())
        except (KeyboardInterrupt, asyncio.CancelledError):
            # before anything ran, or just as the last run ended: the result
            # files still get what ran
            code = EXIT_INTERRUPTED
        if results:
            secrets = [s for r in results for s in r.secrets]
            # files the steps read that only the run knew (a path a
            # placeholder gave): a result file that is one is not written
            read = [(f, f"{f}, which the run read") for r in results for f in r.files_read]
            skip: set[str] = set()
            clashes: list[Problem] = []
            for flag, path in _result_files(args):
                found = _overwritten([(flag, path)], read)
                if found:
                    skip.add(str(path))
                    clashes += found[:1]
            if clashes:
                _print_problems(WorkflowValidationError(clashes))
            try:
                _write_outputs(args, results, secrets, skip=skip)
            except OSError as exc:
                print(f"calimero-workflow: cannot write the result files: {exc}", file=sys.stderr)
                return EXIT_INVALID
            if clashes:
                return EXIT_INVALID
        if interrupts.count and code != EXIT_INVALID:
            return EXIT_INTERRUPTED
        return code


def _write_outputs(
    args: argparse.Namespace,
    results: list[RunResult],
    secrets: list[str],
    skip: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    """Write the result files from the runs with their credentials masked.

    The records are redacted before anything is made of them, so a message
    cut to a length limit (JUnit's) never keeps half a credential, and the
    files' own syntax is never masked.
    """
    from .report.github import Redactor

    results = Redactor(secrets).redact_data(results)
    if args.results and str(args.results) not in skip:
        data = (
            results[0].workflow_results
            if len(results) == 1
            else {r.workflow_file or r.workflow_name: r.workflow_results for r in results}
        )
        _write_json(args.results, data)
    if args.report and str(args.report) not in skip:
        report = [r.to_dict() for r in results] if len(results) > 1 else results[0].to_dict()
        _write_json(args.report, report)
    if args.junit and str(args.junit) not in skip:
        from .report.junit import junit_xml

        xml = junit_xml([[r] for r in results], root=Path.cwd()).decode("utf-8")
        _write_file(args.junit, xml)


#: Whether ``main`` runs as the process's command (not called by a program):
#: then nothing is left for a signal to stop once the command has finished.
_own_process = False


def console_main() -> None:
    """The ``calimero-workflow`` command (and ``python -m calimero_workflow``)."""
    global _own_process
    _own_process = True
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Node log lines go to per-node files, not to the console.
    logging.getLogger("calimero_workflow.node").propagate = False
    logging.getLogger("uvicorn").propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            return _cmd_validate(args)
        if args.command == "steps":
            return _cmd_steps()
        return _cmd_run(args)
    except WorkflowValidationError as exc:
        _print_problems(exc)
        return EXIT_INVALID


if __name__ == "__main__":  # pragma: no cover
    console_main()
