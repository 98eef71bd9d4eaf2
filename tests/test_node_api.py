"""The embedded node's admin API and JSON-RPC, on real servers with the real app.

Shapes follow merod's era-C API (docs: calimero-node-api.md §1-2) as of
0.11.0-rc.27: ``{"data": …}`` envelopes, ``{"error": msg}`` failures with
meaningful statuses, every 32-byte id as 64 hex digits, and request bodies that
refuse fields their type does not have.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import pytest
import wasmtime

from calimero_workflow import bundle
from calimero_workflow.node.api import _parse_json_or_text
from calimero_workflow.node.bodies import NotJson, load_json
from calimero_workflow.node.ids import ZERO_HASH, b58encode, sha256
from node_fixtures import KV_STORE_WASM, Api, Cluster, cluster, node_runtime, wait_until

__all__ = ["cluster", "node_runtime"]  # fixtures used by name

HEX64 = re.compile(r"[0-9a-f]{64}")
#: How merod refuses a body that does not fit its request type.
INVALID_DATA = (
    "Invalid JSON data: Failed to deserialize the JSON body into the target type: "
)

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


async def test_install_dev_application_installs_a_bundle_as_merod_records_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    api = await cluster.start("node-1")
    mpk = tmp_path / "kv-store-1.2.0.mpk"
    built = bundle.build_bundle(
        KV_STORE_WASM.read_bytes(), package="com.example.kv", version="1.2.0", name="kv"
    )
    mpk.write_bytes(built.data)
    body = {"path": str(mpk)}
    app_id = (await api.data("POST", "/admin-api/install-dev-application", body))[
        "applicationId"
    ]
    # ApplicationId::for_bundle: SHA-256(borsh((package, signerId))), in hex.
    assert app_id == bundle.application_id_for_bundle("com.example.kv", bundle.DEV_SIGNER_ID).hex()
    assert app_id == built.application_id

    apps = (await api.data("GET", "/admin-api/applications"))["apps"]
    assert [a["id"] for a in apps] == [app_id]
    app = (await api.data("GET", f"/admin-api/applications/{app_id}"))["application"]
    assert app == {
        "id": app_id,
        # the blob is the whole archive; nothing is compiled into a blob yet
        "blob": {"bytecode": sha256(built.data).hex(), "compiled": "0" * 64},
        "size": len(built.data),
        "source": mpk.resolve().as_uri(),
        # BundleManifest::to_metadata_json(), as bytes
        "metadata": list(
            b'{"package":"com.example.kv","version":"1.2.0","name":"kv"}'
        ),
        "signer_id": bundle.DEV_SIGNER_ID,
        "package": "com.example.kv",
        "version": "1.2.0",
    }

    abi = await api.data("GET", f"/admin-api/applications/{app_id}/abi")
    assert isinstance(abi, dict) and abi

    # Installing the same file again gives the same id and the same row.
    again = await api.data("POST", "/admin-api/install-dev-application", body)
    assert again["applicationId"] == app_id
    assert (await api.data("GET", "/admin-api/applications"))["apps"] == [app]


async def test_install_dev_application_refuses_raw_wasm(cluster: Cluster) -> None:
    """Current merod installs only signed bundles, recognised by content."""
    api = await cluster.start("node-1")
    resp = await api.post("/admin-api/install-dev-application", {"path": str(KV_STORE_WASM)})
    assert resp.status_code == 500
    assert resp.headers["content-type"].startswith("text/plain")
    assert resp.text == f"not a signed application bundle: {KV_STORE_WASM.resolve()}"
    assert (await api.data("GET", "/admin-api/applications"))["apps"] == []


async def test_install_dev_application_refuses_a_tampered_bundle(
    cluster: Cluster, tmp_path: Path
) -> None:
    api = await cluster.start("node-1")
    built = bundle.build_bundle(KV_STORE_WASM.read_bytes(), package="com.example.kv", version="1.0.0")
    # another appVersion under the same signature
    text = json.dumps({**built.manifest, "appVersion": "9.9.9"}, indent=2).encode()
    tampered = tmp_path / "tampered.mpk"
    tampered.write_bytes(
        bundle._tar_gz([("manifest.json", text), ("app.wasm", KV_STORE_WASM.read_bytes())])
    )
    resp = await api.post("/admin-api/install-dev-application", {"path": str(tampered)})
    assert resp.status_code == 500 and resp.text == "Ed25519 signature verification failed"
    # a manifest that holds but a wasm that does not
    wasm = bytearray(KV_STORE_WASM.read_bytes())
    wasm[-1] ^= 1
    text = json.dumps(built.manifest, indent=2).encode()
    tampered.write_bytes(bundle._tar_gz([("manifest.json", text), ("app.wasm", bytes(wasm))]))
    resp = await api.post("/admin-api/install-dev-application", {"path": str(tampered)})
    assert resp.status_code == 500
    assert resp.text.startswith("bundle artifact 'app.wasm' failed its integrity check: manifest hash ")
    # a bundle signed the way merod signed before core#4307 (untagged)
    old = tmp_path / "old.mpk"
    old.write_bytes(
        bundle.build_bundle(
            KV_STORE_WASM.read_bytes(), package="com.example.kv", version="1.0.0",
            scheme=bundle.SCHEME_UNTAGGED,
        ).data
    )
    resp = await api.post("/admin-api/install-dev-application", {"path": str(old)})
    assert resp.status_code == 500 and resp.text == "Ed25519 signature verification failed"
    assert (await api.data("GET", "/admin-api/applications"))["apps"] == []


async def test_a_new_version_replaces_the_row_and_the_running_code(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Every version of a package by one signer shares an id: installing 2.0.0
    replaces the 1.0.0 row, and contexts of the app run the new module."""
    api = await cluster.start("node-1")
    v1 = tmp_path / "v1.mpk"
    v1.write_bytes(bundle.build_bundle(wasmtime.wat2wasm(VERSIONED_WAT.replace("VERSION", "1")),
                                       package="com.example.versioned", version="1.0.0").data)
    v2 = tmp_path / "v2.mpk"
    v2.write_bytes(bundle.build_bundle(wasmtime.wat2wasm(VERSIONED_WAT.replace("VERSION", "2")),
                                       package="com.example.versioned", version="2.0.0").data)
    app_id = (await api.data("POST", "/admin-api/install-dev-application", {"path": str(v1)}))[
        "applicationId"
    ]
    ns = await api.create_namespace(app_id)
    ctx = await api.create_context(app_id, ns)
    assert await api.call(ctx, "which") == 1
    again = await api.data("POST", "/admin-api/install-dev-application", {"path": str(v2)})
    assert again["applicationId"] == app_id
    apps = (await api.data("GET", "/admin-api/applications"))["apps"]
    assert [(a["id"], a["version"], a["size"]) for a in apps] == [
        (app_id, "2.0.0", v2.stat().st_size)
    ]
    assert await api.call(ctx, "which") == 2


