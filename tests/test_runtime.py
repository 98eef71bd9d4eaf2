"""The wasm host runtime: every `env` host function, linking rules, failures.

Most probes are WAT modules (no compiler needed, exact control over the ABI);
``tests/wasm/*.c`` checks the same functions as a C app declares them.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import wasmtime

from calimero_workflow.node import abi
from calimero_workflow.node.interrupt import DEFAULT_TIME_LIMIT_S
from calimero_workflow.node.runtime import (
    DATA_REGISTER,
    AppFormatError,
    AppLinkError,
    AppModule,
    Cancellation,
    Event,
    Outcome,
    WasmRuntime,
)

# Fixtures (runtime, c_test_wasm) live in tests/wasm_fixtures.py.
pytest_plugins = ["wasm_fixtures"]

CTX = bytes(range(32))
EXECUTOR = bytes(range(100, 132))

# The import surface as written in the reference (calimero-node-api.md §3.1),
# deliberately not generated from the runtime's own table.
IMPORTS = """
(import "env" "input" (func $input (param i64)))
(import "env" "register_len" (func $register_len (param i64) (result i64)))
(import "env" "read_register" (func $read_register (param i64 i64) (result i32)))
(import "env" "value_return" (func $value_return (param i64)))
(import "env" "log_utf8" (func $log_utf8 (param i64)))
(import "env" "panic_utf8" (func $panic_utf8 (param i64 i64)))
(import "env" "panic" (func $panic (param i64)))
(import "env" "emit" (func $emit (param i64)))
(import "env" "context_id" (func $context_id (param i64)))
(import "env" "executor_id" (func $executor_id (param i64)))
(import "env" "account_id" (func $account_id (param i64)))
(import "env" "commit" (func $commit (param i64 i64)))
(import "env" "storage_read" (func $storage_read (param i64 i64) (result i32)))
(import "env" "storage_write" (func $storage_write (param i64 i64 i64) (result i32)))
(import "env" "storage_remove" (func $storage_remove (param i64 i64) (result i32)))
(import "env" "time_now" (func $time_now (param i64)))
(import "env" "random_bytes" (func $random_bytes (param i64)))
(import "env" "ed25519_verify" (func $ed25519_verify (param i64 i64 i64) (result i32)))
"""

# Memory map used by the probes: 0..127 descriptors, 128..1023 small results,
# 1024.. constant data, 8192.. buffers.
HELPERS = """
(memory (export "memory") 1)
;; write a Buffer descriptor {ptr, len} at $at
(func $buf (param $at i32) (param $ptr i32) (param $len i32)
  (i64.store (local.get $at) (i64.extend_i32_u (local.get $ptr)))
  (i64.store offset=8 (local.get $at) (i64.extend_i32_u (local.get $len))))
;; value_return with a discriminant, via a ValueReturn descriptor at 96
(func $return (param $disc i64) (param $ptr i32) (param $len i32)
  (i64.store (i32.const 96) (local.get $disc))
  (call $buf (i32.const 104) (local.get $ptr) (local.get $len))
  (call $value_return (i64.const 96)))
(func $ok (param $ptr i32) (param $len i32)
  (call $return (i64.const 0) (local.get $ptr) (local.get $len)))
;; return an i64 as 8 little-endian bytes
(func $ok_i64 (param $v i64)
  (i64.store (i32.const 128) (local.get $v))
  (call $ok (i32.const 128) (i32.const 8)))
;; copy register $r to 8192 and return it
(func $return_register (param $r i64)
  (local $n i32)
  (local.set $n (i32.wrap_i64 (call $register_len (local.get $r))))
  (call $buf (i32.const 0) (i32.const 8192) (local.get $n))
  (drop (call $read_register (local.get $r) (i64.const 0)))
  (call $ok (i32.const 8192) (local.get $n)))
"""


def compile_wat(
    rt: WasmRuntime, body: str, *, imports: str = IMPORTS, helpers: str = HELPERS
) -> AppModule:
    return rt.compile(wasmtime.wat2wasm(f"(module {imports} {helpers} {body})"))


def run(module: AppModule, method: str, data: bytes = b"", **kwargs: object) -> Outcome:
    kwargs.setdefault("storage", {})
    kwargs.setdefault("context_id", CTX)
    kwargs.setdefault("executor_id", EXECUTOR)
    return module.run(method, data, **kwargs)  # type: ignore[arg-type]


def ok(outcome: Outcome) -> Outcome:
    assert outcome.failure is None, outcome.failure
    return outcome


def host_error(outcome: Outcome) -> str:
    """merod's text for a failed host call (what callers see)."""
    assert outcome.failure is not None, "expected the call to fail"
    assert outcome.failure.kind == "HostError", outcome.failure
    return outcome.failure.message


def host_detail(outcome: Outcome) -> str:
    """Our own explanation of a failed host call (what the node log shows)."""
    host_error(outcome)
    assert outcome.failure is not None
    return outcome.failure.detail


# --- registers and input ------------------------------------------------------------


def test_input_lands_in_the_requested_register(runtime: WasmRuntime) -> None:
    module = compile_wat(
        runtime,
        """
    (func (export "echo")
      (call $input (i64.const 0xFFFFFFFE))
      (call $return_register (i64.const 0xFFFFFFFE)))
    (func (export "echo_reg3")
      (call $input (i64.const 3))
      (call $return_register (i64.const 3)))
    """,
    )
    assert ok(run(module, "echo", b'{"key":"a"}')).returns == b'{"key":"a"}'
    assert ok(run(module, "echo_reg3", b"\x00\xff")).returns == b"\x00\xff"
    assert ok(run(module, "echo", b"")).returns == b""
    assert DATA_REGISTER == 0xFFFF_FFFE


def test_register_len_of_unset_register_is_u64_max(runtime: WasmRuntime) -> None:
    module = compile_wat(
        runtime,
        """
    (func (export "len_unset") (call $ok_i64 (call $register_len (i64.const 7))))
    (func (export "len_set")
      (call $input (i64.const 7))
      (call $ok_i64 (call $register_len (i64.const 7))))
    """,
    )
    assert ok(run(module, "len_unset")).returns == b"\xff" * 8
    assert (
        int.from_bytes(ok(run(module, "len_set", b"12345")).returns or b"", "little")
        == 5
    )


def test_read_register_returns_one_on_exact_length_zero_on_mismatch(
    runtime: WasmRuntime,
) -> None:
    module = compile_wat(
        runtime,
        """
    (func $read_with_len (param $len i32)
      (call $input (i64.const 1))
      (call $buf (i32.const 0) (i32.const 8192) (local.get $len))
      (call $ok_i64 (i64.extend_i32_u (call $read_register (i64.const 1) (i64.const 0)))))
    (func (export "exact") (call $read_with_len (i32.const 4)))
    (func (export "short") (call $read_with_len (i32.const 3)))
    (func (export "long") (call $read_with_len (i32.const 5)))
    (func (export "unset")
      (call $buf (i32.const 0) (i32.const 8192) (i32.const 4))
      (drop (call $read_register (i64.const 9) (i64.const 0))))
    """,
    )
    assert ok(run(module, "exact", b"abcd")).returns == (1).to_bytes(8, "little")
    assert ok(run(module, "short", b"abcd")).returns == (0).to_bytes(8, "little")
    assert ok(run(module, "long", b"abcd")).returns == (0).to_bytes(8, "little")
    assert host_error(run(module, "unset")) == "invalid register id: 9"


def test_register_count_is_limited(runtime: WasmRuntime) -> None:
    module = compile_wat(
        runtime,
        """
    (func $fill (param $n i64) (local $i i64)
      (loop $again
        (call $input (local.get $i))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br_if $again (i64.lt_u (local.get $i) (local.get $n)))))
    (func (export "regs100") (call $fill (i64.const 100)))
    (func (export "regs101") (call $fill (i64.const 101)))
    """,
    )
    ok(run(module, "regs100"))
    # merod's Registers::set reports every refusal as an invalid memory access.
    outcome = run(module, "regs101")
    assert host_error(outcome) == "invalid memory access"
    assert "all 100 registers are in use" in host_detail(outcome)


