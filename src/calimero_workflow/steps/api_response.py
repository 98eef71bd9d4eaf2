"""``assert_api_response``: read a route of a node's API and assert on its JSON.

merobox's step of the same name, with its body assertions: ``where`` picks the
one element of any list in the body whose fields equal it, then ``match``,
``not_match``, ``contains``, ``not_contains``, ``present`` and ``absent`` check
dotted paths in it (digits index lists). ``retries`` is the number of reads:
the route is read again, ``interval`` seconds apart, until every assertion
holds. As in merobox, ``expected_failure`` is about the request alone: a body
that was read and missed an assertion fails the step either way.

The route stays on the node: ``path`` is a path of its API (checked by
:func:`~calimero_workflow.client.api_path_problem`), read with the node's own
credentials through its client.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from ..client import NodeError, api_path_problem
from ..errors import Problem, StepFailure
from ..validation import MAX_SECONDS
from .base import (
    BaseStep,
    NodeStepConfig,
    StepConfig,
    StepRun,
    ValidationContext,
    register_step,
)

#: The assertion keys, in the order they are checked (merobox's ASSERTIONS).
ASSERTIONS = ("match", "not_match", "contains", "not_contains", "present", "absent")
#: How much of a body a failure shows.
_SHOWN_CHARS = 2000


class _Missing:
    """No value at a path (a JSON ``null`` is a value)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def _api_path(value: str) -> str:
    problem = api_path_problem(value)
    if problem:
        raise ValueError(f"not a route of the node's API: {problem}")
    return value


def _dotted_path(value: str) -> str:
    if not value.strip():
        raise ValueError("an empty path names nothing in the body")
    return value


ApiPath = Annotated[str, AfterValidator(_api_path)]
DottedPath = Annotated[str, AfterValidator(_dotted_path)]


class AssertApiResponseConfig(NodeStepConfig):
    #: A route of the node's API, e.g. ``/admin-api/namespaces`` (a query may follow).
    path: ApiPath
    #: Field equalities picking one element out of any list in the body.
    where: dict[str, Any] | None = None
    #: Dotted paths and the values they must hold.
    match: dict[str, Any] | None = None
    #: Dotted paths and values they must not hold (the path must exist).
    not_match: dict[str, Any] | None = None
    #: Dotted paths to lists, and entries each must hold (in any order).
    contains: dict[str, list[Any]] | None = None
    #: Dotted paths to lists, and entries none may hold.
    not_contains: dict[str, list[Any]] | None = None
    #: Dotted paths that must exist, whatever their value.
    present: list[DottedPath] | None = None
    #: Dotted paths that must not exist.
    absent: list[DottedPath] | None = None
    #: No element may match ``where`` (and no other assertion applies).
    expect_no_match: bool | None = None
    #: Reads until the assertions hold (merobox's meaning); 1 by default.
    retries: int | None = Field(default=None, gt=0, le=10_000)
    #: Seconds between reads (1).
    interval: float | None = Field(default=None, gt=0, le=MAX_SECONDS)


def lookup(body: Any, path: str) -> Any:
    """The value at a dotted path, digits indexing lists; :data:`MISSING` if none."""
    current = body
    for segment in path.split("."):
        if isinstance(current, list) and segment.isdigit():
            index = int(segment)
            if index >= len(current):
                return MISSING
            current = current[index]
        elif isinstance(current, dict) and segment in current:
            current = current[segment]
        else:
            return MISSING
    return current


