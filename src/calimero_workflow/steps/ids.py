"""32-byte ids in steps: 64 hex digits, checked where written and sent in lowercase.

Current merod (0.11.0-rc.27 and later) reads every id as 64 hex digits. A step
field typed :data:`HexId` (a context, application, namespace, group or blob id,
a public key) is checked when the file loads if its value is written out
(:func:`id_problems`): a base58 id (what merod showed before) or an unquoted
run of digits that YAML read as a number is said at its ``file:line:col``. An
id that arrives at run time, from a placeholder, is for the node to judge.
Either way a hex id is sent, and echoed in the results, in lowercase.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, AliasChoices, BaseModel

from ..errors import Problem
from ..validation import contains_deferred, locate
from ..yamlsrc import LocatedDict

__all__ = ["HexId", "id_problems"]

_HEX_ID = re.compile(r"[0-9a-fA-F]{64}")


def _lowercase_id(value: str) -> str:
    return value.lower() if _HEX_ID.fullmatch(value) else value


class _IdField:
    """Marks a field that holds a 32-byte id (see :data:`HexId`)."""


_ID_FIELD = _IdField()

#: A 32-byte id a step sends: 64 hex digits, sent and shown in lowercase.
HexId = Annotated[str, AfterValidator(_lowercase_id), _ID_FIELD]


def _is_id_field(info: Any) -> bool:
    """Whether a model field holds a :data:`HexId` (alone, in a union, optional)."""

    def marked(annotation: Any) -> bool:
        if typing.get_origin(annotation) is Annotated:
            args = typing.get_args(annotation)
            return any(m is _ID_FIELD for m in args[1:]) or marked(args[0])
        return any(marked(a) for a in typing.get_args(annotation))

    return any(m is _ID_FIELD for m in info.metadata) or marked(info.annotation)


def _field_keys(name: str, info: Any) -> list[str]:
    """The YAML keys of a model field: its name or alias, and alias choices."""
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)]
    return [alias if isinstance(alias, str) else info.alias or name]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's value (or the items of its list) may be."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found += _models_in(arg)
    return list(dict.fromkeys(found))


def id_problems(
    model: type[BaseModel], raw: Any, file: Path | None, path: tuple[Any, ...], what: str
) -> list[Problem]:
    """The ids written out in ``raw`` (the :data:`HexId` fields of ``model`` and
    of the models nested in it) that are not 64 hex digits."""
    if not isinstance(raw, dict):
        return []
    problems = []
    for name, info in model.model_fields.items():
        for key in _field_keys(name, info):
            if key not in raw:
                continue
            value = raw[key]
            if _is_id_field(info):
                text = raw.scalar_texts.get(key) if isinstance(raw, LocatedDict) else None
                problem = _id_problem(value, text, key)
                if problem is not None:
                    message, hint = problem
                    dotted = ".".join(str(p) for p in (*path, key))
                    problems.append(Problem(f"{what}: {dotted}: {message}", locate(raw, (key,), file), hint))
                continue
            for nested in _models_in(info.annotation):
                items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
                for index, item in items:
                    where = (*path, key) if index is None else (*path, key, index)
                    found = id_problems(nested, item, file, where, what)
                    for p in found:
                        if p.location is None:
                            p = Problem(p.message, locate(raw, (key,), file), p.hint)
                        problems.append(p)
    return problems


#: Where a workflow usually takes each kind of id from, for hints.
_ID_SOURCES = {
    "application_id": "${results.install.application_id}",
    "namespace_id": "${results.ns.namespace_id}",
    "group_id": "${results.ns.namespace_id}",
    "context_id": "${results.ctx.context_id}",
    "blob_id": "${results.upload.blob_id}",
}


def _id_problem(value: Any, text: str | None, key: str) -> tuple[str, str] | None:
    """Why a written-out id is not one (message, hint), or None."""
    source = _ID_SOURCES.get(key, "${results.ctx.member_public_key}")
    example = f"take it from a step's results, e.g. {source}"
    if isinstance(value, bool) or value is None:
        return None  # not text at all: the model says so
    if isinstance(value, (int, float)):
        written = text if text is not None else str(value)
        if str(value) != written:
            return (
                f"YAML reads the unquoted {written} as the number {value}, not as text",
                f"quote it: '{written}' (an id is 64 hex digits; {example})",
            )
        value = written  # the same text either way: judged as text
    if not isinstance(value, str) or contains_deferred(value) or _HEX_ID.fullmatch(value):
        return None
    from ..node.ids import looks_base58

    shown = value if len(value) <= 80 else f"{value[:40]}…{value[-10:]}"
    message = f"{shown!r} is not an id: expected 64 hex digits (32 bytes), got {len(value)} characters"
    if looks_base58(value):
        return (
            message,
            "it looks like a base58 id, the format merod showed before 0.11.0-rc.27; "
            f"current merod reads hex ids only: {example}",
        )
    return message, example
