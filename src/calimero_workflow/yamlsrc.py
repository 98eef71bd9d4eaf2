"""Safe YAML loading that remembers where every value came from.

Mappings load as :class:`LocatedDict` and sequences as :class:`LocatedList`:
ordinary ``dict`` and ``list`` objects that also know the line and column of
themselves, of each key and of each value. Error messages and GitHub
annotations use these positions; nothing else in the engine needs to care.

``${VAR}`` and ``${VAR:-default}`` are expanded from the environment here, at
load time, on every string in the file. References that are resolved when a
step runs (``${results.…}``, ``${nodes.…}``, ``${iteration}``…) are left alone,
and ``$${…}`` stays a literal ``${…}``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .credentials import is_secret_key
from .errors import Location, Problem, WorkflowValidationError

#: Placeholder names that belong to the run, not to the environment.
RUNTIME_NAMESPACES = ("results", "nodes", "env", "workflow")
RUNTIME_NAMES = frozenset(
    {
        "iteration",
        "iteration_index",
        "iteration_zero_based",
        "iteration_one_based",
        "total_iterations",
        "group_index",
        "group_name",
        "run_id",
        "workflow_dir",
        "random_node",
        "random_executor",
    }
)

#: Keys whose text is a shell command (``script.run``): ``${VAR}`` there is
#: left to the shell, never expanded by us, so no value becomes shell text.
RAW_KEYS = frozenset({"run"})
#: Top-level sections whose ``command`` runs in a container, usually through
#: ``sh -c``: kept raw like ``run`` (values reach them through ``env:``).
RAW_COMMAND_SECTIONS = frozenset({"sandbox", "contracts"})

_ENV_RE = re.compile(r"\$(\$?)\{([^{}]*)\}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class LocatedDict(dict):
    """A mapping that knows where it and each of its keys and values start."""

    line: int = 0
    col: int = 0
    #: On a document's top mapping: notes made while it was read.
    load_notes: list[str] = []  # noqa: RUF012 - replaced, never changed in place
    key_marks: dict[Any, tuple[int, int]]
    value_marks: dict[Any, tuple[int, int]]
    #: A value YAML read as something else than text (``0102`` → the number
    #: 66), as it is written: messages can say "quote it" with the original.
    scalar_texts: dict[Any, str]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.key_marks = {}
        self.value_marks = {}
        self.scalar_texts = {}

    def key_pos(self, key: Any) -> tuple[int, int]:
        return self.key_marks.get(key, (self.line, self.col))

    def value_pos(self, key: Any) -> tuple[int, int]:
        return self.value_marks.get(key, self.key_pos(key))


class LocatedList(list):
    """A sequence that knows where it and each item start."""

    line: int = 0
    col: int = 0
    item_marks: list[tuple[int, int]]

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.item_marks = []

    def item_pos(self, index: int) -> tuple[int, int]:
        if 0 <= index < len(self.item_marks):
            return self.item_marks[index]
        return (self.line, self.col)


def _pos(mark: yaml.Mark) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1)


class _LoaderMixin:
    """SafeLoader building located containers and refusing duplicate keys."""

    source_file: Path | None = None
    environ: Mapping[str, str] = {}
    problems: list[Problem]
    #: What the reader should know, though nothing is wrong (see Workflow.notes).
    notes: list[str]

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node, self)
        self.root_node = node
        self.raw_nodes: set[int] = set()
        return super().construct_document(node)  # type: ignore[misc]


class _PyLoader(_LoaderMixin, yaml.SafeLoader):
    """The loader on PyYAML's pure-Python parser."""


#: libyaml's parser when PyYAML has it (about three times faster), else Python's.
#: The two differ in details (a plain scalar's style is ``''`` in one and
#: ``None`` in the other); tests load through both.
_CLoader: type | None = None
if hasattr(yaml, "CSafeLoader"):

    class _CLoader(_LoaderMixin, yaml.CSafeLoader):  # type: ignore[no-redef]
        """The loader on libyaml's parser."""


_Loader: type = _CLoader or _PyLoader

#: Nesting (a bound of it, see :func:`_nesting_bound`) above which a document
#: is parsed by the pure-Python parser: libyaml's composer, in PyYAML before
#: 6.0.4, recurses in C once per level and crashes the process on tens of
#: thousands of levels, where Python's stops at its recursion limit.
_C_NESTING_LIMIT = 1000

_BRACKETS = re.compile(r"[\[\]{}]")


