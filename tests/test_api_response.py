"""assert_api_response: merobox's raw admin-API assertion, on embedded nodes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from calimero_workflow.client import NodeClient, api_path_problem
from calimero_workflow.errors import WorkflowValidationError
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.results import Status
from calimero_workflow.steps.api_response import MISSING, lookup, select
from calimero_workflow.workflow import parse_workflow

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "kv-store" / "kv_store.wasm"

SETUP = f"""
name: t
nodes: {{count: 2, prefix: n}}
steps:
  - {{name: inst, type: install_application, node: n-1, path: {APP}}}
  - {{name: ns, type: create_namespace, node: n-1, application_id: "${{results.inst.application_id}}", namespace_name: shared-room}}
  - {{name: ctx, type: create_context, node: n-1, application_id: "${{results.inst.application_id}}", namespace_id: "${{results.ns.namespace_id}}"}}
"""


async def run_text(text: str, tmp_path: Path):
    wf = parse_workflow(textwrap.dedent(text), file=tmp_path / "wf.yml", environ={})
    return await WorkflowExecutor(wf, env={}, workdir=tmp_path / "runs").run()


def failures(result) -> list[str]:
    return [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error] + [
        f"phase {p.name}: {p.error.message}" for p in result.phases if p.error
    ]


def step(result, name: str):
    return next(s for s in result.all_steps() if s.name == name)


async def test_the_namespace_listing_names_the_namespace(tmp_path: Path):
    # merobox's use: GET /admin-api/namespaces answers the name given at creation.
    result = await run_text(
        SETUP
        + """
  - name: listed
    type: assert_api_response
    node: n-1
    path: /admin-api/namespaces
    where: {namespaceId: "${results.ns.namespace_id}"}
    match: {name: shared-room, contextCount: 1}
    not_match: {memberCount: 0}
    present: [appKey, targetApplicationId]
    absent: [noSuchKey]
  - name: members
    type: assert_api_response
    node: n-1
    path: "admin-api/contexts/${results.ctx.context_id}/identities"
    contains: {data.identities: ["${results.ctx.member_public_key}"]}
    not_contains: {data.identities: ["0000"]}
  - name: gone
    type: assert_api_response
    node: n-1
    path: /admin-api/namespaces
    where: {name: no-such-room}
    expect_no_match: true
""",
        tmp_path,
    )
    assert result.passed, failures(result)
    listed = result.workflow_results["listed"]
    assert listed["element"]["name"] == "shared-room" and listed["reads"] == 1
    assert listed["body"]["data"][0] == listed["element"]  # the body as sent
    assert result.workflow_results["gone"]["element"] is None


async def test_a_miss_fails_at_its_key_even_with_expected_failure(tmp_path: Path):
    result = await run_text(
        SETUP
        + """
  - name: wrong
    type: assert_api_response
    node: n-1
    path: /admin-api/namespaces
    where: {namespaceId: "${results.ns.namespace_id}"}
    match: {name: other-room}
    absent: [appKey]
    retries: 3
    interval: 0.05
    expected_failure: true
""",
        tmp_path,
    )
    wrong = step(result, "wrong")
    assert wrong.status is Status.FAILED
    assert wrong.error.kind == "response_assertion"
    assert "missed 2 of 2 assertion(s)" in wrong.error.message
    assert "name: expected \"other-room\", got \"shared-room\"" in wrong.error.message
    assert "appKey: expected the key to be absent" in wrong.error.message
    assert wrong.error.location.line == 14  # at `match`
    assert "shared-room" in str(wrong.error.actual)
    assert sum("reading again" in line for line in wrong.logs) == 2  # three reads


async def test_a_where_that_matches_nothing_fails(tmp_path: Path):
    result = await run_text(
        SETUP
        + """
  - name: missing
    type: assert_api_response
    node: n-1
    path: /admin-api/namespaces
    where: {name: no-such-room}
    present: [namespaceId]
""",
        tmp_path,
    )
    missing = step(result, "missing")
    assert missing.status is Status.FAILED
    assert 'no element matches where {"name": "no-such-room"}' in missing.error.message


async def test_expected_failure_covers_the_request_only(tmp_path: Path):
    (tmp_path / "blob.bin").write_bytes(b"\x00 not json")
    result = await run_text(
        SETUP
        + """
  - name: no_route
    type: assert_api_response
    node: n-1
    path: /admin-api/no-such-route
    present: [data]
    expected_failure: true
    expected_error: HTTP 404
  - {name: up, type: upload_blob, node: n-1, file_path: blob.bin}
  - name: not_json
    type: assert_api_response
    node: n-1
    path: "/admin-api/blobs/${results.up.blob_id}"
    present: [data]
    expected_failure: true
    expected_error: not JSON
  - name: holds
    type: assert_api_response
    node: n-1
    path: /admin-api/namespaces
    present: [data]
    expected_failure: true
