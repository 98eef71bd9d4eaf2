"""Constants and byte layouts of merod's wasm host ABI (the ``env`` import module).

Everything here is pure data handling with no wasmtime dependency, so it can be
reused by tools that inspect app binaries: the limits merod enforces, the
signatures of every host function the embedded node links, the ones it refuses
and why, merod's host error texts, decoders for the little-endian descriptors
the guest passes by pointer, a reader for wasm custom sections, and ed25519
signature verification for the ``ed25519_verify`` host call.

The sources are merod's ``crates/sys/src/lib.rs`` (what the SDK imports),
``crates/runtime/src/logic/host_functions/*.rs`` and ``errors.rs``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator

from ..ed25519 import BASE, L, add, decode_point, encode_point, mul, negate

__all__ = [
    "BUFFER",
    "DATA_REGISTER",
    "DEFAULT_GAS_LIMIT",
    "EVENT",
    "HOST_ERRORS",
    "HOST_FUNCTIONS",
    "LIMITS",
    "LOCATION",
    "Limits",
    "REFUSED_HOST_FUNCTIONS",
    "U64_MAX",
    "VALUE_RETURN",
    "XCALL",
    "custom_sections",
    "ed25519_public_key_valid",
    "ed25519_verify",
    "refusal_reason",
]

#: The register the Rust SDK uses for every host -> guest transfer. It is
#: ``usize::MAX - 1`` on wasm32, widened to u64 at the boundary.
DATA_REGISTER = 0xFFFF_FFFE

#: ``register_len`` answers this (i64 -1 as seen by the guest) for an unset register.
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF

#: merod's default gas budget per call; we meter with wasmtime fuel instead of
#: merod's own instruction counter, so the numbers are comparable, not identical.
DEFAULT_GAS_LIMIT = 1_000_000_000

# Value type letters used in HOST_FUNCTIONS: "I" = i64 (u64 on the Rust side),
# "i" = i32 (booleans and small status codes).
#: name -> (parameter types, result types). This is the full set our runtime
#: links: the ``env`` imports of merod's ``imports.rs`` that an app built with
#: the Rust SDK can import (``crates/sys/src/lib.rs``), plus the host-side
#: shims merod keeps for older builds (``executor_id``, ``fetch``). A module
#: importing anything else from ``env`` is refused at compile time, the way
#: merod refuses to link it; see REFUSED_HOST_FUNCTIONS for the names merod
#: does link but the embedded node cannot give real semantics.
HOST_FUNCTIONS: dict[str, tuple[str, str]] = {
    # panics
    "panic": ("I", ""),
    "panic_utf8": ("II", ""),
    # registers
    "register_len": ("I", "I"),
    "read_register": ("II", "i"),
    # identity
    "context_id": ("I", ""),
    "account_id": ("I", ""),
    "device_id": ("I", ""),
    "executor_id": ("I", ""),
    "xcall_origin": ("I", "i"),
    # input and output
    "input": ("I", ""),
    "value_return": ("I", ""),
    "emit_migration_witness": ("I", ""),
    "log_utf8": ("I", ""),
    "emit": ("I", ""),
    "emit_with_handler": ("II", ""),
    "xcall": ("I", ""),
    "commit": ("II", ""),
    # synchronised storage
    "storage_read": ("II", "i"),
    "storage_remove": ("II", "i"),
    "storage_write": ("III", "i"),
    # node-local ordered index and its validity markers
    "storage_index_set": ("II", "i"),
    "storage_index_remove": ("I", "i"),
    "storage_index_remove_prefix": ("I", "i"),
    "storage_index_scan": ("IIIII", "i"),
    "storage_index_last": ("III", "i"),
    "storage_index_meta_set": ("II", "i"),
    "storage_index_meta_get": ("II", "i"),
    "storage_index_meta_clear": ("I", "i"),
    # node-local private storage
    "private_storage_read": ("II", "i"),
    "private_storage_remove": ("II", "i"),
    "private_storage_write": ("II", "i"),
    # utilities
    "random_bytes": ("I", ""),
    "time_now": ("I", ""),
    "ed25519_verify": ("III", "i"),
    "fetch": ("IIIII", "i"),
    # streaming blobs
    "blob_create": ("", "I"),
    "blob_open": ("I", "I"),
    "blob_read": ("II", "I"),
    "blob_write": ("II", "I"),
    "blob_close": ("II", "i"),
    "blob_announce_to_context": ("II", "i"),
    "blob_open_in_context": ("II", "I"),
}

_NEEDS_TEE = "needs a TEE node, which the embedded node is not"
_JS_SDK = (
    "is a JS-SDK host function (host-side CRDTs for QuickJS apps); JS apps are "
    "not supported by the embedded node, use --backend docker"
)

#: Imports merod links (or linked) that the embedded node refuses at install
#: time, with the reason shown to the user. Anything not here and not in
#: HOST_FUNCTIONS is simply unknown to merod too.
REFUSED_HOST_FUNCTIONS: dict[str, str] = {
    "search_query": "needs the node's full-text search index, which the embedded node does not keep",
    "tee_origin": _NEEDS_TEE,
    "tee_random_bytes": _NEEDS_TEE,
    "tee_authority_keys": _NEEDS_TEE,
    "account_device_keys": "needs merod's account/device registry; embedded nodes have one device per account",
    "seal_to": "uses merod's sealing scheme (HKDF labels and AAD per purpose), which the embedded node does not reproduce",
    "open_sealed": "uses merod's sealing scheme (HKDF labels and AAD per purpose), which the embedded node does not reproduce",
    "shared_writers": "needs merod's governance-resolved writer sets of SharedStorage cells",
    "shared_writers_rotate": "needs merod's governance-resolved writer sets of SharedStorage cells",
    "send_proposal": "was removed from merod in 2026-03 (proxy-contract proposals); rebuild against a current SDK",
    "approve_proposal": "was removed from merod in 2026-03 (proxy-contract proposals); rebuild against a current SDK",
    "js_std_d_print": _JS_SDK,
    "persist_root_state": _JS_SDK,
    "read_root_state": _JS_SDK,
    "apply_storage_delta": _JS_SDK,
    "flush_delta": _JS_SDK,
    "register_js_sdk_root_merge": _JS_SDK,
}


def refusal_reason(name: str) -> str | None:
    """Why the embedded node refuses ``env.<name>``, or None if it is not refused."""
    reason = REFUSED_HOST_FUNCTIONS.get(name)
    if reason is None and name.startswith("js_"):
        reason = _JS_SDK
    return reason


#: merod's ``HostError`` display texts (``crates/runtime/src/errors.rs``). A
#: failing host call reports exactly these as the ``FunctionCallError`` text;
#: the embedded node adds its own explanation only to the node log.
HOST_ERRORS = {
    "memory": "invalid memory access",
    "utf8": "invalid UTF-8 string",
    "deserialization": "deserialization error",
    "key": "key length overflow",
    "value": "value length overflow",
    "log_size": "log size overflow",
    "logs": "logs overflow",
    "events": "events overflow",
    "event_kind": "event kind size overflow",
    "event_data": "event data size overflow",
    "xcalls": "xcalls overflow",
    "xcall_function": "xcall function size overflow",
    "xcall_params": "xcall params size overflow",
    "ed25519_key": "incorrect ed25519 public key",
    "blobs_unsupported": "blob operations not supported (NodeClient not available)",
    "blob_handle": "invalid blob handle",
}


class Limits:
    """Per-call resource limits, mirroring merod's ``VMLimits`` defaults."""

    max_registers = 100
    max_register_size = 100 << 20
    #: Total bytes across all registers, each register counting 8 bytes more.
    max_registers_capacity = 1 << 30
    max_logs = 1024
    max_log_size = 16 << 10
    max_events = 100
    max_event_kind_size = 100
    max_event_data_size = 16 << 10
    #: Cross-context calls one execution may queue (merod's breadth ``B``).
    max_xcalls = 8
    max_xcall_function_size = 100
    max_xcall_params_size = 16 << 10
    max_value_return_size = 16 << 20
    max_storage_key_size = 1 << 20
    max_storage_value_size = 10 << 20
    max_blob_handles = 100
    max_blob_chunk_size = 10 << 20
    max_artifact_size = 16 << 20
    #: Method names, and the handler names of ``emit_with_handler``.
    max_method_name_size = 256
    max_module_size = 128 << 20
    #: ``max_memory_pages`` (1024) of 64 KiB.
    max_memory_size = 1024 << 16


