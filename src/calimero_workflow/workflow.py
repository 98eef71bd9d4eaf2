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
from .confined import read_file
from .credentials import secret_env_values, url_secrets, values_in
from .errors import Location, Problem, WorkflowValidationError
from .node.logfilter import LogFilter
from .steps import load_builtin_steps
from .steps.base import (
    BaseStep,
    EnvName,
    PathText,
    StepRegistry,
    ValidationContext,
    registry,
)
from .validation import MAX_SECONDS, contains_deferred, validate_model
from .yamlsrc import (
    RAW_COMMAND_SECTIONS,
    LocatedDict,
    LocatedList,
    load_yaml,
    unescape_literals,
)

_NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

#: Keys of ``nodes:`` that configure all nodes rather than name one
#: (merobox's RESERVED_NODE_CONFIG_KEYS, plus ``chain_id`` and ``init_args``,
#: which its NodesConfig declares).
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
        "chain_id",
        "init_args",
    }
)
#: How close an unknown key must be to a known one to be taken for its typo
#: (difflib's ratio): `nmae` → `name` is 0.75, `variables` → anything far less.
TYPO_CUTOFF = 0.75


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeSettings(_Strict):
    """Settings of one named node (explicit mode)."""

    image: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    rpc_port: int | None = Field(default=None, ge=1, le=65535)
    data_dir: PathText | None = None
    config_path: PathText | None = None
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
    config_path: PathText | None = None
    use_image_entrypoint: bool = False
    mdns: bool | None = None
    network_admin: bool = True
    #: merobox's chain id for its nodes; nodes here have no chain to join.
    chain_id: str | int | None = None
    #: merobox's extra `merod init` arguments (see the note where it is used).
    init_args: list[str] | str | None = None

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

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # The messages never repeat the URL: its user part may hold a password.
        if any(ch.isspace() or ch == "\0" for ch in value):
            raise ValueError("a URL cannot hold spaces or control characters")
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError as exc:
            reason = "its port is not a number from 0 to 65535" if "port" in str(exc).lower() else "it cannot be parsed"
            raise ValueError(f"not a usable URL: {reason}") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError(
                f"a remote node is reached over http:// or https://, not {parts.scheme + '://' if parts.scheme else 'a URL without a scheme'}"
            )
        if not parts.hostname:
            raise ValueError("the URL names no host (e.g. http://node.example:2528)")
        if port == 0:
            raise ValueError("port 0 cannot be reached")
        return value


class SandboxSettings(_Strict):
    """A chain sandbox container started before the nodes."""

    image: str
    port: int = Field(ge=1, le=65535)
    #: An HTTP path that answers 2xx when ready; without it, any answer will do.
    ready_path: str | None = None
    command: list[str] | str | None = None
    env: dict[EnvName, str] = Field(default_factory=dict)
    timeout: float = Field(default=60, gt=0, le=MAX_SECONDS)


class ContractsSettings(_Strict):
    """Deploy contracts into the sandbox; the command prints a JSON object."""

    #: Copied to /contracts in the deploy container (relative to the workflow).
    dir: PathText | None = None
    command: list[str] | str
    #: Image of the deploy container (default: the sandbox image).
    image: str | None = None
    env: dict[EnvName, str] = Field(default_factory=dict)
    timeout: float = Field(default=300, gt=0, le=MAX_SECONDS)


