"""The script step: values reach scripts as data, never as shell text."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from calimero_workflow.errors import WorkflowValidationError
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.results import Status
from calimero_workflow.workflow import parse_workflow


async def run_text(text: str, tmp_path: Path):
    wf = parse_workflow(textwrap.dedent(text), file=tmp_path / "wf.yml", environ={})
    return await WorkflowExecutor(wf, env={"PATH": "/usr/bin:/bin"}, workdir=tmp_path / "runs").run()


async def test_placeholder_values_are_never_executed(tmp_path: Path):
    marker = tmp_path / "pwned"
    result = await run_text(
        f"""
        name: t
        steps:
          - name: evil
            type: assert
            actual: "$(touch {marker}); `touch {marker}`; ' \\" ; touch {marker}"
            is_set: true
          - name: s
            type: script
            run: 'printf "%s" "$VAL"; printf "|%s" "$@"'
            args: ["${{results.evil.actual}}", "two words"]
            env: {{VAL: "${{results.evil.actual}}"}}
        """,
        tmp_path,
    )
    assert result.passed, [s.error for s in result.steps]
    evil = result.workflow_results["evil"]["actual"]
    assert result.workflow_results["s"]["stdout"] == f"{evil}|{evil}|two words"
    assert not marker.exists()


async def test_script_file_sees_results_and_captured_values(tmp_path: Path):
    script = tmp_path / "check.sh"
    script.write_text('cat "$CW_RESULTS_FILE"; echo; echo "$GREETING_VALUE"\n')
    result = await run_text(
        """
        name: t
        steps:
          - name: first
            type: assert
            actual: hello
            is_set: true
            outputs: {greeting_value: actual}
          - name: s
            type: script
            script: check.sh
        """,
        tmp_path,
    )
    assert result.passed, [s.error for s in result.steps]
    lines = result.workflow_results["s"]["stdout"].splitlines()
    assert json.loads(lines[0])["first"]["actual"] == "hello"
    assert lines[1] == "hello"


async def test_json_stdout_is_parsed_and_nonzero_exit_fails(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - name: j
            type: script
            run: 'echo "{\\"n\\": 3}"'
          - type: assert
            actual: ${results.j.output.n}
            equals: 3
          - name: boom
            type: script
            run: 'echo bad >&2; exit 7'
        """,
        tmp_path,
    )
    assert [s.status for s in result.steps] == [Status.PASSED, Status.PASSED, Status.FAILED]
    boom = result.steps[2]
    assert boom.error.message == "script exited with code 7: bad"
    assert boom.data["exit_code"] == 7


async def test_a_huge_last_stderr_line_is_cut_to_its_end_in_the_message(tmp_path: Path):
    async def message(code: str) -> str:
        result = await run_text(
            f"""
            name: t
            steps:
              - name: boom
                type: script
                run: python3 -c "import sys; {code}"
            """,
            tmp_path,
        )
        return result.steps[0].error.message

    # stderr is kept up to 1 MiB; the message quotes the last 500 characters of that
    assert await message("sys.stderr.write('y' * 2000000); sys.exit(1)") == (
        f"script exited with code 1: [{1024 * 1024 - 500} characters cut] …" + "y" * 500
    )
    # the end of the line, where a program says what went wrong, is what is kept
    assert await message("sys.stderr.write('x' * 1000 + 'END'); sys.exit(2)") == (
        "script exited with code 2: [503 characters cut] …" + "x" * 497 + "END"
    )


def _levels(value: object) -> int:
    levels = 0
    while isinstance(value, list):
        value, levels = (value[0] if value else None), levels + 1
    return levels