def test_register_bytes_are_capped_in_total(
    runtime: WasmRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # merod counts each register as 8 bytes plus its data against
    # max_registers_capacity (1 GiB); a small cap shows the accounting.
    module = compile_wat(
        runtime,
        """
    (func (export "two") (call $input (i64.const 1)) (call $input (i64.const 2)))
    (func (export "same_twice") (call $input (i64.const 1)) (call $input (i64.const 1)))
    """,
    )
    monkeypatch.setattr(abi.LIMITS, "max_registers_capacity", 2 * (8 + 10))
    ok(run(module, "two", b"x" * 10))
    ok(run(module, "same_twice", b"x" * 20))  # a rewrite replaces the old bytes
    outcome = run(module, "two", b"x" * 11)
    assert host_error(outcome) == "invalid memory access"
    assert "registers would hold 38 bytes in all" in host_detail(outcome)


# --- identity -----------------------------------------------------------------------


def test_context_executor_and_account_ids(runtime: WasmRuntime) -> None:
    module = compile_wat(
        runtime,
        """
    (func (export "ctx") (call $context_id (i64.const 0xFFFFFFFE)) (call $return_register (i64.const 0xFFFFFFFE)))
    (func (export "exe") (call $executor_id (i64.const 0xFFFFFFFE)) (call $return_register (i64.const 0xFFFFFFFE)))
    (func (export "acc") (call $account_id (i64.const 0xFFFFFFFE)) (call $return_register (i64.const 0xFFFFFFFE)))
    """,
    )
    assert ok(run(module, "ctx")).returns == CTX
    assert ok(run(module, "exe")).returns == EXECUTOR
    # At HEAD executor_id is a shim for the account id: the same 32 bytes.
    assert ok(run(module, "acc")).returns == EXECUTOR


def test_ids_must_be_32_bytes(runtime: WasmRuntime) -> None:
    module = compile_wat(runtime, '(func (export "m"))')
    with pytest.raises(ValueError, match="context_id must be 32 raw bytes, got 5"):
        module.run("m", b"", storage={}, context_id=b"short", executor_id=EXECUTOR)
    with pytest.raises(ValueError, match="executor_id must be 32 raw bytes"):
        module.run("m", b"", storage={}, context_id=CTX, executor_id=b"x" * 33)


# --- value_return ---------------------------------------------------------------------


def test_value_return_ok_err_last_call_wins_and_bad_discriminant(
    runtime: WasmRuntime,
) -> None:
    module = compile_wat(
        runtime,
        """
    (data (i32.const 1024) "first" "second" "{\\"kind\\":\\"NotFound\\"}")
    (func (export "nothing"))
    (func (export "twice")
      (call $ok (i32.const 1024) (i32.const 5))
      (call $ok (i32.const 1029) (i32.const 6)))
    (func (export "err") (call $return (i64.const 1) (i32.const 1035) (i32.const 19)))
    (func (export "disc2") (call $return (i64.const 2) (i32.const 1024) (i32.const 5)))
    """,
    )
    nothing = ok(run(module, "nothing"))
    assert nothing.returns is None and not nothing.is_error
    twice = ok(run(module, "twice"))
    assert twice.returns == b"second" and not twice.is_error
    err = ok(run(module, "err"))
    assert err.is_error and json.loads(err.returns or b"") == {"kind": "NotFound"}
    outcome = run(module, "disc2")
    assert host_error(outcome) == "deserialization error"
    assert "invalid discriminant 2" in host_detail(outcome)


def test_value_return_size_limit(
    runtime: WasmRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = compile_wat(
        runtime, '(func (export "ret") (call $ok (i32.const 8192) (i32.const 100)))'
    )
    ok(run(module, "ret"))
    monkeypatch.setattr(abi.LIMITS, "max_value_return_size", 99)
    assert host_error(run(module, "ret")) == "return value too large (size: 100, max: 99)"


# --- logs -------------------------------------------------------------------------------


def test_log_utf8_collects_lines_and_rejects_bad_utf8(runtime: WasmRuntime) -> None:
    module = compile_wat(
        runtime,
        """
    (data (i32.const 1024) "hello" "w\\c3\\b6rld" "\\ff\\fe")
    (func (export "two")
      (call $buf (i32.const 0) (i32.const 1024) (i32.const 5)) (call $log_utf8 (i64.const 0))
      (call $buf (i32.const 0) (i32.const 1029) (i32.const 6)) (call $log_utf8 (i64.const 0)))
    (func (export "bad")
      (call $buf (i32.const 0) (i32.const 1035) (i32.const 2)) (call $log_utf8 (i64.const 0)))
    """,
    )
    assert ok(run(module, "two")).logs == ["hello", "wörld"]
    outcome = run(module, "bad")
    assert host_error(outcome) == "invalid UTF-8 string"
    assert "not valid UTF-8" in host_detail(outcome)


def test_log_limits_line_count_and_size(runtime: WasmRuntime) -> None:
    module = compile_wat(
        runtime,
        """
    (func $log_n (param $n i32) (param $len i32) (local $i i32)
      (call $buf (i32.const 0) (i32.const 8192) (local.get $len))
      (loop $again
        (call $log_utf8 (i64.const 0))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $again (i32.lt_u (local.get $i) (local.get $n)))))
    (func (export "max_lines") (call $log_n (i32.const 1024) (i32.const 1)))
    (func (export "too_many") (call $log_n (i32.const 1025) (i32.const 1)))
    (func (export "max_size") (call $log_n (i32.const 1) (i32.const 16384)))
    (func (export "too_big") (call $log_n (i32.const 1) (i32.const 16385)))
    """,
    )
    assert len(ok(run(module, "max_lines")).logs) == 1024
    assert host_error(run(module, "too_many")) == "logs overflow"
    assert ok(run(module, "max_size")).logs == ["\0" * 16384]
    outcome = run(module, "too_big")
    assert host_error(outcome) == "log size overflow"
    assert "log line of 16385 bytes" in host_detail(outcome)


# --- events -------------------------------------------------------------------------------


def test_emit_reads_the_event_descriptor(runtime: WasmRuntime) -> None:
    module = compile_wat(
        runtime,
        """
    (data (i32.const 1024) "Inserted" "{\\"key\\":\\"a\\"}")
    (func (export "one")
      (call $buf (i32.const 0) (i32.const 1024) (i32.const 8))
      (call $buf (i32.const 16) (i32.const 1032) (i32.const 11))
      (call $emit (i64.const 0)))
    """,
    )
    assert ok(run(module, "one")).events == [Event("Inserted", b'{"key":"a"}')]


def test_emit_limits(runtime: WasmRuntime) -> None:
    module = compile_wat(
        runtime,
        """
    (func $emit_n (param $n i32) (param $kind_len i32) (param $data_len i32) (local $i i32)
      (call $buf (i32.const 0) (i32.const 8192) (local.get $kind_len))
      (call $buf (i32.const 16) (i32.const 8192) (local.get $data_len))
      (loop $again
        (call $emit (i64.const 0))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $again (i32.lt_u (local.get $i) (local.get $n)))))
    (func (export "hundred") (call $emit_n (i32.const 100) (i32.const 1) (i32.const 0)))
    (func (export "too_many") (call $emit_n (i32.const 101) (i32.const 1) (i32.const 0)))
    (func (export "long_kind") (call $emit_n (i32.const 1) (i32.const 101) (i32.const 0)))
    (func (export "big_data") (call $emit_n (i32.const 1) (i32.const 1) (i32.const 16385)))
    """,
    )
    assert len(ok(run(module, "hundred")).events) == 100
    assert host_error(run(module, "too_many")) == "events overflow"
    long_kind = run(module, "long_kind")
    assert host_error(long_kind) == "event kind size overflow"
    assert "event kind of 101 bytes" in host_detail(long_kind)
    big_data = run(module, "big_data")
    assert host_error(big_data) == "event data size overflow"
    assert "event data of 16385 bytes" in host_detail(big_data)


# --- panics -------------------------------------------------------------------------------


PANIC_BODY = """
(data (i32.const 1024) "key not found" "src/lib.rs")
;; Location {file: Buffer, line: u32, column: u32} at 32
(func $location
  (call $buf (i32.const 32) (i32.const 1037) (i32.const 10))
  (i32.store (i32.const 48) (i32.const 92))
  (i32.store (i32.const 52) (i32.const 33)))
(func (export "panic_msg")
  (call $buf (i32.const 0) (i32.const 1024) (i32.const 13))
  (call $location)
  (call $panic_utf8 (i64.const 0) (i64.const 32)))
(func (export "panic_bare") (call $location) (call $panic (i64.const 32)))
(func (export "log_then_panic")
  (call $buf (i32.const 0) (i32.const 1024) (i32.const 3))
  (call $log_utf8 (i64.const 0))
  (call $buf (i32.const 64) (i32.const 1024) (i32.const 13))
  (call $location)
  (call $panic_utf8 (i64.const 64) (i64.const 32)))
"""


def test_panic_utf8_reports_message_and_location(runtime: WasmRuntime) -> None:
    module = compile_wat(runtime, PANIC_BODY)
    outcome = run(module, "panic_msg")
    assert outcome.failure is not None
    assert outcome.failure.kind == "Panic"
    assert (
        outcome.failure.message == "guest panicked: key not found at src/lib.rs:92:33"
    )


def test_panic_without_message(runtime: WasmRuntime) -> None:
    outcome = run(compile_wat(runtime, PANIC_BODY), "panic_bare")
    assert outcome.failure is not None and outcome.failure.kind == "Panic"
    assert (
        outcome.failure.message == "guest panicked: explicit panic at src/lib.rs:92:33"
    )


def test_panic_texts_must_be_utf8_but_are_not_size_capped(runtime: WasmRuntime) -> None:
    module = compile_wat(
        runtime,
        """
    (data (i32.const 1024) "\\ff")
    (func $panic_with (param $msg_len i32) (param $file_ptr i32)
      (call $buf (i32.const 0) (i32.const 8192) (local.get $msg_len))
      (call $buf (i32.const 32) (local.get $file_ptr) (i32.const 1))
      (i32.store (i32.const 48) (i32.const 1))
      (i32.store (i32.const 52) (i32.const 2))
      (call $panic_utf8 (i64.const 0) (i64.const 32)))
    (func (export "bad_file") (call $panic_with (i32.const 1) (i32.const 1024)))
    (func (export "long_message") (call $panic_with (i32.const 20000) (i32.const 8192)))
    (func (export "bare_bad_file")
      (call $buf (i32.const 32) (i32.const 1024) (i32.const 1))
      (call $panic (i64.const 32)))
    """,
    )
    # The location file is decoded as strictly as the message.
    assert host_error(run(module, "bad_file")) == "invalid UTF-8 string"
    assert host_error(run(module, "bare_bad_file")) == "invalid UTF-8 string"
    long = run(module, "long_message").failure
    assert long is not None and long.kind == "Panic"
    assert long.message == "guest panicked: " + "\0" * 20000 + " at \0:1:2"


def test_logs_before_a_panic_are_kept_for_diagnostics(runtime: WasmRuntime) -> None:
    outcome = run(compile_wat(runtime, PANIC_BODY), "log_then_panic")
    assert outcome.failure is not None and outcome.logs == ["key"]


# --- commit --------------------------------------------------------------------------------


COMMIT_BODY = """
(data (i32.const 1024) "0123456789abcdef0123456789abcdef" "artifact!")
(func $commit_root (param $root_len i32)
  (call $buf (i32.const 0) (i32.const 1024) (local.get $root_len))
  (call $buf (i32.const 16) (i32.const 1056) (i32.const 9))
  (call $commit (i64.const 0) (i64.const 16)))
(func $write_k
  (call $buf (i32.const 32) (i32.const 1056) (i32.const 1))
  (call $buf (i32.const 48) (i32.const 1056) (i32.const 9))
  (drop (call $storage_write (i64.const 32) (i64.const 48) (i64.const 5))))
(func (export "once") (call $write_k) (call $commit_root (i32.const 32)))
(func (export "twice") (call $write_k) (call $commit_root (i32.const 32)) (call $commit_root (i32.const 32)))
(func (export "short_root") (call $commit_root (i32.const 31)))
(func (export "no_commit") (call $write_k))
"""


def test_commit_records_root_and_artifact(runtime: WasmRuntime) -> None:
    outcome = ok(run(compile_wat(runtime, COMMIT_BODY), "once"))
    assert outcome.root_hash == b"0123456789abcdef0123456789abcdef"
    assert outcome.artifact == b"artifact!"
    assert outcome.writes == {b"a": b"artifact!"}


def test_no_commit_means_no_root(runtime: WasmRuntime) -> None:
    outcome = ok(run(compile_wat(runtime, COMMIT_BODY), "no_commit"))
    assert outcome.root_hash is None and outcome.artifact == b""


def test_commit_twice_is_an_error_and_discards_everything(runtime: WasmRuntime) -> None:
    outcome = run(compile_wat(runtime, COMMIT_BODY), "twice")
    # merod answers a second commit with an InvalidMemoryAccess.
    assert host_error(outcome) == "invalid memory access"
    assert "commit called more than once" in host_detail(outcome)
    # A failed call must leave nothing to apply.
    assert (
        outcome.writes == {} and outcome.root_hash is None and outcome.artifact == b""
    )


def test_commit_root_must_be_32_bytes(runtime: WasmRuntime) -> None:
    outcome = run(compile_wat(runtime, COMMIT_BODY), "short_root")
    assert host_error(outcome) == "invalid memory access"
    assert "must be 32 bytes, got 31" in host_detail(outcome)


def test_commit_artifact_size_limit(
    runtime: WasmRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(abi.LIMITS, "max_artifact_size", 8)
    outcome = run(compile_wat(runtime, COMMIT_BODY), "once")
    assert host_error(outcome) == "commit artifact size overflow (size: 9, max: 8)"


def test_memory_is_capped_at_merods_1024_pages(runtime: WasmRuntime) -> None:
    module = compile_wat(
        runtime,
        """
    (func (export "grow")
      (i64.store (i32.const 128) (i64.extend_i32_s (memory.grow (i32.const 1023))))
      (i64.store (i32.const 136) (i64.extend_i32_s (memory.grow (i32.const 1))))
      (call $ok (i32.const 128) (i32.const 16)))
    """,
    )
    # 1 page + 1023 fits (grow answers the old size, 1); one page more is
    # refused (grow answers -1).
    returns = ok(run(module, "grow")).returns or b""
    assert int.from_bytes(returns[:8], "little", signed=True) == 1
    assert int.from_bytes(returns[8:], "little", signed=True) == -1
    assert abi.LIMITS.max_memory_size == 1024 * 65536


# --- storage --------------------------------------------------------------------------------


STORAGE_BODY = """
(data (i32.const 1024) "key" "new-value")
;; key descriptor at 0, value descriptor at 16
(func $kv
  (call $buf (i32.const 0) (i32.const 1024) (i32.const 3))
  (call $buf (i32.const 16) (i32.const 1027) (i32.const 9)))
(func (export "read") (call $kv)
  (if (call $storage_read (i64.const 0) (i64.const 4))
    (then (call $return_register (i64.const 4)))))
(func (export "write_returns_old") (call $kv)
  (if (call $storage_write (i64.const 0) (i64.const 16) (i64.const 4))
    (then (call $return_register (i64.const 4)))
    (else (call $ok (i32.const 0) (i32.const 0)))))
(func (export "write_then_read") (call $kv)
  (drop (call $storage_write (i64.const 0) (i64.const 16) (i64.const 4)))
  (drop (call $storage_read (i64.const 0) (i64.const 5)))
  (call $return_register (i64.const 5)))
(func (export "remove_then_read") (call $kv)
  (i64.store (i32.const 128) (i64.extend_i32_u (call $storage_remove (i64.const 0) (i64.const 4))))
  (i64.store (i32.const 136) (i64.extend_i32_u (call $storage_read (i64.const 0) (i64.const 5))))
  (call $ok (i32.const 128) (i32.const 16)))
(func (export "write_then_trap") (call $kv)
  (drop (call $storage_write (i64.const 0) (i64.const 16) (i64.const 4)))
  unreachable)
"""


def test_storage_read_present_and_absent(runtime: WasmRuntime) -> None:
    module = compile_wat(runtime, STORAGE_BODY)
    assert ok(run(module, "read", storage={b"key": b"stored"})).returns == b"stored"
    assert ok(run(module, "read", storage={})).returns is None


def test_storage_write_reports_old_value_and_goes_to_the_overlay(
    runtime: WasmRuntime,
) -> None:
    module = compile_wat(runtime, STORAGE_BODY)
    storage = {b"key": b"old"}
    outcome = ok(run(module, "write_returns_old", storage=storage))
    assert outcome.returns == b"old"
    assert outcome.writes == {b"key": b"new-value"}
    assert storage == {b"key": b"old"}, "the caller's storage must not be mutated"
    assert ok(run(module, "write_returns_old", storage={})).returns == b""


def test_reads_see_the_calls_own_writes(runtime: WasmRuntime) -> None:
    module = compile_wat(runtime, STORAGE_BODY)
    assert (
        ok(run(module, "write_then_read", storage={b"key": b"old"})).returns
        == b"new-value"
    )


def test_storage_remove_marks_deleted_and_hides_the_key(runtime: WasmRuntime) -> None:
    module = compile_wat(runtime, STORAGE_BODY)
    outcome = ok(run(module, "remove_then_read", storage={b"key": b"old"}))
    removed, read_after = outcome.returns[:8], outcome.returns[8:]  # type: ignore[index]
    assert int.from_bytes(removed, "little") == 1
    assert int.from_bytes(read_after, "little") == 0
    assert outcome.writes == {b"key": None}
    absent = ok(run(module, "remove_then_read", storage={}))
    assert absent.returns == bytes(16) and absent.writes == {}


def test_failed_call_returns_no_writes(runtime: WasmRuntime) -> None:
    outcome = run(compile_wat(runtime, STORAGE_BODY), "write_then_trap")
    assert outcome.failure is not None and outcome.failure.kind == "Trap"
    assert outcome.writes == {}


# --- time, randomness, signatures --------------------------------------------------------------


TIME_BODY = """
(func $time_into (param $len i32)
  (call $buf (i32.const 0) (i32.const 128) (local.get $len))
  (call $time_now (i64.const 0))
  (call $ok (i32.const 128) (i32.const 8)))
(func (export "now") (call $time_into (i32.const 8)))
(func (export "now4") (call $time_into (i32.const 4)))
(func (export "now16") (call $time_into (i32.const 16)))
(func (export "random")
  (call $buf (i32.const 0) (i32.const 8192) (i32.const 20))
  (call $random_bytes (i64.const 0))
  (call $ok (i32.const 8192) (i32.const 20)))
"""


def test_time_now_writes_u64_le_nanoseconds(runtime: WasmRuntime) -> None:
    module = compile_wat(runtime, TIME_BODY)
    fixed = 1_767_225_600_123_456_789
    outcome = ok(run(module, "now", clock=lambda: fixed))
    assert outcome.returns == fixed.to_bytes(8, "little")
    # Without a clock override it is wall-clock time in ns.
    real = int.from_bytes(ok(run(module, "now")).returns or b"", "little")
    assert real > 1_600_000_000 * 10**9


@pytest.mark.parametrize("method, length", [("now4", 4), ("now16", 16)])
def test_time_now_rejects_a_buffer_that_is_not_8_bytes(
    runtime: WasmRuntime, method: str, length: int
) -> None:
    outcome = run(compile_wat(runtime, TIME_BODY), method)
    assert host_error(outcome) == "invalid memory access"
    assert f"must be 8 bytes long, got {length}" in host_detail(outcome)


def test_random_bytes_fills_the_buffer(runtime: WasmRuntime) -> None:
    module = compile_wat(runtime, TIME_BODY)
    assert (
        ok(run(module, "random", random=lambda n: b"\x07" * n)).returns == b"\x07" * 20
    )
    first, second = ok(run(module, "random")).returns, ok(run(module, "random")).returns
    assert first != second and len(first or b"") == 20


VERIFY_BODY = """
;; input = signature (64) | public key (32) | message
(func (export "verify") (local $n i32)
  (call $input (i64.const 1))
  (local.set $n (i32.wrap_i64 (call $register_len (i64.const 1))))
  (call $buf (i32.const 0) (i32.const 8192) (local.get $n))
  (drop (call $read_register (i64.const 1) (i64.const 0)))
  (call $buf (i32.const 0) (i32.const 8192) (i32.const 64))
  (call $buf (i32.const 16) (i32.const 8256) (i32.const 32))
  (call $buf (i32.const 32) (i32.const 8288) (i32.sub (local.get $n) (i32.const 96)))
  (call $ok_i64 (i64.extend_i32_u
    (call $ed25519_verify (i64.const 0) (i64.const 16) (i64.const 32)))))
"""

# RFC 8032 §7.1, TEST 2 (one-byte message 0x72).
RFC_PUBLIC = bytes.fromhex(
    "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
)
RFC_SIGNATURE = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)


def test_ed25519_verify_valid_tampered_and_bad_key(runtime: WasmRuntime) -> None:
    module = compile_wat(runtime, VERIFY_BODY)
    valid = RFC_SIGNATURE + RFC_PUBLIC + b"\x72"
    assert ok(run(module, "verify", valid)).returns == (1).to_bytes(8, "little")
    tampered = RFC_SIGNATURE + RFC_PUBLIC + b"\x73"
    assert ok(run(module, "verify", tampered)).returns == (0).to_bytes(8, "little")
    # y = 2 has no x on the curve: not a public key at all, which is a host error.
    not_a_point = (2).to_bytes(32, "little")
    assert (
        host_error(run(module, "verify", RFC_SIGNATURE + not_a_point + b"\x72"))
        == "incorrect ed25519 public key"
    )


def test_ed25519_verify_needs_exact_sizes(runtime: WasmRuntime) -> None:
    # merod reads the signature and key with read_guest_memory_sized: any other
    # length is an invalid memory access, not a 0.
    module = compile_wat(
        runtime,
        """
    (func $verify_with (param $sig_len i32) (param $pk_len i32)
      (call $buf (i32.const 0) (i32.const 8192) (local.get $sig_len))
      (call $buf (i32.const 16) (i32.const 8256) (local.get $pk_len))
      (call $buf (i32.const 32) (i32.const 8288) (i32.const 0))
      (call $ok_i64 (i64.extend_i32_u
        (call $ed25519_verify (i64.const 0) (i64.const 16) (i64.const 32)))))
    (func (export "short_sig") (call $verify_with (i32.const 63) (i32.const 32)))
    (func (export "long_key") (call $verify_with (i32.const 64) (i32.const 33)))
    """,
    )
    short = run(module, "short_sig")
    assert host_error(short) == "invalid memory access"
    assert "signature must be 64 bytes, got 63" in host_detail(short)
    long = run(module, "long_key")
    assert host_error(long) == "invalid memory access"
    assert "public key must be 32 bytes, got 33" in host_detail(long)


def test_pure_python_ed25519_agrees_with_cryptography() -> None:
    ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")
    assert abi._verify_pure(RFC_SIGNATURE, RFC_PUBLIC, b"\x72")
    for i in range(5):
        key = ed25519.Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes_raw()
        message = hashlib.sha256(bytes([i])).digest() * i
        signature = key.sign(message)
        assert abi.ed25519_public_key_valid(public)
        assert abi._verify_pure(signature, public, message)
        assert not abi._verify_pure(signature, public, message + b"!")
        flipped = bytes([signature[0] ^ 1]) + signature[1:]
        assert not abi._verify_pure(flipped, public, message)


# --- dispatch -----------------------------------------------------------------------------------


DISPATCH_BODY = """
(data (i32.const 1024) "merge" "method")
(global $calls (mut i32) (i32.const 0))
(func $log (param $ptr i32) (param $len i32)
  (call $buf (i32.const 0) (local.get $ptr) (local.get $len))
  (call $log_utf8 (i64.const 0)))
(func (export "__calimero_register_merge") (call $log (i32.const 1024) (i32.const 5)))
(func (export "method") (call $log (i32.const 1029) (i32.const 6)))
(func (export "count")
  (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
  (call $ok_i64 (i64.extend_i32_u (global.get $calls))))
(func (export "takes_arg") (param i32))
(func (export "returns_value") (result i32) (i32.const 1))
(func (export "__calimero_sync_next"))
(global (export "not_a_function") i32 (i32.const 0))
"""


def test_register_merge_runs_first(runtime: WasmRuntime) -> None:
    assert ok(run(compile_wat(runtime, DISPATCH_BODY), "method")).logs == [
        "merge",
        "method",
    ]


def test_register_merge_failure_is_ignored(runtime: WasmRuntime) -> None:
    module = compile_wat(
        runtime,
        """
    (func (export "__calimero_register_merge") unreachable)
    (func (export "method") (call $ok_i64 (i64.const 42)))
    """,
    )
    assert ok(run(module, "method")).returns == (42).to_bytes(8, "little")


def test_every_call_gets_a_fresh_instance(runtime: WasmRuntime) -> None:
    module = compile_wat(runtime, DISPATCH_BODY)
    counts = [ok(run(module, "count")).returns for _ in range(3)]
    assert counts == [(1).to_bytes(8, "little")] * 3


def test_methods_are_unit_exports_without_internals(runtime: WasmRuntime) -> None:
    module = compile_wat(runtime, DISPATCH_BODY)
    assert module.methods == frozenset({"method", "count"})
    assert module.size > 0 and len(module.sha256) == 64


def test_missing_method(runtime: WasmRuntime) -> None:
    outcome = run(compile_wat(runtime, DISPATCH_BODY), "nope")
    assert outcome.failure is not None
    assert (outcome.failure.kind, outcome.failure.message) == (
        "MethodNotFound",
        'method "nope" not found',
    )
    # merod's export lookup hits `unreachable!()` for an export that is not a
    # function; its catch-all reports that as a guest panic without a location.
    for name in ("not_a_function", "memory"):
        non_function = run(compile_wat(runtime, DISPATCH_BODY), name)
        assert non_function.failure is not None
        assert (non_function.failure.kind, non_function.failure.message) == (
            "Panic",
            "guest panicked: internal error: entered unreachable code",
        )


@pytest.mark.parametrize("method", ["takes_arg", "returns_value"])
def test_wrong_signature(runtime: WasmRuntime, method: str) -> None:
    outcome = run(compile_wat(runtime, DISPATCH_BODY), method)
    assert outcome.failure is not None and outcome.failure.kind == "InvalidSignature"
    assert outcome.failure.message == (
        f'method "{method}" has invalid signature: expected no arguments and no return value'
    )


@pytest.mark.parametrize(
    "method, message",
    [
        ("", "method name is empty"),
        ("has space", "method name contains invalid character at position 3: ' '"),
        ("dash-ed", "method name contains invalid character at position 4: '-'"),
        # Positions count characters, not bytes; the length limit counts bytes.
        ("éa-", "method name contains invalid character at position 0: 'é'"),
        ("a\nb", "method name contains invalid character at position 1: '\\n'"),
        ("it's", "method name contains invalid character at position 2: '\\''"),
        ("x" * 257, "method name too long: 257 bytes (max: 256)"),
        ("é" * 129, "method name too long: 258 bytes (max: 256)"),
    ],
)
def test_invalid_method_names_are_refused(
    runtime: WasmRuntime, method: str, message: str
) -> None:
    outcome = run(compile_wat(runtime, DISPATCH_BODY), method)
    assert outcome.failure is not None and outcome.failure.kind == "MethodNotFound"
    assert outcome.failure.message == message


def test_internal_exports_are_callable_by_name(runtime: WasmRuntime) -> None:
    ok(run(compile_wat(runtime, DISPATCH_BODY), "__calimero_sync_next"))


# --- traps and gas ---------------------------------------------------------------------------------


TRAP_BODY = """
(func (export "unreachable") unreachable)
(func (export "oob") (drop (i64.load (i32.const 70000))))
(func (export "div0") (drop (i32.div_u (i32.const 1) (i32.load (i32.const 200)))))
(func (export "overflow") (drop (i32.div_s (i32.const 0x80000000) (i32.const -1))))
(func (export "bad_convert") (drop (i32.trunc_f32_s (f32.const nan))))
(table 1 funcref)
(type $unit (func))
(func (export "call_null") (call_indirect (type $unit) (i32.const 0)))
(func (export "table_oob") (call_indirect (type $unit) (i32.const 5)))
(func (export "spin") (loop $forever (br $forever)))
(func $recurse (export "recurse") (call $recurse))
(func (export "bad_descriptor") (call $log_utf8 (i64.const 65530)))
(func (export "bad_buffer")
  (call $buf (i32.const 0) (i32.const 65000) (i32.const 1000))
  (call $log_utf8 (i64.const 0)))
"""


@pytest.mark.parametrize(
    "method, message",
    [
        ("unreachable", "unreachable code reached"),
        ("oob", "memory out of bounds"),
        # wasmer folds the three arithmetic traps into one text, and table
        # accesses into "memory out of bounds".
        ("div0", "illegal arithmetic operation"),
        ("overflow", "illegal arithmetic operation"),
        ("bad_convert", "illegal arithmetic operation"),
        ("call_null", "indirect call to null"),
        ("table_oob", "memory out of bounds"),
        ("recurse", "stack overflow"),
    ],
)
def test_traps_carry_merods_text(
    runtime: WasmRuntime, method: str, message: str
) -> None:
    outcome = run(compile_wat(runtime, TRAP_BODY), method)
    assert outcome.failure is not None
    assert (outcome.failure.kind, outcome.failure.message) == ("Trap", message)


def test_fuel_exhaustion_stops_an_infinite_loop() -> None:
    small = WasmRuntime(gas_limit=1_000_000)
    outcome = run(compile_wat(small, TRAP_BODY), "spin")
    assert outcome.failure is not None
    assert (
        outcome.failure.message == "execution exhausted its gas limit of 1000000 points"
    )


SPIN_BODY = """
(func (export "spin_host") (loop $again (drop (call $register_len (i64.const 12345))) (br $again)))
(func (export "spin") (loop $forever (br $forever)))
(func (export "quick") (drop (call $register_len (i64.const 12345))))
"""


def test_a_loop_over_host_calls_stops_at_the_time_limit() -> None:
    # Each round costs the guest ~2 fuel, so merod's 10^9 gas would last
    # minutes at the embedded node's ~1 µs per host call.
    module = compile_wat(WasmRuntime(time_limit=0.3), SPIN_BODY)
    started = time.monotonic()
    outcome = run(module, "spin_host")
    elapsed = time.monotonic() - started
    assert outcome.failure is not None
    assert (outcome.failure.kind, outcome.failure.message) == (
        "Interrupted",
        "execution interrupted: it ran longer than the time limit of 0.3 s",
    )
    assert "CW_WASM_TIME_LIMIT" in outcome.failure.detail
    assert 0.3 <= elapsed < 2.0
    # The runtime, its engine and the next store are unaffected.
    ok(run(module, "quick"))


def test_the_time_limit_also_stops_a_loop_without_host_calls() -> None:
    module = compile_wat(WasmRuntime(time_limit=0.2), SPIN_BODY)
    outcome = run(module, "spin")
    assert outcome.failure is not None and outcome.failure.kind == "Interrupted"


def test_gas_still_stops_a_pure_loop_first_with_merods_text() -> None:
    # Gas is merod's bound; the wall-clock limit only backs it up.
    module = compile_wat(WasmRuntime(gas_limit=1_000_000, time_limit=30), SPIN_BODY)
    outcome = run(module, "spin")
    assert outcome.failure is not None
    assert outcome.failure.message == "execution exhausted its gas limit of 1000000 points"


def test_a_cancellation_interrupts_the_guest_from_another_thread() -> None:
    module = compile_wat(WasmRuntime(time_limit=30), SPIN_BODY)
    cancellation = Cancellation()
    timer = threading.Timer(0.1, cancellation.cancel, args=("node-1 is stopping",))
    timer.start()
    started = time.monotonic()
    outcome = run(module, "spin_host", cancellation=cancellation)
    assert time.monotonic() - started < 5
    assert outcome.failure is not None
    assert (outcome.failure.kind, outcome.failure.message) == (
        "Interrupted",
        "execution interrupted: node-1 is stopping",
    )
    # Cancelled before it starts, a call does not run at all.
    again = run(module, "quick", cancellation=cancellation)
    assert again.failure is not None
    assert again.failure.message == "execution interrupted: node-1 is stopping"
    # Another call, with its own cancellation or none, runs.
    ok(run(module, "quick", cancellation=Cancellation()))
    ok(run(module, "quick"))


def test_a_cancellation_after_the_call_changes_nothing() -> None:
    module = compile_wat(WasmRuntime(time_limit=30), SPIN_BODY)
    cancellation = Cancellation()
    ok(run(module, "quick", cancellation=cancellation))
    cancellation.cancel()
    ok(run(module, "quick"))


def test_the_time_limit_comes_from_the_environment() -> None:
    assert WasmRuntime(environ={}).time_limit == DEFAULT_TIME_LIMIT_S
    assert WasmRuntime(environ={"CW_WASM_TIME_LIMIT": "2.5"}).time_limit == 2.5
    assert WasmRuntime(environ={"CW_WASM_TIME_LIMIT": "0"}).time_limit is None
    # An explicit argument wins over the environment.
    assert WasmRuntime(time_limit=None, environ={"CW_WASM_TIME_LIMIT": "3"}).time_limit is None
    for bad in ("soon", "-1", "inf"):
        with pytest.raises(ValueError, match="CW_WASM_TIME_LIMIT"):
            WasmRuntime(environ={"CW_WASM_TIME_LIMIT": bad})
    with pytest.raises(ValueError, match="time_limit"):
        WasmRuntime(time_limit=0)


def test_without_a_time_limit_only_gas_stops_the_guest() -> None:
    module = compile_wat(WasmRuntime(gas_limit=200_000, time_limit=None), SPIN_BODY)
    outcome = run(module, "spin_host")
    assert outcome.failure is not None
    assert outcome.failure.message == "execution exhausted its gas limit of 200000 points"


@pytest.mark.parametrize("method", ["bad_descriptor", "bad_buffer"])
def test_out_of_bounds_pointers_are_host_errors(
    runtime: WasmRuntime, method: str
) -> None:
    assert "invalid memory access" in host_error(
        run(compile_wat(runtime, TRAP_BODY), method)
    )


def test_host_sees_memory_the_guest_grew(runtime: WasmRuntime) -> None:
    # A second page appears after the host first looked at memory.
    module = compile_wat(
        runtime,
        """
        (data (i32.const 1024) "one")
        (func (export "grow")
          (call $buf (i32.const 0) (i32.const 1024) (i32.const 3))
          (call $log_utf8 (i64.const 0))
          (drop (memory.grow (i32.const 1)))
          (i32.store (i32.const 70000) (i32.const 0x6f777400))
          (call $buf (i32.const 0) (i32.const 70001) (i32.const 3))
          (call $log_utf8 (i64.const 0))
          (call $buf (i32.const 0) (i32.const 131070) (i32.const 3))
          (call $log_utf8 (i64.const 0)))
        """,
    )
    outcome = run(module, "grow")
    assert outcome.logs == ["one", "two"]
    assert host_error(outcome) == "invalid memory access"
    assert "outside guest memory of 131072 bytes" in host_detail(outcome)


def test_host_calls_from_a_start_function(runtime: WasmRuntime) -> None:
    # The start function runs while the module instantiates, before the
    # runtime has looked up the instance's exports.
    module = compile_wat(
        runtime,
        """
        (data (i32.const 1024) "starting")
        (func $start
          (call $buf (i32.const 0) (i32.const 1024) (i32.const 8))
          (call $log_utf8 (i64.const 0)))
        (start $start)
        (func (export "method") (call $ok_i64 (i64.const 7)))
        """,
    )
    outcome = ok(run(module, "method"))
    assert outcome.logs == ["starting"]
    assert outcome.returns == (7).to_bytes(8, "little")


def test_interrupt_in_a_host_function_reaches_the_caller(runtime: WasmRuntime) -> None:
    module = compile_wat(
        runtime,
        """
        (func (export "now")
          (call $buf (i32.const 0) (i32.const 8192) (i32.const 8))
          (call $time_now (i64.const 0)))
        """,
    )

    def interrupted() -> int:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(module, "now", clock=interrupted)
    # The runtime is still usable afterwards.
    ok(run(module, "now", clock=lambda: 5))


# --- compile-time checks ----------------------------------------------------------------------------


def test_unknown_imports_are_refused_by_name(runtime: WasmRuntime) -> None:
    wat = """(module
      (import "env" "send_proposal" (func (param i64 i64)))
      (import "env" "no_such_function" (func))
      (import "env" "input" (func (param i64)))
      (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1))"""
    with pytest.raises(AppLinkError) as info:
        runtime.compile(wasmtime.wat2wasm(wat))
    assert info.value.unknown_imports == [
        "env.no_such_function",
        "wasi_snapshot_preview1.fd_write",
    ]
    # A name merod once linked is refused with the reason.
    assert info.value.refused_imports == ["env.send_proposal"]
    assert "env.send_proposal was removed from merod in 2026-03" in str(info.value)
    assert isinstance(info.value, AppFormatError)


@pytest.mark.parametrize(
    "name, params, reason",
    [
        ("search_query", "i64 i64", "full-text search"),
        ("tee_origin", "", "needs a TEE node"),
        ("seal_to", "i64 i64 i64", "sealing scheme"),
        ("shared_writers", "i64 i64", "writer sets"),
        ("js_crdt_map_new", "i64", "JS-SDK host function"),
        ("persist_root_state", "i64 i64 i64", "JS-SDK host function"),
    ],
)
def test_host_functions_the_node_cannot_give_are_refused_at_install(
    runtime: WasmRuntime, name: str, params: str, reason: str
) -> None:
    wat = f"""(module (import "env" "{name}" (func (param {params})))
      (memory (export "memory") 1))"""
    with pytest.raises(AppLinkError) as info:
        runtime.compile(wasmtime.wat2wasm(wat))
    assert info.value.refused_imports == [f"env.{name}"]
    assert info.value.unknown_imports == []
    assert f"env.{name} " in str(info.value) and reason in str(info.value)


def test_module_over_merods_size_limit_is_refused(runtime: WasmRuntime) -> None:
    base = wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "m")))')
    limit = abi.LIMITS.max_module_size
    at_limit = _with_custom_section(base, "pad", b"")
    at_limit = _with_custom_section(base, "pad", bytes(limit - len(at_limit) - 3))
    assert len(at_limit) == limit
    runtime.compile(at_limit)
    over = at_limit + b"\0\x01\x00"  # one more (empty) custom section
    with pytest.raises(AppFormatError) as info:
        runtime.compile(over)
    assert str(info.value) == (
        f"module size limit (max_module_size) exceeded: {len(over)} bytes > "
        f"{limit} bytes limit"
    )


