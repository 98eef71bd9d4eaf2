"""Control flow: ``repeat`` and ``parallel`` run nested steps.

Nested steps are built and validated with the workflow, so a mistake inside
a loop is reported at load time at its own line. Any step type may be nested,
assertions included. A nested step's record is named by its path, e.g.
``repeat[2]/call set``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import Location, Problem, StepFailure
from ..results import Status, StepRecord
from ..validation import contains_deferred
from ..yamlsrc import LocatedDict
from .base import BaseStep, StepConfig, StepRun, ValidationContext, register_step


def _nested(parent: BaseStep, key: str, raw: Any, vctx: ValidationContext | None) -> tuple[list[BaseStep], list[Problem]]:
    from ..workflow import build_steps, validate_steps

    problems: list[Problem] = []
    where = parent.key_location(key)
    steps = build_steps(raw, file=parent.file, problems=problems, where=where, what=key)
    if vctx is not None:
        problems.extend(validate_steps(steps, vctx))
    return steps, problems


def _not_run(steps: list[BaseStep], prefix: str) -> list[StepRecord]:
    return [
        StepRecord(
            name=step.display_name, type=step.type_name,
            path=f"{prefix}/{step.display_name}", status=Status.SKIPPED,
            location=step.location,
        )
        for step in steps
    ]


async def run_sequence(
    steps: list[BaseStep], run: StepRun, prefix: str, variables: dict[str, Any],
    *, cancelled_into: list[StepRecord] | None = None,
) -> tuple[list[StepRecord], bool]:
    """Run steps in order under ``prefix``; stop at the first blocking failure.

    When cancelled, what ran, the step that was cut short and the steps not
    reached are added to ``cancelled_into`` (default: ``run.children``)
    before the cancellation goes on.
    """
    records: list[StepRecord] = []
    ok = True
    for i, step in enumerate(steps):
        # The seeded source and the reporting switch of a fuzz reach every depth.
        child = StepRun(
            ctx=run.ctx, path=f"{prefix}/{step.display_name}", variables=variables,
            rng=run.rng, report=run.report,
        )
        try:
            record = await step.run(child)
        except asyncio.CancelledError:
            cut = [child.record] if child.record else []
            rest = _not_run(steps[i + 1:], prefix)
            sink = run.children if cancelled_into is None else cancelled_into
            sink.extend(records + cut + rest)
            raise
        records.append(record)
        if record.status is Status.FAILED:
            ok = False
            if not record.non_blocking:
                records.extend(_not_run(steps[i + 1:], prefix))
                break
    return records, ok


# -- repeat ----------------------------------------------------------------------------


class RepeatConfig(StepConfig):
    count: int = Field(ge=1, le=1_000_000)
    steps: list[Any]
    #: Stop at the first failed iteration (default), or run them all.
    stop_on_failure: bool = True


@register_step
class Repeat(BaseStep):
    type_name = "repeat"
    Config = RepeatConfig
    deferred_keys = frozenset({"steps"})
    summary = (
        "run nested `steps` `count` times with ${iteration} (1-based), ${iteration_index}, "
        "${total_iterations} → `iterations` (each iteration's named results)"
    )

    def __init__(self, raw: LocatedDict, *, file, index: int):
        super().__init__(raw, file=file, index=index)
        self.children: list[BaseStep] = []

    def validate(self, vctx: ValidationContext) -> list[Problem]:
        problems = super().validate(vctx)
        self.children, found = _nested(self, "steps", self.raw.get("steps"), vctx)
        problems.extend(found)
        if isinstance(self.raw.get("steps"), list) and not self.raw.get("steps"):
            problems.append(self.problem("`steps` of a repeat is empty", key="steps"))
        return problems

    async def execute(self, config: RepeatConfig, run: StepRun) -> dict[str, Any]:
        iterations: list[dict[str, Any]] = []
        failed_iterations: list[int] = []
        started = time.perf_counter()
        for i in range(config.count):
            loop = {
                "iteration": i + 1,
                "iteration_index": i,
                "iteration_zero_based": i,
                "iteration_one_based": i + 1,
                "total_iterations": config.count,
                "step_count": len(self.children),
            }
            variables = {**run.variables, **loop}
            # `outputs: {current_iteration: iteration}` renames a loop
            # variable for the nested steps of each iteration, as in merobox.
            self.capture(config, loop, run, lenient=True)
            records, ok = await run_sequence(
                self.children, run, f"{run.path}[{i + 1}]", variables
            )
            run.children.extend(records)
            iterations.append(
                {r.name: r.data for r, s in zip(records, self.children, strict=False) if s.explicit_name and r.status is Status.PASSED}
            )
            if not ok:
                failed_iterations.append(i + 1)
                if config.stop_on_failure:
                    break
        elapsed = time.perf_counter() - started
        ran = len(iterations)
        data = {
            "iterations": iterations,
            # The last iteration's variables, so `outputs:` can rename them.
            "iteration": ran,
            "iteration_index": ran - 1,
            "total_iterations": config.count,
            "step_count": len(self.children),
            "completed_iterations": ran,
            "failed_iterations": failed_iterations,
            # merobox's timing names, rounded as merobox rounds them.
            **_durations("duration", elapsed),
            "throughput_ops_per_sec": round(ran / elapsed, 2) if elapsed > 0 else 0.0,
            "avg_time_per_op_ms": round(elapsed * 1000 / ran, 3) if elapsed > 0 and ran else 0.0,
        }
        if failed_iterations:
            first = failed_iterations[0]
            raise StepFailure(
                f"iteration {first} of {config.count} failed"
                + (f" (and {len(failed_iterations) - 1} more)" if len(failed_iterations) > 1 else ""),
                kind="nested",
                location=self.location,
                data=data,
            )
        return data


# -- parallel ----------------------------------------------------------------------------


class GroupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    steps: list[Any]
    #: Strict: a count of "3" or 3.0 is refused when the file loads rather
    #: than read as something else.
    count: int = Field(default=1, ge=1, le=100_000, strict=True)

    @field_validator("count", mode="before")
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and contains_deferred(value):
                return value  # reported apart, with its own hint
            raise ValueError("a group's `count` must be a whole number written out, e.g. `count: 3`")
        return value


class ParallelConfig(StepConfig):
    groups: list[GroupConfig] = Field(min_length=1)
    failure_mode: Literal["fail-slow", "fail-fast", "continue-on-error"] = "fail-slow"
    #: merobox's load shapes; only bursts exist, so the others are refused.
    mode: Literal["burst"] = "burst"


@register_step
class Parallel(BaseStep):
    type_name = "parallel"
    Config = ParallelConfig
    deferred_keys = frozenset({"groups"})
    summary = (
        "run `groups` of steps concurrently (steps inside a group in order); `failure_mode`: "
        "fail-slow (default), fail-fast, continue-on-error"
    )

    def __init__(self, raw: LocatedDict, *, file, index: int):
        super().__init__(raw, file=file, index=index)
        self.groups: list[tuple[str, list[BaseStep], int]] = []
        #: The groups the file names (the others are "Group <n>", as in merobox).
        self.named: set[str] = set()

    def validate(self, vctx: ValidationContext) -> list[Problem]:
        problems = super().validate(vctx)
        groups = self.raw.get("groups")
        if not isinstance(groups, list):
            return problems
        for gi, group in enumerate(groups):
            if not isinstance(group, dict):
                continue
            named = isinstance(group.get("name"), str)
            # merobox's name for an unnamed group (its ${group_name}), counted from 1
            name = group["name"] if named else f"Group {gi + 1}"
            if named:
                self.named.add(name)
            # A group without `steps` is reported by the model, once.
            steps, found = (
                _nested(self, "groups", group.get("steps"), vctx)
                if group.get("steps") is not None
                else ([], [])
            )
            problems.extend(found)
            count = group.get("count", 1)
            line, col = groups.item_pos(gi) if hasattr(groups, "item_pos") else (self.location.line, 1)
            if isinstance(group.get("steps"), list) and not group["steps"]:
                problems.append(
                    Problem(
                        f"group {name!r}: `steps` is empty",
                        Location(self.file, line, col),
                        hint="give the group its steps, or remove the group",
                    )
                )
            if isinstance(count, str) and contains_deferred(count):
                problems.append(
                    Problem(
                        f"group {name!r}: `count` must be a number written out (got {count!r})",
                        Location(self.file, line, col),
                        hint="group counts are fixed when the workflow loads; use ${VAR} "
                        "from the environment, or a `repeat` inside the group",
                    )
                )
            if any(name == other for other, _, _ in self.groups):
                problems.append(
                    Problem(
                        f"two groups of this parallel step are named {name!r}",
                        Location(self.file, line, col),
                        hint="give each group its own `name` (results and reports are kept per group)",
                    )
                )
            self.groups.append((name, steps, count if isinstance(count, int) else 1))
        return problems

    async def execute(self, config: ParallelConfig, run: StepRun) -> dict[str, Any]:
        started = time.perf_counter()
        durations: dict[str, float] = {}
        outcome: dict[str, bool] = {}
        records: dict[str, list[StepRecord]] = {}

        async def run_group(index: int, name: str, steps: list[BaseStep], count: int) -> bool:
            group_started = time.perf_counter()
            all_ok = True
            records[name] = []
            for rep in range(count):
                prefix = f"{run.path}/{name}" + (f"[{rep + 1}]" if count > 1 else "")
                variables = {
                    **run.variables,
                    "group_index": index,
                    "group_name": name,
                    "iteration": rep + 1,
                    "iteration_index": rep,
                }
                # cancelled, the group's records stay with the group, so the
                # report lists the groups in YAML order, not finishing order
                recs, ok = await run_sequence(
                    steps, run, prefix, variables, cancelled_into=records[name]
                )
                records[name].extend(recs)
                if not ok:
                    all_ok = False
                    break
            durations[name] = time.perf_counter() - group_started
            outcome[name] = all_ok
            if not all_ok and config.failure_mode == "fail-fast":
                raise _GroupFailed(name)
            return all_ok

        tasks = [
            asyncio.create_task(run_group(i, name, steps, count))
            for i, (name, steps, count) in enumerate(self.groups)
        ]
        cancelled: list[str] = []
        try:
            if config.failure_mode == "fail-fast":
                done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
                cancelled = [self.groups[tasks.index(t)][0] for t in pending]
            else:
                await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            # the run is cancelled: let the groups record what they cut short
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._collect(run, records)
            raise
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
        passed = [n for n, ok in outcome.items() if ok]
        failed = [n for n, ok in outcome.items() if not ok]
        if cancelled:
            why = f"group {', '.join(map(repr, failed))} failed and failure_mode is fail-fast"
            for name in cancelled:
                for record in records.get(name, []):
                    for cut in record.walk():
                        if cut.error is not None and cut.error.kind == "cancelled":
                            cut.error.message = why
        self._collect(run, records)
        overall = time.perf_counter() - started
        data = {
            "group_count": len(self.groups),
            "passed_groups": passed,
            "failed_groups": failed,
            "cancelled_groups": cancelled,
            "durations": {k: round(v, 6) for k, v in durations.items()},
            "duration_seconds": round(overall, 6),
            # merobox's names: overall, per group by index (0-based) and by name.
            **_durations("overall_duration", overall),
            "parallel_success_count": len(passed),
            "parallel_failure_count": len(failed) + len(cancelled),
        }
        for index, (name, _, _) in enumerate(self.groups):
            if name in durations:
                # as merobox: by index from 0, and by name for a group the file names
                data.update(_durations(f"group_{index}_duration", durations[name]))
                if name in self.named:
                    data.update(_durations(f"{name}_duration", durations[name]))
        if config.failure_mode == "continue-on-error":
            if passed:
                return data
            raise StepFailure("every group failed", kind="nested", data=data)
        if failed or cancelled:
            raise StepFailure(
                f"group(s) failed: {', '.join(failed)}"
                + (f"; cancelled: {', '.join(cancelled)}" if cancelled else ""),
                kind="nested",
                data=data,
            )
        return data

    def _collect(self, run: StepRun, records: dict[str, list[StepRecord]]) -> None:
        """The groups' records as the parallel step's children, in YAML order."""
        for name, steps, _ in self.groups:
            run.children.extend(records.get(name) or _not_run(steps, f"{run.path}/{name}"))


class _GroupFailed(Exception):
    pass


def _durations(prefix: str, seconds: float) -> dict[str, Any]:
    """``<prefix>_seconds``, ``_ms`` and ``_ns``, rounded as merobox rounds them."""
    return {
        f"{prefix}_seconds": round(seconds, 6),
        f"{prefix}_ms": round(seconds * 1000, 3),
        f"{prefix}_ns": int(seconds * 1_000_000_000),
    }
