"""``assert``: one check on a value, or a list of merobox-style statements.

Statements are parsed before placeholders are resolved, so an operand that is
exactly one placeholder keeps its type (``equal(${results.len.output}, 3)``
compares numbers), and commas inside quotes, brackets or placeholders never
split an argument.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import Location, PlaceholderError, Problem, StepFailure
from ..placeholders import format_embedded
from ..validation import contains_deferred
from ..yamlsrc import LocatedList
from .base import BaseStep, StepConfig, StepRun, ValidationContext, register_step
from .node_steps import outputs_equal
from .regexes import match_limit, pattern_problem, search

_MISSING: Any = object()

CHECKS = ("equals", "not_equals", "contains", "not_contains", "matches", "greater_than",
          "less_than", "greater_or_equal", "less_or_equal", "is_set", "is_empty")


class StatementSpec(BaseModel):
    """A statement with its own failure message (merobox's mapping form)."""

    model_config = ConfigDict(extra="forbid")
    statement: str
    message: str | None = None


def _statement_text(item: str | StatementSpec) -> str:
    return item if isinstance(item, str) else item.statement


def _statement_message(item: str | StatementSpec) -> str | None:
    return None if isinstance(item, str) else item.message


class AssertConfig(StepConfig):
    actual: Any = Field(default=_MISSING)
    equals: Any = Field(default=_MISSING)
    not_equals: Any = Field(default=_MISSING)
    contains: Any = Field(default=_MISSING)
    not_contains: Any = Field(default=_MISSING)
    matches: str | None = None
    # int first: `less_than: 3` stays 3 in messages, not 3.0.
    greater_than: int | float | None = None
    less_than: int | float | None = None
    greater_or_equal: int | float | None = None
    less_or_equal: int | float | None = None
    is_set: bool | None = None
    is_empty: bool | None = None
    statements: list[str | StatementSpec] | None = None
    #: Record a failure without stopping the workflow (still reported failed).
    non_blocking: bool = False
    message: str | None = None

    @field_validator("matches")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        if value is not None and not contains_deferred(value):
            problem = pattern_problem(value)
            if problem:
                raise ValueError(problem)
        return value

    def given_checks(self) -> list[str]:
        out = []
        for name in CHECKS:
            value = getattr(self, name)
            if value is not _MISSING and value is not None:
                out.append(name)
        return out

    @model_validator(mode="after")
    def _one_form(self) -> AssertConfig:
        checks = self.given_checks()
        if self.statements is not None:
            if self.actual is not _MISSING or checks:
                raise ValueError("use either `statements:` or `actual:` with one check, not both")
            if not self.statements:
                raise ValueError("`statements:` is empty")
            return self
        if self.actual is _MISSING:
            raise ValueError(
                "an assert needs `actual:` with one check (" + ", ".join(CHECKS) + ") or `statements:`"
            )
        if len(checks) != 1:
            raise ValueError(
                f"give exactly one check next to `actual:` (found {len(checks)}: "
                + (", ".join(checks) or "none") + "); allowed: " + ", ".join(CHECKS)
            )
        return self


# -- statement grammar ---------------------------------------------------------------

_FUNCS = {
    "equal": 2, "equals": 2, "not_equal": 2, "not_equals": 2,
    "contains": 2, "not_contains": 2, "regex": 2, "matches": 2,
    "is_set": 1, "is_empty": 1, "exists": 1, "empty": 1,
    "gt": 2, "gte": 2, "lt": 2, "lte": 2,
}
_INFIX = ("==", "!=", ">=", "<=", ">", "<")
_CALL_RE = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.S)