def test_module_size_and_xcall_limits_are_merods() -> None:
    """crates/runtime/src/logic.rs at 0.11.0-rc.27 and later: VMLimits defaults."""
    assert abi.LIMITS.max_module_size == 128 << 20
    assert abi.LIMITS.max_xcalls == 8


# An app that queues the same cross-context call 8 or 9 times.
XCALLS_WAT = r"""
(module
  (import "env" "xcall" (func $xcall (param i64)))
  (memory (export "memory") 1)
  ;; XCall{context Buffer{64, 32}, function Buffer{96, 1}, params Buffer{100, 0}} at 0
  (data (i32.const 0) "\40\00\00\00\00\00\00\00\20\00\00\00\00\00\00\00")
  (data (i32.const 16) "\60\00\00\00\00\00\00\00\01\00\00\00\00\00\00\00")
  (data (i32.const 32) "\64\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00")
  (data (i32.const 96) "f")
  (func $times (param $n i32)
    (loop $again
      (call $xcall (i64.const 0))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $again (local.get $n))))
  (func (export "eight") (call $times (i32.const 8)))
  (func (export "nine") (call $times (i32.const 9)))
)
"""


def test_an_execution_queues_at_most_eight_xcalls(runtime: WasmRuntime) -> None:
    module = runtime.compile(wasmtime.wat2wasm(XCALLS_WAT))
    eight = run(module, "eight")
    assert eight.failure is None and len(eight.xcalls) == 8
    nine = run(module, "nine")
    assert nine.failure is not None and nine.failure.message == "xcalls overflow"