def _nesting_bound(text: str) -> int:
    """At least as many levels as ``text`` can nest (cheap; usually far more).

    Block collections nest one column, or one ``- `` on a line, per level, so
    the longest line bounds them; flow collections nest one bracket per level.
    """
    lines = max(map(len, text.splitlines()), default=0)
    if text.count("[") + text.count("{") + lines <= _C_NESTING_LIMIT:
        return lines
    depth = deepest = 0
    for bracket in _BRACKETS.finditer(text):
        if bracket.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif depth:
            depth -= 1
    return lines + deepest

#: Values a document may hold once its aliases are expanded. A workflow holds a
#: few thousand; nested aliases ("billion laughs") reach millions from a few lines.
MAX_EXPANDED_VALUES = 200_000


#: Levels of nesting a document may have; a workflow needs about ten, and every
#: later walk over the data recurses once per level.
MAX_DEPTH = 100


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _depth(root: yaml.Node) -> int:
    """How deeply ``root`` nests once its aliases are expanded (without
    recursion: this runs before anything else may walk the data)."""
    depths: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            depths[key] = 1 + max((depths.get(id(c), 0) for c in _children(node)), default=0)
            if depths[key] > MAX_DEPTH:
                return depths[key]
            continue
        if key in depths or key in on_path:  # known, or a recursive alias
            continue
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    return depths.get(id(root), 1)


def _check_expansion(root: yaml.Node, loader: Any) -> None:
    """Refuse documents whose aliases expand past :data:`MAX_EXPANDED_VALUES`.

    Every later walk over the data (validation, placeholders) visits each
    alias again, so the expanded size is what costs time and memory.
    """
    depth = _depth(root)
    if depth > MAX_DEPTH:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"the document nests {depth} levels deep (the limit is {MAX_DEPTH})",
            root.start_mark,
        )
    sizes: dict[int, int] = {}
    pending: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in pending:  # a recursive alias; the constructor reports it
            return 1
        pending.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        pending.discard(key)
        sizes[key] = total
        return total

    total = size(root)
    if total > MAX_EXPANDED_VALUES:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"the document's aliases expand to {total:,} values (the limit is "
            f"{MAX_EXPANDED_VALUES:,})",
            _first_alias_mark(root, sizes) or root.start_mark,
        )


def _first_alias_mark(root: yaml.Node, sizes: dict[int, int]) -> yaml.Mark | None:
    """Where the largest repeated node is used again (the alias to look at)."""
    seen: set[int] = set()
    best: tuple[int, yaml.Mark] | None = None
    stack = [root]
    while stack:
        node = stack.pop()
        children = (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
            else list(node.value) if isinstance(node, yaml.SequenceNode) else []
        )
        for child in children:
            if id(child) in seen:
                if best is None or sizes.get(id(child), 0) > best[0]:
                    best = (sizes.get(id(child), 0), node.start_mark)
                continue
            seen.add(id(child))
            stack.append(child)
    return best[1] if best else None


def _expanded_types(loader: Any, node: yaml.MappingNode) -> set[str]:
    """Every ``type`` a step mapping is given, as it reads once ``${VAR}`` is
    expanded: the one written out and those merged in with ``<<:``. Which one
    wins is YAML's rule (and PyYAML's order differs between versions), so a
    step is shell text when any of them says so."""
    types = set()
    for key_node, value_node in node.value:
        if (
            isinstance(key_node, yaml.ScalarNode)
            and key_node.value == "type"
            and isinstance(value_node, yaml.ScalarNode)
        ):
            # Problems are reported when the value itself is constructed.
            types.add(expand_env(value_node.value, loader.environ, problems=[]))
    return types


def _raw_value_nodes(loader: Any, node: yaml.MappingNode) -> set[int]:
    """Value nodes of ``node`` (or of the sections below the document's top)
    that are shell text: constructed as written, never env-expanded."""
    raw: set[int] = set()
    # Only a script step's `run` is shell text; a `run` key elsewhere (in
    # call args, say) is data like any other. The type is read after
    # expansion, so `type: ${T:-script}` protects `run` as well.
    if "script" in _expanded_types(loader, node):
        raw.update(id(v) for k, v in node.value if getattr(k, "value", None) in RAW_KEYS)
    if node is loader.root_node:
        for key_node, section in node.value:
            if getattr(key_node, "value", None) in RAW_COMMAND_SECTIONS and isinstance(
                section, yaml.MappingNode
            ):
                raw.update(id(v) for k, v in _pairs(section) if getattr(k, "value", None) == "command")
    return raw


