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
caller to apply, only when :attr:`Outcome.failure` is ``None``. The node-local
stores (private storage, the ordered index and its markers) work the same way
through :attr:`Outcome.private_writes`, :attr:`Outcome.index_writes` and
:attr:`Outcome.index_meta_writes`. Blobs are the exception, as in merod: a blob
the guest closes is stored at once through :class:`BlobStore`.

A failing host call reports merod's ``HostError`` text (``abi.HOST_ERRORS``)
as :attr:`ExecutionFailure.message`, so callers see what merod would answer;
:attr:`ExecutionFailure.detail` says in our words what was wrong.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import wasmtime

from . import abi
from .abi import DATA_REGISTER, DEFAULT_GAS_LIMIT, HOST_ERRORS, LIMITS, U64_MAX

__all__ = [
    "DATA_REGISTER",
    "AppFormatError",
    "AppLinkError",
    "AppModule",
    "BlobStore",
    "Event",
    "ExecutionFailure",
    "Outcome",
    "WasmRuntime",
    "XCall",
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
        refused_imports: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.unknown_imports = unknown_imports
        self.mismatched_imports = mismatched_imports or []
        #: Imports merod provides that the embedded node cannot (abi.REFUSED_HOST_FUNCTIONS).
        self.refused_imports = refused_imports or []


@dataclass(frozen=True)
class Event:
    """An event the guest emitted: ``kind`` is the variant name, ``data`` the payload.

    ``handler`` names the app method that receiving nodes run with ``data`` as
    its input (``emit_with_handler``); None for a plain ``emit``.
    """

    kind: str
    data: bytes
    handler: str | None = None


@dataclass(frozen=True)
class XCall:
    """A cross-context call the guest queued: run after this call, on this node."""

    context_id: bytes
    function: str
    params: bytes


class BlobStore(Protocol):
    """The node's blob store as the ``blob_*`` host functions see it (32-byte ids)."""

    def get(self, blob_id: bytes) -> bytes | None:
        """The blob held on this node, or None."""

    def put(self, data: bytes) -> bytes:
        """Store ``data``; return its id."""

    def announce(self, blob_id: bytes, context_id: bytes) -> bool:
        """Make a blob this node holds known to the context's members."""

    def fetch(self, blob_id: bytes, context_id: bytes) -> bytes | None:
        """The blob, from this node or else from the context's peers; None if nobody has it."""


@dataclass
class ExecutionFailure:
    """Why a call failed; ``message`` is merod's ``FunctionCallError`` display text.

    ``kind`` is one of ``"Panic"``, ``"Trap"`` (including gas exhaustion),
    ``"MethodNotFound"``, ``"InvalidSignature"`` or ``"HostError"``. ``detail``
    is our own explanation (which call, which bytes, which limit); merod has
    no equivalent, so it belongs in logs, never in an API answer.
    """

    kind: str
    message: str
    detail: str = ""


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
    private_writes: dict[bytes, bytes | None] = field(default_factory=dict)
    index_writes: dict[bytes, bytes | None] = field(default_factory=dict)
    index_meta_writes: dict[bytes, bytes | None] = field(default_factory=dict)
    xcalls: list[XCall] = field(default_factory=list)
    migration_witness: bytes | None = None
    failure: ExecutionFailure | None = None
    duration_s: float = 0.0


class _HostAbort(Exception):
    """Raised inside a host function to stop the guest with a given failure."""

    def __init__(self, failure: ExecutionFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _host_error(message: str, detail: str = "") -> _HostAbort:
    """Stop the guest with merod's ``message``; ``detail`` is for the node log."""
    return _HostAbort(ExecutionFailure("HostError", message, detail))


def _memory_error(detail: str) -> _HostAbort:
    return _host_error(HOST_ERRORS["memory"], detail)


class _BlobHandle:
    """An open ``blob_*`` descriptor: chunks being written, or a blob being read."""

    __slots__ = ("blob_id", "chunks", "data", "position")

    def __init__(self, blob_id: bytes | None) -> None:
        self.blob_id = blob_id  # None for a write handle
        self.chunks: list[bytes] = []
        self.data: bytes | None = None
        self.position = 0


class _CallState:
    """Mutable state of one ``run``; host functions find it via a thread-local."""

    __slots__ = (
        "input",
        "storage",
        "writes",
        "registers",
        "register_bytes",
        "outcome",
        "committed",
        "context_id",
        "executor_id",
        "account_id",
        "xcall_origin",
        "memory",
        "abort",
        "clock",
        "random",
        "private",
        "index",
        "index_meta",
        "blobs",
        "blob_handles",
        "next_blob_fd",
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
        self.register_bytes = 0
        self.outcome = Outcome()
        self.committed = False
        self.context_id = context_id
        self.executor_id = executor_id
        self.account_id = executor_id
        self.xcall_origin: bytes | None = None
        self.memory: wasmtime.Memory | None = None
        self.abort: ExecutionFailure | None = None
        self.clock = clock
        self.random = random
        # Node-local stores; None means this run has no such backend, and the
        # host functions answer as merod does without one.
        self.private: Mapping[bytes, bytes] | None = None
        self.index: Mapping[bytes, bytes] | None = None
        self.index_meta: Mapping[bytes, bytes] | None = None
        self.blobs: BlobStore | None = None
        self.blob_handles: dict[int, _BlobHandle] = {}
        self.next_blob_fd = 1


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
            raise _memory_error(
                f"{length} bytes at offset {ptr} lie outside guest memory of {size} bytes"
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
        self, caller: wasmtime.Caller, desc_ptr: int, limit: int, error: str, what: str
    ) -> bytes:
        """The bytes a ``Buffer`` descriptor names; merod's ``error`` above ``limit``."""
        ptr, length = self._buffer(caller, desc_ptr)
        if length > limit:
            raise _host_error(
                HOST_ERRORS[error], f"{what} of {length} bytes exceeds the {limit}-byte limit"
            )
        return self._read(caller, ptr, length)

    def _sized(self, caller: wasmtime.Caller, desc_ptr: int, size: int, what: str) -> bytes:
        """Exactly ``size`` bytes (merod's ``read_guest_memory_sized``)."""
        ptr, length = self._buffer(caller, desc_ptr)
        data = self._read(caller, ptr, length)
        if length != size:
            raise _memory_error(f"{what} must be {size} bytes, got {length}")
        return data

    def _text(self, data: bytes, what: str) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _host_error(
                HOST_ERRORS["utf8"],
                f"{what} is not valid UTF-8: {exc.reason} at byte {exc.start}",
            ) from None

    def _set_register(self, register_id: int, data: bytes) -> None:
        # merod's Registers::set: every refusal is an InvalidMemoryAccess.
        state = self._state()
        registers = state.registers
        old = registers.get(register_id)
        if old is None and len(registers) >= LIMITS.max_registers:
            raise _memory_error(
                f"cannot set register {register_id}: all {LIMITS.max_registers} registers are in use"
            )
        if len(data) > LIMITS.max_register_size:
            raise _memory_error(
                f"register {register_id} would hold {len(data)} bytes, "
                f"the limit is {LIMITS.max_register_size}"
            )
        total = state.register_bytes - (0 if old is None else 8 + len(old)) + 8 + len(data)
        if total > LIMITS.max_registers_capacity:
            raise _memory_error(
                f"registers would hold {total} bytes in all, "
                f"the limit is {LIMITS.max_registers_capacity}"
            )
        registers[register_id] = data
        state.register_bytes = total

    def _storage_get(self, key: bytes) -> bytes | None:
        state = self._state()
        if key in state.writes:
            return state.writes[key]
        return state.storage.get(key)

    def _storage_key(self, caller: wasmtime.Caller, desc_ptr: int) -> bytes:
        return self._buffer_bytes(
            caller, desc_ptr, LIMITS.max_storage_key_size, "key", "storage key"
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
        ptr, length = self._buffer(caller, desc_ptr)
        data = self._state().registers.get(register_id)
        if data is None:
            raise _host_error(
                f"invalid register id: {register_id}", "the register is unset"
            )
        if length != len(data):
            return 0
        self._write(caller, ptr, data)
        return 1

    # -- identity ------------------------------------------------------------------

    def context_id(self, caller: wasmtime.Caller, register_id: int) -> None:
        self._set_register(register_id, self._state().context_id)

    def account_id(self, caller: wasmtime.Caller, register_id: int) -> None:
        self._set_register(register_id, self._state().account_id)

    def device_id(self, caller: wasmtime.Caller, register_id: int) -> None:
        self._set_register(register_id, self._state().executor_id)

    # merod keeps `executor_id` as a linking shim for builds from before the
    # account/device split; it answers the account.
    executor_id = account_id

    def xcall_origin(self, caller: wasmtime.Caller, register_id: int) -> int:
        origin = self._state().xcall_origin
        if origin is None:
            return 0
        self._set_register(register_id, origin)
        return 1

    # -- results, logs, events, panics ---------------------------------------------

    def value_return(self, caller: wasmtime.Caller, desc_ptr: int) -> None:
        discriminant, ptr, length = abi.VALUE_RETURN.unpack(
            self._read(caller, desc_ptr, abi.VALUE_RETURN.size)
        )
        limit = LIMITS.max_value_return_size
        if length > limit:
            raise _host_error(
                f"return value too large (size: {length}, max: {limit})",
                "value_return payload over the limit",
            )
        payload = self._read(caller, ptr, length)
        if discriminant not in (0, 1):
            raise _host_error(
                HOST_ERRORS["deserialization"],
                f"value_return: invalid discriminant {discriminant} (0 = Ok, 1 = Err)",
            )
        outcome = self._state().outcome
        outcome.returns = payload
        outcome.is_error = discriminant == 1

    def emit_migration_witness(self, caller: wasmtime.Caller, desc_ptr: int) -> None:
        ptr, length = self._buffer(caller, desc_ptr)
        witness = self._read(caller, ptr, length)
        if length > LIMITS.max_storage_value_size:
            raise _host_error(
                HOST_ERRORS["value"],
                f"migration witness of {length} bytes exceeds the "
                f"{LIMITS.max_storage_value_size}-byte limit",
            )
        self._state().outcome.migration_witness = witness

    def log_utf8(self, caller: wasmtime.Caller, desc_ptr: int) -> None:
        # merod's order: read the text, then check the count, then the size.
        ptr, length = self._buffer(caller, desc_ptr)
        line = self._text(self._read(caller, ptr, length), "log line")
        outcome = self._state().outcome
        if len(outcome.logs) >= LIMITS.max_logs:
            raise _host_error(
                HOST_ERRORS["logs"], f"more than {LIMITS.max_logs} log lines in one call"
            )
        if length > LIMITS.max_log_size:
            raise _host_error(
                HOST_ERRORS["log_size"],
                f"log line of {length} bytes exceeds the {LIMITS.max_log_size}-byte limit",
            )
        outcome.logs.append(line)

    def _location(self, caller: wasmtime.Caller, loc_ptr: int) -> tuple[int, int, int, int]:
        file_ptr, file_len, line, column = abi.LOCATION.unpack(
            self._read(caller, loc_ptr, abi.LOCATION.size)
        )
        return file_ptr, file_len, line, column

    def _panic(self, message: str, file: str, line: int, column: int) -> _HostAbort:
        return _HostAbort(
            ExecutionFailure(
                "Panic", f"guest panicked: {message} at {file}:{line}:{column}"
            )
        )

    def panic_utf8(self, caller: wasmtime.Caller, msg_ptr: int, loc_ptr: int) -> None:
        msg_data, msg_len = self._buffer(caller, msg_ptr)
        file_ptr, file_len, line, column = self._location(caller, loc_ptr)
        message = self._text(self._read(caller, msg_data, msg_len), "panic message")
        file = self._text(self._read(caller, file_ptr, file_len), "panic location file")
        raise self._panic(message, file, line, column)

    def panic(self, caller: wasmtime.Caller, loc_ptr: int) -> None:
        file_ptr, file_len, line, column = self._location(caller, loc_ptr)
        file = self._text(self._read(caller, file_ptr, file_len), "panic location file")
        raise self._panic("explicit panic", file, line, column)

    def _event(self, caller: wasmtime.Caller, event_ptr: int) -> tuple[str, bytes]:
        kind_ptr, kind_len, data_ptr, data_len = abi.EVENT.unpack(
            self._read(caller, event_ptr, abi.EVENT.size)
        )
        if kind_len > LIMITS.max_event_kind_size:
            raise _host_error(
                HOST_ERRORS["event_kind"],
                f"event kind of {kind_len} bytes exceeds the {LIMITS.max_event_kind_size}-byte limit",
            )
        if data_len > LIMITS.max_event_data_size:
            raise _host_error(
                HOST_ERRORS["event_data"],
                f"event data of {data_len} bytes exceeds the {LIMITS.max_event_data_size}-byte limit",
            )
        if len(self._state().outcome.events) >= LIMITS.max_events:
            raise _host_error(
                HOST_ERRORS["events"], f"more than {LIMITS.max_events} events in one call"
            )
        kind = self._text(self._read(caller, kind_ptr, kind_len), "event kind")
        return kind, self._read(caller, data_ptr, data_len)

    def emit(self, caller: wasmtime.Caller, event_ptr: int) -> None:
        kind, data = self._event(caller, event_ptr)
        self._state().outcome.events.append(Event(kind, data))

    def emit_with_handler(
        self, caller: wasmtime.Caller, event_ptr: int, handler_ptr: int
    ) -> None:
        kind, data = self._event(caller, event_ptr)
        handler = None
        if handler_ptr != 0:
            ptr, length = self._buffer(caller, handler_ptr)
            limit = LIMITS.max_method_name_size
            if length > limit:
                raise _host_error(
                    f"event handler name too large (size: {length}, max: {limit})",
                    "emit_with_handler handler name over the method-name limit",
                )
            handler = self._text(self._read(caller, ptr, length), "event handler name")
        self._state().outcome.events.append(Event(kind, data, handler))

    def xcall(self, caller: wasmtime.Caller, xcall_ptr: int) -> None:
        ctx_ptr, ctx_len, fn_ptr, fn_len, params_ptr, params_len = abi.XCALL.unpack(
            self._read(caller, xcall_ptr, abi.XCALL.size)
        )
        if fn_len > LIMITS.max_xcall_function_size:
            raise _host_error(
                HOST_ERRORS["xcall_function"],
                f"xcall function name of {fn_len} bytes exceeds the "
                f"{LIMITS.max_xcall_function_size}-byte limit",
            )
        if params_len > LIMITS.max_xcall_params_size:
            raise _host_error(
                HOST_ERRORS["xcall_params"],
                f"xcall params of {params_len} bytes exceed the "
                f"{LIMITS.max_xcall_params_size}-byte limit",
            )
        outcome = self._state().outcome
        if len(outcome.xcalls) >= LIMITS.max_xcalls:
            raise _host_error(
                HOST_ERRORS["xcalls"], f"more than {LIMITS.max_xcalls} xcalls in one call"
            )
        context = self._read(caller, ctx_ptr, ctx_len)
        if ctx_len != 32:
            raise _memory_error(f"xcall context id must be 32 bytes, got {ctx_len}")
        function = self._text(self._read(caller, fn_ptr, fn_len), "xcall function name")
        outcome.xcalls.append(XCall(context, function, self._read(caller, params_ptr, params_len)))

    # -- state ---------------------------------------------------------------------

    def commit(self, caller: wasmtime.Caller, root_ptr: int, artifact_ptr: int) -> None:
        state = self._state()
        root_addr, root_len = self._buffer(caller, root_ptr)
        artifact_addr, artifact_len = self._buffer(caller, artifact_ptr)
        limit = LIMITS.max_artifact_size
        if artifact_len > limit:
            raise _host_error(
                f"commit artifact size overflow (size: {artifact_len}, max: {limit})",
                "commit artifact over the limit",
            )
        root = self._read(caller, root_addr, root_len)
        if root_len != 32:
            raise _memory_error(f"commit: the root hash must be 32 bytes, got {root_len}")
        artifact = self._read(caller, artifact_addr, artifact_len)
        if state.committed:
            # merod reports a second commit as an InvalidMemoryAccess.
            raise _memory_error("commit called more than once in one execution")
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
        key_addr, key_len = self._buffer(caller, key_ptr)
        value_addr, value_len = self._buffer(caller, value_ptr)
        self._check_key_value(key_len, value_len)
        key = self._read(caller, key_addr, key_len)
        value = self._read(caller, value_addr, value_len)
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

    def _check_key_value(self, key_len: int, value_len: int) -> None:
        if key_len > LIMITS.max_storage_key_size:
            raise _host_error(
                HOST_ERRORS["key"],
                f"key of {key_len} bytes exceeds the {LIMITS.max_storage_key_size}-byte limit",
            )
        if value_len > LIMITS.max_storage_value_size:
            raise _host_error(
                HOST_ERRORS["value"],
                f"value of {value_len} bytes exceeds the {LIMITS.max_storage_value_size}-byte limit",
            )

    def _key_value(
        self, caller: wasmtime.Caller, key_ptr: int, value_ptr: int
    ) -> tuple[bytes, bytes]:
        key_addr, key_len = self._buffer(caller, key_ptr)
        value_addr, value_len = self._buffer(caller, value_ptr)
        self._check_key_value(key_len, value_len)
        return self._read(caller, key_addr, key_len), self._read(caller, value_addr, value_len)

    # -- node-local private storage ------------------------------------------------
    #
    # Not synchronised: the node keeps it per context and never sends it to peers.
    # Without a backend merod answers 0 (absent / not written).

    def _private_get(self, key: bytes) -> bytes | None:
        state = self._state()
        if key in state.outcome.private_writes:
            return state.outcome.private_writes[key]
        assert state.private is not None
        return state.private.get(key)

    def private_storage_read(
        self, caller: wasmtime.Caller, key_ptr: int, register_id: int
    ) -> int:
        key = self._storage_key(caller, key_ptr)
        if self._state().private is None:
            return 0
        value = self._private_get(key)
        if value is None:
            return 0
        self._set_register(register_id, value)
        return 1

    def private_storage_remove(
        self, caller: wasmtime.Caller, key_ptr: int, register_id: int
    ) -> int:
        key = self._storage_key(caller, key_ptr)
        state = self._state()
        if state.private is None:
            return 0
        old = self._private_get(key)
        if old is None:
            return 0
        state.outcome.private_writes[key] = None
        self._set_register(register_id, old)
        return 1

    def private_storage_write(
        self, caller: wasmtime.Caller, key_ptr: int, value_ptr: int
    ) -> int:
        key, value = self._key_value(caller, key_ptr, value_ptr)
        state = self._state()
        if state.private is None:
            return 0
        state.outcome.private_writes[key] = value
        return 1

    # -- node-local ordered index (SortedMap/SortedSet) ----------------------------
    #
    # Keys are raw `collection ‖ order_key` bytes kept in byte order; values are
    # entry ids. Like private storage it is never synchronised: each node keeps
    # its own, and the guest rebuilds it when its validity marker is missing.
    # Writes answer 1 when persisted; without a backend merod answers 0 and
    # scans find nothing.

    def _index_items(self, lo: bytes, hi: bytes) -> list[tuple[bytes, bytes]]:
        """The live ``(key, value)`` pairs with ``lo <= key < hi``, ascending."""
        state = self._state()
        if state.index is None:
            return []
        overlay = state.outcome.index_writes
        keys = sorted(
            k for k in set(state.index).union(overlay) if lo <= k < hi
        )
        items = []
        for key in keys:
            value = overlay[key] if key in overlay else state.index.get(key)
            if value is not None:
                items.append((key, value))
        return items

    def _index_bound(self, caller: wasmtime.Caller, desc_ptr: int, what: str) -> bytes:
        return self._buffer_bytes(caller, desc_ptr, LIMITS.max_storage_key_size, "key", what)

    def storage_index_set(
        self, caller: wasmtime.Caller, key_ptr: int, value_ptr: int
    ) -> int:
        key, value = self._key_value(caller, key_ptr, value_ptr)
        state = self._state()
        if state.index is None:
            return 0
        state.outcome.index_writes[key] = value
        return 1

    def storage_index_remove(self, caller: wasmtime.Caller, key_ptr: int) -> int:
        key = self._index_bound(caller, key_ptr, "index key")
        state = self._state()
        if state.index is None:
            return 0
        state.outcome.index_writes[key] = None
        return 1

    def storage_index_remove_prefix(self, caller: wasmtime.Caller, prefix_ptr: int) -> int:
        prefix = self._index_bound(caller, prefix_ptr, "index prefix")
        state = self._state()
        if state.index is None:
            return 0
        overlay = state.outcome.index_writes
        for key in set(state.index).union(overlay):
            if key.startswith(prefix):
                overlay[key] = None
        return 1

    @staticmethod
    def _encode_pairs(pairs: list[tuple[bytes, bytes]]) -> bytes:
        out = [len(pairs).to_bytes(4, "little")]
        for key, value in pairs:
            out += [len(key).to_bytes(4, "little"), key, len(value).to_bytes(4, "little"), value]
        return b"".join(out)

    def storage_index_scan(
        self,
        caller: wasmtime.Caller,
        lo_ptr: int,
        hi_ptr: int,
        offset: int,
        limit: int,
        register_id: int,
    ) -> int:
        lo_addr, lo_len = self._buffer(caller, lo_ptr)
        hi_addr, hi_len = self._buffer(caller, hi_ptr)
        if max(lo_len, hi_len) > LIMITS.max_storage_key_size:
            raise _host_error(
                HOST_ERRORS["key"],
                f"index scan bound of {max(lo_len, hi_len)} bytes exceeds the "
                f"{LIMITS.max_storage_key_size}-byte limit",
            )
        lo = self._read(caller, lo_addr, lo_len)
        hi = self._read(caller, hi_addr, hi_len)
        # `limit` is n + 1 encoded: 0 means unbounded.
        pairs = self._index_items(lo, hi)[offset:]
        if limit:
            pairs = pairs[: limit - 1]
        self._set_register(register_id, self._encode_pairs(pairs))
        return 1

    def storage_index_last(
        self, caller: wasmtime.Caller, lo_ptr: int, hi_ptr: int, register_id: int
    ) -> int:
        lo_addr, lo_len = self._buffer(caller, lo_ptr)
        hi_addr, hi_len = self._buffer(caller, hi_ptr)
        if max(lo_len, hi_len) > LIMITS.max_storage_key_size:
            raise _host_error(
                HOST_ERRORS["key"],
                f"index bound of {max(lo_len, hi_len)} bytes exceeds the "
                f"{LIMITS.max_storage_key_size}-byte limit",
            )
        items = self._index_items(
            self._read(caller, lo_addr, lo_len), self._read(caller, hi_addr, hi_len)
        )
        self._set_register(register_id, self._encode_pairs(items[-1:]))
        return 1

    def _meta_get(self, key: bytes) -> bytes | None:
        state = self._state()
        overlay = state.outcome.index_meta_writes
        if key in overlay:
            return overlay[key]
        assert state.index_meta is not None
        return state.index_meta.get(key)

    def storage_index_meta_set(
        self, caller: wasmtime.Caller, key_ptr: int, value_ptr: int
    ) -> int:
        key, value = self._key_value(caller, key_ptr, value_ptr)
        state = self._state()
        if state.index_meta is None:
            return 0
        state.outcome.index_meta_writes[key] = value
        return 1

    def storage_index_meta_get(
        self, caller: wasmtime.Caller, key_ptr: int, register_id: int
    ) -> int:
        key = self._index_bound(caller, key_ptr, "index marker key")
        if self._state().index_meta is None:
            return 0
        value = self._meta_get(key)
        if value is None:
            return 0
        self._set_register(register_id, value)
        return 1

    def storage_index_meta_clear(self, caller: wasmtime.Caller, key_ptr: int) -> int:
        key = self._index_bound(caller, key_ptr, "index marker key")
        state = self._state()
        if state.index_meta is None:
            return 0
        state.outcome.index_meta_writes[key] = None
        return 1

    # -- environment ---------------------------------------------------------------

    def time_now(self, caller: wasmtime.Caller, desc_ptr: int) -> None:
        ptr, length = self._buffer(caller, desc_ptr)
        if length != 8:
            raise _memory_error(f"time_now: the buffer must be 8 bytes long, got {length}")
        now = self._state().clock() & U64_MAX
        self._write(caller, ptr, now.to_bytes(8, "little"))

    def random_bytes(self, caller: wasmtime.Caller, desc_ptr: int) -> None:
        ptr, length = self._buffer(caller, desc_ptr)
        self._span(caller, ptr, length)
        self._write(caller, ptr, self._state().random(length))

    def ed25519_verify(
        self, caller: wasmtime.Caller, sig_ptr: int, pk_ptr: int, msg_ptr: int
    ) -> int:
        signature = self._sized(caller, sig_ptr, 64, "ed25519_verify: the signature")
        public_key = self._sized(caller, pk_ptr, 32, "ed25519_verify: the public key")
        msg_addr, msg_len = self._buffer(caller, msg_ptr)
        message = self._read(caller, msg_addr, msg_len)
        if not abi.ed25519_public_key_valid(public_key):
            raise _host_error(
                HOST_ERRORS["ed25519_key"],
                f"ed25519_verify: {public_key.hex()} does not encode a curve point",
            )
        return 1 if abi.ed25519_verify(signature, public_key, message) else 0

    def fetch(
        self,
        caller: wasmtime.Caller,
        url_ptr: int,
        method_ptr: int,
        headers_ptr: int,
        body_ptr: int,
        register_id: int,
    ) -> int:
        # merod blocks `fetch` unconditionally (no setting turns it on): it reads
        # none of the arguments, puts this text in the register and answers 1
        # (failure). The embedded node does the same, so app code never reaches
        # the network from the test runner.
        self._set_register(register_id, _FETCH_BLOCKED)
        return 1

    # -- streaming blobs -----------------------------------------------------------
    #
    # Blobs live in the node's blob store (the one behind PUT/GET /admin-api/blobs).
    # A written blob is stored when its handle is closed, even if the call fails
    # later, as in merod; handles still open when the call ends are dropped.

    def _blob_store(self) -> BlobStore:
        blobs = self._state().blobs
        if blobs is None:
            raise _host_error(
                HOST_ERRORS["blobs_unsupported"], "this run has no blob store"
            )
        return blobs

    def _new_blob_handle(self, blob_id: bytes | None) -> int:
        state = self._state()
        fd = state.next_blob_fd
        state.next_blob_fd += 1
        state.blob_handles[fd] = _BlobHandle(blob_id)
        return fd

    def _check_handle_room(self) -> None:
        if len(self._state().blob_handles) >= LIMITS.max_blob_handles:
            raise _host_error(
                f"too many blob handles (max: {LIMITS.max_blob_handles})",
                "open blob handles at the limit",
            )

    def _blob_handle(self, fd: int, *, writing: bool) -> _BlobHandle:
        handle = self._state().blob_handles.get(fd)
        if handle is None or (handle.blob_id is None) != writing:
            kind = "write" if writing else "read"
            raise _host_error(HOST_ERRORS["blob_handle"], f"{fd} is not an open {kind} handle")
        return handle

    def blob_create(self, caller: wasmtime.Caller) -> int:
        self._blob_store()
        self._check_handle_room()
        return self._new_blob_handle(None)

    def blob_write(self, caller: wasmtime.Caller, fd: int, desc_ptr: int) -> int:
        ptr, length = self._buffer(caller, desc_ptr)
        self._blob_store()
        limit = LIMITS.max_blob_chunk_size
        if length > limit:
            raise _host_error(
                f"blob write too large (size: {length}, max: {limit})", "blob chunk over the limit"
            )
        data = self._read(caller, ptr, length)
        self._blob_handle(fd, writing=True).chunks.append(data)
        return length

    def blob_close(self, caller: wasmtime.Caller, fd: int, desc_ptr: int) -> int:
        ptr, length = self._buffer(caller, desc_ptr)
        if length != 32:
            raise _memory_error(f"blob_close: the blob id buffer must be 32 bytes, got {length}")
        blobs = self._blob_store()
        self._span(caller, ptr, length)
        handles = self._state().blob_handles
        handle = handles.pop(fd, None)
        if handle is None:
            raise _host_error(HOST_ERRORS["blob_handle"], f"{fd} is not an open handle")
        blob_id = handle.blob_id
        if blob_id is None:
            blob_id = blobs.put(b"".join(handle.chunks))
        self._write(caller, ptr, blob_id)
        return 1

    def blob_open(self, caller: wasmtime.Caller, desc_ptr: int) -> int:
        ptr, length = self._buffer(caller, desc_ptr)
        self._blob_store()
        self._check_handle_room()
        blob_id = self._read(caller, ptr, length)
        if length != 32:
            raise _memory_error(f"blob_open: the blob id must be 32 bytes, got {length}")
        # Like merod, opening does not look the blob up: a missing blob reads as empty.
        return self._new_blob_handle(blob_id)

    def blob_read(self, caller: wasmtime.Caller, fd: int, desc_ptr: int) -> int:
        ptr, length = self._buffer(caller, desc_ptr)
        blobs = self._blob_store()
        limit = LIMITS.max_blob_chunk_size
        if length > limit:
            raise _host_error(
                f"blob buffer too large (size: {length}, max: {limit})", "blob_read buffer over the limit"
            )
        if length == 0:
            return 0
        handle = self._blob_handle(fd, writing=False)
        if handle.data is None:
            assert handle.blob_id is not None
            handle.data = blobs.get(handle.blob_id) or b""
        chunk = handle.data[handle.position : handle.position + length]
        if chunk:
            self._write(caller, ptr, chunk)
            handle.position += len(chunk)
        return len(chunk)

    def _blob_and_context(
        self, caller: wasmtime.Caller, blob_ptr: int, context_ptr: int
    ) -> tuple[bytes, bytes]:
        blob_id = self._sized(caller, blob_ptr, 32, "the blob id")
        context = self._sized(caller, context_ptr, 32, "the context id")
        return blob_id, context

    def blob_announce_to_context(
        self, caller: wasmtime.Caller, blob_ptr: int, context_ptr: int
    ) -> int:
        blobs = self._blob_store()
        blob_id, context = self._blob_and_context(caller, blob_ptr, context_ptr)
        if blobs.get(blob_id) is None or not blobs.announce(blob_id, context):
            # merod: no blob info for the id is a BlobsNotSupported error.
            raise _host_error(
                HOST_ERRORS["blobs_unsupported"],
                f"blob {blob_id.hex()} is not on this node, so it cannot be announced",
            )
        return 1

    def blob_open_in_context(
        self, caller: wasmtime.Caller, blob_ptr: int, context_ptr: int
    ) -> int:
        blobs = self._blob_store()
        blob_id, context = self._blob_and_context(caller, blob_ptr, context_ptr)
        if blobs.fetch(blob_id, context) is None:
            return 0
        return self.blob_open(caller, blob_ptr)

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
                # merod reports a panicking host function as a host panic.
                failure = ExecutionFailure(
                    "HostError",
                    f"host panicked: internal error in env.{name}: {exc}",
                    "a bug of the embedded node, not of the app",
                )
                self._state().abort = failure
                raise _HostAbort(failure) from exc

        host_function.__name__ = f"env_{name}"
        return host_function


# wasmtime trap codes -> merod's `WasmTrap` display texts. merod (wasmer) folds
# table accesses into "memory out of bounds" and the three arithmetic traps into
# "illegal arithmetic operation"; anything else is "indeterminate trap".
_ARITHMETIC = "illegal arithmetic operation"
_TRAP_TEXT = {
    wasmtime.TrapCode.STACK_OVERFLOW: "stack overflow",
    wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS: "memory out of bounds",
    wasmtime.TrapCode.HEAP_MISALIGNED: "heap misaligned",
    wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS: "memory out of bounds",
    wasmtime.TrapCode.INDIRECT_CALL_TO_NULL: "indirect call to null",
    wasmtime.TrapCode.BAD_SIGNATURE: "bad signature",
    wasmtime.TrapCode.INTEGER_OVERFLOW: _ARITHMETIC,
    wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO: _ARITHMETIC,
    wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER: _ARITHMETIC,
    wasmtime.TrapCode.UNREACHABLE: "unreachable code reached",
}

#: What merod's blocked `fetch` leaves in the register.
_FETCH_BLOCKED = b"Host function 'fetch' is temporarily disabled."


def _trap_failure(exc: BaseException, gas_limit: int) -> ExecutionFailure:
    # wasmtime's own text, first line only: the rest is a backtrace that only
    # helps someone holding the module's source.
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    detail = text[0] if text else type(exc).__name__
    code = getattr(exc, "trap_code", None)
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        return ExecutionFailure(
            "Trap", f"execution exhausted its gas limit of {gas_limit} points", detail
        )
    return ExecutionFailure("Trap", _TRAP_TEXT.get(code, "indeterminate trap"), detail)


def _rust_char_debug(char: str) -> str:
    """A character the way Rust's ``{:?}`` prints a ``char``."""
    escapes = {"\t": "\\t", "\r": "\\r", "\n": "\\n", "'": "\\'", "\\": "\\\\", "\0": "\\0"}
    if char in escapes:
        return f"'{escapes[char]}'"
    category = unicodedata.category(char)
    if category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Mn", "Me"):
        return f"'\\u{{{ord(char):x}}}'"
    return f"'{char}'"


def _method_name_error(method: str) -> str | None:
    """merod's ``validate_method_name``: the first problem, in its words."""
    if not method:
        return "method name is empty"
    size = len(method.encode("utf-8"))
    if size > LIMITS.max_method_name_size:
        return f"method name too long: {size} bytes (max: {LIMITS.max_method_name_size})"
    for position, char in enumerate(method):
        if not (char.isascii() and char.isalnum()) and char != "_":
            return (
                f"method name contains invalid character at position {position}: "
                f"{_rust_char_debug(char)}"
            )
    return None


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
        imports: the ``env`` host functions the module imports.
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
        non_functions: frozenset[str],
        imports: frozenset[str],
        abi: dict[str, Any] | None,
        gas_limit: int,
    ) -> None:
        self.sha256 = sha256
        self.size = size
        self.methods = methods
        self.abi = abi
        self.imports = imports
        self._non_functions = non_functions
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
        account_id: bytes | None = None,
        clock: Callable[[], int] | None = None,
        random: Callable[[int], bytes] | None = None,
        xcall_origin: bytes | None = None,
        private_storage: Mapping[bytes, bytes] | None = None,
        index: Mapping[bytes, bytes] | None = None,
        index_meta: Mapping[bytes, bytes] | None = None,
        blobs: BlobStore | None = None,
    ) -> Outcome:
        """Execute ``method`` with ``input`` against a read-only view of ``storage``.

        Args:
            method: the export to call, e.g. ``"set"`` or ``"__calimero_sync_next"``.
            input: the bytes ``env.input`` hands out (JSON args, or an artifact).
            storage: the context's key-value store; never mutated here.
            context_id: 32 bytes returned by ``env.context_id``.
            executor_id: the executing device's 32-byte key (``env.device_id``).
            account_id: the account the call runs as (``env.account_id`` and the
                ``env.executor_id`` shim); defaults to ``executor_id``.
            clock: optional ``time_now`` source in ns since the epoch; tests pass
                a fixed clock to make root hashes reproducible.
            random: optional ``random_bytes`` source, ``n -> bytes``.
            xcall_origin: the calling context when this run is an xcall
                (``env.xcall_origin``); None for a direct call.
            private_storage, index, index_meta: read-only views of the node-local
                stores; None when the run has no such backend (the host
                functions then answer as merod does without one).
            blobs: the node's blob store for the ``blob_*`` functions; without
                one they fail as merod does without a node client.

        Returns:
            The :class:`Outcome`; a guest failure is reported in
            ``Outcome.failure``, never raised.

        Raises:
            ValueError: an id is not 32 bytes.
        """
        started = time.perf_counter()
        account = executor_id if account_id is None else account_id
        ids = [("context_id", context_id), ("executor_id", executor_id), ("account_id", account)]
        if xcall_origin is not None:
            ids.append(("xcall_origin", xcall_origin))
        for name, value in ids:
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
        state.account_id = bytes(account)
        state.xcall_origin = None if xcall_origin is None else bytes(xcall_origin)
        state.private = private_storage
        state.index = index
        state.index_meta = index_meta
        state.blobs = blobs
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
            outcome.private_writes = {}
            outcome.index_writes = {}
            outcome.index_meta_writes = {}
            outcome.xcalls = []
        outcome.duration_s = time.perf_counter() - started
        return outcome

    def _execute(self, method: str, state: _CallState) -> ExecutionFailure | None:
        problem = _method_name_error(method)
        if problem is not None:
            return ExecutionFailure("MethodNotFound", problem)
        if method in self._bad_signatures:
            return ExecutionFailure(
                "InvalidSignature",
                f'method "{method}" has invalid signature: expected no arguments and no return value',
            )
        if method in self._non_functions:
            # merod turns wasmer's "incompatible export type" into `unreachable!()`,
            # which its catch-all reports as a guest panic without a location.
            return ExecutionFailure(
                "Panic",
                "guest panicked: internal error: entered unreachable code",
                f"the export {method!r} is not a function",
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
            AppLinkError: it imports functions merod does not provide, or that
                the embedded node cannot provide (``abi.REFUSED_HOST_FUNCTIONS``).
            AppFormatError: it is larger than merod's module size limit, is not
                wasm, does not compile, imports memory, does not export
                ``memory``, or exports a ``_start`` function.
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
        if len(wasm) > LIMITS.max_module_size:
            raise AppFormatError(
                f"module size limit (max_module_size) exceeded: {len(wasm)} bytes > "
                f"{LIMITS.max_module_size} bytes limit"
            )
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

        imports = self._check_imports(module)
        methods, internal, bad, non_functions = self._classify_exports(module)
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
            non_functions=non_functions,
            imports=imports,
            abi=_read_abi(wasm),
            gas_limit=self.gas_limit,
        )

    @staticmethod
    def _check_imports(module: wasmtime.Module) -> frozenset[str]:
        unknown: list[str] = []
        mismatched: list[str] = []
        refused: list[str] = []
        reasons: list[str] = []
        names: set[str] = set()
        for imp in module.imports:
            name = f"{imp.module}.{imp.name}"
            ty = imp.type
            if isinstance(ty, wasmtime.MemoryType):
                raise AppFormatError(
                    f"the module imports its memory ({name}); Calimero apps must define and "
                    "export their own memory (build without --import-memory)"
                )
            reason = abi.refusal_reason(imp.name or "") if imp.module == "env" else None
            if reason is not None:
                refused.append(name)
                reasons.append(f"{name} {reason}")
                continue
            expected = (
                abi.HOST_FUNCTIONS.get(imp.name or "") if imp.module == "env" else None
            )
            if expected is None or not isinstance(ty, wasmtime.FuncType):
                unknown.append(name)
                continue
            names.add(imp.name or "")
            if _signature_letters(ty) != expected:
                params, results = expected
                mismatched.append(
                    f"{name} (expected {_describe(_func_type(params, results))}, "
                    f"got {_describe(ty)})"
                )
        if unknown or mismatched or refused:
            parts = []
            if refused:
                parts.append(
                    "imports merod host functions the embedded node cannot provide: "
                    + "; ".join(reasons)
                )
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
                "cannot link the module: " + "; ".join(parts), unknown, mismatched, refused
            )
        return frozenset(names)

    @staticmethod
    def _classify_exports(
        module: wasmtime.Module,
    ) -> tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
        methods: set[str] = set()
        internal: set[str] = set()
        bad: set[str] = set()
        non_functions: set[str] = set()
        has_memory = False
        for exp in module.exports:
            ty = exp.type
            if exp.name == "memory":
                has_memory = has_memory or isinstance(ty, wasmtime.MemoryType)
            if exp.name == "_start" and isinstance(ty, wasmtime.FuncType):
                raise AppFormatError(
                    "the module exports a `_start` function: it was built as a command "
                    "(WASI program), not as a Calimero app library; build with --no-entry"
                )
            if not isinstance(ty, wasmtime.FuncType):
                non_functions.add(exp.name)
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
        return (
            frozenset(methods),
            frozenset(internal),
            frozenset(bad),
            frozenset(non_functions),
        )


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
