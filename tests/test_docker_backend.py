"""The Docker backend against our merod-compatible node image."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from calimero_workflow.backends.base import NodeSpec, NodeUnavailableError
from calimero_workflow.backends.docker import DockerBackend, set_bootstrap
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.results import Status
from calimero_workflow.workflow import load_workflow, parse_workflow
from docker_support import NODE_IMAGE, ROOT, docker_client, leftovers

pytestmark = pytest.mark.docker
pytest_plugins = []


@pytest.fixture(scope="module")
def client():
    return docker_client()


def failures(result) -> list[str]:
    return [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error] + [
        f"phase {p.name}: {p.error.message}" for p in result.phases if p.error
    ]


async def run_docker(wf, tmp_path: Path, **kwargs):
    return await WorkflowExecutor(wf, backend="docker", image=NODE_IMAGE, env={}, workdir=tmp_path, **kwargs).run()


async def test_example_passes_with_three_containers(client, tmp_path: Path):
    wf = load_workflow(ROOT / "examples" / "kv-store" / "workflow.yml", environ={})
    result = await run_docker(wf, tmp_path)
    assert result.passed, failures(result)
    assert result.workflow_results["get2"]["output"] == "world"
    assert result.workflow_results["read-on-1"]["output"] == "from node 3"
    assert {n["container"] for n in result.nodes.values()} == {
        f"cw-{result.run_id.replace('-', '')[-10:]}-node-{i}" for i in (1, 2, 3)
    }
    assert result.image["image"] == NODE_IMAGE and result.image["digest"]
    # logs of every node were written, green run included
    assert sorted(Path(p).name for p in result.node_log_files.values()) == [
        "node-1.log", "node-2.log", "node-3.log"
    ]
    assert all("node node-" in Path(p).read_text() for p in result.node_log_files.values())
    assert leftovers(client, f"calimero-workflow.run-id={result.run_id}") == {
        "containers": [], "networks": [], "volumes": []
    }


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


async def test_node_that_cannot_init_fails_with_exit_code_and_logs(client, tmp_path: Path):
    from docker_support import BASE_IMAGE

    wf = parse_workflow("name: broken image\nnodes: {count: 1}\nsteps: []\n", environ={})
    result = await WorkflowExecutor(wf, backend="docker", image=BASE_IMAGE, env={}, workdir=tmp_path).run()
    phase = next(p for p in result.phases if p.name == "nodes_start")
    assert phase.status is Status.FAILED
    assert "`merod init` for node calimero-node-1 could not start" in phase.error.message
    assert "executable file not found" in phase.error.message
    assert "must provide `merod`" in phase.error.hint
    assert leftovers(client, f"calimero-workflow.run-id={result.run_id}")["containers"] == []


def _variant_image(client, tag: str, on_run: str) -> str:
    """Our node image whose `merod ... run` does ``on_run`` instead of serving."""
    import io

    dockerfile = (
        f"FROM {NODE_IMAGE}\n"
        f"RUN printf '#!/bin/sh\\ncase \"$*\" in *\" run\"*) {on_run};; esac\\n"
        "exec /opt/cw/bin/merod-embedded \"$@\"\\n' > /usr/local/bin/merod-variant "
        "&& chmod 0755 /usr/local/bin/merod-variant && ln -sf /usr/local/bin/merod-variant /usr/local/bin/merod\n"
    )
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    return tag


@pytest.fixture(scope="module")
def silent_image(client):
    """A node that never serves: it can never become ready."""
    return _variant_image(client, "calimero-workflow/test-silent:dev", "exec sleep 3600")


async def test_node_that_exits_reports_exit_code_and_last_logs(client, tmp_path: Path):
    image = _variant_image(client, "calimero-workflow/test-crash:dev", "echo boom-before-exit; exit 3")
    wf = parse_workflow("name: crash\nnodes: {count: 2}\nwait_timeout: 30\nsteps: []\n", environ={})
    result = await WorkflowExecutor(wf, backend="docker", image=image, env={}, workdir=tmp_path).run()
    phase = next(p for p in result.phases if p.name == "nodes_start")
    assert phase.status is Status.FAILED
    assert "exited with code 3 before it was ready" in phase.error.message
    assert "boom-before-exit" in phase.data["last_logs"]


async def test_node_that_never_answers_times_out_clearly(client, silent_image, tmp_path: Path):
    wf = parse_workflow("name: silent\nnodes: {count: 1}\nwait_timeout: 2\nsteps: []\n", environ={})
    result = await WorkflowExecutor(wf, backend="docker", image=silent_image, env={}, workdir=tmp_path).run()
    phase = next(p for p in result.phases if p.name == "nodes_start")
    assert phase.status is Status.FAILED
    assert "was not ready within 2s" in phase.error.message
    assert not result.passed


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
        file=tmp_path / "wf.yml", environ={},
    )
    result = await run_docker(wf, tmp_path)
    assert not result.passed
    assert (Path(next(iter(result.node_log_files.values()))).parent / "node-states.json").is_file()
    assert leftovers(client, f"calimero-workflow.run-id={result.run_id}") == {
        "containers": [], "networks": [], "volumes": []
    }


def test_sigterm_cleans_up_everything(client, tmp_path: Path):
    wf = tmp_path / "slow.yml"
    wf.write_text("name: sigterm docker\nnodes: {count: 2}\nsteps:\n  - {type: wait, seconds: 120}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "calimero_workflow.cli", "run", str(wf), "--backend", "docker",
         "--image", NODE_IMAGE, "--workdir", str(tmp_path / "w"), "--color", "never"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT / "src")},
    )
    seen = ""
    deadline = time.monotonic() + 120
    while "phase nodes_start" not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stdout.readline()
    label = "calimero-workflow.workflow=sigterm-docker"
    assert leftovers(client, label)["containers"], seen
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + rest
    assert leftovers(client, label) == {"containers": [], "networks": [], "volumes": []}


async def test_backend_parallel_start_and_stage_file(client, tmp_path: Path):
    backend = DockerBackend(run_id="t-stage-" + str(os.getpid()), workflow_name="stage", workdir=tmp_path, image=NODE_IMAGE)
    try:
        handles = await backend.start_nodes([NodeSpec(name="a"), NodeSpec(name="b")], ready_timeout=60)
        assert set(handles) == {"a", "b"}
        staged = await backend.stage_file("a", ROOT / "apps" / "kv-store" / "kv_store.wasm")
        assert staged == "/app/data/kv_store.wasm"
        code, out, _ = await backend.exec_in_node("a", ["sh", "-c", f"wc -c < {staged}"], {})
        assert code == 0
        assert int(out.strip()) == (ROOT / "apps" / "kv-store" / "kv_store.wasm").stat().st_size
        with pytest.raises(NodeUnavailableError):
            await backend._wait_ready(["a"], 5, 0.3)  # a never sees four peers
    finally:
        await backend.cleanup()


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
    assert tomllib.loads(set_bootstrap('[identity]\npeer_id = "y"\n', ["n"]))["bootstrap"]["nodes"] == ["n"]


def test_engine_inside_a_container_joins_the_run_network(client, tmp_path: Path):
    """As in the GitHub Action: the engine runs in a container and reaches its
    sibling node containers through the run's network, not published ports."""
    output = client.containers.run(
        NODE_IMAGE,
        entrypoint=["calimero-workflow"],
        command=["run", "/repo/examples/kv-store/workflow.yml", "--backend", "docker",
                 "--image", NODE_IMAGE, "--workdir", "/tmp/runs", "--color", "never"],
        volumes={
            "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
            str(ROOT): {"bind": "/repo", "mode": "ro"},
        },
        labels={"calimero-workflow.test": "engine-in-container"},
        remove=True,
        stdout=True,
        stderr=True,
    ).decode()
    assert "PASSED kv-store replicates: 19 passed" in output, output
    assert "ready: node-1, node-2, node-3" in output
