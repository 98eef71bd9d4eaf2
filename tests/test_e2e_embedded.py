"""Whole workflows on embedded nodes with the real kv-store app."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from calimero_workflow import bundle
from calimero_workflow.cli import main
from calimero_workflow.errors import WorkflowValidationError
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.node.ids import b58encode
from calimero_workflow.results import Status
from calimero_workflow.workflow import parse_workflow

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "kv-store" / "kv_store.wasm"

SETUP = f"""
  - name: install
    type: install_application
    node: node-1
    path: {APP}
  - name: ns
    type: create_namespace
    node: node-1
    application_id: ${{results.install.application_id}}
  - name: ctx
    type: create_context
    node: node-1
    application_id: ${{results.install.application_id}}
    namespace_id: ${{results.ns.namespace_id}}
"""

JOIN2 = """
  - name: inv
    type: invite
    node: node-1
    namespace_id: ${results.ns.namespace_id}
  - name: join
    type: join
    node: node-2
    namespace_id: ${results.ns.namespace_id}
    invitation: ${results.inv.invitation}
  - name: ctx2
    type: join_context
    node: node-2
    context_id: ${results.ctx.context_id}
"""


async def run_workflow(tmp_path: Path, nodes: int, steps: str):
    text = f"name: e2e\nnodes: {{count: {nodes}, prefix: node}}\nsteps:\n{steps}"
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    return await WorkflowExecutor(wf, env={}, workdir=tmp_path / "runs").run()


def failures(result) -> list[str]:
    return [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]


def test_example_runs_and_replicates(tmp_path: Path, capsys):
    results = tmp_path / "results.json"
    code = main([
        "run", str(ROOT / "examples" / "kv-store" / "workflow.yml"),
        "--results", str(results), "--workdir", str(tmp_path / "w"), "--color", "never",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads(results.read_text())
    assert data["get2"]["output"] == "world"
    assert data["get3"]["output"] == "world"
    assert data["read-on-1"]["output"] == "from node 3"
    assert set(data["synced"]["hashes"]) == {"node-1", "node-2", "node-3"}
    assert len(set(data["synced"]["hashes"].values())) == 1
    assert data["synced"]["context_state_hash"] != data["synced-again"]["context_state_hash"]
    logs = list((tmp_path / "w").glob("*/node-logs/node-*.log"))
    assert len(logs) == 3 and all(p.stat().st_size > 0 for p in logs)


async def test_call_results_logs_and_events(tmp_path: Path):
    steps = SETUP + """
  - name: set
    type: call
    node: node-1
    context_id: ${results.ctx.context_id}
    method: set
    args: {key: k, value: "v, with \\"quotes\\""}
  - name: entries
    type: call
    node: node-1
    context_id: ${results.ctx.context_id}
    method: entries
"""
    result = await run_workflow(tmp_path, 1, steps)
    assert result.passed, failures(result)
    data = result.workflow_results
    assert data["set"]["output"] is None
    assert data["entries"]["output"] == {"k": 'v, with "quotes"'}
    assert any("k" in line for line in data["set"]["logs"])
    assert data["set"]["events"] and data["set"]["events"][0]["kind"] == "Inserted"
    set_record = next(s for s in result.steps if s.name == "set")
    assert any("app log" in line for line in set_record.logs)


@pytest.mark.parametrize(
    "method, args, error_kind, text",
    [
        ("nope", "{}", "FunctionCallError", 'method \\"nope\\" not found'),
        ("get_result", "{key: missing}", "FunctionCallError", "NotFound"),
        ("get_unchecked", "{key: missing}", "FunctionCallError", "key not found"),
        ("get", "{key: 1}", "FunctionCallError", "Failed to deserialize input"),
    ],
)
async def test_call_errors_carry_the_node_error(tmp_path: Path, method, args, error_kind, text):
    steps = SETUP + f"""
  - name: bad
    type: call
    node: node-1
    context_id: ${{results.ctx.context_id}}
    method: {method}
    args: {args}
"""
    result = await run_workflow(tmp_path, 1, steps)
    assert not result.passed
    bad = next(s for s in result.steps if s.name == "bad")
    assert bad.error.kind == error_kind
    assert text.replace("\\", "") in bad.error.message
    assert bad.error.location.line == steps.count("\n", 0, steps.index("name: bad")) + 4


async def test_expected_failure_and_expected_error(tmp_path: Path):
    steps = SETUP + """
  - name: missing
    type: call
    node: node-1
    context_id: ${results.ctx.context_id}
    method: get_result
    args: {key: zzz}
    expected_failure: true
    expected_error: NotFound
  - name: wrong-text
    type: call
    node: node-1
    context_id: ${results.ctx.context_id}
    method: get_result
    args: {key: zzz}
    expected_failure: true
    expected_error: SomethingElse
