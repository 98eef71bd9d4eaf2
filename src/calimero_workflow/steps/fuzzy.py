"""``fuzzy_test``: weighted random operations, replayable from a seed.

Each operation is a small list of nested steps. On every round one operation
is drawn by weight and one node is drawn for ``{{random_node}}``; generators
(``random_int(a, b)``, ``random_string(n)``, ``random_choice([...])``,
``uuid``…) draw from the same seeded source, so the same seed replays the
same run. Assertions inside are counted rather than stopping the run. At the
end every node must agree on the context's state.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import Location, Problem, StepFailure
from ..results import Status, StepRecord
from ..validation import MAX_SECONDS, contains_deferred
from .base import BaseStep, StepConfig, StepRun, ValidationContext, register_step
from .ids import HexId
from .sync import WaitForSyncConfig, converge

#: Failed operations kept as nested records (the rest are only counted).
_KEEP_FAILED = 20


class FuzzyNode(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    #: Accepted for merobox files; current nodes choose the executor themselves.
    executor_key: str | None = None


class Operation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    weight: float = Field(default=1.0, gt=0)
    steps: list[Any] = Field(min_length=1)


class FuzzyConfig(StepConfig):
    context_id: HexId
    nodes: list[FuzzyNode | str] = Field(min_length=1)
    operations: list[Operation] = Field(min_length=1)
    #: Stop after this many operations…
    max_operations: int | None = Field(default=None, ge=1)
    #: …or after this long (whichever comes first).
    duration_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    duration_minutes: float | None = Field(default=None, gt=0, le=MAX_SECONDS / 60)
    seed: int | None = None
    success_threshold: float = Field(default=95.0, ge=0, le=100)
    operation_delay_ms: float = Field(default=0, ge=0, le=MAX_SECONDS * 1000)
    summary_interval_seconds: float = Field(default=60, gt=0, le=MAX_SECONDS)
    convergence_check: bool = True
    convergence_timeout: float = Field(default=60, gt=0, le=MAX_SECONDS)

    @model_validator(mode="after")
    def _bounded(self) -> FuzzyConfig:
        if self.max_operations is None and self.duration_seconds is None and self.duration_minutes is None:
            raise ValueError("give `max_operations`, `duration_seconds` or `duration_minutes`")
        return self

    def node_names(self) -> list[str]:
        return [n if isinstance(n, str) else n.name for n in self.nodes]

    def deadline_seconds(self) -> float | None:
        limits = [v for v in (self.duration_seconds, (self.duration_minutes or 0) * 60 or None) if v]
        return min(limits) if limits else None


@register_step
class FuzzyTest(BaseStep):
    type_name = "fuzzy_test"
    Config = FuzzyConfig
    deferred_keys = frozenset({"operations"})
    summary = (
        "run weighted random `operations` for `max_operations` or a duration, replayable by `seed`; "
        "counts assertions against `success_threshold`, then checks convergence"
    )

    def __init__(self, raw, *, file, index: int):
        super().__init__(raw, file=file, index=index)
        self.operations: list[tuple[str, float, list[BaseStep]]] = []

    def validate(self, vctx: ValidationContext) -> list[Problem]:
        from ..workflow import build_steps, validate_steps

        problems = super().validate(vctx)
        ops = self.raw.get("operations")
        if not isinstance(ops, list):
            return problems
        for i, op in enumerate(ops):
            if not isinstance(op, dict):
                continue
            where = Location(self.file, *(ops.item_pos(i) if hasattr(ops, "item_pos") else (self.location.line, 1)))
            steps = build_steps(op.get("steps"), file=self.file, problems=problems, where=where, what="steps")
            problems.extend(validate_steps(steps, vctx))
            weight = op.get("weight", 1.0)
            if isinstance(weight, str) and contains_deferred(weight):
                problems.append(
                    Problem(
                        f"operation {op.get('name')!r}: `weight` must be a number written out (got {weight!r})",
                        where,
                        hint="weights are fixed when the workflow loads; use ${VAR} from the environment",
                    )
                )
            self.operations.append(
                (str(op.get("name", f"operation-{i + 1}")), float(weight) if isinstance(weight, (int, float)) else 1.0, steps)
            )
        return problems

    def check_raw(self, vctx: ValidationContext) -> list[Problem]:
        problems = super().check_raw(vctx)
        nodes = self.raw.get("nodes")
        for item in nodes if isinstance(nodes, list) else []:
            name = item.get("name") if isinstance(item, dict) else item
            if isinstance(name, str) and "${" not in name and "{{" not in name and vctx.all_nodes and name not in vctx.all_nodes:
                problems.append(self.unknown_node_problem(name, "nodes", vctx))
        return problems

    async def execute(self, config: FuzzyConfig, run: StepRun) -> dict[str, Any]:
        seed = config.seed if config.seed is not None else secrets.randbits(32)
        rng = random.Random(seed)
        run.log(f"seed {seed} (replay with `seed: {seed}`)")
        names = config.node_names()
        executors = {n.name: n.executor_key for n in config.nodes if not isinstance(n, str)}
        weights = [w for _, w, _ in self.operations]
        limit = config.deadline_seconds()
        started = time.perf_counter()
        last_summary = started
        done = 0
        per_op: dict[str, dict[str, int]] = {n: {"runs": 0, "failed": 0} for n, _, _ in self.operations}
        passed_asserts = failed_asserts = step_errors = 0
        kept: list[StepRecord] = []
        while True:
            if config.max_operations is not None and done >= config.max_operations:
                break
            if limit is not None and time.perf_counter() - started >= limit:
                break
            name, _, steps = rng.choices(self.operations, weights=weights, k=1)[0]
            node = rng.choice(names)
            done += 1
            per_op[name]["runs"] += 1
            variables = {
                **run.variables, "random_node": node, "iteration": done, "operation": name,
                # the drawn node's `executor_key` (merobox documented it, never set it)
                "random_executor": executors.get(node),
                # merobox's names for the same
                "_pattern_name": name, "_iteration": done,
            }
            failed_here = False
            for step in steps:
                child = StepRun(
                    ctx=run.ctx,
                    path=f"{run.path}/{name}#{done}/{step.display_name}",
                    variables=variables,
                    rng=rng,
                    report=False,
                )
                record = await step.run(child)
                args = record.data.get("args") if step.type_name == "call" else None
                if isinstance(args, dict):
                    # merobox: later steps of the operation read a call's
                    # resolved arguments as {{fuzzy_<arg>}}.
                    for arg, value in args.items():
                        variables[f"fuzzy_{arg}"] = value
                        variables[f"_fuzzy_args_{arg}"] = value
                if step.type_name in ("assert", "json_assert"):
                    if record.status is Status.PASSED:
                        passed_asserts += 1
                    else:
                        failed_asserts += 1
                        failed_here = True
                elif record.status is Status.FAILED:
                    step_errors += 1
                    failed_here = True
                if record.status is Status.FAILED and len(kept) < _KEEP_FAILED:
                    # Counted against the threshold, not a stop: the fuzz goes on.
                    kept.append(record)
                    cause = _cause(record)
                    run.log(f"FAIL {cause.path}: {cause.error.message if cause.error else ''}")
            if failed_here:
                per_op[name]["failed"] += 1
            now = time.perf_counter()
            if now - last_summary >= config.summary_interval_seconds:
                last_summary = now
                run.log(f"{done} operations, {passed_asserts} assertions passed, {failed_asserts} failed")
            if config.operation_delay_ms:
                await asyncio.sleep(config.operation_delay_ms / 1000)
        total_asserts = passed_asserts + failed_asserts
        pass_rate = 100.0 * passed_asserts / total_asserts if total_asserts else 0.0
        data: dict[str, Any] = {
            "seed": seed,
            "operations": done,
            "per_operation": per_op,
            "assertions_passed": passed_asserts,
            "assertions_failed": failed_asserts,
            "step_errors": step_errors,
            "pass_rate": round(pass_rate, 3),
            "failed_samples": [
                {
                    "path": r.path,
                    "message": r.error.message if r.error else "",
                    "location": str(r.error.location) if r.error and r.error.location else None,
                }
                for r in map(_cause, kept)
            ],
            "duration_seconds": round(time.perf_counter() - started, 6),
        }
        if config.convergence_check:
            sync = WaitForSyncConfig(
                type="wait_for_sync", context_id=config.context_id, nodes=names,
                timeout=config.convergence_timeout,
            )
            try:
                converged = await converge(run, sync)
            except StepFailure as exc:
                exc.message = f"after {done} operations (seed {seed}) the nodes did not converge: {exc.message}"
                exc.data = {**data, **exc.data}
                raise
            data["context_state_hash"] = converged["context_state_hash"]
        run.log(
            f"{done} operations, {passed_asserts}/{total_asserts} assertions passed ({pass_rate:.1f}%), "
            f"{step_errors} step errors, seed {seed}"
        )
        if total_asserts == 0:
            raise StepFailure(
                f"no assertion ran in {done} operations (seed {seed})",
                kind="fuzzy", data=data,
                hint="add assert or json_assert steps to the operations",
            )
        if pass_rate < config.success_threshold:
            raise StepFailure(
                f"pass rate {pass_rate:.1f}% is below the threshold of {config.success_threshold:g}% "
                f"(seed {seed}; replay with `seed: {seed}`)",
                kind="fuzzy",
                expected=f">= {config.success_threshold:g}%",
                actual=f"{pass_rate:.1f}%",
                data=data,
            )
        return data


def _cause(record: StepRecord) -> StepRecord:
    """The failed leaf under a failed step (a repeat's failure is its nested step's)."""
    for step in record.walk():
        if step.status is Status.FAILED and not step.children and step.error is not None:
            return step
    return record
