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
  of the action wrote it and nobody changed it since: each folder it writes
  into lists, in :data:`MARKER`, what it wrote there with each file's size
  and SHA-256; a file git tracks in the checkout is never replaced, whatever
  a marker says (a marker can be committed, hashes and all), and neither is
  a marker git tracks believed (:meth:`Workspace.claims` checks all this
  before the run starts);
* files are read without following a link and without blocking (a FIFO
  in place of a marker would otherwise hold the action forever).

:class:`NewFiles` hands what a run's own scripts created in the workspace to
the workspace's owner, walking and changing it through folder descriptors
opened without following links, so a folder swapped for a link meanwhile
leads nowhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .confined import read_regular
from .gitindex import Tracked

__all__ = ["MARKER", "NewFiles", "UnsafePathError", "Workspace", "Written", "workspace_owner"]

#: The file, in each folder the action writes into, that lists what it wrote there.
MARKER = ".calimero-workflow.json"
#: A marker bigger than this is not ours.
_MARKER_LIMIT = 1024 * 1024
#: The marker's format: ``written`` maps each name to its size and SHA-256
#: (a file) or to ``{"folder": true}``. Markers of older versions list bare
#: names, which anyone could have written, and are not believed.
_MARKER_VERSION = 2

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: :class:`NewFiles` leaves what lies deeper than this alone (one descriptor
#: is open per level).
_MAX_DEPTH = 256
#: Folders the action wrote nest this deep at most (node logs per attempt);
#: a deeper tree is not its own.
_MAX_FOLDER_DEPTH = 8


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


def _file_entry(data: bytes) -> dict[str, object]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


class Workspace:
    """Writes under ``root`` without following symbolic links.

    Args:
        root: The workspace; paths given to the methods must be inside it.
        owner: ``(uid, gid)`` given to every file and folder written, or
            None to leave ownership alone (not running as root).
    """

    def __init__(
        self,
        root: Path,
        owner: tuple[int, int] | None = None,
        *,
        tracked: Tracked | None = None,
    ) -> None:
        self.root = root
        self.owner = owner
        #: What git tracks in the checkout (None: not a checkout, or its
        #: index could not be read); never replaced.
        self.tracked = tracked

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
        the workspace) to ``dest``, each passed through ``transform``; each
        folder written into lists what it got in its :data:`MARKER`."""
        written = []
        for folder, dirs, files in os.walk(source):
            dirs.sort()
            here = Path(folder)
            target_folder = dest / here.relative_to(source)
            entries: dict[str, bytes | None] = dict.fromkeys(dirs)
            try:
                fd = os.open(folder, _DIR_FLAGS)
            except OSError:  # gone meanwhile
                continue
            try:
                for name in sorted(files):
                    # never a FIFO nor a link, even one put there meanwhile
                    data = read_regular(name, fd)
                    if data is None:
                        continue
                    data = transform(here / name, data)
                    written.append(self.write(target_folder / name, data))
                    entries[name] = data
            finally:
                os.close(fd)
            if entries:
                self.record(target_folder, entries)
        return written

    def _rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix() or "."
        except ValueError:
            return str(path)

    # -- what the action wrote before ----------------------------------------------

    def _is_tracked(self, path: Path) -> bool:
        if self.tracked is None:
            return False
        return self.tracked.covers(path.relative_to(self.root).as_posix())

    def _listed(self, dir_fd: int, folder: Path) -> dict[str, dict[str, object]]:
        """What the marker in the folder says the action wrote there; nothing
        when the marker is not one of ours (missing, a link, a FIFO, malformed,
        of an older format, or tracked by git: the action commits nothing)."""
        if self._is_tracked(folder / MARKER):
            return {}
        data = read_regular(MARKER, dir_fd, _MARKER_LIMIT)
        if data is None or len(data) > _MARKER_LIMIT:
            return {}
        try:
            marker = json.loads(data)
            written = marker["written"]
            if marker.get("version") != _MARKER_VERSION or not isinstance(written, dict):
                return {}
        except (ValueError, KeyError, TypeError, AttributeError):
            return {}
        return {
            name: entry
            for name, entry in written.items()
            if isinstance(name, str) and isinstance(entry, dict)
        }

    def _not_ours(
        self,
        dir_fd: int,
        folder: Path,
        name: str,
        listed: Mapping[str, dict[str, object]],
        depth: int = 0,
    ) -> str | None:
        """Why ``name`` in the folder is not something the action wrote and may
        replace, or None when it is (or is missing)."""
        rel = self._rel(folder / name)
        try:
            found = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        unlisted = f"{rel} is already there, and this action did not write it (its {MARKER} does not list it)"
        if stat.S_ISLNK(found.st_mode):
            if name == MARKER:
                return f"{rel} is a symbolic link; the action's marker never is one"
            return f"{rel} is a symbolic link, and this action did not write it (its {MARKER} does not list it)"
        if self._is_tracked(folder / name):
            return f"{rel} is tracked by git in the workspace: the action never replaces a file of the repository"
        if not (stat.S_ISREG(found.st_mode) or stat.S_ISDIR(found.st_mode)):
            return f"{rel} is neither a file nor a folder (a FIFO, a socket or a device)"
        entry = listed.get(name)
        if name == MARKER and stat.S_ISREG(found.st_mode):
            return None  # replaced whole; believed only when it is ours
        if entry is None:
            return unlisted
        if stat.S_ISREG(found.st_mode):
            data = read_regular(name, dir_fd, found.st_size)
            if data is None or _file_entry(data) != {k: entry.get(k) for k in ("size", "sha256")}:
                return (
                    f"{rel} is already there and changed since this action wrote it "
                    f"(its {MARKER} lists other contents)"
                )
            return None
        if stat.S_ISDIR(found.st_mode) and entry.get("folder") is True:
            if depth >= _MAX_FOLDER_DEPTH:  # the action nests a folder or two
                return unlisted
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                return unlisted
            try:
                return self._folder_not_ours(fd, folder / name, depth + 1)
            finally:
                os.close(fd)
        return unlisted

    def _folder_not_ours(self, dir_fd: int, folder: Path, depth: int) -> str | None:
        """Why something in ``folder`` (at any depth) is not the action's, if so."""
        listed = self._listed(dir_fd, folder)
        for name in sorted(os.listdir(dir_fd)):
            why = self._not_ours(dir_fd, folder, name, listed, depth)
            if why is not None:
                return why
        return None

    def claims(self, folder: Path, names: Sequence[str]) -> list[str]:
        """Why the action may not write ``names`` in ``folder``, if it may not.

        A name may be written when nothing is there yet, or when the
        folder's :data:`MARKER` lists it with the size and SHA-256 it still
        has (an earlier run of the action wrote it, and nobody changed it);
        a listed folder must hold only such files. A path git tracks is
        never replaced. Each problem names the path.
        """
        try:
            fd = self.open_folder(folder, create=False)
        except UnsafePathError as exc:
            return [str(exc)]
        if fd is None:
            return []
        try:
            listed = self._listed(fd, folder)
            problems = []
            for name in dict.fromkeys([*names, MARKER]):
                why = self._not_ours(fd, folder, name, listed)
                if why is not None:
                    problems.append(why)
            return problems
        finally:
            os.close(fd)

    def record(self, folder: Path, written: Mapping[str, bytes | None]) -> None:
        """Add to the folder's :data:`MARKER` what the action wrote there: per
        file its contents (for their size and SHA-256), per folder None."""
        fd = self.open_folder(folder, create=True)
        assert fd is not None
        try:
            listed = self._listed(fd, folder)
            for name, data in written.items():
                listed[name] = {"folder": True} if data is None else _file_entry(data)
            marker = {
                "about": "files calimero-workflow wrote here; it replaces only these, "
                "and only while they are as it wrote them",
                "version": _MARKER_VERSION,
                "written": dict(sorted(listed.items())),
            }
            data = json.dumps(marker, indent=2).encode() + b"\n"
            self._write_in(fd, folder / MARKER, data)
        finally:
            os.close(fd)