def test_known_import_with_wrong_signature_is_refused(runtime: WasmRuntime) -> None:
    wat = '(module (import "env" "input" (func (param i32))) (memory (export "memory") 1))'
    with pytest.raises(AppLinkError) as info:
        runtime.compile(wasmtime.wat2wasm(wat))
    assert info.value.unknown_imports == []
    assert "env.input (expected (i64) -> (), got (i32) -> ())" in str(info.value)


def test_imported_memory_is_refused(runtime: WasmRuntime) -> None:
    wat = '(module (import "env" "memory" (memory 1)) (func (export "m")))'
    with pytest.raises(AppFormatError, match=r"imports its memory \(env.memory\)"):
        runtime.compile(wasmtime.wat2wasm(wat))


def test_module_must_export_memory(runtime: WasmRuntime) -> None:
    with pytest.raises(AppFormatError, match="does not export a memory"):
        runtime.compile(wasmtime.wat2wasm('(module (memory 1) (func (export "m")))'))


def test_start_export_is_refused(runtime: WasmRuntime) -> None:
    wat = '(module (memory (export "memory") 1) (func (export "_start")))'
    with pytest.raises(AppFormatError, match="exports a `_start` function"):
        runtime.compile(wasmtime.wat2wasm(wat))
    # merod only refuses a *function* named `_start`.
    runtime.compile(
        wasmtime.wat2wasm(
            '(module (memory (export "memory") 1) (global (export "_start") i32 (i32.const 0)))'
        )
    )


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not a wasm module"),
        (b"(module)", "not a wasm module"),
        (b"\0asm\x01\0\0\0\x05", "cannot compile the wasm module"),
    ],
)
def test_not_wasm_is_a_format_error(
    runtime: WasmRuntime, data: bytes, message: str
) -> None:
    with pytest.raises(AppFormatError, match=message) as info:
        runtime.compile(data)
    assert not isinstance(info.value, AppLinkError)


