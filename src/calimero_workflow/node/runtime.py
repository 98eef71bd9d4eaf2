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
    """Mutable state of one ``run``; host functions are handed it as ``call``."""

    __slots__ = (
        "input",
        "storage",
        "writes",
        "registers",
        "outcome",
        "committed",
        "context_id",
        "executor_id",
        "store",
        "memory",
        "guest",
        "caller",
        "abort",
        "pending",
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
        self.store: wasmtime.Store | None = None
        self.memory: wasmtime.Memory | None = None
        #: Guest memory as the host sees it, made on first access.
        self.guest: _GuestMemory | None = None
        #: The caller of the host function running now (valid only inside it).
        self.caller: Any = None
        self.abort: ExecutionFailure | None = None
        #: A BaseException (KeyboardInterrupt…) a host function caught, to re-raise.
        self.pending: BaseException | None = None
        self.clock = clock
        self.random = random


# -- wasmtime's C API, below wasmtime-py's wrappers ------------------------------
#
# A `set` of the kv-store app makes about 22 host calls. Through wasmtime-py's
# generic trampoline each one built a Caller, a Val per argument and a checked
# result, 20-30 µs in all, more than the host function itself. wasmtime's
# "unchecked" calling convention passes the arguments as one array of raw
# values instead, and guest memory is read through a memoryview whose size is
# checked by one C call per host call. These are reached through the bindings
# wasmtime-py bundles; when they are not where we expect them, the public API
# is used and everything still works, slower.

U32_MAX = 0xFFFF_FFFF


class _RawApi:
    """The few C functions of wasmtime that the runtime calls directly."""

    def __init__(self) -> None:
        from wasmtime import _ffi as ffi
        from wasmtime._extern import wrap_extern

        self.ffi = ffi
        self.wrap_extern = wrap_extern
        self.callback = ffi.wasmtime_func_unchecked_callback_t
        self.define = ffi.wasmtime_linker_define_func_unchecked
        self.call = ffi.wasmtime_func_call_unchecked
        self.value_array = ffi.wasmtime_val_raw_t * 1
        # A null finalizer: the callbacks hold no data to free.
        self.no_finalizer = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
        # Fresh function objects (indexing the library does not cache them), so
        # our return types do not change wasmtime-py's own bindings.
        context, memory = (
            ctypes.POINTER(ffi.wasmtime_context_t),
            ctypes.POINTER(ffi.wasmtime_memory_t),
        )
        self.memory_data = ffi.dll["wasmtime_memory_data"]
        self.memory_data.restype = ctypes.c_void_p
        self.memory_data.argtypes = [context, memory]
        self.memory_size = ffi.dll["wasmtime_memory_data_size"]
        self.memory_size.restype = ctypes.c_size_t
        self.memory_size.argtypes = [context, memory]
        self.trap_new = ffi.wasmtime_trap_new
        self.caller_export_get = ffi.wasmtime_caller_export_get
        self.instance_export_get = ffi.wasmtime_instance_export_get

    def trap(self, message: str) -> int:
        """A new trap (owned by wasmtime once returned from a callback), as an address."""
        raw = message.encode()
        return ctypes.cast(self.trap_new(raw, len(raw)), ctypes.c_void_p).value or 0

    def guest_memory(
        self, store: wasmtime.Store, memory: wasmtime.Memory
    ) -> _GuestMemory:
        context, handle = store._context(), ctypes.byref(memory._memory)
        data, size = self.memory_data, self.memory_size
        return _GuestMemory(
            lambda: size(context, handle), lambda: data(context, handle) or 0
        )

    def caller_memory(self, caller: Any) -> Any:
        item = self.ffi.wasmtime_extern_t()
        if not self.caller_export_get(caller, b"memory", 6, ctypes.byref(item)):
            return None
        return self.wrap_extern(item)

    def export(
        self, store: wasmtime.Store, instance: wasmtime.Instance, name: str
    ) -> Any:
        raw = name.encode()
        item = self.ffi.wasmtime_extern_t()
        found = self.instance_export_get(
            store._context(),
            ctypes.byref(instance._instance),
            raw,
            len(raw),
            ctypes.byref(item),
        )
        return self.wrap_extern(item) if found else None

    def call_unit(self, store: wasmtime.Store, func: wasmtime.Func) -> None:
        """Call a ``() -> ()`` export; raise wasmtime's Trap or error as ``func(store)`` would."""
        trap = ctypes.POINTER(self.ffi.wasm_trap_t)()
        error = self.call(
            store._context(),
            ctypes.byref(func._func),
            self.value_array(),
            0,
            ctypes.byref(trap),
        )
        if error:
            raise wasmtime.WasmtimeError._from_ptr(error)
        if trap:
            raise wasmtime.Trap._from_ptr(trap)


def _load_raw_api() -> _RawApi | None:
    try:
        return _RawApi()
    except (
        ImportError,
        AttributeError,
        TypeError,
    ):  # pragma: no cover - another wasmtime-py
        logger.debug(
            "wasmtime's C API is not reachable; host calls use wasmtime-py's trampoline"
        )
        return None


_RAW = _load_raw_api()


class _GuestMemory:
    """Guest linear memory during one call, as a memoryview the host reads and writes.

    Only the guest changes the memory's size or place (``memory.grow``), never
    a host function, so the view is checked once per host function call: one
    C call for the size, and a new view only when the guest grew the memory.
    """

    __slots__ = ("_size", "_base", "data", "checked")

    def __init__(self, size: Callable[[], int], base: Callable[[], int]) -> None:
        self._size = size
        self._base = base
        self.data = memoryview(b"")
        self.checked = False

    def view(self) -> memoryview:
        if not self.checked:
            size = self._size()
            if size != len(self.data):
                array = (ctypes.c_char * size).from_address(self._base())
                self.data = memoryview(array).cast("B")
            self.checked = True
        return self.data


def _guest_memory(
    store: wasmtime.Store | None, memory: wasmtime.Memory
) -> _GuestMemory:
    assert store is not None
    if _RAW is not None:
        return _RAW.guest_memory(store, memory)
    return _GuestMemory(
        lambda: memory.data_len(store),
        lambda: ctypes.addressof(memory.data_ptr(store).contents),
    )


def _caller_memory(caller: Any) -> wasmtime.Memory | None:
    if isinstance(caller, wasmtime.Caller):  # pragma: no cover - another wasmtime-py
        found = caller.get("memory")
    elif caller is not None and _RAW is not None:
        found = _RAW.caller_memory(caller)
    else:
        found = None
    return found if isinstance(found, wasmtime.Memory) else None


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

    Binding convention, the same for every function: each name in
    :data:`abi.HOST_FUNCTIONS` is a method ``name(self, call, *args)`` here.
    ``call`` is the running call's :class:`_CallState`; ``args`` are the
    guest's arguments in table order, as unsigned Python ints (an ``I`` is
    a u64, an ``i`` a u32). The method returns an int for a function with a
    result and ``None`` otherwise. It reaches guest memory only through
    ``self._read(call, …)``, ``self._write(call, …)`` and the helpers built
    on them, and stops the guest by raising :func:`_host_error` or
    ``_HostAbort``. :meth:`define` links every entry of the table, so a new
    host function needs its table row and its method, nothing else.

    Linker functions are store-independent, so per-call state cannot be
    bound to them; each call parks its ``_CallState`` in a thread-local
    instead (a call never re-enters ``run`` on the same thread).
    """

    def __init__(self) -> None:
        self._tls = threading.local()
        # ctypes callbacks must outlive the linker that points at them.
        self._callbacks: list[Any] = []

    # -- plumbing -----------------------------------------------------------------

    def enter(self, state: _CallState) -> None:
        self._tls.state = state

    def leave(self) -> None:
        self._tls.state = None

    def _memory(self, call: _CallState) -> wasmtime.Memory:
        if call.memory is None:
            # Only while the module instantiates (a start function calling the
            # host): the instance's exports are not known yet, the caller's are.
            memory = _caller_memory(call.caller)
            if memory is None:
                raise _host_error("the module does not export a memory named `memory`")
            call.memory = memory
        return call.memory

    def _span(self, call: _CallState, ptr: int, length: int) -> memoryview:
        """The ``length`` bytes at guest offset ``ptr``, bounds-checked."""
        guest = call.guest
        if guest is None:
            guest = call.guest = _guest_memory(call.store, self._memory(call))
        data = guest.view()
        if ptr + length > len(data):
            raise _host_error(
                f"invalid memory access: {length} bytes at offset {ptr} lie outside "
                f"guest memory of {len(data)} bytes"
            )
        return data[ptr : ptr + length]

    def _read(self, call: _CallState, ptr: int, length: int) -> bytes:
        return self._span(call, ptr, length).tobytes()

    def _write(self, call: _CallState, ptr: int, data: bytes) -> None:
        self._span(call, ptr, len(data))[:] = data

    def _buffer(self, call: _CallState, desc_ptr: int) -> tuple[int, int]:
        ptr, length = abi.BUFFER.unpack(self._span(call, desc_ptr, abi.BUFFER.size))
        return ptr, length

    def _buffer_bytes(
        self, call: _CallState, desc_ptr: int, limit: int, what: str
    ) -> bytes:
        ptr, length = self._buffer(call, desc_ptr)
        if length > limit:
            raise _host_error(
                f"{what} of {length} bytes exceeds the {limit}-byte limit"
            )
        return self._read(call, ptr, length)

    def _set_register(self, call: _CallState, register_id: int, data: bytes) -> None:
        registers = call.registers
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

    def _storage_get(self, call: _CallState, key: bytes) -> bytes | None:
        if key in call.writes:
            return call.writes[key]
        return call.storage.get(key)

    def _storage_key(self, call: _CallState, desc_ptr: int) -> bytes:
        return self._buffer_bytes(
            call, desc_ptr, LIMITS.max_storage_key_size, "storage key"
        )

    # -- registers and input ----------------------------------------------------

    def input(self, call: _CallState, register_id: int) -> None:
        self._set_register(call, register_id, call.input)

    def register_len(self, call: _CallState, register_id: int) -> int:
        data = call.registers.get(register_id)
        # u64::MAX for "unset", handed over as its i64 bit pattern.
        return -1 if data is None else len(data)

    def read_register(self, call: _CallState, register_id: int, desc_ptr: int) -> int:
        data = call.registers.get(register_id)
        if data is None:
            raise _host_error(f"invalid register id: {register_id} (register is unset)")
        ptr, length = self._buffer(call, desc_ptr)
        if length != len(data):
            return 0
        self._write(call, ptr, data)
        return 1

    def context_id(self, call: _CallState, register_id: int) -> None:
        self._set_register(call, register_id, call.context_id)

    def executor_id(self, call: _CallState, register_id: int) -> None:
        self._set_register(call, register_id, call.executor_id)

    # At HEAD `executor_id` is a compat shim returning the account id, so the two
    # are the same 32 bytes here.
    account_id = executor_id

    # -- results, logs, events, panics ---------------------------------------------

    def value_return(self, call: _CallState, desc_ptr: int) -> None:
        discriminant, ptr, length = abi.VALUE_RETURN.unpack(
            self._read(call, desc_ptr, abi.VALUE_RETURN.size)
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
        outcome = call.outcome
        outcome.returns = self._read(call, ptr, length)
        outcome.is_error = discriminant == 1

    def log_utf8(self, call: _CallState, desc_ptr: int) -> None:
        outcome = call.outcome
        if len(outcome.logs) >= LIMITS.max_logs:
            raise _host_error(
                f"too many log lines: the limit is {LIMITS.max_logs} per call"
            )
        raw = self._buffer_bytes(call, desc_ptr, LIMITS.max_log_size, "log line")
        try:
            outcome.logs.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _host_error(
                f"log line is not valid UTF-8: {exc.reason} at byte {exc.start}"
            ) from None

    def _location(self, call: _CallState, loc_ptr: int) -> str:
        file_ptr, file_len, line, column = abi.LOCATION.unpack(
            self._read(call, loc_ptr, abi.LOCATION.size)
        )
        file = self._read(call, file_ptr, file_len).decode("utf-8", "replace")
        return f"{file}:{line}:{column}"

    def panic_utf8(self, call: _CallState, msg_ptr: int, loc_ptr: int) -> None:
        raw = self._buffer_bytes(call, msg_ptr, LIMITS.max_log_size, "panic message")
        try:
            message = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _host_error("panic message is not valid UTF-8") from None
        location = self._location(call, loc_ptr)
        raise _HostAbort(
            ExecutionFailure("Panic", f"guest panicked: {message} at {location}")
        )

    def panic(self, call: _CallState, loc_ptr: int) -> None:
        location = self._location(call, loc_ptr)
        raise _HostAbort(
            ExecutionFailure("Panic", f"guest panicked: explicit panic at {location}")
        )

    def emit(self, call: _CallState, event_ptr: int) -> None:
        outcome = call.outcome
        if len(outcome.events) >= LIMITS.max_events:
            raise _host_error(
                f"too many events: the limit is {LIMITS.max_events} per call"
            )
        kind_ptr, kind_len, data_ptr, data_len = abi.EVENT.unpack(
            self._read(call, event_ptr, abi.EVENT.size)
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
            kind = self._read(call, kind_ptr, kind_len).decode("utf-8")
        except UnicodeDecodeError:
            raise _host_error("event kind is not valid UTF-8") from None
        outcome.events.append(Event(kind, self._read(call, data_ptr, data_len)))

    # -- state ---------------------------------------------------------------------

    def commit(self, call: _CallState, root_ptr: int, artifact_ptr: int) -> None:
        if call.committed:
            raise _host_error("commit called more than once in one execution")
        root_addr, root_len = self._buffer(call, root_ptr)
        if root_len != 32:
            raise _host_error(
                f"commit: the root hash must be exactly 32 bytes, got {root_len}"
            )
        root = self._read(call, root_addr, root_len)
        artifact = self._buffer_bytes(
            call, artifact_ptr, LIMITS.max_artifact_size, "artifact"
        )
        call.committed = True
        call.outcome.root_hash = root
        call.outcome.artifact = artifact

    def storage_read(self, call: _CallState, key_ptr: int, register_id: int) -> int:
        value = self._storage_get(call, self._storage_key(call, key_ptr))
        if value is None:
            return 0
        self._set_register(call, register_id, value)
        return 1

    def storage_write(
        self, call: _CallState, key_ptr: int, value_ptr: int, register_id: int
    ) -> int:
        key = self._storage_key(call, key_ptr)
        value = self._buffer_bytes(
            call, value_ptr, LIMITS.max_storage_value_size, "storage value"
        )
        old = self._storage_get(call, key)
        # Known gap: merod also charges each write against a per-run budget;
        # only the key and value size limits are enforced here.
        call.writes[key] = value
        if old is None:
            return 0
        self._set_register(call, register_id, old)
        return 1

    def storage_remove(self, call: _CallState, key_ptr: int, register_id: int) -> int:
        key = self._storage_key(call, key_ptr)
        old = self._storage_get(call, key)
        if old is None:
            return 0
        call.writes[key] = None
        self._set_register(call, register_id, old)
        return 1

    # -- environment ---------------------------------------------------------------

    def time_now(self, call: _CallState, desc_ptr: int) -> None:
        ptr, length = self._buffer(call, desc_ptr)
        if length != 8:
            raise _host_error(
                f"time_now: the buffer must be 8 bytes long, got {length}"
            )
        now = call.clock() & U64_MAX
        self._write(call, ptr, now.to_bytes(8, "little"))

    def random_bytes(self, call: _CallState, desc_ptr: int) -> None:
        ptr, length = self._buffer(call, desc_ptr)
        if length > LIMITS.max_register_size:
            raise _host_error(f"random_bytes: {length} bytes requested, too many")
        self._write(call, ptr, call.random(length))

    def ed25519_verify(
        self, call: _CallState, sig_ptr: int, pk_ptr: int, msg_ptr: int
    ) -> int:
        signature = self._buffer_bytes(call, sig_ptr, 64, "ed25519 signature")
        if len(signature) != 64:
            raise _host_error(
                f"ed25519_verify: the signature must be 64 bytes, got {len(signature)}"
            )
        public_key = self._buffer_bytes(call, pk_ptr, 32, "ed25519 public key")
        if not abi.ed25519_public_key_valid(public_key):
            raise _host_error(
                f"ed25519_verify: invalid public key {public_key.hex()} "
                "(must be 32 bytes encoding a curve point)"
            )
        message = self._buffer_bytes(call, msg_ptr, LIMITS.max_register_size, "message")
        return 1 if abi.ed25519_verify(signature, public_key, message) else 0

    # -- wiring --------------------------------------------------------------------

    def define(self, linker: wasmtime.Linker) -> None:
        """Link every function of :data:`abi.HOST_FUNCTIONS` as ``env.<name>``."""
        for name, (params, results) in abi.HOST_FUNCTIONS.items():
            ty = _func_type(params, results)
            if _RAW is None:
                callback = self._public_callback(name, params)
                linker.define_func("env", name, ty, callback, access_caller=True)
                continue
            raw = _RAW.callback(self._raw_callback(name, params, results))
            self._callbacks.append(raw)
            module, field = b"env", name.encode()
            error = _RAW.define(
                linker.ptr(),
                module,
                len(module),
                field,
                len(field),
                ty.ptr(),
                raw,
                None,
                _RAW.no_finalizer,
            )
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)

    def _internal_error(self, name: str, exc: Exception) -> ExecutionFailure:
        # A bug of ours must not be mistaken for guest misbehaviour.
        logger.exception("host function env.%s failed", name)
        return ExecutionFailure("HostError", f"internal error in env.{name}: {exc}")

    def _raw_callback(self, name: str, params: str, results: str) -> Callable[..., int]:
        """The C callback of ``env.<name>`` in wasmtime's unchecked convention.

        The guest's arguments arrive in one array of raw values, and the result
        goes back in its first slot. A failure is recorded in the call's
        ``abort`` and returned to wasmtime as a trap.
        """
        method = getattr(self, name)
        tls = self._tls
        wide = [kind == "I" for kind in params]
        result = results[:1]
        trap = _RAW.trap  # type: ignore[union-attr]

        def callback(env: Any, caller: Any, values: Any, count: int) -> int:
            call: _CallState = tls.state
            call.caller = caller
            if call.guest is not None:
                call.guest.checked = False
            try:
                # Guest u64/u32 arguments arrive as signed ints; reinterpret them.
                value = method(
                    call,
                    *[
                        values[i].i64 & U64_MAX if w else values[i].i32 & U32_MAX
                        for i, w in enumerate(wide)
                    ],
                )
                if result == "I":
                    values[0].i64 = value
                elif result == "i":
                    values[0].i32 = value
                return 0
            except _HostAbort as exc:
                call.abort = exc.failure
            except Exception as exc:
                call.abort = self._internal_error(name, exc)
            except BaseException as exc:
                # KeyboardInterrupt and the like: stop the guest, raise it after.
                call.pending = exc
                return trap(f"interrupted: {type(exc).__name__}")
            return trap(call.abort.message)

        callback.__name__ = f"env_{name}"
        return callback

    def _public_callback(self, name: str, params: str) -> Callable[..., int | None]:
        """``env.<name>`` for wasmtime-py's own trampoline, which raises for us."""
        method = getattr(self, name)
        tls = self._tls
        masks = [U64_MAX if kind == "I" else U32_MAX for kind in params]

        def callback(caller: wasmtime.Caller, *args: int) -> int | None:
            call: _CallState = tls.state
            call.caller = caller
            if call.guest is not None:
                call.guest.checked = False
            try:
                return method(call, *[a & m for a, m in zip(args, masks, strict=True)])  # type: ignore[no-any-return]
            except _HostAbort as exc:
                call.abort = exc.failure
                raise
            except Exception as exc:
                call.abort = self._internal_error(name, exc)
                raise _HostAbort(call.abort) from exc

        callback.__name__ = f"env_{name}"
        return callback


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


