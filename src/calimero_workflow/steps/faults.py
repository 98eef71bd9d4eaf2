"""Fault steps: stop, start, restart and pause nodes; cut nodes off their peers and heal them.

They work on every backend that owns its nodes (embedded and Docker); remote
nodes cannot be stopped, and asking to is an error rather than a silent skip.
The backend runs the lifecycle operations of one node one at a time, so steps
in parallel groups that act on the same node each get a well-defined outcome:
a node stopped twice is ``already stopped`` the second time.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

from ..client import NodeClient
from ..errors import Problem, StepFailure
from ..validation import MAX_SECONDS
from .base import (
    BaseStep,
    Halt,
    NodeRef,
    StepConfig,
    StepRun,
    ValidationContext,
    register_step,
)


def _some_nodes(names: list[str]) -> list[str]:
    if not names:
        raise ValueError("name at least one node: with an empty list the step would pass doing nothing")
    return names


#: Node names a fault step acts on: never none.
NodeNames = Annotated[list[str], AfterValidator(_some_nodes)]


class NodesConfig(StepConfig):
    #: One node name or a list of them.
    nodes: NodeNames | str


class StartConfig(NodesConfig):
    wait_for_ready: bool = True
    wait_timeout: float | None = Field(default=None, gt=0, le=MAX_SECONDS)


class NodeConfig(StepConfig):
    node: str
    #: merobox's network name; the run's own peer network is always meant.
    network: str | None = None


class ContainerConfig(StepConfig):
    #: The node (merobox names a node's container after it), or its container's name.
    container: str


class RestartContainerConfig(ContainerConfig):
    #: Wait until the node answers its health route again.
    wait_healthy: bool = True


class PeersConfig(StepConfig):
    node: str
    #: The nodes ``node`` stops (or starts again) exchanging anything with.
    peers: NodeNames


def _names(value: list[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class _FaultStep(BaseStep):
    #: Keys naming nodes this step acts on.
    node_keys: tuple[str, ...] = ("nodes",)

    def check_raw(self, vctx: ValidationContext) -> list[Problem]:
        problems = super().check_raw(vctx)
        for key in (*self.node_keys, "node"):
            raw = self.raw.get(key)
            for name in _names(raw) if isinstance(raw, (str, list)) else []:
                if not isinstance(name, str) or "${" in name or "{{" in name:
                    continue
                if name in vctx.remote_node_names:
                    problems.append(
                        self.problem(f"{self.type_name} cannot act on remote node {name!r}", key=key)
                    )
                elif key != "node" and vctx.node_names is not None and name not in vctx.node_names:
                    # (`node` is checked by every step already)
                    problems.append(self.unknown_node_problem(name, key, vctx))
        return problems

    def _local(self, run: StepRun, name: str) -> NodeRef:
        ref = run.ctx.node(name)
        if ref.kind == "remote" or run.ctx.backend is None:
            raise StepFailure(f"{self.type_name} cannot act on remote node {name!r}", location=self.location)
        return ref

    def _halt(self, how: str) -> Halt:
        return Halt(how=how, step=self.display_name, line=self.location.line)

    async def _refresh(self, run: StepRun, name: str, handle: Any) -> None:
        """A restarted node may come back on another address: point its client there."""
        ref = run.ctx.nodes[name]
        if handle.url != ref.url:
            await ref.client.aclose()
            ref.client = NodeClient(handle.url, name=name)
            ref.url = handle.url
        ref.info.update(handle.info)


@register_step
class StopNode(_FaultStep):
    type_name = "stop_node"
    Config = NodesConfig
    summary = "stop node(s), keeping their data"

    async def execute(self, config: NodesConfig, run: StepRun) -> dict[str, Any]:
        names = _names(config.nodes)
        outcomes: dict[str, str] = {}
        for name in names:
            self._local(run, name)
            if await run.ctx.backend.stop_node(name):
                outcomes[name] = "stopped"
                run.ctx.halted[name] = self._halt("stopped")
            else:
                outcomes[name] = "already stopped"
            run.log(f"{name} {outcomes[name]}")
        return {"nodes": names, "outcomes": outcomes}


@register_step
class StartNode(_FaultStep):
    type_name = "start_node"
    Config = StartConfig
    summary = "start stopped node(s) again on their data and wait until ready"

    async def execute(self, config: StartConfig, run: StepRun) -> dict[str, Any]:
        names = _names(config.nodes)
        timeout = config.wait_timeout or run.ctx.ready_timeout
        outcomes: dict[str, str] = {}
        for name in names:
            self._local(run, name)
            handle = await run.ctx.backend.start_node(
                name, ready_timeout=timeout, wait=config.wait_for_ready
            )
            await self._refresh(run, name, handle)
            run.ctx.halted.pop(name, None)
            outcomes[name] = "already running" if handle.already_running else "started"
            run.log(f"{name} {outcomes[name]}" + ("" if handle.already_running else f" at {handle.url}"))
        return {"nodes": names, "outcomes": outcomes}


@register_step
class RestartNode(_FaultStep):
    type_name = "restart_node"
    Config = StartConfig
    summary = "stop and start node(s), data kept"

    async def execute(self, config: StartConfig, run: StepRun) -> dict[str, Any]:
        names = _names(config.nodes)
        timeout = config.wait_timeout or run.ctx.ready_timeout
        for name in names:
            self._local(run, name)
            handle = await run.ctx.backend.restart_node(
                name, ready_timeout=timeout, wait=config.wait_for_ready
            )
            await self._refresh(run, name, handle)
            run.ctx.halted.pop(name, None)
            run.log(f"{name} restarted")
        return {"nodes": names, "outcomes": dict.fromkeys(names, "restarted")}


@register_step
class DisconnectNode(_FaultStep):
    type_name = "disconnect_node"
    Config = NodeConfig
    node_keys = ()
    summary = "cut a node off from its peers (it still answers the workflow)"

    async def execute(self, config: NodeConfig, run: StepRun) -> dict[str, Any]:
        self._local(run, config.node)
        await run.ctx.backend.disconnect_node(config.node)
        return {"node": config.node, "connected": False}


@register_step
class ConnectNode(_FaultStep):
    type_name = "connect_node"
    Config = NodeConfig
    node_keys = ()
    summary = "reconnect a node cut off with disconnect_node"

    async def execute(self, config: NodeConfig, run: StepRun) -> dict[str, Any]:
        self._local(run, config.node)
        await run.ctx.backend.connect_node(config.node)
        return {"node": config.node, "connected": True}


# -- merobox's container steps -------------------------------------------------------


class _ContainerStep(_FaultStep):
    node_keys = ("container",)

    def node_of(self, config: Any) -> str | None:
        return getattr(config, "container", None)

    def _node_named(self, run: StepRun, container: str) -> str:
        """The node ``container`` means: its name, or the name of its container."""
        if container in run.ctx.nodes:
            self._local(run, container)
            return container
        for name, ref in run.ctx.nodes.items():
            if ref.kind != "remote" and ref.info.get("container") == container:
                return name
        raise StepFailure(
            f"no node or node container named {container!r}",
            location=self.key_location("container"),
            hint="name the node (merobox names a node's container after the node); nodes: "
            + ", ".join(n for n, r in run.ctx.nodes.items() if r.kind != "remote"),
        )


@register_step
class PauseContainer(_ContainerStep):
    type_name = "pause_container"
    Config = ContainerConfig
    summary = (
        "freeze a node (docker pause; embedded nodes stop reading requests and peers): it keeps "
        "its state, and requests to it wait until unpause_container"
    )

    async def execute(self, config: ContainerConfig, run: StepRun) -> dict[str, Any]:
        name = self._node_named(run, config.container)
        paused = await run.ctx.backend.pause_node(name)
        if paused:
            run.ctx.halted[name] = self._halt("paused")
        outcome = "paused" if paused else "already paused"
        run.log(f"{name} {outcome}")
        return {"node": name, "container": config.container, "paused": True, "outcome": outcome}


@register_step
class UnpauseContainer(_ContainerStep):
    type_name = "unpause_container"
    Config = ContainerConfig
    summary = "resume a node frozen with pause_container"

    async def execute(self, config: ContainerConfig, run: StepRun) -> dict[str, Any]:
        name = self._node_named(run, config.container)
        resumed = await run.ctx.backend.unpause_node(name)
        halt = run.ctx.halted.get(name)
        if halt is not None and halt.how == "paused":
            del run.ctx.halted[name]
        outcome = "unpaused" if resumed else "was not paused"
        run.log(f"{name} {outcome}")
        return {"node": name, "container": config.container, "paused": False, "outcome": outcome}


@register_step
class RestartContainer(_ContainerStep):
    type_name = "restart_container"
    Config = RestartContainerConfig
    summary = "restart a node (docker restart), by default waiting until it answers its health route"

    async def execute(self, config: RestartContainerConfig, run: StepRun) -> dict[str, Any]:
        name = self._node_named(run, config.container)
        handle = await run.ctx.backend.restart_node(
            name, ready_timeout=config.timeout or run.ctx.ready_timeout, wait=config.wait_healthy
        )
        await self._refresh(run, name, handle)
        run.ctx.halted.pop(name, None)
        run.log(f"{name} restarted")
        return {"node": name, "container": config.container, "outcome": "restarted"}


# -- partitions between nodes ----------------------------------------------------------


class _PeersStep(_FaultStep):
    node_keys = ("peers",)

    def check(self, config: PeersConfig, vctx: ValidationContext) -> list[Problem]:
        problems = super().check(config, vctx)
        if config.node in config.peers:
            problems.append(
                self.problem(f"node {config.node!r} is among its own `peers`", key="peers")
            )
        return problems


@register_step
class PartitionPeers(_PeersStep):
    type_name = "partition_peers"
    Config = PeersConfig
    summary = (
        "cut all traffic between `node` and each of `peers`, both ways (the other pairs keep "
        "talking, and every node still answers the workflow)"
    )

    async def execute(self, config: PeersConfig, run: StepRun) -> dict[str, Any]:
        for name in [config.node, *config.peers]:
            self._local(run, name)
        await run.ctx.backend.partition_peers(config.node, list(config.peers))
        run.log(f"{config.node} cut off from {', '.join(config.peers)}")
        return {"node": config.node, "peers": list(config.peers), "partitioned": True}


@register_step
class HealPeers(_PeersStep):
    type_name = "heal_peers"
    Config = PeersConfig
    summary = "undo partition_peers between `node` and each of `peers`"

    async def execute(self, config: PeersConfig, run: StepRun) -> dict[str, Any]:
        for name in [config.node, *config.peers]:
            self._local(run, name)
        await run.ctx.backend.heal_peers(config.node, list(config.peers))
        run.log(f"{config.node} reconnected to {', '.join(config.peers)}")
        return {"node": config.node, "peers": list(config.peers), "partitioned": False}