class WorkflowSettings(_Strict):
    """The top level of a workflow file (``steps`` and ``nodes`` checked apart)."""

    name: str = Field(min_length=1)
    description: str | None = None
    nodes: Any = None
    remote_nodes: dict[str, RemoteNodeSettings] = Field(default_factory=dict)
    steps: Any = None
    backend: Literal["embedded", "docker"] | None = None
    image: str | None = None
    wait_timeout: float = Field(default=60, gt=0, le=MAX_SECONDS)
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
    # merobox settings that mean nothing (or something else) here; see _notes.
    no_docker: bool = False
    binary_path: str | None = None
    near_devnet: bool | None = None
    contracts_dir: str | None = None
    topology: dict[str, Any] | None = None
    auth_image: str | None = None
    auth_use_cached: bool = False
    webui_use_cached: bool = False

    @field_validator("log_level")
    @classmethod
    def _log_filter(cls, value: str | None) -> str | None:
        # the nodes' RUST_LOG: checked here, not when the nodes start
        LogFilter.parse(value)
        return value


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
            secrets.extend(url_secrets(remote.url))
        for step in _all_steps(self.steps):
            # merobox's per-step `token:` (a JWT), unused but written in the file.
            if isinstance(step.raw.get("token"), str):
                secrets.append(step.raw["token"])
            # a script's own `env:` under secret-looking keys (written out;
            # those from placeholders are added when the step runs)
            env = step.raw.get("env") if step.type_name == "script" else None
            if isinstance(env, dict):
                secrets.extend(
                    secret_env_values(
                        {str(k): v for k, v in env.items() if isinstance(v, str) and not contains_deferred(v)}
                    )
                )
            # a URL's password and token-like query values (`url:` of an install)
            for text in values_in({k: v for k, v in step.raw.items() if k not in _NESTED_KEYS}):
                secrets.extend(url_secrets(text))
        return list(dict.fromkeys(secrets))

    def files_read(self) -> list[Path]:
        """The files the steps read that are written out in the file (an app's
        ``path``, ``upload_blob.file_path``, a script), where they are found."""
        from .steps.base import workflow_file
        from .validation import contains_deferred

        files = []
        for step in _all_steps(self.steps):
            for key in _FILE_KEYS.get(step.type_name, ()):
                value = getattr(step.static_config, key, None)
                if isinstance(value, str) and value and not contains_deferred(value):
                    files.append(workflow_file(self.base_dir, value))
        return files

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


#: The keys of each step type that name a file the step reads.
_FILE_KEYS = {
    "install_application": ("path",),
    "create_mesh": ("path",),
    "upload_blob": ("file_path",),
    "script": ("script",),
}


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


def _unknown_key(
    key: Any, known: list[str], where: str, loc: Location, problems: list[Problem], notes: list[str]
) -> None:
    """A key merobox would let through: a typo of a known key is an error
    (our typo protection), anything else a note that it is ignored."""
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=TYPO_CUTOFF)
    if close:
        problems.append(
            Problem(f"{where}: unknown key {key!r}", loc, hint=f"did you mean {close[0]!r}?")
        )
    else:
        notes.append(
            f"{loc}: {where}: key {key!r} is not a setting here and is ignored "
            "(merobox lets unknown keys through too)"
        )


def _port_problems(
    raw: Any, shared: NodesSection, file: Path | None
) -> list[Problem]:
    """Count mode: every node's ports, base + index, must be real ports and apart."""
    problems = []
    count = shared.count or 0
    ranges = {}
    for key in ("base_port", "base_rpc_port"):
        base = getattr(shared, key)
        if base is None:
            continue
        ranges[key] = range(base, base + count)
        if base + count - 1 > 65535:
            problems.append(
                Problem(
                    f"nodes: {key} {base} with {count} nodes needs ports up to {base + count - 1}; "
                    "the highest port is 65535",
                    Location(file, *raw.value_pos(key)),
                    hint=f"use a {key} of at most {65536 - count}",
                )
            )
    if len(ranges) == 2 and set(ranges["base_port"]) & set(ranges["base_rpc_port"]):
        problems.append(
            Problem(
                "nodes: the swarm ports (base_port) and the server ports (base_rpc_port) overlap",
                Location(file, *raw.value_pos("base_rpc_port")),
                hint=f"keep them at least {count} apart, e.g. base_port: 2428, base_rpc_port: 2528",
            )
        )
    return problems


