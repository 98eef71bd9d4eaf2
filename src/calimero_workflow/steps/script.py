"""``script``: run a local script or an inline command, or a command in node containers.

Placeholder values never become shell text. ``args`` reach the program as
separate arguments and ``env`` values as environment variables, and every
earlier result is available to the script as environment variables too. An
inline ``run:`` is the workflow author's own text: placeholders inside it are
refused at load time, with a hint to use ``$VARIABLES`` instead.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import re
import signal
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..confined import read_file
from ..credentials import secret_env_values
from ..errors import Problem, StepFailure
from ..report.github import Redactor
from .base import (
    BaseStep,
    EnvName,
    PathText,
    ProcessText,
    StepConfig,
    StepRun,
    ValidationContext,
    file_hint,
    process_text_problem,
    register_step,
    workflow_file,
)

_ENV_NAME_RE = re.compile(r"[^A-Za-z0-9]+")
_OUTPUT_LIMIT = 1024 * 1024
#: Linux's limit on one ``NAME=value`` string given to a program (MAX_ARG_STRLEN).
_ENV_VALUE_LIMIT = 128 * 1024
#: Characters of a failing script's last stderr line its error message quotes:
#: the end of the line, where a program says what went wrong.
_STDERR_LINE_LIMIT = 500
#: Levels of arrays and objects a script's JSON stdout may nest and still be
#: read as data (``output``, ``json_output``); deeper JSON stays text. Each
#: later walk over the results (placeholders, the results file of later
#: scripts, the reports) goes down the levels one call at a time, and must
#: keep room below Python's recursion limit (1000) wherever it runs.
_JSON_NESTING_LIMIT = 800


class ScriptConfig(StepConfig):
    #: A script file, relative to the workflow file.
    script: PathText | None = None
    #: An inline command, run with ``/bin/sh -c``.
    run: ProcessText | None = None
    args: list[ProcessText | int | float | bool] = Field(default_factory=list)
    env: dict[EnvName, Any] = Field(default_factory=dict)
    target: Literal["local", "nodes"] = "local"
    #: With ``target: nodes``: which nodes (default all local nodes).
    nodes: list[str] | str | None = None
    cwd: PathText | None = None
    #: sh (default), bash, dash, zsh or ash, by name or under /bin or /usr/bin.
    shell: str = "/bin/sh"
    #: merobox's switch: stdout must be JSON; its keys are what `outputs:` reads.
    json_output: bool = False

    @field_validator("shell")
    @classmethod
    def _known_shell(cls, value: str) -> str:
        name = value.rsplit("/", 1)[-1]
        if name not in SHELLS or value not in (name, f"/bin/{name}", f"/usr/bin/{name}"):
            raise ValueError(
                "shell must be one of sh, bash, dash, zsh, ash (by name or under /bin or /usr/bin)"
            )
        return value

    @field_validator("env")
    @classmethod
    def _env_values(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            problem = process_text_problem(_as_env_value(item))
            if problem:
                raise ValueError(f"the value of {key} holds {problem}, which no environment can")
        return value

    @model_validator(mode="after")
    def _one_program(self) -> ScriptConfig:
        if bool(self.script) == bool(self.run):
            raise ValueError("give exactly one of `script` (a file) or `run` (an inline command)")
        return self


def unescape_run(text: str) -> str:
    """``$${NAME}`` in a ``run`` command is the shell's own ``${NAME}``."""
    return text.replace("$${", "${")


#: Programs `shell:` may name (a literal, never a placeholder).
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ash"})


def env_name(key: str) -> str:
    """``app_id_node-1`` → ``APP_ID_NODE_1``."""
    return _ENV_NAME_RE.sub("_", key).strip("_").upper()


def _read_json(text: str) -> tuple[Any, bool]:
    """``text`` as JSON data: ``(value, False)``; ``(None, False)`` when it is
    not JSON; ``(None, True)`` when it nests deeper than
    :data:`_JSON_NESTING_LIMIT`, or so deep that Python's parser, which goes
    down one call per level, reaches the recursion limit first."""
    try:
        value = json.loads(text)
    except RecursionError:
        return None, True
    except ValueError:
        return None, False
    from ..node.bodies import nesting  # the node's JSON rules, loaded when needed

    if nesting(value, _JSON_NESTING_LIMIT) > _JSON_NESTING_LIMIT:
        return None, True
    return value, False


