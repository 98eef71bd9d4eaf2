"""The seam between the workflow engine and whatever runs the nodes.

A backend owns node processes (in-process embedded nodes, Docker containers) and
exposes each started node as a :class:`NodeHandle` whose ``url`` the engine's
HTTP client talks to. The engine never reaches into a backend's internals: every
lifecycle phase and every fault step goes through the methods below.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import json
import re
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

#: Written into each run's folder: which workflow the run belongs to, so
#: ``nuke`` removes exactly that workflow's leftovers (never a workflow whose
#: name merely starts the same).
RUN_MARKER = ".cw-run.json"
#: The marker earlier Docker runs wrote; still read by ``nuke``.
_OLD_RUN_MARKERS = (".cw-docker-run.json",)

#: A log line's level, in merod's (``WARN``) and Python's (``WARNING``) spelling.
_LEVEL_RE = re.compile(r"\b(WARN|WARNING|ERROR|CRITICAL|FATAL)\b")


class BackendError(Exception):
    """A backend could not do what the engine asked (start, stop, pull...)."""

    def __init__(self, message: str, *, node: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.node = node
        self.hint = hint


class NodeNotRunningError(BackendError):
    """An operation on a node's process (pause, unpause) found it not running."""


class NodeUnavailableError(BackendError):
    """A node is gone: it exited, was stopped, or never became ready."""

    def __init__(
        self,
        message: str,
        *,
        node: str,
        exit_code: int | None = None,
        oom_killed: bool = False,
        last_logs: str = "",
        hint: str | None = None,
    ):
        super().__init__(message, node=node, hint=hint)
        self.exit_code = exit_code
        self.oom_killed = oom_killed
        self.last_logs = last_logs


@dataclass
class NodeSpec:
    """What the workflow asks for one local node."""

    name: str
    image: str | None = None
    #: Host port for the server (admin API + JSON-RPC); None picks a free one.
    server_port: int | None = None
    #: Host port for the swarm (peer to peer); None picks a free one.
    swarm_port: int | None = None
    data_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    log_level: str | None = None


@dataclass
class NodeHandle:
    """A started node as the engine sees it."""

    name: str
    #: Base URL the engine uses, e.g. ``http://127.0.0.1:34567``.
    url: str
    backend: str
    #: Backend-specific facts shown in results (container id, image, ports...).
    info: dict[str, Any] = field(default_factory=dict)
    #: ``start_node`` found the node running already and started nothing.
    already_running: bool = False


@dataclass
class NodeState:
    """Process state of a node, for failure messages and reports."""

    running: bool
    exit_code: int | None = None
    #: Frozen by ``pause_node`` (it runs, but answers nothing).
    paused: bool = False
    oom_killed: bool = False
    error: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


