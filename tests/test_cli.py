"""The command line: exit codes, messages, result files, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from calimero_workflow.cli import main

PASSING = """\
name: passing
steps:
  - name: a
    type: assert
    actual: ${GREETING:-hello}
    equals: hello
"""

FAILING = """\
name: failing
steps:
  - name: a
    type: assert
    actual: 1
    equals: 2
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_run_exit_0_and_results_file(tmp_path: Path, capsys):
    wf = write(tmp_path, "ok.yml", PASSING)
    out = tmp_path / "results.json"
    report = tmp_path / "report.json"
    code = main(["run", str(wf), "--results", str(out), "--report", str(report),
                 "--workdir", str(tmp_path / "w"), "--color", "never"])
    assert code == 0
    assert json.loads(out.read_text()) == {"a": {"check": "equals", "actual": "hello", "expected": "hello", "passed": True}}
    full = json.loads(report.read_text())
    assert full["status"] == "passed"
    assert [p["name"] for p in full["phases"]] == [
        "nuke", "pull_image", "sandbox_start", "deploy_contracts", "nodes_start",
        "register_remote_nodes", "steps", "on_failure", "cleanup",
    ]
    printed = capsys.readouterr().out
    assert "PASS a [assert]" in printed
    assert "PASSED passing: 1 passed, 0 failed, 0 skipped" in printed


def test_run_exit_1_on_failure(tmp_path: Path, capsys):
    wf = write(tmp_path, "bad.yml", FAILING)
    assert main(["run", str(wf), "--workdir", str(tmp_path / "w"), "--color", "never"]) == 1
    printed = capsys.readouterr().out
    assert f"{wf}:6:13: expected 1 to equal 2" in printed
    assert "FAILED failing" in printed


