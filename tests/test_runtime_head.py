"""The host functions of current merod beyond the fixture-era set, through the runtime.

``tests/wasm/head_probe.c`` declares them as the current SDK's calimero-sys
does; each test drives one of its exports and checks what merod's host
implementation would produce: return codes, register contents, outcome fields
and merod's error texts.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import pytest

from calimero_workflow.node import abi
from calimero_workflow.node.runtime import AppModule, Event, Outcome, WasmRuntime, XCall

# Fixtures (runtime, c_test_wasm) live in tests/wasm_fixtures.py.
pytest_plugins = ["wasm_fixtures"]

pytestmark = pytest.mark.wasm_toolchain

CTX = bytes(range(32))
DEVICE = bytes(range(100, 132))
ACCOUNT = bytes(range(200, 232))


@pytest.fixture
def probe(runtime: WasmRuntime, c_test_wasm: dict[str, bytes]) -> AppModule:
    return runtime.compile(c_test_wasm["head_probe"])


class Blobs:
    """A dict-backed blob store; ``peers`` holds blobs only other nodes have."""

    def __init__(self) -> None:
        self.local: dict[bytes, bytes] = {}
        self.peers: dict[bytes, bytes] = {}
        self.announced: list[tuple[bytes, bytes]] = []

    def get(self, blob_id: bytes) -> bytes | None:
        return self.local.get(blob_id)

    def put(self, data: bytes) -> bytes:
        blob_id = hashlib.sha256(data).digest()
        self.local[blob_id] = data
        return blob_id

    def announce(self, blob_id: bytes, context_id: bytes) -> bool:
        self.announced.append((blob_id, context_id))
        return True

    def fetch(self, blob_id: bytes, context_id: bytes) -> bytes | None:
        if blob_id not in self.local and blob_id in self.peers:
            self.local[blob_id] = self.peers[blob_id]
        return self.local.get(blob_id)


class Replica:
    """One node's node-local stores, applied from outcomes like the service does."""

    def __init__(self, module: AppModule) -> None:
        self.module = module
        self.private: dict[bytes, bytes] = {}
        self.index: dict[bytes, bytes] = {}
        self.meta: dict[bytes, bytes] = {}
        self.blobs = Blobs()

    def run(self, method: str, data: bytes = b"", **kwargs: Any) -> Outcome:
        kwargs.setdefault("private_storage", self.private)
        kwargs.setdefault("index", self.index)
        kwargs.setdefault("index_meta", self.meta)
        kwargs.setdefault("blobs", self.blobs)
        outcome = self.module.run(
            method, data, storage={}, context_id=CTX, executor_id=DEVICE, **kwargs
        )
        if outcome.failure is None:
            for target, writes in (
                (self.private, outcome.private_writes),
                (self.index, outcome.index_writes),
                (self.meta, outcome.index_meta_writes),
            ):
                for key, value in writes.items():
                    if value is None:
                        target.pop(key, None)
                    else:
                        target[key] = value
        return outcome

    def ok(self, method: str, data: bytes = b"", **kwargs: Any) -> bytes:
        outcome = self.run(method, data, **kwargs)
        assert outcome.failure is None, outcome.failure
        return outcome.returns or b""


def failure(outcome: Outcome) -> str:
    assert outcome.failure is not None, "expected the call to fail"
    return outcome.failure.message


def decode_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """The register encoding of storage_index_scan/last (HOST_FUNCTIONS.md)."""
    (count,) = struct.unpack_from("<I", data)
    pos, pairs = 4, []
    for _ in range(count):
        (klen,) = struct.unpack_from("<I", data, pos)
        key = data[pos + 4 : pos + 4 + klen]
        pos += 4 + klen
        (vlen,) = struct.unpack_from("<I", data, pos)
        pairs.append((key, data[pos + 4 : pos + 4 + vlen]))
        pos += 4 + vlen
    assert pos == len(data), "trailing bytes after the encoded pairs"
    return pairs


# --- identity --------------------------------------------------------------------


def test_account_device_and_executor_ids(probe: AppModule) -> None:
    returns = Replica(probe).ok("identity", account_id=ACCOUNT)
    assert returns[:32] == CTX
    assert returns[32:64] == ACCOUNT
    assert returns[64:96] == DEVICE
    # executor_id is merod's shim for pre-split builds: it answers the account.
    assert returns[96:128] == ACCOUNT
    # A direct call has no xcall origin: 0 and the register untouched.
    assert returns[128:] == b"\x00"