def _mappings_in_lists(value: Any):
    """Every mapping that is an item of a list, at any depth, in document order."""
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item
            yield from _mappings_in_lists(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _mappings_in_lists(item)


def select(body: Any, where: dict[str, Any] | None) -> Any:
    """The first list item whose fields equal ``where``; the body itself without one."""
    if not where:
        return body
    for candidate in _mappings_in_lists(body):
        if all(candidate.get(key) == value for key, value in where.items()):
            return candidate
    return MISSING


def misses(body: Any, config: AssertApiResponseConfig) -> list[str]:
    """What the body fails of the step's assertions; empty when it holds them all."""
    found: list[str] = []
    for path, expected in (config.match or {}).items():
        actual = lookup(body, path)
        if actual is MISSING:
            found.append(f"{path}: expected {_shown(expected)}, but the key is absent")
        elif actual != expected:
            found.append(f"{path}: expected {_shown(expected)}, got {_shown(actual)}")
    for path, unwanted in (config.not_match or {}).items():
        actual = lookup(body, path)
        if actual is MISSING:
            found.append(
                f"{path}: expected anything but {_shown(unwanted)}, but the key is absent"
            )
        elif actual == unwanted:
            found.append(f"{path}: expected anything but {_shown(unwanted)}, got it")
    for key, wanted in (("contains", True), ("not_contains", False)):
        for path, items in (getattr(config, key) or {}).items():
            actual = lookup(body, path)
            if actual is MISSING:
                found.append(
                    f"{path}: expected a list to search, but the key is absent"
                )
                continue
            if not isinstance(actual, list):
                found.append(f"{path}: expected a list to search, got {_shown(actual)}")
                continue
            for item in items:
                if (item in actual) != wanted:
                    verb = "contain" if wanted else "not contain"
                    found.append(
                        f"{path}: expected to {verb} {_shown(item)}, got {_shown(actual)}"
                    )
    for path in config.present or []:
        if lookup(body, path) is MISSING:
            found.append(f"{path}: expected the key to be present, it is absent")
    for path in config.absent or []:
        actual = lookup(body, path)
        if actual is not MISSING:
            found.append(
                f"{path}: expected the key to be absent, it is present with {_shown(actual)}"
            )
    return found


def _shown(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def assertion_count(config: StepConfig | dict[str, Any]) -> int:
    """How many assertions a step carries (``expect_no_match`` counts as one)."""
    get = (
        config.get
        if isinstance(config, dict)
        else lambda key: getattr(config, key, None)
    )
    return sum(len(get(key) or ()) for key in ASSERTIONS) + bool(get("expect_no_match"))


@register_step
class AssertApiResponse(BaseStep):
    type_name = "assert_api_response"
    Config = AssertApiResponseConfig
    summary = (
        "GET a route of a node's API and assert on the JSON it answers (merobox's "
        "`where`, `match`, `contains`, `present`…) → `body`, `element`, `reads`"
    )

    def check_raw(self, vctx: ValidationContext) -> list[Problem]:
        # On the keys as written: placeholders in the values change nothing here.
        problems = super().check_raw(vctx)
        raw = self.raw
        given = [key for key in ASSERTIONS if raw.get(key)]
        if raw.get("expect_no_match") is True:
            if not raw.get("where"):
                problems.append(
                    self.problem(
                        "expect_no_match needs `where` to name the element that must be absent",
                        key="expect_no_match",
                    )
                )
            if given:
                problems.append(
                    self.problem(
                        "expect_no_match says there is no element, so "
                        + ", ".join(given)
                        + " would have nothing to check",
                        key=given[0],
                        hint="split it into two steps, or drop expect_no_match",
                    )
                )
        elif not given and raw.get("expected_failure") is not True:
            problems.append(
                self.problem(
                    f"step {self.display_name!r} asserts nothing, so it could never fail",
                    hint="add one of "
                    + ", ".join(ASSERTIONS)
                    + " (or expect_no_match with where)",
                )
            )
        return problems

    def transient_retries(self, config: StepConfig) -> int:
        # `retries` counts the reads here, and execute() makes them itself.
        return 0

    async def execute(
        self, config: AssertApiResponseConfig, run: StepRun
    ) -> dict[str, Any]:
        client = run.ctx.client(config.node)
        reads = config.retries or 1
        interval = config.interval or 1.0
        route = f"GET {config.path} on {config.node}"
        for read in range(1, reads + 1):
            last = read == reads
            try:
                body = await client.get_json(config.path)
            except NodeError as exc:
                # The request's own failure: what expected_failure is about.
                if last or config.expected_failure or config.node in run.ctx.halted:
                    raise
                run.log(
                    f"read {read} of {reads}: {exc}; reading again in {interval:g} s"
                )
                await asyncio.sleep(interval)
                continue
            run.response = body
            element = select(body, config.where)
            failure = self._verdict(config, route, body, element)
            data = {
                "body": body,
                "element": None if element is MISSING else element,
                "reads": read,
            }
            if failure is None:
                count = assertion_count(config)
                run.log(f"{route}: {count} assertion(s) held on read {read}")
                return data
            if last:
                failure.data = data
                raise failure
            run.log(
                f"read {read} of {reads}: {failure.message}; reading again in {interval:g} s"
            )
            await asyncio.sleep(interval)
        raise AssertionError("unreachable: the last read returns or raises")

    def _verdict(
        self, config: AssertApiResponseConfig, route: str, body: Any, element: Any
    ) -> StepFailure | None:
        """Why the body fails the step, or None when it passes."""
        if config.expect_no_match:
            if element is MISSING:
                return None
            return self._miss(
                f"{route}: expected no element matching where {_shown(config.where)}",
                element,
                key="expect_no_match",
            )
        if element is MISSING:
            return self._miss(
                f"{route}: no element matches where {_shown(config.where)}",
                body,
                key="where",
            )
        found = misses(element, config)
        if not found:
            return None
        count = assertion_count(config)
        return self._miss(
            f"{route} missed {len(found)} of {count} assertion(s): " + "; ".join(found),
            element,
            key=next(k for k in ASSERTIONS if getattr(config, k)),
        )

    def _miss(self, message: str, shown: Any, *, key: str) -> StepFailure:
        # Not the request failing: expected_failure never excuses it (as in merobox).
        return StepFailure(
            message,
            kind="response_assertion",
            actual=_shown(shown, _SHOWN_CHARS),
            location=self.key_location(key),
        )
