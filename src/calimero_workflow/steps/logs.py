"""``assert_log_present`` and ``assert_log_absent``: checks on what nodes logged.

merobox's log gates: every pattern must match (``min_matches`` times across
the nodes together), or none may. Embedded nodes keep their log lines in
memory; Docker nodes are read from the container's log, as the node wrote it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from pydantic import Field, field_validator

from ..errors import Problem, StepFailure
from ..validation import contains_deferred
from .base import BaseStep, StepConfig, StepRun, ValidationContext, register_step
from .regexes import (
    Deadline,
    compile_pattern,
    in_daemon_thread,
    match_limit,
    pattern_problem,
    too_slow,
)

#: How much of a matching line results and messages show (merobox's cut).
_SHOWN_CHARS = 200
#: Matches kept in the results of a failed ``assert_log_absent``.
_KEPT_MATCHES = 50


class LogAssertConfig(StepConfig):
    #: Node names; empty (or left out): every local node that runs.
    nodes: list[str] | str = Field(default_factory=list)
    patterns: list[str] = Field(min_length=1)
    #: Patterns are Python regular expressions (searched in each line), not text.
    regex: bool = False
    #: Only the last lines of each node's log.
    tail_lines: int | None = Field(default=None, gt=0)
    case_sensitive: bool = True

    @field_validator("patterns")
    @classmethod
    def _no_empty_pattern(cls, value: list[str]) -> list[str]:
        for i, pattern in enumerate(value):
            if pattern == "":
                raise ValueError(f"patterns[{i}] is empty, and would match every line")
        return value


class LogPresentConfig(LogAssertConfig):
    #: Hits each pattern needs, counted over all the nodes.
    min_matches: int = Field(default=1, ge=1)


#: Whether a line matches, given the scan's deadline.
_Matcher = Callable[[str, Deadline], bool]


def _search(compiled: Any, pattern: str, line: str, deadline: Deadline) -> bool:
    try:
        return compiled.search(line, timeout=deadline.remaining(), concurrent=True) is not None
    except TimeoutError:
        raise too_slow(pattern, deadline.limit, line) from None


def _shown(line: str) -> str:
    return line if len(line) <= _SHOWN_CHARS else line[: _SHOWN_CHARS - 3] + "..."


class _LogStep(BaseStep):
    def check(self, config: LogAssertConfig, vctx: ValidationContext) -> list[Problem]:
        problems = super().check(config, vctx)
        if config.regex:
            for i, pattern in enumerate(config.patterns):
                if contains_deferred(pattern):
                    continue
                problem = pattern_problem(pattern, ignore_case=not config.case_sensitive)
                if problem:
                    problems.append(self.problem(f"patterns[{i}]: {problem}", key="patterns"))
        return problems

    def check_raw(self, vctx: ValidationContext) -> list[Problem]:
        problems = super().check_raw(vctx)
        raw = self.raw.get("nodes")
        for name in [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []:
            if not isinstance(name, str) or "${" in name or "{{" in name:
                continue
            if name in vctx.remote_node_names:
                problems.append(
                    self.problem(
                        f"{self.type_name} cannot read the log of remote node {name!r}", key="nodes"
                    )
                )
            elif vctx.node_names is not None and name not in vctx.node_names:
                problems.append(self.unknown_node_problem(name, "nodes", vctx))
        return problems

    def _matchers(self, config: LogAssertConfig) -> list[tuple[str, _Matcher]]:
        """One test per pattern (a repeated pattern counts once), run in the
        scan's daemon thread: a regular expression bounded per line."""
        matchers: list[tuple[str, _Matcher]] = []
        for pattern in dict.fromkeys(config.patterns):
            if config.regex:
                problem = pattern_problem(pattern, ignore_case=not config.case_sensitive)
                if problem:
                    raise StepFailure(
                        f"patterns: {problem}", kind="invalid", location=self.key_location("patterns")
                    )
                compiled = compile_pattern(pattern, ignore_case=not config.case_sensitive)
                matchers.append((pattern, functools.partial(_search, compiled, pattern)))
            elif config.case_sensitive:
                matchers.append((pattern, lambda line, _, p=pattern: p in line))
            else:
                needle = pattern.lower()
                matchers.append((pattern, lambda line, _, p=needle: p in line.lower()))
        return matchers

    async def _scan(
        self, config: LogAssertConfig, matchers: list[tuple[str, _Matcher]],
        logs: dict[str, list[str]],
    ) -> list[tuple[str, int, str, str]]:
        """Every ``(node, line number, pattern, line)`` that matches, in log order.

        The scan runs in a daemon thread, each regular expression bounded per
        line like the ``assert`` step's: a pattern that backtracks without end
        fails the step instead of hanging the run, and the step's timeout and
        Ctrl-C stop it at once.
        """

        def scan(deadline: Deadline) -> list[tuple[str, int, str, str]]:
            found = []
            for node, lines in logs.items():
                for number, line in enumerate(lines, start=1):
                    for pattern, matches in matchers:
                        if matches(line, deadline):
                            found.append((node, number, pattern, line))
            return found

        try:
            return await in_daemon_thread(scan, match_limit(config.timeout))
        except StepFailure as exc:
            exc.location = self.key_location("patterns")
            raise

    async def _logs(self, config: LogAssertConfig, run: StepRun) -> dict[str, list[str]]:
        """Each target node's log lines; fails when there is nothing to read."""
        ctx = run.ctx
        if ctx.backend is None:
            raise StepFailure(f"{self.type_name} needs local nodes", location=self.location)
        wanted = [config.nodes] if isinstance(config.nodes, str) else list(dict.fromkeys(config.nodes))
        for name in wanted:
            if ctx.node(name).kind == "remote":
                raise StepFailure(
                    f"{self.type_name} cannot read the log of remote node {name!r}",
                    location=self.key_location("nodes"),
                )
        if not wanted:
            for name, ref in ctx.nodes.items():
                if ref.kind != "remote" and (await ctx.backend.node_state(name)).running:
                    wanted.append(name)
        if not wanted:
            raise StepFailure(
                f"{self.type_name}: no node to read (no local node runs)",
                location=self.key_location("nodes"),
                hint="name the nodes in `nodes:`",
            )
        logs: dict[str, list[str]] = {}
        for name in wanted:
            text = await ctx.backend.read_logs(name, tail=config.tail_lines)
            if text is not None:
                logs[name] = text.splitlines()
        if not logs:
            raise StepFailure(
                f"{self.type_name}: the {ctx.backend.name} backend has no log of "
                + ", ".join(wanted),
                location=self.location,
            )
        return logs