def _pairs(node: yaml.MappingNode) -> Any:
    """The entries of a mapping not yet flattened, those merged in with ``<<:`` too."""
    for key_node, value_node in node.value:
        if key_node.tag != "tag:yaml.org,2002:merge":
            yield key_node, value_node
        elif isinstance(value_node, yaml.MappingNode):
            yield from _pairs(value_node)
        elif isinstance(value_node, yaml.SequenceNode):
            for item in value_node.value:
                if isinstance(item, yaml.MappingNode):
                    yield from _pairs(item)


def _construct_raw(loader: Any, node: yaml.Node) -> Any:
    """Shell text as written: scalars as strings, lists of them kept located."""
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        result = LocatedList()
        result.line, result.col = _pos(node.start_mark)
        for child in node.value:
            result.append(_construct_raw(loader, child))
            result.item_marks.append(_pos(child.start_mark))
        return result
    return loader.construct_object(node, deep=True)


def _construct_mapping(loader: Any, node: yaml.MappingNode) -> LocatedDict:
    merge_keys = [k for k, _ in node.value if k.tag == "tag:yaml.org,2002:merge"]
    for again in merge_keys[1:]:
        loader.problems.append(
            Problem(
                f"key '<<' is given twice in one mapping (first at line "
                f"{merge_keys[0].start_mark.line + 1}, again at line {again.start_mark.line + 1})",
                Location(loader.source_file, *_pos(again.start_mark)),
                hint="merge several mappings with one key: `<<: [*first, *second]` "
                "(the first listed wins)",
            )
        )
    explicit = len(node.value) - len(merge_keys)
    loader.flatten_mapping(node)
    # flatten_mapping puts the entries of `<<: *anchor` first.
    merged = len(node.value) - explicit
    loader.raw_nodes.update(_raw_value_nodes(loader, node))
    result = LocatedDict()
    result.line, result.col = _pos(node.start_mark)
    seen: dict[Any, tuple[yaml.Node, bool]] = {}
    for index, (key_node, value_node) in enumerate(node.value):
        from_merge = index < merged
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            loader.problems.append(
                Problem(
                    f"a mapping key must be a plain value, not {type(key).__name__}",
                    Location(loader.source_file, *_pos(key_node.start_mark)),
                )
            )
            continue
        if key in seen:
            first, first_merged = seen[key]
            # Of two merged mappings the first one listed wins. PyYAML's
            # flatten_mapping lists merged entries so that the winner comes
            # last (6.0.3 keeps every entry, later mappings first; 6.0.4
            # keeps only the winner), so a later merged entry replaces.
            if not first_merged:
                loader.problems.append(
                    Problem(
                        f"key {key!r} is given twice in one mapping "
                        f"(first at line {first.start_mark.line + 1}, again at line "
                        f"{key_node.start_mark.line + 1})",
                        Location(loader.source_file, *_pos(key_node.start_mark)),
                        hint="remove one of them; YAML would silently keep only the last",
                    )
                )
                continue
            # A key written out wins over the same key merged in with `<<:`.
        seen[key] = (key_node, from_merge)
        if id(value_node) in loader.raw_nodes:
            # The author's own command text: never expanded (see RAW_KEYS).
            result[key] = _construct_raw(loader, value_node)
        else:
            result[key] = loader.construct_object(value_node, deep=True)
        result.key_marks[key] = _pos(key_node.start_mark)
        result.value_marks[key] = _pos(value_node.start_mark)
        if (
            isinstance(value_node, yaml.ScalarNode)
            and not isinstance(result[key], str)
            and not _ENV_RE.search(value_node.value)
        ):
            result.scalar_texts[key] = value_node.value
    return result


def _construct_sequence(loader: Any, node: yaml.SequenceNode) -> LocatedList:
    result = LocatedList()
    result.line, result.col = _pos(node.start_mark)
    for child in node.value:
        result.append(loader.construct_object(child, deep=True))
        result.item_marks.append(_pos(child.start_mark))
    return result


