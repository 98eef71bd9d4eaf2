"""Remote nodes: addressed by URL, with no auth, an API key, or a user and password.

The "remote" node is a real embedded node on loopback. Authentication is
exercised against a real HTTP server that guards a node's routes the way an
authenticating node does (public health, bearer token elsewhere, a token
route for user/password).
"""

from __future__ import annotations

import asyncio
import json
import socket
import textwrap
from pathlib import Path

import httpx
import pytest
import uvicorn

from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.node.runtime import WasmRuntime
from calimero_workflow.node.server import EmbeddedNode, NodeConfig
from calimero_workflow.results import Status
from calimero_workflow.workflow import parse_workflow

TOKEN = "tok-3f9a"
API_KEY = "key-51c2"


class GuardedNode:
    """ASGI app: public health, bearer-guarded admin routes, /auth/token login."""

    def __init__(self) -> None:
        self.seen_auth: list[str | None] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode() or None
        self.seen_auth.append(auth)
        path = scope["path"]
        if path == "/admin-api/health":
            return await self._json(send, 200, {"data": {"status": "alive"}})
        if path == "/auth/token":
            data = json.loads(body or b"{}")
            creds = data.get("provider_data", {})
            if creds == {"username": "alice", "password": "s3cret"}:
                return await self._json(send, 200, {"data": {"access_token": TOKEN, "refresh_token": "r"}})
            return await self._json(send, 401, {"error": "bad credentials"})
        if auth not in (f"Bearer {TOKEN}", f"Bearer {API_KEY}"):
            return await self._json(send, 401, {"error": "Unauthorized"})
        if path == "/admin-api/peers":
            return await self._json(send, 200, {"count": 0})
        if path == "/admin-api/identity/context":
            return await self._json(send, 200, {"data": {"publicKey": "pk-from-guarded"}})
        return await self._json(send, 404, {"error": "not found"})

    @staticmethod
    async def _json(send, status: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": raw})


@pytest.fixture
async def guarded():
    app = GuardedNode()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.005)
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture
async def remote(tmp_path: Path):
    node = EmbeddedNode(
        NodeConfig(name="far", home=tmp_path / "far", server_host="127.0.0.1", server_port=0,
                   swarm_host="127.0.0.1", swarm_port=0, bootstrap=[]),
        runtime=WasmRuntime(),
    )
    await node.start()
    yield node
    await node.stop()


async def run(text: str, tmp_path: Path):
    wf = parse_workflow(textwrap.dedent(text), file=tmp_path / "wf.yml", environ={})
    return await WorkflowExecutor(wf, env={}, workdir=tmp_path / "runs").run()


async def test_steps_address_a_remote_node_by_name(remote, tmp_path: Path):
    result = await run(
        f"""
        name: remote
        remote_nodes:
          far: {{url: "{remote.url}"}}
        steps:
          - {{name: id, type: create_identity, node: far}}
          - type: assert
            statements:
              - is_set(${{results.id.public_key}})
              - equal(${{nodes.far.url}}, "{remote.url}")
        """,
        tmp_path,
    )
    assert result.passed, [s.error for s in result.all_steps() if s.error]
    phase = next(p for p in result.phases if p.name == "register_remote_nodes")
    assert phase.status is Status.PASSED and "far" in phase.detail
    assert next(p for p in result.phases if p.name == "nodes_start").status is Status.SKIPPED