"""
    result = await run_workflow(tmp_path, 1, steps)
    statuses = {s.name: s.status for s in result.steps}
    assert statuses["missing"] is Status.PASSED
    assert statuses["wrong-text"] is Status.FAILED
    assert result.workflow_results["missing"]["error_type"] == "FunctionCallError"
    wrong = next(s for s in result.steps if s.name == "wrong-text")
    assert wrong.error.expected == "SomethingElse"


async def test_expected_failure_that_succeeds_fails(tmp_path: Path):
    steps = SETUP + """
  - name: fine
    type: call
    node: node-1
    context_id: ${results.ctx.context_id}
    method: len
    expected_failure: true
"""
    result = await run_workflow(tmp_path, 1, steps)
    fine = next(s for s in result.steps if s.name == "fine")
    assert fine.status is Status.FAILED
    assert "expected this step to fail" in fine.error.message
    assert "remove `expected_failure`" in fine.error.hint


async def test_call_expected_value_mismatch_reports_both(tmp_path: Path):
    steps = SETUP + """
  - name: len
    type: call
    node: node-1
    context_id: ${results.ctx.context_id}
    method: len
    expected: 5
"""
    result = await run_workflow(tmp_path, 1, steps)
    step = next(s for s in result.steps if s.name == "len")
    assert step.status is Status.FAILED
    assert step.error.expected == 5 and step.error.actual == 0


async def test_wait_for_sync_times_out_with_per_node_hashes(tmp_path: Path):
    # node-2 never joins the context, so it can never agree.
    steps = SETUP + """
  - name: sync
    type: wait_for_sync
    context_id: ${results.ctx.context_id}
    timeout: 0.5
"""
    result = await run_workflow(tmp_path, 2, steps)
    sync = next(s for s in result.steps if s.name == "sync")
    assert sync.status is Status.FAILED
    assert sync.error.kind == "sync_timeout"
    assert "node-1=" in sync.error.message and "node-2=not a member (" in sync.error.message
    assert "unreachable" not in sync.error.message
    assert set(sync.error.actual) == {"node-1", "node-2"}
    # on failure, node logs and states are written
    assert "node-1" in result.node_log_files
    states = json.loads(next((tmp_path / "runs").glob("*/node-logs/node-states.json")).read_text())
    assert states["node-1"]["contexts"][0]["id"] == result.workflow_results["ctx"]["context_id"]


async def test_wait_for_sync_names_a_node_outside_the_context_at_once(tmp_path: Path):
    # node-2 joined; node-3 never did. It answers 404, which is not
    # "unreachable", and the step fails once the others agree (after a grace
    # for auto-join), long before its timeout.
    steps = SETUP + JOIN2 + """
  - name: sync
    type: wait_for_sync
    context_id: ${results.ctx.context_id}
    timeout: 60
"""
    started = time.monotonic()
    result = await run_workflow(tmp_path, 3, steps)
    assert time.monotonic() - started < 30
    sync = next(s for s in result.steps if s.name == "sync")
    assert sync.status is Status.FAILED
    assert sync.error.kind == "not_member"
    ctx = result.workflow_results["ctx"]["context_id"]
    assert sync.error.message.startswith(f"node-3 is not a member of context {ctx}: ")
    assert "node-1, node-2 agree on" in sync.error.message
    assert "unreachable" not in sync.error.message
    assert "`nodes:`" in sync.error.hint and "join_context" in sync.error.hint
    assert sync.error.actual["node-3"] == "not a member"


async def test_wait_for_sync_on_a_context_no_node_has(tmp_path: Path):
    steps = """
  - name: sync
    type: wait_for_sync
    context_id: "%s"
    timeout: 60
""" % ("ab" * 32)
    result = await run_workflow(tmp_path, 2, steps)
    sync = next(s for s in result.steps if s.name == "sync")
    assert sync.status is Status.FAILED
    assert sync.error.kind == "not_member"
    assert sync.error.message.startswith(f"context {'ab' * 32} is on none of the nodes node-1, node-2")
    assert "check `context_id`" in sync.error.hint


async def test_wait_for_sync_waits_for_a_namespace_member_to_join_the_context(tmp_path: Path):
    # node-2 joins the namespace only; it joins the context by itself.
    steps = SETUP + JOIN2.split("  - name: ctx2")[0] + """
  - name: sync
    type: wait_for_sync
    context_id: ${results.ctx.context_id}
    timeout: 60