def _as_env_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _register_env_secrets(env: Mapping[Any, Any], run: StepRun) -> None:
    """Mask the values of ``env`` under secret-looking keys (by the action's rule)."""
    for value in secret_env_values({str(k): _as_env_value(v) for k, v in env.items()}):
        run.ctx.add_secret(value)


def _kept_text(data: bytes, cut: bool, secrets: list[str]) -> str:
    """What is kept of a script's stdout or stderr, as text.

    Output over the limit is cut before the run's masking sees it, which
    then no longer finds a credential cut in two: the cut ends at a whole
    character, and an end that is the start of a credential (in any of its
    spellings, 4 characters or more) is masked here.
    """
    data = data[:_OUTPUT_LIMIT]
    if not cut:
        return data.decode("utf-8", "replace")
    # not final: a character cut in two at the limit is left out
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(data)
    return Redactor(secrets).mask_partial(text) if secrets else text


def _last_line(err: str, secrets: list[str]) -> str:
    """The last line of a failing script's stderr, for its error message.

    A line over :data:`_STDERR_LINE_LIMIT` characters keeps its end, behind a
    note of how much was cut (the whole line is in the step's ``stderr``). It
    is redacted before it is cut, and a start that is the end of a secret
    spelling is dropped, so the run's masking still finds no half a secret.
    """
    line = err.strip().splitlines()[-1]
    if len(line) <= _STDERR_LINE_LIMIT:
        return line
    redactor = Redactor(secrets)
    line = redactor.redact(line)
    if len(line) <= _STDERR_LINE_LIMIT:
        return line
    kept = redactor.trim_partial(line[len(line) - _STDERR_LINE_LIMIT :], keep="tail")
    return f"[{len(line) - len(kept)} characters cut] …{kept}"


