"""``EmbeddedNode``: one Calimero node running inside the current asyncio loop.

It binds two TCP ports, the server (admin API + JSON-RPC, served by uvicorn)
and the swarm (our peer protocol), loads its state from ``home`` and starts the
background catch-up loop. Many nodes can share one process, one event loop and
one :class:`~calimero_workflow.node.runtime.WasmRuntime` (the engine's embedded
backend); ``merod run`` runs exactly one.

Start and stop take milliseconds: sockets are bound up front (so ``url`` is
valid as soon as ``start`` returns) and shutdown closes connections instead of
waiting out uvicorn's polling loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from types import TracebackType

import uvicorn

from .api import NodeApi
from .config import CONFIG_FILE, ConfigError, NodeConfig, load_config, write_config
from .ids import Keypair
from .logs import node_logger
from .runtime import WasmRuntime
from .service import NodeService
from .store import NodeStore
from .swarm import Swarm
from .sync import Replicator
from .worker import WasmWorker

__all__ = ["ConfigError", "EmbeddedNode", "NodeConfig"]

_SHUTDOWN_GRACE_S = 2.0


def _bind(host: str, port: int, fallback: int | None) -> socket.socket:
    """A listening TCP socket on ``host:port``; with port 0 try ``fallback`` first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = [port] if port else ([fallback, 0] if fallback else [0])
    error: OSError | None = None
    for candidate in candidates:
        # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets
        # whose proto is IPPROTO_TCP, and without it Nagle's algorithm holds
        # each response body back ~40 ms on keep-alive connections.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
            sock.listen(512)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.setblocking(False)
        return sock
    assert error is not None
    raise OSError(
        error.errno, f"cannot listen on {host}:{candidates[0]}: {error.strerror}"
    )