class StatementError(ValueError):
    pass


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside quotes, brackets, braces, parens and placeholders."""
    parts: list[str] = []
    depth = 0
    quote: str | None = None
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise StatementError(f"unbalanced {ch!r}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quote:
        raise StatementError(f"unterminated {quote} quote")
    if depth:
        raise StatementError("unbalanced brackets")
    parts.append(text[start:])
    return parts


def _find_infix(text: str) -> tuple[str, str, str] | None:
    depth = 0
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            for op in _INFIX:
                if text.startswith(op, i):
                    return text[:i], op, text[i + len(op):]
        i += 1
    return None


@dataclass
class Statement:
    text: str
    op: str
    operands: list[str]


def parse_statement(text: str) -> Statement:
    call = _CALL_RE.match(text)
    if call and call.group(1).lower() in _FUNCS:
        name = call.group(1).lower()
        args = split_top_level(call.group(2))
        if len(args) == 1 and not args[0].strip():
            args = []
        want = _FUNCS[name]
        if len(args) != want:
            raise StatementError(f"{name}() takes {want} argument(s), got {len(args)}")
        return Statement(text, name, [a.strip() for a in args])
    if call:
        raise StatementError(
            f"unknown function {call.group(1)!r}; known: " + ", ".join(sorted(_FUNCS))
        )
    infix = _find_infix(text)
    if infix:
        left, op, right = infix
        if not left.strip() or not right.strip():
            raise StatementError(f"{op!r} needs a value on each side")
        return Statement(text, op, [left.strip(), right.strip()])
    raise StatementError(
        "not a statement: use a function such as equal(a, b), contains(a, b), regex(a, p), "
        "is_set(a), or a comparison such as `a >= b`"
    )


#: Numbers written as text: digits, a decimal part, an exponent. Not Python's
#: wider float syntax (``1_000``, ``inf``, ``nan`` stay text).
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER_TEXT = re.compile(r"[+-]?\d+")


def _as_number(value: Any) -> int | float | None:
    """``value`` as a number: ints stay ints, so that they compare exactly
    (a u64 or a nanosecond timestamp is beyond a float's 53 bits)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INTEGER_TEXT.fullmatch(text):
            try:
                return int(text)
            except ValueError:  # more digits than Python converts: text
                return None
        if _NUMBER_TEXT.fullmatch(text):
            return float(text)
    return None


def loose_equal(a: Any, b: Any) -> bool:
    if outputs_equal(a, b):
        return True
    na, nb = _as_number(a), _as_number(b)
    return na is not None and nb is not None and na == nb


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, str):
        return (item if isinstance(item, str) else json.dumps(item)) in container
    if isinstance(container, dict):
        # Any part of its JSON text, keys included: merobox compared the text
        # of a captured response (`contains({{result}}, value)`).
        text = json.dumps(container, ensure_ascii=False)
        return (item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)) in text
    if isinstance(container, list):
        return any(loose_equal(e, item) for e in container)
    return False


def _is_set(value: Any) -> bool:
    return value not in (None, "", [], {})


def _ordered(op: str, a: Any, b: Any) -> bool:
    na, nb = _as_number(a), _as_number(b)
    if na is not None and nb is not None:
        left, right = na, nb
    elif isinstance(a, str) and isinstance(b, str):
        left, right = a, b  # type: ignore[assignment]
    else:
        raise StepFailure(
            f"cannot compare {a!r} {op} {b!r}: need two numbers or two strings", kind="assertion"
        )
    return {
        ">": left > right, ">=": left >= right, "<": left < right, "<=": left <= right,
        "gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right,
    }[op]


_REGEX_OPS = frozenset({"regex", "matches"})


def _equal_as_merobox(a: Any, b: Any) -> bool:
    """merobox compares `a == b` statements as text when they are not both
    numbers: `{{x}} == None` holds when x is null (``str(None) == "None"``)."""
    return str(a) == str(b)


def evaluate(op: str, values: list[Any]) -> bool:
    """Whether a statement holds (regular expressions: see :func:`evaluate_async`)."""
    if op in ("equal", "equals"):
        return loose_equal(values[0], values[1])
    if op == "==":
        return loose_equal(values[0], values[1]) or _equal_as_merobox(values[0], values[1])
    if op in ("not_equal", "not_equals"):
        return not loose_equal(values[0], values[1])
    if op == "!=":
        return not (loose_equal(values[0], values[1]) or _equal_as_merobox(values[0], values[1]))
    if op == "contains":
        return _contains(values[0], values[1])
    if op == "not_contains":
        return not _contains(values[0], values[1])
    if op in _REGEX_OPS:
        raise ValueError("regular expressions are evaluated by evaluate_async")
    if op in ("is_set", "exists"):
        return _is_set(values[0])
    if op in ("is_empty", "empty"):
        return not _is_set(values[0])
    return _ordered(op, values[0], values[1])