async def test_a_multi_service_bundle_runs_the_service_a_context_names(
    cluster: Cluster, tmp_path: Path
) -> None:
    api = await cluster.start("node-1")
    modules = {n: wasmtime.wat2wasm(VERSIONED_WAT.replace("VERSION", str(n))) for n in (1, 2)}

    def artifact(path: str, data: bytes) -> dict:
        return {"path": path, "hash": sha256(data).hex(), "size": len(data)}

    signed = bundle.sign_manifest(
        {
            "version": "1.0", "package": "com.example.multi", "appVersion": "1.0.0",
            "minRuntimeVersion": "0.1.0",
            "services": [
                {"name": "one", "wasm": artifact("services/one.wasm", modules[1])},
                {"name": "two", "wasm": artifact("services/two.wasm", modules[2])},
            ],
        }
    )
    mpk = tmp_path / "multi.mpk"
    mpk.write_bytes(
        bundle._tar_gz(
            [
                ("manifest.json", json.dumps(signed).encode()),
                ("services/one.wasm", modules[1]),
                ("services/two.wasm", modules[2]),
            ]
        )
    )
    app_id = (await api.data("POST", "/admin-api/install-dev-application", {"path": str(mpk)}))[
        "applicationId"
    ]
    app = (await api.data("GET", f"/admin-api/applications/{app_id}"))["application"]
    assert app["services"] == {
        "one": {"bytecode": sha256(modules[1]).hex(), "compiled": "0" * 64},
        "two": {"bytecode": sha256(modules[2]).hex(), "compiled": "0" * 64},
    }
    assert app["blob"]["bytecode"] == sha256(mpk.read_bytes()).hex()
    ns = await api.create_namespace(app_id)
    body = {"applicationId": app_id, "groupId": ns, "initializationParams": []}
    resp = await api.post("/admin-api/contexts", body)
    assert resp.status_code == 400
    assert resp.json()["error"] == "bundle has several services (one, two); name the one to run"
    ctx = (await api.data("POST", "/admin-api/contexts", {**body, "serviceName": "two"}))["contextId"]
    assert await api.call(ctx, "which") == 2