def test_account_defaults_to_the_device(probe: AppModule) -> None:
    returns = Replica(probe).ok("identity")
    assert returns[32:64] == returns[64:96] == DEVICE


def test_xcall_origin_is_reported_for_an_xcall(probe: AppModule) -> None:
    origin = bytes([9]) * 32
    returns = Replica(probe).ok("identity", xcall_origin=origin)
    assert returns[128:] == b"\x01" + origin


# --- private storage ---------------------------------------------------------------


def private(op: str, key: bytes, value: bytes = b"") -> bytes:
    return op.encode() + bytes([len(key)]) + key + value


def test_private_storage_is_node_local_and_persists_across_calls(probe: AppModule) -> None:
    node = Replica(probe)
    assert node.ok("private", private("w", b"secret", b"42")) == b"\x01"
    assert node.private == {b"secret": b"42"}
    assert node.ok("private", private("r", b"secret")) == b"\x0142"
    assert node.ok("private", private("r", b"other")) == b"\x00"
    assert node.ok("private", private("d", b"secret")) == b"\x0142"
    assert node.private == {}
    assert node.ok("private", private("d", b"secret")) == b"\x00"
    # Synchronised storage is untouched.
    outcome = node.run("private", private("w", b"k", b"v"))
    assert outcome.writes == {} and outcome.root_hash is None


def test_private_storage_overlay_within_one_call(probe: AppModule) -> None:
    node = Replica(probe)
    node.private[b"k"] = b"old"
    # write 1 | read 1 "v1" | remove 1 "v1" | read 0
    assert node.ok("private_sequence", b"k") == b"\x01\x01v1\x01v1\x00"
    assert node.private == {}


def test_private_storage_without_a_backend_answers_zero(probe: AppModule) -> None:
    # merod's VMLogic without private storage: writes and reads answer 0.
    node = Replica(probe)
    assert node.ok("private", private("w", b"k", b"v"), private_storage=None) == b"\x00"
    assert node.ok("private", private("r", b"k"), private_storage=None) == b"\x00"


