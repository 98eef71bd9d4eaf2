"""Sandbox start and contract deployment, with a stand-in sandbox image of our own."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from calimero_workflow.errors import WorkflowValidationError
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.results import Status
from calimero_workflow.workflow import load_workflow, parse_workflow
from docker_support import NODE_IMAGE, derived_image, docker_client, leftovers

pytestmark = pytest.mark.docker
HERE = Path(__file__).resolve().parent / "sandbox"
SANDBOX_IMAGE = derived_image("sandbox")


@pytest.fixture(scope="module")
def client():
    client = docker_client()
    client.images.build(path=str(HERE), tag=SANDBOX_IMAGE, buildargs={"NODE_IMAGE": NODE_IMAGE}, rm=True)
    return client


def phase(result, name):
    return next(p for p in result.phases if p.name == name)


async def test_docker_nodes_get_the_deployed_contracts(client, tmp_path: Path):
    wf = load_workflow(HERE / "workflow.yml", environ={"SANDBOX_IMAGE": SANDBOX_IMAGE})
    result = await WorkflowExecutor(wf, backend="docker", image=NODE_IMAGE, env={}, workdir=tmp_path).run()
    assert result.passed, [(s.path, s.error) for s in result.all_steps() if s.error] + [
        (p.name, p.error) for p in result.phases if p.error
    ]
    assert phase(result, "sandbox_start").status is Status.PASSED
    deployed = result.workflow_results["deploy_contracts"]["contracts"]
    assert set(deployed) == {"config", "proxy"} and deployed["config"].startswith("c-")
    per_node = result.workflow_results["nodes-see-the-contract"]["nodes"]
    assert {n: d["stdout"].strip() for n, d in per_node.items()} == {
        "calimero-node-1": "http://sandbox:3030", "calimero-node-2": "http://sandbox:3030"
    }
    assert leftovers(client, f"calimero-workflow.run-id={result.run_id}") == {
        "containers": [], "networks": [], "volumes": []
    }


async def test_sandbox_phases_run_for_embedded_nodes_too(client, tmp_path: Path):
    text = (HERE / "workflow.yml").read_text().split("steps:")[0] + textwrap.dedent("""\
        steps:
          - type: assert
            statements: ["is_set(${results.deploy_contracts.contracts.config})"]
    """)
    wf = parse_workflow(text, file=HERE / "embedded.yml", environ={"SANDBOX_IMAGE": SANDBOX_IMAGE})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    assert result.passed, [(p.name, p.error) for p in result.phases if p.error]
    assert leftovers(client, f"calimero-workflow.run-id={result.run_id}")["containers"] == []


async def test_a_sandbox_that_exits_fails_clearly(client, tmp_path: Path):
    text = (
        f"name: bad sandbox\nsandbox: {{image: {SANDBOX_IMAGE}, port: 3030, ready_path: /status, "
        "env: {SANDBOX_FAIL: '1'}, timeout: 20}\nsteps: []\n"
    )
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    start = phase(result, "sandbox_start")
    assert start.status is Status.FAILED
    assert "exited with code 4" in start.error.message
    assert "sandbox refusing to start" in start.error.message
    assert phase(result, "deploy_contracts").status is Status.SKIPPED
    assert phase(result, "cleanup").status is Status.PASSED
    assert leftovers(client, f"calimero-workflow.run-id={result.run_id}")["containers"] == []


async def test_a_failing_deploy_command_fails_clearly(client, tmp_path: Path):
    text = (
        f"name: bad deploy\nsandbox: {{image: {SANDBOX_IMAGE}, port: 3030, ready_path: /status}}\n"
        "contracts: {command: [sh, -c, 'echo no-such-contract >&2; exit 9']}\nsteps: []\n"
    )
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    deploy = phase(result, "deploy_contracts")
    assert deploy.status is Status.FAILED
    assert "exit code 9" in deploy.error.message and "no-such-contract" in deploy.error.message


def test_sandbox_configuration_errors(tmp_path: Path):
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(
            "name: x\ncontracts: {dir: ./missing, command: [sh, -c, exit]}\nsteps: []\n",
            file=tmp_path / "wf.yml", environ={},
        )
    messages = [p.render() for p in info.value.problems]
    assert any("needs a `sandbox`" in m for m in messages)
    assert any("wf.yml:2:" in m and "contracts directory not found: ./missing" in m for m in messages)
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow("name: x\nsandbox: {image: i}\nsteps: []\n", file=tmp_path / "wf.yml", environ={})
    assert "port" in str(info.value)


def test_phases_report_skipped_when_not_configured(tmp_path: Path):
    import asyncio

    wf = parse_workflow("name: x\nsteps: []\n", environ={})
    result = asyncio.run(WorkflowExecutor(wf, env={}, workdir=tmp_path).run())
    assert phase(result, "sandbox_start").status is Status.SKIPPED
    assert phase(result, "deploy_contracts").detail == "the workflow names no contracts"