# `which` returns VERSION as its JSON output.
VERSIONED_WAT = r"""
(module
  (import "env" "value_return" (func $value_return (param i64)))
  (memory (export "memory") 1)
  ;; Result::Ok tag 0, then Buffer{ptr=32,len=1} at 8
  (data (i32.const 0) "\00\00\00\00\00\00\00\00\20\00\00\00\00\00\00\00\01\00\00\00\00\00\00\00")
  (data (i32.const 32) "VERSION")
  (func (export "init"))
  (func (export "which") (call $value_return (i64.const 0)))
)
"""


async def test_application_lookup_errors(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    unknown = (bytes([7]) * 32).hex()
    resp = await api.get(f"/admin-api/applications/{unknown}")
    assert resp.json() == {"data": {"application": None}}
    resp = await api.get("/admin-api/applications/not-hex-0OIl")
    assert resp.status_code == 400
    assert "not-hex-0OIl" in resp.json()["error"]
    # A base58 id (what merod showed before 0.11.0-rc.27) is refused, with a hint.
    resp = await api.get(f"/admin-api/applications/{b58encode(bytes([7]) * 32)}")
    assert resp.status_code == 400 and "base58" in resp.json()["error"]
    # Upper-case hex names the same id.
    app_id = await api.install_kv_store()
    upper = await api.data("GET", f"/admin-api/applications/{app_id.upper()}")
    assert upper["application"]["id"] == app_id
    resp = await api.get(f"/admin-api/applications/{unknown}/abi")
    assert resp.status_code == 404


async def test_delete_application(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    app_id = await api.install_kv_store()
    assert await api.data("DELETE", f"/admin-api/applications/{app_id}") == {
        "applicationId": app_id
    }
    assert (await api.data("GET", "/admin-api/applications"))["apps"] == []
    # merod deletes the record whether or not it is there: no error either way.
    assert await api.data("DELETE", f"/admin-api/applications/{app_id.upper()}") == {
        "applicationId": app_id
    }
    resp = await api.delete("/admin-api/applications/not-hex")
    assert resp.status_code == 400 and "not-hex" in resp.json()["error"]


async def test_install_dev_application_refuses_a_missing_path(
    cluster: Cluster, tmp_path: Path
) -> None:
    api = await cluster.start("node-1")
    missing = tmp_path / "nowhere" / "app.mpk"
    resp = await api.post("/admin-api/install-dev-application", {"path": str(missing)})
    # merod's install handlers answer any install failure with a plain-text 500.
    assert resp.status_code == 500
    assert resp.headers["content-type"].startswith("text/plain")
    assert resp.text == f"application file not found at {missing}"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # merod takes {path} alone since 0.11.0-rc.27; the fields older nodes
        # required or took are refused, the first one met named.
        (
            {"path": str(KV_STORE_WASM), "metadata": []},
            "unknown field `metadata`, expected `path`",
        ),
        (
            {"path": str(KV_STORE_WASM), "version": "1.0.0", "package": "p"},
            "unknown field `version`, expected `path`",
        ),
        ({}, "missing field `path`"),
        ([str(KV_STORE_WASM)], "invalid type: sequence, expected struct InstallDevApplicationRequest"),
    ],
)
async def test_install_dev_application_takes_path_only(
    cluster: Cluster, body: object, reason: str
) -> None:
    api = await cluster.start("node-1")
    resp = await api.post("/admin-api/install-dev-application", body)
    assert resp.status_code == 400
    assert resp.json() == {"error": INVALID_DATA + reason}
    assert (await api.data("GET", "/admin-api/applications"))["apps"] == []


