"""Files a step writes stay inside their folder, even while the folder changes under them."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from calimero_workflow.confined import ConfinedPathError, write_confined
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.results import Status
from calimero_workflow.workflow import parse_workflow

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "kv-store" / "kv_store.wasm"


def test_write_creates_folders_and_replaces_the_file(tmp_path: Path):
    base = tmp_path / "wf"
    base.mkdir()
    out = write_confined("out/deep/blob.bin", b"one", base=base, roots=[base])
    assert out == base / "out" / "deep" / "blob.bin"
    write_confined("out/deep/blob.bin", b"two", base=base, roots=[base])
    assert out.read_bytes() == b"two"
    assert sorted(p.name for p in out.parent.iterdir()) == ["blob.bin"]  # no temporary left


def test_a_symbolic_link_on_the_way_is_refused(tmp_path: Path):
    base, outside = tmp_path / "wf", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    (base / "out").symlink_to(outside)
    with pytest.raises(ConfinedPathError, match="'out', which is a symbolic link"):
        write_confined("out/blob.bin", b"x", base=base, roots=[base])
    assert list(outside.iterdir()) == []


def test_a_symbolic_link_in_the_file_s_place_is_replaced_not_followed(tmp_path: Path):
    base = tmp_path / "wf"
    base.mkdir()
    target = tmp_path / "precious"
    target.write_text("keep")
    (base / "blob.bin").symlink_to(target)
    write_confined("blob.bin", b"new", base=base, roots=[base])
    assert target.read_text() == "keep"
    assert not (base / "blob.bin").is_symlink() and (base / "blob.bin").read_bytes() == b"new"


def test_paths_outside_every_root_are_refused(tmp_path: Path):
    base = tmp_path / "repo" / "wf"
    base.mkdir(parents=True)
    with pytest.raises(ConfinedPathError, match="outside"):
        write_confined("../../elsewhere.bin", b"x", base=base, roots=[base, tmp_path / "repo"])
    with pytest.raises(ConfinedPathError, match="outside"):
        write_confined(str(tmp_path / "abs.bin"), b"x", base=base, roots=[base])
    with pytest.raises(ConfinedPathError, match="names a folder"):
        write_confined(".", b"x", base=base, roots=[base])
    # `..` that stays inside another root (the working directory) is fine
    out = write_confined("../build/b.bin", b"x", base=base, roots=[base, tmp_path / "repo"])
    assert out == tmp_path / "repo" / "build" / "b.bin" and out.read_bytes() == b"x"


def test_a_folder_swapped_for_a_link_during_writes_never_redirects_one(tmp_path: Path):
    # A thread keeps turning `base/sub` into a link to `outside` and back, as
    # an attacker racing the step would. Writes may fail, but none may land
    # outside. (Resolving first and writing after let a few thousand writes
    # leak a few files.)
    base, outside = tmp_path / "wf", tmp_path / "outside"
    base.mkdir()
    outside.mkdir()
    sub, hold = base / "sub", base / "hold"
    sub.mkdir()
    stop = threading.Event()

    def put_back() -> None:
        while True:
            try:
                os.rename(hold, sub)
                return
            except OSError:  # a write made `sub` meanwhile
                if sub.is_symlink():
                    sub.unlink()
                else:
                    shutil.rmtree(sub, ignore_errors=True)

    def swap() -> None:
        while not stop.is_set():
            try:
                os.rename(sub, hold)
            except OSError:
                continue
            with contextlib.suppress(OSError):
                os.symlink(outside, sub)
                os.unlink(sub)
            put_back()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the two threads finely
    swapper = threading.Thread(target=swap)
    swapper.start()
    written = refused = 0
    try:
        for i in range(3000):
            try:
                write_confined(f"sub/f{i}.bin", b"x", base=base, roots=[base])
                written += 1
            except (ConfinedPathError, OSError):
                refused += 1
    finally:
        stop.set()
        swapper.join()
        sys.setswitchinterval(switch)
    assert list(outside.iterdir()) == []
    assert written > 0 and written + refused == 3000


async def test_download_blob_refuses_an_output_path_through_a_link(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "data.txt").write_text("blob content")
    (tmp_path / "out").symlink_to(outside)
    text = textwrap.dedent("""
        name: t
        nodes: {count: 1, prefix: node}
        steps:
          - {name: up, type: upload_blob, node: node-1, file_path: data.txt}
          - {name: ok, type: download_blob, node: node-1, blob_id: "${results.up.blob_id}", output_path: saved/data.txt}
          - {name: bad, type: download_blob, node: node-1, blob_id: "${results.up.blob_id}", output_path: out/data.txt}
    """)
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path / "runs").run()
    assert result.steps[1].status is Status.PASSED
    assert (tmp_path / "saved" / "data.txt").read_text() == "blob content"
    bad = result.steps[2]
    assert bad.status is Status.FAILED
    assert "passes through 'out', which is a symbolic link" in bad.error.message
    assert bad.error.location.line == 7
    assert list(outside.iterdir()) == []


async def test_download_blob_never_overwrites_the_workflow_file(tmp_path: Path):
    from calimero_workflow.errors import WorkflowValidationError
    from calimero_workflow.workflow import load_workflow

    (tmp_path / "data.txt").write_text("blob content")
    wf_file = tmp_path / "wf.yml"
    # written out: refused when the file loads
    written = textwrap.dedent("""
        name: t
        nodes: {count: 1, prefix: node}
        steps:
          - {name: up, type: upload_blob, node: node-1, file_path: data.txt}
          - {type: download_blob, node: node-1, blob_id: "${results.up.blob_id}", output_path: ./sub/../wf.yml}
    """)
    wf_file.write_text(written)
    with pytest.raises(WorkflowValidationError) as info:
        load_workflow(wf_file, environ={})
    (problem,) = info.value.problems
    assert problem.message == (
        f"output_path './sub/../wf.yml' is the workflow file {wf_file}: the download would overwrite it"
    )
    assert problem.hint.startswith("write the blob to a file of its own")
    assert (problem.location.line, problem.location.col) == (6, 88)
    # from a placeholder: refused when the step runs
    from_value = textwrap.dedent("""
        name: t
        nodes: {count: 1, prefix: node}
        steps:
          - {name: up, type: upload_blob, node: node-1, file_path: data.txt}
          - {name: where, type: assert, actual: wf.yml, equals: wf.yml}
          - {name: dl, type: download_blob, node: node-1, blob_id: "${results.up.blob_id}", output_path: "${results.where.actual}"}
    """)
    wf_file.write_text(from_value)
    result = await WorkflowExecutor(load_workflow(wf_file, environ={}), env={}, workdir=tmp_path / "runs").run()
    dl = result.steps[2]
    assert dl.status is Status.FAILED
    assert f"output_path 'wf.yml' is the workflow file {wf_file}: the download would overwrite it" in dl.error.message
    assert dl.error.location.line == 7
    assert wf_file.read_text() == from_value