# wasmtime-py's own trampoline (used when its C bindings are not reachable)
# hands a Python exception raised by a host function back through a
# module-global slot, so two threads inside wasm at once could pick up each
# other's exception. Calls are therefore serialised process-wide; the host
# functions hold the GIL anyway, so little parallelism is lost.
_CALL_LOCK = threading.Lock()


def _export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> Any:
    """Look up one export by name.

    ``Instance.exports()`` wraps every export of the module (about 10 µs
    each), which dominated a cheap call; the C API has a by-name lookup that
    wasmtime-py does not expose.
    """
    if _RAW is None:
        return instance.exports(store).get(name)
    return _RAW.export(store, instance, name)


def _call_unit(store: wasmtime.Store, func: wasmtime.Func) -> None:
    """Call a ``() -> ()`` export (its type was checked when the module compiled)."""
    if _RAW is None:
        func(store)
        return
    _RAW.call_unit(store, func)


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
        state.store = store
        self._host.enter(state)
        try:
            with _CALL_LOCK:
                instance = self._pre.instantiate(store)
        except Exception as exc:
            return self._stopped(state, exc)
        memory = _export(store, instance, "memory")
        assert isinstance(memory, wasmtime.Memory)
        state.memory = memory

        if self._has_merge and method != _REGISTER_MERGE:
            merge = _export(store, instance, _REGISTER_MERGE)
            assert isinstance(merge, wasmtime.Func)
            try:
                with _CALL_LOCK:
                    _call_unit(store, merge)
            except Exception as exc:
                if state.pending is not None:
                    raise state.pending from None
                # merod ignores this failure too; note it for whoever debugs an app.
                logger.debug(
                    "%s failed (ignored): %s", _REGISTER_MERGE, state.abort or exc
                )
                state.abort = None

        func = _export(store, instance, method)
        assert isinstance(func, wasmtime.Func)
        try:
            with _CALL_LOCK:
                _call_unit(store, func)
        except Exception as exc:
            return self._stopped(state, exc)
        return None

    def _stopped(self, state: _CallState, exc: Exception) -> ExecutionFailure:
        """Why the guest stopped with ``exc``; an interrupt caught in the host is raised."""
        if state.pending is not None:
            raise state.pending from None
        return state.abort or _trap_failure(exc, self.gas_limit)


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