"""
    result = await run_workflow(tmp_path, 2, steps)
    assert result.passed, failures(result)


async def test_wait_for_sync_on_a_group_and_a_context(tmp_path: Path):
    # merobox's group_id: the namespace's groupStateHash, alone or with the context.
    steps = SETUP + JOIN2 + """
  - name: group
    type: wait_for_sync
    group_id: ${results.ns.namespace_id}
    nodes: [node-1, node-2]
    timeout: 30
  - name: both
    type: wait_for_sync
    context_id: ${results.ctx.context_id}
    group_id: ${results.ns.namespace_id}
    timeout: 30
    outputs:
      agreed: targets
      per_node: per_target_node_hashes
      root: root_hash
  - type: json_assert
    statements:
      - 'json_equal({{agreed}}, {"context=${results.ctx.context_id}": "${results.both.context_state_hash}", "group=${results.ns.namespace_id}": "${results.both.group_state_hash}"})'
      - 'json_subset({{per_node}}, {"group=${results.ns.namespace_id}": ${results.both.group_hashes}})'
  - type: assert
    statements: ['equal({{root}}, ${results.both.context_state_hash})']
"""
    result = await run_workflow(tmp_path, 2, steps)
    assert result.passed, failures(result)
    results = result.workflow_results
    group = results["group"]
    assert set(group["group_hashes"]) == {"node-1", "node-2"}
    assert set(group["group_hashes"].values()) == {group["group_state_hash"]}
    assert "context_state_hash" not in group
    both = results["both"]
    assert both["group_state_hash"] == group["group_state_hash"]
    assert set(both["hashes"].values()) == {both["context_state_hash"]}


async def test_wait_for_sync_on_a_group_a_node_is_not_in(tmp_path: Path):
    steps = SETUP + """
  - name: group
    type: wait_for_sync
    group_id: ${results.ns.namespace_id}
    timeout: 60
"""
    result = await run_workflow(tmp_path, 2, steps)
    sync = next(s for s in result.steps if s.name == "group")
    assert sync.status is Status.FAILED and sync.error.kind == "not_member"
    ns = result.workflow_results["ns"]["namespace_id"]
    assert sync.error.message.startswith(f"node-2 is not a member of group {ns}: ")
    assert "`join`" in sync.error.hint


@pytest.mark.parametrize(
    "key, value, answer",
    [
        ("group_id", "abcd", "invalid group id"),
        ("group_id", "5", "invalid group id"),
        ("context_id", b58encode(b"\x01" * 32), "base58"),
    ],
)
async def test_wait_for_sync_fails_at_once_on_an_id_the_node_refuses(
    tmp_path: Path, key: str, value: str, answer: str
):
    # The id comes from a placeholder (one written out is refused at load):
    # the node answers 400, which polling cannot change.
    steps = f"""
  - {{name: id, type: assert, actual: "{value}", is_set: true}}
  - name: sync
    type: wait_for_sync
    {key}: "${{results.id.actual}}"
    timeout: 30
"""
    started = time.monotonic()
    result = await run_workflow(tmp_path, 2, steps)
    assert time.monotonic() - started < 10
    sync = next(s for s in result.steps if s.name == "sync")
    assert sync.status is Status.FAILED and sync.error.kind == "refused"
    kind = key.removesuffix("_id")
    assert sync.error.message.startswith(f"node-1 refuses {kind} {value}: GET /admin-api/")
    assert "failed with HTTP 400" in sync.error.message and answer in sync.error.message
    assert "unreachable" not in sync.error.message
    assert "join" not in sync.error.hint and f"check `{key}`" in sync.error.hint
    assert (sync.error.location.line, sync.error.location.col) == (8, 7 + len(key))


async def test_wait_for_sync_needs_a_context_or_a_group(tmp_path: Path):
    with pytest.raises(WorkflowValidationError, match="`context_id`.*`group_id`"):
        await run_workflow(tmp_path, 1, "  - {type: wait_for_sync, timeout: 1}\n")
    with pytest.raises(WorkflowValidationError, match="give `context_id` too"):
        await run_workflow(
            tmp_path, 1, "  - {type: wait_for_sync, group_id: x, expect: {method: len}}\n"
        )


async def test_two_nodes_converge_after_writes_on_both(tmp_path: Path):
    steps = SETUP + JOIN2 + """
  - name: w1
    type: call
    node: node-1
    context_id: ${results.ctx.context_id}
    method: set
    args: {key: a, value: "1"}
  - name: w2
    type: call
    node: node-2
    context_id: ${results.ctx.context_id}
    method: set
    args: {key: b, value: "2"}
  - name: sync
    type: wait_for_sync
    context_id: ${results.ctx.context_id}
    expect: {method: len, equals: 2}
  - name: e1
    type: call
    node: node-1
    context_id: ${results.ctx.context_id}
    method: entries
  - name: e2
    type: call
    node: node-2
    context_id: ${results.ctx.context_id}
    method: entries
  - type: json_assert
    statements:
      - json_equal(${results.e1.output}, ${results.e2.output})
      - 'json_equal(${results.e1.output}, {"a": "1", "b": "2"})'
