"""What git tracks, read from the index as git itself writes it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from calimero_workflow.gitindex import tracked_paths

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="makes checkouts with git")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def checkout(root: Path, object_format: str = "sha1") -> Path:
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", f"--object-format={object_format}")
    for rel in ("README.md", "docs/guide.md", "src/deep/er/mod.py", "x" * 200):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(rel)
    for number in range(40):  # enough entries for version 4's prefix compression
        (repo / "src" / f"file{number:03}.py").write_text(str(number))
    git(repo, "add", ".")
    return repo


@pytest.mark.parametrize("object_format", ["sha1", "sha256"])
@pytest.mark.parametrize("version", ["2", "3", "4"])
def test_every_index_version_and_object_format(tmp_path, version, object_format):
    repo = checkout(tmp_path, object_format)
    (repo / "intent.txt").write_text("later")
    git(repo, "add", "-N", "intent.txt")  # version 3's extended flags
    git(repo, "update-index", "--index-version", version)
    tracked = tracked_paths(repo)
    assert tracked is not None
    assert tracked.files == set(git(repo, "ls-files").splitlines())
    assert tracked.covers("README.md") and tracked.covers("src/deep/er/mod.py")
    assert tracked.covers("src/deep") and tracked.covers("docs")  # folders holding one
    assert not tracked.covers("calimero-workflow-results/junit.xml")
    assert not tracked.covers("READ")


def test_a_split_index_is_read_with_its_shared_part(tmp_path):
    repo = checkout(tmp_path)
    git(repo, "commit", "-qm", "one")
    git(repo, "update-index", "--split-index")
    (repo / "added.txt").write_text("after the split")
    git(repo, "add", "added.txt")
    tracked = tracked_paths(repo)
    assert tracked is not None
    assert {"README.md", "added.txt"} <= tracked.files


def test_a_sparse_index_covers_what_lies_under_its_folders(tmp_path):
    repo = checkout(tmp_path)
    git(repo, "commit", "-qm", "one")
    git(repo, "sparse-checkout", "set", "--cone", "--sparse-index", "src")
    tracked = tracked_paths(repo)
    assert tracked is not None
    assert "docs/" in tracked.sparse
    assert tracked.covers("docs/guide.md") and tracked.covers("docs")
    assert not tracked.covers("documents")


def test_a_linked_worktree_is_read_through_its_git_file(tmp_path):
    repo = checkout(tmp_path)
    git(repo, "commit", "-qm", "one")
    git(repo, "worktree", "add", "-q", str(tmp_path / "other"))
    assert (tmp_path / "other" / ".git").is_file()
    tracked = tracked_paths(tmp_path / "other")
    assert tracked is not None and "README.md" in tracked.files


def test_no_readable_index_is_no_answer(tmp_path):
    assert tracked_paths(tmp_path) is None  # not a checkout
    repo = checkout(tmp_path)
    index = repo / ".git" / "index"
    index.write_bytes(index.read_bytes()[:100])  # cut short
    assert tracked_paths(repo) is None
    index.unlink()
    os.mkfifo(index)  # never waited on
    started = time.monotonic()
    assert tracked_paths(repo) is None
    assert time.monotonic() - started < 5
    index.unlink()
    index.symlink_to(tmp_path / "elsewhere")  # never followed
    assert tracked_paths(repo) is None
