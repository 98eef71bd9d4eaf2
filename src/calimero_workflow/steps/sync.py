"""Waiting: a fixed pause, and waiting until nodes agree on a context's state."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..client import NodeApiError, NodeError, is_zero_hash
from ..errors import Problem, StepFailure
from .base import BaseStep, StepConfig, StepRun, ValidationContext, register_step
from .node_steps import outputs_equal

#: How long a node may go on answering 404 for the context while the other
#: nodes agree, before the step fails: time for a namespace member to join
#: the context by itself (auto-join), far less than a sync timeout.
NOT_MEMBER_GRACE_S = 5.0


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
    #: Nodes that answer 404 for the context (not members of it), with the answer.
    absent: dict[str, str] = {}
    #: Since when the absent nodes are all that keeps the others from agreeing.
    absent_since: float | None = None
    #: What each node last answered to `expect`, once the hashes agreed.
    expect_outputs: dict[str, Any] | None = None

    async def fetch(name: str) -> None:
        absent.pop(name, None)
        errors.pop(name, None)
        try:
            hashes[name] = await ctx.client(name).context_state_hash(
                config.context_id, timeout=max(0.5, min(5.0, deadline - time.perf_counter()))
            )
        except NodeError as exc:
            hashes[name] = None
            if isinstance(exc, NodeApiError) and exc.status == 404:
                # "GET /admin-api/contexts/… failed with HTTP 404: Context not found"
                absent[name] = exc.message.split(" failed with ", 1)[-1]
            else:
                errors[name] = exc.message

    async def trigger(name: str) -> None:
        # Bounded: a node cut off from its peers may take long to give up on
        # a sync, and the poll must still report in time.
        remaining = deadline - time.perf_counter()
        # A node without the context syncs everything: a member of its
        # namespace joins the context on the way (auto-join).
        context_id = None if name in absent else config.context_id
        try:
            await ctx.client(name).sync(context_id, timeout=max(0.2, min(2.0, remaining)))
        except NodeError:
            pass  # a node that cannot sync yet shows up in the hash poll

    while True:
        attempts += 1
        if config.trigger_sync and (attempts % 10 == 1 or (attempts == 2 and absent)):
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
        if absent and _others_agree(hashes, absent):
            absent_since = now if absent_since is None else absent_since
            if now - absent_since >= NOT_MEMBER_GRACE_S:
                raise _not_members(config.context_id, names, hashes, absent, now - absent_since)
        else:
            absent_since = None
        if now >= deadline or (config.retry_attempts and attempts >= config.retry_attempts):
            break
        await asyncio.sleep(min(interval, max(0.0, deadline - now)))
        interval = min(interval * config.backoff_factor, config.check_interval)
    detail = ", ".join(_node_state(n, hashes, errors, absent) for n in names)
    reason = "did not converge"
    if all(is_zero_hash(h) for h in hashes.values()):
        reason = "has no state yet on any node"
    hint = "check that every node joined the context; raise `timeout:` for slow networks"
    if absent:
        hint = _not_member_hint(sorted(absent))
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
        hint=hint,
        data={
            "hashes": dict(hashes),
            "errors": dict(errors),
            "not_members": sorted(absent),
            "polls": attempts,
        },
    )


def _node_state(
    name: str, hashes: dict[str, str | None], errors: dict[str, str], absent: dict[str, str]
) -> str:
    """One node in a failure message: its hash, or why it has none."""
    if name in absent:
        return f"{name}=not a member ({absent[name]})"
    if name in errors:
        return f"{name}=unreachable ({errors[name]})"
    return f"{name}={hashes.get(name)}"


def _others_agree(hashes: dict[str, str | None], absent: dict[str, str]) -> bool:
    """Whether the nodes that have the context agree (True when none has it)."""
    values = {h for n, h in hashes.items() if n not in absent}
    if not values:
        return True
    return len(values) == 1 and None not in values and not any(map(is_zero_hash, values))


def _not_member_hint(missing: list[str]) -> str:
    them = "it" if len(missing) == 1 else "them"
    return (
        f"join {', '.join(missing)} to the context first (`join` its namespace, or "
        f"`join_context`), or leave {them} out of `nodes:`"
    )


def _not_members(
    context_id: str,
    names: list[str],
    hashes: dict[str, str | None],
    absent: dict[str, str],
    waited: float,
) -> StepFailure:
    """The failure for nodes that stay outside the context while the others agree."""
    missing = [n for n in names if n in absent]
    answers = "; ".join(f"{n}: {absent[n]}" for n in missing)
    members = [n for n in names if n not in absent]
    if members:
        agreed = next(iter({hashes[n] for n in members}))
        verb = "is not a member" if len(missing) == 1 else "are not members"
        message = (
            f"{', '.join(missing)} {verb} of context {context_id}: still answering 404 after "
            f"{waited:.1f}s while {', '.join(members)} agree on {agreed} ({answers})"
        )
        hint = _not_member_hint(missing)
    else:
        message = (
            f"context {context_id} is on none of the nodes {', '.join(names)}: each "
            f"answered 404 for {waited:.1f}s ({answers})"
        )
        hint = "check `context_id`, and that the context was created on one of these nodes"
    return StepFailure(
        message,
        kind="not_member",
        expected="every node a member of the context",
        actual={n: "not a member" if n in absent else hashes.get(n) for n in names},
        hint=hint,
        data={"hashes": dict(hashes), "not_members": missing},
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