def _with_custom_section(wasm: bytes, name: str, payload: bytes) -> bytes:
    def leb(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    body = leb(len(name)) + name.encode() + payload
    return wasm + b"\0" + leb(len(body)) + body


def test_abi_custom_section_is_parsed(runtime: WasmRuntime) -> None:
    base = wasmtime.wat2wasm(
        '(module (memory (export "memory") 1) (func (export "m")))'
    )
    document = {"schema_version": "wasm-abi/1", "methods": [{"name": "m"}]}
    module = runtime.compile(
        _with_custom_section(base, "calimero_abi_v1", json.dumps(document).encode())
    )
    assert module.abi == document
    assert runtime.compile(base).abi is None
    broken = runtime.compile(
        _with_custom_section(base, "calimero_abi_v1", b"{not json")
    )
    assert broken.abi is None


def test_compile_caches_by_content(runtime: WasmRuntime) -> None:
    wasm = wasmtime.wat2wasm(
        '(module (memory (export "memory") 1) (func (export "cached")))'
    )
    first = runtime.compile(wasm)
    assert runtime.compile(bytearray(wasm)) is first
    assert first.sha256 == hashlib.sha256(wasm).hexdigest()


# --- the same ABI from C -----------------------------------------------------------------------------


@pytest.mark.wasm_toolchain
def test_c_probe_ids(runtime: WasmRuntime, c_test_wasm: dict[str, bytes]) -> None:
    module = runtime.compile(c_test_wasm["host_probe"])
    assert ok(run(module, "ids")).returns == CTX + EXECUTOR + EXECUTOR


@pytest.mark.wasm_toolchain
def test_c_probe_storage(runtime: WasmRuntime, c_test_wasm: dict[str, bytes]) -> None:
    module = runtime.compile(c_test_wasm["host_probe"])
    outcome = ok(run(module, "storage", b"k", storage={}))
    # write(new)=0, write(again)=1 + old "one", read=1 + "two", remove=1, read=0
    assert outcome.returns == b"\x00\x01one\x01two\x01\x00"
    assert outcome.writes == {b"k": None}


@pytest.mark.wasm_toolchain
def test_c_probe_environment(
    runtime: WasmRuntime, c_test_wasm: dict[str, bytes]
) -> None:
    module = runtime.compile(c_test_wasm["host_probe"])
    outcome = ok(
        run(
            module,
            "environment",
            b'{"x":1}',
            clock=lambda: 77,
            random=lambda n: b"r" * n,
        )
    )
    assert outcome.returns == (77).to_bytes(8, "little") + b"r" * 16
    assert outcome.logs == ["probe says hi"]
    assert outcome.events == [Event("Probed", b'{"x":1}')]


@pytest.mark.wasm_toolchain
def test_c_probe_verify_and_panic(
    runtime: WasmRuntime, c_test_wasm: dict[str, bytes]
) -> None:
    module = runtime.compile(c_test_wasm["host_probe"])
    assert (
        ok(run(module, "verify", RFC_SIGNATURE + RFC_PUBLIC + b"\x72")).returns
        == b"\x01"
    )
    assert (
        ok(run(module, "verify", RFC_SIGNATURE + RFC_PUBLIC + b"\x00")).returns
        == b"\x00"
    )
    failure = run(module, "fail").failure
    assert failure is not None
    assert (
        failure.message
        == "guest panicked: probe failed on purpose at tests/wasm/host_probe.c:4242:7"
    )


@pytest.mark.wasm_toolchain
def test_c_module_with_removed_imports_does_not_link(
    runtime: WasmRuntime, c_test_wasm: dict[str, bytes]
) -> None:
    with pytest.raises(AppLinkError) as info:
        runtime.compile(c_test_wasm["uses_removed_imports"])
    assert sorted(info.value.refused_imports) == [
        "env.approve_proposal",
        "env.send_proposal",
    ]


# --- threads ------------------------------------------------------------------------------------------


def test_concurrent_calls_keep_their_own_state(runtime: WasmRuntime) -> None:
    # Panicking and succeeding calls interleaved on several threads must each
    # see their own input, storage and failure.
    module = compile_wat(
        runtime,
        """
        (data (i32.const 1024) "key" "boom" "f.c")
        (func (export "read")
          (call $buf (i32.const 0) (i32.const 1024) (i32.const 3))
          (drop (call $storage_read (i64.const 0) (i64.const 4)))
          (call $return_register (i64.const 4)))
        (func (export "boom")
          (call $input (i64.const 1))
          (call $buf (i32.const 0) (i32.const 1027) (i32.const 4))
          (call $buf (i32.const 32) (i32.const 1031) (i32.const 3))
          (i32.store (i32.const 48) (i32.wrap_i64 (call $register_len (i64.const 1))))
          (call $panic_utf8 (i64.const 0) (i64.const 32)))
        """,
    )

    def one(i: int) -> None:
        if i % 2:
            outcome = run(module, "boom", b"x" * i)
            assert outcome.failure is not None and outcome.failure.kind == "Panic"
            assert outcome.failure.message == f"guest panicked: boom at f.c:{i}:0"
        else:
            value = f"v{i}".encode()
            assert ok(run(module, "read", storage={b"key": value})).returns == value

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, range(400)))