"""
    result = await run_workflow(tmp_path, 2, steps)
    assert result.passed, failures(result)


async def test_create_identity_and_node_placeholders(tmp_path: Path):
    steps = """
  - name: id
    type: create_identity
    node: node-1
  - type: assert
    statements:
      - is_set(${results.id.public_key})
      - contains(${nodes.node-1.url}, "http://127.0.0.1:")
      - equal(${nodes.node-1.name}, node-1)
"""
    result = await run_workflow(tmp_path, 1, steps)
    assert result.passed, failures(result)


async def test_join_with_a_tampered_invitation_fails(tmp_path: Path):
    steps = SETUP + """
  - name: inv
    type: invite
    node: node-1
    namespace_id: ${results.ns.namespace_id}
  - name: join
    type: join
    node: node-2
    namespace_id: ${results.ns.namespace_id}
    invitation:
      invitation:
        inviter_identity: ${results.inv.invitation.invitation.inviter_identity}
        group_id: ${results.inv.invitation.invitation.group_id}
        expiration_timestamp: ${results.inv.invitation.invitation.expiration_timestamp}
        secret_salt: ${results.inv.invitation.invitation.secret_salt}
        invited_role: 0
      inviter_signature: ${results.inv.invitation.inviter_signature}
"""
    result = await run_workflow(tmp_path, 2, steps)
    join = next(s for s in result.steps if s.name == "join")
    assert join.status is Status.FAILED, result.workflow_results.get("inv")
    assert "HTTP 4" in join.error.message


async def test_missing_placeholder_fails_the_step_and_names_what_exists(tmp_path: Path):
    # `later` ran before `bad` needs it, but failed, so it has no results.
    # (A step that only runs later is refused when the file loads.)
    steps = SETUP + """
  - {name: later, type: assert, actual: 1, equals: 2, non_blocking: true}
  - name: bad
    type: call
    node: node-1
    context_id: ${results.later.context_id}
    method: len
"""
    result = await run_workflow(tmp_path, 1, steps)
    bad = next(s for s in result.steps if s.name == "bad")
    assert bad.status is Status.FAILED
    assert "no results for step 'later'" in bad.error.message
    assert "install, ns, ctx" in bad.error.hint


async def test_unknown_context_and_uninstalled_app(tmp_path: Path):
    steps = SETUP + """
  - name: nope
    type: call
    node: node-1
    context_id: "%s"
    method: len
    retries: 0
""" % ("12" * 32)
    result = await run_workflow(tmp_path, 1, steps)
    nope = next(s for s in result.steps if s.name == "nope")
    assert nope.status is Status.FAILED
    assert nope.error.kind == "ContextNotFound"


async def test_a_base58_id_is_refused_with_a_hint(tmp_path: Path):
    """Ids are 64 hex digits, as in merod since 0.11.0-rc.27: one written out is
    checked when the file loads; one that arrives at run time, by the node."""
    base58 = "11111111111111111111111111111112"
    with pytest.raises(WorkflowValidationError) as info:
        await run_workflow(
            tmp_path, 1, f"  - {{type: call, node: node-1, context_id: {base58}, method: len}}\n"
        )
    (problem,) = info.value.problems
    assert problem.message == (
        f"step 'call #1' (call): context_id: '{base58}' is not an id: expected 64 hex "
        "digits (32 bytes), got 32 characters"
    )
    assert "base58" in problem.hint and "${results.ctx.context_id}" in problem.hint
    steps = SETUP + f"""
  - {{name: b, type: assert, actual: "{base58}", is_set: true}}
  - name: base58
    type: call
    node: node-1
    context_id: ${{results.b.actual}}
    method: len
    retries: 0
