"""The committed app wasm is exactly what scripts/build-apps.sh makes from source."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.register_assert_rewrite("wasm_fixtures")
from wasm_fixtures import KV_STORE_WASM, REPO, in_ci, require_wasm_toolchain  # noqa: E402

BUILD_SCRIPT = REPO / "scripts" / "build-apps.sh"

pytestmark = pytest.mark.wasm_toolchain


def build(
    *args: str, cwd: Path = REPO, script: Path = BUILD_SCRIPT
) -> subprocess.CompletedProcess[str]:
    require_wasm_toolchain()
    if shutil.which("bash") is None:
        pytest.skip("bash is needed to run scripts/build-apps.sh")
    return subprocess.run(
        ["bash", str(script), *args], cwd=cwd, capture_output=True, text=True
    )


def skip_on_other_clang(result: subprocess.CompletedProcess[str]) -> None:
    """Exit 3 means "different clang major": a byte comparison is meaningless."""
    if result.returncode == 3 and not in_ci():
        pytest.skip(result.stderr.strip())


def test_committed_wasm_matches_a_fresh_build() -> None:
    result = build("--check")
    skip_on_other_clang(result)
    assert result.returncode == 0, result.stderr
    assert "ok       apps/kv-store/kv_store.wasm" in result.stdout


def test_build_does_not_depend_on_where_the_checkout_lives(tmp_path: Path) -> None:
    # A copy under a different, deeper path must produce the same bytes.
    copy = tmp_path / "some" / "other-checkout"
    copy.mkdir(parents=True)
    shutil.copytree(REPO / "scripts", copy / "scripts")
    shutil.copytree(
        REPO / "apps", copy / "apps", ignore=shutil.ignore_patterns("*.wasm")
    )
    out = tmp_path / "out"
    result = build(
        "--out",
        str(out),
        "kv-store",
        script=copy / "scripts" / "build-apps.sh",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    built = (out / "kv_store.wasm").read_bytes()
    assert str(tmp_path).encode() not in built
    if "warning" not in result.stderr:  # same clang major as the committed build
        assert built == KV_STORE_WASM.read_bytes()


def test_committed_wasm_holds_no_absolute_paths() -> None:
    wasm = KV_STORE_WASM.read_bytes()
    # Panic locations carry the source path; it must be repo-relative.
    assert b"apps/kv-store/kv_store.c" in wasm
    assert str(REPO).encode() not in wasm
    assert not re.search(rb"(/home/|/root/|/tmp/|/work/|/Users/|[A-Z]:\\\\)", wasm)


def test_unknown_option_is_refused_with_a_hint() -> None:
    result = build("--frobnicate")
    assert result.returncode == 2
    assert "unknown option '--frobnicate'" in result.stderr


def test_unknown_app_is_refused(tmp_path: Path) -> None:
    result = build("--out", str(tmp_path), "no-such-app")
    assert result.returncode == 2
    assert "no C sources in apps/no-such-app" in result.stderr
