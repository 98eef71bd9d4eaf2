"""Run Calimero application wasm under wasmtime with merod's host ABI.

A :class:`WasmRuntime` owns one wasmtime ``Engine`` and a cache of compiled
apps. :meth:`WasmRuntime.compile` checks a binary the way merod does when it
links one (only known ``env`` imports, no imported memory, an exported memory)
and returns an :class:`AppModule`. :meth:`AppModule.run` then executes one
method the way merod's ``Module::run`` does:

1. a fresh ``Store`` and instance per call, so nothing survives in guest memory;
2. ``__calimero_register_merge`` first when exported (its failure is ignored);
3. the method export, which must exist and have type ``() -> ()``;
4. a fuel budget, so a runaway guest fails instead of hanging the node.

The host never mutates the caller's storage. Writes go to an overlay that the
guest's own later reads see, and come back in :attr:`Outcome.writes` for the
caller to apply, only when :attr:`Outcome.failure` is ``None``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import wasmtime

from . import abi
from .abi import DATA_REGISTER, DEFAULT_GAS_LIMIT, LIMITS, U64_MAX

__all__ = [
    "DATA_REGISTER",
    "AppFormatError",
    "AppLinkError",
    "AppModule",
    "Event",
    "ExecutionFailure",
    "Outcome",
    "WasmRuntime",
]

logger = logging.getLogger("calimero_workflow.node.runtime")

#: The custom section holding the app's ``wasm-abi/1`` JSON.
ABI_SECTION = "calimero_abi_v1"

# Exports the runtime calls itself; they are not RPC methods.
_INTERNAL_PREFIX = "__calimero_"
_REGISTER_MERGE = "__calimero_register_merge"


class AppFormatError(Exception):
    """The bytes are not a wasm module merod would accept; the message says why."""


class AppLinkError(AppFormatError):
    """The module imports host functions merod does not provide.

    ``unknown_imports`` lists each offending import as ``"module.name"``, e.g.
    ``["env.send_proposal"]``; ``mismatched_imports`` lists known functions
    imported with the wrong signature.
    """

    def __init__(
        self,
        message: str,
        unknown_imports: list[str],
        mismatched_imports: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.unknown_imports = unknown_imports
        self.mismatched_imports = mismatched_imports or []


@dataclass(frozen=True)
class Event:
    """An event the guest emitted: ``kind`` is the variant name, ``data`` the payload."""

    kind: str
    data: bytes


@dataclass
class ExecutionFailure:
    """Why a call failed; ``message`` is merod's ``FunctionCallError`` display text.

    ``kind`` is one of ``"Panic"``, ``"Trap"`` (including gas exhaustion),
    ``"MethodNotFound"``, ``"InvalidSignature"`` or ``"HostError"``.
    """

    kind: str
    message: str


@dataclass
class Outcome:
    """Everything one call produced.

    When ``failure`` is set nothing may be applied: ``writes`` is empty and
    ``root_hash``/``artifact`` are cleared, while ``logs``, ``events`` and
    ``returns`` keep what the guest produced before failing, for diagnostics.
    """

    returns: bytes | None = None
    is_error: bool = False
    logs: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    root_hash: bytes | None = None
    artifact: bytes = b""
    writes: dict[bytes, bytes | None] = field(default_factory=dict)
    failure: ExecutionFailure | None = None
    duration_s: float = 0.0


class _HostAbort(Exception):
    """Raised inside a host function to stop the guest with a given failure."""

    def __init__(self, failure: ExecutionFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _host_error(message: str) -> _HostAbort:
    return _HostAbort(ExecutionFailure("HostError", message))


class _CallState:
    """Mutable state of one ``run``; host functions find it via a thread-local."""

    __slots__ = (
        "input",
        "storage",
        "writes",
        "registers",
        "outcome",
        "committed",
        "context_id",
        "executor_id",
        "memory",
        "abort",
        "clock",
        "random",
    )

    def __init__(
        self,
        input: bytes,
        storage: Mapping[bytes, bytes],
        context_id: bytes,
        executor_id: bytes,
        clock: Callable[[], int],
        random: Callable[[int], bytes],
    ) -> None:
        self.input = input
        self.storage = storage
        self.writes: dict[bytes, bytes | None] = {}
        self.registers: dict[int, bytes] = {}
        self.outcome = Outcome()
        self.committed = False
        self.context_id = context_id
        self.executor_id = executor_id
        self.memory: wasmtime.Memory | None = None
        self.abort: ExecutionFailure | None = None
        self.clock = clock
        self.random = random


_VALTYPES = {"I": wasmtime.ValType.i64, "i": wasmtime.ValType.i32}


def _func_type(params: str, results: str) -> wasmtime.FuncType:
    return wasmtime.FuncType(
        [_VALTYPES[c]() for c in params], [_VALTYPES[c]() for c in results]
    )


def _describe(ty: wasmtime.FuncType) -> str:
    params = ", ".join(str(t) for t in ty.params)
    results = ", ".join(str(t) for t in ty.results)
    return f"({params}) -> ({results})"


def _signature_letters(ty: wasmtime.FuncType) -> tuple[str, str] | None:
    letters = {str(wasmtime.ValType.i64()): "I", str(wasmtime.ValType.i32()): "i"}
    try:
        params = "".join(letters[str(t)] for t in ty.params)
        results = "".join(letters[str(t)] for t in ty.results)
    except KeyError:
        return None
    return params, results


class _Host:
    """The ``env`` host functions, shared by every module of one runtime.

    wasmtime-py linker functions are store-independent closures, so per-call
    state cannot be bound to them; each call parks its ``_CallState`` in a
    thread-local instead (a call never re-enters ``run`` on the same thread).
    """

    def __init__(self) -> None:
        self._tls = threading.local()

    # -- plumbing -----------------------------------------------------------------

    def enter(self, state: _CallState) -> None:
        self._tls.state = state

    def leave(self) -> None:
        self._tls.state = None

    def _state(self) -> _CallState:
        return self._tls.state  # type: ignore[no-any-return]

    def _memory(self, caller: wasmtime.Caller, state: _CallState) -> wasmtime.Memory:
        if state.memory is None:
            memory = caller.get("memory")
            if not isinstance(memory, wasmtime.Memory):
                raise _host_error("the module does not export a memory named `memory`")
            state.memory = memory
        return state.memory

    def _span(self, caller: wasmtime.Caller, ptr: int, length: int) -> int:
        """Bounds-check ``length`` bytes at guest offset ``ptr``; return the host address."""
        memory = self._memory(caller, self._state())
        # Ask for the base each time: memory.grow may have moved it.
        size = memory.data_len(caller)
        if ptr + length > size:
            raise _host_error(
                f"invalid memory access: {length} bytes at offset {ptr} lie outside "
                f"guest memory of {size} bytes"
            )
        return ctypes.addressof(memory.data_ptr(caller).contents) + ptr

    def _read(self, caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
        address = self._span(caller, ptr, length)
        return ctypes.string_at(address, length) if length else b""

    def _write(self, caller: wasmtime.Caller, ptr: int, data: bytes) -> None:
        address = self._span(caller, ptr, len(data))
        if data:
            ctypes.memmove(address, data, len(data))

    def _buffer(self, caller: wasmtime.Caller, desc_ptr: int) -> tuple[int, int]:
        ptr, length = abi.BUFFER.unpack(self._read(caller, desc_ptr, abi.BUFFER.size))
        return ptr, length

    def _buffer_bytes(
        self, caller: wasmtime.Caller, desc_ptr: int, limit: int, what: str
    ) -> bytes:
        ptr, length = self._buffer(caller, desc_ptr)
        if length > limit:
            raise _host_error(
                f"{what} of {length} bytes exceeds the {limit}-byte limit"
            )
        return self._read(caller, ptr, length)

    def _set_register(self, register_id: int, data: bytes) -> None:
        registers = self._state().registers
        if register_id not in registers and len(registers) >= LIMITS.max_registers:
            raise _host_error(
                f"too many registers: cannot set register {register_id}, "
                f"the limit is {LIMITS.max_registers}"
            )
        if len(data) > LIMITS.max_register_size:
            raise _host_error(
                f"register {register_id} would hold {len(data)} bytes, "
                f"the limit is {LIMITS.max_register_size}"
            )
        registers[register_id] = data

    def _storage_get(self, key: bytes) -> bytes | None:
        state = self._state()
        if key in state.writes:
            return state.writes[key]
        return state.storage.get(key)

    def _storage_key(self, caller: wasmtime.Caller, desc_ptr: int) -> bytes:
        return self._buffer_bytes(
            caller, desc_ptr, LIMITS.max_storage_key_size, "storage key"
        )

    # -- registers and input ----------------------------------------------------

    def input(self, caller: wasmtime.Caller, register_id: int) -> None:
        self._set_register(register_id, self._state().input)

    def register_len(self, caller: wasmtime.Caller, register_id: int) -> int:
        data = self._state().registers.get(register_id)
        # u64::MAX for "unset"; wasmtime-py wants the i64 bit pattern.
        return -1 if data is None else len(data)

    def read_register(
        self, caller: wasmtime.Caller, register_id: int, desc_ptr: int
    ) -> int:
        data = self._state().registers.get(register_id)
        if data is None:
            raise _host_error(f"invalid register id: {register_id} (register is unset)")
        ptr, length = self._buffer(caller, desc_ptr)
        if length != len(data):
            return 0
        self._write(caller, ptr, data)
        return 1

    def context_id(self, caller: wasmtime.Caller, register_id: int) -> None:
        self._set_register(register_id, self._state().context_id)

    def executor_id(self, caller: wasmtime.Caller, register_id: int) -> None:
        self._set_register(register_id, self._state().executor_id)

    # At HEAD `executor_id` is a compat shim returning the account id, so the two
    # are the same 32 bytes here.
    account_id = executor_id

    # -- results, logs, events, panics ---------------------------------------------

    def value_return(self, caller: wasmtime.Caller, desc_ptr: int) -> None:
        discriminant, ptr, length = abi.VALUE_RETURN.unpack(
            self._read(caller, desc_ptr, abi.VALUE_RETURN.size)
        )
        if discriminant not in (0, 1):
            raise _host_error(
                f"value_return: invalid discriminant {discriminant} (0 = Ok, 1 = Err)"
            )
        if length > LIMITS.max_value_return_size:
            raise _host_error(
                f"value_return payload of {length} bytes exceeds the "
                f"{LIMITS.max_value_return_size}-byte limit"
            )
        outcome = self._state().outcome
        outcome.returns = self._read(caller, ptr, length)
        outcome.is_error = discriminant == 1

    def log_utf8(self, caller: wasmtime.Caller, desc_ptr: int) -> None:
        outcome = self._state().outcome
        if len(outcome.logs) >= LIMITS.max_logs:
            raise _host_error(
                f"too many log lines: the limit is {LIMITS.max_logs} per call"
            )
        raw = self._buffer_bytes(caller, desc_ptr, LIMITS.max_log_size, "log line")
        try:
            outcome.logs.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _host_error(
                f"log line is not valid UTF-8: {exc.reason} at byte {exc.start}"
            ) from None

    def _location(self, caller: wasmtime.Caller, loc_ptr: int) -> str:
        file_ptr, file_len, line, column = abi.LOCATION.unpack(
            self._read(caller, loc_ptr, abi.LOCATION.size)
        )
        file = self._read(caller, file_ptr, file_len).decode("utf-8", "replace")
        return f"{file}:{line}:{column}"

    def panic_utf8(self, caller: wasmtime.Caller, msg_ptr: int, loc_ptr: int) -> None:
        raw = self._buffer_bytes(caller, msg_ptr, LIMITS.max_log_size, "panic message")
        try:
            message = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _host_error("panic message is not valid UTF-8") from None
        location = self._location(caller, loc_ptr)
        raise _HostAbort(
            ExecutionFailure("Panic", f"guest panicked: {message} at {location}")
        )

    def panic(self, caller: wasmtime.Caller, loc_ptr: int) -> None:
        location = self._location(caller, loc_ptr)
        raise _HostAbort(
            ExecutionFailure("Panic", f"guest panicked: explicit panic at {location}")
        )

    def emit(self, caller: wasmtime.Caller, event_ptr: int) -> None:
        outcome = self._state().outcome
        if len(outcome.events) >= LIMITS.max_events:
            raise _host_error(
                f"too many events: the limit is {LIMITS.max_events} per call"
            )
        kind_ptr, kind_len, data_ptr, data_len = abi.EVENT.unpack(
            self._read(caller, event_ptr, abi.EVENT.size)
        )
        if kind_len > LIMITS.max_event_kind_size:
            raise _host_error(
                f"event kind of {kind_len} bytes exceeds the {LIMITS.max_event_kind_size}-byte limit"
            )
        if data_len > LIMITS.max_event_data_size:
            raise _host_error(
                f"event data of {data_len} bytes exceeds the {LIMITS.max_event_data_size}-byte limit"
            )
        try:
            kind = self._read(caller, kind_ptr, kind_len).decode("utf-8")
        except UnicodeDecodeError:
            raise _host_error("event kind is not valid UTF-8") from None
        outcome.events.append(Event(kind, self._read(caller, data_ptr, data_len)))

    # -- state ---------------------------------------------------------------------

    def commit(self, caller: wasmtime.Caller, root_ptr: int, artifact_ptr: int) -> None:
        state = self._state()
        if state.committed:
            raise _host_error("commit called more than once in one execution")
        root_addr, root_len = self._buffer(caller, root_ptr)
        if root_len != 32:
            raise _host_error(
                f"commit: the root hash must be exactly 32 bytes, got {root_len}"
            )
        root = self._read(caller, root_addr, root_len)
        artifact = self._buffer_bytes(
            caller, artifact_ptr, LIMITS.max_artifact_size, "artifact"
        )
        state.committed = True
        state.outcome.root_hash = root
        state.outcome.artifact = artifact

    def storage_read(
        self, caller: wasmtime.Caller, key_ptr: int, register_id: int
    ) -> int:
        value = self._storage_get(self._storage_key(caller, key_ptr))
        if value is None:
            return 0
        self._set_register(register_id, value)
        return 1

    def storage_write(
        self, caller: wasmtime.Caller, key_ptr: int, value_ptr: int, register_id: int
    ) -> int:
        key = self._storage_key(caller, key_ptr)
        value = self._buffer_bytes(
            caller, value_ptr, LIMITS.max_storage_value_size, "storage value"
        )
        old = self._storage_get(key)
        # Known gap: merod also charges each write against a per-run budget;
        # only the key and value size limits are enforced here.
        self._state().writes[key] = value
        if old is None:
            return 0
        self._set_register(register_id, old)
        return 1

    def storage_remove(
        self, caller: wasmtime.Caller, key_ptr: int, register_id: int
    ) -> int:
        key = self._storage_key(caller, key_ptr)
        old = self._storage_get(key)
        if old is None:
            return 0
        self._state().writes[key] = None
        self._set_register(register_id, old)
        return 1

    # -- environment ---------------------------------------------------------------

    def time_now(self, caller: wasmtime.Caller, desc_ptr: int) -> None:
        ptr, length = self._buffer(caller, desc_ptr)
        if length != 8:
            raise _host_error(
                f"time_now: the buffer must be 8 bytes long, got {length}"
            )
        now = self._state().clock() & U64_MAX
        self._write(caller, ptr, now.to_bytes(8, "little"))

    def random_bytes(self, caller: wasmtime.Caller, desc_ptr: int) -> None:
        ptr, length = self._buffer(caller, desc_ptr)
        if length > LIMITS.max_register_size:
            raise _host_error(f"random_bytes: {length} bytes requested, too many")
        self._write(caller, ptr, self._state().random(length))

    def ed25519_verify(
        self, caller: wasmtime.Caller, sig_ptr: int, pk_ptr: int, msg_ptr: int
    ) -> int:
        signature = self._buffer_bytes(caller, sig_ptr, 64, "ed25519 signature")
        if len(signature) != 64:
            raise _host_error(
                f"ed25519_verify: the signature must be 64 bytes, got {len(signature)}"
            )
        public_key = self._buffer_bytes(caller, pk_ptr, 32, "ed25519 public key")
        if not abi.ed25519_public_key_valid(public_key):
            raise _host_error(
                f"ed25519_verify: invalid public key {public_key.hex()} "
                "(must be 32 bytes encoding a curve point)"
            )
        message = self._buffer_bytes(
            caller, msg_ptr, LIMITS.max_register_size, "message"
        )
        return 1 if abi.ed25519_verify(signature, public_key, message) else 0

    # -- wiring --------------------------------------------------------------------

    def define(self, linker: wasmtime.Linker) -> None:
        for name, (params, results) in abi.HOST_FUNCTIONS.items():
            linker.define_func(
                "env",
                name,
                _func_type(params, results),
                self._guarded(name),
                access_caller=True,
            )

    def _guarded(self, name: str) -> Callable[..., Any]:
        func = getattr(self, name)

        def host_function(caller: wasmtime.Caller, *args: int) -> Any:
            # Guest u64 arguments arrive as signed i64; reinterpret them.
            args = tuple(a & U64_MAX for a in args)
            try:
                return func(caller, *args)
            except _HostAbort as exc:
                self._state().abort = exc.failure
                raise
            except Exception as exc:
                # A bug of ours must not be mistaken for guest misbehaviour.
                logger.exception("host function env.%s failed", name)
                failure = ExecutionFailure(
                    "HostError", f"internal error in env.{name}: {exc}"
                )
                self._state().abort = failure
                raise _HostAbort(failure) from exc

        host_function.__name__ = f"env_{name}"
        return host_function


# wasmtime trap codes -> merod's `WasmTrap` display texts.
_TRAP_TEXT = {
    wasmtime.TrapCode.STACK_OVERFLOW: "stack overflow",
    wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS: "memory out of bounds",
    wasmtime.TrapCode.HEAP_MISALIGNED: "heap misaligned",
    wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS: "table access out of bounds",
    wasmtime.TrapCode.INDIRECT_CALL_TO_NULL: "indirect call to null",
    wasmtime.TrapCode.BAD_SIGNATURE: "bad signature",
    wasmtime.TrapCode.INTEGER_OVERFLOW: "integer overflow",
    wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO: "integer division by zero",
    wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER: "bad conversion to integer",
    wasmtime.TrapCode.UNREACHABLE: "unreachable code reached",
}


def _trap_failure(exc: BaseException, gas_limit: int) -> ExecutionFailure:
    code = getattr(exc, "trap_code", None)
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        return ExecutionFailure(
            "Trap", f"execution exhausted its gas limit of {gas_limit} points"
        )
    if code in _TRAP_TEXT:
        return ExecutionFailure("Trap", _TRAP_TEXT[code])
    # Keep wasmtime's first line without its "wasm trap: " prefix; the rest is a
    # backtrace that only helps someone holding the module's source.
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return ExecutionFailure(
        "Trap",
        first.removeprefix("wasm trap: ").removeprefix("error while executing at "),
    )


def _valid_method_name(method: str) -> bool:
    return (
        0 < len(method) <= LIMITS.max_method_name_size
        and method.isascii()
        and all(c.isalnum() or c == "_" for c in method)
    )


# wasmtime-py hands a Python exception raised by a host function back through a
# module-global slot, so two threads inside wasm at once could pick up each
# other's exception. Calls are therefore serialised process-wide; the host
# functions hold the GIL anyway, so little parallelism is lost.
_CALL_LOCK = threading.Lock()


def _export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> Any:
    """Look up one export by name.

    ``Instance.exports()`` wraps every export of the module (about 10 µs
    each), which dominated a cheap call; the C API has a by-name lookup that
    wasmtime-py does not expose, so use its bindings when they are where we
    expect them and fall back to the public API otherwise.
    """
    try:
        from wasmtime import _ffi as ffi
        from wasmtime._extern import wrap_extern

        raw = name.encode()
        item = ffi.wasmtime_extern_t()
        found = ffi.wasmtime_instance_export_get(
            store._context(),
            ctypes.byref(instance._instance),
            raw,
            len(raw),
            ctypes.byref(item),
        )
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other wasmtime-py
        return instance.exports(store).get(name)
    return wrap_extern(item) if found else None


def _default_clock() -> int:
    return time.time_ns()


class AppModule:
    """One compiled Calimero app; cheap to :meth:`run` many times, from any thread.

    Attributes:
        sha256: hex SHA-256 of the wasm bytes (the cache key).
        size: length of the wasm in bytes.
        methods: exported ``() -> ()`` functions callable as RPC methods
            (``init`` included, ``__calimero_*`` internals excluded).
        abi: the parsed ``calimero_abi_v1`` custom section, or ``None``.
    """

    def __init__(
        self,
        *,
        sha256: str,
        size: int,
        module: wasmtime.Module,
        instance_pre: wasmtime.InstancePre,
        engine: wasmtime.Engine,
        host: _Host,
        methods: frozenset[str],
        internal: frozenset[str],
        bad_signatures: frozenset[str],
        abi: dict[str, Any] | None,
        gas_limit: int,
    ) -> None:
        self.sha256 = sha256
        self.size = size
        self.methods = methods
        self.abi = abi
        self._module = module
        self._pre = instance_pre
        self._engine = engine
        self._host = host
        self._internal = internal
        self._has_merge = _REGISTER_MERGE in internal
        self._bad_signatures = bad_signatures
        self.gas_limit = gas_limit

    def __repr__(self) -> str:
        return f"<AppModule sha256={self.sha256[:12]}… size={self.size} methods={sorted(self.methods)}>"

    def run(
        self,
        method: str,
        input: bytes,
        *,
        storage: Mapping[bytes, bytes],
        context_id: bytes,
        executor_id: bytes,
        clock: Callable[[], int] | None = None,
        random: Callable[[int], bytes] | None = None,
    ) -> Outcome:
        """Execute ``method`` with ``input`` against a read-only view of ``storage``.

        Args:
            method: the export to call, e.g. ``"set"`` or ``"__calimero_sync_next"``.
            input: the bytes ``env.input`` hands out (JSON args, or an artifact).
            storage: the context's key-value store; never mutated here.
            context_id: 32 bytes returned by ``env.context_id``.
            executor_id: 32 bytes returned by ``env.executor_id``/``env.account_id``.
            clock: optional ``time_now`` source in ns since the epoch; tests pass
                a fixed clock to make root hashes reproducible.
            random: optional ``random_bytes`` source, ``n -> bytes``.

        Returns:
            The :class:`Outcome`; a guest failure is reported in
            ``Outcome.failure``, never raised.

        Raises:
            ValueError: ``context_id`` or ``executor_id`` is not 32 bytes.
        """
        started = time.perf_counter()
        for name, value in (("context_id", context_id), ("executor_id", executor_id)):
            if len(value) != 32:
                raise ValueError(
                    f"{name} must be 32 raw bytes, got {len(value)} ({bytes(value)[:40]!r}); "
                    "decode base58/hex ids before calling run()"
                )
        state = _CallState(
            bytes(input),
            storage,
            bytes(context_id),
            bytes(executor_id),
            clock or _default_clock,
            random or os.urandom,
        )
        try:
            state.outcome.failure = self._execute(method, state)
        finally:
            self._host.leave()
        outcome = state.outcome
        if outcome.failure is None:
            outcome.writes = state.writes
        else:
            outcome.root_hash = None
            outcome.artifact = b""
        outcome.duration_s = time.perf_counter() - started
        return outcome

    def _execute(self, method: str, state: _CallState) -> ExecutionFailure | None:
        if not _valid_method_name(method):
            return ExecutionFailure(
                "MethodNotFound",
                f"method {method!r} has an invalid name: use 1-256 ASCII letters, digits or '_'",
            )
        if method in self._bad_signatures:
            return ExecutionFailure(
                "InvalidSignature",
                f'method "{method}" has an invalid signature: exports must have type () -> ()',
            )
        if method not in self.methods and method not in self._internal:
            return ExecutionFailure("MethodNotFound", f'method "{method}" not found')

        store = wasmtime.Store(self._engine)
        store.set_limits(memory_size=LIMITS.max_memory_size)
        store.set_fuel(self.gas_limit)
        self._host.enter(state)
        try:
            with _CALL_LOCK:
                instance = self._pre.instantiate(store)
        except Exception as exc:
            return state.abort or _trap_failure(exc, self.gas_limit)
        memory = _export(store, instance, "memory")
        assert isinstance(memory, wasmtime.Memory)
        state.memory = memory

        if self._has_merge and method != _REGISTER_MERGE:
            merge = _export(store, instance, _REGISTER_MERGE)
            assert isinstance(merge, wasmtime.Func)
            try:
                with _CALL_LOCK:
                    merge(store)
            except Exception as exc:
                # merod ignores this failure too; note it for whoever debugs an app.
                logger.debug(
                    "%s failed (ignored): %s", _REGISTER_MERGE, state.abort or exc
                )
                state.abort = None

        func = _export(store, instance, method)
        assert isinstance(func, wasmtime.Func)
        try:
            with _CALL_LOCK:
                func(store)
        except Exception as exc:
            return state.abort or _trap_failure(exc, self.gas_limit)
        return None


class WasmRuntime:
    """Compiles and caches Calimero apps; one per process is enough.

    The engine meters fuel (merod's gas) and every compiled module shares the
    same host functions, so instantiating per call is cheap.
    """

    def __init__(self, *, gas_limit: int = DEFAULT_GAS_LIMIT) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        self.engine = wasmtime.Engine(config)
        self.gas_limit = gas_limit
        self._host = _Host()
        self._linker = wasmtime.Linker(self.engine)
        self._host.define(self._linker)
        self._cache: dict[str, AppModule] = {}
        self._lock = threading.Lock()

    def compile(self, wasm: bytes) -> AppModule:
        """Validate and compile ``wasm``; the same bytes compile only once.

        Raises:
            AppLinkError: it imports functions merod does not provide.
            AppFormatError: it is not wasm, does not compile, imports memory,
                does not export ``memory``, or exports ``_start``.
        """
        wasm = bytes(wasm)
        digest = hashlib.sha256(wasm).hexdigest()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None:
            return cached
        module = self._compile_module(wasm)
        with self._lock:
            # Another thread may have compiled the same bytes meanwhile; keep one.
            return self._cache.setdefault(digest, module)

    def _compile_module(self, wasm: bytes) -> AppModule:
        digest = hashlib.sha256(wasm).hexdigest()
        if wasm[:4] != b"\0asm":
            head = wasm[:8]
            raise AppFormatError(
                f"not a wasm module: expected the bytes 00 61 73 6d ('\\0asm') at the start, "
                f"got {head.hex(' ') or 'an empty file'}; pass the .wasm file, not its text or a path"
            )
        try:
            module = wasmtime.Module(self.engine, wasm)
        except wasmtime.WasmtimeError as exc:
            # wasmtime's text is "<what>\n\nCaused by:\n    <why>"; flatten it.
            lines = [line.strip() for line in str(exc).splitlines()]
            reason = "; ".join(line for line in lines if line and line != "Caused by:")
            raise AppFormatError(
                f"cannot compile the wasm module ({len(wasm)} bytes): {reason}"
            ) from None

        self._check_imports(module)
        methods, internal, bad = self._classify_exports(module)
        instance_pre = self._linker.instantiate_pre(module)
        return AppModule(
            sha256=digest,
            size=len(wasm),
            module=module,
            instance_pre=instance_pre,
            engine=self.engine,
            host=self._host,
            methods=methods,
            internal=internal,
            bad_signatures=bad,
            abi=_read_abi(wasm),
            gas_limit=self.gas_limit,
        )

    @staticmethod
    def _check_imports(module: wasmtime.Module) -> None:
        unknown: list[str] = []
        mismatched: list[str] = []
        for imp in module.imports:
            name = f"{imp.module}.{imp.name}"
            ty = imp.type
            if isinstance(ty, wasmtime.MemoryType):
                raise AppFormatError(
                    f"the module imports its memory ({name}); Calimero apps must define and "
                    "export their own memory (build without --import-memory)"
                )
            expected = (
                abi.HOST_FUNCTIONS.get(imp.name or "") if imp.module == "env" else None
            )
            if expected is None or not isinstance(ty, wasmtime.FuncType):
                unknown.append(name)
                continue
            if _signature_letters(ty) != expected:
                params, results = expected
                mismatched.append(
                    f"{name} (expected {_describe(_func_type(params, results))}, "
                    f"got {_describe(ty)})"
                )
        if unknown or mismatched:
            parts = []
            if unknown:
                parts.append(
                    "imports the node does not provide: "
                    + ", ".join(unknown)
                    + " (merod refuses to link such a module; rebuild against a current SDK)"
                )
            if mismatched:
                parts.append(
                    "imports with the wrong signature: " + "; ".join(mismatched)
                )
            raise AppLinkError(
                "cannot link the module: " + "; ".join(parts), unknown, mismatched
            )

    @staticmethod
    def _classify_exports(
        module: wasmtime.Module,
    ) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        methods: set[str] = set()
        internal: set[str] = set()
        bad: set[str] = set()
        has_memory = False
        for exp in module.exports:
            ty = exp.type
            if exp.name == "memory":
                has_memory = isinstance(ty, wasmtime.MemoryType)
                continue
            if exp.name == "_start":
                raise AppFormatError(
                    "the module exports `_start`: it was built as a command (WASI program), "
                    "not as a Calimero app library; build with --no-entry"
                )
            if not isinstance(ty, wasmtime.FuncType):
                continue
            if ty.params or ty.results:
                bad.add(exp.name)
            elif exp.name.startswith(_INTERNAL_PREFIX):
                internal.add(exp.name)
            else:
                methods.add(exp.name)
        if not has_memory:
            raise AppFormatError(
                "the module does not export a memory named `memory`; the host needs it to "
                "pass data in and out"
            )
        return frozenset(methods), frozenset(internal), frozenset(bad)


def _read_abi(wasm: bytes) -> dict[str, Any] | None:
    try:
        sections = [
            payload
            for name, payload in abi.custom_sections(wasm)
            if name == ABI_SECTION
        ]
    except ValueError as exc:
        logger.warning("cannot read custom sections: %s", exc)
        return None
    if not sections:
        return None
    try:
        parsed = json.loads(sections[0].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # An app with a broken ABI section still runs; only the ABI endpoint suffers.
        logger.warning("the %s custom section is not valid JSON: %s", ABI_SECTION, exc)
        return None
    return parsed if isinstance(parsed, dict) else None