#: A guest that calls time_now forever: each round is a host call the test can count.
CLOCK_SPIN = """
(func (export "spin_clock")
  (call $buf (i32.const 0) (i32.const 8192) (i32.const 8))
  (loop $again (call $time_now (i64.const 0)) (br $again)))
(func (export "quick") (drop (call $register_len (i64.const 12345))))
(func (export "now")
  (call $buf (i32.const 0) (i32.const 8192) (i32.const 8))
  (call $time_now (i64.const 0)))
"""


class Ticks:
    """A ``clock`` for one call that counts the guest's rounds, so a test can wait for them."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def __call__(self) -> int:
        with self._cond:
            self.count += 1
            self._cond.notify_all()
        return 1_700_000_000_000_000_000

    def reach(self, count: int) -> bool:
        """Wait until the guest has made ``count`` rounds (False if it stopped short)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= count, timeout=30)


def test_guests_on_two_threads_run_at_once() -> None:
    # No process-wide lock: while one guest loops, another one runs too.
    module = compile_wat(WasmRuntime(time_limit=60), CLOCK_SPIN)
    ticks = [Ticks(), Ticks()]
    cancellations = [Cancellation(), Cancellation()]
    with ThreadPoolExecutor(max_workers=2) as pool:
        calls = [
            pool.submit(run, module, "spin_clock", clock=t, cancellation=c)
            for t, c in zip(ticks, cancellations, strict=True)
        ]
        assert ticks[0].reach(1) and ticks[1].reach(1)
        # Each makes progress while the other is still inside wasm.
        assert ticks[0].reach(ticks[0].count + 100) and ticks[1].reach(ticks[1].count + 100)
        assert not any(call.done() for call in calls)
        for c in cancellations:
            c.cancel("done")
        for call in calls:
            assert call.result(30).failure.message == "execution interrupted: done"  # type: ignore[union-attr]