def test_env_flag_wins_over_environment(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("GREETING", "hello")
    wf = write(tmp_path, "ok.yml", PASSING)
    assert main(["run", str(wf), "--env", "GREETING=bye", "--workdir", str(tmp_path / "w")]) == 1


def test_exit_2_on_invalid_file_and_bad_flags(tmp_path: Path, capsys):
    wf = write(tmp_path, "invalid.yml", "name: x\nsteps:\n  - type: wait\n")
    assert main(["run", str(wf)]) == 2
    assert f"{wf}:3:5: step 'wait #1' (wait): missing required key 'seconds'" in capsys.readouterr().err
    assert main(["run", str(wf), "--env", "no-equals"]) == 2
    assert main(["validate", str(tmp_path / "missing.yml")]) == 2
    good = write(tmp_path, "good.yml", PASSING)
    capsys.readouterr()
    for argv in (["run"], ["run", str(good), "--image", "Calimero/Merod:edge"]):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError("argparse should exit")
    assert "'Calimero/Merod:edge' is not a valid image reference" in capsys.readouterr().err
    try:
        main(["run"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("argparse should exit")


def test_validate_reports_each_file(tmp_path: Path, capsys):
    good = write(tmp_path, "good.yml", PASSING)
    bad = write(tmp_path, "bad.yml", "name: x\nnodes: {count: 0}\nsteps: []\n")
    assert main(["validate", str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    assert f"{good}: ok" in captured.out
    assert f"{bad}:2:" in captured.err and "count" in captured.err


def test_several_files_one_failing(tmp_path: Path):
    ok = write(tmp_path, "ok.yml", PASSING)
    bad = write(tmp_path, "bad.yml", FAILING)
    out = tmp_path / "r.json"
    assert main(["run", str(ok), str(bad), "--results", str(out), "--workdir", str(tmp_path / "w")]) == 1
    data = json.loads(out.read_text())
    assert set(data) == {str(ok), str(bad)}


def test_a_file_named_twice_runs_once_and_a_failed_steps_data_is_in_the_report(
    tmp_path: Path, capsys
):
    wf = write(
        tmp_path,
        "par.yml",
        "name: par\nsteps:\n  - name: both\n    type: parallel\n    groups:\n"
        "      - {name: good, steps: [{type: wait, seconds: 0.01}]}\n"
        "      - {name: bad, steps: [{type: assert, actual: 1, equals: 2}]}\n",
    )
    out, report = tmp_path / "r.json", tmp_path / "report.json"
    code = main(
        ["run", str(wf), str(tmp_path / "." / "par.yml"), "--results", str(out),
         "--report", str(report), "--workdir", str(tmp_path / "w")]
    )
    assert code == 1
    assert "par.yml is named twice; it runs once" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {}  # one workflow: its own results, none passed
    (step,) = json.loads(report.read_text())["steps"]
    assert step["status"] == "failed"
    assert step["data"]["passed_groups"] == ["good"] and step["data"]["failed_groups"] == ["bad"]


def test_node_text_cannot_drive_the_terminal(tmp_path: Path, capsys):
    wf = write(tmp_path, "esc.yml", 'name: esc\nsteps:\n  - {type: assert, actual: "\\e[2Jboom", equals: x}\n')
    assert main(["run", str(wf), "--workdir", str(tmp_path / "w"), "--color", "never"]) == 1
    printed = capsys.readouterr().out
    assert "\x1b" not in printed
    assert "\\x1b[2Jboom" in printed


def test_sigterm_interrupts_cleans_up_and_exits_130(tmp_path: Path):
    wf = write(tmp_path, "slow.yml", "name: slow\nsteps:\n  - {type: wait, seconds: 60}\n")
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "calimero_workflow.cli", "run", str(wf), "--report", str(report),
         "--workdir", str(tmp_path / "w"), "--color", "never"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    seen = ""
    while "phase register_remote_nodes" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, seen + rest
    data = json.loads(report.read_text())
    assert data["interrupted"] is True and data["status"] == "failed"
    assert data["phases"][-1]["name"] == "cleanup"
    assert "INTERRUPTED slow" in rest


def test_a_signal_as_the_last_run_ends_still_writes_the_result_files(tmp_path: Path):
    # the signal lands after the last await of the run: asyncio then cancels
    # the finished task, which must not lose what ran
    wf = write(tmp_path, "ok.yml", PASSING)
    junit, report = tmp_path / "junit.xml", tmp_path / "report.json"
    script = (
        "import os, signal, sys\n"
        "from calimero_workflow.report.console import ConsoleReporter\n"
        "finished = ConsoleReporter.run_finished\n"
        "def signal_after(self, result):\n"
        "    finished(self, result)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "ConsoleReporter.run_finished = signal_after\n"
        "from calimero_workflow.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "run", str(wf), "--junit", str(junit), "--report", str(report),
         "--workdir", str(tmp_path / "w"), "--color", "never"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
    )  # fmt: skip
    assert done.returncode == 130, done.stdout + done.stderr
    assert json.loads(report.read_text())["status"] == "passed"
    assert ET.parse(junit).getroot().get("tests") == "1"


def test_text_with_line_breaks_cannot_start_a_workflow_command_line(tmp_path: Path, capsys):
    # A runner reads any output line that starts with `::` (after spaces) as a
    # workflow command; text from apps and nodes must never begin a line.
    wf = write(
        tmp_path,
        "cmd.yml",
        'name: cmd\nsteps:\n  - {type: assert, actual: "a\\n::error::forged\\n  ::add-mask::x", equals: "b\\n::warning::w"}\n',
    )
    assert main(["run", str(wf), "--workdir", str(tmp_path / "w"), "--color", "never"]) == 1
    printed = capsys.readouterr().out
    assert "::error::forged" in printed and "::warning::w" in printed  # still shown
    for line in printed.splitlines():
        assert not line.lstrip().startswith("::"), line


_SLOW_STEPS = "  - {type: wait, seconds: 60}\n  - {type: wait, seconds: 1}\n"


def _start_slow_run(tmp_path: Path, nodes: int = 0, steps: str = _SLOW_STEPS) -> tuple[subprocess.Popen, str, Path]:
    head = f"nodes: {{count: {nodes}}}\n" if nodes else ""
    wf = write(tmp_path, "slow.yml", f"name: slow\n{head}steps:\n{steps}")
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "calimero_workflow.cli", "run", str(wf), "--report", str(report),
         "--workdir", str(tmp_path / "w"), "--color", "never"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    seen = ""
    while "phase register_remote_nodes" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    return proc, seen, report


def test_signals_during_cleanup_do_not_stop_it(tmp_path: Path):
    # A second Ctrl-C or SIGTERM while cleaning up (impatient users, CI
    # runners that signal twice) must not cut cleanup or the report short.
    for gap in (0.0, 0.02, 0.05, 0.15):
        where = tmp_path / f"gap-{gap}"
        where.mkdir()
        proc, seen, report = _start_slow_run(where, nodes=2)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        time.sleep(gap)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130, f"gap {gap}: " + seen + rest
        assert "Traceback" not in rest, rest
        data = json.loads(report.read_text())
        assert data["interrupted"] is True
        assert data["phases"][-1]["name"] == "cleanup" and data["phases"][-1]["status"] == "passed"


def test_phases_not_reached_because_of_an_interrupt_say_so(tmp_path: Path):
    wf = write(tmp_path, "s.yml", "name: s\nnodes: {count: 1}\nsteps: [{type: wait, seconds: 1}]\n")
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "calimero_workflow.cli", "run", str(wf), "--report", str(report),
         "--workdir", str(tmp_path / "w"), "--color", "never"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    assert proc.stdout is not None
    seen = ""
    while "phase pull_image" not in seen:
        seen += proc.stdout.readline()
    proc.send_signal(signal.SIGINT)  # during nodes_start
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, seen + rest
    phases = {p["name"]: p for p in json.loads(report.read_text())["phases"]}
    assert phases["nodes_start"]["status"] == "failed", phases
    assert phases["register_remote_nodes"]["detail"] == phases["steps"]["detail"] == "interrupted"


def test_an_interrupted_step_is_recorded_and_the_rest_skipped(tmp_path: Path):
    proc, seen, report = _start_slow_run(tmp_path)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, seen + rest
    data = json.loads(report.read_text())
    steps = data["steps"]
    # cut short by the interrupt: skipped, not failed; the run says interrupted
    assert [(s["status"], (s["error"] or {}).get("kind")) for s in steps] == [("skipped", "cancelled"), ("skipped", None)]
    assert steps[0]["error"]["message"] == "the run was interrupted"
    assert data["counts"] == {"total": 2, "passed": 0, "failed": 0, "skipped": 2}
    assert "INTERRUPTED slow: 0 passed, 0 failed, 2 skipped" in rest


def test_an_interrupted_nested_step_is_recorded_under_its_parent(tmp_path: Path):
    steps = "  - {name: loop, type: repeat, count: 2, steps: [{type: wait, seconds: 60}]}\n"
    proc, seen, report = _start_slow_run(tmp_path, steps=steps)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, seen + rest
    data = json.loads(report.read_text())
    (loop,) = data["steps"]
    assert [c["path"] for c in loop["children"]] == ["loop[1]/wait #1"]
    assert data["counts"] == {"total": 1, "passed": 0, "failed": 0, "skipped": 1}


def test_result_paths_that_cannot_be_written_are_refused_before_the_run(tmp_path: Path, capsys):
    wf = write(tmp_path, "ok.yml", PASSING)
    (tmp_path / "dir").mkdir()
    same = tmp_path / "same.json"
    for extra in (["--results", str(tmp_path / "dir")], ["--report", str(same), "--results", str(same)],
                  ["--junit", str(tmp_path / "dir")], ["--junit", str(same), "--report", str(same)]):
        assert main(["run", str(wf), "--workdir", str(tmp_path / "w"), *extra]) == 2
        err = capsys.readouterr().err
        assert "is a directory" in err or "name the same file" in err
    assert not (tmp_path / "w").exists()  # nothing ran


def test_junit_file_has_a_suite_per_workflow_and_a_case_per_step(tmp_path: Path, monkeypatch):
    import xml.etree.ElementTree as ET

    monkeypatch.chdir(tmp_path)
    ok = write(tmp_path, "ok.yml", PASSING)
    bad = write(tmp_path, "bad.yml", FAILING)
    junit = tmp_path / "reports" / "junit.xml"
    assert main(["run", "ok.yml", "bad.yml", "--junit", str(junit), "--workdir", "w"]) == 1
    root = ET.parse(junit).getroot()
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "2", "1")
    suites = {s.get("file"): s for s in root.iter("testsuite")}
    assert set(suites) == {ok.name, bad.name}  # relative to where the command ran
    (case,) = suites[bad.name].iter("testcase")
    assert (case.get("name"), case.get("file"), case.get("line")) == ("a", "bad.yml", "3")
    failure = case.find("failure")
    assert failure is not None and "2" in failure.get("message") and "1" in failure.text
    assert suites[ok.name].find("testcase/failure") is None


def test_a_failure_to_write_results_is_an_error_not_a_traceback(tmp_path: Path, capsys):
    wf = write(tmp_path, "ok.yml", PASSING)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    code = main(["run", str(wf), "--workdir", str(tmp_path / "w"), "--results", str(blocker / "r.json")])
    assert code == 2
    # Found before the run (see test_output_folders_that_are_files_are_refused_before_the_run).
    assert f"the folder of --results ({blocker}) is a file" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_logs_of_two_workflows_with_one_name_go_to_two_folders(tmp_path: Path):
    one = write(tmp_path, "one.yml", "name: same\nnodes: {count: 1}\nsteps: [{type: wait, seconds: 0.01}]\n")
    two = write(tmp_path, "two.yml", "name: same\nnodes: {count: 1}\nsteps: [{type: wait, seconds: 0.01}]\n")
    logs = tmp_path / "logs"
    report = tmp_path / "report.json"
    assert main(["run", str(one), str(two), "--logs-dir", str(logs), "--report", str(report),
                 "--workdir", str(tmp_path / "w")]) == 0
    files = [set(r["node_log_files"].values()) for r in json.loads(report.read_text())]
    assert len(files[0] | files[1]) == 2 and all(Path(f).is_file() for f in files[0] | files[1])


def test_result_files_that_are_a_workflow_file_are_refused_before_the_run(
    tmp_path: Path, capsys, monkeypatch
):
    wf = write(tmp_path, "w.yml", PASSING)
    other = write(tmp_path, "other.yml", PASSING.replace("passing", "other"))
    (tmp_path / "linked.yml").hardlink_to(other)
    monkeypatch.chdir(tmp_path)
    cases = [
        (["w.yml", "--results", "w.yml"], "--results w.yml is the workflow file w.yml"),
        (["w.yml", "--junit", "./w.yml"], "--junit w.yml is the workflow file w.yml"),
        (["w.yml", "--report", str(wf)], f"--report {wf} is the workflow file w.yml"),
        # any file given, and under another name
        (["w.yml", "other.yml", "--results", "../" + tmp_path.name + "/other.yml"], "is the workflow file other.yml"),
        (["w.yml", "other.yml", "--report", "linked.yml"], "--report linked.yml is the workflow file other.yml"),
    ]
    for argv, message in cases:
        assert main(["run", *argv, "--workdir", str(tmp_path / "w")]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "writing the result would overwrite it" in err, err
        assert "hint: give" in err
    assert wf.read_text() == PASSING
    assert other.read_text() == PASSING.replace("passing", "other")
    assert not (tmp_path / "w").exists()  # nothing ran


def test_result_files_that_a_workflow_reads_are_refused_before_the_run(tmp_path: Path, capsys):
    script = write(tmp_path, "check.sh", "echo ok\n")
    wf = write(tmp_path, "wf.yml", "name: s\nsteps:\n  - {type: script, script: check.sh}\n")
    assert main(["run", str(wf), "--junit", str(script), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert f"--junit {script} is {script}, which {wf} reads: writing the result would overwrite it" in err
    assert script.read_text() == "echo ok\n"
    assert not (tmp_path / "w").exists()


def test_a_bad_wasm_time_limit_is_refused_before_the_run(tmp_path: Path):
    wf = write(tmp_path, "ok.yml", "name: n\nnodes: {count: 1}\nsteps:\n  - {type: wait, seconds: 0.01}\n")
    results = tmp_path / "results.json"
    env = {**os.environ, "CW_WASM_TIME_LIMIT": "abc",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "calimero_workflow.cli", "run", str(wf), "--results", str(results),
         "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "environment: CW_WASM_TIME_LIMIT='abc' is not a number of seconds" in done.stderr
    assert "hint: unset CW_WASM_TIME_LIMIT" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not results.exists() and not (tmp_path / "w").exists()


def test_output_folders_that_are_files_are_refused_before_the_run(tmp_path: Path, capsys):
    wf = write(tmp_path, "ok.yml", PASSING)
    afile = write(tmp_path, "afile", "not a folder")
    cases = [
        (["--workdir", str(afile)], f"--workdir {afile} is a file, not a folder"),
        (["--logs-dir", str(afile)], f"--logs-dir {afile} is a file, not a folder"),
        (["--logs-dir", str(afile / "logs")], f"cannot be a folder: {afile} is a file"),
        (["--results", str(afile / "x.json")], f"the folder of --results ({afile}) is a file"),
        (["--junit", str(afile / "sub" / "j.xml")], f"cannot be a folder: {afile} is a file"),
    ]
    for extra, message in cases:
        workdir = [] if extra[0] == "--workdir" else ["--workdir", str(tmp_path / "w")]
        assert main(["run", str(wf), *workdir, *extra]) == 2, extra
        assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # nothing ran


def test_validate_prints_the_notes(tmp_path: Path, capsys):
    wf = write(tmp_path, "m.yml", "name: m\ne2e_mode: true\nvariables: {x: 1}\nsteps: []\n")
    assert main(["validate", str(wf)]) == 0
    out = capsys.readouterr().out
    assert "note: e2e_mode:" in out
    assert "key 'variables' is not a setting here and is ignored" in out


def test_an_env_value_never_runs_as_shell_code(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EVIL", "$(touch PWNED)")
    wf = write(tmp_path, "inj.yml", "name: inj\nsteps:\n  - type: ${T:-script}\n    run: echo hello ${EVIL}\n")
    assert main(["run", str(wf), "--workdir", str(tmp_path / "w")]) == 2
    assert f"{wf}:4:10: `${{...}}` and `{{{{...}}}}` are not expanded inside `run`" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists()


def test_bad_input_is_a_located_error_never_a_traceback(tmp_path: Path, capsys):
    texts = {
        "big.yml": "name: x\nsteps:\n  - {type: wait, seconds: 1" + "0" * 5000 + "}\n",
        "url.yml": 'name: x\nremote_nodes: {r: {url: "http://bob:Hunter2Pass@"}}\nsteps: []\n',
        "ports.yml": "name: x\nnodes: {count: 2, base_rpc_port: 65535}\nsteps: []\n",
        "mesh.yml": "name: x\nnodes: {count: 1}\nsteps:\n  - {type: create_mesh, context_node: calimero-node-1, application_id: a, nodes: 1}\n",
    }
    for name, text in texts.items():
        wf = write(tmp_path, name, text)
        for command in (["validate", str(wf)], ["run", str(wf), "--workdir", str(tmp_path / "w")]):
            assert main(command) == 2, (name, command)
            err = capsys.readouterr().err
            assert err.startswith(f"{wf}:"), err
            assert "Traceback" not in err and "Hunter2Pass" not in err


def test_a_script_in_node_containers_is_refused_before_embedded_nodes_start(tmp_path: Path, capsys):
    wf = write(tmp_path, "t.yml", "name: t\nnodes: {count: 1}\nsteps:\n  - {type: script, run: 'true', target: nodes}\n")
    assert main(["validate", str(wf)]) == 0  # the backend is not known yet
    capsys.readouterr()
    assert main(["run", str(wf), "--workdir", str(tmp_path / "w")]) == 2
    assert "embedded backend has none" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_ctrl_c_stops_a_catastrophic_regular_expression(tmp_path: Path):
    steps = "  - type: assert\n    statements: [\"regex(" + "a" * 5000 + "b, '(a|aa)+$')\"]\n"
    proc, seen, report = _start_slow_run(tmp_path, steps=steps)
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, seen + rest
    # the process does not wait for the matching thread (it ends by itself)
    assert time.monotonic() - started < 4
    assert "Traceback" not in rest


# -- what the reports count ------------------------------------------------------------


def _junit_cases(path: Path) -> list:
    import xml.etree.ElementTree as ET

    return list(ET.parse(path).getroot().iter("testcase"))


def test_a_fail_fast_parallel_counts_what_it_cancelled_as_skipped(tmp_path: Path, capsys):
    # the slow group comes first in the file and finishes last
    wf = write(
        tmp_path,
        "par.yml",
        """\
name: par
steps:
  - name: both
    type: parallel
    failure_mode: fail-fast
    groups:
      - name: slow
        steps: [{name: nap, type: wait, seconds: 30}, {name: after, type: wait, seconds: 0.01}]
      - name: quick
        steps: [{name: bad, type: assert, actual: 1, equals: 2}]
""",
    )
    junit = tmp_path / "j.xml"
    code = main(["run", str(wf), "--junit", str(junit), "--workdir", str(tmp_path / "w"), "--color", "never"])
    assert code == 1
    assert "FAILED par: 0 passed, 1 failed, 2 skipped" in capsys.readouterr().out
    cases = _junit_cases(junit)
    assert [c.get("name") for c in cases] == ["both/slow/nap", "both/slow/after", "both/quick/bad"]
    nap, after, bad = cases
    why = "cancelled: group 'quick' failed and failure_mode is fail-fast"
    assert nap.find("skipped").get("message") == why and nap.find("failure") is None
    assert after.find("skipped") is not None
    assert bad.find("failure").get("type") != "cancelled"


def test_a_file_that_does_not_load_is_an_error_testcase_and_the_others_run(
    tmp_path: Path, monkeypatch, capsys
):
    import xml.etree.ElementTree as ET

    monkeypatch.chdir(tmp_path)
    write(tmp_path, "good.yml", PASSING)
    write(tmp_path, "bad.yml", "name: bad\nsteps:\n  - type: wait\n")
    code = main(["run", "good.yml", "bad.yml", "--junit", "j.xml", "--results", "r.json",
                 "--report", "rep.json", "--workdir", "w", "--color", "never"])
    assert code == 2  # a file did not load
    captured = capsys.readouterr()
    assert "bad.yml:3:5: step 'wait #1' (wait): missing required key 'seconds'" in captured.err
    assert "PASSED passing" in captured.out  # the valid file ran
    root = ET.parse(tmp_path / "j.xml").getroot()
    suites = {s.get("file"): s for s in root.iter("testsuite")}
    assert list(suites) == ["good.yml", "bad.yml"]
    (case,) = suites["bad.yml"].iter("testcase")
    assert (case.get("name"), case.get("file"), case.get("line")) == ("phase load", "bad.yml", "3")
    assert case.find("error").get("type") == "invalid"
    assert "missing required key 'seconds'" in case.find("error").get("message")
    assert (root.get("tests"), root.get("errors"), root.get("failures")) == ("2", "1", "0")
    report = json.loads((tmp_path / "rep.json").read_text())
    assert [(r["file"], r["status"]) for r in report] == [("good.yml", "passed"), ("bad.yml", "failed")]
    assert report[1]["counts"] == {"total": 1, "passed": 0, "failed": 1, "skipped": 0}
    assert json.loads((tmp_path / "r.json").read_text()) == {
        "good.yml": {"a": {"check": "equals", "actual": "hello", "expected": "hello", "passed": True}},
        "bad.yml": {},
    }


def test_several_files_end_with_one_line_for_all_of_them(tmp_path: Path, capsys, monkeypatch):
    import xml.etree.ElementTree as ET

    monkeypatch.chdir(tmp_path)
    write(tmp_path, "good.yml", PASSING)
    write(tmp_path, "bad.yml", FAILING)
    # two problems: two `phase load` testcases, told apart by their lines
    write(tmp_path, "broken.yml", "name: broken\nsteps:\n  - type: wait\n  - {type: nope}\n")
    code = main(["run", "bad.yml", "broken.yml", "good.yml", "--junit", "j.xml", "--report", "r.json",
                 "--workdir", "w", "--color", "never"])
    assert code == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("PASSED passing: 1 passed")  # the last workflow's own line
    assert lines[-1] == "FAILED 3 workflows: 1 passed, 1 failed, 1 invalid"
    phases = json.loads((tmp_path / "r.json").read_text())[1]["phases"]
    assert [(p["name"], p["error"]["location"]) for p in phases] == [
        ("load", "broken.yml:3:5"), ("load", "broken.yml:4:12")
    ]
    suite = next(s for s in ET.parse(tmp_path / "j.xml").getroot().iter("testsuite") if s.get("file") == "broken.yml")
    assert [(c.get("name"), c.get("file"), c.get("line")) for c in suite.iter("testcase")] == [
        ("phase load", "broken.yml", "3"), ("phase load", "broken.yml", "4")
    ]
    # all passing: the line says so; one file: no such line
    write(tmp_path, "bad.yml", PASSING.replace("passing", "other"))
    assert main(["run", "bad.yml", "good.yml", "--workdir", "w", "--color", "never"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "PASSED 2 workflows: 2 passed, 0 failed, 0 invalid"
    assert main(["run", "good.yml", "--workdir", "w", "--color", "never"]) == 0
    assert "workflows:" not in capsys.readouterr().out


def test_a_failed_phase_counts_as_failed_and_keeps_its_time(tmp_path: Path, capsys):
    import socket

    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        wf = write(
            tmp_path, "port.yml", f"name: port\nnodes: {{count: 1, base_rpc_port: {port}}}\nsteps: [{{type: wait, seconds: 0.01}}]\n"
        )
        junit, report = tmp_path / "j.xml", tmp_path / "rep.json"
        code = main(["run", str(wf), "--junit", str(junit), "--report", str(report),
                     "--workdir", str(tmp_path / "w"), "--color", "never"])
    finally:
        taken.close()
    assert code == 1
    assert "FAILED port: 0 passed, 1 failed, 1 skipped" in capsys.readouterr().out
    data = json.loads(report.read_text())
    phase = next(p for p in data["phases"] if p["name"] == "nodes_start")
    assert phase["status"] == "failed" and data["counts"]["failed"] == 1
    case = next(c for c in _junit_cases(junit) if c.get("name") == "phase nodes_start")
    assert case.find("error") is not None
    assert case.get("time") == f"{max(phase['duration_s'], 0):.3f}" and phase["duration_s"] > 0


def test_a_step_that_fails_on_its_own_capture_counts_as_failed(tmp_path: Path, capsys):
    wf = write(
        tmp_path,
        "cap.yml",
        """\
name: cap
steps:
  - name: loop
    type: repeat
    count: 2
    outputs: {x: no_such_field}
    steps:
      - {type: assert, actual: 1, equals: 1}
""",
    )
    junit = tmp_path / "j.xml"
    assert main(["run", str(wf), "--junit", str(junit), "--workdir", str(tmp_path / "w"), "--color", "never"]) == 1
    assert "FAILED cap: 2 passed, 1 failed, 0 skipped" in capsys.readouterr().out
    cases = {c.get("name"): c for c in _junit_cases(junit)}
    assert "cannot be captured" in cases["loop"].find("failure").get("message")


def test_a_bad_env_flag_never_shows_its_value(tmp_path: Path, capsys):
    wf = write(tmp_path, "ok.yml", PASSING)
    assert main(["run", str(wf), "--env", "hunter2-secret", "--env", "1X=hunter3-secret"]) == 2
    err = capsys.readouterr().err
    assert "--env number 1 has no '='" in err and "--env '1X'=…: the key is not a variable name" in err
    assert "hunter" not in err


def test_result_files_are_made_of_redacted_records_then_cut(tmp_path: Path):
    import argparse
    import xml.etree.ElementTree as ET

    from calimero_workflow.cli import _write_outputs
    from calimero_workflow.results import ErrorInfo, RunResult, Status, StepRecord

    secret = "pw-" + "s3cret" * 4
    steps = [
        StepRecord(f"s{pad}", "assert", f"s{pad}", Status.FAILED,
                   error=ErrorInfo("x" * pad + secret + " and the rest"))
        for pad in range(980, 1000)
    ]
    run = RunResult("wf", str(tmp_path / "wf.yml"), "r", "embedded", Status.FAILED, steps=steps,
                    workflow_results={"failed": {secret: "failed"}})
    args = argparse.Namespace(results=tmp_path / "r.json", report=tmp_path / "rep.json", junit=tmp_path / "j.xml")
    _write_outputs(args, [run], [secret, "failed"])
    texts = [p.read_text() for p in (args.results, args.report, args.junit)]
    assert not [t for t in texts if secret[:5] in t]  # never half the secret at the 1000-character cut
    # the masked word "failed" is masked in values, never in the files' own syntax
    assert json.loads(texts[1])["status"] == "failed"
    assert json.loads(texts[0]) == {"***": {"***": "***"}}
    messages = [c.find("failure").get("message") for c in ET.parse(args.junit).getroot().iter("testcase")]
    assert all(len(m) <= 1000 for m in messages)


def test_result_and_log_files_replace_links_never_write_through_them(tmp_path: Path):
    wf = write(tmp_path, "l.yml", "name: l\nnodes: {count: 1, prefix: n}\nsteps: [{type: wait, seconds: 0.01}]\n")
    victims = {name: tmp_path / f"victim-{name}" for name in ("log", "state", "results", "tmp", "junit")}
    for victim in victims.values():
        victim.write_text("precious\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "n-1.log").symlink_to(victims["log"])
    (logs / "n-1.state.json").symlink_to(victims["state"])
    (tmp_path / "r.json").symlink_to(victims["results"])
    (tmp_path / "r.json.tmp").symlink_to(victims["tmp"])
    (tmp_path / "j.xml").symlink_to(victims["junit"])
    code = main(
        ["run", str(wf), "--logs-dir", str(logs), "--results", str(tmp_path / "r.json"),
         "--junit", str(tmp_path / "j.xml"), "--workdir", str(tmp_path / "w")]
    )
    assert code == 0
    assert all(v.read_text() == "precious\n" for v in victims.values())
    written = list(logs.rglob("n-1.log"))
    assert written and all(not p.is_symlink() and "started" in p.read_text() for p in written)
    assert not (tmp_path / "r.json").is_symlink() and json.loads((tmp_path / "r.json").read_text()) == {}
    assert not (tmp_path / "j.xml").is_symlink()


def test_result_files_are_written_whatever_the_depth_of_a_scripts_json(tmp_path: Path, capsys):
    # a redacted copy of the records is made before any file is: it went down
    # a script's JSON one call per level, and a 600-level output lost every file
    secret = "abcdefgh12"
    (tmp_path / "deep.json").write_text("[" * 600 + f'"{secret}"' + "]" * 600)
    wf = write(tmp_path, "deep.yml", """\
name: deep
steps:
  - name: deep
    type: script
    run: cat deep.json
    json_output: true
""")
    files = {flag: tmp_path / name for flag, name in
             (("--results", "r.json"), ("--report", "rep.json"), ("--junit", "j.xml"))}
    code = main(["run", str(wf), "--env", f"API_TOKEN={secret}", "--workdir", str(tmp_path / "w"),
                 "--color", "never", *[str(a) for pair in files.items() for a in pair]])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "PASSED deep" in printed.out and "Traceback" not in printed.err
    output = json.loads(files["--results"].read_text())["deep"]["output"]
    levels = 0
    while isinstance(output, list):
        output, levels = output[0], levels + 1
    assert (levels, output) == (600, "***")
    assert json.loads(files["--report"].read_text())["status"] == "passed"
    case = ET.parse(files["--junit"]).getroot().find(".//testcase")
    assert case is not None and case.find("failure") is None
    assert not [p for p in files.values() if secret in p.read_text()]


APP = Path(__file__).resolve().parents[1] / "apps" / "kv-store" / "kv_store.wasm"


def test_a_result_file_is_never_one_the_run_read_through_a_placeholder(tmp_path: Path, capsys):
    app = tmp_path / "victim.wasm"
    app.write_bytes(APP.read_bytes())
    wf = write(tmp_path, "pick.yml", """\
name: pick
nodes: {count: 1, prefix: n}
steps:
  - {name: pick, type: script, run: printf victim.wasm}
  - {name: install, type: install_application, node: n-1, path: "${results.pick.stdout}"}
""")
    report = tmp_path / "report.json"
    code = main(["run", str(wf), "--results", str(app), "--report", str(report),
                 "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--results {app} is {app.resolve()}, which the run read" in err
    assert app.read_bytes() == APP.read_bytes()  # the app is intact
    assert json.loads(report.read_text())["status"] == "passed"  # the rest is written


def test_the_command_ignores_a_signal_once_it_has_finished(tmp_path: Path):
    # a SIGTERM in the moment between the command's last line and the
    # process's exit must not turn a finished run's code into a death (143)
    wf = write(tmp_path, "ok.yml", PASSING)
    probe = (
        "import signal, sys\n"
        "from calimero_workflow import cli\n"
        "cli._own_process = True\n"
        f"code = cli.main(['run', {str(wf)!r}, '--workdir', {str(tmp_path / 'w')!r}])\n"
        "print(code, signal.getsignal(signal.SIGTERM) is signal.SIG_IGN,"
        " signal.getsignal(signal.SIGINT) is signal.SIG_IGN)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-3:] == ["0", "True", "True"], done.stdout + done.stderr
    # called by a program, it leaves the program's handlers as they were
    before = signal.getsignal(signal.SIGTERM)
    assert main(["run", str(wf), "--workdir", str(tmp_path / "w2")]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