async def test_unreachable_remote_node_fails_the_phase(tmp_path: Path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    result = await run(
        f"""
        name: remote
        remote_nodes: {{gone: {{url: "http://127.0.0.1:{port}"}}}}
        steps: [{{type: create_identity, node: gone}}]
        """,
        tmp_path,
    )
    phase = next(p for p in result.phases if p.name == "register_remote_nodes")
    assert phase.status is Status.FAILED
    assert "remote node gone" in phase.error.message and "unreachable" in phase.error.message
    assert result.steps[0].status is Status.SKIPPED


async def test_api_key_is_sent_as_a_bearer_token(guarded, tmp_path: Path):
    app, url = guarded
    result = await run(
        f"""
        name: remote
        remote_nodes:
          g: {{url: "{url}", auth: {{method: api_key, api_key: {API_KEY}}}}}
        steps:
          - {{name: id, type: create_identity, node: g}}
        """,
        tmp_path,
    )
    assert result.passed, [p.error for p in result.phases if p.error]
    assert result.workflow_results["id"]["public_key"] == "pk-from-guarded"
    assert f"Bearer {API_KEY}" in app.seen_auth


async def test_user_and_password_obtain_a_token(guarded, tmp_path: Path):
    app, url = guarded
    result = await run(
        f"""
        name: remote
        remote_nodes:
          g: {{url: "{url}", auth: {{method: password, username: alice, password: s3cret}}}}
        steps:
          - {{name: id, type: create_identity, node: g}}
        """,
        tmp_path,
    )
    assert result.passed, [p.error for p in result.phases if p.error]
    assert app.seen_auth[-1] == f"Bearer {TOKEN}"
    report = json.dumps(result.to_dict())
    assert "s3cret" not in report and TOKEN not in report


async def test_rejected_credentials_fail_clearly(guarded, tmp_path: Path):
    _, url = guarded
    result = await run(
        f"""
        name: remote
        remote_nodes:
          g: {{url: "{url}", auth: {{method: password, username: alice, password: wrong}}}}
        steps: [{{type: create_identity, node: g}}]
        """,
        tmp_path,
    )
    phase = next(p for p in result.phases if p.name == "register_remote_nodes")
    assert phase.status is Status.FAILED
    assert "refused the login of 'alice'" in phase.error.message


def test_incomplete_auth_is_a_validation_error(tmp_path: Path):
    from calimero_workflow.errors import WorkflowValidationError

    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(
            "name: r\nremote_nodes:\n  g:\n    url: http://127.0.0.1:1\n    auth: {method: api_key}\nsteps: []\n",
            file=tmp_path / "wf.yml", environ={},
        )
    assert "api_key needs `api_key`" in str(info.value)
    wf = parse_workflow(
        "name: r\nremote_nodes:\n  g:\n    url: http://127.0.0.1:1\n    auth: {method: password, username: u, password: pw}\nsteps: []\n",
        environ={},
    )
    assert wf.secret_values() == ["pw"]


async def test_guarded_node_refuses_requests_without_a_token(guarded):
    _, url = guarded
    async with httpx.AsyncClient() as client:
        assert (await client.get(url + "/admin-api/peers")).status_code == 401


async def test_credentials_never_reach_the_console_or_the_result_files(guarded, tmp_path: Path, capsys):
    from calimero_workflow.cli import main

    app, url = guarded
    with_user = url.replace("http://", "http://bob:url-pw-77@")
    wf = tmp_path / "wf.yml"
    wf.write_text(textwrap.dedent(f"""
        name: secrets
        remote_nodes:
          g: {{url: "{url}", auth: {{method: password, username: alice, password: s3cret}}}}
          u: {{url: "{with_user}"}}
        steps:
          - {{name: echo, type: assert, actual: "s3cret and url-pw-77", equals: nothing}}
        """))
    report, results = tmp_path / "report.json", tmp_path / "results.json"
    junit = tmp_path / "junit.xml"
    # the command runs its own event loop; the guarded node serves from this one
    code = await asyncio.to_thread(
        main, ["run", str(wf), "--report", str(report), "--results", str(results),
               "--junit", str(junit), "--workdir", str(tmp_path / "w"), "--color", "never"],
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "*** and ***" in out
    assert "*** and ***" in junit.read_text()  # the failure message names the value
    for text in (out, report.read_text(), results.read_text(), junit.read_text()):
        assert "s3cret" not in text and "url-pw-77" not in text
    assert json.loads(report.read_text())["nodes"]["u"]["url"] == with_user.replace("url-pw-77", "***")


@pytest.mark.parametrize("passes", [True, False])
async def test_node_logs_written_out_mask_the_workflow_credentials(
    remote, tmp_path: Path, passes: bool
):
    # The remote node's URL carries a password. Text a workflow sends to a
    # local node can reach that node's log (a request path is logged whole),
    # and the node logs handed out (--logs-dir, the run's node-logs/) must not
    # show the password then.
    secret = "Hunter2Pass"
    port = remote.url.rsplit(":", 1)[1]
    last = "" if passes else "- {type: assert, actual: 1, equals: 2}"
    wf = parse_workflow(
        textwrap.dedent(f"""
            name: redact
            nodes: {{count: 1, prefix: node}}
            remote_nodes:
              far: {{url: "http://admin:{secret}@127.0.0.1:{port}"}}
            steps:
              - {{name: v, type: assert, actual: "id-{secret}-x", is_set: true}}
              - {{type: get_application, node: node-1, application_id: "${{results.v.actual}}", expected_failure: true}}
              {last}
        """),
        file=tmp_path / "wf.yml",
        environ={},
    )
    result = await WorkflowExecutor(
        wf, env={}, workdir=tmp_path / "runs", logs_dir=tmp_path / "logs"
    ).run()
    assert result.passed is passes, [s.error for s in result.all_steps() if s.error]
    log = (tmp_path / "logs" / "node-1.log").read_text()
    assert "GET /admin-api/applications/id-***-x" in log
    assert secret not in log
