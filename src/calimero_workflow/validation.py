"""Turning pydantic validation errors into located, helpful problems."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import Location, Problem
from .yamlsrc import LocatedDict, LocatedList

M = TypeVar("M", bound=BaseModel)

#: Placeholders that only get a value when the step runs.
_DEFERRED_RE = re.compile(r"\$\{[^{}]+\}|\{\{[^{}]+\}\}")


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


def _field_names(model: type[BaseModel]) -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        names.append(info.alias or name)
        if info.validation_alias and isinstance(info.validation_alias, str):
            names.append(info.validation_alias)
    return names


def _model_at(model: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """Follow ``path`` through nested model fields to the model that owns it."""
    current: Any = model
    for part in path:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next(
            (
                c
                for c in candidates
                if isinstance(c, type) and issubclass(c, BaseModel)
            ),
            None,
        )
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


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
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        kind = err["type"]
        if kind == "extra_forbidden":
            name = loc[-1] if loc else "?"
            owner = _model_at(model, loc[:-1]) or model
            allowed = sorted(set(_field_names(owner)))
            close = difflib.get_close_matches(str(name), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else None
            if hint is None and allowed:
                hint = "allowed keys: " + ", ".join(allowed)
            problems.append(
                Problem(
                    f"{prefix}unknown key {name!r}",
                    locate(raw, loc, file, key=True),
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
        if "missing" in kinds:
            problems.append(
                Problem(f"{prefix}missing required key {dotted!r}", locate(raw, data_path[:-1], file))
            )
            continue
        shown = json.dumps(value, default=str, ensure_ascii=False) if value is not None else "null"
        if len(errors) == 1:
            message = errors[0][0]["msg"]
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