@register_step
class AssertLogAbsent(_LogStep):
    type_name = "assert_log_absent"
    Config = LogAssertConfig
    summary = "fail when any of `patterns` appears in the nodes' logs → `matches`"

    async def execute(self, config: LogAssertConfig, run: StepRun) -> dict[str, Any]:
        matchers = self._matchers(config)
        logs = await self._logs(config, run)
        matches = [
            {"node": node, "line": number, "pattern": pattern, "text": _shown(line)}
            for node, number, pattern, line in await self._scan(config, matchers, logs)
        ]
        data = {
            "nodes": list(logs),
            "patterns": [p for p, _ in matchers],
            "matches": matches[:_KEPT_MATCHES],
            "match_count": len(matches),
        }
        for match in matches[:20]:
            run.log(f"{match['node']} line {match['line']}: {match['pattern']!r} -> {match['text']}")
        if matches:
            first = matches[0]
            raise StepFailure(
                f"{len(matches)} log line(s) match a pattern that must be absent; the first: "
                f"node {first['node']!r} line {first['line']} matches {first['pattern']!r}",
                kind="assertion",
                expected="no matching line",
                actual=first["text"],
                location=self.location,
                data=data,
            )
        run.log(f"none of {len(matchers)} pattern(s) in the logs of {len(logs)} node(s)")
        return data


@register_step
class AssertLogPresent(_LogStep):
    type_name = "assert_log_present"
    Config = LogPresentConfig
    summary = (
        "fail unless each of `patterns` appears `min_matches` times in the nodes' logs "
        "together → `hits`, `first_matches`"
    )

    async def execute(self, config: LogPresentConfig, run: StepRun) -> dict[str, Any]:
        matchers = self._matchers(config)
        logs = await self._logs(config, run)
        hits = {pattern: 0 for pattern, _ in matchers}
        first: dict[str, dict[str, Any]] = {}
        for node, number, pattern, line in await self._scan(config, matchers, logs):
            hits[pattern] += 1
            first.setdefault(pattern, {"node": node, "line": number, "text": _shown(line)})
        data = {"nodes": list(logs), "hits": hits, "first_matches": first}
        for pattern, match in first.items():
            run.log(
                f"{pattern!r} matched {hits[pattern]} time(s); first: {match['node']} "
                f"line {match['line']} -> {match['text']}"
            )
        missing = [p for p, n in hits.items() if n < config.min_matches]
        if missing:
            raise StepFailure(
                "; ".join(
                    f"pattern {p!r} had {hits[p]} hit(s), expected at least {config.min_matches}"
                    for p in missing
                ),
                kind="assertion",
                expected={p: f">= {config.min_matches}" for p in missing},
                actual={p: hits[p] for p in missing},
                location=self.location,
                data=data,
            )
        return data