async def test_install_dev_application_refuses_bodies_that_are_not_json(
    cluster: Cluster, tmp_path: Path
) -> None:
    api = await cluster.start("node-1")
    resp = await api.post(
        "/admin-api/install-dev-application",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert resp.json() == {
        "error": "JSON syntax error: Failed to parse the request body as JSON: "
        "key must be a string"
    }
    resp = await api.post(
        "/admin-api/install-dev-application", content=b"{}", headers={}
    )
    assert resp.status_code == 400
    assert resp.json() == {"error": "Expected request with `Content-Type: application/json`"}

    bogus = tmp_path / "bogus.wasm"
    bogus.write_bytes(b"definitely not wasm")
    resp = await api.post("/admin-api/install-dev-application", {"path": str(bogus)})
    assert resp.status_code == 500
    assert resp.text == f"not a signed application bundle: {bogus}"
    # A signed bundle whose module is no wasm: merod would refuse to run it,
    # and the embedded node refuses it at install, with the reason.
    module = b"definitely not wasm"
    signed = bundle.sign_manifest(
        {
            "version": "1.0", "package": "com.example.bogus", "appVersion": "1.0.0",
            "minRuntimeVersion": "0.1.0",
            "wasm": {"path": "app.wasm", "hash": sha256(module).hex(), "size": len(module)},
        }
    )
    bogus.write_bytes(
        bundle._tar_gz([("manifest.json", json.dumps(signed).encode()), ("app.wasm", module)])
    )
    resp = await api.post("/admin-api/install-dev-application", {"path": str(bogus)})
    assert resp.status_code == 500
    assert resp.text.startswith("cannot install file://") and "not a wasm module" in resp.text


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # install-application takes registry coordinates since 0.11.0-rc.27; a
        # URL install is refused rather than reinterpreted.
        (
            {"url": "https://example.org/kv.wasm", "metadata": []},
            "unknown field `url`, expected `package` or `version`",
        ),
        (
            {"package": "com.example.kv", "version": "1.0.0", "hash": "ab" * 32},
            "unknown field `hash`, expected `package` or `version`",
        ),
        ({"version": "1.0.0"}, "missing field `package`"),
    ],
)
async def test_install_application_takes_registry_coordinates(
    cluster: Cluster, body: dict[str, object], reason: str
) -> None:
    api = await cluster.start("node-1")
    resp = await api.post("/admin-api/install-application", body)
    assert resp.status_code == 400
    assert resp.json() == {"error": INVALID_DATA + reason}