async def test_deeply_nested_json_stdout_is_data_up_to_a_limit_then_text(tmp_path: Path):
    # Python's parser stops near its recursion limit (a RecursionError, which
    # failed the step as an internal error); what parses must leave every
    # later walk over the results room to go down it
    for levels in (800, 801, 980, 100_000):
        (tmp_path / f"deep{levels}.json").write_text("[" * levels + "]" * levels + "\n")
    result = await run_text(
        """
        name: t
        steps:
          - {name: d800, type: script, run: cat deep800.json, json_output: true}
          - {name: d801, type: script, run: cat deep801.json}
          - {name: d980, type: script, run: cat deep980.json}
          - {name: d100000, type: script, run: cat deep100000.json, outputs: {out: output}}
          - name: later
            type: repeat
            count: 1
            steps:
              - type: script
                run: 'test -s "$CW_RESULTS_FILE" && test -n "$D800_OUTPUT"'
                env: {D800_OUTPUT: "${results.d800.output}"}
          - {name: asked, type: script, run: cat deep980.json, json_output: true}
        """,
        tmp_path,
    )
    statuses = [s.status for s in result.steps]
    assert statuses == [Status.PASSED] * 5 + [Status.FAILED], [
        s.error for s in result.all_steps() if s.error
    ]
    results = result.workflow_results
    assert _levels(results["d800"]["output"]) == 800
    for name in ("d801", "d980", "d100000"):
        assert results[name]["output"] is None and results[name]["stdout"].startswith("[[[")
    assert any("kept as text only" in line for line in result.steps[2].logs)
    asked = result.steps[5].error
    assert asked.kind == "script"
    assert "nests more than 800 levels deep" in asked.message


async def test_a_result_no_environment_can_hold_is_left_out_never_failing_later_steps(
    tmp_path: Path,
):
    # every earlier result reaches a script as a variable; one with a NUL (or a
    # lone surrogate, from JSON) made every later script step an internal error
    result = await run_text(
        r"""
        name: t
        steps:
          - name: nul
            type: script
            run: 'printf "Sup3rS3cretTok\0en"'
          - name: lone
            type: script
            run: "printf '{\"a\": \"x\\\\ud800y\"}'"
            json_output: true
            outputs: {lone_value: a}
          - name: unrelated
            type: script
            run: 'echo fine; test -z "$${LONE_VALUE+set}"'
          - name: reads_the_file
            type: script
            run: 'cat "$CW_RESULTS_FILE"'
        """,
        tmp_path,
    )
    assert result.passed, [s.error for s in result.all_steps() if s.error]
    assert result.workflow_results["nul"]["stdout"] == "Sup3rS3cretTok\0en"
    lone, unrelated, reads = result.steps[1:]
    said = [line for line in lone.logs if "left out of the environment" in line]
    assert said == [
        "SCRIPT_OUTPUT_LOCAL is left out of the environment: its value holds a NUL character, "
        "which no environment can; a named step's results are in $CW_RESULTS_FILE"
    ]
    said = [line for line in unrelated.logs if "left out" in line]
    assert len(said) == 1 and said[0].startswith(
        "LONE_VALUE is left out of the environment: its value holds '\\ud800' (a lone surrogate"
    )
    # the results file has them all, as JSON spells them
    seen = json.loads(result.workflow_results["reads_the_file"]["stdout"])
    assert seen["nul"]["stdout"] == "Sup3rS3cretTok\0en"
    assert seen["lone"]["output"] == {"a": "x\ud800y"}


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("env: {VALUE: '{{lone_value}}'}", "the value of VALUE holds '\\ud800' (a lone surrogate"),
        ("args: ['{{lone_value}}']", "text passed to a program cannot hold '\\ud800' (a lone surrogate"),
    ],
)
async def test_a_value_no_program_can_be_given_fails_its_own_step_clearly(
    tmp_path: Path, given: str, said: str
):
    result = await run_text(
        r"""
        name: t
        steps:
          - name: lone
            type: script
            run: "printf '{\"a\": \"x\\\\ud800y\"}'"
            json_output: true
            outputs: {lone_value: a}
          - name: uses_it
            type: script
            run: 'echo "$VALUE"'
            GIVEN
        """.replace("GIVEN", given),
        tmp_path,
    )
    error = result.steps[1].error
    assert error is not None and error.kind == "invalid", error
    assert said in error.message


