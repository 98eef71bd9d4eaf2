"""Writing into a workspace the action does not control.

The action runs as root in a checkout of someone else's repository. A
checkout can hold symbolic links anywhere (``reports -> /etc``,
``summary.md -> ../README.md``) and files with the names the reports use.
So every file and folder the action writes goes through :class:`Workspace`:

* folders are opened one component at a time from the workspace with
  ``O_NOFOLLOW``, so a symbolic link (or a file) on the way is refused,
  never followed, and folders it creates are given to the workspace's owner;
* a file is written to a fresh temporary file (``O_CREAT | O_EXCL |
  O_NOFOLLOW``) in that folder and renamed over its name: a symbolic link
  there is replaced, never written through, and no reader sees half a file;
* a file or folder that already exists is replaced only if an earlier run
  of the action wrote it: each folder it writes into lists what it wrote
  there in :data:`MARKER` (:meth:`Workspace.claims` checks this before the
  run starts).

:class:`NewFiles` hands what a run's own scripts created in the workspace to
the workspace's owner.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MARKER", "NewFiles", "UnsafePathError", "Workspace", "Written", "workspace_owner"]

#: The file, in each folder the action writes into, that lists what it wrote there.
MARKER = ".calimero-workflow.json"
#: A marker bigger than this is not ours.
_MARKER_LIMIT = 1024 * 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(OSError):
    """A path the action would write through is a symbolic link, or a file
    where a folder must be. The message names it and says what to do."""


@dataclass(frozen=True)
class Written:
    """What :meth:`Workspace.write` did."""

    path: Path
    #: A symbolic link stood at the path; it was replaced, not followed.
    replaced_link: bool = False


def workspace_owner(workspace: Path) -> tuple[int, int] | None:
    """Whom to give what we write: the workspace's owner, when we are root.

    The action runs as root, but later steps run as the runner's user, who
    could not otherwise change or delete these files (actions/runner#434).
    """
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    owner = workspace.stat()
    ids = (owner.st_uid, owner.st_gid)
    return None if ids == (0, 0) else ids


class Workspace:
    """Writes under ``root`` without following symbolic links.

    Args:
        root: The workspace; paths given to the methods must be inside it.
        owner: ``(uid, gid)`` given to every file and folder written, or
            None to leave ownership alone (not running as root).
    """

    def __init__(self, root: Path, owner: tuple[int, int] | None = None) -> None:
        self.root = root
        self.owner = owner

    # -- folders --------------------------------------------------------------------

    def _parts(self, folder: Path) -> tuple[str, ...]:
        try:
            rel = folder.relative_to(self.root)
        except ValueError:
            raise UnsafePathError(
                f"{folder} is outside the workspace {self.root}: the action writes only inside it"
            ) from None
        if ".." in rel.parts:
            raise UnsafePathError(f"{folder} leaves the workspace through '..'")
        return rel.parts

    def _refusal(self, parts: Sequence[str], dir_fd: int, exc: OSError) -> UnsafePathError:
        """Why the last of ``parts`` (in ``dir_fd``) cannot be entered."""
        try:
            mode = os.lstat(parts[-1], dir_fd=dir_fd).st_mode
        except OSError:
            mode = 0
        if stat.S_ISLNK(mode):
            why = "is a symbolic link; the action writes nothing through one"
        elif mode and not stat.S_ISDIR(mode):
            why = "is a file, not a folder"
        else:
            why = f"cannot be opened: {exc.strerror or exc}"
        rel = "/".join(parts)
        return UnsafePathError(
            f"{rel} {why} (remove it, or point the action's path inputs elsewhere)"
        )

    def open_folder(self, folder: Path, *, create: bool) -> int | None:
        """A descriptor of ``folder``, opened from the workspace one component
        at a time without following links; missing folders are made when
        ``create`` (else None is returned). The caller closes it.

        Raises:
            UnsafePathError: a component is a symbolic link or a file.
        """
        parts = self._parts(folder)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for depth, part in enumerate(parts):
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile: opened (and checked) below
                    else:
                        self._give(part, fd)
                    try:
                        child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        raise self._refusal(parts[: depth + 1], fd, exc) from None
                except OSError as exc:
                    raise self._refusal(parts[: depth + 1], fd, exc) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _give(self, name: str, dir_fd: int) -> None:
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=dir_fd, follow_symlinks=False)

    # -- files ----------------------------------------------------------------------

    def write(self, path: Path, data: bytes) -> Written:
        """Write ``data`` to ``path`` whole, through no symbolic link.

        Raises:
            UnsafePathError: a folder on the way is a link or a file, or
                ``path`` is a folder.
        """
        fd = self.open_folder(path.parent, create=True)
        assert fd is not None
        try:
            return self._write_in(fd, path, data)
        finally:
            os.close(fd)

    def _write_in(self, dir_fd: int, path: Path, data: bytes) -> Written:
        name = path.name
        try:
            before = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            before = None
        if before is not None and stat.S_ISDIR(before.st_mode):
            raise UnsafePathError(
                f"{self._rel(path)} is a folder; the action writes a file there"
            )
        tmp = f".{name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, _NEW_FILE_FLAGS, 0o644, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if self.owner is not None:
                    os.fchown(fh.fileno(), *self.owner)
            # rename replaces whatever entry is there, a link included
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        linked = before is not None and stat.S_ISLNK(before.st_mode)
        return Written(path, replaced_link=linked)

    def copy_tree(
        self,
        source: Path,
        dest: Path,
        transform: Callable[[Path, bytes], bytes] = lambda _, data: data,
    ) -> list[Written]:
        """Copy the regular files under ``source`` (a folder of ours, outside
        the workspace) to ``dest``, each passed through ``transform``."""
        written = []
        for folder, dirs, files in os.walk(source):
            dirs.sort()
            for name in sorted(files):
                file = Path(folder) / name
                if file.is_symlink() or not file.is_file():
                    continue
                target = dest / file.relative_to(source)
                written.append(self.write(target, transform(file, file.read_bytes())))
        return written

    def _rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix() or "."
        except ValueError:
            return str(path)

    # -- what the action wrote before ----------------------------------------------

    def _listed(self, dir_fd: int) -> set[str]:
        """The names the marker in the folder lists; none if it is not ours."""
        try:
            fd = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return set()
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return set()
            data = fh.read(_MARKER_LIMIT + 1)
        try:
            written = json.loads(data)["written"]
        except (ValueError, KeyError, TypeError):
            return set()
        return {n for n in written if isinstance(n, str)} if isinstance(written, list) else set()

    def claims(self, folder: Path, names: Iterable[str]) -> list[str]:
        """Why the action may not write ``names`` in ``folder``, if it may not.

        A name may be written when nothing is there yet, or when the
        folder's :data:`MARKER` lists it (an earlier run of the action wrote
        it). Each problem names the path.
        """
        try:
            fd = self.open_folder(folder, create=False)
        except UnsafePathError as exc:
            return [str(exc)]
        if fd is None:
            return []
        try:
            listed = self._listed(fd)
            problems = []
            for name in names:
                try:
                    found = os.lstat(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                if name in listed and not stat.S_ISLNK(found.st_mode):
                    continue
                what = "a symbolic link" if stat.S_ISLNK(found.st_mode) else "already there"
                problems.append(
                    f"{self._rel(folder / name)} is {what}, and this action did not write it "
                    f"(its {MARKER} does not list it)"
                )
            return problems
        finally:
            os.close(fd)

    def record(self, folder: Path, names: Iterable[str]) -> None:
        """Add ``names`` to what the folder's :data:`MARKER` lists as ours."""
        fd = self.open_folder(folder, create=True)
        assert fd is not None
        try:
            listed = self._listed(fd) | set(names)
            data = json.dumps(
                {
                    "about": "files calimero-workflow wrote here; it replaces only these",
                    "written": sorted(listed),
                },
                indent=2,
            )
            self._write_in(fd, folder / MARKER, data.encode() + b"\n")
        finally:
            os.close(fd)


class NewFiles:
    """Root-owned entries that appear under ``top`` during a run, for its owner.

    What the run's own scripts write (build output, a downloaded blob, node
    data in the command line's folder) would otherwise stay root's. Entries
    that were root's before the run are left alone; symlinks are changed,
    never what they point to.
    """

    def __init__(self, top: Path):
        self.top = top
        owner = top.stat()
        self.ids = (owner.st_uid, owner.st_gid)
        self.active = (
            hasattr(os, "geteuid") and os.geteuid() == 0 and self.ids != (0, 0)
        )
        self.before = self._root_owned() if self.active else set()

    def _root_owned(self) -> set[Path]:
        found = set()
        for folder, dirs, files in os.walk(self.top):
            for name in [*dirs, *files]:
                path = Path(folder) / name
                with contextlib.suppress(OSError):  # gone meanwhile
                    if path.lstat().st_uid == 0:
                        found.add(path)
        return found

    def hand_over(self) -> int:
        """Give the new root-owned entries to ``top``'s owner; how many."""
        if not self.active:
            return 0
        new = self._root_owned() - self.before
        for path in new:
            with contextlib.suppress(OSError):
                os.chown(path, *self.ids, follow_symlinks=False)
        return len(new)
