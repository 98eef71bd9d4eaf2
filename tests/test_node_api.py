"""The embedded node's admin API and JSON-RPC, on real servers with the real app.

Shapes follow merod's era-C API (docs: calimero-node-api.md §1-2): ``{"data": …}``
envelopes, ``{"error": msg}`` failures with meaningful statuses, base58 ids and
hex namespace ids.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import wasmtime

from calimero_workflow.node.errors import ApiError
from calimero_workflow.node.ids import b58decode, b58encode, sha256
from calimero_workflow.node.urlguard import check_public_url
from node_fixtures import KV_STORE_WASM, Api, Cluster, cluster, node_runtime, wait_until

__all__ = ["cluster", "node_runtime"]  # fixtures used by name

ZERO_HASH = "1" * 32

# An app whose init panics, to check that a failing init refuses the context.
PANICKING_INIT_WAT = r"""
(module
  (import "env" "panic_utf8" (func $panic (param i64 i64)))
  (memory (export "memory") 1)
  ;; Buffer{ptr=64,len=15} at 0; Location{file Buffer{ptr=96,len=6}, line 7, col 3} at 16
  (data (i32.const 0) "\40\00\00\00\00\00\00\00\0f\00\00\00\00\00\00\00")
  (data (i32.const 16) "\60\00\00\00\00\00\00\00\06\00\00\00\00\00\00\00\07\00\00\00\03\00\00\00")
  (data (i32.const 64) "no init for you")
  (data (i32.const 96) "app.rs")
  (func (export "init") (call $panic (i64.const 0) (i64.const 16)))
  (func (export "noop"))
)
"""


async def one_node(cluster: Cluster) -> tuple[Api, str, str, str]:
    """A node with kv-store installed, a namespace and an initialised context."""
    api = await cluster.start("node-1")
    app_id = await api.install_kv_store()
    ns = await api.create_namespace(app_id)
    ctx = await api.create_context(app_id, ns)
    return api, app_id, ns, ctx


# -- status routes -----------------------------------------------------------------


async def test_status_routes_answer_merod_shapes(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    assert (await api.get("/admin-api/health")).json() == {"data": {"status": "alive"}}
    assert (await api.get("/admin-api/ready")).json() == {"data": {"status": "ready"}}
    assert (await api.get("/admin-api/is-authed")).json() == {
        "data": {"status": "alive"}
    }
    # The one route without a data envelope.
    assert (await api.get("/admin-api/peers")).json() == {"count": 0}


async def test_unknown_route_is_a_json_404_and_wrong_method_a_405(
    cluster: Cluster,
) -> None:
    api = await cluster.start("node-1")
    resp = await api.get("/admin-api/nope")
    assert resp.status_code == 404
    assert "no route for GET /admin-api/nope" in resp.json()["error"]
    resp = await api.post("/admin-api/health", {})
    assert resp.status_code == 405
    assert "GET" in resp.json()["error"]


async def test_peers_counts_connected_nodes(cluster: Cluster) -> None:
    await cluster.start("node-1")
    await cluster.start("node-2")
    node3 = await cluster.start("node-3")
    await cluster.connected()
    assert (await node3.get("/admin-api/peers")).json() == {"count": 2}


# -- applications ------------------------------------------------------------------


async def test_install_dev_application_and_read_it_back(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    body = {"path": str(KV_STORE_WASM), "metadata": [1, 2], "version": "0.1.0"}
    app_id = (await api.data("POST", "/admin-api/install-dev-application", body))[
        "applicationId"
    ]
    assert len(b58decode(app_id)) == 32

    apps = (await api.data("GET", "/admin-api/applications"))["apps"]
    assert [a["id"] for a in apps] == [app_id]
    app = (await api.data("GET", f"/admin-api/applications/{app_id}"))["application"]
    wasm = KV_STORE_WASM.read_bytes()
    assert app["size"] == len(wasm)
    assert app["blob"]["bytecode"] == b58encode(sha256(wasm))
    assert app["source"] == KV_STORE_WASM.resolve().as_uri()
    assert app["metadata"] == [1, 2]
    assert app["version"] == "0.1.0"

    abi = await api.data("GET", f"/admin-api/applications/{app_id}/abi")
    assert isinstance(abi, dict) and abi

    # Installing the same file again gives the same id.
    again = await api.data("POST", "/admin-api/install-dev-application", body)
    assert again["applicationId"] == app_id


async def test_application_lookup_errors(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    unknown = b58encode(bytes([7]) * 32)
    resp = await api.get(f"/admin-api/applications/{unknown}")
    assert resp.json() == {"data": {"application": None}}
    resp = await api.get("/admin-api/applications/not-base58-0OIl")
    assert resp.status_code == 400
    assert "not-base58-0OIl" in resp.json()["error"]
    resp = await api.get(f"/admin-api/applications/{unknown}/abi")
    assert resp.status_code == 404
    resp = await api.delete(f"/admin-api/applications/{unknown}")
    assert resp.status_code == 404


async def test_delete_application(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    app_id = await api.install_kv_store()
    assert await api.data("DELETE", f"/admin-api/applications/{app_id}") == {
        "applicationId": app_id
    }
    assert (await api.data("GET", "/admin-api/applications"))["apps"] == []


async def test_install_dev_application_refuses_a_missing_path(
    cluster: Cluster, tmp_path: Path
) -> None:
    api = await cluster.start("node-1")
    missing = tmp_path / "nowhere" / "app.wasm"
    resp = await api.post(
        "/admin-api/install-dev-application", {"path": str(missing), "metadata": []}
    )
    # merod's install handlers answer any install failure with a plain-text 500.
    assert resp.status_code == 500
    assert resp.headers["content-type"].startswith("text/plain")
    assert str(missing) in resp.text and "does not exist" in resp.text


async def test_install_dev_application_validates_the_body(
    cluster: Cluster, tmp_path: Path
) -> None:
    api = await cluster.start("node-1")
    resp = await api.post(
        "/admin-api/install-dev-application", {"path": str(KV_STORE_WASM)}
    )
    assert resp.status_code == 400
    assert "'metadata' is required" in resp.json()["error"]
    resp = await api.post(
        "/admin-api/install-dev-application", content=b"{not json", headers={}
    )
    assert resp.status_code == 400
    assert "not valid JSON" in resp.json()["error"]

    bogus = tmp_path / "bogus.wasm"
    bogus.write_bytes(b"definitely not wasm")
    resp = await api.post(
        "/admin-api/install-dev-application", {"path": str(bogus), "metadata": []}
    )
    assert resp.status_code == 500
    assert resp.text.startswith("cannot install file://") and "not a wasm module" in resp.text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:1/app.wasm",
        "http://localhost:1/app.wasm",
        "http://app.localhost/app.wasm",
        "http://[::1]:1/app.wasm",
        "http://0.0.0.0:1/app.wasm",
    ],
)
async def test_install_application_refuses_local_urls(
    cluster: Cluster, url: str
) -> None:
    api = await cluster.start("node-1", allow_private_urls=False)
    resp = await api.post(
        "/admin-api/install-application", {"url": url, "metadata": []}
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert "refusing to fetch" in error and "CALIMERO_NODE_ALLOW_PRIVATE_URLS" in error


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/a.wasm",
        "http://192.168.0.10/a.wasm",
        "http://172.16.5.5/a.wasm",
        "http://100.64.0.1/a.wasm",
        "http://169.254.1.1/a.wasm",
        "http://[fd00::1]/a.wasm",
        "http://[::ffff:10.0.0.1]/a.wasm",
    ],
)
async def test_ssrf_guard_refuses_private_ranges(url: str) -> None:
    # The guard only inspects the URL: nothing is ever sent to these hosts.
    with pytest.raises(ApiError) as info:
        await check_public_url(url, allow_private=False)
    assert info.value.status == 400
    await check_public_url(url, allow_private=True)


async def test_ssrf_guard_refuses_other_schemes() -> None:
    with pytest.raises(ApiError, match="http:// or https://"):
        await check_public_url("file:///etc/passwd", allow_private=True)


async def test_install_application_fetches_when_private_urls_are_allowed(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALIMERO_NODE_ALLOW_PRIVATE_URLS", "1")
    api = await cluster.start("node-1")
    # Serve the wasm from the node's own blob store: a real HTTP fetch on loopback.
    wasm = KV_STORE_WASM.read_bytes()
    put = await api.client.put(api.url + "/admin-api/blobs", content=wasm)
    blob_id = put.json()["data"]["blobId"]
    url = f"{api.url}/admin-api/blobs/{blob_id}"

    body = {"url": url, "metadata": [], "hash": blob_id}
    app_id = (await api.data("POST", "/admin-api/install-application", body))[
        "applicationId"
    ]
    app = (await api.data("GET", f"/admin-api/applications/{app_id}"))["application"]
    assert app["source"] == url and app["size"] == len(wasm)

    wrong = {"url": url, "metadata": [], "hash": b58encode(bytes(32))}
    resp = await api.post("/admin-api/install-application", wrong)
    assert resp.status_code == 500 and "not the expected" in resp.text

    resp = await api.post(
        "/admin-api/install-application",
        {"url": f"{api.url}/admin-api/blobs/{b58encode(bytes(32))}", "metadata": []},
    )
    assert resp.status_code == 500 and "HTTP 404" in resp.text


# -- blobs -------------------------------------------------------------------------


async def test_blob_routes(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    put = await api.client.put(api.url + "/admin-api/blobs", content=b"hello blob")
    assert put.status_code == 200
    blob = put.json()["data"]
    assert blob == {"blobId": b58encode(sha256(b"hello blob")), "size": 10}
    got = await api.get(f"/admin-api/blobs/{blob['blobId']}")
    assert got.content == b"hello blob"
    assert got.headers["content-type"] == "application/octet-stream"
    listed = await api.data("GET", "/admin-api/blobs")
    assert listed == {"blobs": [blob]}
    assert (await api.data("DELETE", f"/admin-api/blobs/{blob['blobId']}"))[
        "deleted"
    ] is True
    assert (await api.get(f"/admin-api/blobs/{blob['blobId']}")).status_code == 404
    assert (await api.get("/admin-api/blobs/xyz0")).status_code == 400


# -- namespaces and identities -----------------------------------------------------


async def test_namespace_routes(cluster: Cluster) -> None:
    api, app_id, ns, ctx = await one_node(cluster)
    assert len(bytes.fromhex(ns)) == 32 and ns == ns.lower()
    listed = await api.data("GET", "/admin-api/namespaces")
    assert [n["namespaceId"] for n in listed] == [ns]
    one = await api.data("GET", f"/admin-api/namespaces/{ns}")
    assert one["targetApplicationId"] == app_id
    assert one["memberCount"] == 1 and one["contextCount"] == 1
    assert {"appKey", "createdAt", "subgroupCount"} <= set(one)

    resp = await api.get(f"/admin-api/namespaces/{'ab' * 32}")
    assert resp.status_code == 404
    resp = await api.get("/admin-api/namespaces/xyz")
    assert resp.status_code == 400 and "64 hex digits" in resp.json()["error"]
    resp = await api.post(
        "/admin-api/namespaces", {"applicationId": b58encode(bytes(32))}
    )
    assert resp.status_code == 404 and "not installed" in resp.json()["error"]


async def test_invitation_is_signed_snake_case(cluster: Cluster) -> None:
    api, _, ns, _ = await one_node(cluster)
    signed = await api.invite(ns, expirationTimestamp=int(time.time()) + 60)
    assert set(signed) == {"invitation", "inviter_signature"}
    inv = signed["invitation"]
    assert set(inv) == {
        "inviter_identity",
        "group_id",
        "expiration_timestamp",
        "secret_salt",
        "invited_role",
    }
    assert inv["group_id"] == ns and len(inv["secret_salt"]) == 32
    resp = await api.post(f"/admin-api/namespaces/{'cd' * 32}/invite", {})
    assert resp.status_code == 403 and "not a member" in resp.json()["error"]


async def test_join_refuses_tampered_and_expired_invitations(cluster: Cluster) -> None:
    node1, _, ns, _ = await one_node(cluster)
    node2 = await cluster.start("node-2")
    await cluster.connected()

    tampered = await node1.invite(ns)
    tampered["invitation"]["invited_role"] = "Admin"
    resp = await node2.post(
        f"/admin-api/namespaces/{ns}/join", {"invitation": tampered}
    )
    assert resp.status_code == 403
    assert "signature does not verify" in resp.json()["error"]

    expired = await node1.invite(ns, expirationTimestamp=int(time.time()) - 5)
    resp = await node2.post(f"/admin-api/namespaces/{ns}/join", {"invitation": expired})
    assert resp.status_code == 400 and "expired" in resp.json()["error"]

    valid = await node1.invite(ns)
    resp = await node2.post(
        f"/admin-api/namespaces/{'ee' * 32}/join", {"invitation": valid}
    )
    assert resp.status_code == 400 and "not" in resp.json()["error"]
    resp = await node2.post(f"/admin-api/namespaces/{ns}/join", {"invitation": "x"})
    assert resp.status_code == 400


async def test_identity_routes(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    resp = await api.get("/admin-api/identity")
    assert resp.status_code == 404 and "no identity yet" in resp.json()["error"]
    fresh = await api.data("POST", "/admin-api/identity/context", {})
    assert len(b58decode(fresh["publicKey"])) == 32

    app_id = await api.install_kv_store()
    await api.create_namespace(app_id)
    ident = await api.data("GET", "/admin-api/identity")
    assert len(bytes.fromhex(ident["accountId"])) == 32
    assert len(b58decode(ident["publicKey"])) == 32


# -- contexts ----------------------------------------------------------------------


async def test_context_routes(cluster: Cluster) -> None:
    api, app_id, ns, ctx = await one_node(cluster)
    got = await api.data("GET", f"/admin-api/contexts/{ctx}")
    assert got["id"] == ctx and got["applicationId"] == app_id and got["groupId"] == ns
    assert got["contextStateHash"] != ZERO_HASH
    assert got["rootHash"] == got["contextStateHash"]
    assert all(len(h) == 32 for h in got["dagHeads"])

    listed = (await api.data("GET", "/admin-api/contexts"))["contexts"]
    assert [c["id"] for c in listed] == [ctx]
    assert (await api.data("GET", "/admin-api/contexts?offset=1"))["contexts"] == []

    members = (await api.data("GET", f"/admin-api/contexts/{ctx}/identities"))[
        "identities"
    ]
    owned = (await api.data("GET", f"/admin-api/contexts/{ctx}/identities-owned"))[
        "identities"
    ]
    assert members == owned and len(members) == 1
    assert await api.data("POST", f"/admin-api/contexts/sync/{ctx}") is None
    assert await api.data("POST", "/admin-api/contexts/sync") is None

    assert await api.data("DELETE", f"/admin-api/contexts/{ctx}") == {"isDeleted": True}
    resp = await api.get(f"/admin-api/contexts/{ctx}")
    assert resp.status_code == 404 and resp.json() == {"error": "Context not found"}


async def test_create_context_errors(cluster: Cluster) -> None:
    api, app_id, ns, _ = await one_node(cluster)
    resp = await api.post("/admin-api/contexts", {"applicationId": app_id})
    assert resp.status_code == 400 and "'groupId' is required" in resp.json()["error"]
    resp = await api.post(
        "/admin-api/contexts", {"applicationId": app_id, "groupId": "zz"}
    )
    assert resp.status_code == 400 and "64 hex digits" in resp.json()["error"]
    other = "ab" * 32
    resp = await api.post(
        "/admin-api/contexts", {"applicationId": app_id, "groupId": other}
    )
    assert resp.status_code == 403 and "not a member" in resp.json()["error"]
    resp = await api.post(
        "/admin-api/contexts",
        {"applicationId": app_id, "groupId": ns, "initializationParams": "{}"},
    )
    assert resp.status_code == 400 and "initializationParams" in resp.json()["error"]
    assert (await api.get("/admin-api/contexts/abc0")).status_code == 400
    unknown = b58encode(bytes([9]) * 32)
    assert (await api.get(f"/admin-api/contexts/{unknown}")).status_code == 404
    assert (await api.post(f"/admin-api/contexts/sync/{unknown}")).status_code == 404


async def test_failing_init_refuses_the_context(
    cluster: Cluster, tmp_path: Path
) -> None:
    api = await cluster.start("node-1")
    app_file = tmp_path / "panics.wasm"
    app_file.write_bytes(wasmtime.wat2wasm(PANICKING_INIT_WAT))
    body = {"path": str(app_file), "metadata": []}
    app_id = (await api.data("POST", "/admin-api/install-dev-application", body))[
        "applicationId"
    ]
    ns = await api.create_namespace(app_id)
    resp = await api.post(
        "/admin-api/contexts",
        {"applicationId": app_id, "groupId": ns, "initializationParams": []},
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "guest panicked: no init for you at app.rs:7:3"
    assert (await api.data("GET", "/admin-api/contexts"))["contexts"] == []


async def test_context_seed_gives_a_deterministic_id(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    app_id = await api.install_kv_store()
    ns = await api.create_namespace(app_id)
    seed = b58encode(bytes([3]) * 32)
    body = {
        "applicationId": app_id,
        "groupId": ns,
        "initializationParams": [],
        "contextSeed": seed,
    }
    first = await api.data("POST", "/admin-api/contexts", body)
    resp = await api.post("/admin-api/contexts", body)
    assert resp.status_code == 400 and "already exists" in resp.json()["error"]
    assert first["groupCreated"] is False and first["groupId"] == ns


# -- JSON-RPC ----------------------------------------------------------------------


async def test_execute_returns_output_logs_and_events(cluster: Cluster) -> None:
    api, _, _, ctx = await one_node(cluster)
    before = await api.state_hash(ctx)
    body = await api.execute(ctx, "set", {"key": "a", "value": "b"})
    result = body["result"]
    assert result["output"] is None
    assert result["logs"] == ['Setting key: "a" to value: "b"']
    assert result["events"] == [
        {"kind": "Inserted", "data": {"key": "a", "value": "b"}}
    ]
    assert await api.state_hash(ctx) != before

    assert await api.call(ctx, "get", {"key": "a"}) == "b"
    assert await api.call(ctx, "entries") == {"a": "b"}
    assert await api.call(ctx, "len") == 1
    # Read-only calls commit nothing.
    hash_after_set = await api.state_hash(ctx)
    await api.call(ctx, "get", {"key": "a"})
    assert await api.state_hash(ctx) == hash_after_set


async def test_execute_app_error_is_a_function_call_error(cluster: Cluster) -> None:
    api, _, _, ctx = await one_node(cluster)
    error = (await api.execute(ctx, "get_result", {"key": "zzz"}))["error"]
    payload = json.dumps(
        {"kind": "NotFound", "data": "zzz"}, separators=(",", ":")
    ).encode()
    assert error["type"] == "FunctionCallError"
    assert (
        error["data"]
        == "the method call returned an error: ["
        + ", ".join(str(b) for b in payload)
        + "]"
    )
    assert error["data"].startswith("the method call returned an error: [123, 34, ")
    assert error["returnedError"] == {"kind": "NotFound", "data": "zzz"}


async def test_execute_guest_panic_and_bad_args(cluster: Cluster) -> None:
    api, _, _, ctx = await one_node(cluster)
    error = (await api.execute(ctx, "get_unchecked", {"key": "nope"}))["error"]
    assert error["type"] == "FunctionCallError"
    assert error["data"].startswith("guest panicked: key not found at ")
    error = (await api.execute(ctx, "set", {"key": 1, "value": "x"}))["error"]
    assert error["data"].startswith(
        "guest panicked: Failed to deserialize input from JSON"
    )
    # A failed call changes nothing.
    assert await api.call(ctx, "len") == 0


async def test_execute_unknown_method(cluster: Cluster) -> None:
    api, _, _, ctx = await one_node(cluster)
    error = (await api.execute(ctx, "nope"))["error"]
    assert error == {
        **error,
        "type": "FunctionCallError",
        "data": 'method "nope" not found',
    }


async def test_execute_context_errors(cluster: Cluster) -> None:
    api, _, _, ctx = await one_node(cluster)
    unknown = b58encode(bytes([5]) * 32)
    assert (await api.execute(unknown, "get", {"key": "a"}))["error"] == {
        "type": "ContextNotFound"
    }
    error = (await api.execute("not/base58", "get", {"key": "a"}))["error"]
    assert error["type"] == "ParseError" and "not/base58" in error["data"]


async def test_execute_on_an_uninstalled_application(cluster: Cluster) -> None:
    api, app_id, _, ctx = await one_node(cluster)
    await api.data("DELETE", f"/admin-api/applications/{app_id}")
    error = (await api.execute(ctx, "get", {"key": "a"}))["error"]
    assert error == {
        "type": "ApplicationNotInstalled",
        "data": {"application_id": app_id},
    }


async def test_execute_uninitialised_context(cluster: Cluster) -> None:
    node1, app_id, ns, ctx = await one_node(cluster)
    node2 = await cluster.start("node-2")
    await cluster.connected()
    await node2.install_kv_store()
    await node2.join(ns, await node1.invite(ns))
    # Joining the namespace joined the context with its state: drop it here.
    await node2.data("DELETE", f"/admin-api/contexts/{ctx}")
    # Cut node 1 off: node 2 joins the context again but cannot get its state.
    node1.node.swarm.partitioned = True
    await node2.join_context(ctx)
    assert await node2.state_hash(ctx) == ZERO_HASH
    assert (await node2.execute(ctx, "get", {"key": "a"}))["error"] == {
        "type": "Uninitialized"
    }
    status = (await node2.rpc("sync_status", {"contextId": ctx}))["result"]
    assert status["isInitialized"] is False
    assert status["syncState"]["state"] == "waitingForPeers"

    node1.node.swarm.partitioned = False
    await cluster.converged(ctx)
    assert await node2.call(ctx, "len") == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        # serde's texts for RequestPayload / ExecutionRequest (deny_unknown_fields).
        (
            {"method": "frobnicate", "params": {}},
            "unknown variant `frobnicate`, expected one of `execute`, `sync_status`, "
            "`set_ephemeral`",
        ),
        ({"params": {}}, "missing field `method`"),
        ({"method": "execute"}, "missing field `params`"),
        (
            {"method": "execute", "params": {}, "extra": 1},
            "unknown field `extra`, expected `method` or `params`",
        ),
        (
            {"method": "execute", "params": []},
            "invalid length 0, expected struct ExecutionRequest with 3 elements",
        ),
        (
            {"method": "execute", "params": "x"},
            'invalid type: string "x", expected struct ExecutionRequest',
        ),
        (
            {"method": "execute", "params": {"contextId": "x", "method": "get"}},
            "missing field `argsJson`",
        ),
        (
            {
                "method": "execute",
                "params": {
                    "contextId": "x",
                    "method": "get",
                    "argsJson": {},
                    "executorPublicKey": "k",
                },
            },
            "unknown field `executorPublicKey`, expected one of `contextId`, `method`, "
            "`argsJson`",
        ),
        (
            {"method": "execute", "params": {"contextId": 5, "method": "m", "argsJson": {}}},
            "invalid type: integer `5`, expected a string",
        ),
        (
            {"method": "sync_status", "params": {"contextId": "x", "x": 1}},
            "unknown field `x`, expected `contextId`",
        ),
    ],
)
async def test_jsonrpc_payload_errors_are_parse_errors_with_serdes_text(
    cluster: Cluster, params: dict[str, object], message: str
) -> None:
    api = await cluster.start("node-1")
    envelope = {"jsonrpc": "2.0", "id": 3, **params}
    body = (await api.client.post(api.url + "/jsonrpc", json=envelope)).json()
    assert body == {
        "jsonrpc": "2.0",
        "id": 3,
        "error": {"type": "ParseError", "data": message},
    }


async def test_jsonrpc_method_name_is_validated_before_execution(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    params = {"contextId": "x", "method": "se t", "argsJson": {}}
    error = (await api.rpc("execute", params))["error"]
    assert error["type"] == "ParseError" and "invalid method name 'se t'" in error["data"]


@pytest.mark.parametrize(
    ("content", "headers", "status", "text"),
    [
        # axum's Json extractor answers these itself, in plain text.
        (
            b'{"jsonrpc":"2.0","id":1,"method":"execute","params":{}}',
            {"content-type": "text/plain"},
            415,
            "Expected request with `Content-Type: application/json`",
        ),
        (
            b"{{{",
            {"content-type": "application/json"},
            400,
            "Failed to parse the request body as JSON: key must be a string",
        ),
        (
            b"",
            {"content-type": "application/json"},
            400,
            "Failed to parse the request body as JSON: EOF while parsing a value",
        ),
        (
            b'{"jsonrpc":"1.0","id":1,"method":"execute","params":{}}',
            {"content-type": "application/json"},
            422,
            "Failed to deserialize the JSON body into the target type: "
            "jsonrpc: Invalid JSON-RPC version",
        ),
        (
            b'{"jsonrpc":"2.0","method":"execute","params":{}}',
            {"content-type": "application/json; charset=utf-8"},
            422,
            "Failed to deserialize the JSON body into the target type: missing field `id`",
        ),
        (
            b'{"jsonrpc":"2.0","id":-1,"method":"execute","params":{}}',
            {"content-type": "application/json"},
            422,
            "Failed to deserialize the JSON body into the target type: "
            "id: data did not match any variant of untagged enum RequestId",
        ),
        (
            b"[1]",
            {"content-type": "application/json"},
            422,
            "Failed to deserialize the JSON body into the target type: "
            "invalid type: sequence, expected struct Request",
        ),
    ],
)
async def test_jsonrpc_envelope_rejections_are_plain_http_errors(
    cluster: Cluster, content: bytes, headers: dict[str, str], status: int, text: str
) -> None:
    api = await cluster.start("node-1")
    resp = await api.client.post(api.url + "/jsonrpc", content=content, headers=headers)
    assert (resp.status_code, resp.text) == (status, text)
    assert resp.headers["content-type"].startswith("text/plain")


async def test_jsonrpc_ids_are_echoed(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    unknown = b58encode(bytes([1]) * 32)
    for request_id in ("abc", 0, 2**64 - 1, None):
        envelope = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "sync_status",
            "params": {"contextId": unknown},
        }
        body = (await api.client.post(api.url + "/jsonrpc", json=envelope)).json()
        assert body["id"] == request_id and body["error"] == {"type": "ContextNotFound"}


async def test_sync_status(cluster: Cluster) -> None:
    api, _, _, ctx = await one_node(cluster)
    result = (await api.rpc("sync_status", {"contextId": ctx}))["result"]
    assert result["contextId"] == ctx and result["isInitialized"] is True
    assert result["syncState"]["state"] in {"idle", "syncing"}
    assert isinstance(result["failureCount"], int)
    unknown = b58encode(bytes([1]) * 32)
    assert (await api.rpc("sync_status", {"contextId": unknown}))["error"] == {
        "type": "ContextNotFound"
    }


# -- two nodes: the §1.4 flow ------------------------------------------------------


async def test_two_node_flow_reaches_the_same_state(cluster: Cluster) -> None:
    node1 = await cluster.start("node-1")
    node2 = await cluster.start("node-2")
    await cluster.connected()

    app_id = await node1.install_kv_store()
    ns = await node1.create_namespace(app_id)
    ctx = await node1.create_context(app_id, ns)
    await node2.data("POST", "/admin-api/identity/context", {})
    joined = await node2.join(ns, await node1.invite(ns))
    assert joined["namespaceId"] == ns
    assert len(bytes.fromhex(joined["memberAccount"])) == 32
    ctx_join = await node2.join_context(ctx)
    assert ctx_join == {"contextId": ctx, "memberPublicKey": joined["memberIdentity"]}
    # Joining twice is harmless.
    assert await node2.join_context(ctx) == ctx_join

    # Node 2 fetched the app from node 1 and knows both members.
    assert (await node2.data("GET", f"/admin-api/applications/{app_id}"))["application"]
    members = (await node1.data("GET", f"/admin-api/contexts/{ctx}/identities"))[
        "identities"
    ]
    assert joined["memberIdentity"] in members and len(members) == 2
    ns_info = await node1.data("GET", f"/admin-api/namespaces/{ns}")
    assert ns_info["memberCount"] == 2

    await node1.call(ctx, "set", {"key": "greeting", "value": "hello"})
    state = await cluster.converged(ctx, "node-1", "node-2")
    assert state != ZERO_HASH
    assert await node2.call(ctx, "get", {"key": "greeting"}) == "hello"

    # And back: a write on node 2 reaches node 1.
    await node2.call(ctx, "set", {"key": "reply", "value": "hi"})

    async def node1_sees_reply() -> bool:
        return await node1.call(ctx, "get", {"key": "reply"}) == "hi"

    await wait_until(node1_sees_reply, what="node 1 to see node 2's write")
    await cluster.converged(ctx, "node-1", "node-2")


async def test_join_context_needs_namespace_membership(cluster: Cluster) -> None:
    node1, _, ns, ctx = await one_node(cluster)
    node2 = await cluster.start("node-2")
    await cluster.connected()
    resp = await node2.post(f"/admin-api/contexts/{ctx}/join")
    assert resp.status_code == 403 and "join its namespace" in resp.json()["error"]


async def test_node_restart_keeps_state(cluster: Cluster) -> None:
    api, app_id, ns, ctx = await one_node(cluster)
    await api.call(ctx, "set", {"key": "k", "value": "v"})
    state = await api.state_hash(ctx)
    url = api.url
    await api.node.stop()
    await api.node.start()
    assert api.url == url  # same port again
    assert await api.state_hash(ctx) == state
    assert await api.call(ctx, "get", {"key": "k"}) == "v"
    assert (await api.data("GET", "/admin-api/applications"))["apps"][0]["id"] == app_id
    assert (await api.data("GET", f"/admin-api/namespaces/{ns}"))["contextCount"] == 1