class NewFiles:
    """Root-owned entries that appear under ``top`` during a run, for its owner.

    What the run's own scripts write (build output, a downloaded blob, node
    data in the command line's folder) would otherwise stay root's. Entries
    that were root's before the run (by device and inode) are left alone.
    The tree is walked through folder descriptors opened without following
    links, and each entry changed relative to its folder's descriptor without
    following a link (``fchownat`` with ``AT_SYMLINK_NOFOLLOW``): a folder
    swapped for a link during the walk is not entered, and a link is changed
    itself, never what it points to.
    """

    def __init__(self, top: Path):
        self.top = top
        owner = top.stat()
        self.ids = (owner.st_uid, owner.st_gid)
        self.active = (
            hasattr(os, "geteuid") and os.geteuid() == 0 and self.ids != (0, 0)
        )
        self.before = (
            {(st.st_dev, st.st_ino) for _, _, st in self._walk() if st.st_uid == 0}
            if self.active
            else set()
        )

    def _walk(self) -> Iterator[tuple[int, str, os.stat_result]]:
        """``(folder fd, name, lstat)`` of every entry below ``top``, depth
        first; the descriptor is valid until the next item is asked for."""
        try:
            top = os.open(self.top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        stack = [(top, _names(top))]
        try:
            while stack:
                fd, names = stack[-1]
                if not names:
                    os.close(fd)
                    stack.pop()
                    continue
                name = names.pop()
                try:
                    found = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:  # gone meanwhile
                    continue
                yield fd, name, found
                if not stat.S_ISDIR(found.st_mode) or len(stack) >= _MAX_DEPTH:
                    continue
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:  # gone, or swapped for a link or a file
                    continue
                opened = os.fstat(child)
                if (opened.st_dev, opened.st_ino) != (found.st_dev, found.st_ino):
                    os.close(child)  # swapped for another folder meanwhile
                    continue
                stack.append((child, _names(child)))
        finally:
            for fd, _ in stack:
                os.close(fd)

    def hand_over(self) -> int:
        """Give the new root-owned entries to ``top``'s owner; how many."""
        if not self.active:
            return 0
        given = 0
        for fd, name, found in self._walk():
            if found.st_uid != 0 or (found.st_dev, found.st_ino) in self.before:
                continue
            with contextlib.suppress(OSError):  # gone meanwhile
                os.chown(name, *self.ids, dir_fd=fd, follow_symlinks=False)
                given += 1
        return given


def _names(dir_fd: int) -> list[str]:
    """The names in a folder, last first (the walk pops them in order)."""
    try:
        return sorted(os.listdir(dir_fd), reverse=True)
    except OSError:
        return []
