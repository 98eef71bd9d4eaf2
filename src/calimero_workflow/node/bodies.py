"""Reading admin request bodies the way merod does, in merod's words.

merod takes an admin body with its ``ValidatedJson`` extractor: axum's ``Json``
into a request type, then the type's own checks. Since 0.11.0-rc.27 every
request type denies unknown fields (``crates/server/primitives/tests/
deny_unknown_fields.rs``), so a stale client's extra field is a 400, never
silently dropped. Every refusal is ``400 {"error": …}``:

- not JSON: ``JSON syntax error: Failed to parse the request body as JSON: …``;
- JSON that does not fit the type: ``Invalid JSON data: Failed to deserialize
  the JSON body into the target type: …`` with serde's text, e.g. ``unknown
  field `metadata`, expected `path```;
- a failed check: the check's own text, e.g. ``Field 'package' is required but
  was empty``.

serde reads the body in document order: the first unknown key met is the one
reported, and a missing field only once every key was read. What these texts
cannot match is the `` at line L column C`` suffix serde_json adds, which is
left out (as in :mod:`.jsonrpc`). The serde wording helpers here are shared
with the JSON-RPC reader.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ApiError

__all__ = [
    "MAX_NESTING",
    "BodyShape",
    "NotJson",
    "expected_fields",
    "is_json_content_type",
    "load_json",
    "nesting",
    "read_body",
    "syntax_error",
    "unexpected",
]

#: Arrays and objects serde_json reads inside one another: its deserializer
#: starts with a budget of 128 levels and refuses the level that spends the
#: last one ("recursion limit exceeded"), a syntax error.
MAX_NESTING = 127


def unexpected(value: Any, *, from_value: bool) -> str:
    """serde's ``Unexpected`` wording for a JSON value."""
    if value is None:
        # serde_json reports null as `null` while reading text, but as a unit
        # value when deserialising from an already parsed Value.
        return "unit value" if from_value else "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value!r}`"
    if isinstance(value, str):
        return "string " + json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "sequence"
    return "map"


def syntax_error(exc: json.JSONDecodeError, body: bytes) -> str:
    """serde_json's words for the syntax errors Python's parser reports."""
    if not body.strip():
        return "EOF while parsing a value"
    words = {
        "Expecting value": "expected value",
        "Expecting property name enclosed in double quotes": "key must be a string",
        "Extra data": "trailing characters",
        "Expecting ':' delimiter": "expected `:`",
        "Unterminated string starting at": "EOF while parsing a string",
        "Invalid control character at": "control character (\\u0000-\\u001F) found while parsing a string",
    }
    if exc.msg == "Expecting ',' delimiter":
        container = body.lstrip()[:1]
        return "expected `,` or `]`" if container == b"[" else "expected `,` or `}`"
    return words.get(exc.msg, exc.msg[:1].lower() + exc.msg[1:])


class NotJson(ValueError):
    """A body merod's parser refuses; ``reason`` is serde_json's text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def nesting(value: Any, limit: int) -> int:
    """How many arrays and objects ``value`` holds inside one another, counted
    without recursion and only up to one past ``limit``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        if depth > limit:
            break
        stack.extend((child, depth + 1) for child in item)
    return deepest


def load_json(body: bytes) -> Any:
    """``body`` parsed as serde_json parses it, nesting limit included.

    Python's parser stops at its own recursion limit, far deeper than
    serde_json's and with a ``RecursionError`` rather than a syntax error;
    either way the body is refused as merod refuses it. (A body that nests too
    deep and also holds a syntax error is reported by what Python's parser
    meets first; serde_json may name the other.)

    Raises:
        NotJson: the body is not JSON, or nests deeper than :data:`MAX_NESTING`.
    """
    try:
        value = json.loads(body)
    except RecursionError:
        raise NotJson("recursion limit exceeded") from None
    except ValueError as exc:  # UnicodeDecodeError too
        reason = (
            syntax_error(exc, body)
            if isinstance(exc, json.JSONDecodeError)
            else "invalid unicode code point"
        )
        raise NotJson(reason) from None
    if nesting(value, MAX_NESTING) > MAX_NESTING:
        raise NotJson("recursion limit exceeded")
    return value


def is_json_content_type(content_type: str) -> bool:
    """Whether axum's ``Json`` takes a body of this ``Content-Type``."""
    mime = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = mime.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def expected_fields(fields: tuple[str, ...]) -> str:
    """How serde lists the fields a struct takes in an ``unknown field`` error."""
    quoted = [f"`{f}`" for f in fields]
    if not quoted:
        return "there are no fields"
    if len(quoted) == 1:
        return quoted[0]
    if len(quoted) == 2:
        return f"{quoted[0]} or {quoted[1]}"
    return "one of " + ", ".join(quoted)


#: A request type's own checks: the texts of the checks that failed.
Check = Callable[[Mapping[str, Any]], list[str]]


@dataclass(frozen=True)
class BodyShape:
    """The JSON a merod request type accepts (``deny_unknown_fields``).

    ``fields`` are the wire names in declaration order, aliases after the field
    they stand for (serde lists them so); ``aliases`` maps an alias to its
    field. ``check`` is the type's ``Validate``: it sees the body once it fits.
    """

    type_name: str
    fields: tuple[str, ...]
    required: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)
    check: Check | None = None


def _data_error(reason: str) -> ApiError:
    return ApiError(
        400,
        f"Invalid JSON data: Failed to deserialize the JSON body into the target type: {reason}",
    )


def read_body(body: bytes, content_type: str, shape: BodyShape) -> dict[str, Any]:
    """The body as ``shape`` takes it, aliases renamed; 400 in merod's words otherwise."""
    if not is_json_content_type(content_type):
        raise ApiError(400, "Expected request with `Content-Type: application/json`")
    try:
        value = load_json(body)
    except NotJson as exc:
        raise ApiError(
            400, f"JSON syntax error: Failed to parse the request body as JSON: {exc.reason}"
        ) from None
    if not isinstance(value, dict):
        what = unexpected(value, from_value=False)
        raise _data_error(f"invalid type: {what}, expected struct {shape.type_name}")
    taken: dict[str, Any] = {}
    for key, item in value.items():
        name = shape.aliases.get(key, key)
        if name not in shape.fields:
            raise _data_error(
                f"unknown field `{key}`, expected {expected_fields(shape.fields)}"
            )
        taken[name] = item
    for name in shape.required:
        if name not in taken:
            raise _data_error(f"missing field `{name}`")
    problems = shape.check(taken) if shape.check else []
    if problems:
        text = problems[0] if len(problems) == 1 else "Validation errors: " + "; ".join(problems)
        raise ApiError(400, text)
    return taken
