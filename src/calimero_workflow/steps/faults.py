"""Fault steps: stop, start and restart nodes; cut a node off its peers and heal it.

They work on every backend that owns its nodes (embedded and Docker); remote
nodes cannot be stopped, and asking to is an error rather than a silent skip.
The backend runs the lifecycle operations of one node one at a time, so steps
in parallel groups that act on the same node each get a well-defined outcome:
a node stopped twice is ``already stopped`` the second time.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..client import NodeClient
from ..errors import Problem, StepFailure
from .base import (
    BaseStep,
    Halt,
    NodeRef,
    StepConfig,
    StepRun,
    ValidationContext,
    register_step,
)


class NodesConfig(StepConfig):
    #: One node name or a list of them.
    nodes: list[str] | str


class StartConfig(NodesConfig):
    wait_for_ready: bool = True
    wait_timeout: float | None = Field(default=None, gt=0)


class NodeConfig(StepConfig):
    node: str
    #: merobox's network name; the run's own peer network is always meant.
    network: str | None = None


def _names(value: list[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class _FaultStep(BaseStep):
    def check_raw(self, vctx: ValidationContext) -> list[Problem]:
        problems = super().check_raw(vctx)
        raw = self.raw.get("nodes")
        for name in _names(raw) if isinstance(raw, (str, list)) else []:
            if isinstance(name, str) and "${" not in name and "{{" not in name:
                if name in vctx.remote_node_names:
                    problems.append(
                        self.problem(f"{self.type_name} cannot act on remote node {name!r}", key="nodes")
                    )
                elif vctx.node_names is not None and name not in vctx.node_names:
                    problems.append(self.unknown_node_problem(name, "nodes", vctx))
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
    summary = "cut a node off from its peers (it still answers the workflow)"

    async def execute(self, config: NodeConfig, run: StepRun) -> dict[str, Any]:
        self._local(run, config.node)
        await run.ctx.backend.disconnect_node(config.node)
        return {"node": config.node, "connected": False}


@register_step
class ConnectNode(_FaultStep):
    type_name = "connect_node"
    Config = NodeConfig
    summary = "reconnect a node cut off with disconnect_node"

    async def execute(self, config: NodeConfig, run: StepRun) -> dict[str, Any]:
        self._local(run, config.node)
        await run.ctx.backend.connect_node(config.node)
        return {"node": config.node, "connected": True}
