"""Shared fixtures for the wasm runtime and app tests.

Test modules load them with ``pytest_plugins = ["wasm_fixtures"]``; they are
kept out of ``conftest.py`` on purpose so that this file stays owned by the
runtime tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from calimero_workflow.node.runtime import AppModule, Outcome, WasmRuntime

REPO = Path(__file__).resolve().parent.parent
KV_STORE_WASM = REPO / "apps" / "kv-store" / "kv_store.wasm"
TEST_WASM_SOURCES = Path(__file__).resolve().parent / "wasm"

CONTEXT_ID = bytes(range(32))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_wasm_toolchain() -> str:
    """Return the clang to use, or skip (fail under CI=true) when it is missing."""
    clang = os.environ.get("CLANG", "clang")
    missing = [tool for tool in (clang, "wasm-ld") if shutil.which(tool) is None]
    if missing:
        message = (
            f"wasm toolchain not found: {', '.join(missing)} "
            "(install clang and lld, or set CLANG)"
        )
        if in_ci():
            pytest.fail(message + "; CI=true requires it", pytrace=False)
        pytest.skip(message)
    return clang


def build_c_wasm(source: Path, out: Path) -> bytes:
    """Compile one freestanding C file to wasm with the flags the apps use."""
    clang = require_wasm_toolchain()
    cmd = [
        clang,
        "--target=wasm32",
        "-nostdlib",
        "-O2",
        "-mbulk-memory",
        "-Wl,--no-entry",
        "-o",
        str(out),
        str(source),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"building {source.name} failed:\n{result.stderr}")
    return out.read_bytes()


@pytest.fixture(scope="session")
def runtime() -> WasmRuntime:
    return WasmRuntime()


@pytest.fixture(scope="session")
def kv_module(runtime: WasmRuntime) -> AppModule:
    return runtime.compile(KV_STORE_WASM.read_bytes())


@pytest.fixture(scope="session")
def c_test_wasm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, bytes]]:
    """Every ``tests/wasm/*.c`` compiled once per session, by file stem."""
    out = tmp_path_factory.mktemp("c-wasm")
    yield {
        src.stem: build_c_wasm(src, out / f"{src.stem}.wasm")
        for src in sorted(TEST_WASM_SOURCES.glob("*.c"))
    }


class KvNode:
    """One replica of a kv-store context: a storage dict plus the app module.

    It applies ``Outcome.writes`` the way a node does, keeps the last committed
    root, and uses a deterministic clock so tests control write ordering.
    """

    def __init__(
        self, module: AppModule, executor: bytes, clock_start: int = 1_000
    ) -> None:
        self.module = module
        self.executor = executor
        self.storage: dict[bytes, bytes] = {}
        self.root: bytes | None = None
        self.now = clock_start

    def clock(self) -> int:
        self.now += 1
        return self.now

    def run(
        self, method: str, args: object = None, *, raw: bytes | None = None
    ) -> Outcome:
        data = (
            raw
            if raw is not None
            else json.dumps({} if args is None else args).encode()
        )
        outcome = self.module.run(
            method,
            data,
            storage=self.storage,
            context_id=CONTEXT_ID,
            executor_id=self.executor,
            clock=self.clock,
        )
        if outcome.failure is None:
            for key, value in outcome.writes.items():
                if value is None:
                    self.storage.pop(key, None)
                else:
                    self.storage[key] = value
            if outcome.root_hash is not None:
                self.root = outcome.root_hash
        return outcome

    def call(self, method: str, args: object = None) -> object:
        """Run a method that must succeed with Ok; return its parsed JSON."""
        outcome = self.run(method, args)
        assert outcome.failure is None, outcome.failure
        assert not outcome.is_error, outcome.returns
        return None if outcome.returns is None else json.loads(outcome.returns)

    def apply(self, artifact: bytes) -> Outcome:
        outcome = self.run("__calimero_sync_next", raw=artifact)
        assert outcome.failure is None, outcome.failure
        return outcome

    def snapshot(self, name: bytes) -> KvNode:
        """A new replica bootstrapped from a copy of this one's store."""
        other = KvNode(self.module, name, self.now)
        other.storage = dict(self.storage)
        other.root = self.root
        return other