"""
    result = await run_workflow(tmp_path, 1, steps)
    step = next(s for s in result.steps if s.name == "base58")
    assert step.status is Status.FAILED
    assert step.error.kind == "ParseError" and "base58" in step.error.message


@pytest.mark.parametrize(
    "step, key, message, hint",
    [
        ("{type: create_namespace, node: node-1, application_id: abcd}", "application_id",
         "'abcd' is not an id: expected 64 hex digits (32 bytes), got 4 characters",
         "${results.install.application_id}"),
        ("{type: wait_for_sync, group_id: 5}", "group_id",
         "'5' is not an id: expected 64 hex digits (32 bytes), got 1 characters",
         "${results.ns.namespace_id}"),
        ("{type: invite, node: node-1, namespace_id: 0102030405}", "namespace_id",
         "YAML reads the unquoted 0102030405 as the number 17314053, not as text",
         "quote it: '0102030405'"),
        ("{type: delete_context, node: node-1, context_id: '0102030405'}", "context_id",
         "'0102030405' is not an id", "${results.ctx.context_id}"),
        ("{type: delete_context, node: node-1, context_id: %s, requester: x1}" % ("ab" * 32),
         "requester", "'x1' is not an id", "${results.ctx.member_public_key}"),
        ("{type: download_blob, node: node-1, blob_id: %s}" % ("0" * 65), "blob_id",
         "YAML reads the unquoted %s as the number 0" % ("0" * 65), "quote it"),
        (f"{{type: call, node: node-1, context_id: {'ab' * 32}, method: m, "
         f"executor_public_key: {b58encode(bytes([7] * 32))}}}", "executor_public_key",
         f"'{b58encode(bytes([7] * 32))}' is not an id", "base58"),
    ],
)
def test_ids_written_out_are_checked_when_the_file_loads(step: str, key: str, message: str, hint: str):
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(
            f"name: ids\nnodes: {{count: 1, prefix: node}}\nsteps:\n  - {step}\n",
            file=Path("wf.yml"), environ={},
        )
    (problem,) = info.value.problems
    assert f"{key}: {message}" in problem.message
    assert hint in problem.hint
    assert problem.location.line == 4 and problem.location.col == step.index(f"{key}:") + len(key) + 7


def test_ids_in_uppercase_and_placeholders_load():
    upper = "AB" * 32
    workflow = parse_workflow(
        "name: ids\nnodes: {count: 1, prefix: node}\nsteps:\n"
        f"  - {{type: get_application, node: node-1, application_id: {upper}}}\n"
        "  - {type: wait_for_sync, group_id: '{{ns}}'}\n"
        # 64 decimal digits YAML reads as a number give the same text back
        f"  - {{type: download_blob, node: node-1, blob_id: {'1' * 64}}}\n",
        file=Path("wf.yml"), environ={},
    )
    assert workflow.steps[0].static_config.application_id == upper.lower()
    assert workflow.steps[2].static_config.blob_id == "1" * 64


async def test_ids_are_sent_and_echoed_in_lowercase(tmp_path: Path):
    # Ids from a script in uppercase: every step sends them, and its results
    # show them, in lowercase.
    (tmp_path / "blob.txt").write_text("blob")
    steps = SETUP + """
  - {name: up, type: upload_blob, node: node-1, file_path: blob.txt}
  - name: upper
    type: script
    json_output: true
    run: |
      python3 -c 'import json, os; r = json.load(open(os.environ["CW_RESULTS_FILE"])); print(json.dumps({k: v.upper() for k, v in dict(app=r["install"]["application_id"], ns=r["ns"]["namespace_id"], ctx=r["ctx"]["context_id"], blob=r["up"]["blob_id"]).items()}))'
  - {name: cc, type: create_context, node: node-1, application_id: "${results.upper.output.app}", namespace_id: "${results.upper.output.ns}"}
  - {name: db, type: download_blob, node: node-1, blob_id: "${results.upper.output.blob}"}
  - {name: sync, type: wait_for_sync, context_id: "${results.upper.output.ctx}", group_id: "${results.upper.output.ns}"}
  - {name: dc, type: delete_context, node: node-1, context_id: "${results.upper.output.ctx}"}