def test_an_interrupt_stops_only_its_own_call() -> None:
    # Both stores share the engine, so the epoch increment that stops one call
    # reaches the other's deadline too; that one must carry on.
    module = compile_wat(WasmRuntime(time_limit=60), CLOCK_SPIN)
    first, second = Ticks(), Ticks()
    stop_first, stop_second = Cancellation(), Cancellation()
    with ThreadPoolExecutor(max_workers=2) as pool:
        one = pool.submit(run, module, "spin_clock", clock=first, cancellation=stop_first)
        two = pool.submit(run, module, "spin_clock", clock=second, cancellation=stop_second)
        assert first.reach(1) and second.reach(1)
        stop_first.cancel("the first call's caller left")
        stopped = one.result(30)
        assert stopped.failure is not None
        assert stopped.failure.message == "execution interrupted: the first call's caller left"
        # The increment came before the first call returned; the second guest
        # keeps calling the host after it.
        assert second.reach(second.count + 1000)
        assert not two.done()
        stop_second.cancel("the second call's caller left")
        outcome = two.result(30)
    assert outcome.failure is not None
    assert outcome.failure.message == "execution interrupted: the second call's caller left"


def test_two_looping_guests_stop_at_their_own_time_limits() -> None:
    module = compile_wat(WasmRuntime(time_limit=1.5), CLOCK_SPIN)
    first, second = Ticks(), Ticks()
    with ThreadPoolExecutor(max_workers=2) as pool:
        one = pool.submit(run, module, "spin_clock", clock=first)
        assert first.reach(1)
        two = pool.submit(run, module, "spin_clock", clock=second)
        assert second.reach(1)
        # Both loop at once...
        assert not one.done()
        outcomes = [one.result(30), two.result(30)]
    # ...and each ends at its own limit: the first one's interrupt did not
    # stop the second (which would then fail with another text).
    for outcome in outcomes:
        assert outcome.failure is not None
        assert outcome.failure.message == (
            "execution interrupted: it ran longer than the time limit of 1.5 s"
        )