def _parse_nodes(
    raw: Any, file: Path | None, problems: list[Problem], top: LocatedDict, notes: list[str]
) -> list[NodeSpec]:
    if raw is None:
        return []
    loc = Location(file, *top.value_pos("nodes"))
    if not isinstance(raw, dict):
        problems.append(
            Problem(
                f"`nodes` must be a mapping, got {_yaml_kind(raw)}",
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
        # merobox's count mode refuses only config_path; other keys pass.
        for key in named_raw:
            line, col = raw.key_pos(key) if isinstance(raw, LocatedDict) else (loc.line, loc.col)
            _unknown_key(
                key, sorted(RESERVED_NODE_KEYS), "nodes (count mode)", Location(file, line, col),
                problems, notes,
            )
        problems.extend(_port_problems(raw, shared, file))
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
    used: dict[int, str] = {}
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
        for key in ("port", "rpc_port"):
            port = getattr(settings, key)
            if port is not None and port in used:
                problems.append(
                    Problem(
                        f"nodes: node {name!r} uses port {port}, which {used[port]} uses already",
                        Location(file, *value.value_pos(key)) if isinstance(value, LocatedDict) else node_loc,
                        hint="give every node its own port and rpc_port",
                    )
                )
            elif port is not None:
                used[port] = f"node {name!r}"
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
        problems.append(
            Problem(
                f"`{what}` must be a list of steps, got {_yaml_kind(raw_steps)}",
                where,
                hint=f"write each step as a list item: `{what}:` then `  - type: …`",
            )
        )
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


def _unknown_result_refs(
    steps: list[BaseStep], node_names: set[str] | None = None, *, invalid: set[str] = frozenset()
) -> list[Problem]:
    """``${results.X…}`` where no step anywhere is named X, or that only runs
    later, and ``${nodes.N…}`` where the run has no node N, can never resolve.
    A name of a step that is itself invalid (``invalid``) is left to that
    step's own error."""
    from .placeholders import DOLLAR, Resolver, split_path, step_name_of

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
                # A name with dots (`get.v1`) is matched longest first.
                name = step_name_of(parts[1:], names | invalid)[0] or parts[1]
                later = first_top.get(name, -1) > top_of.get(id(step), 0)
                if later:
                    runs_at = steps[first_top[name]].location.line
                    problems.append(
                        step.problem(
                            f"${{{expr}}} names step {name!r}, which runs later (line {runs_at})",
                            key=key,
                            hint="a step's results exist only after it has run; move the step "
                            "or read another one",
                        )
                    )
                    continue
                if name not in names and name not in invalid:
                    close = difflib.get_close_matches(name, sorted(names), n=1)
                    problems.append(
                        step.problem(
                            f"${{{expr}}} names step {name!r}, but no step has that name",
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
    from .placeholders import DOLLAR, Resolver, split_path, step_name_of

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
            referenced.add(step_name_of(parts[1:], set(first))[0] or parts[1])
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
    backend: str | None = None,
    for_run: bool = False,
) -> Workflow:
    """Load and validate a workflow file.

    ``backend`` is the backend chosen on the command line (it wins over the
    file's ``backend:``); with ``for_run`` the file is about to run, so a
    file that names none runs embedded. Steps the backend cannot run are
    then refused here; when the backend is not known (``validate``), the
    executor refuses them before any node starts.
    """
    load_builtin_steps()
    file = Path(path)
    try:
        raw = read_file(file)  # never a blocking read of a FIFO put there
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise WorkflowValidationError(
            [Problem(f"workflow file not found: {file}", hint="check the path and the working directory")]
        ) from None
    except UnicodeDecodeError as exc:
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
    return parse_workflow(
        text, file=file, environ=environ, check_files=check_files, backend=backend, for_run=for_run
    )


def parse_workflow(
    text: str,
    *,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    check_files: bool = True,
    backend: str | None = None,
    for_run: bool = False,
) -> Workflow:
    """Parse and validate a workflow's text (see :func:`load_workflow`)."""
    load_builtin_steps()
    env = dict(os.environ if environ is None else environ)
    read_problems: list[Problem] = []
    data = load_yaml(text, source_file=file, environ=env, collect=read_problems)
    top_loc = Location(file, 1, 1)
    if read_problems and not isinstance(data, LocatedDict):
        raise WorkflowValidationError(read_problems)
    if not isinstance(data, LocatedDict):
        raise WorkflowValidationError(
            [
                Problem(
                    "a workflow file must be a YAML mapping with `name`, `nodes` and `steps`",
                    top_loc,
                )
            ]
        )
    problems: list[Problem] = []
    notes: list[str] = []
    # Before `$${` is unescaped: there it is the shell's own `${`.
    problems.extend(_command_problems(data, file))
    # Steps resolve `$${` themselves when they run; the settings never do.
    unescape_literals(data, skip=frozenset({"steps"}))
    known = sorted(_field_names(WorkflowSettings))
    for key in data:
        if key not in known:
            _unknown_key(key, known, "workflow", Location(file, *data.key_pos(key)), problems, notes)
    settings, found = validate_model(WorkflowSettings, _subset(data, frozenset(known)), file, what="workflow")
    problems.extend(found)
    nodes = _parse_nodes(data.get("nodes"), file, problems, data, notes)
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
    problems.extend(
        _unknown_result_refs(steps, set(names) | remote, invalid=_raw_step_names(data.get("steps")))
    )
    kind = backend or (settings.backend if settings else None) or ("embedded" if for_run else None)
    if kind is not None:
        problems.extend(backend_problems(steps, kind))
    if read_problems:
        # the rest of the file's problems too, but not a second one for a
        # line already reported (an unset ${N} is not also "not a number")
        lines = {p.location.line for p in read_problems if p.location is not None}
        problems = read_problems + [
            p for p in problems if p.location is None or p.location.line not in lines
        ]
    if problems or settings is None:
        raise WorkflowValidationError(_sorted(problems))
    return Workflow(
        path=file, settings=settings, raw=data, nodes=nodes, steps=steps,
        notes=list(data.load_notes) + _notes(settings, data) + _step_notes(steps) + notes,
    )


def backend_problems(steps: list[BaseStep], kind: str) -> list[Problem]:
    """Steps the backend ``kind`` cannot run (a script in node containers
    needs containers: the docker backend)."""
    problems = []
    if kind == "docker":
        return problems
    for step in _all_steps(steps):
        if step.type_name == "script" and step.raw.get("target") == "nodes":
            problems.append(
                step.problem(
                    f"`target: nodes` runs the script inside node containers, and the {kind} "
                    "backend has none",
                    key="target",
                    hint="use `target: local`, or run with `backend: docker` (--backend docker)",
                )
            )
    return problems


def _command_problems(data: LocatedDict, file: Path | None) -> list[Problem]:
    """``${…}`` in a container's ``command`` (kept raw, see yamlsrc.RAW_COMMAND_SECTIONS)."""
    problems = []
    for section in sorted(RAW_COMMAND_SECTIONS):
        raw = data.get(section)
        if not isinstance(raw, LocatedDict):
            continue
        command = raw.get("command")
        texts = [command] if isinstance(command, str) else command if isinstance(command, list) else []
        if any(isinstance(t, str) and _UNESCAPED_DOLLAR_RE.search(t) for t in texts):
            problems.append(
                Problem(
                    f"`${{...}}` is not expanded inside `{section}.command` (values would become shell text)",
                    Location(file, *raw.value_pos("command")),
                    hint=f"pass values through `{section}.env:` (e.g. env: {{NET: \"${{NET}}\"}}) and use "
                    "$NET in the command; write $${NAME} for the shell's own ${NAME}",
                )
            )
    return problems


_UNESCAPED_DOLLAR_RE = re.compile(r"(?<!\$)\$\{")


def _field_names(model: type) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _raw_step_names(raw_steps: Any) -> set[str]:
    """Every ``name:`` of a step in the file, nested ones too, valid or not."""
    names: set[str] = set()
    for item in raw_steps if isinstance(raw_steps, list) else []:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("name"), str):
            names.add(item["name"])
        names |= _raw_step_names(item.get("steps"))
        for nested in ("groups", "operations"):
            for entry in item.get(nested) if isinstance(item.get(nested), list) else []:
                if isinstance(entry, dict):
                    names |= _raw_step_names(entry.get("steps"))
    return names


def _step_notes(steps: list[BaseStep]) -> list[str]:
    """merobox step keys accepted here with another meaning, said once each."""
    notes = []
    everything = list(_all_steps(steps))
    if any("token" in s.raw for s in everything):
        notes.append(
            "token: a step's own JWT is not used; steps reach a node with its own credentials "
            "(remote_nodes.<name>.auth)"
        )
    if any(s.raw.get("unauthenticated") for s in everything):
        notes.append(
            "unauthenticated: calls are sent with the node's credentials, if it has any "
            "(local nodes need none)"
        )
    for s in everything:
        if s.type_name == "script" and s.raw.get("target") == "nodes" and s.raw.get("outputs"):
            results = (
                f"${{results.{s.explicit_name}.nodes.<node>…}}" if s.explicit_name
                else "its results"
            )
            notes.append(
                f"{s.location}: script {s.display_name!r}: `outputs:` is not applied with "
                f"`target: nodes` (merobox applies it to no script run in nodes); each node's "
                f"exit_code, stdout and duration_seconds are in {results}, and merobox's "
                "{{script_exit_code_<node>}}, {{script_output_<node>}} and "
                "{{script_execution_time_<node>}} are set"
            )
    lines: dict[str, list[int]] = {}
    for s in steps:
        if s.explicit_name:
            lines.setdefault(s.explicit_name, []).append(s.location.line)
    for name, at in lines.items():
        if len(at) > 1:
            notes.append(
                f"{len(at)} steps are named {name!r} (lines {', '.join(map(str, at))}): "
                f"${{results.{name}…}} and the results file hold the last of them that "
                "passed; give each its own name to keep each"
            )
    if any(s.type_name == "create_mesh" and "capability" in s.raw for s in everything):
        notes.append(
            "create_mesh.capability: ignored. Older merobox passed it (default `member`) "
            "with its context invitations, whose later clients dropped it; here the other "
            "nodes join through the namespace as members (current merobox refuses the key)"
        )
    return notes


def _notes(settings: WorkflowSettings, data: LocatedDict) -> list[str]:
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
    if (
        settings.auth_service or settings.auth_mode or settings.auth_image
        or settings.auth_use_cached or settings.webui_use_cached
    ):
        notes.append(
            "auth_service / auth_mode / auth_image / auth_use_cached / webui_use_cached: no auth "
            "proxy or web UI is started; to test an authenticating node, list it under "
            "remote_nodes with its auth"
        )
    if settings.preserve_default_bootstrap or settings.bootstrap_nodes:
        notes.append("bootstrap_nodes / preserve_default_bootstrap: nodes only peer with the nodes of this run")
    if settings.no_docker or settings.binary_path:
        notes.append(
            "no_docker / binary_path: merobox's binary mode; here local nodes run embedded "
            "unless `backend: docker` (or --backend docker) asks for containers"
        )
    if settings.near_devnet or settings.contracts_dir:
        notes.append(
            "near_devnet / contracts_dir: no NEAR devnet is started; use `sandbox:` and "
            "`contracts:` for a chain sandbox"
        )
    if settings.topology:
        notes.append(
            "topology: there is no boot-node or NAT topology; the nodes of a run reach each "
            "other directly"
        )
    nodes = data.get("nodes")
    if isinstance(nodes, dict) and "chain_id" in nodes:
        notes.append("nodes.chain_id: nodes here join no chain; the setting is ignored")
    if isinstance(nodes, dict) and nodes.get("init_args"):
        notes.append(
            "nodes.init_args: not passed to the nodes (embedded nodes have no `merod init`, and "
            "Docker nodes get extra init arguments only from `contracts:`)"
        )
    return notes


def _sorted(problems: list[Problem]) -> list[Problem]:
    def key(p: Problem) -> tuple[int, int]:
        return (p.location.line, p.location.col) if p.location else (0, 0)

    unique: list[Problem] = []
    for p in sorted(problems, key=key):
        if p not in unique:
            unique.append(p)
    return unique


def _yaml_kind(value: Any) -> str:
    """What a YAML value is, in the words of YAML (not Python's class names)."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value[:60]!r}"
    return type(value).__name__