async def evaluate_async(op: str, values: list[Any], limit: float) -> bool:
    """:func:`evaluate`, with regular expressions bounded by ``limit`` seconds."""
    if op in _REGEX_OPS:
        return await search(str(values[1]), values[0], limit)
    return evaluate(op, values)


#: Escapes a quoted operand may hold (the splitter skips them too); others,
#: such as ``\d`` in a pattern, are kept as written.
_QUOTED_ESCAPE_RE = re.compile(r"""\\(["'\\])""")


def _pattern_literal(text: str) -> Any:
    """A pattern operand as the statement reads it (quoted: its escapes undone)."""
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
        return _QUOTED_ESCAPE_RE.sub(lambda m: m.group(1), stripped[1:-1])
    return _literal(stripped)


def _literal(text: str) -> Any:
    """A bare operand: JSON when it parses (numbers, true, lists…), else text."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return json.loads(text)
    except ValueError:
        return text


@register_step
class Assert(BaseStep):
    type_name = "assert"
    Config = AssertConfig
    deferred_keys = frozenset({"statements"})
    summary = (
        "check a value: `actual` with one of " + ", ".join(CHECKS)
        + "; or `statements:` like `equal(a, b)`, `a >= b`"
    )

    def check(self, config: AssertConfig, vctx: ValidationContext) -> list[Problem]:
        problems = super().check(config, vctx)
        for i, item in enumerate(config.statements or []):
            text = _statement_text(item)
            try:
                stmt = parse_statement(text)
            except StatementError as exc:
                problems.append(Problem(f"statement {text!r}: {exc}", self._statement_location(i)))
                continue
            pattern = stmt.operands[1] if stmt.op in _REGEX_OPS else None
            if pattern is not None and not contains_deferred(pattern):
                problem = pattern_problem(str(_pattern_literal(pattern)))
                if problem:
                    problems.append(Problem(f"statement {text!r}: {problem}", self._statement_location(i)))
        return problems

    def _statement_location(self, index: int) -> Location:
        items = self.raw.get("statements")
        if isinstance(items, LocatedList):
            return Location(self.file, *items.item_pos(index))
        return self.key_location("statements")

    def _operand(self, text: str, run: StepRun) -> Any:
        """A quoted operand is text (``\\"``, ``\\'`` and ``\\\\`` in it are the
        characters themselves); a lone placeholder keeps its value's type;
        text holding placeholders stays text; anything else is a literal."""
        stripped = text.strip()
        resolver = run.ctx.resolver
        if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
            inner = _QUOTED_ESCAPE_RE.sub(lambda m: m.group(1), stripped[1:-1])
            return format_embedded(resolver.resolve(inner, run.scope()))
        if resolver.references(stripped) or "$${" in stripped:
            return resolver.resolve(stripped, run.scope())
        return _literal(stripped)

    async def execute(self, config: AssertConfig, run: StepRun) -> dict[str, Any]:
        if config.statements is None:
            return await self._single(config)
        outcomes = []
        failures = []
        for i, item in enumerate(config.statements):
            text = _statement_text(item)
            location = self._statement_location(i)
            try:
                stmt = parse_statement(text)
            except StatementError as exc:
                raise StepFailure(f"statement {text!r}: {exc}", kind="invalid", location=location) from None
            try:
                values = [self._operand(o, run) for o in stmt.operands]
            except StepFailure as exc:
                exc.location = location
                raise
            try:
                ok = await evaluate_async(stmt.op, values, match_limit(config.timeout))
            except StepFailure as exc:
                exc.location = exc.location or location
                raise
            outcome = {"statement": text, "passed": ok, "values": values, "line": location.line}
            outcomes.append(outcome)
            run.log(f"{'PASS' if ok else 'FAIL'} {text}  → {json.dumps(values, ensure_ascii=False, default=str)}")
            if not ok:
                failures.append((stmt, values, location, _statement_message(item)))
        data = {"statements": outcomes, "passed": len(outcomes) - len(failures), "failed": len(failures)}
        if failures:
            stmt, values, location, own_message = failures[0]
            expected, actual = _expected_actual(stmt.op, values)
            message = own_message or config.message
            raise StepFailure(
                (message + ": " if message else "")
                + _headline([f[2].line for f in failures], len(outcomes), stmt.text),
                kind="assertion",
                expected=expected,
                actual=actual,
                location=location,
                data=data,
            )
        return data

    async def _single(self, config: AssertConfig) -> dict[str, Any]:
        check = config.given_checks()[0]
        expected = getattr(config, check)
        actual = config.actual
        op = {
            "equals": "equal", "not_equals": "not_equal", "contains": "contains",
            "not_contains": "not_contains", "matches": "regex", "greater_than": ">",
            "less_than": "<", "greater_or_equal": ">=", "less_or_equal": "<=",
        }.get(check)
        if check in ("is_set", "is_empty"):
            ok = _is_set(actual) == bool(expected) if check == "is_set" else (not _is_set(actual)) == bool(expected)
        else:
            try:
                ok = await evaluate_async(op, [actual, expected], match_limit(config.timeout))
            except StepFailure as exc:
                exc.location = self.key_location(check)
                raise
        data = {"check": check, "actual": actual, "expected": expected, "passed": ok}
        if not ok:
            text = {
                "equals": "to equal", "not_equals": "not to equal", "contains": "to contain",
                "not_contains": "not to contain", "matches": "to match", "greater_than": "to be greater than",
                "less_than": "to be less than", "greater_or_equal": "to be at least",
                "less_or_equal": "to be at most", "is_set": "to be set" if expected else "to be unset",
                "is_empty": "to be empty" if expected else "to be non-empty",
            }[check]
            shown = "" if check in ("is_set", "is_empty") else f" {json.dumps(expected, default=str, ensure_ascii=False)}"
            raise StepFailure(
                (config.message + ": " if config.message else "")
                + f"expected {json.dumps(actual, default=str, ensure_ascii=False)} {text}{shown}",
                kind="assertion",
                expected=expected if op in ("equal", None) else _expected_actual(op, [actual, expected])[0],
                actual=actual,
                location=self.key_location(check),
                data=data,
            )
        return data

    async def run(self, run: StepRun):  # type: ignore[override]
        record = await super().run(run)
        cfg = self.static_config
        non_blocking = bool(self.raw.get("non_blocking")) if cfg is None else cfg.non_blocking  # type: ignore[attr-defined]
        record.non_blocking = non_blocking and record.error is not None
        return record


#: How an expectation reads with its operator: `> 5`, `contains "x"`.
_OP_TEXT = {
    "==": None, "equal": None, "equals": None,
    "!=": "!=", "not_equal": "!=", "not_equals": "!=",
    ">": ">", "gt": ">", ">=": ">=", "gte": ">=", "<": "<", "lt": "<", "<=": "<=", "lte": "<=",
    "contains": "contains", "not_contains": "not contains", "regex": "matches", "matches": "matches",
}


def _expected_actual(op: str, values: list[Any]) -> tuple[Any, Any]:
    """The expectation of a failed statement, with its operator, and the value."""
    if len(values) == 1:
        return ("set" if op in ("is_set", "exists") else "empty"), values[0]
    word = _OP_TEXT.get(op)
    if word is None:
        return values[1], values[0]
    other = values[1]
    shown = json.dumps(other, ensure_ascii=False, default=str)
    return f"{word} {shown}", values[0]


def _headline(lines: list[int], total: int, first: str) -> str:
    """The message of a failed list of statements: how many, where, the first."""
    if len(lines) == 1:
        return f"assertion failed: {first}"
    where = ", ".join(map(str, lines))
    return f"{len(lines)} of {total} statements failed (lines {where}); the first: {first}"


# -- json_assert -----------------------------------------------------------------------

_JSON_FUNCS = {
    "json_equal": "equal", "equal": "equal",
    "json_not_equal": "not_equal", "not_equal": "not_equal",
    "json_subset": "subset", "subset": "subset",
}


class JsonAssertConfig(StepConfig):
    statements: list[str | StatementSpec] = Field(min_length=1)
    non_blocking: bool = False
    message: str | None = None


def json_subset(part: Any, whole: Any) -> bool:
    """Whether ``part`` is contained in ``whole``: mappings recursively,
    lists element-wise in any order, scalars by equality."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            k in whole and json_subset(v, whole[k]) for k, v in part.items()
        )
    if isinstance(part, list):
        return isinstance(whole, list) and all(
            any(json_subset(p, w) for w in whole) for p in part
        )
    return outputs_equal(part, whole)


