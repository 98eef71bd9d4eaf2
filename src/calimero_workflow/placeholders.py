"""Run-time placeholders: ``${results.step.field}``, ``${nodes.name.url}``…

A step's configuration is resolved just before it runs, against a
:class:`Scope` holding the results so far, the nodes and the loop variables.
A string that is exactly one placeholder takes the referenced value with its
type; placeholders inside longer text are formatted as text (JSON for lists,
mappings, booleans and null).

The syntax is pluggable: a :class:`Syntax` finds references in text and a
:class:`Scope` looks them up, so other spellings (merobox's ``{{name}}``) can
be added next to the default one without touching the steps.
"""

from __future__ import annotations

import json
import random
import re
import string
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import PlaceholderError

_INDEX_RE = re.compile(r"\[(-?\d+)\]")


def split_path(expr: str) -> list[str]:
    """``a.b[0].c`` → ``["a", "b", "0", "c"]``."""
    return [p for p in _INDEX_RE.sub(r".\1", expr.strip()).split(".") if p != ""]


def step_name_of(parts: list[str], names: Any) -> tuple[str | None, list[str]]:
    """The step name at the start of ``parts`` and the path after it.

    Step names may hold dots (``get.v1``), which the path splits: the longest
    run of parts that is a name wins (``results.get.v1.output`` reads
    ``output`` of ``get.v1`` even when a step ``get`` exists too).
    """
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        if name in names:
            return name, parts[cut:]
    return None, parts[1:]


def _keys_of(value: Any) -> str:
    if isinstance(value, Mapping):
        keys = list(value.keys())
        return "keys: " + (", ".join(map(str, keys[:20])) or "(none)")
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    return f"a {type(value).__name__}"


def traverse(value: Any, parts: list[str], shown: str) -> Any:
    """Follow ``parts`` into ``value``; JSON text is parsed on the way."""
    walked = shown
    for part in parts:
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        if isinstance(value, Mapping):
            if part not in value:
                raise PlaceholderError(
                    f"{walked} has no field {part!r}",
                    hint=f"{walked} has {_keys_of(value)}",
                )
            value = value[part]
        elif isinstance(value, list):
            try:
                index = int(part)
            except ValueError:
                raise PlaceholderError(
                    f"{walked} is a list; {part!r} is not an index",
                    hint=f"use a number, e.g. {walked}.0",
                ) from None
            if not -len(value) <= index < len(value):
                raise PlaceholderError(
                    f"{walked} has {len(value)} item(s); index {index} is out of range"
                )
            value = value[index]
        else:
            raise PlaceholderError(
                f"{walked} is {_keys_of(value)} ({value!r}), it has no field {part!r}"
            )
        walked = f"{walked}.{part}"
    return value


_NOT_A_GENERATOR = object()
GENERATOR_RE = re.compile(r"^\s*(random_int|random_float|random_string|random_choice|uuid|timestamp)\s*(?:\((.*)\))?\s*$", re.S)
_ALPHABET = string.ascii_letters + string.digits

#: The longest ``random_string(n)``: a mebibyte of text.
MAX_RANDOM_STRING = 1 << 20


def _generator_args(name: str, text: str | None) -> list[Any]:
    if not text or not text.strip():
        return []
    try:
        parsed = json.loads(f"[{text}]")
    except ValueError:
        if name == "random_choice":
            # merobox's reading: words between commas, quotes stripped, as text
            words = [w.strip().strip("'\"") for w in text.strip().strip("[]").split(",")]
            if all(words):
                return [words]
        raise PlaceholderError(
            f"cannot read the arguments of {name}({text})",
            hint="e.g. random_int(1, 100), random_string(8), random_choice([\"a\", \"b\"])",
        ) from None
    return parsed


