"""Waiting: a fixed pause, and waiting until nodes agree on a context's state."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..client import NodeError, is_zero_hash
from ..errors import Problem, StepFailure
from .base import BaseStep, StepConfig, StepRun, ValidationContext, register_step
from .node_steps import outputs_equal


class WaitConfig(StepConfig):
    seconds: float = Field(gt=0, le=24 * 3600)
    message: str | None = None


@register_step
class Wait(BaseStep):
    type_name = "wait"
    Config = WaitConfig
    summary = "pause for `seconds` (prefer `wait_for_sync` to wait for replication)"

    async def execute(self, config: WaitConfig, run: StepRun) -> dict[str, Any]:
        if config.message:
            run.log(config.message)
        await asyncio.sleep(config.seconds)
        return {"seconds": config.seconds}


class ExpectConfig(BaseModel):
    """``expect:`` of wait_for_sync: a read every node must agree on."""

    model_config = ConfigDict(extra="forbid")
    method: str
    args: dict[str, Any] | None = None
    equals: Any = None


class WaitForSyncConfig(StepConfig):
    context_id: str
    #: Nodes to compare; all nodes of the run when omitted.
    nodes: list[str] | str | None = None
    timeout: float = Field(default=60.0, gt=0)  # type: ignore[assignment]
    #: Ask each node to sync before polling (and again every few polls).
    trigger_sync: bool = True
    initial_check_interval: float = Field(default=0.02, gt=0)
    check_interval: float = Field(default=0.5, gt=0)
    backoff_factor: float = Field(default=1.5, ge=1)
    retry_attempts: int | None = Field(default=None, ge=1)
    expect: ExpectConfig | None = None

    @model_validator(mode="after")
    def _intervals(self) -> WaitForSyncConfig:
        if self.initial_check_interval > self.check_interval:
            self.check_interval = self.initial_check_interval
        return self


@register_step
class WaitForSync(BaseStep):
    type_name = "wait_for_sync"
    Config = WaitForSyncConfig
    summary = (
        "poll `contextStateHash` on the nodes until all are equal → "
        "`context_state_hash`, `elapsed_seconds`, `hashes`"
    )

    def check_raw(self, vctx: ValidationContext) -> list[Problem]:
        problems = super().check_raw(vctx)
        nodes = self.raw.get("nodes")
        names = [nodes] if isinstance(nodes, str) else nodes if isinstance(nodes, list) else []
        for name in names:
            if isinstance(name, str) and "${" not in name and vctx.all_nodes and name not in vctx.all_nodes:
                problems.append(self.unknown_node_problem(name, "nodes", vctx))
        return problems

    async def _execute_with_policy(self, config, run):  # type: ignore[override]
        # The step's own timeout bounds the polling loop; it reports per-node
        # hashes instead of a bare "timed out".
        data = await self.execute(config, run)
        return data, 1

    async def execute(self, config: WaitForSyncConfig, run: StepRun) -> dict[str, Any]:
        data = await converge(run, config)
        # merobox's names, for `outputs:` written for it.
        run.response = {
            **data,
            "root_hash": data["context_state_hash"],
            "attempts": data["polls"],
            "expect_satisfied": config.expect is not None,
            "per_node_expect": data.get("expect_outputs", {}),
        }
        return data


async def converge(run: StepRun, config: WaitForSyncConfig) -> dict[str, Any]:
    """Poll every node's contextStateHash until all agree (and ``expect`` holds)."""
    ctx = run.ctx
    if config.nodes is None:
        names = list(ctx.nodes)
    elif isinstance(config.nodes, str):
        names = [config.nodes]
    else:
        names = list(config.nodes)
    for name in names:
        ctx.node(name)
    if len(names) < 1:
        raise StepFailure("wait_for_sync needs at least one node")
    started = time.perf_counter()
    deadline = started + config.timeout
    interval = config.initial_check_interval
    attempts = 0
    hashes: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    #: What each node last answered to `expect`, once the hashes agreed.
    expect_outputs: dict[str, Any] | None = None

    async def fetch(name: str) -> None:
        try:
            hashes[name] = await ctx.client(name).context_state_hash(
                config.context_id, timeout=max(0.5, min(5.0, deadline - time.perf_counter()))
            )
            errors.pop(name, None)
        except NodeError as exc:
            hashes[name] = None
            errors[name] = exc.message

    async def trigger(name: str) -> None:
        # Bounded: a node cut off from its peers may take long to give up on
        # a sync, and the poll must still report in time.
        remaining = deadline - time.perf_counter()
        try:
            await ctx.client(name).sync(config.context_id, timeout=max(0.2, min(2.0, remaining)))
        except NodeError:
            pass  # a node that cannot sync yet shows up in the hash poll

    while True:
        attempts += 1
        if config.trigger_sync and attempts % 10 == 1:
            await asyncio.gather(*(trigger(n) for n in names))
        await asyncio.gather(*(fetch(n) for n in names))
        values = set(hashes.values())
        converged = (
            len(values) == 1 and None not in values and not any(map(is_zero_hash, values))
        )
        if converged and config.expect is not None:
            converged, expect_outputs = await _expect_matches(config, names, run)
        if converged:
            elapsed = time.perf_counter() - started
            root = next(iter(values))
            run.log(f"{len(names)} node(s) agree on {root} after {elapsed:.3f}s ({attempts} polls)")
            data = {
                "context_state_hash": root,
                "elapsed_seconds": round(elapsed, 6),
                "hashes": dict(hashes),
                "nodes": names,
                "polls": attempts,
            }
            if expect_outputs is not None:
                data["expect_outputs"] = expect_outputs
            return data
        now = time.perf_counter()
        if now >= deadline or (config.retry_attempts and attempts >= config.retry_attempts):
            break
        await asyncio.sleep(min(interval, max(0.0, deadline - now)))
        interval = min(interval * config.backoff_factor, config.check_interval)
    detail = ", ".join(
        f"{n}={hashes.get(n) or 'unreachable'}" + (f" ({errors[n]})" if n in errors else "")
        for n in names
    )
    reason = "did not converge"
    if all(is_zero_hash(h) for h in hashes.values()):
        reason = "has no state yet on any node"
    agreed = set(hashes.values())
    if config.expect is not None and expect_outputs is not None and len(agreed) == 1 and None not in agreed:
        # The hashes agree; it is the value read with `expect` that never matched.
        readable = {n: None if o is _Unreadable else o for n, o in expect_outputs.items()}
        shown = ", ".join(
            f"{n}={'unreadable' if o is _Unreadable else json.dumps(o, ensure_ascii=False, default=str)}"
            for n, o in expect_outputs.items()
        )
        raise StepFailure(
            f"context {config.context_id}: every node agrees on {next(iter(agreed))}, but "
            f"{config.expect.method} never returned the expected value within {config.timeout:g}s: {shown}",
            kind="sync_timeout",
            expected=config.expect.equals,
            actual=readable,
            hint="`expect.equals` is compared with the method's output (merobox's {output: …} form works too)",
            data={"hashes": dict(hashes), "expect_outputs": readable, "polls": attempts},
        )
    raise StepFailure(
        f"context {config.context_id} {reason} within {config.timeout:g}s: {detail}",
        kind="sync_timeout",
        expected="the same contextStateHash on every node",
        actual=dict(hashes),
        hint="check that every node joined the context; raise `timeout:` for slow networks",
        data={"hashes": dict(hashes), "errors": dict(errors), "polls": attempts},
    )

def _expected(equals: Any, output: Any) -> bool:
    """``equals`` is the output itself, or merobox's unwrapped result ``{output: …}``."""
    if outputs_equal(equals, output):
        return True
    return isinstance(equals, dict) and set(equals) == {"output"} and outputs_equal(equals["output"], output)


async def _expect_matches(
    config: WaitForSyncConfig, names: list[str], run: StepRun
) -> tuple[bool, dict[str, Any]]:
    expect = config.expect
    assert expect is not None

    async def read(name: str) -> Any:
        try:
            result = await run.ctx.client(name).execute(
                config.context_id, expect.method, expect.args or {}
            )
            return result.output
        except NodeError:
            return _Unreadable

    outputs = await asyncio.gather(*(read(n) for n in names))
    ok = all(o is not _Unreadable and _expected(expect.equals, o) for o in outputs)
    return ok, dict(zip(names, outputs, strict=True))


class _Unreadable:
    pass
