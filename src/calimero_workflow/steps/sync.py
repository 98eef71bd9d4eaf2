"""Waiting: a fixed pause, and waiting until nodes agree on a context's or a group's state."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..client import NodeApiError, NodeError, is_zero_hash
from ..errors import Problem, StepFailure
from ..validation import MAX_SECONDS
from .base import BaseStep, StepConfig, StepRun, ValidationContext, register_step
from .ids import HexId
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
    #: The context whose contextStateHash must agree; and/or
    context_id: HexId | None = None
    #: the group (a namespace) whose groupStateHash must agree, as merobox has it.
    group_id: HexId | None = None
    #: Nodes to compare; all nodes of the run when omitted.
    nodes: list[str] | str | None = None
    timeout: float = Field(default=60.0, gt=0, le=MAX_SECONDS)  # type: ignore[assignment]
    #: Ask each node to sync the context before polling (and again every few polls).
    trigger_sync: bool = True
    initial_check_interval: float = Field(default=0.02, gt=0, le=MAX_SECONDS)
    check_interval: float = Field(default=0.5, gt=0, le=MAX_SECONDS)
    backoff_factor: float = Field(default=1.5, ge=1)
    retry_attempts: int | None = Field(default=None, ge=1)
    expect: ExpectConfig | None = None

    @model_validator(mode="after")
    def _intervals(self) -> WaitForSyncConfig:
        if self.context_id is None and self.group_id is None:
            raise ValueError(
                "give `context_id` (its contextStateHash must agree), `group_id` (its "
                "groupStateHash must agree), or both"
            )
        if self.expect is not None and self.context_id is None:
            raise ValueError("`expect` calls a method of the context: give `context_id` too")
        if self.initial_check_interval > self.check_interval:
            self.check_interval = self.initial_check_interval
        return self


@register_step
class WaitForSync(BaseStep):
    type_name = "wait_for_sync"
    Config = WaitForSyncConfig
    summary = (
        "poll `contextStateHash` (`context_id`) and/or `groupStateHash` (`group_id`) on "
        "the nodes until all are equal → `context_state_hash`, `group_state_hash`, "
        "`elapsed_seconds`, `hashes`"
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
        try:
            data = await converge(run, config)
        except _Refused as exc:
            exc.location = self.key_location(exc.key)
            raise
        targets = data.pop("targets")
        # merobox's names, for `outputs:` written for it.
        run.response = {
            **data,
            "synced": True,
            "targets": {label: value["hash"] for label, value in targets.items()},
            "per_target_node_hashes": {
                label: value["hashes"] for label, value in targets.items()
            },
            "attempts": data["polls"],
            "expect_satisfied": config.expect is not None,
            "per_node_expect": data.get("expect_outputs", {}),
        }
        if "context_state_hash" in data:
            run.response["root_hash"] = data["context_state_hash"]
        return data


#: HTTP statuses of an answer that may change with time: not found (yet), or
#: forbidden for a namespace the node only heard of (handled as "not a member"),
#: and the ones that say "later" (timeout, too early, too many requests).
_TRANSIENT_4XX = frozenset({403, 404, 408, 425, 429})


def _permanent(exc: NodeApiError) -> bool:
    """Whether a node's error answer will not change however long we poll: a
    4xx (other than those of :data:`_TRANSIENT_4XX`) that is not one of merod's
    "not synced yet" answers (``Uninitialized``, ``GroupKeyPending``, 503)."""
    status = exc.status or 0
    return 400 <= status < 500 and status not in _TRANSIENT_4XX and not exc.transient


class _Refused(StepFailure):
    """A node refuses the id itself; ``key`` is the step key that holds it."""

    def __init__(self, message: str, *, key: str, hint: str, data: dict[str, Any]) -> None:
        super().__init__(message, kind="refused", hint=hint, data=data)
        self.key = key


class _Target:
    """One hash the nodes must agree on: a context's state, or a group's."""

    def __init__(self, kind: str, target_id: str) -> None:
        self.kind = kind
        self.id = target_id
        self.field = "contextStateHash" if kind == "context" else "groupStateHash"
        self.hashes: dict[str, str | None] = {}
        #: Nodes that did not answer, with why.
        self.errors: dict[str, str] = {}
        #: Nodes that answer that they are not members, with their answer.
        self.absent: dict[str, str] = {}
        #: Nodes that refuse the id itself (HTTP 400…): asking again cannot help.
        self.refused: dict[str, NodeApiError] = {}
        #: Since when the absent nodes are all that keeps the others from agreeing.
        self.absent_since: float | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}={self.id}"

    def converged(self) -> bool:
        values = set(self.hashes.values())
        # A context without state yet (the zero hash) has nothing to agree on.
        return len(values) == 1 and None not in values and not any(map(is_zero_hash, values))

    def others_agree(self) -> bool:
        """Whether the nodes that are members agree (True when none is)."""
        values = {h for n, h in self.hashes.items() if n not in self.absent}
        if not values:
            return True
        return len(values) == 1 and None not in values and not any(map(is_zero_hash, values))

    async def fetch(self, client: Any, name: str, timeout: float) -> None:
        self.absent.pop(name, None)
        self.errors.pop(name, None)
        try:
            if self.kind == "context":
                value = await client.context_state_hash(self.id, timeout=timeout)
            else:
                value = await client.group_state_hash(self.id, timeout=timeout)
        except NodeError as exc:
            self.hashes[name] = None
            # merod answers 404 for a context or group the node is not in, and
            # the embedded node 403 for a namespace it only heard of.
            refused = (404,) if self.kind == "context" else (403, 404)
            if isinstance(exc, NodeApiError) and exc.status in refused:
                # "GET /admin-api/contexts/… failed with HTTP 404: Context not found"
                self.absent[name] = exc.message.split(" failed with ", 1)[-1]
            elif isinstance(exc, NodeApiError) and _permanent(exc):
                self.refused[name] = exc
            else:
                self.errors[name] = exc.message
        else:
            self.hashes[name] = value

    def refusal(self) -> _Refused | None:
        """The failure for an id a node refuses outright, if one does."""
        if not self.refused:
            return None
        name, exc = next(iter(self.refused.items()))
        return _Refused(
            f"{name} refuses {self.kind} {self.id}: {exc.message}",
            key=f"{self.kind}_id",
            hint=f"asking again would not help: check `{self.kind}_id`, 64 hex digits as a "
            "step's results give it (e.g. ${results.<step>."
            + ("context_id" if self.kind == "context" else "namespace_id")
            + "})",
            data={"node": name, "status": exc.status, "error": exc.message},
        )

    def node_state(self, name: str) -> str:
        """One node in a failure message: its hash, or why it has none."""
        if name in self.absent:
            return f"{name}=not a member ({self.absent[name]})"
        if name in self.errors:
            return f"{name}=unreachable ({self.errors[name]})"
        return f"{name}={self.hashes.get(name)}"


async def converge(run: StepRun, config: WaitForSyncConfig) -> dict[str, Any]:
    """Poll the nodes until they agree on every target (and ``expect`` holds)."""
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
    targets = [
        _Target(kind, target_id)
        for kind, target_id in (("context", config.context_id), ("group", config.group_id))
        if target_id is not None
    ]
    context = next((t for t in targets if t.kind == "context"), None)
    started = time.perf_counter()
    deadline = started + config.timeout
    interval = config.initial_check_interval
    attempts = 0
    #: What each node last answered to `expect`, once the hashes agreed.
    expect_outputs: dict[str, Any] | None = None

    async def fetch(target: _Target, name: str) -> None:
        timeout = max(0.5, min(5.0, deadline - time.perf_counter()))
        await target.fetch(ctx.client(name), name, timeout)

    async def trigger(name: str) -> None:
        assert context is not None
        # Bounded: a node cut off from its peers may take long to give up on
        # a sync, and the poll must still report in time.
        remaining = deadline - time.perf_counter()
        # A node without the context syncs everything: a member of its
        # namespace joins the context on the way (auto-join).
        context_id = None if name in context.absent else context.id
        try:
            await ctx.client(name).sync(context_id, timeout=max(0.2, min(2.0, remaining)))
        except NodeError:
            pass  # a node that cannot sync yet shows up in the hash poll

    while True:
        attempts += 1
        # Only a context is synced on demand; governance spreads by itself.
        if context is not None and config.trigger_sync and (
            attempts % 10 == 1 or (attempts == 2 and context.absent)
        ):
            await asyncio.gather(*(trigger(n) for n in names))
        await asyncio.gather(*(fetch(t, n) for t in targets for n in names))
        for target in targets:
            refusal = target.refusal()
            if refusal is not None:
                raise refusal
        converged = all(t.converged() for t in targets)
        if converged and config.expect is not None:
            converged, expect_outputs = await _expect_matches(config, names, run)
        if converged:
            elapsed = time.perf_counter() - started
            agreed = ", ".join(f"{t.kind} {next(iter(t.hashes.values()))}" for t in targets)
            run.log(f"{len(names)} node(s) agree on {agreed} after {elapsed:.3f}s ({attempts} polls)")
            data: dict[str, Any] = {
                "elapsed_seconds": round(elapsed, 6),
                "nodes": names,
                "polls": attempts,
                "targets": {
                    t.label: {"hash": next(iter(t.hashes.values())), "hashes": dict(t.hashes)}
                    for t in targets
                },
            }
            for target in targets:
                value = next(iter(target.hashes.values()))
                if target.kind == "context":
                    data["context_state_hash"] = value
                    data["hashes"] = dict(target.hashes)
                else:
                    data["group_state_hash"] = value
                    data["group_hashes"] = dict(target.hashes)
            if expect_outputs is not None:
                data["expect_outputs"] = expect_outputs
            return data
        now = time.perf_counter()
        for target in targets:
            if target.absent and target.others_agree():
                if target.absent_since is None:
                    target.absent_since = now
                if now - target.absent_since >= NOT_MEMBER_GRACE_S:
                    raise _not_members(target, names, now - target.absent_since)
            else:
                target.absent_since = None
        if now >= deadline or (config.retry_attempts and attempts >= config.retry_attempts):
            break
        await asyncio.sleep(min(interval, max(0.0, deadline - now)))
        interval = min(interval * config.backoff_factor, config.check_interval)
    if context is not None and config.expect is not None and expect_outputs is not None:
        agreed = set(context.hashes.values())
        # The hashes agree; it is the value read with `expect` that never matched.
        readable = {n: None if o is _Unreadable else o for n, o in expect_outputs.items()}
        shown = ", ".join(
            f"{n}={'unreadable' if o is _Unreadable else json.dumps(o, ensure_ascii=False, default=str)}"
            for n, o in expect_outputs.items()
        )
        raise StepFailure(
            f"context {context.id}: every node agrees on {next(iter(agreed))}, but "
            f"{config.expect.method} never returned the expected value within {config.timeout:g}s: {shown}",
            kind="sync_timeout",
            expected=config.expect.equals,
            actual=readable,
            hint="`expect.equals` is compared with the method's output (merobox's {output: …} form works too)",
            data={"hashes": dict(context.hashes), "expect_outputs": readable, "polls": attempts},
        )
    raise _timed_out(config, targets, names, attempts)


def _timed_out(
    config: WaitForSyncConfig, targets: list[_Target], names: list[str], attempts: int
) -> StepFailure:
    """The failure for targets the nodes did not agree on in time."""
    failing = [t for t in targets if not t.converged()]
    parts = []
    for target in failing:
        reason = "did not converge"
        if target.kind == "context" and all(is_zero_hash(h) for h in target.hashes.values()):
            reason = "has no state yet on any node"
        detail = ", ".join(target.node_state(n) for n in names)
        parts.append(f"{target.kind} {target.id} {reason} within {config.timeout:g}s: {detail}")
    absent = sorted({n for t in failing for n in t.absent})
    if absent:
        hint = _not_member_hint(absent, failing[0].kind)
    else:
        hint = "check that every node joined the context; raise `timeout:` for slow networks"
    if len(failing) == 1:
        (only,) = failing
        expected = f"the same {only.field} on every node"
        actual: dict[str, Any] = dict(only.hashes)
    else:
        expected = "the same " + " and ".join(t.field for t in failing) + " on every node"
        actual = {t.label: dict(t.hashes) for t in failing}
    data: dict[str, Any] = {
        "errors": {n: m for t in failing for n, m in t.errors.items()},
        "not_members": absent,
        "polls": attempts,
    }
    for target in targets:
        data["hashes" if target.kind == "context" else "group_hashes"] = dict(target.hashes)
    return StepFailure(
        "; ".join(parts), kind="sync_timeout", expected=expected, actual=actual, hint=hint, data=data
    )


def _not_member_hint(missing: list[str], kind: str) -> str:
    them = "it" if len(missing) == 1 else "them"
    how = "(`join` its namespace, or `join_context`)" if kind == "context" else "(`join`)"
    return (
        f"join {', '.join(missing)} to the {kind} first {how}, or leave {them} out of "
        "`nodes:`"
    )


def _not_members(target: _Target, names: list[str], waited: float) -> StepFailure:
    """The failure for nodes that stay outside the target while the others agree."""
    missing = [n for n in names if n in target.absent]
    answers = "; ".join(f"{n}: {target.absent[n]}" for n in missing)
    members = [n for n in names if n not in target.absent]
    if members:
        agreed = next(iter({target.hashes[n] for n in members}))
        verb, it = ("is not a member", "it") if len(missing) == 1 else ("are not members", "they")
        message = (
            f"{', '.join(missing)} {verb} of {target.kind} {target.id}: {it} stayed out for "
            f"{waited:.1f}s while {', '.join(members)} "
            f"{'agree' if len(members) > 1 else 'is'} on {agreed} ({answers})"
        )
        hint = _not_member_hint(missing, target.kind)
    else:
        message = (
            f"{target.kind} {target.id} is on none of the nodes {', '.join(names)} after "
            f"{waited:.1f}s ({answers})"
        )
        hint = (
            f"check `{target.kind}_id`, and that the {target.kind} was created on one of "
            "these nodes"
        )
    return StepFailure(
        message,
        kind="not_member",
        expected=f"every node a member of the {target.kind}",
        actual={n: "not a member" if n in target.absent else target.hashes.get(n) for n in names},
        hint=hint,
        data={"hashes": dict(target.hashes), "not_members": missing},
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
    assert expect is not None and config.context_id is not None

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