def generate(scope: Scope, expr: str) -> Any:
    """Values of the random generators; ``_NOT_A_GENERATOR`` for other text."""
    match = GENERATOR_RE.match(expr)
    if not match:
        return _NOT_A_GENERATOR
    name, raw_args = match.group(1), match.group(2)
    rng = scope.rng or random.Random()
    args = _generator_args(name, raw_args)
    try:
        if name == "random_int":
            low, high = (int(a) for a in args)
            return rng.randint(low, high)
        if name == "random_float":
            low, high = (float(a) for a in args)
            return rng.uniform(low, high)
        if name == "random_string":
            length = int(args[0]) if args else 8
            if not 0 <= length <= MAX_RANDOM_STRING:
                # the text is made on the event loop: a huge one would stall
                # every node and the step's own timeout
                raise ValueError(f"the length must be from 0 to {MAX_RANDOM_STRING:,}")
            return "".join(rng.choices(_ALPHABET, k=length))
        if name == "random_choice":
            choices = args[0] if len(args) == 1 and isinstance(args[0], list) else args
            if not choices:
                raise ValueError("nothing to choose from")
            return rng.choice(choices)
        if name == "uuid":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return int(time.time())
    except (TypeError, ValueError) as exc:
        raise PlaceholderError(
            f"bad arguments for {name}: {raw_args!r} ({exc})",
            hint="e.g. random_int(1, 100), random_float(0, 1), random_string(8), random_choice([1, 2])",
        ) from None


@dataclass
class Scope:
    """What placeholders can refer to while one step runs."""

    results: Mapping[str, Any]
    nodes: Mapping[str, Mapping[str, Any]]
    variables: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    #: Values captured with ``outputs:`` and the automatic per-node exports
    #: (merobox's "dynamic values"), read by ``{{name}}``.
    captured: Mapping[str, Any] = field(default_factory=dict)
    #: Random source of ``random_int(…)`` and friends (seeded in fuzzy tests).
    rng: random.Random | None = None

    def child(self, **variables: Any) -> Scope:
        merged = {**self.variables, **variables}
        return Scope(self.results, self.nodes, merged, self.env, self.captured, self.rng)

    def lookup(self, expr: str) -> Any:
        generated = generate(self, expr)
        if generated is not _NOT_A_GENERATOR:
            return generated
        parts = split_path(expr)
        if not parts:
            raise PlaceholderError("empty placeholder ${}")
        head, rest = parts[0], parts[1:]
        if head == "results":
            if not rest:
                raise PlaceholderError(
                    "${results} needs a step name: ${results.<step>.<field>}"
                )
            step, path = step_name_of(rest, self.results)
            if step is None:
                known = ", ".join(self.results) or "(none yet)"
                raise PlaceholderError(
                    f"no results for step {rest[0]!r}",
                    hint=f"steps with results so far: {known}; a step's results "
                    "exist only after it has run",
                )
            return traverse(self.results[step], path, f"results.{step}")
        if head == "nodes":
            if not rest:
                raise PlaceholderError("${nodes} needs a node name: ${nodes.<name>.url}")
            name = rest[0]
            if name not in self.nodes:
                known = ", ".join(self.nodes) or "(none)"
                raise PlaceholderError(
                    f"no node named {name!r}", hint=f"nodes of this run: {known}"
                )
            return traverse(self.nodes[name], rest[1:], f"nodes.{name}")
        if head == "env":
            if len(rest) != 1 or rest[0] not in self.env:
                raise PlaceholderError(f"environment variable {'.'.join(rest)!r} is not set")
            return self.env[rest[0]]
        if head in self.variables:
            return traverse(self.variables[head], rest, head)
        raise PlaceholderError(
            f"unknown placeholder ${{{expr}}}",
            hint="use ${results.<step>.<field>}, ${nodes.<name>.<field>}"
            + (
                ", or one of: " + ", ".join(sorted(self.variables))
                if self.variables
                else ""
            ),
        )


@dataclass(frozen=True)
class Syntax:
    """One placeholder spelling: a regex whose group 1 is the expression."""

    name: str
    pattern: re.Pattern[str]
    #: Returns the value for an expression; defaults to ``Scope.lookup``.
    lookup: Callable[[Scope, str], Any] | None = None


DOLLAR = Syntax("dollar", re.compile(r"(?<!\$)\$\{([^{}]+)\}"))

#: Legacy merobox forms, e.g. ``{{install.node-1}}`` → ``app_id_node-1``.
_LEGACY = {"install": "app_id_{}", "context": "context_id_{}", "identity": "public_key_{}"}