@dataclass
class PhaseReport:
    """What a lifecycle phase did; ``skipped`` phases say why in ``detail``."""

    skipped: bool = False
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class NodeBackend(abc.ABC):
    """Runs local nodes for one workflow run."""

    #: Short name shown in reports: ``embedded`` or ``docker``.
    name: str = "abstract"

    def __init__(self, *, run_id: str, workflow_name: str, workdir: Path):
        self.run_id = run_id
        self.workflow_name = workflow_name
        #: Per-run scratch directory (node homes, copied apps, logs).
        self.workdir = workdir
        self._lifecycle_locks: dict[str, asyncio.Lock] = {}

    def node_setup(self, *, env: dict[str, str], init_args: list[str], networks: list[str]) -> None:
        """Extra environment, ``merod init`` arguments and networks for every node
        (from the contract deployment). Backends without containers keep only the env."""
        self.extra_env = dict(env)

    def plan(self, specs: list[NodeSpec]) -> None:
        """Learn the nodes the run will start (before ``pull_image``)."""
        self.planned = list(specs)

    async def nuke(self) -> PhaseReport:
        """Remove leftovers of an earlier run of the same workflow."""
        return PhaseReport(skipped=True, detail=f"{self.name} nodes leave nothing behind")

    async def pull_image(
        self, *, force: bool = False, as_given: Collection[str] = ()
    ) -> PhaseReport:
        """Make sure the node images are present; ``force`` pulls them anew,
        except those in ``as_given`` (chosen on the command line)."""
        return PhaseReport(skipped=True, detail=f"{self.name} nodes need no image")

    @abc.abstractmethod
    async def start_nodes(
        self, specs: list[NodeSpec], *, ready_timeout: float
    ) -> dict[str, NodeHandle]:
        """Start every node in parallel and return once all are ready.

        Ready means the admin health route answers 200 and, with more than one
        node, each node sees the expected number of peers. Raises
        :class:`NodeUnavailableError` naming the first node that failed.
        """

    # -- lifecycle: one operation per node at a time ------------------------------

    def _lifecycle_lock(self, name: str) -> asyncio.Lock:
        if name not in self._lifecycle_locks:
            self._lifecycle_locks[name] = asyncio.Lock()
        return self._lifecycle_locks[name]

    async def stop_node(self, name: str) -> bool:
        """Stop a node, keeping its data. False when it was stopped already.

        Lifecycle operations on one node (stop, start, restart, pause,
        taking it off its peers and back) run one at a time, in the order
        they were asked for, so steps in parallel groups see each other's
        outcome and never a half stopped node.
        """
        async with self._lifecycle_lock(name):
            return await self._stop_node(name)

    async def start_node(
        self, name: str, *, ready_timeout: float, wait: bool = True
    ) -> NodeHandle:
        """Start a stopped node again on its existing data (``wait``: until ready).

        A node that runs already is left alone; its handle says
        ``already_running``.
        """
        async with self._lifecycle_lock(name):
            return await self._start_node(name, ready_timeout=ready_timeout, wait=wait)

    async def restart_node(
        self, name: str, *, ready_timeout: float, wait: bool = True
    ) -> NodeHandle:
        """Stop (when it runs) and start a node, as one operation."""
        async with self._lifecycle_lock(name):
            await self._stop_node(name)
            handle = await self._start_node(name, ready_timeout=ready_timeout, wait=wait)
            handle.already_running = False
            return handle

    async def pause_node(self, name: str) -> bool:
        """Freeze a running node: it keeps its state but answers nothing and
        exchanges nothing with its peers. False when it was paused already."""
        async with self._lifecycle_lock(name):
            return await self._pause_node(name)

    async def unpause_node(self, name: str) -> bool:
        """Undo :meth:`pause_node`. False when the node was not paused."""
        async with self._lifecycle_lock(name):
            return await self._unpause_node(name)

    async def disconnect_node(self, name: str) -> None:
        """Cut a node off from its peers (the engine can still reach it)."""
        async with self._lifecycle_lock(name):
            await self._disconnect_node(name)

    async def connect_node(self, name: str) -> None:
        """Undo :meth:`disconnect_node`."""
        async with self._lifecycle_lock(name):
            await self._connect_node(name)

    async def partition_peers(self, name: str, peers: list[str]) -> None:
        """Cut traffic between ``name`` and each of ``peers``, both ways; every
        node still answers the engine, and talks to the nodes not named."""
        async with self._lifecycle_locks_of([name, *peers]):
            await self._set_partition(name, peers, blocked=True)

    async def heal_peers(self, name: str, peers: list[str]) -> None:
        """Undo :meth:`partition_peers` for these pairs."""
        async with self._lifecycle_locks_of([name, *peers]):
            await self._set_partition(name, peers, blocked=False)

    @contextlib.asynccontextmanager
    async def _lifecycle_locks_of(self, names: list[str]) -> AsyncIterator[None]:
        # Always taken in one order, so two partitions never wait on each other.
        async with contextlib.AsyncExitStack() as stack:
            for name in sorted(set(names)):
                await stack.enter_async_context(self._lifecycle_lock(name))
            yield

    @abc.abstractmethod
    async def _stop_node(self, name: str) -> bool:
        """Stop a node (under its lifecycle lock); False when it was not running."""

    @abc.abstractmethod
    async def _start_node(self, name: str, *, ready_timeout: float, wait: bool) -> NodeHandle:
        """Start a stopped node (under its lifecycle lock)."""

    async def _pause_node(self, name: str) -> bool:
        raise BackendError(f"the {self.name} backend cannot pause nodes", node=name)

    async def _unpause_node(self, name: str) -> bool:
        raise BackendError(f"the {self.name} backend cannot pause nodes", node=name)

    async def _disconnect_node(self, name: str) -> None:
        raise BackendError(f"the {self.name} backend cannot partition nodes", node=name)

    async def _connect_node(self, name: str) -> None:
        raise BackendError(f"the {self.name} backend cannot partition nodes", node=name)

    async def _set_partition(self, name: str, peers: list[str], *, blocked: bool) -> None:
        raise BackendError(f"the {self.name} backend cannot partition nodes", node=name)

    @abc.abstractmethod
    async def node_state(self, name: str) -> NodeState:
        """Whether the node runs, and how it ended if it does not."""

    @abc.abstractmethod
    async def collect_logs(
        self, dest: Path, *, redact: Callable[[str], str] | None = None
    ) -> dict[str, Path]:
        """Write each node's full log to ``dest/<node>.log`` and return the paths.

        ``redact`` masks the run's credentials in the text before it is
        written (a node may log a URL with a password in it).
        """

    async def stage_file(self, name: str, path: Path) -> str:
        """Make a host file readable by the node and return the node's path for it.

        ``install_application`` with a local path sends this path to the node's
        ``install-dev-application`` route. In-process nodes read the host path.
        """
        return str(path.resolve())

    async def exec_in_node(
        self, name: str, argv: list[str], env: dict[str, str], *, limit: int | None = None
    ) -> tuple[int, bytes, bytes]:
        """Run a command inside a node's container: ``(exit code, stdout, stderr)``,
        each output cut to ``limit`` bytes (the rest is read and dropped)."""
        raise BackendError(
            f"the {self.name} backend has no node containers to run commands in",
            node=name,
            hint="use `target: local`, or run with --backend docker",
        )

    def image_info(self) -> dict[str, Any]:
        """The node image reference and digest, for the run's results."""
        return {}

    async def tail_logs(self, name: str, lines: int = 50) -> str:
        """The last lines of one node's log, for failure messages."""
        return ""

    async def read_logs(self, name: str, *, tail: int | None = None) -> str | None:
        """One node's log as text (the last ``tail`` lines, or all it keeps);
        None when this backend keeps no log of the node."""
        return None

    async def logs_since(self, name: str, since: float) -> list[str]:
        """The node's log lines written since ``since`` (seconds since the epoch)."""
        return []

    @abc.abstractmethod
    async def cleanup(self) -> PhaseReport:
        """Stop and remove everything this run created. Safe to call twice."""