""",
        tmp_path,
    )
    assert step(result, "no_route").status is Status.PASSED
    assert result.workflow_results["no_route"]["error_code"] == 404
    assert step(result, "not_json").status is Status.PASSED
    holds = step(result, "holds")
    assert holds.status is Status.FAILED
    assert holds.error.message == "expected this step to fail, but it succeeded"


async def test_retries_read_again_until_the_assertions_hold(tmp_path: Path):
    result = await run_text(
        SETUP
        + """
  - name: both
    type: parallel
    groups:
      - name: later
        steps:
          - {type: wait, seconds: 0.4}
          - {type: create_context, node: n-1, application_id: "${results.inst.application_id}", namespace_id: "${results.ns.namespace_id}"}
      - name: watch
        steps:
          - name: two
            type: assert_api_response
            node: n-1
            path: /admin-api/namespaces
            where: {namespaceId: "${results.ns.namespace_id}"}
            match: {contextCount: 2}
            retries: 100
            interval: 0.05
""",
        tmp_path,
    )
    assert result.passed, failures(result)
    two = step(result, "two")
    assert two.data["reads"] > 1 and two.data["element"]["contextCount"] == 2


@pytest.mark.parametrize(
    "path, why",
    [
        ("http://127.0.0.1:1/admin-api/health", "it is a URL"),
        ("//127.0.0.1:1/admin-api/health", "names another host"),
        ("/admin-api/../admin-api/health", "leaves the route"),
        ("/admin-api/%2E%2e/x", "leaves the route"),
        ("/admin-api/a%2Fb", "encoded slash"),
        ("/admin-api/health#top", "cannot carry"),
        ("/", "names no route"),
    ],
)
def test_a_path_off_the_node_is_refused_when_the_file_loads(tmp_path: Path, path: str, why: str):
    text = f"name: t\nnodes: {{count: 1, prefix: n}}\nsteps:\n  - type: assert_api_response\n    node: n-1\n    path: '{path}'\n    present: [data]\n"
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    (problem,) = info.value.problems
    assert why in problem.message and "not a route of the node's API" in problem.message
    assert (problem.location.line, problem.location.col) == (6, 11)


async def test_a_path_that_leaves_the_node_once_resolved_fails_the_step(tmp_path: Path):
    result = await run_text(
        """
        name: t
        nodes: {count: 1, prefix: n}
        steps:
          - {name: where, type: assert, actual: "//example.invalid/x", is_set: true}
          - name: away
            type: assert_api_response
            node: n-1
            path: "${results.where.actual}"
            present: [data]
            expected_failure: true
        """,
        tmp_path,
    )
    away = step(result, "away")
    assert away.status is Status.FAILED and away.error.kind == "invalid"
    assert "names another host" in away.error.message


@pytest.mark.parametrize(
    "body, message",
    [
        ("path: /admin-api/health", "asserts nothing, so it could never fail"),
        ("path: /admin-api/health\n    expect_no_match: true", "needs `where`"),
        (
            "path: /admin-api/health\n    where: {a: 1}\n    expect_no_match: true\n    present: [data]",
            "present would have nothing to check",
        ),
        ("path: /admin-api/health\n    present: ['']", "an empty path names nothing"),
        ("path: /admin-api/health\n    present: [data]\n    retries: 0", "greater than 0"),
        ("path: /admin-api/health\n    contains: {data: x}", "valid list"),
    ],
)
def test_steps_that_cannot_assert_are_refused_when_the_file_loads(tmp_path: Path, body: str, message: str):
    text = f"name: t\nnodes: {{count: 1, prefix: n}}\nsteps:\n  - type: assert_api_response\n    node: n-1\n    {body}\n"
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    assert any(message in p.message for p in info.value.problems), info.value


def test_lookup_and_select_read_as_merobox_does():
    body = {"data": [{"id": 1, "tags": ["a"]}, {"id": 2, "inner": {"rows": [{"k": "x"}]}}]}
    assert lookup(body, "data.1.id") == 2
    assert lookup(body, "data.2.id") is MISSING
    assert lookup(body, "data.id") is MISSING  # a name does not index a list
    assert lookup({"a": None}, "a") is None  # null is a value
    assert select(body, {"id": 2})["inner"]["rows"] == [{"k": "x"}]
    assert select(body, {"k": "x"}) == {"k": "x"}  # any list, at any depth
    assert select(body, {"id": 3}) is MISSING
    assert select(body, None) is body


def test_api_path_problem_allows_routes_and_queries():
    assert api_path_problem("/admin-api/health") is None
    assert api_path_problem("admin-api/contexts?offset=0&limit=10") is None
    assert api_path_problem("/admin-api/x?next=../y") is None  # a query is no path


async def test_the_client_reads_only_its_own_node():
    client = NodeClient("http://127.0.0.1:1", name="n")
    try:
        with pytest.raises(ValueError, match="names another host"):
            await client.get_json("//127.0.0.1:2/x")
        with pytest.raises(ValueError, match="it is a URL"):
            await client.get_json("http://127.0.0.1:2/x")
    finally:
        await client.aclose()
