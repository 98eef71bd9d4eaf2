"""The action image, started exactly as the Actions runner starts a container action.

The runner's ``docker run`` (actions/runner ContainerActionHandler): a
``--name`` and ``--label``, ``--workdir /github/workspace``, every variable
passed as ``-e NAME`` with its value in the process environment (dashed
input names included), the docker socket, the runner's temp, home, workflow
and file-command folders and the workspace mounted, and ``--network`` only
when the job has one. Nodes are sibling containers of our node image on the
same daemon. Everything here is created by the test, labelled, and removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import docker.errors
import pytest

from docker_support import NODE_IMAGE, ROOT, _missing, docker_client, leftovers
from test_report_github import read_env_file, runner_commands

pytestmark = pytest.mark.docker

ACTION_IMAGE = os.environ.get("CW_ACTION_IMAGE", "calimero-workflow/action:dev")
#: The runner's user on hosted runners (uid 1001, group docker 121).
RUNNER_UID, RUNNER_GID = 1001, 121
#: Other checkouts may run these tests on the same daemon at the same time:
#: each session labels its objects with its own value and removes only those.
#: (The key differs from the older ``calimero-workflow.e2e``, which some
#: checkouts still remove wholesale.)
TEST_LABEL = "calimero-workflow.e2e-session"
SESSION = secrets.token_hex(4)
MINE = f"{TEST_LABEL}={SESSION}"

FAILING = """\
name: report sample
nodes: {count: 2, prefix: node}
steps:
  - name: install
    type: install_application
    node: node-1
    path: ./kv_store.wasm
  - name: ctx
    type: create_mesh
    context_node: node-1
    application_id: ${results.install.application_id}
    nodes: [node-2]
  - name: check
    type: assert
    non_blocking: true
    statements:
      - equal(1, 1)
      - equal(${results.ctx.context_id}, not-this)
  - name: missing
    type: call
    node: node-1
    context_id: ${results.ctx.context_id}
    method: no_such_method
    retries: 0
"""
CHECK_LINE, MISSING_LINE = 18, 19

JOB_NETWORK_WORKFLOW = """\
name: with a service
nodes: {count: 1, prefix: node}
remote_nodes:
  svc: {url: "http://svc-node:2528"}
steps:
  - name: local
    type: create_identity
    node: node-1
  - name: remote
    type: create_identity
    node: svc
"""


@pytest.fixture(scope="module")
def client():
    return docker_client()


@pytest.fixture(scope="module")
def action_image(client) -> str:
    """The action image, rebuilt from this checkout (layers come from the cache)."""
    base = "python:3.11-slim"
    try:
        client.images.get(base)
    except Exception:
        base = os.environ.get("CW_LOCAL_BASE_IMAGE", "calimero-workflow/base:bookworm")
    built = subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "-f",
            "Dockerfile",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "-t",
            ACTION_IMAGE,
            ".",
        ],
        cwd=ROOT,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if built.returncode != 0:
        _missing(f"cannot build {ACTION_IMAGE} on {base}: {built.stderr[-2000:]}")
    return ACTION_IMAGE


@dataclass
class Runner:
    """One job's folders on the "host", laid out as the runner lays them out."""

    temp: Path
    workspace: Path

    @classmethod
    def create(cls, root: Path) -> Runner:
        temp = root / "_temp"
        for sub in ("_github_home", "_github_workflow", "_runner_file_commands"):
            (temp / sub).mkdir(parents=True)
        (temp / "_github_workflow" / "event.json").write_text("{}")
        workspace = root / "repo"
        workspace.mkdir()
        return cls(temp=temp, workspace=workspace)


@dataclass
class ActionRun:
    code: int
    stdout: str
    outputs: dict[str, str]
    summary: str
    state: dict[str, str]

    def errors(self) -> list[tuple[str | None, str | None, str]]:
        return [
            (p.get("file"), p.get("line"), m)
            for n, p, m in runner_commands(self.stdout)
            if n == "error"
        ]