async def test_install_application_checks_the_coordinates(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    resp = await api.post(
        "/admin-api/install-application", {"package": "", "version": "v" * 65}
    )
    assert resp.json() == {
        "error": "Validation errors: Field 'package' is required but was empty; "
        "Field 'version' exceeds maximum length of 64 characters (got 65)"
    }
    # Well-formed coordinates: an embedded node has no registry to fetch from,
    # which merod answers for unresolvable coordinates with a plain-text 502.
    body = {"package": "com.example.kv", "version": "1.0.0"}
    resp = await api.post("/admin-api/install-application", body)
    assert resp.status_code == 502
    assert resp.headers["content-type"].startswith("text/plain")
    assert "com.example.kv@1.0.0" in resp.text and "install-dev-application" in resp.text


# -- blobs -------------------------------------------------------------------------


async def test_blob_routes(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    put = await api.client.put(api.url + "/admin-api/blobs", content=b"hello blob")
    assert put.status_code == 200
    blob = put.json()["data"]
    assert blob == {"blobId": sha256(b"hello blob").hex(), "size": 10}
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
    resp = await api.post("/admin-api/namespaces", {"applicationId": bytes(32).hex()})
    assert resp.status_code == 404 and "not installed" in resp.json()["error"]
    # The old spelling of the app key is still taken; unknown fields are not.
    named = await api.data(
        "POST",
        "/admin-api/namespaces",
        {"applicationId": app_id, "name": "team", "bytecodeId": "k" * 8},
    )
    assert (await api.data("GET", f"/admin-api/namespaces/{named['namespaceId']}"))[
        "appKey"
    ] == "k" * 8
    resp = await api.post(
        "/admin-api/namespaces", {"applicationId": app_id, "upgradePolicy": "Automatic"}
    )
    assert resp.json() == {
        "error": INVALID_DATA + "unknown field `upgradePolicy`, expected one of "
        "`applicationId`, `name`, `appKey`, `bytecodeId`"
    }


#: merod's GroupInfoApiResponseData as core's wire fixture shows it
#: (crates/server/primitives/fixtures/wire/groups/group_info.res.json).
GROUP_INFO_KEYS = {
    "appKey",
    "contextCount",
    "defaultCapabilities",
    "groupId",
    "groupStateHash",
    "memberCount",
    "namespaceId",
    "ownerOpCounter",
    "subgroupVisibility",
    "targetApplicationId",
}


async def test_a_namespace_is_a_group_with_a_state_hash(cluster: Cluster) -> None:
    api, app_id, ns, _ = await one_node(cluster)
    info = await api.data("GET", f"/admin-api/groups/{ns}")
    assert set(info) == GROUP_INFO_KEYS
    assert info["groupId"] == info["namespaceId"] == ns
    assert info["targetApplicationId"] == app_id
    assert (info["memberCount"], info["contextCount"], info["ownerOpCounter"]) == (1, 1, 0)
    assert HEX64.fullmatch(info["groupStateHash"])
    # Reading it changes nothing; a new context in the namespace changes it.
    again = await api.data("GET", f"/admin-api/groups/{ns.upper()}")
    assert again["groupStateHash"] == info["groupStateHash"]
    await api.create_context(app_id, ns)
    grown = await api.data("GET", f"/admin-api/groups/{ns}")
    assert grown["contextCount"] == 2
    assert grown["groupStateHash"] != info["groupStateHash"]
    # Calls change a context's state, not the group's.
    ctx = (await api.data("GET", "/admin-api/contexts"))["contexts"][0]["id"]
    await api.call(ctx, "set", {"key": "k", "value": "v"})
    assert (await api.data("GET", f"/admin-api/groups/{ns}"))[
        "groupStateHash"
    ] == grown["groupStateHash"]

    resp = await api.get(f"/admin-api/groups/{'ab' * 32}")
    assert resp.status_code == 404 and "not found" in resp.json()["error"]
    resp = await api.get("/admin-api/groups/xyz")
    assert resp.status_code == 400 and "64 hex digits" in resp.json()["error"]


async def test_group_state_hash_follows_joins_and_converges(cluster: Cluster) -> None:
    one = await cluster.start("node-1")
    two = await cluster.start("node-2")
    await cluster.connected()
    app_id = await one.install_kv_store()
    ns = await one.create_namespace(app_id)
    await one.create_context(app_id, ns)
    alone = (await one.data("GET", f"/admin-api/groups/{ns}"))["groupStateHash"]
    # node-2 is no member yet: it does not know the group.
    resp = await two.get(f"/admin-api/groups/{ns}")
    assert resp.status_code == 404

    await two.join(ns, await one.invite(ns))

    async def hashes() -> set[str]:
        infos = [await a.data("GET", f"/admin-api/groups/{ns}") for a in (one, two)]
        return {i["groupStateHash"] for i in infos if i["memberCount"] == 2}

    async def agreed() -> str | None:
        values = await hashes()
        return next(iter(values)) if len(values) == 1 else None

    joined = await wait_until(agreed, what="both members on one groupStateHash")
    assert joined != alone
    # A context created by the new member changes it on both.
    await two.create_context(app_id, ns)

    async def moved() -> str | None:
        value = await agreed()
        return value if value not in (None, joined) else None

    await wait_until(moved, what="the new context in both members' groupStateHash")


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
    assert inv["inviter_identity"] == (await api.data("GET", "/admin-api/identity"))[
        "publicKey"
    ]
    assert HEX64.fullmatch(inv["inviter_identity"])
    resp = await api.post(f"/admin-api/namespaces/{'cd' * 32}/invite", {})
    assert resp.status_code == 403 and "not a member" in resp.json()["error"]
    resp = await api.post(f"/admin-api/namespaces/{ns}/invite", {"requester": "x"})
    assert resp.status_code == 400
    assert resp.json()["error"].startswith(INVALID_DATA + "unknown field `requester`")


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
    resp = await node2.post(
        f"/admin-api/namespaces/{ns}/join", {"invitation": valid, "alias": "a"}
    )
    assert resp.json() == {
        "error": INVALID_DATA + "unknown field `alias`, expected `invitation` or `groupName`"
    }


async def test_identity_routes(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    resp = await api.get("/admin-api/identity")
    assert resp.status_code == 404
    assert resp.json()["error"] == (
        "this node holds neither a usable device nor an account root yet; both are "
        "minted the first time it takes part in a namespace"
    )
    fresh = await api.data("POST", "/admin-api/identity/context", {})
    assert HEX64.fullmatch(fresh["publicKey"])

    app_id = await api.install_kv_store()
    ns = await api.create_namespace(app_id)
    ctx = await api.create_context(app_id, ns)
    ident = await api.data("GET", "/admin-api/identity")
    # merod's NodeIdentityApiResponseData, as core's wire fixture shows it
    # (crates/server/primitives/fixtures/wire/identity/node_identity.res.json).
    assert set(ident) == {
        "accountId",
        "accountNamespaceId",
        "accountRootPublicKey",
        "deviceAgreementKey",
        "deviceCertified",
        "deviceId",
        "holdsAccountRoot",
        "publicKey",
    }
    # One device holding its own root: every key is the namespace identity,
    # the one the node executes as (env.account_id and env.device_id).
    (member,) = (await api.data("GET", f"/admin-api/contexts/{ctx}/identities"))["identities"]
    for key in ("accountId", "accountRootPublicKey", "deviceId", "publicKey"):
        assert ident[key] == member, key
    assert ident["accountNamespaceId"] == ns
    assert ident["deviceCertified"] is True and ident["holdsAccountRoot"] is True
    agreement = ident["deviceAgreementKey"]
    assert HEX64.fullmatch(agreement) and agreement != member


# -- contexts ----------------------------------------------------------------------


async def test_context_routes(cluster: Cluster) -> None:
    api, app_id, ns, ctx = await one_node(cluster)
    got = await api.data("GET", f"/admin-api/contexts/{ctx}")
    assert got["id"] == ctx and got["applicationId"] == app_id and got["groupId"] == ns
    for value in (ctx, app_id, got["contextStateHash"]):
        assert HEX64.fullmatch(value), value
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
    assert members == owned and len(members) == 1 and HEX64.fullmatch(members[0])
    assert await api.data("POST", f"/admin-api/contexts/sync/{ctx}") is None
    assert await api.data("POST", "/admin-api/contexts/sync") is None

    assert await api.data("DELETE", f"/admin-api/contexts/{ctx}") == {"isDeleted": True}
    resp = await api.get(f"/admin-api/contexts/{ctx}")
    assert resp.status_code == 404 and resp.json() == {"error": "Context not found"}
    # As in merod, deleting a context the node does not have is no error.
    assert await api.data("DELETE", f"/admin-api/contexts/{ctx}") == {"isDeleted": False}
    resp = await api.delete("/admin-api/contexts/xyz")
    assert resp.status_code == 400 and "64 hex digits" in resp.json()["error"]


async def test_create_context_errors(cluster: Cluster) -> None:
    api, app_id, ns, _ = await one_node(cluster)
    resp = await api.post(
        "/admin-api/contexts", {"applicationId": app_id, "initializationParams": []}
    )
    assert resp.json() == {"error": INVALID_DATA + "missing field `groupId`"}
    resp = await api.post("/admin-api/contexts", {"applicationId": app_id, "groupId": ns})
    assert resp.json() == {"error": INVALID_DATA + "missing field `initializationParams`"}
    resp = await api.post(
        "/admin-api/contexts",
        {"applicationId": app_id, "groupId": ns, "initializationParams": [], "protocol": "near"},
    )
    assert resp.json()["error"].startswith(INVALID_DATA + "unknown field `protocol`")
    resp = await api.post(
        "/admin-api/contexts",
        {"applicationId": app_id, "groupId": "zz", "initializationParams": []},
    )
    assert resp.status_code == 400 and "64 hex digits" in resp.json()["error"]
    other = "ab" * 32
    resp = await api.post(
        "/admin-api/contexts",
        {"applicationId": app_id, "groupId": other, "initializationParams": []},
    )
    assert resp.status_code == 403 and "not a member" in resp.json()["error"]
    resp = await api.post(
        "/admin-api/contexts",
        {"applicationId": app_id, "groupId": ns, "initializationParams": "{}"},
    )
    assert resp.status_code == 400 and "initializationParams" in resp.json()["error"]
    assert (await api.get("/admin-api/contexts/abc0")).status_code == 400
    unknown = (bytes([9]) * 32).hex()
    assert (await api.get(f"/admin-api/contexts/{unknown}")).status_code == 404
    assert (await api.post(f"/admin-api/contexts/sync/{unknown}")).status_code == 404
    resp = await api.get(f"/admin-api/contexts/{b58encode(bytes([9]) * 32)}")
    assert resp.status_code == 400 and "base58" in resp.json()["error"]


async def test_failing_init_refuses_the_context(
    cluster: Cluster, tmp_path: Path
) -> None:
    api = await cluster.start("node-1")
    app_file = tmp_path / "panics.wasm"
    app_file.write_bytes(wasmtime.wat2wasm(PANICKING_INIT_WAT))
    app_id = await api.install_file(app_file)
    ns = await api.create_namespace(app_id)
    resp = await api.post(
        "/admin-api/contexts",
        {"applicationId": app_id, "groupId": ns, "initializationParams": []},
    )
    assert resp.status_code == 400
    assert resp.json()["error"] == "guest panicked: no init for you at app.rs:7:3"
    assert (await api.data("GET", "/admin-api/contexts"))["contexts"] == []


# An app whose `init` traps unless its input is LENGTH bytes long, so the
# node's handling of `initializationParams` shows.
INIT_INPUT_LENGTH_WAT = r"""
(module
  (import "env" "input" (func $input (param i64)))
  (import "env" "register_len" (func $register_len (param i64) (result i64)))
  (memory (export "memory") 1)
  (func (export "init")
    (call $input (i64.const 1))
    (if (i64.ne (call $register_len (i64.const 1)) (i64.const LENGTH))
      (then unreachable)))
)
"""


@pytest.mark.parametrize("params", [b"", b"{}", b'{"n":1}'])
async def test_init_gets_the_initialization_params_verbatim(
    cluster: Cluster, tmp_path: Path, params: bytes
) -> None:
    """merod hands init the bytes as given: [] is empty input, not ``{}``."""
    api = await cluster.start("node-1")
    app_file = tmp_path / "init_input.wasm"
    app_file.write_bytes(
        wasmtime.wat2wasm(INIT_INPUT_LENGTH_WAT.replace("LENGTH", str(len(params))))
    )
    app_id = await api.install_file(app_file)
    ns = await api.create_namespace(app_id)
    resp = await api.post(
        "/admin-api/contexts",
        {"applicationId": app_id, "groupId": ns, "initializationParams": list(params)},
    )
    assert resp.status_code == 200, resp.text


async def test_context_seed_gives_a_deterministic_id(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    app_id = await api.install_kv_store()
    ns = await api.create_namespace(app_id)
    seed = (bytes([3]) * 32).hex()
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
    body["contextSeed"] = b58encode(bytes([4]) * 32)
    resp = await api.post("/admin-api/contexts", body)
    assert resp.status_code == 400 and "base58" in resp.json()["error"]


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
    unknown = (bytes([5]) * 32).hex()
    assert (await api.execute(unknown, "get", {"key": "a"}))["error"] == {
        "type": "ContextNotFound"
    }
    error = (await api.execute("not/hex", "get", {"key": "a"}))["error"]
    assert error["type"] == "ParseError" and "not/hex" in error["data"]
    error = (await api.execute(b58encode(bytes.fromhex(ctx)), "len"))["error"]
    assert error["type"] == "ParseError" and "base58" in error["data"]
    assert await api.call(ctx.upper(), "len") == 0


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
            # An adjacently tagged enum that denies unknown fields refuses a
            # stray key as a bad tag-or-content key.
            {"method": "execute", "params": {}, "extra": 1},
            'invalid value: string "extra", expected "method" or "params"',
        ),
        (
            {"method": "sync_status", "params": {"contextId": "x"}, "bogus": 1},
            'invalid value: string "bogus", expected "method" or "params"',
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


@pytest.mark.parametrize(
    ("method", "message"),
    [
        # The server refuses only what merod's server refuses.
        ("", "Field 'method' is required but was empty"),
        ("m" * 257, "Field 'method' exceeds maximum length of 256 characters (got 257)"),
        (
            "se\nt",
            "Field 'method' has invalid format: contains control character '\\n' "
            "which is not allowed",
        ),
        (
            "se\x1bt",
            "Field 'method' has invalid format: contains control character '\\u{1b}' "
            "which is not allowed",
        ),
    ],
)
async def test_jsonrpc_server_checks_of_the_method_name(
    cluster: Cluster, method: str, message: str
) -> None:
    api, _, _, ctx = await one_node(cluster)
    error = (await api.execute(ctx, method))["error"]
    assert error == {"type": "ParseError", "data": message}


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("se-t", "method name contains invalid character at position 2: '-'"),
        ("se t", "method name contains invalid character at position 2: ' '"),
        ("gét", "method name contains invalid character at position 1: 'é'"),
    ],
)
async def test_other_bad_method_names_are_refused_by_the_runtime(
    cluster: Cluster, method: str, message: str
) -> None:
    """merod's server passes them on; its runtime's validate_method_name refuses them."""
    api, _, _, ctx = await one_node(cluster)
    error = (await api.execute(ctx, method, {"key": "a", "value": "b"}))["error"]
    assert (error["type"], error["data"]) == ("FunctionCallError", message)
    assert await api.call(ctx, "len") == 0


async def test_jsonrpc_args_size_is_merods_estimate(cluster: Cluster) -> None:
    """merod counts each string of argsJson twice (escapes), plus its quotes."""
    api, _, _, ctx = await one_node(cluster)
    value = "v" * (5 * 1024 * 1024)
    error = (await api.execute(ctx, "set", {"key": "k", "value": value}))["error"]
    size = 2 + (3 * 2 + 3 + 1 * 2 + 2) + 1 + (5 * 2 + 3 + len(value) * 2 + 2)
    assert error == {
        "type": "ParseError",
        "data": f"Field 'args_json' exceeds maximum size of 10485760 bytes (got {size})",
    }


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


def _nested(levels: int, inner: bytes = b"") -> bytes:
    return b"[" * levels + inner + b"]" * levels


@pytest.mark.parametrize("levels", [128, 50_000, 200_000])
async def test_bodies_nested_past_serdes_limit_are_parse_errors(
    cluster: Cluster, caplog: pytest.LogCaptureFixture, levels: int
) -> None:
    # serde_json reads 127 levels of arrays and objects and refuses the next
    # one as a syntax error; Python's parser fails deeper, with a RecursionError
    api = await cluster.start("node-1")
    caplog.set_level(logging.INFO, logger="calimero_workflow.node")
    json_type = {"content-type": "application/json"}
    # the envelope object is the first level
    rpc = b'{"jsonrpc":"2.0","id":1,"method":"execute","params":' + _nested(levels - 1) + b"}"
    resp = await api.client.post(api.url + "/jsonrpc", content=rpc, headers=json_type)
    assert (resp.status_code, resp.text) == (
        400, "Failed to parse the request body as JSON: recursion limit exceeded"
    )
    admin = b'{"applicationId":' + _nested(levels - 1) + b"}"
    resp = await api.post("/admin-api/contexts", content=admin, headers=json_type)
    assert resp.status_code == 400
    assert resp.json() == {
        "error": "JSON syntax error: Failed to parse the request body as JSON: "
        "recursion limit exceeded"
    }
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    # the node goes on answering
    assert (await api.get("/admin-api/health")).status_code == 200


def test_serdes_nesting_limit_counts_arrays_and_objects_alike() -> None:
    def objects(levels: int) -> bytes:
        return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)

    assert load_json(objects(127)) and load_json(_nested(127))
    for body in (objects(128), _nested(128), _nested(64, objects(64))):
        with pytest.raises(NotJson, match="^recursion limit exceeded$"):
            load_json(body)
    # what an app returns or emits and Python cannot parse is text, not a crash
    deep = _nested(5000)
    assert _parse_json_or_text(deep) == deep.decode()


async def test_bodies_nested_up_to_serdes_limit_are_read(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    json_type = {"content-type": "application/json"}
    rpc = b'{"jsonrpc":"2.0","id":1,"method":"execute","params":' + _nested(126) + b"}"
    resp = await api.client.post(api.url + "/jsonrpc", content=rpc, headers=json_type)
    # read, then refused as serde refuses the payload: a JSON-RPC answer
    assert resp.status_code == 200 and resp.json()["error"]["type"] == "ParseError"
    admin = b'{"applicationId":' + _nested(126) + b"}"
    resp = await api.post("/admin-api/contexts", content=admin, headers=json_type)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith(INVALID_DATA)


async def test_jsonrpc_ids_are_echoed(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    unknown = (bytes([1]) * 32).hex()
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
    unknown = (bytes([1]) * 32).hex()
    assert (await api.rpc("sync_status", {"contextId": unknown}))["error"] == {
        "type": "ContextNotFound"
    }
    error = (await api.rpc("sync_status", {"contextId": b58encode(bytes(32))}))["error"]
    assert error["type"] == "ParseError" and "base58" in error["data"]


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
    assert HEX64.fullmatch(joined["memberAccount"])
    assert HEX64.fullmatch(joined["memberIdentity"])
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
