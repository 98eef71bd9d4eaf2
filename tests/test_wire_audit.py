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

from typing import Any

import pytest
import wasmtime

from calimero_workflow.node.abi import LIMITS
from node_fixtures import Cluster, cluster, node_runtime

__all__ = ["cluster", "node_runtime"]  # fixtures used by name


def audit(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"wire-audit: {reason}")


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


# -- runtime limits ------------------------------------------------------------------


@audit("max_xcalls is 100 here; merod's DEFAULT_MAX_XCALLS is 8")
def test_xcall_breadth_limit() -> None:
    """crates/runtime/src/logic.rs: DEFAULT_MAX_XCALLS = 8."""
    assert LIMITS.max_xcalls == 8


@audit("max_module_size is 10 MiB here; merod's DEFAULT_MAX_MODULE_SIZE_MIB is 128")
def test_module_size_limit() -> None:
    """crates/runtime/src/logic.rs: DEFAULT_MAX_MODULE_SIZE_MIB = 128."""
    assert LIMITS.max_module_size == 128 << 20