LIMITS = Limits()

# Descriptor layouts (all little-endian, #[repr(C)] on the Rust side).
BUFFER = struct.Struct("<QQ")  # ptr, len
LOCATION = struct.Struct("<QQII")  # file ptr, file len, line, column
EVENT = struct.Struct("<QQQQ")  # kind ptr, kind len, data ptr, data len
VALUE_RETURN = struct.Struct("<QQQ")  # discriminant, payload ptr, payload len
XCALL = struct.Struct("<QQQQQQ")  # context id, function and params buffers


def _read_leb128(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated LEB128 integer")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 35:
            raise ValueError("LEB128 integer too long for a u32")


def custom_sections(wasm: bytes) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, payload)`` for every custom section of a wasm binary.

    Raises ``ValueError`` for a binary whose section framing is broken; callers
    compile the module first, so in practice this only sees valid binaries.
    """
    if wasm[:4] != b"\0asm":
        raise ValueError("not a wasm binary (missing \\0asm magic)")
    pos = 8
    while pos < len(wasm):
        section_id = wasm[pos]
        size, pos = _read_leb128(wasm, pos + 1)
        end = pos + size
        if end > len(wasm):
            raise ValueError(f"section at offset {pos} runs past the end of the file")
        if section_id == 0:
            name_len, name_start = _read_leb128(wasm, pos)
            name_end = name_start + name_len
            if name_end > end:
                raise ValueError(f"custom section name at offset {pos} is truncated")
            yield (
                wasm[name_start:name_end].decode("utf-8", "replace"),
                wasm[name_end:end],
            )
        pos = end


# --- ed25519 -------------------------------------------------------------------
#
# merod verifies with ed25519-dalek, which rejects a public key that does not
# decode to a curve point (a host error) and otherwise answers true/false. The
# `cryptography` package does not expose point validation, so decoding is done
# here in pure Python (cheap: one modular square root); the signature check
# itself uses `cryptography` when it is importable and falls back to the pure
# Python RFC 8032 verifier below (the curve is in calimero_workflow.ed25519).


def ed25519_public_key_valid(public_key: bytes) -> bool:
    """Whether ``public_key`` is 32 bytes that decode to a point on the curve."""
    return decode_point(public_key) is not None


def _verify_pure(signature: bytes, public_key: bytes, message: bytes) -> bool:
    point_a = decode_point(public_key)
    if point_a is None or len(signature) != 64:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    h = (
        int.from_bytes(
            hashlib.sha512(signature[:32] + public_key + message).digest(), "little"
        )
        % L
    )
    # Check [s]B - [h]A == R by encoding, the cofactorless equation dalek uses.
    candidate = add(mul(s, BASE), mul(h, negate(point_a)))
    return encode_point(candidate) == signature[:32]


def _verify_cryptography(signature: bytes, public_key: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


try:
    import cryptography.hazmat.primitives.asymmetric.ed25519  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    _verify_impl = _verify_pure
else:
    _verify_impl = _verify_cryptography


def ed25519_verify(signature: bytes, public_key: bytes, message: bytes) -> bool:
    """Verify an ed25519 ``signature`` of ``message`` under ``public_key``.

    The caller checks the key with :func:`ed25519_public_key_valid` first; an
    invalid key is a host error in merod, not a ``False``.
    """
    return _verify_impl(signature, public_key, message)