"""
    result = await run_workflow(tmp_path, 1, steps)
    assert result.passed, failures(result)
    r = result.workflow_results
    assert r["upper"]["output"]["app"] == r["install"]["application_id"].upper()
    assert r["cc"]["application_id"] == r["install"]["application_id"]
    assert r["cc"]["namespace_id"] == r["ns"]["namespace_id"]
    assert r["db"]["blob_id"] == r["up"]["blob_id"]
    assert r["dc"]["context_id"] == r["ctx"]["context_id"]
    assert set(r["sync"]["hashes"]) == {"node-1"}
    log = Path(result.node_log_files["node-1"]).read_text()
    assert r["upper"]["output"]["ctx"] not in log  # what reached the node was lowercase


# -- install_application: the sources current merod takes, and those it does not ----


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def key_line(steps: str, key: str) -> int:
    """The line of ``key:`` in the file run_workflow writes (three lines precede)."""
    index = next(i for i, t in enumerate(steps.splitlines()) if t.strip().startswith(f"{key}:"))
    return index + 4


@pytest.fixture
def app_server(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server with kv_store.wasm at ``/apps/kv_store.wasm``."""
    root = tmp_path / "www"
    (root / "apps").mkdir(parents=True)
    (root / "apps" / "kv_store.wasm").write_bytes(APP.read_bytes())
    handler = functools.partial(_QuietFiles, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_url_install_on_a_local_node_downloads_and_checks_the_hash(
    tmp_path: Path, app_server: str
):
    digest = hashlib.sha256(APP.read_bytes()).digest()
    url = f"{app_server}/apps/kv_store.wasm"
    steps = f"""
  - {{name: by-path, type: install_application, node: node-1, path: {APP}}}
  - {{name: hex, type: install_application, node: node-1, url: "{url}", hash: "{digest.hex()}"}}
  - {{name: base58, type: install_application, node: node-1, url: "{url}", hash: "{b58encode(digest)}"}}
  - {{name: unchecked, type: install_application, node: node-1, url: "{url}"}}
  - name: ns
    type: create_namespace
    node: node-1
    application_id: ${{results.hex.application_id}}
"""
    result = await run_workflow(tmp_path, 1, steps)
    assert result.passed, failures(result)
    data = result.workflow_results
    # The engine fetched the file, kept it in the run's folder under its own
    # name and installed it from there as a dev app, bundled like a path: one
    # package by one signer, so one application for all four.
    assert Path(data["hex"]["path"]).read_bytes() == APP.read_bytes()
    assert Path(data["hex"]["path"]).name == "kv_store.wasm"
    assert Path(data["hex"]["path"]).is_relative_to(tmp_path / "runs")
    ids = {data[n]["application_id"] for n in ("by-path", "hex", "base58", "unchecked")}
    assert ids == {bundle.application_id_for_bundle("com.calimero.kv-store", bundle.DEV_SIGNER_ID).hex()}
    assert data["hex"]["bundle"]["package"] == "com.calimero.kv-store"
    assert data["unchecked"]["url"] == url


@pytest.mark.parametrize(
    ("source", "key", "text"),
    [
        ('url: "{base}/apps/missing.wasm"', "url", "HTTP 404"),
        ('url: "{base}/apps/kv_store.wasm", hash: "{zero}"', "hash", "not the expected"),
        ('url: "{base}/apps/kv_store.wasm", hash: "nope"', "hash", "is not a SHA-256"),
    ],
)
async def test_url_install_failures_point_at_the_key(
    tmp_path: Path, app_server: str, source: str, key: str, text: str
):
    source = source.format(base=app_server, zero="00" * 32)
    steps = f"""
  - name: install
    type: install_application
    node: node-1
    {source.replace(", ", chr(10) + "    ")}
"""
    result = await run_workflow(tmp_path, 1, steps)
    (step,) = result.steps
    assert step.status is Status.FAILED
    assert text in step.error.message
    assert step.error.location.line == key_line(steps, key)


async def test_dev_install_fields_current_merod_cannot_take_fail_the_step(tmp_path: Path):
    steps = f"""
  - name: install
    type: install_application
    node: node-1
    path: {APP}
    metadata: {{"description": "kv"}}
"""
    result = await run_workflow(tmp_path, 1, steps)
    (step,) = result.steps
    assert step.status is Status.FAILED
    # A bundle records its manifest's metadata, and the node takes no other.
    assert "`metadata` cannot be given" in step.error.message
    assert step.error.location.line == key_line(steps, "metadata")
    assert "remove `metadata`" in step.error.hint


async def test_a_raw_wasm_is_bundled_for_the_embedded_node(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO, logger="calimero_workflow.node.api")
    steps = f"""
  - name: default
    type: install_application
    node: node-1
    path: {APP}
  - name: named
    type: install_application
    node: node-1
    path: {APP}
    package: com.example.kv
    version: 2.1.0
  - name: app
    type: get_application
    node: node-1
    application_id: ${{results.named.application_id}}
"""
    result = await run_workflow(tmp_path, 1, steps)
    assert result.passed, failures(result)
    data = result.workflow_results
    default, named = data["default"], data["named"]
    assert default["application_id"] == bundle.application_id_for_bundle(
        "com.calimero.kv-store", bundle.DEV_SIGNER_ID
    ).hex()
    assert named["bundle"] == {
        "package": "com.example.kv",
        "version": "2.1.0",
        "signer_id": bundle.DEV_SIGNER_ID,
        "path": named["bundle"]["path"],
    }
    assert Path(named["bundle"]["path"]).is_relative_to(tmp_path / "runs")
    assert named["application_id"] == bundle.application_id_for_bundle(
        "com.example.kv", bundle.DEV_SIGNER_ID
    ).hex()
    assert data["app"]["application"]["version"] == "2.1.0"
    assert data["app"]["application"]["signer_id"] == bundle.DEV_SIGNER_ID
    # The engine knows its embedded nodes take bundles only: no refused request first.
    installs = [
        r for r in caplog.records
        if r.name == "calimero_workflow.node.api" and "install-dev-application" in r.getMessage()
    ]
    assert len(installs) == 2 and all(" 200 " in r.getMessage() for r in installs)
    record = next(s for s in result.steps if s.name == "named")
    assert any(bundle.DEV_SIGNER_ID in line for line in record.logs)


def _write_bundle(path: Path, **options) -> Path:
    built = bundle.build_bundle(APP.read_bytes(), **options)
    path.write_bytes(built.data)
    return path


async def test_a_user_built_bundle_installs_runs_and_syncs_to_three_nodes(tmp_path: Path):
    """A .mpk built elsewhere (here with our builder, signed by its own key)
    installs as is; the joiners fetch it from a peer and verify it themselves."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    mpk = _write_bundle(
        tmp_path / "kv-store-1.0.0.mpk", package="com.example.kv", version="1.0.0", key=key
    )
    steps = f"""
  - name: install
    type: install_application
    node: node-1
    path: {mpk}
  - name: ns
    type: create_namespace
    node: node-1
    application_id: ${{results.install.application_id}}
  - name: ctx
    type: create_context
    node: node-1
    application_id: ${{results.install.application_id}}
    namespace_id: ${{results.ns.namespace_id}}
  - {{name: inv2, type: invite, node: node-1, namespace_id: "${{results.ns.namespace_id}}"}}
  - name: join2
    type: join
    node: node-2
    namespace_id: ${{results.ns.namespace_id}}
    invitation: ${{results.inv2.invitation}}
  - {{name: inv3, type: invite, node: node-1, namespace_id: "${{results.ns.namespace_id}}"}}
  - name: join3
    type: join
    node: node-3
    namespace_id: ${{results.ns.namespace_id}}
    invitation: ${{results.inv3.invitation}}
  - name: set
    type: call
    node: node-1
    context_id: ${{results.ctx.context_id}}
    method: set
    args: {{key: k, value: v}}
  - name: synced
    type: wait_for_sync
    context_id: ${{results.ctx.context_id}}
    expect: {{method: get, args: {{key: k}}, equals: v}}
  - name: app3
    type: get_application
    node: node-3
    application_id: ${{results.install.application_id}}
"""
    result = await run_workflow(tmp_path, 3, steps)
    assert result.passed, failures(result)
    data = result.workflow_results
    signer = bundle.signer_id_for_public_key(key.public_key().public_bytes_raw())
    assert signer != bundle.DEV_SIGNER_ID
    assert data["install"]["application_id"] == bundle.application_id_for_bundle(
        "com.example.kv", signer
    ).hex()
    assert "bundle" not in data["install"]  # installed as given
    assert set(data["synced"]["hashes"]) == {"node-1", "node-2", "node-3"}
    app3 = data["app3"]["application"]
    assert app3["signer_id"] == signer and app3["size"] == mpk.stat().st_size


async def test_a_tampered_bundle_is_refused_with_merods_text(tmp_path: Path):
    built = bundle.build_bundle(APP.read_bytes(), package="com.example.kv", version="1.0.0")
    manifest = {**built.manifest, "package": "com.example.other"}
    mpk = tmp_path / "tampered.mpk"
    mpk.write_bytes(
        bundle._tar_gz([("manifest.json", json.dumps(manifest).encode()), ("app.wasm", APP.read_bytes())])
    )
    steps = f"""
  - name: install
    type: install_application
    node: node-1
    path: {mpk}
    retries: 0
"""
    result = await run_workflow(tmp_path, 1, steps)
    (step,) = result.steps
    assert step.status is Status.FAILED and step.error.kind == "HTTP 500"
    assert step.error.message.endswith(
        "install-dev-application failed with HTTP 500: Ed25519 signature verification failed"
    )


def _tar_gz_with_manifest_after(filler: int) -> bytes:
    """A gzipped tar whose manifest.json comes after ``filler`` bytes of another entry."""
    import gzip
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, body in (("filler.bin", bytes(filler)), ("manifest.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return gzip.compress(raw.getvalue())


@pytest.mark.parametrize(
    "name, content",
    [
        ("garbage.mpk", bytes(range(256)) * 20),
        ("zlib.mpk", __import__("zlib").compress(b"not a tar at all" * 100)),
        ("late-manifest.mpk", _tar_gz_with_manifest_after(9 << 20)),
        # a wasm module named as a bundle goes as one too: never bundled behind its back
        ("module.mpk", APP.read_bytes()),
        ("garbage.wasm", b"MZ\x90\x00 not wasm"),
    ],
)
async def test_a_file_that_is_not_wasm_is_sent_as_a_bundle_and_refused_as_merod_does(
    tmp_path: Path, name: str, content: bytes
):
    path = tmp_path / name
    path.write_bytes(content)
    steps = f"""
  - name: install
    type: install_application
    node: node-1
    path: {path}
    retries: 0
"""
    result = await run_workflow(tmp_path, 1, steps)
    (step,) = result.steps
    assert step.status is Status.FAILED and step.error.kind == "HTTP 500"
    assert step.error.message.endswith(
        f"install-dev-application failed with HTTP 500: not a signed application bundle: {path}"
    )
    assert "cannot bundle" not in step.error.message and not step.error.hint
    assert list((tmp_path / "runs").glob("*/bundles/*")) == []


def test_a_huge_module_is_refused_by_its_size_before_it_is_read(tmp_path: Path):
    import os
    import subprocess
    import sys

    big = tmp_path / "big.wasm"
    with big.open("wb") as fh:  # sparse: 700 MiB on paper, nothing on disk
        fh.write(b"\0asm\x01\0\0\0")
        fh.truncate(700 << 20)
    wf = tmp_path / "wf.yml"
    wf.write_text(
        "name: big\nnodes: {count: 1, prefix: n}\nsteps:\n"
        "  - {type: install_application, node: n-1, path: big.wasm, retries: 0}\n"
    )
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "calimero_workflow.cli", "run", str(wf), "--workdir",
         str(tmp_path / "w"), "--color", "never"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert time.monotonic() - started < 10
    assert (
        "big.wasm is 734003200 bytes (700 MiB), over merod's module size limit "
        "(max_module_size) of 128 MiB (134217728 bytes)" in out
    )
    assert list((tmp_path / "w").glob("*/bundles/*")) == []


def test_the_bundle_cache_key_is_streamed_and_unchanged(tmp_path: Path):
    wasm = tmp_path / "kv_store.wasm"
    wasm.write_bytes(APP.read_bytes())
    out = bundle.dev_bundle_for(wasm, tmp_path / "cache", package="com.x.y", version="1.2.3")
    # the digest of everything that goes into the bundle, as before
    key = hashlib.sha256(
        b"\0".join([APP.read_bytes(), b"com.x.y", b"1.2.3", bundle.SCHEME_V1.encode()])
    ).hexdigest()[:16]
    assert out.name == f"com.x.y-1.2.3-{key}.mpk"
    big = tmp_path / "big.wasm"
    with big.open("wb") as fh:
        fh.write(b"\0asm\x01\0\0\0")
        fh.truncate((128 << 20) + 1)
    with pytest.raises(ValueError, match=r"over merod's module size limit \(max_module_size\) of 128 MiB"):
        bundle.dev_bundle_for(big, tmp_path / "cache")


@pytest.mark.parametrize("package", ["../x", "a/b"])
def test_a_package_no_bundle_can_have_is_refused_when_the_file_loads(package: str):
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(
            f"name: p\nnodes: {{count: 1, prefix: node}}\nsteps:\n"
            f"  - {{type: install_application, node: node-1, path: {APP}, package: '{package}', version: 1.0.0}}\n",
            file=Path("wf.yml"), environ={},
        )
    (problem,) = info.value.problems
    assert problem.message == (
        f"package: invalid package id "
        f"`{package}`: may contain only ASCII letters, digits, `.`, `-`, and `_`"
    )
    assert problem.location.line == 4


async def test_registry_install_sends_the_coordinates(tmp_path: Path):
    steps = """
  - name: install
    type: install_application
    node: node-1
    package: com.example.kv
    version: 1.0.0
    retries: 0
"""
    result = await run_workflow(tmp_path, 1, steps)
    (step,) = result.steps
    # An embedded node has no registry: merod's 502 for unpublished coordinates.
    assert step.status is Status.FAILED and step.error.kind == "HTTP 502"
    assert "com.example.kv@1.0.0" in step.error.message


async def test_an_install_needs_a_source(tmp_path: Path):
    with pytest.raises(WorkflowValidationError, match="or `package` with `version`"):
        await run_workflow(tmp_path, 1, "  - {type: install_application, node: node-1, package: p}\n")



async def test_an_unexpected_error_in_a_phase_fails_the_phase_and_still_cleans_up(
    tmp_path: Path,
):
    from calimero_workflow.backends.embedded import EmbeddedBackend

    class Broken(EmbeddedBackend):
        async def start_nodes(self, specs, *, ready_timeout):
            await super().start_nodes(specs, ready_timeout=ready_timeout)
            raise ValueError("Invalid file descriptor: -1")

    wf = parse_workflow(
        "name: t\nnodes: {count: 2}\nsteps: [{type: wait, seconds: 0.01}]\n",
        file=tmp_path / "wf.yml",
        environ={},
    )
    made: list[Broken] = []

    def factory(kind, **kwargs):
        made.append(Broken(run_id=kwargs["run_id"], workflow_name="t", workdir=kwargs["workdir"]))
        return made[0]

    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path, backend_factory=factory).run()
    assert result.status is Status.FAILED and not result.interrupted
    phases = {p.name: p for p in result.phases}
    assert phases["nodes_start"].error.kind == "internal"
    assert "ValueError: Invalid file descriptor: -1" in phases["nodes_start"].error.message
    assert phases["cleanup"].status is Status.PASSED
    assert not made[0]._nodes or not any(n.running for n in made[0]._nodes.values())
    assert result.counts()["failed"] == 1