def _construct_str(loader: Any, node: yaml.ScalarNode) -> Any:
    value = loader.construct_scalar(node)
    expanded = expand_env(
        value,
        loader.environ,
        location=Location(loader.source_file, *_pos(node.start_mark)),
        problems=loader.problems,
    )
    # libyaml gives a plain scalar the style '' and PyYAML's parser None.
    if expanded is value or node.style not in (None, ""):
        return expanded
    # An unquoted scalar that expanded to something else is typed as YAML
    # would type the expanded text: `count: ${N}` with N=3 gives the int 3.
    if _ENV_RE.fullmatch(value) and isinstance(expanded, str):
        tag = loader.resolve(yaml.ScalarNode, expanded, (True, False))
        if tag != "tag:yaml.org,2002:str":
            typed = loader.construct_object(
                yaml.ScalarNode(tag, expanded, node.start_mark, node.end_mark)
            )
            if _reads_differently(expanded, typed):
                line, col = _pos(node.start_mark)
                where = f"{loader.source_file}:{line}:{col}" if loader.source_file else f"line {line}"
                name = _ENV_RE.fullmatch(value).group(2).partition(":-")[0]  # type: ignore[union-attr]
                # a credential's value is never shown, not even as YAML typed it
                shown = (
                    f"the value of {value}"
                    if is_secret_key(name)
                    else f"{value} is {expanded!r}, which YAML reads as {typed!r}"
                )
                kind = "a boolean" if isinstance(typed, bool) else "a number"
                if is_secret_key(name):
                    shown += f" is read by YAML as {kind}"
                loader.notes.append(f'{where}: {shown} (write "{value}" in quotes to keep the text)')
            return typed
    return expanded


def _reads_differently(text: str, typed: Any) -> bool:
    """Whether YAML 1.1 typed ``text`` as something its text does not show:
    ``0755`` (octal 493), ``12:30`` (750), ``0x1F``, ``1_000``, ``yes``/``on``."""
    if isinstance(typed, bool):
        return text.strip().lower() not in ("true", "false")
    if isinstance(typed, int):
        return text.strip().lstrip("+") != str(typed)
    return False


def _readable_scalar(kind: str, construct: Any) -> Any:
    """``construct`` with its ValueError (a 5,000-digit number, the 13th
    month) turned into a YAML error at the value."""

    def build(loader: Any, node: yaml.ScalarNode) -> Any:
        try:
            return construct(loader, node)
        except (ValueError, OverflowError) as exc:
            text = str(node.value)
            shown = repr(text) if len(text) <= 40 else repr(text[:20] + "…" + text[-10:])
            if "Exceeds the limit" in str(exc):
                reason = f"it has {len(text.strip('+-'))} digits (the limit is {sys.get_int_max_str_digits()})"
            else:
                reason = str(exc)
            raise yaml.constructor.ConstructorError(
                None, None, f"{shown} is not a valid {kind}: {reason}", node.start_mark
            ) from None

    return build


for _loader_class in (_PyLoader, _CLoader):
    if _loader_class is None:
        continue
    _loader_class.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
    )
    _loader_class.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence
    )
    _loader_class.add_constructor("tag:yaml.org,2002:str", _construct_str)
    for _tag, _kind in (("int", "number"), ("float", "number"), ("timestamp", "date")):
        _full = f"tag:yaml.org,2002:{_tag}"
        _loader_class.add_constructor(
            _full, _readable_scalar(_kind, yaml.SafeLoader.yaml_constructors[_full])
        )


_GENERATOR_CALL_RE = re.compile(
    r"^\s*(random_int|random_float|random_string|random_choice|uuid|timestamp)\s*(\(.*\))?\s*$", re.S
)


def is_runtime_reference(expr: str) -> bool:
    """Whether ``${expr}`` is resolved when a step runs rather than at load."""
    if _GENERATOR_CALL_RE.match(expr):
        return True
    head = expr.split(".", 1)[0].strip()
    if "." in expr and head in RUNTIME_NAMESPACES:
        return True
    return expr.strip() in RUNTIME_NAMES


def _closings(text: str) -> dict[int, int]:
    """For each ``{`` of ``text`` that is closed, the index of its ``}``
    (one pass: looking each one up anew took quadratic time on ``${${${…``)."""
    found: dict[int, int] = {}
    open_at: list[int] = []
    for match in re.finditer(r"[{}]", text):
        if match.group() == "{":
            open_at.append(match.start())
        elif open_at:
            found[open_at.pop()] = match.start()
    return found


#: How deeply ``${A:-${B:-…}}`` defaults may nest.
MAX_DEFAULT_DEPTH = 16


def escape_literal(text: str) -> str:
    """Text that the run-time resolver gives back unchanged (``${`` → ``$${``).

    Known gap: merobox's ``{{…}}`` has no escape, so a ``{{name}}`` inside an
    environment value used in a step is still read as a placeholder.
    """
    return text.replace("${", "$${")


