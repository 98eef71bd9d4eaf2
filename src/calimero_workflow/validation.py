"""Turning pydantic validation errors into located, helpful problems."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from .credentials import redact_urls
from .errors import Location, Problem
from .yamlsrc import LocatedDict, LocatedList

M = TypeVar("M", bound=BaseModel)

#: The longest time a timeout, interval or duration may be: a week, longer
#: than any CI job runs (larger values break timers and regex deadlines).
MAX_SECONDS = 7 * 24 * 3600

#: Placeholders that only get a value when the step runs.
_DEFERRED_RE = re.compile(r"\$\{[^{}]+\}|\{\{[^{}]+\}\}")

#: Keys whose values are credentials: the ones the action masks in its
#: ``env`` input (credentials.SECRET_KEY), less the bare ``KEY`` (an app's ``key``
#: argument is data). Everything under a remote node's ``auth`` is one too.
SECRET_KEY_RE = re.compile(
    r"TOKEN|SECRET|PASSW|PASS$|API_?KEY|PRIVATE|SIGNING_?KEY|CREDENTIAL|COOKIE|SESSION|^AUTH",
    re.I,
)


def contains_deferred(value: Any) -> bool:
    """Whether a raw value holds a placeholder resolved at run time."""
    if isinstance(value, str):
        return bool(_DEFERRED_RE.search(value))
    if isinstance(value, dict):
        return any(contains_deferred(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_deferred(v) for v in value)
    return False


def locate(
    raw: Any, path: Iterable[Any], file: Path | None, *, key: bool = False
) -> Location | None:
    """The position of the value (or key) at ``path`` inside a located tree."""
    node = raw
    pos: tuple[int, int] | None = None
    if isinstance(node, (LocatedDict, LocatedList)):
        pos = (node.line, node.col)
    parts = list(path)
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, LocatedDict) and part in node:
            pos = node.key_pos(part) if (last and key) else node.value_pos(part)
            node = node[part]
        elif isinstance(node, LocatedList) and isinstance(part, int) and 0 <= part < len(node):
            pos = node.item_pos(part)
            node = node[part]
        else:
            break
    if pos is None:
        return None
    return Location(file, *pos)


def value_at(raw: Any, path: Iterable[Any]) -> Any:
    node = raw
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return None
    return node


def is_secret_path(path: Iterable[Any]) -> bool:
    """Whether the value at ``path`` is a credential that no message may show
    (an auth ``method`` is one word of a few, never a credential)."""
    parts = list(path)
    if len(parts) >= 2 and parts[-1] == "method" and parts[-2] == "auth":
        return False
    return any(isinstance(part, str) and SECRET_KEY_RE.search(part) for part in parts)


def mask_credentials(value: Any) -> Any:
    """``value`` with credentials hidden: values under secret keys, and in URLs
    the password and token-like query values (``http://user:***@host/?token=***``)."""
    if isinstance(value, str):
        return redact_urls(value)
    if isinstance(value, dict):
        return {
            k: "***" if is_secret_path([k]) else mask_credentials(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_credentials(v) for v in value]
    return value


def shown_value(value: Any, path: Iterable[Any] = ()) -> str:
    """A value as an error message shows it: JSON, credentials hidden."""
    if is_secret_path(path):
        return "***"
    if value is None:
        return "null"
    text = json.dumps(mask_credentials(value), default=str, ensure_ascii=False)
    if len(text) > 120:
        text = f"{text[:60]}…{text[-20:]} ({len(text)} characters)"
    return text


_SINGULAR = {"groups": "group", "operations": "operation", "nodes": "node", "steps": "step"}


def describe_path(raw: Any, path: tuple[Any, ...]) -> str:
    """A mapping's place, for messages: ``remote_nodes.r.auth``, or ``group
    'g'`` for an item of a list whose items are named."""
    if (
        len(path) >= 2
        and isinstance(path[-1], int)
        and isinstance(path[-2], str)
        and isinstance(value_at(raw, path), dict)
        and isinstance(value_at(raw, path).get("name"), str)
    ):
        name = value_at(raw, path)["name"]
        owner = describe_path(raw, path[:-2])
        what = f"{_SINGULAR.get(path[-2], path[-2])} {name!r}"
        return f"{owner}: {what}" if owner else what
    return ".".join(str(p) for p in path)


def _field_names(model: type[BaseModel]) -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        names.append(info.alias or name)
        if info.validation_alias and isinstance(info.validation_alias, str):
            names.append(info.validation_alias)
    return names


def _members(annotation: Any) -> list[Any]:
    """The types of a union, ``Optional`` or ``Annotated`` (``None`` left out)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [] if annotation is type(None) else [annotation]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _inner(annotation: Any, part: Any) -> list[Any]:
    """The types that may hold the value at ``part`` inside ``annotation``."""
    found = []
    for tp in _members(annotation):
        origin, args = get_origin(tp), get_args(tp)
        if _is_model(tp) and part == tp.__name__:
            found.append(tp)  # the tag of a union's member in an error's location
        elif _is_model(tp):
            for name, info in tp.model_fields.items():
                if part in (name, info.alias, info.validation_alias):
                    found.append(info.annotation)
        elif origin in (dict, Mapping) and len(args) == 2:
            found.append(args[1])
        elif origin in (list, Sequence) and args and isinstance(part, int):
            found.append(args[0])
    return found


def _model_at(model: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """Follow ``path`` through nested models, mappings and lists to the model
    of the mapping it names (``remote_nodes.r.auth`` → the auth model)."""
    current: list[Any] = [model]
    for part in path:
        current = [tp for outer in current for tp in _inner(outer, part)]
        if not current:
            return None
    return next((m for tp in current for m in _members(tp) if _is_model(m)), None)


def problems_from_validation(
    exc: ValidationError,
    model: type[BaseModel],
    raw: Any,
    file: Path | None,
    *,
    base_path: tuple[Any, ...] = (),
    what: str = "",
    tolerate_deferred: bool = False,
) -> list[Problem]:
    """Convert a pydantic error into problems at the right YAML positions.

    With ``tolerate_deferred``, type errors on values that still contain a
    run-time placeholder are dropped: they are checked again once resolved.
    """
    problems: list[Problem] = []
    prefix = f"{what}: " if what else ""
    # Errors of a union come once per alternative, with the alternative's
    # name in the location (`args.0.str`, `args.0.int`…): group them by the
    # part of the location that exists in the data and say it once.
    grouped: dict[tuple[Any, ...], list[tuple[dict, tuple[Any, ...]]]] = {}
    # A typo explains the key it misses: `step:` for `steps:` is said once.
    suggested: set[tuple[Any, ...]] = set()
    # ...and a union's other members (`str`) need not say they are no mapping.
    typo_in: set[tuple[Any, ...]] = set()
    for err in exc.errors():
        loc = tuple(_plain_tag(p) for p in err["loc"])
        loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
        kind = err["type"]
        if kind == "extra_forbidden":
            name = loc[-1] if loc else "?"
            parent = _data_path(raw, loc[:-1])
            owner = _model_at(model, loc[:-1]) or (model if not parent else None)
            allowed = sorted(set(_field_names(owner))) if owner is not None else []
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else None
            if close:
                suggested.add((*parent, close[0]))
            typo_in.add(parent)
            if hint is None and allowed:
                hint = "allowed keys: " + ", ".join(allowed)
            where = describe_path(raw, parent)
            problems.append(
                Problem(
                    f"{prefix}{where + ': ' if where else ''}unknown key {name!r}",
                    locate(raw, (*parent, name), file, key=True),
                    hint,
                )
            )
            continue
        if kind == "missing":
            data_path = _data_path(raw, loc[:-1]) + loc[-1:]
        else:
            data_path = _data_path(raw, loc)
        grouped.setdefault(data_path, []).append((err, loc))
    for data_path, errors in grouped.items():
        value = value_at(raw, data_path)
        kinds = {e["type"] for e, _ in errors}
        if tolerate_deferred and "missing" not in kinds and contains_deferred(value):
            continue
        dotted = ".".join(str(p) for p in data_path) or "(value)"
        named = describe_path(raw, data_path[:-1])
        if data_path and named != ".".join(str(p) for p in data_path[:-1]):
            dotted = f"{named}: {data_path[-1]}"  # group 'g': count
        if "missing" in kinds:
            if data_path in suggested:
                continue
            where = describe_path(raw, data_path[:-1])
            problems.append(
                Problem(
                    f"{prefix}{where + ': ' if where else ''}missing required key {str(data_path[-1])!r}",
                    locate(raw, data_path[:-1], file),
                )
            )
            continue
        if data_path in typo_in:
            continue
        shown = shown_value(value, data_path)
        # Of a union's complaints, our own check (a NUL in text…) says most.
        own = [e for e, _ in errors if e["type"] == "value_error"]
        if len(errors) == 1 or own:
            message = (own or [errors[0][0]])[0]["msg"]
            if message.startswith("Value error, "):
                message = message[len("Value error, ") :]
        else:
            wanted = []
            for _, loc in errors:
                tag = loc[len(data_path)] if len(loc) > len(data_path) else None
                if tag is not None and str(tag) not in wanted:
                    wanted.append(str(tag))
            message = "expected " + " or ".join(_readable(t) for t in wanted) if wanted else errors[0][0]["msg"]
        if not data_path:
            # A check of the whole mapping (one of two keys, …): its message
            # names the keys; the mapping itself is the user's own text.
            problems.append(Problem(f"{prefix}{message}", locate(raw, data_path, file)))
            continue
        problems.append(Problem(f"{prefix}{dotted}: {message} (got {shown})", locate(raw, data_path, file)))
    return problems


def _plain_tag(part: Any) -> Any:
    """``function-after[_no_nul(), str]`` (a checked union member) → ``str``."""
    if isinstance(part, str) and part.startswith("function-") and ", " in part:
        return part.rsplit(", ", 1)[1].rstrip("]")
    return part


def _data_path(raw: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The longest prefix of ``loc`` that names something in ``raw``."""
    node = raw
    out: list[Any] = []
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            break
        out.append(part)
    return tuple(out)


def _readable(tag: str) -> str:
    names = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true/false",
             "list[str]": "a list of text", "dict[str,any]": "a mapping"}
    return names.get(tag.replace(" ", "").lower(), tag)


def validate_model(
    model: type[M],
    raw: Any,
    file: Path | None,
    *,
    base_path: tuple[Any, ...] = (),
    what: str = "",
    tolerate_deferred: bool = False,
) -> tuple[M | None, list[Problem]]:
    """Validate ``raw`` into ``model``; return the instance or the problems."""
    try:
        return model.model_validate(raw), []
    except ValidationError as exc:
        return None, problems_from_validation(
            exc,
            model,
            raw,
            file,
            base_path=base_path,
            what=what,
            tolerate_deferred=tolerate_deferred,
        )