@register_step
class JsonAssert(Assert):
    type_name = "json_assert"
    Config = JsonAssertConfig  # type: ignore[assignment]
    summary = (
        "compare JSON values: `statements:` of json_equal(a, b), json_not_equal(a, b), "
        "json_subset(whole, part)"
    )

    def check(self, config: StepConfig, vctx: ValidationContext) -> list[Problem]:
        problems = BaseStep.check(self, config, vctx)
        for i, item in enumerate(getattr(config, "statements", None) or []):
            text = _statement_text(item)
            try:
                self._parse(text)
            except StatementError as exc:
                problems.append(Problem(f"statement {text!r}: {exc}", self._statement_location(i)))
        return problems

    @staticmethod
    def _parse(text: str) -> tuple[str, list[str]]:
        call = _CALL_RE.match(text)
        if not call or call.group(1).lower() not in _JSON_FUNCS:
            raise StatementError(
                "use json_equal(a, b), json_not_equal(a, b) or json_subset(whole, part)"
            )
        args = split_top_level(call.group(2))
        if len(args) != 2:
            raise StatementError(f"{call.group(1)}() takes 2 arguments, got {len(args)}")
        return _JSON_FUNCS[call.group(1).lower()], [a.strip() for a in args]

    def _json_operand(self, text: str, run: StepRun) -> Any:
        """As merobox reads an operand: text that is JSON is parsed, and any
        other text (`value_1`, `'value_1'`) compares as that text."""
        value = self._operand(text, run)
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    async def execute(self, config: JsonAssertConfig, run: StepRun) -> dict[str, Any]:  # type: ignore[override]
        outcomes = []
        failures = []
        for i, item in enumerate(config.statements):
            text = _statement_text(item)
            location = self._statement_location(i)
            try:
                op, operands = self._parse(text)
                left, right = (self._json_operand(o, run) for o in operands)
            except StatementError as exc:
                raise StepFailure(f"statement {text!r}: {exc}", kind="invalid", location=location) from None
            except PlaceholderError as exc:
                # A reference that cannot resolve is a mistake in the workflow,
                # with its own hint; it never counts as a failed comparison.
                exc.location = location
                raise
            except StepFailure as exc:
                raise StepFailure(f"statement {text!r}: {exc}", kind="assertion", location=location) from None
            if op == "equal":
                ok = outputs_equal(right, left)
            elif op == "not_equal":
                ok = not outputs_equal(right, left)
            else:
                # merobox's order: the value first, then the part it must hold.
                ok = json_subset(right, left)
            outcomes.append({"statement": text, "passed": ok, "values": [left, right], "line": location.line})
            run.log(f"{'PASS' if ok else 'FAIL'} {text}")
            if not ok:
                failures.append((text, left, right, location, _statement_message(item)))
        data = {"statements": outcomes, "passed": len(outcomes) - len(failures), "failed": len(failures)}
        if failures:
            text, left, right, location, own_message = failures[0]
            message = own_message or config.message
            raise StepFailure(
                (message + ": " if message else "")
                + _headline([f[3].line for f in failures], len(outcomes), text),
                kind="assertion", expected=right, actual=left, location=location, data=data,
            )
        return data