class _CappedOutput(asyncio.SubprocessProtocol):
    """A script's stdout and stderr, read as they come, each kept up to ``limit`` bytes.

    Bytes past the limit are counted and dropped, so a script that writes
    gigabytes costs no memory and never blocks on a full pipe.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.limit = limit
        self.kept = {1: bytearray(), 2: bytearray()}
        self.size = {1: 0, 2: 0}
        self._open = {1, 2}
        #: The process has exited.
        self.exited: asyncio.Future[None] = loop.create_future()
        #: The process has exited and both pipes are closed.
        self.done: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.size[fd] += len(data)
        room = self.limit - len(self.kept[fd])
        if room > 0:
            self.kept[fd] += data[:room]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        self._settle()

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)
        self._settle()

    def _settle(self) -> None:
        if self.exited.done() and not self._open and not self.done.done():
            self.done.set_result(None)


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


@register_step
class Script(BaseStep):
    type_name = "script"
    Config = ScriptConfig
    # The inline command is the author's text, never a template.
    deferred_keys = frozenset({"run"})
    #: merobox's automatic names for a local script's results; a script run
    #: in node containers has them per node instead (see :meth:`export`).
    exports = {
        "script_exit_code_local": "exit_code",
        "script_output_local": "stdout",
        "script_execution_time_local": "duration_seconds",
    }
    summary = (
        "run a `script` file or an inline `run` command (locally, or in node containers with "
        "`target: nodes`); results reach it as environment variables → `exit_code`, `stdout`, `stderr`"
    )

    def check_raw(self, vctx: ValidationContext) -> list[Problem]:
        problems = super().check_raw(vctx)
        shell = self.raw.get("shell")
        if isinstance(shell, str) and ("${" in shell or "{{" in shell):
            problems.append(
                self.problem(
                    "`shell` must be written out, not taken from a placeholder",
                    key="shell",
                    hint="one of sh, bash, dash, zsh, ash",
                )
            )
        return problems

    def check(self, config: ScriptConfig, vctx: ValidationContext) -> list[Problem]:
        problems = super().check(config, vctx)
        if config.run and (re.search(r"(?<!\$)\$\{", config.run) or "{{" in config.run):
            problems.append(
                self.problem(
                    "`${...}` and `{{...}}` are not expanded inside `run` (values would become shell text)",
                    key="run",
                    hint="pass values through `env:` (e.g. env: {CTX: \"${results.ctx.context_id}\"}) "
                    "and use \"$CTX\" in the command, or `args:` as \"$1\"; write $${NAME} "
                    "for the shell's own ${NAME}",
                )
            )
        if config.target == "nodes" and not vctx.node_names:
            problems.append(
                self.problem(
                    "`target: nodes` runs the script inside local nodes, and the workflow has none",
                    key="target",
                    hint="use `target: local` (the default)",
                )
            )
        if config.script and vctx.check_files and "${" not in config.script and "{{" not in config.script:
            problem = self._script_problem(config.script, vctx.base_dir)
            if problem:
                problems.append(problem)
        if config.cwd and vctx.check_files and "${" not in config.cwd and "{{" not in config.cwd:
            problem = self._cwd_problem(config.cwd, vctx.base_dir)
            if problem:
                problems.append(problem)
        return problems

    def _cwd_problem(self, cwd: str, base_dir: Path) -> Problem | None:
        path = (base_dir / cwd).resolve()
        if not _inside(path, [base_dir.resolve(), Path.cwd().resolve()]):
            return self.problem(
                f"cwd {cwd!r} is outside the workflow's folder and the working directory",
                key="cwd",
                hint="run scripts in a folder of the repository; pass other paths as `args:`",
            )
        if not path.is_dir():
            return self.problem(
                f"cwd is not a directory: {cwd}",
                key="cwd",
                hint=f"`cwd` is relative to the workflow file's folder ({base_dir})",
            )
        return None

    def _script_problem(self, script: str, base_dir: Path) -> Problem | None:
        path = workflow_file(base_dir, script).resolve()
        roots = [base_dir.resolve(), Path.cwd().resolve()]
        if not _inside(path, roots):
            return self.problem(
                f"script {script!r} is outside the workflow's folder and the working directory",
                key="script",
                hint="keep scripts next to the workflow or inside the repository",
            )
        if not path.is_file():
            return self.problem(
                f"script not found: {script}",
                key="script",
                hint=file_hint(base_dir),
            )
        return None

    def export(
        self, config: ScriptConfig, data: dict[str, Any], run: StepRun, *, lenient: bool = False
    ) -> None:
        """merobox's exports: ``script_<key>_local``, or with ``target: nodes``
        ``script_<key>_<node>`` for each node, named after its container as
        merobox names them (the node's name). ``outputs:`` is applied to a local
        script only: merobox applies it to no script run in nodes, and their
        results are per node (``${results.<step>.nodes.<node>.…}``)."""
        captured = run.ctx.captured
        if config.target != "nodes":
            super().export(config, data, run, lenient=lenient)
            if config.script and "exit_code" in data:
                captured["script_script_path_local"] = config.script
            return
        for node, result in (data.get("nodes") or {}).items():
            captured[f"script_exit_code_{node}"] = result["exit_code"]
            captured[f"script_output_{node}"] = result["stdout"]
            captured[f"script_execution_time_{node}"] = result["duration_seconds"]
            if config.script:
                captured[f"script_script_path_{node}"] = config.script

    def _environment(self, config: ScriptConfig, run: StepRun, results_file: Path) -> dict[str, str]:
        ctx = run.ctx
        env = dict(ctx.env)
        left_out: set[str] = set()
        for key, value in [*ctx.captured.items(), *run.variables.items()]:
            name, text = env_name(key), _as_env_value(value)
            if len(name) + len(text) + 2 > _ENV_VALUE_LIMIT:
                # The kernel refuses to start a program given a longer variable.
                why = (
                    f"its value has {len(text)} characters, over the system's limit "
                    "for one variable (128 KiB)"
                )
            else:
                problem = process_text_problem(text)
                why = f"its value holds {problem}, which no environment can" if problem else ""
            if why:
                # An earlier result this step may not even use: the step runs without it.
                env.pop(name, None)
                if name not in left_out:
                    left_out.add(name)
                    run.log(
                        f"{name} is left out of the environment: {why}; "
                        "a named step's results are in $CW_RESULTS_FILE"
                    )
                continue
            env[name] = text
        for name, ref in ctx.nodes.items():
            env[f"CW_NODE_{env_name(name)}_URL"] = ref.url
        env["CW_RESULTS_FILE"] = str(results_file)
        env["CW_RUN_ID"] = ctx.run_id
        env["CW_WORKFLOW_DIR"] = str(ctx.workflow.base_dir.resolve())
        for key, value in config.env.items():
            env[str(key)] = _as_env_value(value)
        return env

    def register_secrets(self, resolved: Mapping[str, Any], run: StepRun) -> None:
        super().register_secrets(resolved, run)
        # values under secret-looking keys of its `env:`, placeholders resolved
        env = resolved.get("env")
        if isinstance(env, dict):
            _register_env_secrets(env, run)

    async def execute(self, config: ScriptConfig, run: StepRun) -> dict[str, Any]:
        _register_env_secrets(config.env, run)  # known already when resolved
        if config.target == "nodes":
            return await self._in_nodes(config, run)
        base = run.ctx.workflow.base_dir.resolve()
        if config.script:
            problem = self._script_problem(config.script, base)
            if problem:
                raise StepFailure(problem.message, location=problem.location, hint=problem.hint)
            argv = [config.shell, str(run.ctx.local_file(config.script))]
        else:
            argv = [config.shell, "-c", unescape_run(config.run or ""), "script"]
        argv += [_as_env_value(a) for a in config.args]
        if config.cwd:
            problem = self._cwd_problem(config.cwd, base)
            if problem:
                raise StepFailure(problem.message, location=problem.location, hint=problem.hint)
        with tempfile.NamedTemporaryFile(
            "w", suffix=".json", prefix="cw-results-", dir=run.ctx.workdir, delete=False
        ) as handle:
            json.dump(run.ctx.results, handle, default=str)
            results_file = Path(handle.name)
        try:
            cwd = (base / config.cwd).resolve() if config.cwd else base
            data = await self._run_local(argv, self._environment(config, run, results_file), cwd, run)
            parsed = self._json_output(data) if config.json_output else {}
            # `outputs:` written for merobox name the duration `execution_time`.
            run.response = {**parsed, **data, "execution_time": data["duration_seconds"]}
            return data
        finally:
            results_file.unlink(missing_ok=True)

    def _json_output(self, data: dict[str, Any]) -> dict[str, Any]:
        """With ``json_output``: stdout is JSON, and an object's keys can be captured."""
        if data["output"] is None:
            tail = data["stdout"].strip()[-200:]
            if not data["stdout_truncated"] and _read_json(data["stdout"])[1]:
                raise StepFailure(
                    f"json_output is set, but the script's stdout nests more than "
                    f"{_JSON_NESTING_LIMIT} levels deep, too deep to be read as data: {tail!r}",
                    kind="script",
                    location=self.key_location("json_output"),
                    hint=f"print JSON nested at most {_JSON_NESTING_LIMIT} levels deep",
                    data=data,
                )
            raise StepFailure(
                f"json_output is set, but the script's stdout is not JSON: {tail!r}",
                kind="script",
                location=self.key_location("json_output"),
                hint="print one JSON value (e.g. `echo '{\"ok\": true}'`) and log to stderr",
                data=data,
            )
        return data["output"] if isinstance(data["output"], dict) else {}

    async def _run_local(self, argv: list[str], env: dict[str, str], cwd: Path, run: StepRun) -> dict[str, Any]:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            transport, output = await loop.subprocess_exec(
                lambda: _CappedOutput(loop, _OUTPUT_LIMIT),
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise StepFailure(f"cannot start {argv[0]}: {exc}", location=self.location) from exc
        # Known gap: a background process the script leaves behind when it
        # exits normally (`cmd &`) keeps running; only a timeout or an
        # interrupt takes the process group down.
        try:
            # The output is read as it comes (so the script never blocks on a
            # full pipe) and kept up to the limit; the step ends when the
            # script has exited and its output is closed.
            await output.done
        except asyncio.CancelledError:
            # Timeout or interrupt: take the whole process group down.
            try:
                os.killpg(transport.get_pid(), signal.SIGKILL)
            except ProcessLookupError:
                pass
            await output.exited
            raise
        finally:
            # Closes our ends of the pipes even when a process that left the
            # group (`setsid cmd &`) still holds theirs.
            transport.close()
        return self._finish(
            run, transport.get_returncode() or 0, bytes(output.kept[1]), bytes(output.kept[2]),
            time.perf_counter() - started, sizes=(output.size[1], output.size[2]),
        )

    def _finish(
        self, run: StepRun, code: int, stdout: bytes, stderr: bytes, elapsed: float,
        node: str | None = None, sizes: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        sizes = sizes or (len(stdout), len(stderr))
        truncated = {
            stream: size > _OUTPUT_LIMIT
            for stream, size in zip(("stdout", "stderr"), sizes, strict=True)
        }
        out = _kept_text(stdout, truncated["stdout"], run.ctx.secrets)
        err = _kept_text(stderr, truncated["stderr"], run.ctx.secrets)
        prefix = f"[{node}] " if node else ""
        for line in out.splitlines()[-200:]:
            run.log(f"{prefix}stdout: {line}")
        for line in err.splitlines()[-200:]:
            run.log(f"{prefix}stderr: {line}")
        for stream, size in zip(("stdout", "stderr"), sizes, strict=True):
            if truncated[stream]:
                # Node containers report no total: their output stops being read at the cut.
                written = f" of {size} bytes" if node is None else ""
                run.log(f"{prefix}{stream}: [cut at 1 MiB{written}; the rest was dropped]")
        parsed = None
        if out.strip() and not truncated["stdout"]:
            parsed, too_deep = _read_json(out)
            if too_deep:
                run.log(
                    f"{prefix}stdout: JSON nested more than {_JSON_NESTING_LIMIT} levels "
                    "deep is kept as text only (`output` is null)"
                )
        data = {
            "exit_code": code,
            "stdout": out,
            "stderr": err,
            "output": parsed,
            "duration_seconds": round(elapsed, 6),
            "stdout_truncated": truncated["stdout"],
            "stderr_truncated": truncated["stderr"],
        }
        if code != 0:
            raise StepFailure(
                f"{prefix}script exited with code {code}"
                + (f": {_last_line(err, run.ctx.secrets)}" if err.strip() else ""),
                kind="script",
                expected="exit code 0",
                actual=f"exit code {code}",
                location=self.location,
                data=data,
            )
        return data

    async def _in_nodes(self, config: ScriptConfig, run: StepRun) -> dict[str, Any]:
        ctx = run.ctx
        if ctx.backend is None:
            raise StepFailure("`target: nodes` needs local nodes", location=self.key_location("target"))
        names = (
            [config.nodes] if isinstance(config.nodes, str)
            else list(config.nodes) if config.nodes
            else [n for n, ref in ctx.nodes.items() if ref.kind != "remote"]
        )
        if config.script:
            body = read_file(workflow_file(ctx.workflow.base_dir, config.script)).decode("utf-8")
        else:
            body = unescape_run(config.run or "")
        env = {str(k): _as_env_value(v) for k, v in config.env.items()}
        per_node: dict[str, Any] = {}
        failures: list[StepFailure] = []
        # every node runs it, so that one report shows each node that failed
        for name in names:
            started = time.perf_counter()
            code, stdout, stderr = await ctx.backend.exec_in_node(
                name, ["/bin/sh", "-c", body, "script", *[_as_env_value(a) for a in config.args]], env,
                # One byte more than is kept, so a cut is noticed.
                limit=_OUTPUT_LIMIT + 1,
            )
            try:
                per_node[name] = self._finish(
                    run, code, stdout, stderr, time.perf_counter() - started, node=name
                )
            except StepFailure as failure:
                per_node[name] = failure.data
                failures.append(failure)
        if not failures:
            return {"nodes": per_node, "exit_code": 0}
        failed = [n for n in names if per_node[n].get("exit_code") != 0]
        first = failures[0]
        raise StepFailure(
            (
                first.message
                if len(failures) == 1
                else f"script failed on {len(failures)} of {len(names)} nodes ({', '.join(failed)}); "
                + "; ".join(f.message for f in failures)
            ),
            kind="script",
            expected="exit code 0 on every node",
            actual=", ".join(f"{n}: exit code {per_node[n]['exit_code']}" for n in failed),
            location=self.location,
            data={"nodes": per_node, "exit_code": per_node[failed[0]]["exit_code"]},
        )