@dataclass
class Started:
    """An action container the way the runner started it, still running."""

    proc: subprocess.Popen
    name: str
    files: dict[str, Path]
    seen: str = ""

    def read_until(self, marker: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.seen and self.proc.poll() is None:
            assert time.monotonic() < deadline, self.seen
            self.seen += self.proc.stdout.readline()
        assert marker in self.seen, self.seen
        return self.seen

    def finish(self, timeout: float = 900) -> ActionRun:
        try:
            rest = self.proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rest = self.proc.communicate()[0]
            pytest.fail(f"the action still ran after {timeout:g}s:\n{self.seen}{rest}")
        return ActionRun(
            code=self.proc.returncode,
            stdout=self.seen + rest,
            outputs=read_env_file(self.files["GITHUB_OUTPUT"]),
            summary=self.files["GITHUB_STEP_SUMMARY"].read_text()
            if self.files["GITHUB_STEP_SUMMARY"].is_file()
            else "",
            state=read_env_file(self.files["GITHUB_STATE"]),
        )


def start_like_the_runner(
    runner: Runner,
    image: str,
    inputs: dict[str, str],
    *,
    network: str | None = None,
    entrypoint: str | None = None,
    extra_env: dict[str, str] | None = None,
    summary_pipe: bool = False,
) -> Started:
    step = uuid.uuid4()
    files = {
        "GITHUB_OUTPUT": f"set_output_{step}",
        "GITHUB_STEP_SUMMARY": f"step_summary_{step}",
        "GITHUB_STATE": f"save_state_{step}",
        "GITHUB_ENV": f"set_env_{step}",
        "GITHUB_PATH": f"add_path_{step}",
    }
    for key, name in files.items():
        path = runner.temp / "_runner_file_commands" / name
        if summary_pipe and key == "GITHUB_STEP_SUMMARY":
            os.mkfifo(path)  # the action waits there until the test reads it
        else:
            path.touch()
    env = {f"INPUT_{name.upper()}": value for name, value in inputs.items()}
    env.update({key: f"/github/file_commands/{name}" for key, name in files.items()})
    env.update(
        {
            "GITHUB_ACTIONS": "true",
            "CI": "true",
            "HOME": "/github/home",
            "GITHUB_WORKSPACE": "/github/workspace",
            "GITHUB_EVENT_PATH": "/github/workflow/event.json",
            "RUNNER_TEMP": "/github/runner_temp",
            "GITHUB_REPOSITORY": "example/calimero-app",
            "RUNNER_OS": "Linux",
            **(extra_env or {}),
        }
    )
    name = f"calimero-workflow-action_{secrets.token_hex(3)}"
    argv = ["docker", "run", "--name", name]
    argv += ["--label", MINE, "--workdir", "/github/workspace", "--rm"]
    for key in env:
        argv += ["-e", key]  # values travel in the environment, as the runner does it
    if entrypoint:
        argv += ["--entrypoint", entrypoint]
    if network:
        argv += ["--network", network]
    argv += [
        "-v", "/var/run/docker.sock:/var/run/docker.sock",
        "-v", f"{runner.temp}:/github/runner_temp",
        "-v", f"{runner.temp / '_github_home'}:/github/home",
        "-v", f"{runner.temp / '_github_workflow'}:/github/workflow",
        "-v", f"{runner.temp / '_runner_file_commands'}:/github/file_commands",
        "-v", f"{runner.workspace}:/github/workspace",
        image,
    ]  # fmt: skip
    # the runner reads the container's output through `docker run`, which
    # also passes the runner's signals on to the container
    proc = subprocess.Popen(
        argv,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    commands = runner.temp / "_runner_file_commands"
    return Started(proc, name, {key: commands / n for key, n in files.items()})


def run_like_the_runner(
    runner: Runner, image: str, inputs: dict[str, str], **options
) -> ActionRun:
    return start_like_the_runner(runner, image, inputs, **options).finish()


def post_like_the_runner(image: str, run: ActionRun) -> subprocess.CompletedProcess:
    """The post step: a new container of the image, given the main step's state."""
    return subprocess.run(
        ["docker", "run", "--rm", "--label", MINE, "-e", "STATE_run_ids",
         "-v", "/var/run/docker.sock:/var/run/docker.sock",
         "--entrypoint", "/usr/local/bin/calimero-workflow-post", image],
        env={**os.environ, "STATE_run_ids": run.state.get("run_ids", "")},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def no_leftovers(client, run: ActionRun) -> None:
    run_ids = [r for r in run.state.get("run_ids", "").split(",") if r]
    assert run_ids, "the action saved no run ids for its post step"
    for run_id in run_ids:
        assert leftovers(client, f"calimero-workflow.run-id={run_id}") == {
            "containers": [],
            "networks": [],
            "volumes": [],
        }


@pytest.fixture
def runner(tmp_path: Path, client):
    made = Runner.create(tmp_path)
    yield made
    for container in client.containers.list(
        all=True, filters={"label": MINE}, ignore_removed=True
    ):
        with contextlib.suppress(docker.errors.APIError):  # --rm already removing it
            container.remove(force=True)
    for network in client.networks.list(filters={"label": MINE}):
        network.remove()


def test_passing_and_failing_workflows_without_a_job_network(
    client, action_image, runner
):
    ws = runner.workspace
    (ws / "examples" / "kv-store").mkdir(parents=True)
    (ws / "apps" / "kv-store").mkdir(parents=True)
    (ws / "tests").mkdir()
    shutil.copy(
        ROOT / "examples" / "kv-store" / "workflow.yml", ws / "examples" / "kv-store"
    )
    shutil.copy(ROOT / "apps" / "kv-store" / "kv_store.wasm", ws / "apps" / "kv-store")
    shutil.copy(ROOT / "apps" / "kv-store" / "kv_store.wasm", ws / "tests")
    (ws / "tests" / "failing.yml").write_text(FAILING)
    for path in [ws, *ws.rglob("*")]:
        os.chown(path, RUNNER_UID, RUNNER_GID)

    run = run_like_the_runner(
        runner,
        action_image,
        {
            "workflows": "examples/kv-store/*.yml\ntests/failing.yml",
            "backend": "docker",
            "image": NODE_IMAGE,
            "junit-path": "reports/junit.xml",
            "node-logs-dir": "reports/node-logs",
            "env": "API_TOKEN=e2e-secret-value",
        },
    )
    assert run.code == 1, run.stdout

    # outputs
    out = run.outputs
    assert (out["status"], out["total"], out["passed"], out["failed"], out["skipped"], out["flaky"]) == (
        "failed", "2", "1", "1", "0", "0",
    )  # fmt: skip
    results = json.loads(out["results"])
    assert results["examples/kv-store/workflow.yml"]["all-entries"]["output"] == 2
    failed = json.loads(out["failed-steps"])
    assert [(f["file"], f["step"], f["line"]) for f in failed] == [
        ("tests/failing.yml", "check", CHECK_LINE),
        ("tests/failing.yml", "missing", MISSING_LINE),
    ]
    assert (out["junit-path"], out["summary-path"]) == (
        "reports/junit.xml",
        "reports/summary.md",
    )

    # annotations and the log
    errors = run.errors()
    assert [(f, line) for f, line, _ in errors] == [
        ("tests/failing.yml", str(CHECK_LINE)),
        ("tests/failing.yml", str(MISSING_LINE)),
    ]
    assert "expected: not-this" in errors[0][2]
    assert ("add-mask", {}, "e2e-secret-value") in runner_commands(run.stdout)
    groups = [m for n, _, m in runner_commands(run.stdout) if n == "group"]
    assert groups[:2] == [
        "kv-store replicates (examples/kv-store/workflow.yml)",
        "report sample (tests/failing.yml)",
    ]
    assert "report sample (tests/failing.yml) › missing logs" in groups

    # the JUnit XML
    junit = ET.parse(ws / "reports" / "junit.xml").getroot()
    assert [s.get("file") for s in junit] == [
        "examples/kv-store/workflow.yml",
        "tests/failing.yml",
    ]
    assert (junit.get("tests"), junit.get("failures")) == ("23", "2")  # 19 + 4 steps
    cases = {c.get("name"): c for c in junit[1].iter("testcase")}
    assert cases["missing"].get("line") == str(MISSING_LINE)
    assert "no_such_method" in cases["missing"].find("failure").get("message")
    assert "last log lines of node-1:" in cases["missing"].find("system-out").text
    props = {p.get("name"): p.get("value") for p in junit[1].find("properties")}
    assert props["backend"] == "docker" and props["image.image"] == NODE_IMAGE

    # the step summary, and its copy in the workspace
    assert run.summary == (ws / "reports" / "summary.md").read_text()
    assert "## ❌ calimero-workflow: 1 of 2 workflow(s) failed" in run.summary
    assert f"<code>tests/failing.yml:{CHECK_LINE}</code>" in run.summary
    assert "<details><summary>node logs of node-1</summary>" in run.summary

    # node logs from the containers, and every file handed to the runner's user
    assert (
        ws / "reports" / "node-logs" / "tests-failing-yml" / "node-1.log"
    ).stat().st_size > 0
    written = [ws / "reports", *(ws / "reports").rglob("*")]
    assert {(p.stat().st_uid, p.stat().st_gid) for p in written} == {
        (RUNNER_UID, RUNNER_GID)
    }

    no_leftovers(client, run)


def test_on_a_job_network_the_action_reaches_services_and_nodes_join(
    client, action_image, runner
):
    network = client.networks.create(
        f"github_network_{uuid.uuid4().hex}", labels={TEST_LABEL: SESSION}
    )
    # a job service: one of our nodes, known on the job network as svc-node
    service = client.containers.run(
        NODE_IMAGE,
        entrypoint=["/bin/sh", "-c"],
        command=[
            "merod --home /app/data --node svc init --server-host 0.0.0.0 --server-port 2528 "
            "--swarm-port 2428 && exec merod --home /app/data --node svc run"
        ],
        labels={TEST_LABEL: SESSION},
        network=network.name,
        detach=True,
    )
    network.disconnect(service)
    network.connect(service, aliases=["svc-node"])
    (runner.workspace / "wf.yml").write_text(JOB_NETWORK_WORKFLOW)

    run = run_like_the_runner(
        runner,
        action_image,
        {
            "workflows": "wf.yml",
            "backend": "docker",
            "image": NODE_IMAGE,
            "retries": "1",
        },
        network=network.name,
    )
    assert run.code == 0, run.stdout
    assert run.outputs["status"] == "passed"
    results = json.loads(run.outputs["results"])["wf.yml"]
    assert results["local"]["public_key"] != results["remote"]["public_key"]
    assert f"job network: {network.name}" in run.stdout
    assert f"nodes on the job network {network.name}: cw-" in run.stdout
    no_leftovers(client, run)


def test_the_post_step_removes_what_a_run_left(client, action_image, runner):
    run_id = f"e2e-{secrets.token_hex(4)}"
    labels = {"calimero-workflow.run-id": run_id, TEST_LABEL: SESSION}
    client.networks.create(f"cw-e2e-{run_id}", labels=labels)
    client.containers.create(NODE_IMAGE, labels=labels, command=["--help"])
    assert leftovers(client, f"calimero-workflow.run-id={run_id}")["containers"]

    (runner.temp / "_runner_file_commands").mkdir(exist_ok=True)
    run = run_like_the_runner(
        runner,
        action_image,
        {},
        entrypoint="/usr/local/bin/calimero-workflow-post",
    )
    assert "nothing to clean up" in run.stdout  # no state: nothing to do

    # removing needs no network: it works from a container without one
    done = subprocess.run(
        ["docker", "run", "--rm", "--label", MINE, "-e", "STATE_run_ids",
         "--network", "none", "-v", "/var/run/docker.sock:/var/run/docker.sock",
         "--entrypoint", "/usr/local/bin/calimero-workflow-post", action_image],
        env={**os.environ, "STATE_run_ids": run_id},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        f"run {run_id}: removed 1 container(s), 1 network(s), 0 volume(s)"
        in done.stdout
    )
    assert leftovers(client, f"calimero-workflow.run-id={run_id}") == {
        "containers": [],
        "networks": [],
        "volumes": [],
    }


@pytest.mark.parametrize(
    "who, code, said",
    [
        ("me", 0, "PASSED ok: 1 passed"),
        ("you", 1, "FAILED ok: 0 passed, 1 failed"),
        (None, 2, "environment variable WHO is not set"),
    ],
)
def test_with_arguments_the_image_is_the_command_line(
    action_image, runner, who, code, said
):
    (runner.workspace / "ok.yml").write_text(
        "name: ok\nsteps:\n  - name: a\n    type: assert\n    actual: ${WHO}\n    equals: me\n"
    )
    env = ["--env", f"WHO={who}"] if who else []
    done = subprocess.run(
        ["docker", "run", "--rm", "--label", MINE, "-v", f"{runner.workspace}:/work", "-w", "/work",
         action_image, "run", "ok.yml", *env, "--workdir", "/tmp/cw"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == code, done.stdout + done.stderr
    assert said in done.stdout + done.stderr


def test_the_image_carries_no_installers_and_both_entry_points(action_image):
    probe = (
        "import importlib.util, shutil\n"
        "print([m for m in ('pip', 'setuptools') if importlib.util.find_spec(m)])\n"
        "print([c for c in ('calimero-workflow-action', 'calimero-workflow-post',"
        " 'calimero-workflow') if shutil.which(c)])\n"
    )
    done = subprocess.run(
        ["docker", "run", "--rm", "--label", MINE,
         "--entrypoint", "/opt/cw/bin/python", action_image, "-c", probe],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    installers, commands = done.stdout.splitlines()
    assert installers == "[]"
    assert commands.count("calimero-workflow") == 3


SLOW = """\
name: slow
nodes: {count: 2, prefix: node}
steps:
  - {type: wait, seconds: 300}
"""


def test_cancelling_the_job_cancels_the_run_and_cleans_up(client, action_image, runner):
    (runner.workspace / "1-slow.yml").write_text(SLOW)
    (runner.workspace / "2-never.yml").write_text(
        "name: never\nsteps:\n  - {type: wait, seconds: 0.1}\n"
    )
    started = start_like_the_runner(
        runner,
        action_image,
        {"workflows": "*.yml", "backend": "docker", "image": NODE_IMAGE},
    )
    started.read_until("phase nodes_start")
    # the runner cancels a step with SIGINT, then SIGTERM a few seconds later:
    # here the second one lands while the nodes are being removed
    started.proc.send_signal(signal.SIGINT)
    started.read_until("phase on_failure")
    started.proc.send_signal(signal.SIGTERM)
    run = started.finish(120)
    assert run.code == 130, run.stdout
    out = run.outputs
    # cut short before anything failed: cancelled, not failed
    assert (out["status"], out["total"], out["failed"], out["cancelled"], out["skipped"]) == (
        "cancelled", "2", "0", "1", "1",
    )  # fmt: skip
    junit = ET.parse(runner.workspace / "calimero-workflow-results" / "junit.xml")
    never = next(s for s in junit.getroot() if s.get("file") == "2-never.yml")
    assert never.get("skipped") == "1"
    assert "## ⛔ calimero-workflow (cancelled): 1 of 2 workflow(s) cancelled, 1 not run" in run.summary
    no_leftovers(client, run)
    post = post_like_the_runner(action_image, run)
    assert "removed 0 container(s), 0 network(s), 0 volume(s)" in post.stdout


def test_the_post_step_removes_the_nodes_of_a_killed_action(
    client, action_image, runner
):
    (runner.workspace / "slow.yml").write_text(SLOW)
    started = start_like_the_runner(
        runner, action_image, {"workflows": "slow.yml", "image": NODE_IMAGE}
    )
    started.read_until("phase nodes_start")
    client.containers.get(started.name).kill()  # no chance to clean up
    run = started.finish(60)
    assert run.code == 137
    (run_id,) = run.state["run_ids"].split(",")
    left = leftovers(client, f"calimero-workflow.run-id={run_id}")
    assert len(left["containers"]) == 2 and left["networks"], left
    post = post_like_the_runner(action_image, run)
    assert post.returncode == 0, post.stderr
    # two nodes; peers and a control network per node; a data volume per node
    assert (
        f"run {run_id}: removed 2 container(s), 3 network(s), 2 volume(s)"
        in post.stdout
    ), post.stdout
    no_leftovers(client, run)


def test_node_logs_copied_to_the_workspace_have_secrets_redacted(
    client, action_image, runner
):
    # node logs name request paths: this application id is a secret here
    token = b"application id that is a secret!".hex()
    (runner.workspace / "wf.yml").write_text(
        "name: secret path\nnodes: {count: 1, prefix: node}\nsteps:\n"
        "  - {name: look, type: get_application, node: node-1, application_id: '${APP_TOKEN}'}\n"
        "  - {name: check, type: assert, actual: '${APP_TOKEN}', equals: other}\n"
    )
    run = run_like_the_runner(
        runner,
        action_image,
        {"workflows": "wf.yml", "image": NODE_IMAGE, "env": f"APP_TOKEN={token}"},
    )
    assert run.code == 1, run.stdout
    log = runner.workspace / "calimero-workflow-results/node-logs/wf-yml/node-1.log"
    assert "GET /admin-api/applications/*** " in log.read_text()
    written = [run.stdout.replace(f"::add-mask::{token}", ""), run.summary]
    written += [str(v) for v in run.outputs.values()]
    written += [p.read_text() for p in runner.workspace.rglob("*") if p.is_file()]
    assert not [text for text in written if token in text]
    no_leftovers(client, run)


# -- what a repository, the runner's signals and its tokens cannot make it do ----------------

OK_WORKFLOW = "name: ok\nsteps:\n  - {type: assert, actual: 1, equals: 1}\n"


def give_to_the_runner(workspace: Path) -> None:
    for path in [workspace, *workspace.rglob("*")]:
        os.chown(path, RUNNER_UID, RUNNER_GID, follow_symlinks=False)


def test_hostile_file_names_are_shown_not_run(action_image, runner):
    tests = runner.workspace / "tests"
    tests.mkdir()
    names = ["a\r::warning::CRINJECT.yml", "b ##[warning]LEGACY.yml", "c\n::error::NL.yml"]
    for name in names:
        (tests / name).write_text(OK_WORKFLOW)
    give_to_the_runner(runner.workspace)
    run = run_like_the_runner(
        runner, action_image, {"workflows": "tests/*.yml", "backend": "embedded"}
    )
    assert run.code == 0, run.stdout
    assert run.outputs["status"] == "passed" and run.outputs["total"] == "3"
    executed = runner_commands(run.stdout)
    assert {name for name, _, _ in executed} == {"group", "endgroup"}, executed
    # and every file the run wrote went to the runner's user
    written = [p for p in runner.workspace.rglob("*") if "results" in str(p)]
    assert written and {(p.lstat().st_uid, p.lstat().st_gid) for p in written} == {
        (RUNNER_UID, RUNNER_GID)
    }


def test_links_and_files_in_the_way_of_the_reports_are_refused(action_image, runner):
    ws = runner.workspace
    (ws / "tests").mkdir()
    (ws / "tests" / "ok.yml").write_text(OK_WORKFLOW)
    (ws / "docs").mkdir()
    (ws / "docs" / "summary.md").write_text("the project's own summary\n")
    logs = ws / "calimero-workflow-results" / "node-logs"
    logs.mkdir(parents=True)
    (logs / "tests-ok-yml").symlink_to("/github/runner_temp")
    give_to_the_runner(ws)
    before = sorted(p.name for p in runner.temp.iterdir())

    for inputs, said in (
        ({"junit-path": "docs/junit.xml"}, "docs/summary.md is already there"),
        ({"junit-path": "README.md"}, None),
        ({}, "calimero-workflow-results/node-logs/tests-ok-yml is a symbolic link"),
    ):
        if inputs.get("junit-path") == "README.md":
            (ws / "README.md").write_text("# the project\n")
            said = "names a file of the repository (README.md)"
        run = run_like_the_runner(
            runner,
            action_image,
            {"workflows": "tests/ok.yml", "backend": "embedded", **inputs},
        )
        assert run.code == 2, run.stdout
        assert run.outputs["status"] == "invalid"
        errors = [m for _, _, m in run.errors()]
        assert any(said in m for m in errors), errors
    assert (ws / "docs" / "summary.md").read_text() == "the project's own summary\n"
    assert (ws / "README.md").read_text() == "# the project\n"
    assert sorted(p.name for p in runner.temp.iterdir()) == before


def test_signals_as_pid_1_at_any_time_end_cancelled_with_every_output(
    client, action_image, runner
):
    (runner.workspace / "tests").mkdir()
    steps = "".join(
        f"  - {{name: a{i}, type: assert, non_blocking: true, actual: '{'v' * 500}', equals: w}}\n"
        for i in range(30)
    )
    for i in range(6):
        (runner.workspace / "tests" / f"w{i}.yml").write_text(f"name: w{i}\nsteps:\n{steps}")
    give_to_the_runner(runner.workspace)
    inputs = {"workflows": "tests/*.yml", "backend": "embedded"}

    # SIGTERM as soon as the action handles it, while it is starting (as PID 1
    # a process without a handler ignores SIGTERM)
    started = start_like_the_runner(runner, action_image, inputs)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["docker", "exec", started.name, "grep", "SigCgt", "/proc/1/status"],
            capture_output=True, text=True,
        )  # fmt: skip
        if probe.returncode == 0 and int(probe.stdout.split()[1], 16) & (1 << 14):
            break
        time.sleep(0.05)
    client.containers.get(started.name).kill(signal="SIGTERM")
    run = started.finish(120)
    assert run.code == 130, run.stdout
    assert "Traceback" not in run.stdout
    assert run.outputs["status"] == "cancelled" and run.outputs["total"] == "6"

    # SIGINT while the reports are written (they wait for the step summary,
    # a pipe the test reads only then), passed on by `docker run`
    started = start_like_the_runner(runner, action_image, inputs, summary_pipe=True)
    while started.seen.count("::endgroup::\n") < 6:  # the last workflow ran
        line = started.proc.stdout.readline()
        assert line, started.seen
        started.seen += line
    time.sleep(1)
    started.proc.send_signal(signal.SIGINT)
    time.sleep(1)
    with started.files["GITHUB_STEP_SUMMARY"].open() as pipe:
        assert pipe.read().startswith("## ")
    run = started.finish(120)
    assert run.code == 130, run.stdout
    assert "Traceback" not in run.stdout and "KeyboardInterrupt" not in run.stdout
    assert run.outputs["status"] == "cancelled"
    reports = runner.workspace / "calimero-workflow-results"
    ET.parse(reports / "junit.xml")
    written = [reports, *reports.rglob("*")]
    assert {(p.stat().st_uid, p.stat().st_gid) for p in written} == {
        (RUNNER_UID, RUNNER_GID)
    }


def test_a_fifo_where_a_marker_goes_never_hangs_the_action(action_image, runner):
    (runner.workspace / "tests").mkdir()
    (runner.workspace / "tests" / "ok.yml").write_text(OK_WORKFLOW)
    reports = runner.workspace / "calimero-workflow-results"
    reports.mkdir()
    os.mkfifo(reports / ".calimero-workflow.json")
    give_to_the_runner(runner.workspace)
    started = start_like_the_runner(
        runner, action_image, {"workflows": "tests/ok.yml", "backend": "embedded"}
    )
    run = started.finish(120)
    assert (run.code, run.outputs["status"]) == (2, "invalid"), run.stdout
    assert any(".calimero-workflow.json is neither a file nor a folder" in m for _, _, m in run.errors())


def _running(client, name: str) -> bool:
    try:
        return client.api.inspect_container(name)["State"]["Running"] is True
    except docker.errors.NotFound:  # `docker run` has not created it yet
        return False


def test_a_signal_as_the_action_starts_never_ends_in_a_traceback(client, action_image, runner):
    (runner.workspace / "tests").mkdir()
    (runner.workspace / "tests" / "ok.yml").write_text(OK_WORKFLOW)
    give_to_the_runner(runner.workspace)
    inputs = {"workflows": "tests/ok.yml", "backend": "embedded"}
    for sig, delay in (("SIGINT", 0.0), ("SIGINT", 0.03), ("SIGTERM", 0.03), ("SIGINT", 0.1)):
        started = start_like_the_runner(runner, action_image, inputs)
        while not _running(client, started.name):
            assert started.proc.poll() is None, started.proc.stdout.read()
            time.sleep(0.005)
        time.sleep(delay)
        with contextlib.suppress(docker.errors.APIError):  # it may have ended already
            client.api.kill(started.name, signal=sig)
        run = started.finish(120)
        assert "Traceback" not in run.stdout and "KeyboardInterrupt" not in run.stdout, run.stdout
        # as PID 1 the process does not get a signal before it handles one:
        # then the run is not cancelled; otherwise it ends cancelled, written whole
        expected = {0: "passed", 130: "cancelled"}
        assert run.code in expected, run.stdout
        assert run.outputs["status"] == expected[run.code]
        assert {"total", "passed", "failed", "cancelled", "skipped", "results"} <= set(run.outputs)


def test_the_runners_tokens_are_masked_and_gone_from_the_process(action_image, runner):
    token = f"runtime-{secrets.token_hex(12)}"
    id_token = f"idtoken-{secrets.token_hex(12)}"
    (runner.workspace / "wf.yml").write_text(
        "name: peek\nsteps:\n"
        "  - name: env\n    type: script\n    run: env | grep ^ACTIONS_ || true\n"
        "  - name: environ\n    type: script\n"
        "    run: tr '\\0' '\\n' < /proc/1/environ | grep ^ACTIONS_ || true\n"
    )
    give_to_the_runner(runner.workspace)
    run = run_like_the_runner(
        runner,
        action_image,
        {"workflows": "wf.yml", "backend": "embedded"},
        extra_env={
            "ACTIONS_RUNTIME_TOKEN": token,
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": id_token,
            "ACTIONS_RUNTIME_URL": "http://runtime.invalid/",
        },
    )
    assert run.code == 0, run.stdout
    masks = [m for n, _, m in runner_commands(run.stdout) if n == "add-mask"]
    assert set(masks[:2]) == {token, id_token}  # before anything else
    results = json.loads(run.outputs["results"])["wf.yml"]
    seen = results["environ"]["stdout"]
    assert "ACTIONS_RUNTIME_URL=http://runtime.invalid/" in seen  # the block is read...
    assert f"ACTIONS_RUNTIME_TOKEN={token}" not in seen  # ...without the tokens
    assert token not in seen and id_token not in seen
    assert results["env"]["stdout"] == ""  # workflows never get ACTIONS_*
    written = [run.stdout.replace(f"::add-mask::{token}", "").replace(f"::add-mask::{id_token}", "")]
    written += [run.summary, *run.outputs.values()]
    written += [p.read_text() for p in runner.workspace.rglob("*") if p.is_file()]
    assert not [t for t in written if token in t or id_token in t]