def test_private_storage_writes_of_a_failed_call_are_dropped(
    probe: AppModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Replica(probe)
    monkeypatch.setattr(abi.LIMITS, "max_value_return_size", 0)
    outcome = node.run("private", private("w", b"k", b"v"))
    assert failure(outcome) == "return value too large (size: 1, max: 0)"
    assert outcome.private_writes == {} and node.private == {}


def test_private_storage_key_limit(
    probe: AppModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(abi.LIMITS, "max_storage_key_size", 3)
    outcome = Replica(probe).run("private", private("r", b"long"))
    assert failure(outcome) == "key length overflow"


# --- ordered index -------------------------------------------------------------------


def scan(node: Replica, lo: bytes, hi: bytes, offset: int = 0, limit: int = 0) -> list[Any]:
    data = bytes([len(lo)]) + lo + bytes([len(hi)]) + hi + bytes([offset, limit])
    returns = node.ok("index_scan", data)
    assert returns[0] == 1
    return decode_pairs(returns[1:])


def test_index_scan_is_ordered_half_open_with_offset_and_n_plus_1_limit(
    probe: AppModule,
) -> None:
    node = Replica(probe)
    for key in (b"c/2", b"a/1", b"c/1", b"b/9", b"c/3"):
        assert node.ok("index_set", bytes([len(key)]) + key + b"id" + key) == b"\x01"
    everything = [(k, b"id" + k) for k in (b"a/1", b"b/9", b"c/1", b"c/2", b"c/3")]
    assert scan(node, b"", b"\xff") == everything
    # [lo, hi): hi itself is excluded.
    assert scan(node, b"c/", b"c/3") == everything[2:4]
    assert scan(node, b"c/", b"c0", offset=1) == everything[3:]
    # limit is n + 1 encoded: 0 = unbounded, 1 = none, 3 = two results.
    assert scan(node, b"", b"\xff", limit=1) == []
    assert scan(node, b"", b"\xff", limit=3) == everything[:2]
    assert scan(node, b"", b"\xff", offset=2, limit=3) == everything[2:4]
    # An empty or inverted range finds nothing (RocksDB semantics).
    assert scan(node, b"z", b"a") == []


def test_index_last_remove_and_remove_prefix(probe: AppModule) -> None:
    node = Replica(probe)
    for key in (b"p/1", b"p/2", b"q/1"):
        node.ok("index_set", bytes([len(key)]) + key + b"v")

    def last(lo: bytes, hi: bytes) -> list[Any]:
        returns = node.ok("index_last", bytes([len(lo)]) + lo + bytes([len(hi)]) + hi)
        assert returns[0] == 1
        return decode_pairs(returns[1:])

    assert last(b"p/", b"p0") == [(b"p/2", b"v")]
    assert last(b"r", b"s") == []
    assert node.ok("index_remove", b"p/2") == b"\x01"
    assert last(b"p/", b"p0") == [(b"p/1", b"v")]
    assert node.ok("index_remove_prefix", b"p/") == b"\x01"
    assert node.index == {b"q/1": b"v"}


def test_index_call_sees_its_own_writes(probe: AppModule) -> None:
    node = Replica(probe)
    assert decode_pairs(node.ok("index_sequence")) == [(b"a", b"1"), (b"c", b"3")]
    assert node.index == {b"a": b"1", b"c": b"3"}


def test_index_validity_markers(probe: AppModule) -> None:
    node = Replica(probe)
    assert node.ok("meta", b"g\x04coll") == b"\x00"
    assert node.ok("meta", b"s\x04collhash") == b"\x01"
    assert node.ok("meta", b"g\x04coll") == b"\x01hash"
    assert node.ok("meta", b"c\x04coll") == b"\x01"
    assert node.ok("meta", b"g\x04coll") == b"\x00"
    # Markers and index entries are separate keyspaces.
    assert node.index == {} and node.meta == {}


def test_index_without_a_backend(probe: AppModule) -> None:
    # merod's storage without an ordered index: writes are "not persisted" (0),
    # scans find nothing but still answer 1 with an empty encoding.
    node = Replica(probe)
    none = {"index": None, "index_meta": None}
    assert node.ok("index_set", b"\x01kv", **none) == b"\x00"
    assert node.ok("index_scan", b"\x00\x01\xff\x00\x00", **none) == b"\x01" + bytes(4)
    assert node.ok("meta", b"s\x01kv", **none) == b"\x00"


def test_index_bounds_are_capped_like_storage_keys(
    probe: AppModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(abi.LIMITS, "max_storage_key_size", 2)
    node = Replica(probe)
    assert failure(node.run("index_scan", b"\x03abc\x00\x00\x00")) == "key length overflow"
    assert failure(node.run("index_set", b"\x03abcv")) == "key length overflow"


# --- xcall, handlers, witness ------------------------------------------------------------


def xcall_input(context: bytes, function: bytes, params: bytes) -> bytes:
    return bytes([len(context)]) + context + bytes([len(function)]) + function + params


def test_xcall_queues_calls_in_order(probe: AppModule) -> None:
    target = bytes([7]) * 32
    outcome = Replica(probe).run("xcall", xcall_input(target, b"receive", b'{"a":1}'))
    assert outcome.failure is None
    assert outcome.xcalls == [XCall(target, "receive", b'{"a":1}')] * 2


def test_xcall_limits_and_context_size(
    probe: AppModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = Replica(probe)
    short = node.run("xcall", xcall_input(bytes(31), b"f", b""))
    assert failure(short) == "invalid memory access"
    assert short.xcalls == []
    long_name = node.run("xcall", xcall_input(bytes(32), b"f" * 101, b""))
    assert failure(long_name) == "xcall function size overflow"
    big = node.run("xcall", xcall_input(bytes(32), b"f", b"p" * (16 * 1024 + 1)))
    assert failure(big) == "xcall params size overflow"
    monkeypatch.setattr(abi.LIMITS, "max_xcalls", 1)
    assert failure(node.run("xcall", xcall_input(bytes(32), b"f", b""))) == "xcalls overflow"


def test_emit_with_handler(probe: AppModule) -> None:
    node = Replica(probe)
    with_handler = node.run("emit_handler", b"\x07on_ping" + b'{"k":1}')
    assert with_handler.events == [Event("Pinged", b'{"k":1}', "on_ping")]
    # A null handler pointer is a plain event.
    plain = node.run("emit_handler", b"\xff" + b"data")
    assert plain.events == [Event("Pinged", b"data", None)]
    too_long = node.run("emit_handler", b"\xfe" + b"h" * 254)
    assert too_long.failure is None
    assert too_long.events[0].handler == "h" * 254
    bad = node.run("emit_handler", b"\x01\xff")
    assert failure(bad) == "invalid UTF-8 string"


def test_emit_with_handler_name_limit(
    probe: AppModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The handler shares the method-name limit (the probe's own method name,
    # "emit_handler", is 12 bytes and must still fit).
    monkeypatch.setattr(abi.LIMITS, "max_method_name_size", 15)
    outcome = Replica(probe).run("emit_handler", b"\x14" + b"h" * 20)
    assert failure(outcome) == "event handler name too large (size: 20, max: 15)"


def test_migration_witness_rides_the_outcome(
    probe: AppModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = Replica(probe).run("witness", b"borsh-witness")
    assert outcome.failure is None and outcome.migration_witness == b"borsh-witness"
    assert outcome.writes == {}
    monkeypatch.setattr(abi.LIMITS, "max_storage_value_size", 4)
    assert failure(Replica(probe).run("witness", b"12345")) == "value length overflow"


# --- blobs ---------------------------------------------------------------------------------


def test_blob_write_then_read_back(probe: AppModule) -> None:
    node = Replica(probe)
    data = b"streamed through two writes and read in chunks"
    returns = node.ok("blob_roundtrip", data)
    create_fd, blob_id, open_fd = returns[:8], returns[8:40], returns[40:48]
    assert int.from_bytes(create_fd, "little") == 1
    assert int.from_bytes(open_fd, "little") == 2  # descriptors count up from 1
    assert blob_id == hashlib.sha256(data).digest()
    assert node.blobs.local == {blob_id: data}
    assert returns[48:] == data


def test_blob_read_of_a_stored_and_a_missing_blob(probe: AppModule) -> None:
    node = Replica(probe)
    blob_id = node.blobs.put(b"x" * 20)
    assert node.ok("blob_read_id", blob_id) == b"x" * 20
    # Opening does not look the blob up; a missing blob reads as empty.
    assert node.ok("blob_read_id", bytes(32)) == b""
    assert failure(node.run("blob_read_id", bytes(31))) == "invalid memory access"


def test_blob_announce_and_open_in_context(probe: AppModule) -> None:
    node = Replica(probe)
    blob_id = node.blobs.put(b"announced")
    assert node.ok("blob_announce", blob_id) == b"\x01"
    assert node.blobs.announced == [(blob_id, CTX)]
    unknown = node.run("blob_announce", bytes(32))
    assert failure(unknown) == abi.HOST_ERRORS["blobs_unsupported"]

    remote = b"only a peer has this"
    remote_id = hashlib.sha256(remote).digest()
    node.blobs.peers[remote_id] = remote
    assert node.ok("blob_open_ctx", remote_id) == b"\x01" + remote
    assert node.blobs.local[remote_id] == remote
    assert node.ok("blob_open_ctx", bytes(32)) == b"\x00"


def test_blob_handle_errors(probe: AppModule) -> None:
    node = Replica(probe)
    assert failure(node.run("blob_bad_fd")) == "invalid blob handle"
    assert failure(node.run("blob_write_read_handle")) == "invalid blob handle"
    assert failure(node.run("blob_close_short")) == "invalid memory access"
    assert failure(node.run("blob_many")) == "too many blob handles (max: 100)"


def test_blob_chunk_limits(probe: AppModule, monkeypatch: pytest.MonkeyPatch) -> None:
    node = Replica(probe)
    monkeypatch.setattr(abi.LIMITS, "max_blob_chunk_size", 4)
    written = node.run("blob_roundtrip", b"0123456789")
    assert failure(written) == "blob write too large (size: 5, max: 4)"
    blob_id = node.blobs.put(b"abc")
    read = node.run("blob_read_id", blob_id)  # reads in chunks of 7
    assert failure(read) == "blob buffer too large (size: 7, max: 4)"


def test_blobs_without_a_blob_store(probe: AppModule) -> None:
    outcome = Replica(probe).run("blob_roundtrip", b"data", blobs=None)
    assert failure(outcome) == "blob operations not supported (NodeClient not available)"


def test_a_closed_blob_is_kept_when_the_call_fails(
    probe: AppModule, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in merod, blob_close hands the blob to the store at once.
    node = Replica(probe)
    monkeypatch.setattr(abi.LIMITS, "max_value_return_size", 0)
    outcome = node.run("blob_roundtrip", b"kept")
    assert outcome.failure is not None
    assert node.blobs.local == {hashlib.sha256(b"kept").digest(): b"kept"}


# --- fetch -------------------------------------------------------------------------------------


def test_fetch_is_blocked_like_merod(probe: AppModule) -> None:
    # merod answers 1 (failure) with this text in the register and reads none of
    # the (here out-of-bounds) arguments, so no request can leave the node.
    returns = Replica(probe).ok("fetch_blocked")
    assert returns == b"\x01Host function 'fetch' is temporarily disabled."


# --- both bindings -------------------------------------------------------------------------------

# `panic` (no message) and `commit` are imported by neither C probe.
PANIC_AND_COMMIT = """(module
  (import "env" "panic" (func $panic (param i64)))
  (import "env" "commit" (func $commit (param i64 i64)))
  (memory (export "memory") 1)
  (data (i32.const 256) "p.rs")
  (data (i32.const 512) "0123456789abcdef0123456789abcdef")
  (data (i32.const 600) "art")
  (func $descriptors
    (i64.store (i32.const 0) (i64.const 512))
    (i64.store (i32.const 8) (i64.const 32))
    (i64.store (i32.const 16) (i64.const 600))
    (i64.store (i32.const 24) (i64.const 3)))
  (func (export "commit")
    (call $descriptors)
    (call $commit (i64.const 0) (i64.const 16)))
  (func (export "commit_twice")
    (call $descriptors)
    (call $commit (i64.const 0) (i64.const 16))
    (call $commit (i64.const 0) (i64.const 16)))
  (func (export "boom")
    (i64.store (i32.const 32) (i64.const 256))
    (i64.store (i32.const 40) (i64.const 4))
    (i32.store (i32.const 48) (i32.const 3))
    (i32.store (i32.const 52) (i32.const 5))
    (call $panic (i64.const 32))))"""


class BrokenBlobs(Blobs):
    """A blob store with a bug: the host must report it as its own failure."""

    def fetch(self, blob_id: bytes, context_id: bytes) -> bytes | None:
        raise RuntimeError("blob store exploded")


def test_every_host_function_gives_the_same_outcomes_through_both_bindings(
    c_test_wasm: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Host calls normally go through wasmtime's C API; without it the runtime
    # falls back to wasmtime-py's public define_func. Every function of the
    # table must be reached through both, with exactly the same results.
    import dataclasses

    import wasmtime

    from calimero_workflow.node import runtime as runtime_module
    from calimero_workflow.node.ids import Keypair

    called: set[str] = set()
    for name in abi.HOST_FUNCTIONS:
        original = getattr(runtime_module._Host, name)

        def counted(
            self: Any, call: Any, *args: int, _name: str = name, _f: Any = original
        ) -> Any:
            called.add(_name)
            return _f(self, call, *args)

        monkeypatch.setattr(runtime_module._Host, name, counted)

    key = Keypair.generate()
    signature = key.sign(b"signed")
    origin = bytes([9]) * 32
    remote = b"only a peer has this"
    remote_id = hashlib.sha256(remote).digest()

    def dump(outcome: Outcome) -> dict[str, Any]:
        fields = dataclasses.asdict(outcome)
        del fields["duration_s"]
        return fields

    def outcomes() -> tuple[list[dict[str, Any]], set[str]]:
        called.clear()
        rt = WasmRuntime()
        node = Replica(rt.compile(c_test_wasm["head_probe"]))
        node.blobs.peers[remote_id] = remote
        stored = node.blobs.put(b"x" * 20)
        probe_calls: list[tuple[str, bytes, dict[str, Any]]] = [
            ("identity", b"", {"account_id": ACCOUNT, "xcall_origin": origin}),
            ("identity", b"", {}),
            ("private", private("w", b"secret", b"42"), {}),
            ("private", private("r", b"secret"), {}),
            ("private", private("d", b"secret"), {}),
            ("private", private("w", b"k", b"v"), {"private_storage": None}),
            ("private_sequence", b"k", {}),
            ("index_set", b"\x03c/2idc2", {}),
            ("index_set", b"\x03a/1ida1", {}),
            ("index_set", b"\x03c/1idc1", {}),
            ("index_scan", b"\x00\x01\xff\x01\x03", {}),
            ("index_last", b"\x02c/\x02c0", {}),
            ("index_remove", b"c/2", {}),
            ("index_remove_prefix", b"a/", {}),
            ("index_sequence", b"", {}),
            ("index_set", b"\x01kv", {"index": None}),
            ("meta", b"s\x04collhash", {}),
            ("meta", b"g\x04coll", {}),
            ("meta", b"c\x04coll", {}),
            ("xcall", xcall_input(bytes([7]) * 32, b"receive", b'{"a":1}'), {}),
            ("xcall", xcall_input(bytes(31), b"f", b""), {}),
            ("emit_handler", b"\x07on_ping" + b'{"k":1}', {}),
            ("emit_handler", b"\xff" + b"data", {}),
            ("emit_handler", b"\x01\xff", {}),
            ("witness", b"borsh-witness", {}),
            ("blob_roundtrip", b"streamed through two writes", {}),
            ("blob_roundtrip", b"data", {"blobs": None}),
            ("blob_read_id", stored, {}),
            ("blob_read_id", bytes(32), {}),
            ("blob_read_id", bytes(31), {}),
            ("blob_announce", stored, {}),
            ("blob_announce", bytes(32), {}),
            ("blob_open_ctx", remote_id, {}),
            ("blob_open_ctx", bytes(32), {}),
            ("blob_open_ctx", remote_id, {"blobs": BrokenBlobs()}),
            ("blob_bad_fd", b"", {}),
            ("blob_write_read_handle", b"", {}),
            ("blob_close_short", b"", {}),
            ("blob_many", b"", {}),
            ("fetch_blocked", b"", {}),
        ]
        seen = [dump(node.run(m, data, **kwargs)) for m, data, kwargs in probe_calls]
        seen.append(
            {
                "private": node.private,
                "index": node.index,
                "meta": node.meta,
                "blobs": node.blobs.local,
                "announced": node.blobs.announced,
            }
        )

        older = rt.compile(c_test_wasm["host_probe"])

        def run_older(method: str, data: bytes = b"", **kwargs: Any) -> Outcome:
            kwargs.setdefault("storage", {})
            return older.run(method, data, context_id=CTX, executor_id=DEVICE, **kwargs)

        seen += [
            dump(run_older("ids")),
            dump(run_older("storage", b"k")),
            dump(run_older("environment", b"{}", clock=lambda: 77, random=lambda n: b"r" * n)),
            dump(run_older("verify", signature + key.public + b"signed")),
            dump(run_older("verify", signature + key.public + b"tampered")),
            dump(run_older("verify", signature + bytes([2]) + bytes(31) + b"signed")),
            dump(run_older("fail")),
        ]
        with pytest.raises(KeyboardInterrupt):
            run_older("environment", clock=_interrupt)
        seen.append(dump(run_older("environment", clock=lambda: 5, random=bytes)))

        wat = rt.compile(wasmtime.wat2wasm(PANIC_AND_COMMIT))
        for method in ("commit", "commit_twice", "boom"):
            seen.append(dump(wat.run(method, b"", storage={}, context_id=CTX, executor_id=DEVICE)))
        return seen, set(called)

    raw, raw_called = outcomes()
    assert runtime_module._RAW is not None, "wasmtime's C API is not reachable"
    monkeypatch.setattr(runtime_module, "_RAW", None)
    public, public_called = outcomes()
    assert raw_called == public_called == set(abi.HOST_FUNCTIONS)
    assert public == raw
    # Spot checks that the sequence did what it says.
    failures = [o["failure"]["message"] for o in raw if o.get("failure")]
    assert "host panicked: internal error in env.blob_open_in_context: blob store exploded" in failures
    assert "guest panicked: explicit panic at p.rs:3:5" in failures
    assert "invalid memory access" in failures
    assert "incorrect ed25519 public key" in failures
    assert raw[-3]["root_hash"] == b"0123456789abcdef0123456789abcdef"
    assert raw[-3]["artifact"] == b"art"


def _interrupt() -> int:
    raise KeyboardInterrupt
