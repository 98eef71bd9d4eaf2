"""The Docker backend against our merod-compatible node image.

Workflow-level tests run the engine with ``backend="docker"``; backend-level
tests drive :class:`DockerBackend` directly and talk to nodes over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from calimero_workflow import bundle
from calimero_workflow.backends.base import (
    BackendError,
    NodeSpec,
    NodeUnavailableError,
    release_run,
)
from calimero_workflow.backends.docker import (
    LABEL_RUN,
    LABEL_WORKFLOW,
    DockerBackend,
    host_path_for,
    image_reference_problem,
    set_bootstrap,
)
from calimero_workflow.client import NodeApiError, NodeClient
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.results import Status
from calimero_workflow.workflow import load_workflow, parse_workflow
from docker_support import NODE_IMAGE, ROOT, derived_image, docker_client, leftovers

pytestmark = pytest.mark.docker

KV_WASM = ROOT / "apps" / "kv-store" / "kv_store.wasm"
NOTHING = {"containers": [], "networks": [], "volumes": []}


@pytest.fixture(scope="module")
def client():
    return docker_client()


def failures(result) -> list[str]:
    return [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error] + [
        f"phase {p.name}: {p.error.message}" for p in result.phases if p.error
    ]


async def run_docker(wf, tmp_path: Path, **kwargs):
    return await WorkflowExecutor(
        wf, backend="docker", image=NODE_IMAGE, env={}, workdir=tmp_path, **kwargs
    ).run()


async def test_example_passes_with_three_containers(client, tmp_path: Path):
    wf = load_workflow(ROOT / "examples" / "kv-store" / "workflow.yml", environ={})
    result = await run_docker(wf, tmp_path)
    assert result.passed, failures(result)
    assert result.workflow_results["get2"]["output"] == "world"
    assert result.workflow_results["read-on-1"]["output"] == "from node 3"
    # The image's label says its node installs bundles only: the engine built
    # one in the run's folder and the node took it at once.
    install = result.workflow_results["install"]
    assert install["bundle"]["package"] == "com.calimero.kv-store"
    assert install["application_id"] == bundle.application_id_for_bundle(
        "com.calimero.kv-store", bundle.DEV_SIGNER_ID
    ).hex()
    assert all(n["app_bundles"] == bundle.SCHEME_V1 for n in result.nodes.values())
    logs = {n: Path(p).read_text() for n, p in result.node_log_files.items()}
    assert "installed application " in logs["node-1"]
    assert "install-dev-application 500" not in logs["node-1"]
    assert {n["container"] for n in result.nodes.values()} == {
        f"cw-{result.run_id.replace('-', '')[-10:]}-node-{i}" for i in (1, 2, 3)
    }
    assert result.image["image"] == NODE_IMAGE and result.image["digest"]
    # logs of every node were written, green run included
    assert sorted(Path(p).name for p in result.node_log_files.values()) == [
        "node-1.log",
        "node-2.log",
        "node-3.log",
    ]
    assert all(
        "node node-" in Path(p).read_text() for p in result.node_log_files.values()
    )
    assert leftovers(client, f"{LABEL_RUN}={result.run_id}") == NOTHING


async def test_a_node_not_known_to_need_bundles_is_asked_then_remembered(
    client, tmp_path: Path
):
    """An image without our label (as merod's own) gets the raw .wasm first;
    refused, the engine stages a dev bundle like the original file and retries,
    and goes straight to a bundle on the next install."""
    tag = derived_image("no-bundle-label")
    dockerfile = f'FROM {NODE_IMAGE}\nLABEL calimero-workflow.app-bundles=""\n'
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    wf = parse_workflow(
        "name: unlabelled\nnodes: {count: 1, prefix: node}\nsteps:\n"
        f"  - {{name: first, type: install_application, node: node-1, path: {KV_WASM}}}\n"
        f"  - {{name: second, type: install_application, node: node-1, path: {KV_WASM},"
        " version: 0.2.0}\n",
        environ={},
    )
    result = await WorkflowExecutor(
        wf, backend="docker", image=tag, env={}, workdir=tmp_path
    ).run()
    assert result.passed, failures(result)
    first, second = result.workflow_results["first"], result.workflow_results["second"]
    assert first["application_id"] == second["application_id"]
    assert (first["bundle"]["version"], second["bundle"]["version"]) == ("0.1.0", "0.2.0")
    assert "app_bundles" not in result.nodes["node-1"]
    log = Path(result.node_log_files["node-1"]).read_text()
    assert log.count("install-dev-application 500") == 1
    assert log.count("installed application ") == 2
    assert leftovers(client, f"{LABEL_RUN}={result.run_id}") == NOTHING


async def test_stop_restart_and_partition_converge(client, tmp_path: Path):
    wf = load_workflow(ROOT / "examples" / "faults" / "workflow.yml", environ={})
    result = await run_docker(wf, tmp_path)
    assert result.passed, failures(result)
    hashes = result.workflow_results["diverged"]["hashes"]
    assert hashes["node-1"] == hashes["node-2"] != hashes["node-3"]
    assert result.workflow_results["g"]["output"] == "1"
    # the stopped node keeps the log lines from before its stop
    log = Path(result.node_log_files["node-2"]).read_text()
    assert log.count("node node-2 started") >= 2


async def test_joining_the_namespace_is_enough_across_containers(client, tmp_path: Path):
    # The merobox-format file has no join_context step: each container joins the
    # namespace's contexts, the existing one and the one created after the joins,
    # from what its peers tell it over the network.
    wf = load_workflow(ROOT / "tests" / "compat" / "15-auto-join.yml", environ={})
    assert all(step.type_name != "join_context" for step in wf.steps)
    result = await run_docker(wf, tmp_path)
    assert result.passed, failures(result)
    results = result.workflow_results
    assert results["Read on 2"]["output"] == "from-node-3"
    assert results["Read later on 3"]["output"] == "from-node-2"
    for sync in ("Sync", "Sync later"):
        hashes = results[sync]["hashes"]
        assert sorted(hashes) == [f"calimero-node-{i}" for i in (1, 2, 3)]
        assert len(set(hashes.values())) == 1
    assert leftovers(client, f"{LABEL_RUN}={result.run_id}") == NOTHING


async def test_node_that_cannot_init_fails_with_exit_code_and_logs(
    client, tmp_path: Path
):
    from docker_support import BASE_IMAGE  # has no merod at all

    wf = parse_workflow(
        "name: broken image\nnodes: {count: 1}\nsteps: []\n", environ={}
    )
    result = await WorkflowExecutor(
        wf, backend="docker", image=BASE_IMAGE, env={}, workdir=tmp_path
    ).run()
    phase = next(p for p in result.phases if p.name == "nodes_start")
    assert phase.status is Status.FAILED
    assert (
        "`merod init` for node calimero-node-1 could not start" in phase.error.message
    )
    assert "executable file not found" in phase.error.message
    assert "must provide `merod`" in phase.error.hint
    assert (
        leftovers(client, f"calimero-workflow.run-id={result.run_id}")["containers"]
        == []
    )


def _variant_image(client, tag: str, on_run: str, command: str = "run") -> str:
    """Our node image whose `merod ... <command>` does ``on_run`` instead."""
    dockerfile = (
        f"FROM {NODE_IMAGE}\n"
        f'RUN printf \'#!/bin/sh\\ncase "$*" in *" {command}"*) {on_run};; esac\\n'
        'exec /opt/cw/bin/merod-embedded "$@"\\n\' > /usr/local/bin/merod-variant '
        "&& chmod 0755 /usr/local/bin/merod-variant && ln -sf /usr/local/bin/merod-variant /usr/local/bin/merod\n"
    )
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    return tag


@pytest.fixture(scope="module")
def silent_image(client):
    """A node that never serves: it can never become ready."""
    return _variant_image(client, derived_image("silent"), "exec sleep 3600")


@pytest.fixture(scope="module")
def wrong_server_image(client):
    """A node whose server answers, but 404 for every admin route."""
    return _variant_image(
        client, derived_image("404"), "exec python3 -m http.server 2528"
    )


@pytest.fixture(scope="module")
def init_hangs_image(client):
    """A node whose `merod init` never returns."""
    return _variant_image(
        client,
        derived_image("init-hangs"),
        "echo init-is-stuck; exec sleep 3600",
        "init",
    )


async def test_init_that_never_ends_fails_within_wait_timeout(
    client, init_hangs_image, tmp_path: Path
):
    wf = parse_workflow(
        "name: init hangs\nnodes: {count: 1}\nwait_timeout: 3\nsteps: []\n", environ={}
    )
    result = await WorkflowExecutor(
        wf, backend="docker", image=init_hangs_image, env={}, workdir=tmp_path
    ).run()
    phase = next(p for p in result.phases if p.name == "nodes_start")
    assert phase.status is Status.FAILED
    assert (
        "`merod init` for node calimero-node-1 did not finish within 10s"
        in phase.error.message
    ), phase.error
    assert "wait_timeout" in phase.error.hint
    assert "init-is-stuck" in phase.data["last_logs"]
    assert leftovers(client, f"{LABEL_RUN}={result.run_id}") == NOTHING


async def test_node_that_exits_reports_exit_code_and_last_logs(client, tmp_path: Path):
    image = _variant_image(
        client, derived_image("crash"), "echo boom-before-exit; exit 3"
    )
    wf = parse_workflow(
        "name: crash\nnodes: {count: 2}\nwait_timeout: 30\nsteps: []\n", environ={}
    )
    result = await WorkflowExecutor(
        wf, backend="docker", image=image, env={}, workdir=tmp_path
    ).run()
    phase = next(p for p in result.phases if p.name == "nodes_start")
    assert phase.status is Status.FAILED
    assert "exited with code 3 before it was ready" in phase.error.message
    assert "boom-before-exit" in phase.data["last_logs"]
    # the nodes that never got ready leave their logs and states
    on_failure = next(p for p in result.phases if p.name == "on_failure")
    assert on_failure.status is Status.PASSED, on_failure.error
    assert set(result.node_log_files) == {"calimero-node-1", "calimero-node-2"}
    for path in result.node_log_files.values():
        assert "boom-before-exit" in Path(path).read_text()
    states = json.loads(Path(on_failure.data["states"]).read_text())
    assert states["calimero-node-1"]["exit_code"] == 3
    assert states["calimero-node-1"]["contexts_error"] == "the node never got ready"


async def test_node_that_never_answers_times_out_clearly(
    client, silent_image, tmp_path: Path
):
    wf = parse_workflow(
        "name: silent\nnodes: {count: 1}\nwait_timeout: 2\nsteps: []\n", environ={}
    )
    result = await WorkflowExecutor(
        wf, backend="docker", image=silent_image, env={}, workdir=tmp_path
    ).run()
    phase = next(p for p in result.phases if p.name == "nodes_start")
    assert phase.status is Status.FAILED
    assert "was not ready within 2s" in phase.error.message
    assert not result.passed


async def test_health_must_answer_200_not_just_anything(
    client, wrong_server_image, tmp_path: Path
):
    wf = parse_workflow(
        "name: wrong server\nnodes: {count: 1}\nwait_timeout: 2\nsteps: []\n",
        environ={},
    )
    result = await WorkflowExecutor(
        wf, backend="docker", image=wrong_server_image, env={}, workdir=tmp_path
    ).run()
    phase = next(p for p in result.phases if p.name == "nodes_start")
    assert phase.status is Status.FAILED
    assert (
        "was not ready within 2s: GET /admin-api/health answered HTTP 404"
        in phase.error.message
    )


def _kill_node(client, container, how: str) -> None:
    if how == "docker kill":
        container.kill()
        return
    # out of memory for real: a limit just above what the node uses, the node
    # first in line for the OOM killer, and a process that wants far more
    container.update(mem_limit="96m", memswap_limit="96m")
    container.exec_run(
        [
            "sh",
            "-c",
            "echo 1000 > /proc/1/oom_score_adj; "
            "exec python3 -c 'x = bytearray(400 * 1024 * 1024)'",
        ]
    )


@pytest.mark.parametrize(
    "how, said",
    [
        ("docker kill", "exit code 137 (killed by SIGKILL), not out of memory"),
        ("out of memory", "exit code 137, killed for lack of memory (OOM)"),
    ],
)
async def test_a_node_that_dies_mid_run_fails_the_step_saying_how(
    client, tmp_path: Path, how: str, said: str
):
    wf = parse_workflow(
        textwrap.dedent("""\
            name: dies mid-run
            nodes: {count: 1, prefix: node}
            steps:
              - {type: create_identity, node: node-1}
              - {type: wait, seconds: 4}  # the node dies meanwhile
              - {type: create_identity, node: node-1, retries: 0}
        """),
        environ={},
    )
    executor = WorkflowExecutor(
        wf, backend="docker", image=NODE_IMAGE, env={}, workdir=tmp_path
    )
    run = asyncio.create_task(executor.run())
    label = f"{LABEL_RUN}={executor.run_id}"
    while not executor.result.steps and not run.done():  # the first step is done
        await asyncio.sleep(0.05)
    name = leftovers(client, label)["containers"][0]
    await asyncio.to_thread(_kill_node, client, client.containers.get(name), how)
    result = await run
    step = result.steps[-1]
    assert step.status is Status.FAILED and step.error.kind == "node_died"
    assert step.error.message.startswith(f"node node-1 died: {said}: ")
    log_file = Path(result.node_log_files["node-1"])
    state = json.loads(log_file.with_suffix(".state.json").read_text())
    assert (state["exit_code"], state["oom_killed"]) == (137, how == "out of memory")
    assert leftovers(client, label) == NOTHING


async def test_two_runs_side_by_side_do_not_touch_each_other(client, tmp_path: Path):
    wf = load_workflow(ROOT / "examples" / "kv-store" / "workflow.yml", environ={})
    first, second = await asyncio.gather(
        run_docker(wf, tmp_path / "a"), run_docker(wf, tmp_path / "b")
    )
    assert first.passed, failures(first)
    assert second.passed, failures(second)
    assert first.run_id != second.run_id
    a = {n["container"] for n in first.nodes.values()}
    b = {n["container"] for n in second.nodes.values()}
    assert not a & b


async def test_failed_run_leaves_nothing_and_writes_states(client, tmp_path: Path):
    wf = parse_workflow(
        "name: fails\nnodes: {count: 2}\nsteps:\n  - {type: assert, actual: 1, equals: 2}\n",
        file=tmp_path / "wf.yml",
        environ={},
    )
    result = await run_docker(wf, tmp_path)
    assert not result.passed
    assert (
        Path(next(iter(result.node_log_files.values()))).parent / "node-states.json"
    ).is_file()
    assert leftovers(client, f"{LABEL_RUN}={result.run_id}") == NOTHING


def _cli_run(
    tmp_path: Path, steps: str, image: str = NODE_IMAGE
) -> tuple[subprocess.Popen, str]:
    """Start the CLI on a two-node docker workflow with ``steps``; its label."""
    name = f"signal {secrets.token_hex(4)}"  # unique: other checkouts share the daemon
    wf = tmp_path / "wf.yml"
    wf.write_text(f"name: {name}\nnodes: {{count: 2}}\nsteps:\n{steps}")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "calimero_workflow.cli",
            "run",
            str(wf),
            "--backend",
            "docker",
            "--image",
            image,
            "--workdir",
            str(tmp_path / "w"),
            "--color",
            "never",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "src")},
    )
    return proc, f"{LABEL_WORKFLOW}={name}"


def _read_until(proc: subprocess.Popen, marker: str, seen: str = "") -> str:
    deadline = time.monotonic() + 120
    while marker not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stdout.readline()
    assert marker in seen, seen
    return seen


def _output(proc: subprocess.Popen, timeout: float) -> str:
    """The rest of the output once ``proc`` exits; killed if it takes longer."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        rest = proc.communicate()[0]
        pytest.fail(f"still running after {timeout:g}s:\n{rest}")


def test_sigterm_cleans_up_everything(client, tmp_path: Path):
    proc, label = _cli_run(tmp_path, "  - {type: wait, seconds: 120}\n")
    seen = _read_until(proc, "phase nodes_start")
    assert leftovers(client, label)["containers"], seen
    proc.send_signal(signal.SIGTERM)
    rest = _output(proc, 120)
    assert proc.returncode == 130, seen + rest
    assert leftovers(client, label) == NOTHING


@pytest.mark.parametrize(
    "steps, first, second",
    [
        # the steps fail; the signal lands while node logs are read or nodes removed
        ("  - {type: assert, actual: 1, equals: 2}\n", "FAIL phase steps", None),
        # interrupted during a step, then interrupted again during the teardown
        (
            "  - {type: wait, seconds: 120}\n",
            "PASS phase nodes_start",
            "phase on_failure",
        ),
    ],
    ids=["signal-during-cleanup", "second-signal-during-cleanup"],
)
def test_a_signal_during_cleanup_does_not_cut_it_short(
    client, tmp_path: Path, steps: str, first: str, second: str | None
):
    proc, label = _cli_run(tmp_path, steps)
    seen = _read_until(proc, first)
    proc.send_signal(signal.SIGINT if second else signal.SIGTERM)
    if second:
        seen = _read_until(proc, second, seen)
        proc.send_signal(signal.SIGINT)
    rest = _output(proc, 120)
    assert "Traceback" not in seen + rest, seen + rest
    assert "PASS phase cleanup" in rest, seen + rest
    assert proc.returncode == 130, seen + rest
    assert leftovers(client, label) == NOTHING


def test_sigterm_while_init_hangs_stops_the_init_containers(
    client, init_hangs_image, tmp_path: Path
):
    proc, label = _cli_run(tmp_path, "  - {type: wait, seconds: 1}\n", init_hangs_image)
    deadline = time.monotonic() + 60
    while (
        len(leftovers(client, label)["containers"]) < 2 and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    # cleanup must not wait for the stuck `merod init` calls: it stops them
    out = _output(proc, 40)
    assert proc.returncode == 130, out
    assert "still running" not in out, out
    assert leftovers(client, label) == NOTHING


def test_sigterm_while_the_image_pull_hangs_stops_at_once(client, tmp_path: Path):
    # a "registry" on loopback that accepts connections and never answers
    with socket.socket() as registry:
        registry.bind(("127.0.0.1", 0))
        registry.listen(16)
        registry.settimeout(60)
        image = f"127.0.0.1:{registry.getsockname()[1]}/hangs/merod:edge"
        proc, label = _cli_run(tmp_path, "  - {type: wait, seconds: 1}\n", image)
        asked, _ = registry.accept()  # the daemon is pulling now
        try:
            proc.send_signal(signal.SIGTERM)
            # the daemon gives up on its own only after about 25 s per try
            out = _output(proc, 15)
        finally:
            asked.close()
    assert proc.returncode == 130, out
    assert "FAIL phase pull_image" in out and "INTERRUPTED" in out, out
    assert leftovers(client, label) == NOTHING


def _backend(
    tmp_path: Path, workflow: str = "backend test", image: str = NODE_IMAGE
) -> DockerBackend:
    run_id = f"t-{secrets.token_hex(4)}"
    return DockerBackend(
        run_id=run_id,
        workflow_name=workflow,
        workdir=tmp_path / f"wf-{run_id}",
        image=image,
    )


async def _kv_context(node: NodeClient, staged: str) -> str:
    app = await node.install_dev_application(staged)
    assert app == bundle.application_id_for_bundle("com.calimero.kv-store", bundle.DEV_SIGNER_ID).hex()
    namespace = await node.create_namespace(app)
    return (await node.create_context(app, namespace))["contextId"]


async def test_stopped_node_keeps_data_url_and_logs(client, tmp_path: Path):
    backend = _backend(tmp_path)
    try:
        handles = await backend.start_nodes([NodeSpec(name="solo")], ready_timeout=60)
        url = handles["solo"].url
        # The data dir is bind-mounted from the run's workdir.
        config = backend.workdir / "nodes" / "solo" / "solo" / "config.toml"
        assert config.is_file()
        assert handles["solo"].info["data"] == str(
            backend.workdir.resolve() / "nodes" / "solo"
        )
        assert handles["solo"].info["app_bundles"] == bundle.SCHEME_V1
        raw = await backend.stage_file("solo", KV_WASM)
        staged = await backend.stage_file(
            "solo", bundle.dev_bundle_for(KV_WASM, tmp_path / "bundles")
        )
        async with NodeClient(url, name="solo") as node:
            # As current merod: a raw .wasm is refused, a signed bundle installs.
            with pytest.raises(NodeApiError) as info:
                await node.install_dev_application(raw)
            assert info.value.status == 500
            assert info.value.message.endswith(
                "failed with HTTP 500: not a signed application bundle: /app/data/kv_store.wasm"
            )
            context = await _kv_context(node, staged)
            await node.execute(context, "set", {"key": "k", "value": "before stop"})

        await backend.stop_node("solo")
        stopped = await backend.node_state("solo")
        assert not stopped.running and stopped.exit_code == 0 and stopped.finished_at
        again = await backend.start_node("solo", ready_timeout=60)
        assert again.url == url  # the published port survives the restart
        again = await backend.restart_node("solo", ready_timeout=60)
        assert again.url == url
        async with NodeClient(url, name="solo") as node:
            assert (
                await node.execute(context, "get", {"key": "k"})
            ).output == "before stop"

        files = await backend.collect_logs(tmp_path / "logs")
        log = files["solo"].read_text()
        assert log.count("node solo started") == 3, log
        state = json.loads((tmp_path / "logs" / "solo.state.json").read_text())
        assert set(state) == {
            "running",
            "exit_code",
            "paused",
            "oom_killed",
            "error",
            "started_at",
            "finished_at",
        }
        assert state["running"] is True
        tail = await backend.tail_logs("solo", 2)
        assert len(tail.splitlines()) == 2 and tail[:4].isdigit()  # timestamped
    finally:
        await backend.cleanup()
    assert config.is_file()  # cleanup keeps data; nuke removes it


async def test_partitioned_node_is_cut_off_from_peers_on_every_network(
    client, tmp_path: Path
):
    backend = _backend(tmp_path)
    try:
        handles = await backend.start_nodes(
            [NodeSpec(name="a"), NodeSpec(name="b")], ready_timeout=60
        )
        b = client.containers.get(handles["b"].info["container"])
        control_ip = next(
            net["IPAddress"]
            for name, net in b.attrs["NetworkSettings"]["Networks"].items()
            if name.endswith("-control")
        )

        async def reach_b() -> list[int]:
            """From a: can a TCP connection reach b's swarm port by peers alias, by control IP?"""
            probe = (
                "import socket,sys\n"
                "for host in sys.argv[1:]:\n"
                "    try:\n"
                "        socket.create_connection((host, 2428), timeout=2).close(); print(1)\n"
                "    except OSError:\n"
                "        print(0)\n"
            )
            code, out, err = await backend.exec_in_node(
                "a", ["python3", "-c", probe, "b.peers", control_ip], {}
            )
            assert code == 0, err
            return [int(x) for x in out.split()]

        # Over peers yes; over the control network never (inter-container traffic is off there).
        assert await reach_b() == [1, 0]
        await backend.disconnect_node("b")
        assert await reach_b() == [0, 0]
        async with httpx.AsyncClient(trust_env=False) as http:
            assert (
                await http.get(f"{handles['b'].url}/admin-api/health")
            ).status_code == 200
        await backend.connect_node("b")
        assert await reach_b() == [1, 0]
        await backend._wait_ready(["a", "b"], 1, 30)  # they find each other again
    finally:
        await backend.cleanup()


async def test_backend_parallel_start_and_stage_file(client, tmp_path: Path):
    backend = _backend(tmp_path)
    try:
        handles = await backend.start_nodes(
            [
                NodeSpec(name="a"),
                NodeSpec(name="b", log_level="debug"),
                NodeSpec(name="c"),
            ],
            ready_timeout=60,
        )
        assert set(handles) == {"a", "b", "c"}
        env = client.containers.get(handles["b"].info["container"]).attrs["Config"][
            "Env"
        ]
        assert {"RUST_LOG=debug", "NODE_NAME=b", "CALIMERO_HOME=/app/data"} <= set(env)
        staged = await backend.stage_file("a", KV_WASM)
        assert staged == "/app/data/kv_store.wasm"
        code, out, _ = await backend.exec_in_node(
            "a", ["sh", "-c", f"wc -c < {staged}"], {}
        )
        assert code == 0
        assert int(out.strip()) == KV_WASM.stat().st_size
        # A file named like the node's own directory does not replace it.
        (tmp_path / "a").write_bytes(b"x")
        assert await backend.stage_file("a", tmp_path / "a") == "/app/data/staged-a"
        with pytest.raises(BackendError, match="not a regular file"):
            await backend.stage_file("a", tmp_path)
        with pytest.raises(
            NodeUnavailableError, match="was not ready within 0.3s: it sees 2 of 5 peer"
        ):
            await backend._wait_ready(["a"], 5, 0.3)
    finally:
        report = await backend.cleanup()
    assert "3 container(s), 2 network(s)" in report.detail
    again = await backend.cleanup()  # twice is fine
    assert again.detail.startswith("removed 0 container(s)")
    with pytest.raises(BackendError, match="already cleaned up"):
        await backend.start_nodes([NodeSpec(name="late")], ready_timeout=5)
    assert leftovers(client, f"{LABEL_RUN}={backend.run_id}") == NOTHING


async def test_cleanup_during_a_cancelled_start_leaves_nothing(client, tmp_path: Path):
    """What SIGTERM does to a run: the start is cancelled while worker threads
    are still creating containers, and cleanup must see what they create."""
    backend = _backend(tmp_path)
    label = f"{LABEL_RUN}={backend.run_id}"
    start = asyncio.create_task(
        backend.start_nodes(
            [NodeSpec(name=f"n{i}") for i in range(3)], ready_timeout=60
        )
    )
    while not leftovers(client, label)["containers"] and not start.done():
        await asyncio.sleep(0.01)
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    await backend.cleanup()
    assert leftovers(client, label) == NOTHING


async def test_pull_skips_a_present_image_and_explains_an_unreachable_registry(
    client, tmp_path: Path
):
    backend = _backend(tmp_path)
    report = await backend.pull_image()
    assert report.skipped and report.detail == f"present: {NODE_IMAGE}"
    info = backend.image_info()
    assert (
        info["image"] == NODE_IMAGE
        and info["digest"] == client.images.get(NODE_IMAGE).id
    )

    # A registry on a loopback port where nothing listens: every try is refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    missing = f"127.0.0.1:{port}/nowhere/merod:edge"
    backend = _backend(tmp_path, image=missing)
    with pytest.raises(BackendError) as failed:
        await backend.pull_image()
    assert f"cannot pull the node image {missing!r} after 3 attempts" in str(
        failed.value
    )
    assert (
        "--image" in failed.value.hint
        and "scripts/build-images.sh" in failed.value.hint
    )
    await backend.cleanup()


@contextlib.contextmanager
def _registry(answer: str):
    """A registry on loopback whose every manifest is ``answer``: 404 or 401."""

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the handler's API)
            if self.path == "/v2/" and answer != "401":
                status, body = 200, b"{}"
            else:
                code = "MANIFEST_UNKNOWN" if answer == "404" else "UNAUTHORIZED"
                status = int(answer)
                body = json.dumps({"errors": [{"code": code, "message": code.lower()}]})
                body = body.encode()
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_pull_says_which_image_is_missing_or_needs_a_login(
    client, tmp_path: Path
):
    with _registry("404") as registry:
        missing = f"{registry}/calimero/merod:no-such-tag"
        with pytest.raises(BackendError) as failed:
            await _backend(tmp_path, image=missing).pull_image()
        assert f"the registry has no image {missing!r}" in str(failed.value)
        assert "attempts" not in str(failed.value)  # not worth trying again
        assert "name and the tag" in failed.value.hint

        # forced, with a copy here: a warning, and the copy is used
        local = f"{registry}/calimero/merod:local-copy-{secrets.token_hex(3)}"
        client.images.get(NODE_IMAGE).tag(local)
        try:
            backend = _backend(tmp_path, image=local)
            report = await backend.pull_image(force=True)
        finally:
            client.images.remove(local)
        assert not report.skipped
        (warning,) = report.data["warnings"]
        assert warning.startswith(f"the forced pull of {local} failed (the registry has no image")
        assert warning.endswith("the copy of it here is used")
        assert f"warning: {warning}" in report.detail
        assert backend.image_info()["id"] == client.images.get(NODE_IMAGE).id
    with _registry("401") as registry:
        private = f"{registry}/private/merod:edge"
        with pytest.raises(BackendError) as failed:
            await _backend(tmp_path, image=private).pull_image()
        assert f"the registry refused {private!r}" in str(failed.value)
        assert f"docker login {registry}" in failed.value.hint


def _closed_registry() -> str:
    """A registry on a loopback port where nothing listens: every pull is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def test_force_pull_image_keeps_the_run_on_the_copy_here(client, tmp_path: Path):
    # merobox: a forced pull that fails says "Workflow will continue with
    # existing image". The file names an image whose registry cannot be reached.
    registry = _closed_registry()
    named = f"{registry}/calimero/merod:copy-{secrets.token_hex(3)}"
    client.images.get(NODE_IMAGE).tag(named)
    text = (
        "name: forced pull\nforce_pull_image: true\n"
        f"nodes: {{count: 1, prefix: n, image: '{named}'}}\n"
        "steps:\n  - {type: wait, seconds: 0.1}\n"
    )
    try:
        wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
        result = await WorkflowExecutor(wf, backend="docker", env={}, workdir=tmp_path).run()
    finally:
        client.images.remove(named)
    assert result.passed, failures(result)
    pull = next(p for p in result.phases if p.name == "pull_image")
    assert pull.status is Status.PASSED
    assert f"warning: the forced pull of {named} failed (cannot pull the node image" in pull.detail
    assert pull.data["warnings"] and result.image["image"] == named
    assert leftovers(client, f"{LABEL_RUN}={result.run_id}") == NOTHING


async def test_force_pull_image_leaves_an_image_chosen_with_image_as_it_is(client, tmp_path: Path):
    # merobox force-pulls the image the file names, never the command line's,
    # and the nodes run the command line's. The file's image is on a registry
    # that cannot be reached, and no node runs it: it is not pulled at all.
    never = f"{_closed_registry()}/calimero/merod:never-{secrets.token_hex(3)}"
    text = (
        "name: forced pull with --image\nforce_pull_image: true\n"
        f"nodes: {{count: 1, prefix: n, image: '{never}'}}\n"
        "steps:\n  - {type: wait, seconds: 0.1}\n"
    )
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await run_docker(wf, tmp_path)
    assert result.passed, failures(result)
    pull = next(p for p in result.phases if p.name == "pull_image")
    assert pull.status is Status.SKIPPED
    assert pull.detail == f"present, not force-pulled (chosen with --image): {NODE_IMAGE}"

    # --force-pull on the command line is for every image: this one is local only
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    local = f"{_closed_registry()}/calimero/merod:local-{secrets.token_hex(3)}"
    client.images.get(NODE_IMAGE).tag(local)
    try:
        executor = WorkflowExecutor(
            wf, backend="docker", image=local, env={}, workdir=tmp_path, force_pull=True
        )
        result = await executor.run()
    finally:
        client.images.remove(local)
    assert result.passed, failures(result)
    pull = next(p for p in result.phases if p.name == "pull_image")
    assert f"the forced pull of {local} failed" in pull.detail


@pytest.mark.parametrize(
    "ref, why",
    [
        ("Calimero/Merod:edge", "repository names must be lowercase"),
        ("ghcr.io/calimero//merod", "not a valid image reference"),
        ("merod:edge:again", "not a valid image reference"),
        ("merod:" + "t" * 200, "not a valid image reference"),
        ("merod edge", "not a valid image reference"),
        ("", "is empty"),
        ("ghcr.io/calimero-network/merod:edge", None),
        ("127.0.0.1:5000/a/b:c", None),
        ("localhost/x", None),
        ("a__b/c--d.e:1.0-rc_1", None),
        ("merod@sha256:" + "ab" * 32, None),
        ("[::1]:5000/merod:edge", None),
    ],
)
def test_image_references_are_checked_as_docker_reads_them(ref, why):
    problem = image_reference_problem(ref)
    assert (problem is None) if why is None else (why in problem), problem


async def test_an_invalid_image_is_refused_before_docker_is_asked(tmp_path: Path):
    backend = _backend(tmp_path, image="Calimero/Merod:edge")
    with pytest.raises(BackendError) as failed:
        await backend.pull_image()
    assert "'Calimero/Merod:edge' is not a valid image reference" in str(failed.value)
    assert "lowercase" in str(failed.value) and "ghcr.io/" in failed.value.hint
    assert backend._client is None  # no engine was asked


async def test_a_taken_rpc_port_is_named_with_the_key_that_sets_it(
    client, tmp_path: Path
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        wf = parse_workflow(
            f"name: port taken\nnodes:\n  n1: {{rpc_port: {port}}}\nsteps: []\n",
            environ={},
        )
        result = await run_docker(wf, tmp_path)
    phase = next(p for p in result.phases if p.name == "nodes_start")
    assert phase.status is Status.FAILED
    assert f"host port {port} is taken" in phase.error.hint
    assert "`rpc_port`" in phase.error.hint and "`base_rpc_port`" in phase.error.hint
    assert leftovers(client, f"{LABEL_RUN}={result.run_id}") == NOTHING


async def test_node_names_that_would_collide_are_refused(client, tmp_path: Path):
    backend = _backend(tmp_path)
    with pytest.raises(BackendError, match="would share the container name"):
        await backend.start_nodes(
            [NodeSpec(name="Node_1"), NodeSpec(name="node-1")], ready_timeout=5
        )
    await backend.cleanup()


async def test_nuke_removes_only_this_workflows_leftovers(client, tmp_path: Path):
    # A crashed earlier run of "nuke me", a live run of "nuke-me" (same slug!)
    # and one of "nuke me too" (whose name starts with "nuke me").
    # A run of "nuke me" still in progress is left alone too.
    crashed = _backend(tmp_path, "nuke me")
    live = _backend(tmp_path, "nuke me")
    others = [_backend(tmp_path, "nuke-me"), _backend(tmp_path, "nuke me too"), live]
    try:
        for backend in (crashed, *others):
            await backend.start_nodes([NodeSpec(name="n")], ready_timeout=60)
        release_run(crashed.workdir)  # as the kernel does when a process dies
        fresh = _backend(tmp_path, "nuke me")
        report = await fresh.nuke()
        assert report.data["data_dirs"] == [crashed.workdir.name]
        assert report.data["in_progress"] == [live.workdir.name]
        assert "1 container(s), 2 network(s)" in report.detail
        assert leftovers(client, f"{LABEL_RUN}={crashed.run_id}") == NOTHING
        assert not (crashed.workdir / "nodes").exists()
        for other in others:
            assert leftovers(client, f"{LABEL_RUN}={other.run_id}")["containers"] == [
                f"cw-{other.short}-n"
            ]
            assert (other.workdir / "nodes" / "n" / "n" / "config.toml").is_file()
    finally:
        await crashed.cleanup()
        for other in others:
            await other.cleanup()


async def test_pause_partition_and_concurrent_lifecycle_on_containers(client, tmp_path: Path):
    backend = _backend(tmp_path)
    try:
        handles = await backend.start_nodes(
            [NodeSpec(name=n) for n in ("a", "b", "c")], ready_timeout=60
        )

        async def reach(source: str, *targets: str) -> list[int]:
            """From ``source``: can a TCP connection reach each target's swarm port by its alias?"""
            probe = (
                "import socket,sys\n"
                "for host in sys.argv[1:]:\n"
                "    try:\n"
                "        socket.create_connection((host, 2428), timeout=2).close(); print(1)\n"
                "    except OSError:\n"
                "        print(0)\n"
            )
            code, out, err = await backend.exec_in_node(
                source, ["python3", "-c", probe, *(f"{t}.peers" for t in targets)], {}
            )
            assert code == 0, err
            return [int(x) for x in out.split()]

        # a partition cuts only the pairs it names, both ways
        await backend.partition_peers("a", ["c"])
        assert await reach("a", "b", "c") == [1, 0]
        assert await reach("c", "a", "b") == [0, 1]
        assert await reach("b", "a", "c") == [1, 1]
        # a restarted node keeps its networks, and a disconnect on top of a partition undoes cleanly
        await backend.restart_node("c", ready_timeout=60)
        assert await reach("c", "a", "b") == [0, 1]
        await backend.disconnect_node("b")
        assert await reach("a", "b", "c") == [0, 0]
        await backend.connect_node("b")
        await backend.heal_peers("c", ["a"])
        assert await reach("a", "b", "c") == [1, 1]
        assert await reach("c", "a", "b") == [1, 1]
        await backend._wait_ready(["a", "b", "c"], 2, 60)  # they find each other again

        # a paused node answers nothing, then everything again
        assert await backend.pause_node("b") is True
        assert await backend.pause_node("b") is False
        assert (await backend.node_state("b")).paused
        async with httpx.AsyncClient(trust_env=False, timeout=1.0) as http:
            with pytest.raises(httpx.TimeoutException):
                await http.get(f"{handles['b'].url}/admin-api/health")
            assert await backend.unpause_node("b") is True
            assert (await http.get(f"{handles['b'].url}/admin-api/health")).status_code == 200
        assert await backend.unpause_node("b") is False

        # lifecycle operations on one node, asked for at once, take turns
        await backend.pause_node("b")
        stops = await asyncio.gather(backend.stop_node("b"), backend.stop_node("b"))
        assert stops == [True, False]  # the paused node was stopped once
        started = await asyncio.gather(
            backend.start_node("b", ready_timeout=60),
            backend.start_node("b", ready_timeout=60),
        )
        assert [h.already_running for h in started] == [False, True]
        await asyncio.gather(
            backend.restart_node("b", ready_timeout=60),
            backend.restart_node("b", ready_timeout=60),
        )
        assert (await backend.node_state("b")).running

        # node log lines: read as written, since a time, and written out masked
        assert "node b started" in await backend.read_logs("b")
        assert await backend.logs_since("b", time.time() + 60) == []
        files = await backend.collect_logs(
            tmp_path / "logs", redact=lambda text: text.replace("node b started", "***")
        )
        log = files["b"].read_text()
        assert "node b started" not in log and "***" in log
    finally:
        await backend.cleanup()
    assert leftovers(client, f"{LABEL_RUN}={backend.run_id}") == NOTHING


async def test_faults_and_log_steps_in_a_workflow_on_containers(client, tmp_path: Path):
    text = textwrap.dedent(f"""
        name: docker faults
        nodes: {{count: 3, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {KV_WASM}}}
          - {{name: ns, type: create_namespace, node: node-1, application_id: "${{results.install.application_id}}"}}
          - {{name: ctx, type: create_context, node: node-1, application_id: "${{results.install.application_id}}", namespace_id: "${{results.ns.namespace_id}}"}}
          - {{name: inv2, type: invite, node: node-1, namespace_id: "${{results.ns.namespace_id}}"}}
          - {{type: join, node: node-2, namespace_id: "${{results.ns.namespace_id}}", invitation: "${{results.inv2.invitation}}"}}
          - {{name: inv3, type: invite, node: node-1, namespace_id: "${{results.ns.namespace_id}}"}}
          - {{type: join, node: node-3, namespace_id: "${{results.ns.namespace_id}}", invitation: "${{results.inv3.invitation}}"}}
          - {{type: partition_peers, node: node-3, peers: [node-1, node-2]}}
          - {{type: call, node: node-3, context_id: "${{results.ctx.context_id}}", method: set, args: {{key: island, value: "3"}}}}
          - {{type: call, node: node-1, context_id: "${{results.ctx.context_id}}", method: set, args: {{key: main, value: "1"}}}}
          - {{name: apart, type: wait_for_sync, context_id: "${{results.ctx.context_id}}", timeout: 2, expected_failure: true}}
          - {{type: heal_peers, node: node-3, peers: [node-1, node-2]}}
          - {{type: wait_for_sync, context_id: "${{results.ctx.context_id}}", timeout: 60, expect: {{method: len, equals: 2}}}}
          - {{name: freeze, type: pause_container, container: node-2}}
          - {{name: frozen, type: call, node: node-2, context_id: "${{results.ctx.context_id}}", method: len, timeout: 1, expected_failure: true, expected_error: "paused by step 'freeze'"}}
          - {{type: unpause_container, container: node-2}}
          - {{name: bounce, type: restart_container, container: "${{nodes.node-2.container}}"}}
          - {{type: call, node: node-2, context_id: "${{results.ctx.context_id}}", method: len, expected: 2}}
          - {{name: stop2, type: stop_node, nodes: node-2}}
          - {{type: call, node: node-2, context_id: "${{results.ctx.context_id}}", method: len, expected_failure: true, expected_error: "node-2 was stopped by step 'stop2'"}}
          - {{type: pause_container, container: node-2, expected_failure: true, expected_error: "node-2 was stopped by step 'stop2'"}}
          - {{type: unpause_container, container: node-2, expected_failure: true, expected_error: "node-2 was stopped by step 'stop2'"}}
          - {{name: cut, type: disconnect_node, node: node-2}}
          - {{type: connect_node, node: node-2}}
          - {{type: start_node, nodes: node-2}}
          - {{type: assert_log_present, nodes: [node-1, node-2], patterns: ["node node-2 started"], min_matches: 3}}
          - {{type: assert_log_absent, nodes: [], patterns: ["Traceback"]}}
          - {{name: big, type: script, target: nodes, nodes: node-1, run: 'head -c 3000000 /dev/zero | tr "\\0" a'}}
    """)
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await run_docker(wf, tmp_path)
    assert result.passed, failures(result)
    hashes = result.workflow_results["apart"]["hashes"]
    assert hashes["node-1"] == hashes["node-2"] != hashes["node-3"]
    big = result.workflow_results["big"]["nodes"]["node-1"]
    assert len(big["stdout"]) == 1024 * 1024 and big["stdout_truncated"] is True
    assert leftovers(client, f"{LABEL_RUN}={result.run_id}") == NOTHING


async def test_merobox_steps_on_containers_api_blobs_and_node_scripts(client, tmp_path: Path):
    # assert_api_response, a blob node 2 fetches from node 1 with context_id
    # (merod's network discovery), and a `target: nodes` script whose
    # `outputs:` is not applied while merobox's per-node exports are set.
    (tmp_path / "small.txt").write_text("a blob that starts on node 1\n")
    text = textwrap.dedent(f"""
        name: docker merobox steps
        nodes: {{count: 2, prefix: node}}
        steps:
          - {{name: install, type: install_application, node: node-1, path: {KV_WASM}}}
          - {{name: ns, type: create_namespace, node: node-1, application_id: "${{results.install.application_id}}", namespace_name: shared-room}}
          - {{name: ctx, type: create_context, node: node-1, application_id: "${{results.install.application_id}}", namespace_id: "${{results.ns.namespace_id}}"}}
          - {{name: inv, type: invite, node: node-1, namespace_id: "${{results.ns.namespace_id}}"}}
          - {{type: join, node: node-2, namespace_id: "${{results.ns.namespace_id}}", invitation: "${{results.inv.invitation}}"}}
          - name: named
            type: assert_api_response
            node: node-1
            path: /admin-api/namespaces
            where: {{namespaceId: "${{results.ns.namespace_id}}"}}
            match: {{name: shared-room, memberCount: 2}}
          - {{name: up, type: upload_blob, node: node-1, file_path: small.txt, context_id: "${{results.ctx.context_id}}"}}
          - {{name: control, type: download_blob, node: node-2, blob_id: "${{results.up.blob_id}}", expected_failure: true, expected_error: "Blob not found locally or in network"}}
          - {{name: down, type: download_blob, node: node-2, blob_id: "${{results.up.blob_id}}", context_id: "${{results.ctx.context_id}}", expected_sha256: "${{results.up.sha256}}"}}
          - name: probe
            type: script
            target: nodes
            run: echo "hello from $(hostname)"
            outputs: {{script_result: output, execution_time: execution_time}}
          - type: assert
            statements:
              - 'equal({{{{script_exit_code_node-1}}}}, 0)'
              - 'contains({{{{script_output_node-2}}}}, "hello from")'
              - 'gte({{{{script_execution_time_node-1}}}}, 0)'
          - name: each
            type: script
            target: nodes
            run: 'if [ -d /app/data/node-1 ]; then exit 4; fi; exit 5'
            expected_failure: true
            expected_error: "script failed on 2 of 2 nodes (node-1, node-2); [node-1] script exited with code 4; [node-2] script exited with code 5"
    """)
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    assert any("`outputs:` is not applied" in note for note in wf.notes)
    result = await run_docker(wf, tmp_path)
    assert result.passed, failures(result)
    assert result.workflow_results["down"]["size"] == (tmp_path / "small.txt").stat().st_size
    assert result.workflow_results["named"]["element"]["name"] == "shared-room"
    assert set(result.workflow_results["probe"]["nodes"]) == {"node-1", "node-2"}
    assert leftovers(client, f"{LABEL_RUN}={result.run_id}") == NOTHING


def test_host_path_for_maps_through_the_deepest_mount():
    mounts = [
        {
            "Type": "bind",
            "Source": "/var/run/docker.sock",
            "Destination": "/var/run/docker.sock",
        },
        {
            "Type": "bind",
            "Source": "/home/runner/work/r/r",
            "Destination": "/github/workspace",
        },
        {
            "Type": "bind",
            "Source": "/home/runner/work/_temp",
            "Destination": "/github/runner_temp",
        },
        {
            "Type": "volume",
            "Source": "/var/lib/docker/volumes/v/_data",
            "Destination": "/github/workspace/cache",
        },
        {"Type": "tmpfs", "Source": "", "Destination": "/scratch"},
    ]
    assert (
        host_path_for(Path("/github/workspace/.cw-runs/x/nodes/n"), mounts)
        == "/home/runner/work/r/r/.cw-runs/x/nodes/n"
    )
    assert (
        host_path_for(Path("/github/workspace/cache/n"), mounts)
        == "/var/lib/docker/volumes/v/_data/n"
    )
    assert host_path_for(Path("/github/workspacex/n"), mounts) is None
    assert host_path_for(Path("/scratch/n"), mounts) is None
    assert host_path_for(Path("/tmp/runs"), mounts) is None


def test_set_bootstrap_keeps_the_rest_of_the_config():
    text = textwrap.dedent("""\
        [identity]
        peer_id = "x"

        [bootstrap]
        nodes = [
          "/ip4/1.2.3.4/tcp/1/p2p/old",
        ]

        [sync]
        interval_ms = 5
    """)
    out = set_bootstrap(text, ["/dns4/a.peers/tcp/2428/p2p/P"])
    import tomllib

    data = tomllib.loads(out)
    assert data["bootstrap"]["nodes"] == ["/dns4/a.peers/tcp/2428/p2p/P"]
    assert data["sync"]["interval_ms"] == 5 and data["identity"]["peer_id"] == "x"
    assert tomllib.loads(set_bootstrap('[identity]\npeer_id = "y"\n', ["n"]))[
        "bootstrap"
    ]["nodes"] == ["n"]


def _engine_in_container(
    client, out: Path, workdir: str, mounts: dict, **run_options
) -> tuple[str, dict]:
    """Run the kv-store example with the engine in a container; its output and report."""
    engine = client.containers.run(
        NODE_IMAGE,
        entrypoint=["calimero-workflow"],
        command=[
            "run",
            "/repo/examples/kv-store/workflow.yml",
            "--backend",
            "docker",
            "--image",
            NODE_IMAGE,
            "--workdir",
            workdir,
            "--color",
            "never",
            "--report",
            "/out/report.json",
        ],
        volumes={
            "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
            str(ROOT): {"bind": "/repo", "mode": "ro"},
            str(out): {"bind": "/out", "mode": "rw"},
            **mounts,
        },
        labels={"calimero-workflow.test": "engine-in-container"},
        environment={"PYTHONPATH": "/repo/src"},  # this checkout's engine
        detach=True,
        **run_options,
    )
    try:
        engine.wait(timeout=300)
        output = engine.logs().decode()
    finally:
        engine.remove(force=True)
    report = json.loads((out / "report.json").read_text())
    return output, report


def _cleanup_detail(report: dict) -> str:
    return next(p["detail"] for p in report["phases"] if p["name"] == "cleanup")


def test_engine_inside_a_container_reaches_nodes_by_name(client, tmp_path: Path):
    """As in the GitHub Action: the engine runs in a container, reaches its sibling
    node containers by name through per-node control networks, and node data
    lands in the host directory behind its workdir mount."""
    runs = tmp_path / "runs"
    runs.mkdir()
    output, report = _engine_in_container(
        client, tmp_path, "/runs", {str(runs): {"bind": "/runs", "mode": "rw"}}
    )
    assert "PASSED kv-store replicates: 19 passed" in output, output
    assert "ready: node-1, node-2, node-3" in output
    for name, node in report["nodes"].items():
        assert node["url"] == f"http://{node['container']}:2528"
        assert node["data"].startswith(str(runs)) and node["data"].endswith(
            f"/nodes/{name}"
        )
    configs = sorted(
        p.relative_to(runs).parts[1:] for p in runs.glob("*/nodes/*/*/config.toml")
    )
    assert configs == [
        ("nodes", f"node-{i}", f"node-{i}", "config.toml") for i in (1, 2, 3)
    ]
    # peers + a control network per node; no volumes
    assert "removed 3 container(s), 4 network(s), 0 volume(s)" in _cleanup_detail(
        report
    )
    assert leftovers(client, f"{LABEL_RUN}={report['run_id']}") == NOTHING


def test_engine_inside_a_container_without_a_mounted_workdir_uses_volumes(
    client, tmp_path: Path
):
    output, report = _engine_in_container(client, tmp_path, "/tmp/runs", {})
    assert "PASSED kv-store replicates: 19 passed" in output, output
    short = report["run_id"].replace("-", "")[-10:]
    assert {n["data"] for n in report["nodes"].values()} == {
        f"cw-{short}-node-{i}" for i in (1, 2, 3)
    }
    assert "removed 3 container(s), 4 network(s), 3 volume(s)" in _cleanup_detail(
        report
    )
    assert leftovers(client, f"{LABEL_RUN}={report['run_id']}") == NOTHING


def test_engine_in_a_container_on_the_host_network_uses_published_ports(
    client, tmp_path: Path
):
    output, report = _engine_in_container(
        client, tmp_path, "/tmp/runs", {}, network_mode="host"
    )
    assert "PASSED kv-store replicates: 19 passed" in output, output
    assert {n["url"].rsplit(":", 1)[0] for n in report["nodes"].values()} == {
        "http://127.0.0.1"
    }
    # peers and one shared control network, as on the host; data in volumes
    assert "removed 3 container(s), 2 network(s), 3 volume(s)" in _cleanup_detail(
        report
    )
    assert leftovers(client, f"{LABEL_RUN}={report['run_id']}") == NOTHING


def test_engine_sharing_another_containers_network_joins_that_one(
    client, tmp_path: Path
):
    # as act runs a container action: in the job container's network namespace
    owner = client.containers.run(
        NODE_IMAGE,
        entrypoint=["sleep", "300"],
        labels={"calimero-workflow.test": "engine-in-container"},
        detach=True,
    )
    try:
        output, report = _engine_in_container(
            client, tmp_path, "/tmp/runs", {}, network_mode=f"container:{owner.id}"
        )
        assert "PASSED kv-store replicates: 19 passed" in output, output
        assert all(
            n["url"] == f"http://{n['container']}:2528"
            for n in report["nodes"].values()
        )
        owner.reload()
        assert set(owner.attrs["NetworkSettings"]["Networks"]) == {"bridge"}
    finally:
        owner.remove(force=True)
    assert leftovers(client, f"{LABEL_RUN}={report['run_id']}") == NOTHING


def test_engine_in_a_container_without_a_network_says_so(client, tmp_path: Path):
    output, report = _engine_in_container(
        client, tmp_path, "/tmp/runs", {}, network_mode="none"
    )
    phase = next(p for p in report["phases"] if p["status"] == "failed")
    assert (
        "runs in a container without a network (--network none)"
        in (phase["error"]["message"])
    ), phase
    assert "--backend embedded" in phase["error"]["hint"]
    assert leftovers(client, f"{LABEL_RUN}={report['run_id']}") == NOTHING
