"""Which paths git tracks in a checkout, read from its index without running git.

The action never replaces a file of the repository it runs in, whatever a
marker file in the checkout claims. Git is not in the action's image, and
running it in a checkout we do not control would read that checkout's
configuration, which can name programs to run. So the index
(``.git/index``, gitformat-index(5)) is read here, as data:

* a 12-byte header: ``DIRC``, the version (2, 3 or 4) and the entry count;
* per entry: 40 bytes of stat data (the mode at offset 24), the object id
  (20 bytes for SHA-1 repositories, 32 for SHA-256), 16 bits of flags (the
  low 12 are the name's length), 16 more with version 3's extended flag,
  then the path: NUL-terminated and padded to a multiple of 8 bytes
  (versions 2 and 3), or prefix-compressed against the previous path
  (version 4);
* extensions; ``link`` means a split index, whose shared part is read too.

A sparse index lists a folder (mode 040000, a name ending in ``/``) instead
of the files below it; everything under it counts as tracked. Whatever
cannot be read or parsed gives None: the caller then relies on its other
rules.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from .confined import read_regular

__all__ = ["Tracked", "tracked_paths"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: An index bigger than this is not read (the largest repositories have
#: indexes of a few hundred MB).
_INDEX_LIMIT = 1024 * 1024 * 1024
#: 40 bytes of stat data come before the object id in every entry.
_STAT_BYTES = 40


@dataclass(frozen=True)
class Tracked:
    """The paths of an index, relative to the checkout, in POSIX form."""

    files: frozenset[str]
    #: Every folder that holds a tracked file, at any depth.
    folders: frozenset[str]
    #: Folders a sparse index lists whole, each ending in ``/``.
    sparse: tuple[str, ...] = ()

    def covers(self, rel: str) -> bool:
        """Whether ``rel`` is tracked, holds a tracked file, or lies in a
        folder a sparse index lists whole."""
        return (
            rel in self.files
            or rel in self.folders
            or any((rel + "/").startswith(folder) for folder in self.sparse)
        )


def tracked_paths(root: Path) -> Tracked | None:
    """What the index of the checkout at ``root`` tracks; None when ``root``
    is no checkout or its index cannot be read."""
    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        git_dir = _open_git_dir(top, root)
    finally:
        os.close(top)
    if git_dir is None:
        return None
    try:
        data = read_regular("index", git_dir, _INDEX_LIMIT)
        if data is None or len(data) > _INDEX_LIMIT:
            return None
        parsed = _parse_any(data)
        if parsed is None:
            return None
        paths, sparse, shared = parsed
        if shared is not None:  # a split index: its shared part holds the rest
            base = read_regular(f"sharedindex.{shared}", git_dir, _INDEX_LIMIT)
            more = _parse_any(base) if base is not None else None
            if more is None:
                return None
            paths += more[0]
            sparse += more[1]
    finally:
        os.close(git_dir)
    folders = {
        "/".join(parts[:depth])
        for parts in (p.split("/") for p in paths)
        for depth in range(1, len(parts))
    }
    return Tracked(frozenset(paths), frozenset(folders), tuple(sparse))


def _open_git_dir(top: int, root: Path) -> int | None:
    """``.git`` as a folder, or the folder a ``.git`` file points to
    (``gitdir: …``, as in a linked worktree or a submodule)."""
    try:
        return os.open(".git", _DIR, dir_fd=top)
    except NotADirectoryError:
        pass
    except OSError:
        return None
    pointer = read_regular(".git", top, 4096)
    if pointer is None or not pointer.startswith(b"gitdir:"):
        return None
    target = pointer[len(b"gitdir:") :].strip().decode("utf-8", "surrogateescape")
    try:
        return os.open(root / target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None


def _parse_any(data: bytes) -> tuple[list[str], list[str], str | None] | None:
    """The index parsed with the object-id size that fits it (SHA-1 or SHA-256)."""
    for id_size in (20, 32):
        parsed = _parse(data, id_size)
        if parsed is not None:
            return parsed
    return None


def _parse(data: bytes, id_size: int) -> tuple[list[str], list[str], str | None] | None:
    """Paths, sparse folders and the shared index's id (split index), or None
    when ``data`` does not parse as an index with ``id_size``-byte ids."""
    if len(data) < 12 or data[:4] != b"DIRC":
        return None
    version, count = struct.unpack(">II", data[4:12])
    if version not in (2, 3, 4):
        return None
    paths: list[str] = []
    sparse: list[str] = []
    pos = 12
    previous = b""
    try:
        for _ in range(count):
            flags_at = pos + _STAT_BYTES + id_size
            (mode,) = struct.unpack(">I", data[pos + 24 : pos + 28])
            (flags,) = struct.unpack(">H", data[flags_at : flags_at + 2])
            cursor = flags_at + 2
            if flags & 0x4000:  # extended flags follow (version 3 and up)
                if version < 3:
                    return None
                cursor += 2
            if version == 4:
                strip, cursor = _varint(data, cursor)
                end = data.index(b"\0", cursor)
                if strip > len(previous):
                    return None
                name = previous[: len(previous) - strip] + data[cursor:end]
                pos = end + 1
            else:
                end = data.index(b"\0", cursor)
                name = data[cursor:end]
                # 1 to 8 NULs pad the entry to a multiple of 8 bytes
                pos += (end - pos + 8) & ~7
            length = flags & 0x0FFF
            if length != 0x0FFF and length != len(name):
                return None
            if pos > len(data) - id_size:  # the checksum ends the file
                return None
            previous = name
            if not name:  # a split index's replaced entry: named in the shared part
                continue
            text = name.decode("utf-8", "surrogateescape")
            if stat.S_ISDIR(mode) and text.endswith("/"):
                sparse.append(text)
            else:
                paths.append(text)
        shared = _shared_index(data, pos, id_size)
    except (ValueError, struct.error, IndexError):
        return None
    return paths, sparse, shared


def _shared_index(data: bytes, pos: int, id_size: int) -> str | None:
    """The id of the shared index a ``link`` extension names, if any."""
    end = len(data) - id_size
    while pos + 8 <= end:
        signature = data[pos : pos + 4]
        (size,) = struct.unpack(">I", data[pos + 4 : pos + 8])
        if signature == b"link":
            return data[pos + 8 : pos + 8 + id_size].hex()
        pos += 8 + size
    return None


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Git's offset varint (``decode_varint``): value and the position after it."""
    byte = data[pos]
    pos += 1
    value = byte & 0x7F
    while byte & 0x80:
        byte = data[pos]
        pos += 1
        value = ((value + 1) << 7) + (byte & 0x7F)
    return value, pos