def is_warning_or_error(line: str) -> bool:
    """Whether a node log line was logged as a warning or an error."""
    return _LEVEL_RE.search(line) is not None


#: Held (``flock``) by a run from its marker to its cleanup, and by the
#: kernel no longer once the process is gone: ``nuke`` leaves such runs alone.
RUN_LOCK = ".run.lock"

#: The lock files this process holds, by run folder.
_held_locks: dict[Path, IO[bytes]] = {}


def write_run_marker(workdir: Path, *, workflow_name: str, run_id: str, backend: str) -> None:
    """Record in the run's folder which workflow it belongs to (read by ``nuke``),
    and mark the run as in progress until :func:`release_run` (or the process ends)."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir.resolve()
    if key not in _held_locks:
        lock = open(workdir / RUN_LOCK, "ab")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()  # held elsewhere: a folder given to two runs
        else:
            _held_locks[key] = lock
    marker = {"workflow": workflow_name, "run_id": run_id, "backend": backend}
    (workdir / RUN_MARKER).write_text(json.dumps(marker) + "\n")


def release_run(workdir: Path) -> None:
    """The run in ``workdir`` is over: a later ``nuke`` may remove what it left."""
    lock = _held_locks.pop(workdir.resolve(), None)
    if lock is not None:
        lock.close()


def run_in_progress(run_dir: Path) -> bool:
    """Whether a live run (of any process, this one too) holds ``run_dir``."""
    try:
        lock = open(run_dir / RUN_LOCK, "rb")  # noqa: SIM115
    except OSError:
        return False
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def other_runs(
    parent: Path, workflow_name: str, *, skip: Path | None = None
) -> tuple[list[Path], list[Path]]:
    """The run folders of ``workflow_name`` under ``parent`` (but ``skip``),
    as ``(over, in_progress)``: what ``nuke`` may clear, and what it leaves alone."""
    over: list[Path] = []
    live: list[Path] = []
    for run_dir in runs_of_workflow(parent, workflow_name):
        if skip is not None and run_dir.resolve() == skip.resolve():
            continue
        (live if run_in_progress(run_dir) else over).append(run_dir)
    return over, live


def in_progress_note(live: Collection[Path]) -> str:
    """What a nuke's report adds about the runs it left alone (nothing if none)."""
    if not live:
        return ""
    return f"; left {len(live)} run(s) still in progress alone: {', '.join(p.name for p in live)}"


def run_id_of(run_dir: Path) -> str | None:
    """The run id a run folder's marker records."""
    with contextlib.suppress(OSError, ValueError):
        marker = json.loads((run_dir / RUN_MARKER).read_text())
        if isinstance(marker, dict) and isinstance(marker.get("run_id"), str):
            return marker["run_id"]
    return None


def runs_of_workflow(parent: Path, workflow_name: str) -> Iterator[Path]:
    """The run folders under ``parent`` whose marker names exactly ``workflow_name``.

    A folder without a marker (or with one naming another workflow) is never
    listed, whatever its name: names are cut and lower-cased, so ``kv`` and
    ``kv store`` would otherwise look alike.
    """
    if not parent.is_dir():
        return
    for run_dir in sorted(parent.iterdir()):
        for marker_name in (RUN_MARKER, *_OLD_RUN_MARKERS):
            with contextlib.suppress(OSError, ValueError):
                marker = json.loads((run_dir / marker_name).read_text())
                if isinstance(marker, dict) and marker.get("workflow") == workflow_name:
                    yield run_dir
                    break