def mustache_lookup(scope: Scope, expr: str) -> Any:
    """Resolve merobox's ``{{name}}``: generators, captured values, loop
    variables, the legacy ``{{install.<node>}}`` forms, then ``results.``/``nodes.``."""
    expr = expr.strip()
    generated = generate(scope, expr)
    if generated is not _NOT_A_GENERATOR:
        return generated
    if expr in scope.captured:
        return scope.captured[expr]
    if expr in scope.variables:
        return scope.variables[expr]
    parts = split_path(expr)
    head = parts[0] if parts else ""
    if head in scope.captured:
        return traverse(scope.captured[head], parts[1:], head)
    if head in scope.variables:
        return traverse(scope.variables[head], parts[1:], head)
    if head in _LEGACY and len(parts) >= 2:
        # Node names may contain dots, so try the longest name first.
        for cut in range(len(parts), 1, -1):
            node = ".".join(parts[1:cut])
            key = _LEGACY[head].format(node)
            if key in scope.captured:
                if head == "context" and cut < len(parts):
                    record = scope.captured.get(f"context_{node}")
                    if record is not None:
                        return traverse(record, parts[cut:], f"context.{node}")
                return traverse(scope.captured[key], parts[cut:], key)
    if head == "invite" and len(parts) >= 3 and parts[1].endswith("_identity"):
        key = f"namespace_invitation_{parts[1][: -len('_identity')]}"
        if key in scope.captured:
            return scope.captured[key]
    if head in ("results", "nodes", "env"):
        return scope.lookup(expr)
    known = sorted(scope.captured)
    raise PlaceholderError(
        f"unresolved placeholder {{{{{expr}}}}}",
        hint=(
            "values captured so far: " + ", ".join(known[:30]) + ("…" if len(known) > 30 else "")
            if known
            else "nothing has been captured yet; capture values with `outputs:` on an earlier step"
        ),
    )


#: ``{{ name }}``: the spaces are stripped by the lookup, not by the pattern,
#: whose lazy ``\s*…?\s*`` took cubic time on a ``{{`` and a long run of spaces.
MUSTACHE = Syntax("mustache", re.compile(r"\{\{([^{}]*[^{}\s][^{}]*)\}\}"), mustache_lookup)


def format_embedded(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, type(None), dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


class Resolver:
    """Resolves placeholders in nested configuration values."""

    def __init__(self, syntaxes: tuple[Syntax, ...] = (DOLLAR, MUSTACHE)):
        self.syntaxes = syntaxes

    def _lookup(self, syntax: Syntax, scope: Scope, expr: str) -> Any:
        if syntax.lookup is not None:
            return syntax.lookup(scope, expr)
        return scope.lookup(expr)

    def resolve_text(self, text: str, scope: Scope) -> Any:
        for syntax in self.syntaxes:
            whole = syntax.pattern.fullmatch(text)
            if whole:
                return self._lookup(syntax, scope, whole.group(1))
        # One pass over the text: escapes and every syntax together, so a
        # substituted value is never scanned again nor unescaped.
        alternatives = [r"(?P<esc>\$\$\{)"] + [
            f"(?P<s{i}>{syntax.pattern.pattern})" for i, syntax in enumerate(self.syntaxes)
        ]
        combined = re.compile("|".join(alternatives))

        def replace(match: re.Match[str]) -> str:
            if match.group("esc"):
                return "${"
            for i, syntax in enumerate(self.syntaxes):
                if match.group(f"s{i}") is not None:
                    inner = syntax.pattern.fullmatch(match.group(f"s{i}"))
                    assert inner is not None
                    return format_embedded(self._lookup(syntax, scope, inner.group(1)))
            return match.group(0)

        return combined.sub(replace, text)

    def resolve(self, value: Any, scope: Scope) -> Any:
        """Return a copy of ``value`` with every placeholder resolved."""
        if isinstance(value, str):
            if "{" not in value:
                return value
            return self.resolve_text(value, scope)
        if isinstance(value, dict):
            return {k: self.resolve(v, scope) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, scope) for v in value]
        return value

    def references(self, value: Any) -> list[str]:
        """Every placeholder expression inside ``value`` (for static checks)."""
        found: list[str] = []
        if isinstance(value, str):
            for syntax in self.syntaxes:
                found.extend(m.group(1).strip() for m in syntax.pattern.finditer(value))
        elif isinstance(value, dict):
            for v in value.values():
                found.extend(self.references(v))
        elif isinstance(value, list):
            for v in value:
                found.extend(self.references(v))
        return found
