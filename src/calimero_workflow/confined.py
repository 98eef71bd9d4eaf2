"""Files in folders the action does not control: written through no link, read without hanging.

Resolving a path and then writing to it leaves a window in which a directory
on the way can be swapped for a symbolic link, and the write lands wherever
the link points. :func:`write_confined` never resolves anything below the
folder: it opens each directory on the way relative to the one before it,
refusing symbolic links (``O_NOFOLLOW``), creates the file under a fresh
temporary name in the last one (``O_CREAT | O_EXCL``) and renames it into
place within that directory. A link swapped in at any moment makes the write
fail; it never redirects it.

Reading is the other hazard: opening a FIFO for reading waits for a writer,
forever, and a read in the event loop would stop the run, its timeout and
its cancellation with it. :func:`read_regular` and :func:`read_file` open
with ``O_NONBLOCK`` and read only a regular file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "ConfinedPathError",
    "NotARegularFileError",
    "open_regular",
    "read_file",
    "read_regular",
    "replace_file",
    "same_file",
    "write_confined",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


class ConfinedPathError(ValueError):
    """The path leaves the allowed folders, or passes through a symbolic link."""


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: one path once resolved, or one
    existing file under two names (a symbolic or a hard link)."""
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except (OSError, ValueError):  # one does not exist (yet), or cannot be a path
        return False


class NotARegularFileError(OSError):
    """A file to read is a FIFO, a socket, a device or a folder."""


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """The regular file at ``path`` opened for reading (a link to one is followed).

    Raises:
        NotARegularFileError: it is a FIFO, a socket, a device or a folder,
            which is never opened for a blocking read.
        OSError: it cannot be opened.
    """
    fd = os.open(path, _READ_FLAGS)
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        raise NotARegularFileError(
            f"{os.fspath(path)} is not a regular file (a FIFO, socket, device or folder)"
        )
    return fh


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The contents of the regular file at ``path``; see :func:`open_regular`."""
    with open_regular(path) as fh:
        return fh.read()


def read_regular(name: str, dir_fd: int, limit: int | None = None) -> bytes | None:
    """The contents of regular file ``name`` in ``dir_fd``, at most ``limit``
    bytes when given (one more tells the caller it was bigger); None when it
    is missing, a symbolic link, or not a regular file."""
    try:
        fd = os.open(name, _READ_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return fh.read() if limit is None else fh.read(limit + 1)


def write_confined(path_text: str, data: bytes, *, base: Path, roots: Sequence[Path]) -> Path:
    """Write ``data`` to ``path_text`` (relative to ``base``) inside one of ``roots``.

    ``..`` is read as text, before anything is opened, and the result must lie
    inside one of ``roots`` (each taken as it resolves now). Missing
    directories are created. An existing file is replaced whole; a symbolic
    link in its place is replaced, never followed.

    Returns:
        The path written.

    Raises:
        ConfinedPathError: the path is outside every root, names a folder, or
            passes through a symbolic link or a file.
        OSError: the file system refused the write.
    """
    target = Path(os.path.normpath(base.resolve() / path_text))
    inside = [r for r in (root.resolve() for root in roots) if r == target or r in target.parents]
    if not inside:
        raise ConfinedPathError(f"{path_text!r} is outside the workflow's folder and the working directory")
    root = max(inside, key=lambda r: len(r.parts))
    parts = target.relative_to(root).parts
    if not parts:
        raise ConfinedPathError(f"{path_text!r} names a folder, not a file")
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            below = _open_dir(folder, part, path_text)
            os.close(folder)
            folder = below
        _replace(folder, parts[-1], data)
    finally:
        os.close(folder)
    return target


def _open_dir(folder: int, name: str, path_text: str) -> int:
    """Open (making it when missing) directory ``name`` in ``folder``, never through a link."""
    for attempt in range(2):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=folder)
        except FileNotFoundError:
            if attempt:
                raise
            # Whatever is there after a race is opened, without following, below.
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=folder)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise ConfinedPathError(
                    f"{path_text!r} passes through {name!r}, which is a symbolic link or a file, "
                    "not a folder"
                ) from None
            raise
    raise AssertionError("unreachable")


def replace_file(path: Path, data: bytes) -> None:
    """Write ``path`` whole, never through a link: a new file takes its name
    (a symlink or a file planted there is replaced, not written into). The
    folder is made when missing; it is the caller's to choose."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _replace(folder, path.name, data)
    finally:
        os.close(folder)


def _replace(folder: int, name: str, data: bytes) -> None:
    temporary = f".{name}.{secrets.token_hex(6)}.tmp"
    handle = os.open(temporary, _FILE_FLAGS, 0o644, dir_fd=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.rename(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder)
        raise
