"""Loading a workflow file into a validated :class:`Workflow`.

``load_workflow`` reads the YAML (safely, with positions), expands
``${VAR}`` from the environment, validates the top level and every step, and
either returns a :class:`Workflow` or raises ``WorkflowValidationError``
listing every problem with its ``file:line:col``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .backends.base import NodeSpec
from .errors import Location, Problem, WorkflowValidationError
from .steps import load_builtin_steps
from .steps.base import BaseStep, StepRegistry, ValidationContext, registry
from .validation import validate_model
from .yamlsrc import LocatedDict, LocatedList, load_yaml, unescape_literals

_NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

#: Keys of ``nodes:`` that configure all nodes rather than name one.
RESERVED_NODE_KEYS = frozenset(
    {
        "count",
        "prefix",
        "image",
        "base_port",
        "base_rpc_port",
        "config_path",
        "use_image_entrypoint",
        "mdns",
        "network_admin",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeSettings(_Strict):
    """Settings of one named node (explicit mode)."""

    image: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    rpc_port: int | None = Field(default=None, ge=1, le=65535)
    data_dir: str | None = None
    config_path: str | None = None
    use_image_entrypoint: bool = False
    mock_tee: bool = False
    mdns: bool | None = None
    network_admin: bool = True


class NodesSection(_Strict):
    """``nodes:`` in count mode, or the shared part of explicit mode."""

    count: int | None = Field(default=None, ge=1, le=64)
    prefix: str = "calimero-node"
    image: str | None = None
    base_port: int | None = Field(default=None, ge=1, le=65535)
    base_rpc_port: int | None = Field(default=None, ge=1, le=65535)
    config_path: str | None = None
    use_image_entrypoint: bool = False
    mdns: bool | None = None
    network_admin: bool = True

    @field_validator("prefix")
    @classmethod
    def _prefix_ok(cls, value: str) -> str:
        if not _NODE_NAME_RE.match(value):
            raise ValueError(
                "a node prefix may hold letters, digits, '-', '_' and '.', starting with a letter or digit"
            )
        return value


class RemoteAuth(_Strict):
    method: Literal["none", "api_key", "password", "user_password"] = "none"

    @model_validator(mode="after")
    def _complete(self) -> RemoteAuth:
        if self.method == "api_key" and not (self.api_key or self.key):
            raise ValueError("auth method api_key needs `api_key`")
        if self.method in ("password", "user_password") and not (self.username and self.password):
            raise ValueError(f"auth method {self.method} needs `username` and `password`")
        return self
    username: str | None = None
    password: str | None = None
    api_key: str | None = None
    key: str | None = None


class RemoteNodeSettings(_Strict):
    url: str
    auth: RemoteAuth | None = None
    description: str | None = None


class SandboxSettings(_Strict):
    """A chain sandbox container started before the nodes."""

    image: str
    port: int = Field(ge=1, le=65535)
    #: An HTTP path that answers 2xx when ready; without it, any answer will do.
    ready_path: str | None = None
    command: list[str] | str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=60, gt=0)


class ContractsSettings(_Strict):
    """Deploy contracts into the sandbox; the command prints a JSON object."""

    #: Copied to /contracts in the deploy container (relative to the workflow).
    dir: str | None = None
    command: list[str] | str
    #: Image of the deploy container (default: the sandbox image).
    image: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=300, gt=0)


class WorkflowSettings(_Strict):
    """The top level of a workflow file (``steps`` and ``nodes`` checked apart)."""

    name: str = Field(min_length=1)
    description: str | None = None
    nodes: Any = None
    remote_nodes: dict[str, RemoteNodeSettings] = Field(default_factory=dict)
    steps: Any = None
    backend: Literal["embedded", "docker"] | None = None
    image: str | None = None
    wait_timeout: float = Field(default=60, gt=0)
    restart: bool = False
    stop_all_nodes: bool = False
    nuke_on_start: bool = False
    nuke_on_end: bool = False
    force_pull_image: bool = False
    log_level: str | None = None
    rust_backtrace: str | int | None = None
    e2e_mode: bool = False
    auth_service: bool = False
    auth_mode: str | None = None
    preserve_default_bootstrap: bool = False
    bootstrap_nodes: list[str] = Field(default_factory=list)
    sandbox: SandboxSettings | None = None
    contracts: ContractsSettings | None = None


@dataclass
class Workflow:
    """A loaded, validated workflow."""

    path: Path | None
    settings: WorkflowSettings
    raw: LocatedDict
    nodes: list[NodeSpec]
    steps: list[BaseStep]
    #: Notes for the user (ignored settings, compatibility remarks).
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def secret_values(self) -> list[str]:
        """Credentials in the workflow, to be masked in logs and reports."""
        secrets: list[str] = []
        for remote in self.settings.remote_nodes.values():
            auth = remote.auth
            if auth is None:
                continue
            secrets.extend(v for v in (auth.password, auth.api_key, auth.key) if v)
        for remote in self.settings.remote_nodes.values():
            password = urlsplit(remote.url).password
            if password:
                secrets.append(password)
        return secrets

    def location(self, *keys: Any) -> Location:
        node: Any = self.raw
        line, col = self.raw.line, self.raw.col
        for key in keys:
            if isinstance(node, LocatedDict) and key in node:
                line, col = node.value_pos(key)
                node = node[key]
            elif isinstance(node, LocatedList) and isinstance(key, int) and key < len(node):
                line, col = node.item_pos(key)
                node = node[key]
        return Location(self.path, line, col)


def redact_url(url: str) -> str:
    """``url`` with the password of its user part (``https://u:pw@host``) hidden."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def mask_secrets(text: str, secrets: list[str]) -> str:
    """``text`` with every secret, in each spelling it may take, replaced by ``***``."""
    from .report.github import Redactor

    return Redactor(secrets).redact(text)


def _subset(raw: dict, keys: frozenset[str]) -> LocatedDict:
    """The entries of ``raw`` whose key is in ``keys``, positions kept."""
    out = LocatedDict({k: v for k, v in raw.items() if k in keys})
    if isinstance(raw, LocatedDict):
        out.line, out.col = raw.line, raw.col
        out.key_marks = {k: raw.key_marks[k] for k in out if k in raw.key_marks}
        out.value_marks = {k: raw.value_marks[k] for k in out if k in raw.value_marks}
    return out


def _parse_nodes(
    raw: Any, file: Path | None, problems: list[Problem], top: LocatedDict
) -> list[NodeSpec]:
    if raw is None:
        return []
    loc = Location(file, *top.value_pos("nodes"))
    if not isinstance(raw, dict):
        problems.append(
            Problem(
                f"`nodes` must be a mapping, got {type(raw).__name__}",
                loc,
                hint="use `nodes: {count: 3, prefix: node}` or a map of named nodes",
            )
        )
        return []
    shared_raw = _subset(raw, RESERVED_NODE_KEYS)
    named_raw = {k: v for k, v in raw.items() if k not in RESERVED_NODE_KEYS}
    shared, found = validate_model(NodesSection, shared_raw, file, what="nodes")
    # validate_model located against the filtered dict; relocate into `raw`.
    for p in found:
        problems.append(Problem(p.message, p.location or loc, p.hint))
    if shared is None:
        return []
    specs: list[NodeSpec] = []
    if shared.count is not None:
        for key in named_raw:
            line, col = raw.key_pos(key) if isinstance(raw, LocatedDict) else (loc.line, loc.col)
            close = difflib.get_close_matches(str(key), sorted(RESERVED_NODE_KEYS), n=1)
            problems.append(
                Problem(
                    f"nodes: unknown key {key!r} in count mode",
                    Location(file, line, col),
                    hint=(f"did you mean {close[0]!r}? " if close else "")
                    + "count mode takes: " + ", ".join(sorted(RESERVED_NODE_KEYS)),
                )
            )
        if shared.config_path:
            problems.append(
                Problem(
                    "nodes: config_path cannot be used in count mode",
                    Location(file, *raw.value_pos("config_path")),
                    hint="use explicit mode (a map of named nodes) to give each node its config",
                )
            )
        for i in range(shared.count):
            specs.append(
                NodeSpec(
                    name=f"{shared.prefix}-{i + 1}",
                    image=shared.image,
                    swarm_port=shared.base_port + i if shared.base_port else None,
                    server_port=shared.base_rpc_port + i if shared.base_rpc_port else None,
                )
            )
        return specs
    for name, value in named_raw.items():
        node_loc = Location(file, *raw.key_pos(name)) if isinstance(raw, LocatedDict) else loc
        if not isinstance(name, str) or not _NODE_NAME_RE.match(name):
            problems.append(
                Problem(
                    f"nodes: {name!r} is not a valid node name",
                    node_loc,
                    hint="letters, digits, '-', '_' and '.', starting with a letter or digit",
                )
            )
            continue
        settings, found = validate_model(
            NodeSettings, value if value is not None else {}, file, what=f"node {name!r}"
        )
        problems.extend(Problem(p.message, p.location or node_loc, p.hint) for p in found)
        if settings is None:
            continue
        specs.append(
            NodeSpec(
                name=name,
                image=settings.image or shared.image,
                swarm_port=settings.port,
                server_port=settings.rpc_port,
                data_dir=Path(settings.data_dir) if settings.data_dir else None,
            )
        )
    return specs


def build_steps(
    raw_steps: Any,
    *,
    file: Path | None,
    problems: list[Problem],
    where: Location,
    steps_registry: StepRegistry = registry,
    what: str = "steps",
) -> list[BaseStep]:
    """Create step objects from a YAML list; collect problems, never raise."""
    if raw_steps is None:
        problems.append(
            Problem(f"`{what}` is missing", where, hint="add a list of steps, e.g. `steps: [{type: wait, seconds: 1}]`")
        )
        return []
    if not isinstance(raw_steps, list):
        problems.append(Problem(f"`{what}` must be a list of steps, got {type(raw_steps).__name__}", where))
        return []
    steps: list[BaseStep] = []
    for index, raw in enumerate(raw_steps):
        pos = raw_steps.item_pos(index) if isinstance(raw_steps, LocatedList) else (where.line, where.col)
        loc = Location(file, *pos)
        if not isinstance(raw, LocatedDict):
            problems.append(
                Problem(f"step #{index + 1} must be a mapping with a `type`, got {raw!r}", loc)
            )
            continue
        type_name = raw.get("type")
        if not isinstance(type_name, str) or not type_name:
            problems.append(
                Problem(
                    f"step #{index + 1} has no `type`",
                    loc,
                    hint="supported types: " + ", ".join(steps_registry.names()),
                )
            )
            continue
        cls = steps_registry.get(type_name)
        if cls is None:
            close = difflib.get_close_matches(type_name, steps_registry.all_names(), n=1)
            problems.append(
                Problem(
                    f"unknown step type {type_name!r}",
                    Location(file, *raw.value_pos("type")),
                    hint=(f"did you mean {close[0]!r}? " if close else "")
                    + "supported types: " + ", ".join(steps_registry.names()),
                )
            )
            continue
        steps.append(cls(raw, file=file, index=index))
    return steps


def validate_steps(steps: list[BaseStep], vctx: ValidationContext) -> list[Problem]:
    problems: list[Problem] = []
    for step in steps:
        problems.extend(step.validate(vctx))
    return problems


def _all_steps(steps: list[BaseStep]):
    for step in steps:
        yield step
        yield from _all_steps(getattr(step, "children", []) or [])
        for group in getattr(step, "groups", []) or []:
            yield from _all_steps(group[1])
        for op in getattr(step, "operations", []) or []:
            yield from _all_steps(op[2])


_NESTED_KEYS = frozenset({"steps", "groups", "operations"})


def _unknown_result_refs(steps: list[BaseStep], node_names: set[str] | None = None) -> list[Problem]:
    """``${results.X…}`` where no step anywhere is named X, or that only runs
    later, and ``${nodes.N…}`` where the run has no node N, can never resolve."""
    from .placeholders import DOLLAR, Resolver, split_path

    everything = list(_all_steps(steps))
    names = {s.explicit_name for s in everything if s.explicit_name}
    # Where each name is first given, by top-level step: a top-level step can
    # only read steps before it, or its own nested steps (a loop reads them
    # from an earlier iteration).
    first_top: dict[str, int] = {}
    top_of: dict[int, int] = {}
    for index, top in enumerate(steps):
        for step in _all_steps([top]):
            top_of[id(step)] = index
            if step.explicit_name:
                first_top.setdefault(step.explicit_name, index)
    resolver = Resolver((DOLLAR,))
    problems = []
    for step in everything:
        for key, value in step.raw.items():
            if key in _NESTED_KEYS:
                continue
            for expr in resolver.references(value):
                parts = split_path(expr)
                if node_names is not None and len(parts) >= 2 and parts[0] == "nodes" and parts[1] not in node_names:
                    close = difflib.get_close_matches(parts[1], sorted(node_names), n=1)
                    problems.append(
                        step.problem(
                            f"${{{expr}}} names node {parts[1]!r}, which the workflow does not define",
                            key=key,
                            hint=(f"did you mean {close[0]!r}? " if close else "")
                            + "nodes: " + (", ".join(sorted(node_names)) or "(none)"),
                        )
                    )
                    continue
                if len(parts) < 2 or parts[0] != "results" or parts[1] in ("sandbox", "deploy_contracts"):
                    continue
                later = first_top.get(parts[1], -1) > top_of.get(id(step), 0)
                if later:
                    runs_at = steps[first_top[parts[1]]].location.line
                    problems.append(
                        step.problem(
                            f"${{{expr}}} names step {parts[1]!r}, which runs later (line {runs_at})",
                            key=key,
                            hint="a step's results exist only after it has run; move the step "
                            "or read another one",
                        )
                    )
                    continue
                if parts[1] not in names:
                    close = difflib.get_close_matches(parts[1], sorted(names), n=1)
                    problems.append(
                        step.problem(
                            f"${{{expr}}} names step {parts[1]!r}, but no step has that name",
                            key=key,
                            hint=(f"did you mean {close[0]!r}? " if close else "")
                            + "give the step a `name:`; named steps: " + (", ".join(sorted(names)) or "(none)"),
                        )
                    )
    return problems


def _ambiguous_names(steps: list[BaseStep], raw: Any) -> list[Problem]:
    """A name used by two steps is an error only where ``${results.<name>}`` reads it.

    merobox files often reuse names (they pass values with ``outputs:``); a
    ``${results…}`` reference to a reused name would be ambiguous.
    """
    from .placeholders import DOLLAR, Resolver, split_path

    first: dict[str, BaseStep] = {}
    reused: dict[str, BaseStep] = {}

    def walk(items: list[BaseStep]) -> None:
        for step in items:
            name = step.explicit_name
            if name:
                if name in first and name not in reused:
                    reused[name] = step
                first.setdefault(name, step)
            for attr in ("children",):
                walk(getattr(step, attr, []) or [])
            for group in getattr(step, "groups", []) or []:
                walk(group[1])
            for op in getattr(step, "operations", []) or []:
                walk(op[2])

    walk(steps)
    if not reused:
        return []
    referenced = set()
    for expr in Resolver((DOLLAR,)).references(raw):
        parts = split_path(expr)
        if len(parts) >= 2 and parts[0] == "results":
            referenced.add(parts[1])
    problems = []
    for name, step in reused.items():
        if name in referenced:
            problems.append(
                step.problem(
                    f"step name {name!r} is used twice (first at line {first[name].location.line}), "
                    f"so ${{results.{name}…}} is ambiguous",
                    key="name",
                    hint="give each step its own name",
                )
            )
    return problems


def load_workflow(
    path: str | Path,
    *,
    environ: Mapping[str, str] | None = None,
    check_files: bool = True,
) -> Workflow:
    """Load and validate a workflow file."""
    load_builtin_steps()
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowValidationError(
            [Problem(f"workflow file not found: {file}", hint="check the path and the working directory")]
        ) from None
    except UnicodeDecodeError as exc:
        raw = file.read_bytes()
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise WorkflowValidationError(
            [
                Problem(
                    f"the file is not UTF-8 text: byte {raw[exc.start:exc.start + 1].hex()} cannot be decoded",
                    Location(file, line, col),
                    hint="save the workflow file as UTF-8",
                )
            ]
        ) from None
    except OSError as exc:
        raise WorkflowValidationError([Problem(f"cannot read workflow file {file}: {exc.strerror or exc}")]) from None
    return parse_workflow(text, file=file, environ=environ, check_files=check_files)


def parse_workflow(
    text: str,
    *,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    check_files: bool = True,
) -> Workflow:
    load_builtin_steps()
    env = dict(os.environ if environ is None else environ)
    data = load_yaml(text, source_file=file, environ=env)
    top_loc = Location(file, 1, 1)
    if not isinstance(data, LocatedDict):
        raise WorkflowValidationError(
            [
                Problem(
                    "a workflow file must be a YAML mapping with `name`, `nodes` and `steps`",
                    top_loc,
                )
            ]
        )
    # Steps resolve `$${` themselves when they run; the settings never do.
    unescape_literals(data, skip=frozenset({"steps"}))
    problems: list[Problem] = []
    settings, found = validate_model(WorkflowSettings, data, file, what="workflow")
    problems.extend(found)
    nodes = _parse_nodes(data.get("nodes"), file, problems, data)
    names = [n.name for n in nodes]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(Problem(f"node name {dup!r} is defined twice", Location(file, *data.value_pos("nodes"))))
    remote = set(settings.remote_nodes) if settings else set()
    for name in sorted(remote & set(names)):
        problems.append(
            Problem(
                f"{name!r} is both a local and a remote node",
                Location(file, *data.value_pos("remote_nodes")),
            )
        )
    if settings is not None and settings.contracts is not None:
        if settings.sandbox is None:
            problems.append(
                Problem(
                    "`contracts` needs a `sandbox` to deploy into",
                    Location(file, *data.value_pos("contracts")),
                    hint="add `sandbox: {image: ..., port: ...}`",
                )
            )
        folder = settings.contracts.dir
        if folder and check_files and not ((file.parent if file else Path.cwd()) / folder).is_dir():
            contracts_raw = data.get("contracts")
            pos = contracts_raw.value_pos("dir") if isinstance(contracts_raw, LocatedDict) else data.value_pos("contracts")
            problems.append(
                Problem(
                    f"contracts directory not found: {folder}",
                    Location(file, *pos),
                    hint="paths are relative to the workflow file's folder",
                )
            )
    steps_loc = Location(file, *data.value_pos("steps")) if "steps" in data else top_loc
    steps = build_steps(data.get("steps"), file=file, problems=problems, where=steps_loc)
    base_dir = file.parent if file is not None else Path.cwd()
    vctx = ValidationContext(
        file=file,
        base_dir=base_dir,
        node_names=set(names),
        remote_node_names=remote,
        check_files=check_files,
    )
    problems.extend(validate_steps(steps, vctx))
    problems.extend(_ambiguous_names(steps, data.get("steps")))
    problems.extend(_unknown_result_refs(steps, set(names) | remote))
    if problems or settings is None:
        raise WorkflowValidationError(_sorted(problems))
    return Workflow(
        path=file, settings=settings, raw=data, nodes=nodes, steps=steps, notes=_notes(settings)
    )


def _notes(settings: WorkflowSettings) -> list[str]:
    """Settings merobox knows that mean nothing (or something else) here."""
    notes = []
    if settings.e2e_mode:
        notes.append(
            "e2e_mode: nodes of a run are always wired to each other directly and sync "
            "quickly; the setting changes nothing more"
        )
    if settings.restart or settings.stop_all_nodes:
        notes.append(
            "restart / stop_all_nodes: every run starts its own fresh nodes and removes "
            "them at the end; nodes of other runs are never touched"
        )
    if settings.auth_service or settings.auth_mode:
        notes.append(
            "auth_service / auth_mode: no auth proxy is started; to test an authenticating "
            "node, list it under remote_nodes with its auth"
        )
    if settings.preserve_default_bootstrap or settings.bootstrap_nodes:
        notes.append("bootstrap_nodes / preserve_default_bootstrap: nodes only peer with the nodes of this run")
    return notes


def _sorted(problems: list[Problem]) -> list[Problem]:
    def key(p: Problem) -> tuple[int, int]:
        return (p.location.line, p.location.col) if p.location else (0, 0)

    unique: list[Problem] = []
    for p in sorted(problems, key=key):
        if p not in unique:
            unique.append(p)
    return unique
