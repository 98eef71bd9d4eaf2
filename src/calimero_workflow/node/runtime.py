"""Run Calimero application wasm under wasmtime with merod's host ABI.

A :class:`WasmRuntime` owns one wasmtime ``Engine`` and a cache of compiled
apps. :meth:`WasmRuntime.compile` checks a binary the way merod does when it
links one (only known ``env`` imports, no imported memory, an exported memory)
and returns an :class:`AppModule`. :meth:`AppModule.run` then executes one
method the way merod's ``Module::run`` does:

1. a fresh ``Store`` and instance per call, so nothing survives in guest memory;
2. ``__calimero_register_merge`` first when exported (its failure is ignored);
3. the method export, which must exist and have type ``() -> ()``;
4. a fuel budget, so a runaway guest fails instead of hanging the node, and a
   wall-clock limit for the guests that fuel stops too slowly here (a loop
   over host calls; see :mod:`.interrupt`). A :class:`Cancellation` passed to
   ``run`` interrupts the guest from another thread.

Calls may run on several threads at once (each embedded node has its own),
sharing the engine and the compiled modules; each has its own store, and the
host functions find the call's state in a thread-local. Only with
wasmtime-py's public API (when its C bindings are not usable) do calls take
turns, process-wide (see ``_PUBLIC_API_LOCK``).

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
from .interrupt import (
    TIME_LIMIT_ENV,
    Cancellation,
    Interrupted,
    Watch,
    interrupted,
    time_limit_from,
)

__all__ = [
    "DATA_REGISTER",
    "AppFormatError",
    "AppLinkError",
    "AppModule",
    "BlobStore",
    "Cancellation",
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
    ``"MethodNotFound"``, ``"InvalidSignature"``, ``"HostError"`` or
    ``"Interrupted"`` (the embedded node's time limit, or a cancellation; merod
    has neither, so its message is ours). ``detail`` is our own explanation
    (which call, which bytes, which limit); merod has no equivalent, so it
    belongs in logs, never in an API answer.
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
    """Mutable state of one ``run``; host functions are handed it as ``call``."""

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
        "store",
        "memory",
        "guest",
        "caller",
        "abort",
        "pending",
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
        # Node-local stores; None means this run has no such backend, and the
        # host functions answer as merod does without one.
        self.private: Mapping[bytes, bytes] | None = None
        self.index: Mapping[bytes, bytes] | None = None
        self.index_meta: Mapping[bytes, bytes] | None = None
        self.blobs: BlobStore | None = None
        self.blob_handles: dict[int, _BlobHandle] = {}
        self.next_blob_fd = 1


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
        self.error_new = ffi.wasmtime_error_new
        # wasmtime_store_epoch_deadline_callback(store, callback, data, finalizer);
        # the callback returns a wasmtime_error_t* (null: carry on).
        epoch_callback = ctypes.CFUNCTYPE(
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_uint64),
            ctypes.POINTER(ctypes.c_uint8),
        )
        self.set_epoch_callback = ffi.dll["wasmtime_store_epoch_deadline_callback"]
        self.set_epoch_callback.restype = None
        self.set_epoch_callback.argtypes = [
            ctypes.POINTER(ffi.wasmtime_store_t),
            epoch_callback,
            ctypes.c_void_p,
            ctypes.CFUNCTYPE(None, ctypes.c_void_p),
        ]
        # One C callback for every store; it asks about the call of its thread.
        self.epoch_callback = epoch_callback(self._epoch_reached)

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

    def _epoch_reached(
        self, context: Any, data: Any, delta: Any, kind: Any
    ) -> int:
        """A store reached its epoch deadline: stop its guest only if its call was interrupted.

        The engine's epoch is shared by every store running on it, so the
        watchdog's increment for one call reaches all of them; the others
        carry on with a deadline one epoch further.
        """
        if interrupted():
            raw = _INTERRUPTED_ERROR.encode()
            return ctypes.cast(self.error_new(raw), ctypes.c_void_p).value or 0
        delta[0] = 1
        kind[0] = _UPDATE_DEADLINE_CONTINUE
        return 0

    def watch_epochs(self, store: wasmtime.Store) -> None:
        """Have ``store`` ask :func:`interrupted` at its epoch deadline instead of trapping."""
        self.set_epoch_callback(
            store.ptr(), self.epoch_callback, None, self.no_finalizer
        )

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


#: What an epoch-deadline callback tells wasmtime to do: carry on (wasmtime's
#: ``WASMTIME_UPDATE_DEADLINE_CONTINUE``).
_UPDATE_DEADLINE_CONTINUE = 0
#: The error an epoch-deadline callback stops an interrupted guest with.
_INTERRUPTED_ERROR = "calimero-workflow: the call was interrupted"

#: A module for :func:`_check_raw_api`: one import taking a u64 and a u32.
_CHECK_WAT = """(module
  (import "env" "check" (func $check (param i64 i32) (result i64)))
  (memory (export "memory") 1)
  (func (export "run")
    (i64.store (i32.const 8) (call $check (i64.const -2) (i32.const -3))))
  (func (export "fail") (drop (call $check (i64.const 0) (i32.const 0))))
  (func (export "tick")))"""
_CHECK_VALUE = 0x1122_3344_5566_7788


def _check_raw_api(api: _RawApi) -> None:
    """Link, call and trap once through ``api``; raise if anything is not as expected.

    The bindings are private to wasmtime-py, so a release may keep the names
    and change what is behind them (a field, a method turned property). One
    round trip through each path the runtime uses catches that before use.
    """
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    linker = wasmtime.Linker(engine)

    def check(env: Any, caller: Any, values: Any, count: int) -> int:
        if values[0].i64 & U64_MAX == 0:
            return api.trap("check trap")
        ok = (
            values[0].i64 & U64_MAX == U64_MAX - 1
            and values[1].i32 & U32_MAX == U32_MAX - 2
            and isinstance(api.caller_memory(caller), wasmtime.Memory)
        )
        values[0].i64 = _CHECK_VALUE if ok else 0
        return 0

    callback = api.callback(check)
    ty = _func_type("Ii", "I")
    error = api.define(
        linker.ptr(), b"env", 3, b"check", 5, ty.ptr(), callback, None, api.no_finalizer
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    store = wasmtime.Store(engine)
    api.watch_epochs(store)
    store.set_epoch_deadline(1)
    instance = linker.instantiate(store, wasmtime.Module(engine, wasmtime.wat2wasm(_CHECK_WAT)))
    api.call_unit(store, api.export(store, instance, "run"))
    view = api.guest_memory(store, api.export(store, instance, "memory")).view()
    if len(view) != 65536 or view[8:16].tobytes() != _CHECK_VALUE.to_bytes(8, "little"):
        raise ValueError("a host call through the C API did not reach guest memory")
    try:
        api.call_unit(store, api.export(store, instance, "fail"))
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        # wasmtime hands a host's trap back as an error, a guest's as a trap.
        if "check trap" not in str(exc):
            raise ValueError(f"a host trap came back as {exc}") from None
    else:
        raise ValueError("a host trap did not stop the guest")
    _check_epoch_callback(api, engine, store, api.export(store, instance, "tick"))


def _check_epoch_callback(
    api: _RawApi, engine: wasmtime.Engine, store: wasmtime.Store, tick: wasmtime.Func
) -> None:
    """An epoch increment stops the guest of an interrupted call only."""
    cancellation = Cancellation()
    watch = Watch(engine, None, cancellation)
    watch.enter(store)
    try:
        # Meant for another call: this one carries on past its deadline.
        engine.increment_epoch()
        try:
            api.call_unit(store, tick)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            raise ValueError(f"an epoch increment for another call stopped this one: {exc}") from None
        cancellation.cancel("check")
        try:
            api.call_unit(store, tick)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            if _INTERRUPTED_ERROR not in str(exc):
                raise ValueError(f"an interrupted guest stopped with {exc}") from None
        else:
            raise ValueError("an epoch-deadline callback did not stop the guest")
    finally:
        watch.leave()


def _load_raw_api() -> _RawApi | None:
    try:
        return _RawApi()
    except (ImportError, AttributeError, TypeError) as exc:  # pragma: no cover - another wasmtime-py
        logger.debug(
            "wasmtime's C API is not reachable (%s); host calls use wasmtime-py's "
            "public define_func",
            exc,
        )
        return None


def _settle_raw_api() -> None:
    """Check the C API once, before the first runtime links anything; drop it if broken.

    Not done at import: the check runs wasm, and wasmtime installs its trap
    handlers on first use, which must stay after any handler the process sets
    up itself (a faulthandler installed later would swallow every guest trap).
    """
    global _RAW, _RAW_SETTLED
    with _RAW_LOCK:
        if _RAW_SETTLED or _RAW is None:
            return
        _RAW_SETTLED = True
        try:
            _check_raw_api(_RAW)
        except Exception as exc:  # pragma: no cover - another wasmtime-py
            logger.debug(
                "wasmtime's C API does not behave as expected (%s: %s); host calls "
                "use wasmtime-py's public define_func",
                type(exc).__name__,
                exc,
            )
            _RAW = None


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
        # Writable even while empty: a zero-byte write to a zero-page memory is valid.
        self.data = memoryview(bytearray())
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


#: The C API when usable, else None (the public API is used).
_RAW = _load_raw_api()
_RAW_SETTLED = False
_RAW_LOCK = threading.Lock()


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
    bound to them; each call parks its ``_CallState`` in a thread-local that
    only the callbacks made by :meth:`define` read (a call never re-enters
    ``run`` on the same thread).
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
            raise _memory_error(
                f"{length} bytes at offset {ptr} lie outside guest memory of {len(data)} bytes"
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
        self, call: _CallState, desc_ptr: int, limit: int, error: str, what: str
    ) -> bytes:
        """The bytes a ``Buffer`` descriptor names; merod's ``error`` above ``limit``."""
        ptr, length = self._buffer(call, desc_ptr)
        if length > limit:
            raise _host_error(
                HOST_ERRORS[error], f"{what} of {length} bytes exceeds the {limit}-byte limit"
            )
        return self._read(call, ptr, length)

    def _sized(self, call: _CallState, desc_ptr: int, size: int, what: str) -> bytes:
        """Exactly ``size`` bytes (merod's ``read_guest_memory_sized``)."""
        ptr, length = self._buffer(call, desc_ptr)
        data = self._read(call, ptr, length)
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

    def _set_register(self, call: _CallState, register_id: int, data: bytes) -> None:
        # merod's Registers::set: every refusal is an InvalidMemoryAccess.
        registers = call.registers
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
        total = call.register_bytes - (0 if old is None else 8 + len(old)) + 8 + len(data)
        if total > LIMITS.max_registers_capacity:
            raise _memory_error(
                f"registers would hold {total} bytes in all, "
                f"the limit is {LIMITS.max_registers_capacity}"
            )
        registers[register_id] = data
        call.register_bytes = total

    def _storage_get(self, call: _CallState, key: bytes) -> bytes | None:
        if key in call.writes:
            return call.writes[key]
        return call.storage.get(key)

    def _storage_key(self, call: _CallState, desc_ptr: int) -> bytes:
        return self._buffer_bytes(
            call, desc_ptr, LIMITS.max_storage_key_size, "key", "storage key"
        )

    # -- registers and input ----------------------------------------------------

    def input(self, call: _CallState, register_id: int) -> None:
        self._set_register(call, register_id, call.input)

    def register_len(self, call: _CallState, register_id: int) -> int:
        data = call.registers.get(register_id)
        # u64::MAX for "unset", handed over as its i64 bit pattern.
        return -1 if data is None else len(data)

    def read_register(
        self, call: _CallState, register_id: int, desc_ptr: int
    ) -> int:
        ptr, length = self._buffer(call, desc_ptr)
        data = call.registers.get(register_id)
        if data is None:
            raise _host_error(
                f"invalid register id: {register_id}", "the register is unset"
            )
        if length != len(data):
            return 0
        self._write(call, ptr, data)
        return 1

    # -- identity ------------------------------------------------------------------

    def context_id(self, call: _CallState, register_id: int) -> None:
        self._set_register(call, register_id, call.context_id)

    def account_id(self, call: _CallState, register_id: int) -> None:
        self._set_register(call, register_id, call.account_id)

    def device_id(self, call: _CallState, register_id: int) -> None:
        self._set_register(call, register_id, call.executor_id)

    # merod keeps `executor_id` as a linking shim for builds from before the
    # account/device split; it answers the account.
    executor_id = account_id

    def xcall_origin(self, call: _CallState, register_id: int) -> int:
        origin = call.xcall_origin
        if origin is None:
            return 0
        self._set_register(call, register_id, origin)
        return 1

    # -- results, logs, events, panics ---------------------------------------------

    def value_return(self, call: _CallState, desc_ptr: int) -> None:
        discriminant, ptr, length = abi.VALUE_RETURN.unpack(
            self._read(call, desc_ptr, abi.VALUE_RETURN.size)
        )
        limit = LIMITS.max_value_return_size
        if length > limit:
            raise _host_error(
                f"return value too large (size: {length}, max: {limit})",
                "value_return payload over the limit",
            )
        payload = self._read(call, ptr, length)
        if discriminant not in (0, 1):
            raise _host_error(
                HOST_ERRORS["deserialization"],
                f"value_return: invalid discriminant {discriminant} (0 = Ok, 1 = Err)",
            )
        outcome = call.outcome
        outcome.returns = payload
        outcome.is_error = discriminant == 1

    def emit_migration_witness(self, call: _CallState, desc_ptr: int) -> None:
        ptr, length = self._buffer(call, desc_ptr)
        witness = self._read(call, ptr, length)
        if length > LIMITS.max_storage_value_size:
            raise _host_error(
                HOST_ERRORS["value"],
                f"migration witness of {length} bytes exceeds the "
                f"{LIMITS.max_storage_value_size}-byte limit",
            )
        call.outcome.migration_witness = witness

    def log_utf8(self, call: _CallState, desc_ptr: int) -> None:
        # merod's order: read the text, then check the count, then the size.
        ptr, length = self._buffer(call, desc_ptr)
        line = self._text(self._read(call, ptr, length), "log line")
        outcome = call.outcome
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

    def _location(self, call: _CallState, loc_ptr: int) -> tuple[int, int, int, int]:
        file_ptr, file_len, line, column = abi.LOCATION.unpack(
            self._read(call, loc_ptr, abi.LOCATION.size)
        )
        return file_ptr, file_len, line, column

    def _panic(self, message: str, file: str, line: int, column: int) -> _HostAbort:
        return _HostAbort(
            ExecutionFailure(
                "Panic", f"guest panicked: {message} at {file}:{line}:{column}"
            )
        )

    def panic_utf8(self, call: _CallState, msg_ptr: int, loc_ptr: int) -> None:
        msg_data, msg_len = self._buffer(call, msg_ptr)
        file_ptr, file_len, line, column = self._location(call, loc_ptr)
        message = self._text(self._read(call, msg_data, msg_len), "panic message")
        file = self._text(self._read(call, file_ptr, file_len), "panic location file")
        raise self._panic(message, file, line, column)

    def panic(self, call: _CallState, loc_ptr: int) -> None:
        file_ptr, file_len, line, column = self._location(call, loc_ptr)
        file = self._text(self._read(call, file_ptr, file_len), "panic location file")
        raise self._panic("explicit panic", file, line, column)

    def _event(self, call: _CallState, event_ptr: int) -> tuple[str, bytes]:
        kind_ptr, kind_len, data_ptr, data_len = abi.EVENT.unpack(
            self._read(call, event_ptr, abi.EVENT.size)
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
        if len(call.outcome.events) >= LIMITS.max_events:
            raise _host_error(
                HOST_ERRORS["events"], f"more than {LIMITS.max_events} events in one call"
            )
        kind = self._text(self._read(call, kind_ptr, kind_len), "event kind")
        return kind, self._read(call, data_ptr, data_len)

    def emit(self, call: _CallState, event_ptr: int) -> None:
        kind, data = self._event(call, event_ptr)
        call.outcome.events.append(Event(kind, data))

    def emit_with_handler(
        self, call: _CallState, event_ptr: int, handler_ptr: int
    ) -> None:
        kind, data = self._event(call, event_ptr)
        handler = None
        if handler_ptr != 0:
            ptr, length = self._buffer(call, handler_ptr)
            limit = LIMITS.max_method_name_size
            if length > limit:
                raise _host_error(
                    f"event handler name too large (size: {length}, max: {limit})",
                    "emit_with_handler handler name over the method-name limit",
                )
            handler = self._text(self._read(call, ptr, length), "event handler name")
        call.outcome.events.append(Event(kind, data, handler))

    def xcall(self, call: _CallState, xcall_ptr: int) -> None:
        ctx_ptr, ctx_len, fn_ptr, fn_len, params_ptr, params_len = abi.XCALL.unpack(
            self._read(call, xcall_ptr, abi.XCALL.size)
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
        outcome = call.outcome
        if len(outcome.xcalls) >= LIMITS.max_xcalls:
            raise _host_error(
                HOST_ERRORS["xcalls"], f"more than {LIMITS.max_xcalls} xcalls in one call"
            )
        context = self._read(call, ctx_ptr, ctx_len)
        if ctx_len != 32:
            raise _memory_error(f"xcall context id must be 32 bytes, got {ctx_len}")
        function = self._text(self._read(call, fn_ptr, fn_len), "xcall function name")
        outcome.xcalls.append(XCall(context, function, self._read(call, params_ptr, params_len)))

    # -- state ---------------------------------------------------------------------

    def commit(self, call: _CallState, root_ptr: int, artifact_ptr: int) -> None:
        root_addr, root_len = self._buffer(call, root_ptr)
        artifact_addr, artifact_len = self._buffer(call, artifact_ptr)
        limit = LIMITS.max_artifact_size
        if artifact_len > limit:
            raise _host_error(
                f"commit artifact size overflow (size: {artifact_len}, max: {limit})",
                "commit artifact over the limit",
            )
        root = self._read(call, root_addr, root_len)
        if root_len != 32:
            raise _memory_error(f"commit: the root hash must be 32 bytes, got {root_len}")
        artifact = self._read(call, artifact_addr, artifact_len)
        if call.committed:
            # merod reports a second commit as an InvalidMemoryAccess.
            raise _memory_error("commit called more than once in one execution")
        call.committed = True
        call.outcome.root_hash = root
        call.outcome.artifact = artifact

    def storage_read(
        self, call: _CallState, key_ptr: int, register_id: int
    ) -> int:
        value = self._storage_get(call, self._storage_key(call, key_ptr))
        if value is None:
            return 0
        self._set_register(call, register_id, value)
        return 1

    def storage_write(
        self, call: _CallState, key_ptr: int, value_ptr: int, register_id: int
    ) -> int:
        key_addr, key_len = self._buffer(call, key_ptr)
        value_addr, value_len = self._buffer(call, value_ptr)
        self._check_key_value(key_len, value_len)
        key = self._read(call, key_addr, key_len)
        value = self._read(call, value_addr, value_len)
        old = self._storage_get(call, key)
        # Known gap: merod also charges each write against a per-run budget;
        # only the key and value size limits are enforced here.
        call.writes[key] = value
        if old is None:
            return 0
        self._set_register(call, register_id, old)
        return 1

    def storage_remove(
        self, call: _CallState, key_ptr: int, register_id: int
    ) -> int:
        key = self._storage_key(call, key_ptr)
        old = self._storage_get(call, key)
        if old is None:
            return 0
        call.writes[key] = None
        self._set_register(call, register_id, old)
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
        self, call: _CallState, key_ptr: int, value_ptr: int
    ) -> tuple[bytes, bytes]:
        key_addr, key_len = self._buffer(call, key_ptr)
        value_addr, value_len = self._buffer(call, value_ptr)
        self._check_key_value(key_len, value_len)
        return self._read(call, key_addr, key_len), self._read(call, value_addr, value_len)

    # -- node-local private storage ------------------------------------------------
    #
    # Not synchronised: the node keeps it per context and never sends it to peers.
    # Without a backend merod answers 0 (absent / not written).

    def _private_get(self, call: _CallState, key: bytes) -> bytes | None:
        if key in call.outcome.private_writes:
            return call.outcome.private_writes[key]
        assert call.private is not None
        return call.private.get(key)

    def private_storage_read(
        self, call: _CallState, key_ptr: int, register_id: int
    ) -> int:
        key = self._storage_key(call, key_ptr)
        if call.private is None:
            return 0
        value = self._private_get(call, key)
        if value is None:
            return 0
        self._set_register(call, register_id, value)
        return 1

    def private_storage_remove(
        self, call: _CallState, key_ptr: int, register_id: int
    ) -> int:
        key = self._storage_key(call, key_ptr)
        if call.private is None:
            return 0
        old = self._private_get(call, key)
        if old is None:
            return 0
        call.outcome.private_writes[key] = None
        self._set_register(call, register_id, old)
        return 1

    def private_storage_write(
        self, call: _CallState, key_ptr: int, value_ptr: int
    ) -> int:
        key, value = self._key_value(call, key_ptr, value_ptr)
        if call.private is None:
            return 0
        call.outcome.private_writes[key] = value
        return 1

    # -- node-local ordered index (SortedMap/SortedSet) ----------------------------
    #
    # Keys are raw `collection ‖ order_key` bytes kept in byte order; values are
    # entry ids. Like private storage it is never synchronised: each node keeps
    # its own, and the guest rebuilds it when its validity marker is missing.
    # Writes answer 1 when persisted; without a backend merod answers 0 and
    # scans find nothing.

    def _index_items(
        self, call: _CallState, lo: bytes, hi: bytes
    ) -> list[tuple[bytes, bytes]]:
        """The live ``(key, value)`` pairs with ``lo <= key < hi``, ascending."""
        if call.index is None:
            return []
        overlay = call.outcome.index_writes
        keys = sorted(
            k for k in set(call.index).union(overlay) if lo <= k < hi
        )
        items = []
        for key in keys:
            value = overlay[key] if key in overlay else call.index.get(key)
            if value is not None:
                items.append((key, value))
        return items

    def _index_bound(self, call: _CallState, desc_ptr: int, what: str) -> bytes:
        return self._buffer_bytes(call, desc_ptr, LIMITS.max_storage_key_size, "key", what)

    def storage_index_set(
        self, call: _CallState, key_ptr: int, value_ptr: int
    ) -> int:
        key, value = self._key_value(call, key_ptr, value_ptr)
        if call.index is None:
            return 0
        call.outcome.index_writes[key] = value
        return 1

    def storage_index_remove(self, call: _CallState, key_ptr: int) -> int:
        key = self._index_bound(call, key_ptr, "index key")
        if call.index is None:
            return 0
        call.outcome.index_writes[key] = None
        return 1

    def storage_index_remove_prefix(self, call: _CallState, prefix_ptr: int) -> int:
        prefix = self._index_bound(call, prefix_ptr, "index prefix")
        if call.index is None:
            return 0
        overlay = call.outcome.index_writes
        for key in set(call.index).union(overlay):
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
        call: _CallState,
        lo_ptr: int,
        hi_ptr: int,
        offset: int,
        limit: int,
        register_id: int,
    ) -> int:
        lo_addr, lo_len = self._buffer(call, lo_ptr)
        hi_addr, hi_len = self._buffer(call, hi_ptr)
        if max(lo_len, hi_len) > LIMITS.max_storage_key_size:
            raise _host_error(
                HOST_ERRORS["key"],
                f"index scan bound of {max(lo_len, hi_len)} bytes exceeds the "
                f"{LIMITS.max_storage_key_size}-byte limit",
            )
        lo = self._read(call, lo_addr, lo_len)
        hi = self._read(call, hi_addr, hi_len)
        # `limit` is n + 1 encoded: 0 means unbounded.
        pairs = self._index_items(call, lo, hi)[offset:]
        if limit:
            pairs = pairs[: limit - 1]
        self._set_register(call, register_id, self._encode_pairs(pairs))
        return 1

    def storage_index_last(
        self, call: _CallState, lo_ptr: int, hi_ptr: int, register_id: int
    ) -> int:
        lo_addr, lo_len = self._buffer(call, lo_ptr)
        hi_addr, hi_len = self._buffer(call, hi_ptr)
        if max(lo_len, hi_len) > LIMITS.max_storage_key_size:
            raise _host_error(
                HOST_ERRORS["key"],
                f"index bound of {max(lo_len, hi_len)} bytes exceeds the "
                f"{LIMITS.max_storage_key_size}-byte limit",
            )
        items = self._index_items(
            call,
            self._read(call, lo_addr, lo_len), self._read(call, hi_addr, hi_len)
        )
        self._set_register(call, register_id, self._encode_pairs(items[-1:]))
        return 1

    def _meta_get(self, call: _CallState, key: bytes) -> bytes | None:
        overlay = call.outcome.index_meta_writes
        if key in overlay:
            return overlay[key]
        assert call.index_meta is not None
        return call.index_meta.get(key)

    def storage_index_meta_set(
        self, call: _CallState, key_ptr: int, value_ptr: int
    ) -> int:
        key, value = self._key_value(call, key_ptr, value_ptr)
        if call.index_meta is None:
            return 0
        call.outcome.index_meta_writes[key] = value
        return 1

    def storage_index_meta_get(
        self, call: _CallState, key_ptr: int, register_id: int
    ) -> int:
        key = self._index_bound(call, key_ptr, "index marker key")
        if call.index_meta is None:
            return 0
        value = self._meta_get(call, key)
        if value is None:
            return 0
        self._set_register(call, register_id, value)
        return 1

    def storage_index_meta_clear(self, call: _CallState, key_ptr: int) -> int:
        key = self._index_bound(call, key_ptr, "index marker key")
        if call.index_meta is None:
            return 0
        call.outcome.index_meta_writes[key] = None
        return 1

    # -- environment ---------------------------------------------------------------

    def time_now(self, call: _CallState, desc_ptr: int) -> None:
        ptr, length = self._buffer(call, desc_ptr)
        if length != 8:
            raise _memory_error(f"time_now: the buffer must be 8 bytes long, got {length}")
        now = call.clock() & U64_MAX
        self._write(call, ptr, now.to_bytes(8, "little"))

    def random_bytes(self, call: _CallState, desc_ptr: int) -> None:
        ptr, length = self._buffer(call, desc_ptr)
        self._span(call, ptr, length)
        self._write(call, ptr, call.random(length))

    def ed25519_verify(
        self, call: _CallState, sig_ptr: int, pk_ptr: int, msg_ptr: int
    ) -> int:
        signature = self._sized(call, sig_ptr, 64, "ed25519_verify: the signature")
        public_key = self._sized(call, pk_ptr, 32, "ed25519_verify: the public key")
        msg_addr, msg_len = self._buffer(call, msg_ptr)
        message = self._read(call, msg_addr, msg_len)
        if not abi.ed25519_public_key_valid(public_key):
            raise _host_error(
                HOST_ERRORS["ed25519_key"],
                f"ed25519_verify: {public_key.hex()} does not encode a curve point",
            )
        return 1 if abi.ed25519_verify(signature, public_key, message) else 0

    def fetch(
        self,
        call: _CallState,
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
        self._set_register(call, register_id, _FETCH_BLOCKED)
        return 1

    # -- streaming blobs -----------------------------------------------------------
    #
    # Blobs live in the node's blob store (the one behind PUT/GET /admin-api/blobs).
    # A written blob is stored when its handle is closed, even if the call fails
    # later, as in merod; handles still open when the call ends are dropped.

    def _blob_store(self, call: _CallState) -> BlobStore:
        blobs = call.blobs
        if blobs is None:
            raise _host_error(
                HOST_ERRORS["blobs_unsupported"], "this run has no blob store"
            )
        return blobs

    def _new_blob_handle(self, call: _CallState, blob_id: bytes | None) -> int:
        fd = call.next_blob_fd
        call.next_blob_fd += 1
        call.blob_handles[fd] = _BlobHandle(blob_id)
        return fd

    def _check_handle_room(self, call: _CallState) -> None:
        if len(call.blob_handles) >= LIMITS.max_blob_handles:
            raise _host_error(
                f"too many blob handles (max: {LIMITS.max_blob_handles})",
                "open blob handles at the limit",
            )

    def _blob_handle(self, call: _CallState, fd: int, *, writing: bool) -> _BlobHandle:
        handle = call.blob_handles.get(fd)
        if handle is None or (handle.blob_id is None) != writing:
            kind = "write" if writing else "read"
            raise _host_error(HOST_ERRORS["blob_handle"], f"{fd} is not an open {kind} handle")
        return handle

    def blob_create(self, call: _CallState) -> int:
        self._blob_store(call)
        self._check_handle_room(call)
        return self._new_blob_handle(call, None)

    def blob_write(self, call: _CallState, fd: int, desc_ptr: int) -> int:
        ptr, length = self._buffer(call, desc_ptr)
        self._blob_store(call)
        limit = LIMITS.max_blob_chunk_size
        if length > limit:
            raise _host_error(
                f"blob write too large (size: {length}, max: {limit})", "blob chunk over the limit"
            )
        data = self._read(call, ptr, length)
        self._blob_handle(call, fd, writing=True).chunks.append(data)
        return length

    def blob_close(self, call: _CallState, fd: int, desc_ptr: int) -> int:
        ptr, length = self._buffer(call, desc_ptr)
        if length != 32:
            raise _memory_error(f"blob_close: the blob id buffer must be 32 bytes, got {length}")
        blobs = self._blob_store(call)
        self._span(call, ptr, length)
        handles = call.blob_handles
        handle = handles.pop(fd, None)
        if handle is None:
            raise _host_error(HOST_ERRORS["blob_handle"], f"{fd} is not an open handle")
        blob_id = handle.blob_id
        if blob_id is None:
            blob_id = blobs.put(b"".join(handle.chunks))
        self._write(call, ptr, blob_id)
        return 1

    def blob_open(self, call: _CallState, desc_ptr: int) -> int:
        ptr, length = self._buffer(call, desc_ptr)
        self._blob_store(call)
        self._check_handle_room(call)
        blob_id = self._read(call, ptr, length)
        if length != 32:
            raise _memory_error(f"blob_open: the blob id must be 32 bytes, got {length}")
        # Like merod, opening does not look the blob up: a missing blob reads as empty.
        return self._new_blob_handle(call, blob_id)

    def blob_read(self, call: _CallState, fd: int, desc_ptr: int) -> int:
        ptr, length = self._buffer(call, desc_ptr)
        blobs = self._blob_store(call)
        limit = LIMITS.max_blob_chunk_size
        if length > limit:
            raise _host_error(
                f"blob buffer too large (size: {length}, max: {limit})", "blob_read buffer over the limit"
            )
        if length == 0:
            return 0
        handle = self._blob_handle(call, fd, writing=False)
        if handle.data is None:
            assert handle.blob_id is not None
            handle.data = blobs.get(handle.blob_id) or b""
        chunk = handle.data[handle.position : handle.position + length]
        if chunk:
            self._write(call, ptr, chunk)
            handle.position += len(chunk)
        return len(chunk)

    def _blob_and_context(
        self, call: _CallState, blob_ptr: int, context_ptr: int
    ) -> tuple[bytes, bytes]:
        blob_id = self._sized(call, blob_ptr, 32, "the blob id")
        context = self._sized(call, context_ptr, 32, "the context id")
        return blob_id, context

    def blob_announce_to_context(
        self, call: _CallState, blob_ptr: int, context_ptr: int
    ) -> int:
        blobs = self._blob_store(call)
        blob_id, context = self._blob_and_context(call, blob_ptr, context_ptr)
        if blobs.get(blob_id) is None or not blobs.announce(blob_id, context):
            # merod: no blob info for the id is a BlobsNotSupported error.
            raise _host_error(
                HOST_ERRORS["blobs_unsupported"],
                f"blob {blob_id.hex()} is not on this node, so it cannot be announced",
            )
        return 1

    def blob_open_in_context(
        self, call: _CallState, blob_ptr: int, context_ptr: int
    ) -> int:
        blobs = self._blob_store(call)
        blob_id, context = self._blob_and_context(call, blob_ptr, context_ptr)
        if blobs.fetch(blob_id, context) is None:
            return 0
        return self.blob_open(call, blob_ptr)

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
        # merod reports a panicking host function as a host panic.
        return ExecutionFailure(
            "HostError",
            f"host panicked: internal error in env.{name}: {exc}",
            "a bug of the embedded node, not of the app",
        )

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


# Guests run on several threads at once (each node has its own). Two things
# would stop that, and both come only with wasmtime-py's public API, used when
# its C bindings are not reachable (``_RAW is None``): its trampoline hands a
# Python exception raised by a host function back through a module-global
# slot, so two threads inside wasm at once could pick up each other's
# exception; and a store without the epoch-deadline callback traps at every
# increment of its engine's epoch, including one meant for another call. In
# that case calls are serialised process-wide by this lock.
_PUBLIC_API_LOCK = threading.Lock()


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


def _stopped_by_interrupt(exc: BaseException) -> bool:
    """Whether the guest stopped at an epoch deadline: through the callback, or a plain trap."""
    if getattr(exc, "trap_code", None) == wasmtime.TrapCode.INTERRUPT:
        return True
    return isinstance(exc, wasmtime.WasmtimeError) and _INTERRUPTED_ERROR in str(exc)


def _interrupted(watch: Watch) -> ExecutionFailure:
    reason = watch.reason or "interrupted"
    if watch.timed_out:
        return ExecutionFailure(
            "Interrupted",
            f"execution interrupted: {reason}",
            f"a wall-clock limit of the embedded node (merod bounds a call by gas "
            f"alone); raise it with {TIME_LIMIT_ENV} (seconds, 0 for none)",
        )
    return ExecutionFailure("Interrupted", f"execution interrupted: {reason}")


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
        time_limit: float | None,
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
        self.time_limit = time_limit

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
        cancellation: Cancellation | None = None,
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
            cancellation: lets another thread interrupt this call; one
                cancelled already makes the call fail without running.

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
                    "decode hex ids before calling run()"
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
            state.outcome.failure = self._execute(
                method, state, Watch(self._engine, self.time_limit, cancellation)
            )
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

    def _execute(
        self, method: str, state: _CallState, watch: Watch
    ) -> ExecutionFailure | None:
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
        state.store = store
        self._host.enter(state)
        raw = _RAW
        if raw is None:
            with _PUBLIC_API_LOCK:
                return self._watched(method, state, watch, store)
        raw.watch_epochs(store)
        return self._watched(method, state, watch, store)

    def _watched(
        self, method: str, state: _CallState, watch: Watch, store: wasmtime.Store
    ) -> ExecutionFailure | None:
        # One guest span from instantiation to the method's return: one
        # deadline set, not one per guest entry.
        try:
            watch.enter(store)
        except Interrupted:
            return _interrupted(watch)
        try:
            return self._run_guest(method, state, watch, store)
        finally:
            watch.leave()

    def _run_guest(
        self, method: str, state: _CallState, watch: Watch, store: wasmtime.Store
    ) -> ExecutionFailure | None:
        try:
            instance = self._pre.instantiate(store)
        except Exception as exc:
            return self._stopped(state, watch, exc)
        memory = _export(store, instance, "memory")
        assert isinstance(memory, wasmtime.Memory)
        state.memory = memory

        if self._has_merge and method != _REGISTER_MERGE:
            merge = _export(store, instance, _REGISTER_MERGE)
            assert isinstance(merge, wasmtime.Func)
            try:
                _call_unit(store, merge)
            except Exception as exc:
                if state.pending is not None:
                    raise state.pending from None
                if watch.reason is not None:
                    return _interrupted(watch)
                # merod ignores this failure too; note it for whoever debugs an app.
                logger.debug(
                    "%s failed (ignored): %s", _REGISTER_MERGE, state.abort or exc
                )
                state.abort = None

        func = _export(store, instance, method)
        assert isinstance(func, wasmtime.Func)
        try:
            _call_unit(store, func)
        except Exception as exc:
            return self._stopped(state, watch, exc)
        return None

    def _stopped(
        self, state: _CallState, watch: Watch, exc: Exception
    ) -> ExecutionFailure:
        """Why the guest stopped with ``exc``; an interrupt caught in the host is raised."""
        if state.pending is not None:
            raise state.pending from None
        if state.abort is not None:
            return state.abort
        if _stopped_by_interrupt(exc):
            return _interrupted(watch)
        return _trap_failure(exc, self.gas_limit)


class _Unset:
    """The type of a keyword argument that was not given."""


_UNSET = _Unset()


class WasmRuntime:
    """Compiles and caches Calimero apps; one per process is enough.

    The engine meters fuel (merod's gas) and every compiled module shares the
    same host functions, so instantiating per call is cheap.

    Args:
        gas_limit: fuel one call may spend (merod's ``max_gas``).
        time_limit: wall-clock seconds one call may run, None for no limit;
            when omitted, ``CW_WASM_TIME_LIMIT`` or
            :data:`~calimero_workflow.node.interrupt.DEFAULT_TIME_LIMIT_S`.

    Raises:
        ValueError: ``time_limit`` (or the environment's) is not a positive
            number of seconds.
    """

    def __init__(
        self,
        *,
        gas_limit: int = DEFAULT_GAS_LIMIT,
        time_limit: float | None | _Unset = _UNSET,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(time_limit, _Unset):
            time_limit = time_limit_from(os.environ if environ is None else environ)
        elif time_limit is not None and not time_limit > 0:
            msg = f"time_limit must be a positive number of seconds or None, got {time_limit!r}"
            raise ValueError(msg)
        config = wasmtime.Config()
        config.consume_fuel = True
        # Each store's deadline is set before it runs guest code (interrupt.Watch).
        config.epoch_interruption = True
        self.engine = wasmtime.Engine(config)
        self.gas_limit = gas_limit
        self.time_limit = time_limit
        _settle_raw_api()
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
            time_limit=self.time_limit,
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
