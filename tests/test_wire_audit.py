"""Wire differences between this project and merod at the HEAD of calimero-network/core.

Each test states what current merod does (the core file that says so is
named in the test's docstring) and checks that our client or embedded node
does the same. They are marked ``xfail(strict=True)``: today they fail, which
reproduces the difference. Once a difference is fixed, its test passes,
strict xfail turns that into a failure, and the marker should then be removed.

Core revision: the newest crawled files of calimero-network/core (0.11.0-rc.27
and later, where every 32-byte id is 64 hex characters and request bodies deny
unknown fields).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import wasmtime

from calimero_workflow.node.abi import LIMITS
from node_fixtures import KV_STORE_WASM, Cluster, cluster, node_runtime

__all__ = ["cluster", "node_runtime"]  # fixtures used by name

HEX64 = re.compile(r"[0-9a-f]{64}")


def audit(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"wire-audit: {reason}")


# -- the embedded node against HEAD merod's shapes ---------------------------------


@audit("embedded node requires `metadata`; HEAD merod takes `{path}` only")
async def test_node_install_dev_application_takes_path_only(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    resp = await api.post(
        "/admin-api/install-dev-application", {"path": str(KV_STORE_WASM)}
    )
    assert resp.status_code == 200, resp.text


@audit(
    "embedded node accepts unknown fields; HEAD merod's admin bodies deny them (400)"
)
async def test_node_refuses_unknown_fields_in_admin_bodies(cluster: Cluster) -> None:
    """crates/server/primitives/tests/deny_unknown_fields.rs lists every request body."""
    api = await cluster.start("node-1")
    app_id = await api.install_kv_store()
    resp = await api.post(
        "/admin-api/namespaces", {"applicationId": app_id, "upgradePolicy": "Automatic"}
    )
    assert resp.status_code == 400, resp.text
    assert "unknown field `upgradePolicy`" in resp.json()["error"]


@audit(
    "embedded node renders ids as base58; HEAD merod renders every 32-byte id as 64 hex"
)
async def test_node_ids_are_64_hex(cluster: Cluster) -> None:
    """crates/primitives/src/tests/encoding.rs: Hash, ContextId, ApplicationId,
    BlobId, PublicKey, AccountId and DeviceId all render (and parse) as 64 hex;
    base58 is refused."""
    api = await cluster.start("node-1")
    app_id = await api.install_kv_store()
    ns = await api.create_namespace(app_id)
    created = await api.data(
        "POST",
        "/admin-api/contexts",
        {"applicationId": app_id, "groupId": ns, "initializationParams": []},
    )
    got = await api.data("GET", f"/admin-api/contexts/{created['contextId']}")
    for value in (
        app_id,
        created["contextId"],
        created["memberPublicKey"],
        got["contextStateHash"],
    ):
        assert HEX64.fullmatch(value), value


# An app whose `init` traps unless its input is empty, as it is on merod when
# `initializationParams` is [] (the node hands init the bytes verbatim).
EMPTY_INPUT_INIT_WAT = r"""
(module
  (import "env" "input" (func $input (param i64)))
  (import "env" "register_len" (func $register_len (param i64) (result i64)))
  (memory (export "memory") 1)
  (func (export "init")
    (call $input (i64.const 1))
    (if (i64.ne (call $register_len (i64.const 1)) (i64.const 0))
      (then unreachable)))
)
"""


@audit(
    "embedded node runs init with b'{}' when initializationParams is []; merod passes b''"
)
async def test_init_gets_the_initialization_params_verbatim(
    cluster: Cluster, tmp_path: Any
) -> None:
    api = await cluster.start("node-1")
    app_file = tmp_path / "empty_input_init.wasm"
    app_file.write_bytes(wasmtime.wat2wasm(EMPTY_INPUT_INIT_WAT))
    app_id = (
        await api.data(
            "POST",
            "/admin-api/install-dev-application",
            {"path": str(app_file), "metadata": []},
        )
    )["applicationId"]
    ns = await api.create_namespace(app_id)
    resp = await api.post(
        "/admin-api/contexts",
        {"applicationId": app_id, "groupId": ns, "initializationParams": []},
    )
    assert resp.status_code == 200, resp.text


@audit(
    "embedded node answers ParseError for a method name with '-' or ' '; merod runs it "
    "and the runtime answers FunctionCallError"
)
async def test_method_name_characters_are_checked_by_the_runtime(
    cluster: Cluster,
) -> None:
    """crates/server/primitives/src/validation.rs: validate_method_name refuses only
    empty, >256 bytes and ASCII control characters; crates/runtime/src/lib.rs
    validate_method_name refuses the rest as MethodResolutionError."""
    api = await cluster.start("node-1")
    app_id = await api.install_kv_store()
    ns = await api.create_namespace(app_id)
    ctx = await api.create_context(app_id, ns)
    error = (await api.execute(ctx, "se-t", {"key": "a", "value": "b"}))["error"]
    assert error == {
        "type": "FunctionCallError",
        "data": "method name contains invalid character at position 2: '-'",
    }


@audit(
    "a stray envelope key gets our own wording; merod's adjacently tagged enum says "
    '`invalid value: string "bogus", expected "method" or "params"`'
)
async def test_stray_envelope_key_parse_error_text(cluster: Cluster) -> None:
    """crates/server/primitives/tests/deny_unknown_fields.rs,
    a_stray_envelope_key_is_refused_by_the_payload."""
    api = await cluster.start("node-1")
    envelope = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "sync_status",
        "params": {"contextId": "x"},
        "bogus": 1,
    }
    body = (await api.client.post(api.url + "/jsonrpc", json=envelope)).json()
    assert body["error"]["type"] == "ParseError"
    assert 'string "bogus", expected "method" or "params"' in body["error"]["data"]


# -- runtime limits ------------------------------------------------------------------


@audit("max_xcalls is 100 here; merod's DEFAULT_MAX_XCALLS is 8")
def test_xcall_breadth_limit() -> None:
    """crates/runtime/src/logic.rs: DEFAULT_MAX_XCALLS = 8."""
    assert LIMITS.max_xcalls == 8


@audit("max_module_size is 10 MiB here; merod's DEFAULT_MAX_MODULE_SIZE_MIB is 128")
def test_module_size_limit() -> None:
    """crates/runtime/src/logic.rs: DEFAULT_MAX_MODULE_SIZE_MIB = 128."""
    assert LIMITS.max_module_size == 128 << 20