def _port_meta(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


class EmbeddedNode:
    """A Calimero node served in-process; see the module docstring.

    Args:
        config: where the node lives and listens; ports 0 are chosen by the OS.
        runtime: the wasm runtime to execute apps with; share one between nodes
            so each app compiles once. A fresh one is made when omitted.
    """

    def __init__(
        self, config: NodeConfig, *, runtime: WasmRuntime | None = None
    ) -> None:
        self.config = config
        self.runtime = runtime or WasmRuntime()
        self.log = node_logger(config.name, "server")
        self.identity: Keypair | None = config.identity
        self.running = False
        self._store: NodeStore | None = None
        self._service: NodeService | None = None
        self._swarm: Swarm | None = None
        self._replicator: Replicator | None = None
        self._http: uvicorn.Server | None = None
        self._server_port = 0
        self._host = config.server_host

    # -- identity ------------------------------------------------------------------

    def _load_identity(self) -> Keypair:
        """The node's keypair: from the config, else home/config.toml, else a new one."""
        if self.config.identity is not None:
            return self.config.identity
        if (self.config.home / CONFIG_FILE).exists():
            stored = load_config(self.config.home, self.config.name).identity
            assert stored is not None
            return stored
        identity = Keypair.generate()
        write_config(self.config.with_identity(identity))
        self.log.info(
            "generated node identity %s in %s", identity.peer_id, self.config.home
        )
        return identity

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Bind both ports, load state from home and start serving.

        Raises:
            OSError: a configured port is in use.
            ConfigError: home holds a config.toml that cannot be read.
        """
        if self.running:
            raise RuntimeError(f"node {self.config.name} is already running")
        cfg = self.config
        cfg.home.mkdir(parents=True, exist_ok=True)
        self.identity = self._load_identity()
        store = NodeStore(cfg.home)
        store.open()
        try:
            # A restarted node comes back on its previous ports when it can, so
            # clients and peers holding its address keep working.
            http_sock = _bind(
                cfg.server_host, cfg.server_port, _port_meta(store.meta("server_port"))
            )
            try:
                swarm_sock = _bind(
                    cfg.swarm_host, cfg.swarm_port, _port_meta(store.meta("swarm_port"))
                )
            except OSError:
                http_sock.close()
                raise
        except BaseException:
            store.close()
            raise
        self._server_port = http_sock.getsockname()[1]
        store.set_meta("server_port", str(self._server_port))
        store.set_meta("swarm_port", str(swarm_sock.getsockname()[1]))

        service = NodeService(
            name=cfg.name,
            store=store,
            runtime=self.runtime,
            keypair=self.identity,
        )
        replicator_box: list[Replicator] = []
        swarm = Swarm(
            self.identity,
            host=cfg.swarm_host,
            port=swarm_sock.getsockname()[1],
            bootstrap=cfg.bootstrap,
            handler=lambda peer, kind, body: replicator_box[0].handle(peer, kind, body),
            on_connect=lambda peer: replicator_box[0].peer_connected(peer),
            known_peers=dict(store.peers),
            remember_peer=store.remember_peer,
            redial_interval=min(cfg.sync_interval_ms / 1000, 1.0),
            node_name=cfg.name,
        )
        replicator = Replicator(service, swarm, interval=cfg.sync_interval_ms / 1000)
        replicator_box.append(replicator)
        self._store, self._service, self._swarm, self._replicator = (
            store,
            service,
            swarm,
            replicator,
        )

        uv_config = uvicorn.Config(
            NodeApi(self),
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=int(_SHUTDOWN_GRACE_S),
        )
        # Server.startup() is the public half of uvicorn's serve(); we skip
        # serve()'s polling main loop, which would make stop() slow.
        uv_config.load()
        http = uvicorn.Server(uv_config)
        http.lifespan = uv_config.lifespan_class(uv_config)
        self.running = True
        # known to stop() from here on: a start cut short (a cancelled run, a
        # timeout) closes whatever servers startup() made
        self._http = http
        try:
            await http.startup(sockets=[http_sock])
            await swarm.start(swarm_sock)
            replicator.start()
        except BaseException:
            # stop first: the servers still hold these sockets, and closing a
            # socket under a live asyncio server leaves it a descriptor of -1
            await self.stop()
            http_sock.close()
            swarm_sock.close()
            raise
        self.log.info(
            "node %s started: server %s, swarm %s",
            cfg.name,
            self.url,
            self.swarm_multiaddr,
        )

    async def stop(self) -> None:
        """Shut down cleanly; all state is already durable in home."""
        if not self.running:
            return
        self.running = False
        if self._service is not None:
            # A guest still running would hold its request (and the wasm
            # thread) past the grace period; its caller gets an error instead.
            self._service.interrupt_calls(f"node {self.config.name} is stopping")
        if self._replicator is not None:
            await self._replicator.stop()
        if self._swarm is not None:
            await self._swarm.stop()
        if self._http is not None:
            await self._stop_http(self._http)
            self._http = None
        if self._service is not None:
            await self._stop_wasm(self._service.wasm)
        if self._store is not None:
            self._store.close()
        self.log.info("node %s stopped", self.config.name)

    async def _stop_wasm(self, wasm: WasmWorker) -> None:
        # Every caller is gone by now and its guest interrupted: the threads
        # finish what is queued (calls that fail at once) and exit.
        wasm.close()
        if not await wasm.wait_closed(_SHUTDOWN_GRACE_S):
            self.log.warning(
                "node %s stopped with %d wasm call(s) still running; their "
                "threads exit when the calls return",
                self.config.name,
                wasm.busy,
            )

    async def _stop_http(self, http: uvicorn.Server) -> None:
        # uvicorn's own shutdown sleeps 100 ms before looking at connections;
        # we close idle keep-alive connections at once and give in-flight
        # requests a short grace period. A startup() cut short may not have
        # made its servers yet.
        servers = list(getattr(http, "servers", []))
        for server in servers:
            server.close()
        for connection in list(http.server_state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SHUTDOWN_GRACE_S
        while (
            http.server_state.connections or http.server_state.tasks
        ) and loop.time() < deadline:
            await asyncio.sleep(0.002)
        for task in list(http.server_state.tasks):
            task.cancel()
        for server in servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(0.2):
                    await server.wait_closed()

    async def __aenter__(self) -> EmbeddedNode:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- addresses and parts -------------------------------------------------------

    @property
    def home(self) -> Path:
        return self.config.home

    @property
    def url(self) -> str:
        """Base URL of the admin API and JSON-RPC, e.g. ``http://127.0.0.1:34567``."""
        host = self._host
        if host in {"0.0.0.0", ""}:
            host = "127.0.0.1"
        elif ":" in host:
            host = "[::1]" if host == "::" else f"[{host}]"
        return f"http://{host}:{self._server_port}"

    @property
    def peer_id(self) -> str:
        """The libp2p-style peer id (``12D3KooW…``) of this node."""
        if self.identity is None:
            self.identity = self._load_identity()
        return self.identity.peer_id

    @property
    def swarm_multiaddr(self) -> str:
        """``/ip4/<host>/tcp/<port>/p2p/<peer id>`` for other nodes' bootstrap lists."""
        host = self.config.swarm_host
        # A wildcard listener is reachable on loopback; peers elsewhere (other
        # containers) must be given the node's real address by whoever wires them.
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        proto = "ip6" if ":" in host else "ip4"
        port = self._swarm.port if self._swarm is not None else self.config.swarm_port
        return f"/{proto}/{host}/tcp/{port}/p2p/{self.peer_id}"

    @property
    def peer_count(self) -> int:
        """Distinct peers connected right now."""
        return self._swarm.peer_count if self._swarm is not None and self.running else 0

    @property
    def swarm(self) -> Swarm:
        """The swarm; tests set ``node.swarm.partitioned = True`` to cut the node off."""
        if self._swarm is None:
            raise RuntimeError(f"node {self.config.name} has not been started")
        return self._swarm

    @property
    def service(self) -> NodeService:
        if self._service is None:
            raise RuntimeError(f"node {self.config.name} has not been started")
        return self._service