def test_the_public_api_runs_one_guest_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # wasmtime-py's own trampoline passes a host function's exception through
    # a module-global slot, and without the deadline callback an epoch
    # increment stops every store of the engine: calls take turns then.
    from calimero_workflow.node import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "_RAW", None)
    module = compile_wat(WasmRuntime(time_limit=60), CLOCK_SPIN)
    held: list[bool] = []

    def clock() -> int:
        held.append(runtime_module._PUBLIC_API_LOCK.locked())
        return 1

    ok(run(module, "quick"))
    cancellation = Cancellation()
    ticks = Ticks()
    with ThreadPoolExecutor(max_workers=1) as pool:
        looping = pool.submit(run, module, "spin_clock", clock=ticks, cancellation=cancellation)
        assert ticks.reach(1)
        assert runtime_module._PUBLIC_API_LOCK.locked()
        cancellation.cancel("stop")
        assert looping.result(30).failure.message == "execution interrupted: stop"  # type: ignore[union-attr]
    ok(run(module, "now", clock=clock))
    assert held == [True]
    assert not runtime_module._PUBLIC_API_LOCK.locked()


# --- binding -------------------------------------------------------------------------------------


def test_public_api_binding_gives_the_same_outcomes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Host calls normally go through wasmtime's C API; without it the runtime
    # falls back to wasmtime-py's own trampoline. Both must agree exactly.
    from calimero_workflow.node import runtime as runtime_module
    from wasm_fixtures import KV_STORE_WASM

    wasm = KV_STORE_WASM.read_bytes()
    panicking = wasmtime.wat2wasm(
        f"""(module {IMPORTS} {HELPERS}
        (data (i32.const 1024) "boom" "f.c")
        (func (export "boom")
          (call $buf (i32.const 0) (i32.const 1024) (i32.const 4))
          (call $buf (i32.const 32) (i32.const 1028) (i32.const 3))
          (i32.store (i32.const 48) (i32.const 9))
          (call $panic_utf8 (i64.const 0) (i64.const 32))))"""
    )
    calls = [
        ("init", {}),
        ("set", {"key": "a", "value": "1"}),
        ("set", {"key": "b", "value": "2"}),
        ("get", {"key": "a"}),
        ("get_result", {"key": "missing"}),
        ("remove", {"key": "b"}),
        ("entries", {}),
    ]

    def outcomes() -> list[tuple[object, ...]]:
        rt = WasmRuntime()
        module = rt.compile(wasm)
        storage: dict[bytes, bytes] = {}
        seen = []
        for method, args in calls:
            outcome = run(
                module,
                method,
                json.dumps(args).encode(),
                storage=storage,
                clock=lambda: 1_700_000_000_000_000_000,
                random=lambda n: b"\x07" * n,
            )
            for key, value in outcome.writes.items():
                if value is None:
                    storage.pop(key, None)
                else:
                    storage[key] = value
            seen.append(
                (
                    outcome.returns,
                    outcome.is_error,
                    outcome.logs,
                    outcome.events,
                    outcome.root_hash,
                    outcome.artifact,
                    outcome.writes,
                    outcome.failure,
                )
            )
        failed = run(rt.compile(panicking), "boom")
        seen.append((failed.failure, failed.logs))
        return seen

    raw = outcomes()
    monkeypatch.setattr(runtime_module, "_RAW", None)
    public = outcomes()
    assert public == raw
    panic = raw[-1][0]
    assert panic is not None and panic.message == "guest panicked: boom at f.c:9:0"
    assert raw[3][0] == b'"1"'


def test_c_bindings_that_misbehave_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # wasmtime-py's bindings are private: a release may keep a name and change
    # what it does. The first runtime checks them and, when they misbehave,
    # links through the public API instead.
    from calimero_workflow.node import runtime as runtime_module

    api = runtime_module._RawApi()
    runtime_module._check_raw_api(api)

    def silent_call(self: object, store: object, func: object) -> None:
        return None  # returns without running the guest

    with monkeypatch.context() as patch:
        patch.setattr(runtime_module._RawApi, "call_unit", silent_call)
        with pytest.raises(ValueError, match="did not reach guest memory"):
            runtime_module._check_raw_api(api)
    with monkeypatch.context() as patch:
        patch.setattr(runtime_module._RawApi, "trap", lambda self, message: 0)
        with pytest.raises(ValueError, match="did not stop the guest"):
            runtime_module._check_raw_api(api)
    # The epoch-deadline callback: missing, a store traps at every increment;
    # never stopping, an interrupted guest runs on.
    with monkeypatch.context() as patch:
        patch.setattr(runtime_module._RawApi, "watch_epochs", lambda self, store: None)
        with pytest.raises(ValueError, match="increment for another call stopped this one"):
            runtime_module._check_raw_api(api)
    with monkeypatch.context() as patch:
        patch.setattr(runtime_module, "interrupted", lambda: False)
        with pytest.raises(ValueError, match="callback did not stop the guest"):
            runtime_module._check_raw_api(api)

    monkeypatch.setattr(runtime_module, "_RAW", api)
    monkeypatch.setattr(runtime_module, "_RAW_SETTLED", False)
    monkeypatch.setattr(runtime_module._RawApi, "call_unit", silent_call)
    rt = WasmRuntime()
    assert runtime_module._RAW is None
    module = compile_wat(rt, '(func (export "seven") (call $ok_i64 (i64.const 7)))')
    assert ok(run(module, "seven")).returns == (7).to_bytes(8, "little")