def test_output_cut_at_the_limit_ends_at_a_whole_character():
    from calimero_workflow.steps.script import _OUTPUT_LIMIT, _kept_text

    data = b"a" * (_OUTPUT_LIMIT - 1) + "é".encode()  # its second byte is past the limit
    assert _kept_text(data, True, []) == "a" * (_OUTPUT_LIMIT - 1)
    # output that was not cut is read as it is, a bad byte included
    assert _kept_text(b"ok \xff", False, []) == "ok \ufffd"


async def test_timeout_kills_the_script(tmp_path: Path):
    pidfile = tmp_path / "pid"
    result = await run_text(
        f"""
        name: t
        steps:
          - type: script
            run: 'echo $$ > {pidfile}; sleep 30'
            timeout: 0.5
        """,
        tmp_path,
    )
    assert result.steps[0].error.kind == "timeout"
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def _run_in_a_fresh_interpreter(tmp_path: Path, workflow: str) -> subprocess.CompletedProcess[str]:
    """Run a workflow in its own interpreter, which prints its peak memory (KiB) last."""
    wf = tmp_path / "wf.yml"
    wf.write_text(textwrap.dedent(workflow))
    # The peak is read from /proc (VmHWM) after resetting it: Linux carries a
    # process's peak RSS across exec, so ru_maxrss of a child of a large
    # test process would report at least that process's size.
    program = textwrap.dedent(f"""
        import re, sys
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        from calimero_workflow.cli import main
        code = main(["run", {str(wf)!r}, "--workdir", {str(tmp_path / "runs")!r}, "-v"])
        with open("/proc/self/status") as f:
            print("peak-kib", re.search(r"VmHWM:\\s*(\\d+)", f.read()).group(1))
        sys.exit(code)
    """)
    return subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_huge_output_is_cut_while_it_is_read(tmp_path: Path):
    # 300 MB on stdout: kept up to 1 MiB, the rest read and dropped as it
    # comes, so the engine's memory stays flat (it held all of it, and
    # peaked at more than twice the output's size).
    done = _run_in_a_fresh_interpreter(
        tmp_path,
        """
        name: t
        steps:
          - name: big
            type: script
            run: 'head -c 300000000 /dev/zero | tr "\\0" a; echo finished >&2'
        """,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    peak_mib = int(done.stdout.rsplit("peak-kib", 1)[1]) / 1024
    assert peak_mib < 200, f"peak memory {peak_mib:.0f} MiB"
    assert "stdout: [cut at 1 MiB of 300000000 bytes; the rest was dropped]" in done.stdout
    assert "stderr: finished" in done.stdout


async def test_cut_output_is_marked_in_the_results(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - {name: big, type: script, run: 'head -c 1048600 /dev/zero | tr "\\0" b'}
          - {name: small, type: script, run: 'echo "{\\"a\\": 1}"'}
        """,
        tmp_path,
    )
    assert result.passed, [s.error for s in result.all_steps() if s.error]
    big = result.workflow_results["big"]
    assert len(big["stdout"]) == 1024 * 1024 and set(big["stdout"]) == {"b"}
    assert big["stdout_truncated"] is True and big["stderr_truncated"] is False
    assert big["output"] is None
    small = result.workflow_results["small"]
    assert small["output"] == {"a": 1} and small["stdout_truncated"] is False
    # a 1 MiB value cannot be an environment variable (the kernel refuses to
    # start the program): it is left out, and the step says so
    assert any("SCRIPT_OUTPUT_LOCAL is left out of the environment" in line for line in result.steps[1].logs)


def test_a_timed_out_script_that_left_a_process_behind_exits_quietly(tmp_path: Path):
    # `setsid` takes the background process out of the script's process group:
    # the timeout cannot kill it, and it holds the output pipe open. The run
    # used to end with "Exception ignored ... RuntimeError: Event loop is closed".
    pidfile = tmp_path / "pid"
    try:
        done = _run_in_a_fresh_interpreter(
            tmp_path,
            f"""
            name: t
            steps:
              - {{type: script, run: 'setsid sleep 298 & echo $! > {pidfile}; echo started', timeout: 2}}
            """,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "step timed out after 2 s" in done.stdout
        assert "Exception ignored" not in done.stderr, done.stderr
        assert "Event loop is closed" not in done.stderr, done.stderr
        assert done.stderr.strip() == "", done.stderr
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.mark.parametrize(
    "body, message",
    [
        ("run: 'echo ${results.a.b}'", "are not expanded inside `run`"),
        ("run: 'echo {{x}}'", "are not expanded inside `run`"),
        ("run: 'echo ${HOME}'", "are not expanded inside `run`"),
        ("run: 'echo ${HOME:-x; touch y}'", "are not expanded inside `run`"),
        ("run: echo\n    shell: '${results.a.b}'", "`shell` must be written out"),
        ("run: echo\n    shell: /tmp/x.sh", "shell must be one of"),
        ("script: missing.sh", "script not found: missing.sh"),
        ("script: ../../../etc/passwd", "outside the workflow's folder"),
        ("run: x\n    script: y.sh", "exactly one of `script`"),
    ],
)
def test_bad_script_configuration(tmp_path: Path, body: str, message: str, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sub = tmp_path / "wf"
    sub.mkdir()
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(f"name: t\nsteps:\n  - type: script\n    {body}\n", file=sub / "wf.yml", environ={})
    assert any(message in p.message for p in info.value.problems), info.value
    assert all(p.location.line >= 3 for p in info.value.problems)


async def test_target_nodes_is_refused_on_embedded_nodes(tmp_path: Path):
    # Before any node starts (the command line refuses it when the file loads).
    with pytest.raises(WorkflowValidationError, match="the embedded backend has none"):
        await run_text(
            """
            name: t
            nodes: {count: 1}
            steps:
              - type: script
                target: nodes
                run: echo hi
            """,
            tmp_path,
        )


async def test_env_values_never_reach_run_text_and_escapes_reach_the_shell(tmp_path: Path):
    wf_text = textwrap.dedent("""
        name: t
        steps:
          - name: s
            type: script
            run: 'printf "[%s]" "$${CTX}"; printf "%s" "$CW_WORKFLOW_DIR"'
            env: {CTX: "hello; touch PWNED"}
    """)
    wf = parse_workflow(wf_text, file=tmp_path / "wf.yml", environ={"CTX": "from-env; touch PWNED"})
    result = await WorkflowExecutor(wf, env={"PATH": "/usr/bin:/bin"}, workdir=tmp_path / "runs").run()
    assert result.passed, result.steps[0].error
    out = result.workflow_results["s"]["stdout"]
    assert out.startswith("[hello; touch PWNED]")
    assert Path(out[len("[hello; touch PWNED]"):]).is_absolute()
    assert not (tmp_path / "PWNED").exists()


async def test_a_timeout_is_an_expected_failure(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - {name: slow, type: script, run: sleep 10, timeout: 0.3, expected_failure: true, expected_error: timed out}
        """,
        tmp_path,
    )
    assert result.passed, result.steps[0].error
    assert result.workflow_results["slow"]["error_type"] == "timeout"


def test_cwd_outside_the_folders_or_missing_is_refused_at_load(tmp_path: Path, monkeypatch):
    (tmp_path / "wf").mkdir()
    (tmp_path / "wf" / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "wf")
    text = "name: c\nsteps:\n  - {type: script, run: pwd, cwd: %s}\n"
    parse_workflow(text % "sub", file=tmp_path / "wf" / "wf.yml", environ={})
    for cwd, message in (("../..", "outside the workflow's folder"), ("nope", "not a directory: nope")):
        with pytest.raises(WorkflowValidationError) as info:
            parse_workflow(text % cwd, file=tmp_path / "wf" / "wf.yml", environ={})
        (problem,) = info.value.problems
        assert message in problem.message and problem.location.line == 3


async def test_cwd_from_a_placeholder_is_confined_when_it_runs(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = await run_text(
        """
        name: c
        steps:
          - {name: where, type: assert, actual: /, is_set: true}
          - {type: script, run: pwd, cwd: "${results.where.actual}"}
        """,
        tmp_path,
    )
    step = result.steps[1]
    assert step.status is Status.FAILED
    assert "outside the workflow's folder" in step.error.message


async def test_merobox_names_of_script_results(tmp_path: Path):
    result = await run_text(
        """
        name: m
        steps:
          - {type: script, run: 'echo hi', outputs: {took: execution_time, code: exit_code}}
          - type: assert
            statements:
              - 'gte({{took}}, 0)'
              - 'equal({{code}}, 0)'
              - 'equal({{script_exit_code_local}}, 0)'
              - 'contains({{script_output_local}}, hi)'
              - 'gte({{script_execution_time_local}}, 0)'
        """,
        tmp_path,
    )
    assert result.passed, [s.error for s in result.all_steps() if s.error]


async def test_a_local_script_file_exports_its_path_as_merobox_does(tmp_path: Path):
    (tmp_path / "hello.sh").write_text("echo hello\n")
    result = await run_text(
        """
        name: m
        steps:
          - {type: script, script: hello.sh}
          - {type: assert, statements: ['equal({{script_script_path_local}}, hello.sh)']}
        """,
        tmp_path,
    )
    assert result.passed, [s.error for s in result.all_steps() if s.error]


def test_a_script_in_nodes_exports_per_node_and_applies_no_outputs(tmp_path: Path):
    # merobox's _execute_on_nodes: `script_<key>_<container>` for each node,
    # and `outputs:` never applied. (Running one needs Docker: see
    # test_docker_backend.py; this checks what the step makes of its results.)
    from calimero_workflow.placeholders import Resolver
    from calimero_workflow.steps.base import RunContext, RunEvents, StepRun

    (tmp_path / "probe.sh").write_text("echo hello\n")
    wf = parse_workflow(
        textwrap.dedent(
            """
            name: t
            nodes: {count: 2, prefix: node}
            steps:
              - name: s
                type: script
                target: nodes
                script: probe.sh
                outputs: {script_result: output, execution_time: execution_time}
            """
        ),
        file=tmp_path / "wf.yml",
        environ={},
    )
    (note,) = [n for n in wf.notes if "`outputs:` is not applied" in n]
    assert note.startswith(f"{tmp_path / 'wf.yml'}:5:5: script 's'")
    assert "${results.s.nodes.<node>…}" in note and "{{script_output_<node>}}" in note
    step = wf.steps[0]
    ctx = RunContext(
        workflow=wf, run_id="r", workdir=tmp_path, resolver=Resolver(), env={}, events=RunEvents()
    )
    one = {"exit_code": 0, "stdout": "hello\n", "stderr": "", "output": None, "duration_seconds": 0.25}
    data = {"nodes": {"node-1": one, "node-2": {**one, "stdout": "hi\n"}}, "exit_code": 0}
    step.export(step.static_config, data, StepRun(ctx=ctx, path="s"))
    assert ctx.captured == {
        "script_exit_code_node-1": 0,
        "script_output_node-1": "hello\n",
        "script_execution_time_node-1": 0.25,
        "script_script_path_node-1": "probe.sh",
        "script_exit_code_node-2": 0,
        "script_output_node-2": "hi\n",
        "script_execution_time_node-2": 0.25,
        "script_script_path_node-2": "probe.sh",
    }


async def test_outputs_of_a_script_that_fails_as_expected_are_captured(tmp_path: Path):
    result = await run_text(
        """
        name: x
        steps:
          - {name: s, type: script, run: 'echo out; exit 3', expected_failure: true, outputs: {code: exit_code, said: stdout}}
          - type: assert
            statements: ['equal({{code}}, 3)', 'contains({{said}}, out)', 'equal(${results.s.exit_code}, 3)']
        """,
        tmp_path,
    )
    assert result.passed, [s.error for s in result.all_steps() if s.error]


def test_a_secret_cut_in_two_by_the_stderr_line_limit_is_not_left_half_shown():
    from calimero_workflow.steps.script import _last_line

    secret = "Sup3r-S3cret-value"
    # the cut 500 characters from the end falls inside the secret
    line = "a" * 600 + secret + "b" * (500 - 6)
    message = _last_line(f"first\n{line}\n", [secret])
    assert "S3cret" not in message and "value" not in message and "alue" not in message
    assert message.endswith("b" * (500 - 6)) and "characters cut] …" in message
