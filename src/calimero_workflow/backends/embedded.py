"""Embedded nodes: Calimero nodes served in this process, no Docker needed.

Each node is an :class:`~calimero_workflow.node.server.EmbeddedNode` with its
own home directory, admin/JSON-RPC server and swarm port on loopback. They
share one wasm runtime, so an app is compiled once for the whole run. Node
log lines are kept per node in memory, with the time each was written, and
written out like container logs.

The faults act on the node objects from outside: a paused node keeps its
listening socket (connections queue in the kernel, as with ``docker pause``)
but reads nothing, and a partition between two nodes makes each refuse the
other's swarm connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..client import NodeClient, NodeError
from ..confined import replace_file
from ..node.logfilter import LogFilter
from .base import (
    BackendError,
    NodeBackend,
    NodeHandle,
    NodeNotRunningError,
    NodeSpec,
    NodeState,
    NodeUnavailableError,
    PhaseReport,
    in_progress_note,
    other_runs,
    release_run,
    write_run_marker,
)

_MAX_LOG_LINES = 20_000

#: A node without a ``log_level`` logs its own lines and the app's at INFO.
_DEFAULT_FILTER = LogFilter()

#: One log line and when it was written (seconds since the epoch).
LogLine = tuple[float, str]


class _NodeLogHandler(logging.Handler):
    """Routes log records of embedded nodes to per-node buffers."""

    def __init__(self, buffers: dict[str, deque[LogLine]]):
        super().__init__(level=logging.DEBUG)
        self.buffers = buffers
        #: Each node's ``log_level`` (its RUST_LOG filter).
        self.node_filters: dict[str, LogFilter] = {}
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        node = getattr(record, "node", None)
        if node is None:
            # Loggers may also be named "...node.<name>" or carry the name last.
            tail = record.name.rsplit(".", 1)[-1]
            node = tail if tail in self.buffers else None
        if node in self.buffers and self.node_filters.get(node, _DEFAULT_FILTER).allows(record):
            try:
                self.buffers[node].append((record.created, self.format(record)))
            except Exception:  # logging must never break a node
                self.handleError(record)


@dataclass
class _Frozen:
    """What :meth:`EmbeddedBackend.pause_node` stopped reading, to resume it."""

    #: Duplicates of the server's listening sockets: they keep the port
    #: listening (connections wait in the backlog) while nothing accepts.
    listeners: list[socket.socket] = field(default_factory=list)
    transports: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for sock in self.listeners:
            sock.close()
        self.listeners.clear()


def _guard_swarm(swarm: Any, blocked: set[str]) -> None:
    """Make ``swarm`` refuse connections with the peer ids in ``blocked``.

    The set is the backend's own and changes in place; the swarm checks it on
    every connection it would register and every peer it would dial.
    """
    register = swarm._register
    dial_targets = swarm._dial_targets

    def guarded_register(conn: Any) -> None:
        if conn.peer_id in blocked:
            conn.close()  # never registered, so nothing else to undo
            return
        register(conn)

    def guarded_targets() -> list[Any]:
        return [a for a in dial_targets() if a.peer_id not in blocked]

    swarm._register = guarded_register
    swarm._dial_targets = guarded_targets


def _drop_connections(swarm: Any, peer_ids: set[str]) -> None:
    for peer_id in peer_ids:
        for conn in list(swarm._conns.get(peer_id, ())):
            conn.close()


class EmbeddedBackend(NodeBackend):
    """Runs every local node of the workflow inside this process."""

    name = "embedded"

    def __init__(self, *, run_id: str, workflow_name: str, workdir: Path):
        super().__init__(run_id=run_id, workflow_name=workflow_name, workdir=workdir)
        from ..node.runtime import WasmRuntime

        self.runtime = WasmRuntime()
        self._nodes: dict = {}
        self._specs: dict[str, NodeSpec] = {}
        self._logs: dict[str, deque[LogLine]] = {}
        self._states: dict[str, NodeState] = {}
        #: Last server URL of each node: a restarted node comes back on it.
        self._urls: dict[str, str] = {}
        #: Peer id of each node (kept in its home, so it survives restarts).
        self._peer_ids: dict[str, str] = {}
        #: Faults that outlive a restart of the node they are set on.
        self._disconnected: set[str] = set()
        self._blocked: dict[str, set[str]] = {}
        self._frozen: dict[str, _Frozen] = {}
        #: The swarm each node's partition guard is installed on.
        self._guarded: dict[str, Any] = {}
        self._handler = _NodeLogHandler(self._logs)
        self._logger = logging.getLogger("calimero_workflow.node")
        self._logger.addHandler(self._handler)
        if self._logger.level == logging.NOTSET or self._logger.level > logging.INFO:
            self._logger.setLevel(logging.INFO)

    async def nuke(self) -> PhaseReport:
        """Remove node data left by earlier runs of the same workflow (by the
        run marker's exact workflow name, never by a folder name prefix)."""
        import shutil

        over, live = other_runs(self.workdir.parent, self.workflow_name, skip=self.workdir)
        # another run of this workflow still going uses its nodes' data
        live = [old for old in live if (old / "nodes").is_dir()]
        removed = []
        for old in over:
            if (old / "nodes").is_dir():
                shutil.rmtree(old / "nodes", ignore_errors=True)
                removed.append(old.name)
        detail = (
            f"removed node data of {len(removed)} earlier run(s)" if removed else "nothing left by earlier runs"
        )
        return PhaseReport(
            detail=detail + in_progress_note(live),
            data={"removed": removed, "in_progress": [old.name for old in live]},
        )

    def _home(self, spec: NodeSpec) -> Path:
        if spec.data_dir is not None:
            return spec.data_dir.resolve()
        return self.workdir / "nodes" / spec.name

    async def start_nodes(self, specs: list[NodeSpec], *, ready_timeout: float) -> dict[str, NodeHandle]:
        from ..node.server import EmbeddedNode, NodeConfig

        ignored = sorted({s.image for s in specs if s.image})
        if ignored:
            logging.getLogger("calimero_workflow").info(
                "embedded nodes ignore the node image (%s)", ", ".join(ignored)
            )
        write_run_marker(
            self.workdir, workflow_name=self.workflow_name, run_id=self.run_id, backend=self.name
        )
        handles: dict[str, NodeHandle] = {}
        addrs: list[str] = []
        # Nodes come up one after another in a few milliseconds each; every
        # node lists the ones before it, and peers learn of each other from
        # the incoming connections, so the mesh is complete.
        for spec in specs:
            self._specs[spec.name] = spec
            self._logs.setdefault(spec.name, deque(maxlen=_MAX_LOG_LINES))
            log_filter = LogFilter.parse(spec.log_level)
            self._handler.node_filters[spec.name] = log_filter
            if log_filter.lowest < self._logger.getEffectiveLevel():
                # debug lines are made only when some node writes them
                self._logger.setLevel(log_filter.lowest)
            home = self._home(spec)
            home.mkdir(parents=True, exist_ok=True)
            config = NodeConfig(
                name=spec.name,
                home=home,
                server_host="127.0.0.1",
                server_port=spec.server_port or 0,
                swarm_host="127.0.0.1",
                swarm_port=spec.swarm_port or 0,
                bootstrap=list(addrs),
            )
            node = EmbeddedNode(config, runtime=self.runtime)
            try:
                await node.start()
            except OSError as exc:
                raise NodeUnavailableError(
                    f"embedded node {spec.name} could not start: {exc}",
                    node=spec.name,
                    hint="a fixed port (base_rpc_port, rpc_port, port) may be in use; "
                    "leave ports unset to pick free ones",
                ) from exc
            self._nodes[spec.name] = node
            self._urls[spec.name] = node.url
            self._peer_ids[spec.name] = node.peer_id
            self._states[spec.name] = NodeState(running=True, started_at=_now())
            addrs.append(node.swarm_multiaddr)
            handles[spec.name] = self._handle(spec.name)
        await self._wait_ready(list(handles), len(specs), ready_timeout)
        return handles

    def _handle(self, name: str) -> NodeHandle:
        node = self._nodes[name]
        return NodeHandle(
            name=name,
            url=node.url,
            backend=self.name,
            info={"swarm": node.swarm_multiaddr, "peer_id": node.peer_id},
        )

    async def _wait_ready(self, names: list[str], total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout

        async def one(name: str) -> None:
            node = self._nodes[name]
            async with NodeClient(node.url, name=name, timeout=5) as client:
                last = "no answer yet"
                while True:
                    try:
                        await client.health(timeout=2)
                        peers = await client.peers_count() if total > 1 else 0
                        if total <= 1 or peers >= total - 1:
                            return
                        last = f"sees {peers} of {total - 1} peers"
                    except NodeError as exc:
                        last = exc.message
                    if time.monotonic() >= deadline:
                        raise NodeUnavailableError(
                            f"node {name} was not ready within {timeout:g}s: {last}",
                            node=name,
                            last_logs=await self.tail_logs(name),
                        )
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(one(n) for n in names))

    def _node(self, name: str):
        if name not in self._specs:
            raise BackendError(f"no node named {name!r} in this run", node=name)
        return self._nodes.get(name)

    def _running(self, name: str, doing: str):
        node = self._node(name)
        if node is None:
            raise NodeNotRunningError(f"node {name} is not running, so it cannot be {doing}", node=name)
        return node

    def _note(self, name: str, text: str) -> None:
        self._logs[name].append((time.time(), f"{_now()} INFO {text}"))

    async def _stop_node(self, name: str) -> bool:
        node = self._node(name)
        if node is None:
            return False
        self._thaw(name, node, listen=False)
        await node.stop()
        del self._nodes[name]
        self._states[name] = NodeState(
            running=False, exit_code=0, started_at=self._states[name].started_at, finished_at=_now()
        )
        self._note(name, "node stopped by the workflow")
        return True

    async def _start_node(self, name: str, *, ready_timeout: float, wait: bool) -> NodeHandle:
        from ..node.server import EmbeddedNode, NodeConfig

        if self._node(name) is not None:
            handle = self._handle(name)
            handle.already_running = True
            return handle
        spec = self._specs[name]
        others = [n.swarm_multiaddr for k, n in self._nodes.items() if k != name]
        config = NodeConfig(
            name=name,
            home=self._home(spec),
            server_host="127.0.0.1",
            # Come back on the same address so clients and peers keep working.
            server_port=_port_of(self._urls[name]),
            swarm_host="127.0.0.1",
            swarm_port=spec.swarm_port or 0,
            bootstrap=others,
        )
        node = EmbeddedNode(config, runtime=self.runtime)
        try:
            await node.start()
        except OSError as exc:
            raise NodeUnavailableError(
                f"embedded node {name} could not start again: {exc}", node=name
            ) from exc
        self._nodes[name] = node
        self._states[name] = NodeState(running=True, started_at=_now())
        self._note(name, "node started again by the workflow")
        # A restart keeps the faults set on the node, as a container keeps its networks.
        if name in self._disconnected:
            node.swarm.partitioned = True
        self._guard(name)
        if wait:
            await self._wait_ready([name], 1, ready_timeout)
        return self._handle(name)

    # -- pause ---------------------------------------------------------------------

    async def _pause_node(self, name: str) -> bool:
        node = self._running(name, "paused")
        if name in self._frozen:
            return False
        # The node's HTTP server (uvicorn's); EmbeddedNode has no public handle on it.
        http = node._http
        frozen = _Frozen()
        for server in list(http.servers):
            frozen.listeners.extend(sock.dup() for sock in server.sockets)
            server.close()
        for connection in list(http.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
                frozen.transports.append(transport)
        node.swarm.partitioned = True
        self._frozen[name] = frozen
        self._states[name].paused = True
        self._note(name, "node paused by the workflow")
        return True

    async def _unpause_node(self, name: str) -> bool:
        node = self._running(name, "unpaused")
        if name not in self._frozen:
            return False
        listeners = self._thaw(name, node, listen=True)
        if listeners:
            await node._http.startup(sockets=listeners)
        self._note(name, "node unpaused by the workflow")
        return True

    def _thaw(self, name: str, node: Any, *, listen: bool) -> list[socket.socket]:
        """Undo a pause's reading stops; return the kept listening sockets
        (``listen``) or close them."""
        frozen = self._frozen.pop(name, None)
        if frozen is None:
            return []
        for transport in frozen.transports:
            if not transport.is_closing():
                transport.resume_reading()
        node.swarm.partitioned = name in self._disconnected
        self._states[name].paused = False
        if listen:
            return frozen.listeners
        frozen.close()
        return []

    # -- partitions ------------------------------------------------------------------

    async def _disconnect_node(self, name: str) -> None:
        # Like a container's networks, this outlives a stop: a stopped node
        # starts again cut off (see _start_node).
        node = self._node(name)
        if node is not None:
            node.swarm.partitioned = True
        self._disconnected.add(name)
        self._note(name, "node disconnected from its peers by the workflow")

    async def _connect_node(self, name: str) -> None:
        node = self._node(name)
        self._disconnected.discard(name)
        if node is not None and name not in self._frozen:
            node.swarm.partitioned = False
        self._note(name, "node reconnected to its peers by the workflow")

    async def _set_partition(self, name: str, peers: list[str], *, blocked: bool) -> None:
        for peer in [name, *peers]:
            self._node(peer)  # each must be a node of this run
        for peer in peers:
            if peer == name:
                raise BackendError(f"node {name} cannot be partitioned from itself", node=name)
            for a, b in ((name, peer), (peer, name)):
                ids = self._blocked.setdefault(a, set())
                if blocked:
                    ids.add(self._peer_ids[b])
                else:
                    ids.discard(self._peer_ids[b])
        for node_name in [name, *peers]:
            node = self._guard(node_name)
            if node is not None and blocked:
                _drop_connections(node.swarm, self._blocked[node_name])
        what = "cut off from" if blocked else "reconnected to"
        self._note(name, f"node {what} {', '.join(peers)} by the workflow")
        if not blocked:
            for node_name in [name, *peers]:
                node = self._nodes.get(node_name)
                if node is not None:
                    await node.swarm.dial_missing()

    def _guard(self, name: str) -> Any:
        """Install the partition guard on a running node's swarm (once per swarm)."""
        node = self._nodes.get(name)
        blocked = self._blocked.get(name)
        if node is None or blocked is None:
            return node
        if self._guarded.get(name) is not node.swarm:
            _guard_swarm(node.swarm, blocked)
            self._guarded[name] = node.swarm
        return node

    async def node_state(self, name: str) -> NodeState:
        self._node(name)
        return self._states[name]

    async def tail_logs(self, name: str, lines: int = 50) -> str:
        buffer = self._logs.get(name)
        if not buffer:
            return ""
        return "\n".join(text for _, text in list(buffer)[-lines:])

    async def read_logs(self, name: str, *, tail: int | None = None) -> str | None:
        self._node(name)
        lines = [text for _, text in self._logs.get(name, ())]
        return "\n".join(lines[-tail:] if tail else lines)

    async def logs_since(self, name: str, since: float) -> list[str]:
        return [text for at, text in list(self._logs.get(name, ())) if at >= since]

    async def collect_logs(
        self, dest: Path, *, redact: Callable[[str], str] | None = None
    ) -> dict[str, Path]:
        dest.mkdir(parents=True, exist_ok=True)
        out: dict[str, Path] = {}
        for name, buffer in self._logs.items():
            path = dest / f"{name}.log"
            text = "\n".join(line for _, line in buffer) + ("\n" if buffer else "")
            replace_file(path, (redact(text) if redact else text).encode("utf-8"))
            state = self._states.get(name)
            if state is not None:
                replace_file(
                    dest / f"{name}.state.json", json.dumps(state.__dict__, indent=2).encode()
                )
            out[name] = path
        return out

    async def cleanup(self) -> PhaseReport:
        stopped = []
        for name, node in list(self._nodes.items()):
            try:
                self._thaw(name, node, listen=False)
                await node.stop()
            finally:
                self._nodes.pop(name, None)
                self._states[name] = NodeState(
                    running=False, exit_code=0,
                    started_at=self._states[name].started_at, finished_at=_now(),
                )
            stopped.append(name)
        self._logger.removeHandler(self._handler)
        release_run(self.workdir)
        return PhaseReport(detail=f"stopped {len(stopped)} embedded node(s)" if stopped else "")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[-1].split("/", 1)[0])