def expand_env(
    value: str,
    environ: Mapping[str, str],
    *,
    location: Location | None = None,
    problems: list[Problem] | None = None,
    _depth: int = 0,
) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in one string.

    A default may hold braces and further references (``${A:-${B:-x}}``).
    A variable's value is taken as literal text: a ``${…}`` inside it is
    escaped so that nothing expands it again. Unset variables without a
    default are reported into ``problems`` (or raised when no list is given)
    and left in place.
    """
    if "$" not in value:
        return value
    found: list[Problem] = []

    def one(expr: str, whole: str) -> str:
        if is_runtime_reference(expr):
            if ("${" in expr or "{{" in expr) and not _GENERATOR_CALL_RE.match(expr):
                found.append(
                    Problem(
                        f"{whole} has a placeholder inside a placeholder; they do not nest",
                        location,
                        hint="a path is written out (${results.get.output.items.0}); to pick "
                        "by a value known at run time, compare with an assertion instead",
                    )
                )
            return whole
        name, sep, default = expr.partition(":-")
        if not _ENV_NAME_RE.fullmatch(name):
            found.append(
                Problem(
                    f"{whole} is not a valid reference",
                    location,
                    hint="environment variables look like ${NAME} or ${NAME:-default};"
                    " step results like ${results.<step>.<field>}; write $${…} for a literal ${…}",
                )
            )
            return whole
        if name in environ:
            return escape_literal(environ[name])
        if sep:
            if _depth >= MAX_DEFAULT_DEPTH:
                found.append(
                    Problem(
                        f"defaults nest more than {MAX_DEFAULT_DEPTH} deep in {whole[:80]}",
                        location,
                        hint="a default may name another variable (${A:-${B:-x}}), a few levels deep",
                    )
                )
                return whole
            return expand_env(
                default, environ, location=location, problems=found, _depth=_depth + 1
            )
        found.append(
            Problem(
                f"environment variable {name} is not set",
                location,
                hint=f"export {name}, pass --env {name}=VALUE, "
                f"or give a default: ${{{name}:-value}}",
            )
        )
        return whole

    out: list[str] = []
    # A value that ends in `$` before text that starts with `{` (another
    # value, or the file's own) would make a `${` nobody wrote: it is
    # escaped, so that it stays the two characters it is.
    dollar_ended = False

    def emit(piece: str, substituted: bool = False) -> None:
        nonlocal dollar_ended
        if not piece:
            return
        if dollar_ended and piece.startswith("{"):
            out.append("$")
        out.append(piece)
        dollar_ended = substituted and piece.endswith("$")

    closings: dict[int, int] | None = None
    i = 0
    while i < len(value):
        j = value.find("$", i)
        if j < 0:
            emit(value[i:])
            break
        emit(value[i:j])
        escaped = value.startswith("$${", j)
        opening = j + 2 if escaped else j + 1
        close = -1
        if value.startswith("{", opening):
            if closings is None:
                closings = _closings(value)
            close = closings.get(opening, -1)
        if close < 0:
            emit("$")
            i = j + 1
            continue
        if escaped:
            # Kept escaped; the run-time resolver turns `$${` into `${`.
            emit(value[j : close + 1])
        else:
            whole = value[j : close + 1]
            piece = one(value[opening + 1 : close], whole)
            emit(piece, substituted=piece is not whole)
        i = close + 1
    result = "".join(out)
    if found:
        if problems is None:
            raise WorkflowValidationError(found)
        problems.extend(found)
    return result if result != value else value


def unescape_literals(data: Any, *, skip: frozenset[str] = frozenset()) -> None:
    """Turn ``$${`` into ``${`` in place, in values nothing resolves at run
    time (the top level of a workflow; ``skip`` names the keys that are)."""
    if isinstance(data, dict):
        for key, item in data.items():
            if key in skip:
                continue
            if isinstance(item, str):
                data[key] = item.replace("$${", "${")
            else:
                unescape_literals(item)
    elif isinstance(data, list):
        for index, item in enumerate(data):
            if isinstance(item, str):
                data[index] = item.replace("$${", "${")
            else:
                unescape_literals(item)


_QUOTE_HINT = (
    "put the value in quotes: YAML reads `: `, `{`, `[` and ` #` inside "
    "plain values as syntax (e.g. - 'json_subset(${results.x.y}, {\"a\": 1})')"
)
_PLAIN_QUOTE_HINT = (
    "put the value in quotes: YAML reads `: `, `{`, `[` and ` #` inside "
    "plain values as syntax (e.g. message: 'step 2: done')"
)
#: An unquoted placeholder that is a whole value inside `{...}` or `[...]`.
_FLOW_PLACEHOLDER_RE = re.compile(r"(?:(?<=[:\[{,]\s)|(?<=[\[{]))(\$\{[^{}]*\}|\{\{[^{}]*\}\})(?=\s*[,}\]])")


def _flow_hint(line: str) -> str:
    """Quoting inside `{...}`/`[...]`, shown on the user's own line when possible."""
    fixed = _FLOW_PLACEHOLDER_RE.sub(lambda m: '"' + m.group(1) + '"', line.strip())
    example = fixed if fixed != line.strip() else 'env: {CTX: "${results.ctx.context_id}"}'
    return (
        "inside `{...}` or `[...]`, a value holding `${...}`, `{{...}}`, `: ` or ` #` "
        f"must be quoted: {example}"
    )


def _yaml_hint(message: str, line: str, mark: yaml.Mark | None) -> str | None:
    """A hint for the usual causes of a YAML error on ``line``."""
    if "aliases expand to" in message:
        return "a workflow does not need nested aliases; write the values out or use `repeat`"
    if "nesting depth" in message or "levels deep" in message:
        return "a workflow needs only a few levels of nesting; look for a `[` or `{` that is never closed"
    if "constructor for the tag" in message:
        return "tags (`!!python/…`, `!Ref`…) are not allowed: a workflow is plain data; quote a value that starts with `!`"
    if "recursive" in message:
        return "an alias (`*name`) is used inside the very mapping or list its anchor (`&name`) marks"
    if "is not a valid number" in message:
        return "quote it if it is an id or other text: YAML reads unquoted digits as a number"
    if "is not a valid date" in message:
        return "quote it if it is text: YAML reads an unquoted YYYY-MM-DD as a date"
    if "escape" in message or "hexdecimal" in message or "hexadecimal" in message:
        return (
            "in a double-quoted value a backslash starts an escape (`\\n`, `\\u00e9`): "
            "write `\\\\` for a backslash, or use single quotes, where `\\` is an ordinary character"
        )
    column = mark.column if mark is not None else 0
    if "\t" in line[: column + 1] or ("\t" in line and "cannot start any token" in message):
        return "indent with spaces: YAML does not allow tabs for indentation"
    if "flow mapping" in message or "flow sequence" in message or _FLOW_PLACEHOLDER_RE.search(line):
        return _flow_hint(line)
    if "(" in line:
        return _QUOTE_HINT
    if any(token in line for token in ("${", "{{", ": ", " #")):
        return _PLAIN_QUOTE_HINT
    return None


def load_yaml(
    text: str,
    *,
    source_file: Path | None,
    environ: Mapping[str, str],
    collect: list[Problem] | None = None,
) -> Any:
    """Parse one YAML document safely, with positions and env expansion.

    Raises :class:`WorkflowValidationError` listing every problem found. With
    ``collect``, problems of a document that still parsed (an unset variable,
    a key given twice) go there instead, so that the caller can go on to
    report the rest of the file's problems too.
    """
    loader_class = _Loader if _nesting_bound(text) <= _C_NESTING_LIMIT else _PyLoader
    loader = loader_class(text)
    loader.source_file = source_file
    loader.environ = environ
    loader.problems = []
    loader.notes = []
    try:
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        location = Location(source_file, *_pos(mark)) if mark else None
        message = f"{exc.problem or exc.context or 'invalid YAML'}"
        if exc.context and exc.problem:
            message = f"{exc.problem} ({exc.context})"
        lines = text.splitlines()
        line = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
        kind = "YAML error" if isinstance(exc, yaml.constructor.ConstructorError) else "YAML syntax error"
        raise WorkflowValidationError(
            [Problem(f"{kind}: {message}", location, _yaml_hint(message, line, mark))]
        ) from None
    except yaml.YAMLError as exc:
        raise WorkflowValidationError(
            [Problem(f"YAML error: {exc}", Location(source_file, 1))]
        ) from None
    except RecursionError:
        # PyYAML's pure-Python parser recurses once per level.
        raise WorkflowValidationError(
            [
                Problem(
                    "YAML error: the document nests too deeply",
                    Location(source_file, 1),
                    _yaml_hint("levels deep", "", None),
                )
            ]
        ) from None
    if loader.problems:
        if collect is None:
            raise WorkflowValidationError(loader.problems)
        collect.extend(loader.problems)
    if isinstance(data, LocatedDict):
        data.load_notes = loader.notes
    return data
