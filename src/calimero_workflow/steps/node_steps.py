"""Steps that ask one node to do something: install, namespaces, contexts, calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, field_validator, model_validator

from ..appfetch import AppFetchError, download_app
from ..appinstall import install_local_app
from ..client import NodeError, NodeUnsupportedError
from ..credentials import redact_url
from ..errors import Problem, StepFailure
from ..validation import MAX_SECONDS, contains_deferred
from .base import (
    BaseStep,
    NodeStepConfig,
    PathText,
    StepRun,
    ValidationContext,
    file_hint,
    register_step,
    workflow_file,
)
from .ids import HexId


def _ns_field() -> Any:
    return Field(validation_alias=AliasChoices("namespace_id", "group_id"))


# -- install_application ------------------------------------------------------


class InstallConfig(NodeStepConfig):
    path: PathText | None = None
    url: str | None = None
    #: merobox's switch for a local file; a `path` is always a dev install here.
    dev: bool | None = None
    hash: str | None = None
    metadata: str | dict[str, Any] | None = None
    package: str | None = None
    version: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> InstallConfig:
        if self.path and self.url:
            raise ValueError(
                "give one of `path` (a local .wasm or .mpk file) and `url`, not both"
            )
        if not (self.path or self.url or (self.package and self.version)):
            raise ValueError(
                "give `path` (a local .wasm or .mpk file), `url`, or `package` with `version` "
                "(installed from the node's registry)"
            )
        return self


def _metadata_bytes(value: str | dict[str, Any] | None) -> bytes:
    if value is None:
        return b""
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":")).encode()
    return value.encode()


@register_step
class InstallApplication(BaseStep):
    """Install an application from a ``path`` (relative to the workflow), a ``url``,
    or registry coordinates (``package`` and ``version`` alone)."""

    type_name = "install_application"
    Config = InstallConfig
    exports = {"app_id_{node}": "application_id", "app_path_{node}": "path"}
    default_retries = 2
    summary = (
        "install an app on a node from `path` (relative to the workflow file), `url`, "
        "or the node's registry (`package` and `version`) → `application_id`"
    )

    def check(self, config: InstallConfig, vctx: ValidationContext) -> list[Problem]:
        from ..bundle import coordinates_problem

        problems = super().check(config, vctx)
        # what a bundle built for the node, and merod's registry, take
        for key in ("package", "version"):
            value = getattr(config, key)
            if value is None or contains_deferred(value):
                continue
            problem = coordinates_problem(**{key: value, ("version" if key == "package" else "package"): None})
            if problem:
                problems.append(
                    self.problem(
                        f"{key}: {problem}",
                        key=key,
                        hint="a package id such as com.example.app, and a version such as 1.0.0",
                    )
                )
        if config.path and vctx.check_files and not contains_deferred(config.path):
            if not workflow_file(vctx.base_dir, config.path).is_file():
                problems.append(
                    self.problem(
                        f"application file not found: {config.path}",
                        key="path",
                        hint=file_hint(vctx.base_dir),
                    )
                )
        return problems

    async def execute(self, config: InstallConfig, run: StepRun) -> dict[str, Any]:
        try:
            if config.path:
                return await self._install_path(config, run)
            if config.url:
                return await self._install_url(config, run)
            return await self._install_coordinates(config, run)
        except NodeUnsupportedError as exc:
            raise StepFailure(
                exc.message,
                location=self.key_location(exc.fields[0]),
                hint=exc.hint,
            ) from exc

    async def _install_file(
        self, config: InstallConfig, run: StepRun, local: Path
    ) -> dict[str, Any]:
        """Install a file of this machine on a node this run started: its
        ``application_id``, and ``bundle`` when the node needed one built."""
        installed = await install_local_app(
            run.ctx,
            config.node,
            local,
            metadata=_metadata_bytes(config.metadata),
            package=config.package,
            version=config.version,
        )
        out: dict[str, Any] = {"application_id": installed.application_id}
        if installed.bundle is not None:
            b = installed.bundle
            run.log(
                f"{config.node} installs signed bundles only: built {b['package']}@{b['version']} "
                f"from {local.name}, signed with the dev key {b['signer_id']}, as {b['path']}"
            )
            out["bundle"] = dict(b)
        return out

    async def _install_path(self, config: InstallConfig, run: StepRun) -> dict[str, Any]:
        ctx = run.ctx
        assert config.path is not None
        local = ctx.local_file(config.path)
        if not local.is_file():
            raise StepFailure(
                f"application file not found: {config.path}",
                location=self.key_location("path"),
                hint=file_hint(ctx.workflow.base_dir),
            )
        if ctx.node(config.node).kind == "remote":
            raise StepFailure(
                f"node {config.node} is remote: it cannot read a local path",
                location=self.key_location("path"),
                hint="install from a `url` or registry coordinates the remote node can fetch",
            )
        installed = await self._install_file(config, run, local)
        app_id = installed["application_id"]
        run.log(f"installed {local.name} on {config.node} as {app_id}")
        run.response = {"applicationId": app_id}
        return {**installed, "path": str(local), "node": config.node}

    async def _install_url(self, config: InstallConfig, run: StepRun) -> dict[str, Any]:
        """A node this run started gets the file from the engine: current merod
        installs no URLs. A remote node is asked to fetch it itself."""
        ctx = run.ctx
        assert config.url is not None
        # its password and token-like query values are masked already: from
        # the file since the load, from a placeholder since it resolved
        shown = redact_url(config.url)
        if ctx.node(config.node).kind == "remote" or ctx.backend is None:
            app_id = await ctx.client(config.node).install_application(
                config.url,
                hash=config.hash,
                metadata=_metadata_bytes(config.metadata),
                package=config.package,
                version=config.version,
            )
            run.response = {"applicationId": app_id}
            return {"application_id": app_id, "url": config.url, "node": config.node}
        try:
            local = await download_app(
                config.url, ctx.backend.workdir / "downloads", expected_hash=config.hash
            )
        except AppFetchError as exc:
            raise StepFailure(
                exc.message, location=self.key_location(exc.key), hint=exc.hint
            ) from None
        run.log(f"downloaded {shown} ({local.stat().st_size} bytes) to {local}")
        installed = await self._install_file(config, run, local)
        app_id = installed["application_id"]
        run.log(f"installed {shown} on {config.node} as {app_id}")
        run.response = {"applicationId": app_id}
        return {
            **installed,
            "url": config.url,
            "path": str(local),
            "node": config.node,
        }

    async def _install_coordinates(
        self, config: InstallConfig, run: StepRun
    ) -> dict[str, Any]:
        assert config.package and config.version
        app_id = await run.ctx.client(config.node).install_from_registry(
            config.package, config.version
        )
        run.log(f"installed {config.package}@{config.version} on {config.node} as {app_id}")
        run.response = {"applicationId": app_id}
        return {
            "application_id": app_id,
            "package": config.package,
            "version": config.version,
            "node": config.node,
        }


# -- namespaces --------------------------------------------------------------------


class CreateNamespaceConfig(NodeStepConfig):
    application_id: HexId
    namespace_name: str | None = Field(default=None, validation_alias=AliasChoices("namespace_name", "group_name"))
    app_key: str | None = None


@register_step
class CreateNamespace(BaseStep):
    type_name = "create_namespace"
    aliases = ("create_group",)
    Config = CreateNamespaceConfig
    exports = {"namespace_id_{node}": "namespace_id"}
    default_retries = 2
    summary = "create a namespace for an installed app → `namespace_id`"

    async def execute(self, config: CreateNamespaceConfig, run: StepRun) -> dict[str, Any]:
        ns = await run.ctx.client(config.node).create_namespace(
            config.application_id, name=config.namespace_name, app_key=config.app_key
        )
        run.response = {"namespaceId": ns}
        return {"namespace_id": ns, "application_id": config.application_id}


class InviteConfig(NodeStepConfig):
    namespace_id: HexId = _ns_field()
    recursive: bool | None = None
    expiration_timestamp: int | None = None


@register_step
class Invite(BaseStep):
    type_name = "invite"
    aliases = (
        "create_namespace_invitation",
        "create_group_invitation",
        "invite_open",
        "invite_identity",
    )
    Config = InviteConfig
    exports = {"namespace_invitation_{node}": "invitation"}
    default_retries = 2
    summary = "create an invitation to a namespace → `invitation`"

    async def execute(self, config: InviteConfig, run: StepRun) -> dict[str, Any]:
        data = await run.ctx.client(config.node).create_namespace_invitation(
            config.namespace_id,
            expiration_timestamp=config.expiration_timestamp,
            recursive=config.recursive,
        )
        run.response = data
        out: dict[str, Any] = {"namespace_id": config.namespace_id}
        if isinstance(data, dict):
            if "invitation" in data:
                out["invitation"] = data["invitation"]
            if "invitations" in data:
                out["invitations"] = data["invitations"]
                # A recursive invitation lists one per group; the namespace's
                # own is the one `join` takes.
                entries = [e for e in data["invitations"] if isinstance(e, dict)]
                own = [e for e in entries if e.get("groupId") == config.namespace_id]
                if "invitation" not in out and (own or entries):
                    out["invitation"] = (own or entries)[0].get("invitation")
            if data.get("groupName"):
                out["group_name"] = data["groupName"]
        return out


def _unwrap_invitation(value: Any) -> Any:
    """Accept an invitation as an object, JSON text, or wrapped in ``invitation``."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise StepFailure(
                "invitation is text that is not JSON",
                hint="pass ${results.<invite step>.invitation}",
            ) from None
    while (
        isinstance(value, dict)
        and "inviter_signature" not in value
        and isinstance(value.get("invitation"), (dict, str))
    ):
        inner = value["invitation"]
        value = json.loads(inner) if isinstance(inner, str) else inner
    return value


class JoinConfig(NodeStepConfig):
    namespace_id: HexId = _ns_field()
    invitation: Any


@register_step
class Join(BaseStep):
    type_name = "join"
    aliases = ("join_namespace", "join_group", "join_open")
    Config = JoinConfig
    exports = {"member_identity_{node}": "member_identity", "member_account_{node}": "member_account"}
    default_retries = 2
    summary = (
        "join a namespace with an invitation, and with it its contexts → `namespace_id`, "
        "`member_identity`"
    )

    async def execute(self, config: JoinConfig, run: StepRun) -> dict[str, Any]:
        data = await run.ctx.client(config.node).join_namespace(
            config.namespace_id, _unwrap_invitation(config.invitation)
        )
        run.response = data
        return {
            "namespace_id": data.get("namespaceId", config.namespace_id),
            "member_identity": data.get("memberIdentity"),
            "member_account": data.get("memberAccount"),
        }


# -- contexts and identities ----------------------------------------------------------


class CreateContextConfig(NodeStepConfig):
    application_id: HexId
    namespace_id: HexId = _ns_field()
    #: Initialisation arguments: a mapping, or JSON text.
    params: dict[str, Any] | str | None = None
    seed: str | None = None
    service_name: str | None = None
    context_name: str | None = None

    @field_validator("params")
    @classmethod
    def _json_params(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip():
            try:
                json.loads(value)
            except ValueError as exc:
                raise ValueError(f"params is not valid JSON: {exc}") from None
        return value


@register_step
class CreateContext(BaseStep):
    type_name = "create_context"
    Config = CreateContextConfig
    exports = {
        "context_id_{node}": "context_id",
        "member_public_key_{node}": "member_public_key",
        "namespace_id_{node}": "namespace_id",
        "context_{node}": "*",
    }
    default_retries = 2
    summary = "create a context in a namespace, running the app's `init` → `context_id`, `member_public_key`"

    async def execute(self, config: CreateContextConfig, run: StepRun) -> dict[str, Any]:
        if isinstance(config.params, dict):
            params = json.dumps(config.params, separators=(",", ":")).encode()
        elif isinstance(config.params, str) and config.params.strip():
            params = config.params.encode()
        else:
            params = b""
        data = await run.ctx.client(config.node).create_context(
            config.application_id,
            config.namespace_id,
            params=params,
            seed=config.seed,
            service_name=config.service_name,
            name=config.context_name,
        )
        run.response = data
        return {
            "context_id": data["contextId"],
            "member_public_key": data.get("memberPublicKey"),
            "namespace_id": data.get("groupId") or config.namespace_id,
            "application_id": config.application_id,
        }


@register_step
class CreateIdentity(BaseStep):
    type_name = "create_identity"
    Config = NodeStepConfig
    exports = {"public_key_{node}": "public_key"}
    default_retries = 2
    summary = "generate a new identity key pair on a node → `public_key`"

    async def execute(self, config: NodeStepConfig, run: StepRun) -> dict[str, Any]:
        key = await run.ctx.client(config.node).create_identity()
        run.response = {"publicKey": key}
        return {"public_key": key}


class JoinContextConfig(NodeStepConfig):
    context_id: HexId


@register_step
class JoinContext(BaseStep):
    type_name = "join_context"
    Config = JoinContextConfig
    exports = {
        "context_id_{node}": "context_id",
        "context_member_public_key_{node}": "member_public_key",
    }
    default_retries = 2
    summary = (
        "join a context of a namespace the node belongs to (done by `join` already; "
        "idempotent) → `context_id`, `member_public_key`"
    )

    async def execute(self, config: JoinContextConfig, run: StepRun) -> dict[str, Any]:
        data = await run.ctx.client(config.node).join_context(config.context_id)
        data = data or {}
        run.response = data
        return {
            "context_id": data.get("contextId", config.context_id),
            "member_public_key": data.get("memberPublicKey"),
        }


# -- call ------------------------------------------------------------------------------


_MISSING = object()


class CallConfig(NodeStepConfig):
    context_id: HexId
    method: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_]+$")
    args: dict[str, Any] | None = None
    #: Accepted for merobox files; every call is a JSON-RPC execute.
    exec_type: str | None = None
    executor_public_key: HexId | None = None
    #: When given, the call fails unless its output equals this value.
    expected: Any = Field(default=_MISSING)
    #: The step passes whether the call succeeds or fails; `success` and the
    #: `error*` fields of its results say which (merobox's allow_failure).
    allow_failure: bool = False
    #: merobox's names for retrying a call while the node's state is not
    #: synced yet (``Uninitialized``): attempts in all, and the first delay.
    state_retry_attempts: int | None = Field(default=None, ge=1, le=101)
    state_retry_delay: float | None = Field(default=None, ge=0, le=MAX_SECONDS)
    #: Accepted for merobox files: calls carry the node's credentials.
    unauthenticated: bool = False

    @model_validator(mode="after")
    def _merobox_retries(self) -> CallConfig:
        if self.allow_failure and self.expected_failure:
            raise ValueError(
                "give either `allow_failure` (pass either way) or `expected_failure` (pass only on failure)"
            )
        # `retries`, when given too, wins: it is this project's own name.
        if self.state_retry_attempts is not None and self.retries is None:
            self.retries = self.state_retry_attempts - 1
        if self.state_retry_delay is not None and "retry_delay" not in self.model_fields_set:
            self.retry_delay = self.state_retry_delay
        return self


def outputs_equal(expected: Any, actual: Any) -> bool:
    """Equality used by ``call.expected`` and ``assert``: numbers compare numerically."""
    if expected == actual and type(expected) is type(actual):
        return True
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected == actual and isinstance(expected, bool) and isinstance(actual, bool)
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        # Python compares an int with a float exactly, with no rounding
        return expected == actual
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(
            outputs_equal(expected[k], actual[k]) for k in expected
        )
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(
            outputs_equal(e, a) for e, a in zip(expected, actual, strict=True)
        )
    return expected == actual


@register_step
class Call(BaseStep):
    type_name = "call"
    Config = CallConfig
    default_retries = 3
    summary = "call an app method over JSON-RPC → `output`, `logs`, `events`"

    async def _execute_with_policy(self, config: CallConfig, run: StepRun) -> tuple[dict[str, Any], int]:  # type: ignore[override]
        try:
            data, attempts = await super()._execute_with_policy(config, run)
        except NodeError as exc:
            if not config.allow_failure:
                raise
            # allow_failure: the outcome is data, the step passes.
            run.log(f"the call failed, which allow_failure permits: {exc}")
            retries = config.retries if config.retries is not None else self.default_retries
            attempts = retries + 1 if getattr(exc, "transient", False) else 1
            data = {
                "output": None, "logs": [], "events": [], "args": config.args or {},
                "success": False, **self._expected_failure_data(exc),
            }
            run.response = {}
            return data, attempts
        if config.allow_failure:
            data = {**data, "success": True, "error": None, "error_message": None,
                    "error_type": None, "error_code": None}
        return data, attempts

    def export(self, config: CallConfig, data: dict[str, Any], run: StepRun, *, lenient: bool = False) -> None:  # type: ignore[override]
        # A failed call under allow_failure has no output to capture.
        super().export(config, data, run, lenient=lenient or data.get("success") is False)

    async def execute(self, config: CallConfig, run: StepRun) -> dict[str, Any]:
        result = await run.ctx.client(config.node).execute(
            config.context_id,
            config.method,
            config.args or {},
            executor_public_key=config.executor_public_key,
        )
        for line in result.logs:
            run.log(f"[{config.node} app log] {line}")
        for event in result.events:
            run.log(f"[{config.node} event] {json.dumps(event, ensure_ascii=False)}")
        # `outputs:` read the response as merod sends it: its `result` holds
        # only `output` (embedded nodes add logs and events, kept below).
        response = dict(result.raw) if isinstance(result.raw, dict) else {}
        if isinstance(response.get("result"), dict):
            response["result"] = {"output": result.output}
        run.response = response
        data = {
            "output": result.output,
            "logs": result.logs,
            "events": result.events,
            "args": config.args or {},
        }
        if config.expected is not _MISSING and not outputs_equal(config.expected, result.output):
            raise StepFailure(
                f"{config.method} returned an unexpected value",
                kind="assertion",
                expected=config.expected,
                actual=result.output,
                location=self.key_location("expected"),
                data=data,
            )
        return data


# -- removing contexts and applications; the node's identity ----------------------------


class DeleteContextConfig(NodeStepConfig):
    context_id: HexId
    #: The admin identity merod asks for when the context belongs to a group.
    requester: HexId | None = None


@register_step
class DeleteContext(BaseStep):
    type_name = "delete_context"
    Config = DeleteContextConfig
    default_retries = 2
    summary = "delete a context on a node (the node leaves it until `join_context`) → `deleted`"

    async def execute(self, config: DeleteContextConfig, run: StepRun) -> dict[str, Any]:
        data = await run.ctx.client(config.node).delete_context(
            config.context_id, requester=config.requester
        )
        run.response = data
        return {"context_id": config.context_id, "deleted": bool(data.get("isDeleted", True))}


class UninstallApplicationConfig(NodeStepConfig):
    application_id: HexId


@register_step
class UninstallApplication(BaseStep):
    type_name = "uninstall_application"
    Config = UninstallApplicationConfig
    default_retries = 2
    summary = "remove an installed application from a node → `application_id`"

    async def execute(self, config: UninstallApplicationConfig, run: StepRun) -> dict[str, Any]:
        data = await run.ctx.client(config.node).uninstall_application(config.application_id)
        run.response = data
        return {"application_id": data.get("applicationId", config.application_id)}


@register_step
class NodeIdentity(BaseStep):
    type_name = "node_identity"
    Config = NodeStepConfig
    default_retries = 2
    #: merobox's automatic names.
    exports = {
        "identity_account_id_{node}": "account_id",
        "identity_device_id_{node}": "device_id",
        "identity_public_key_{node}": "public_key",
        "identity_account_root_{node}": "account_root_public_key",
        "identity_agreement_key_{node}": "device_agreement_key",
    }
    summary = (
        "read who a node is → `account_id`, `device_id`, `public_key`, `account_root_public_key`"
    )

    async def execute(self, config: NodeStepConfig, run: StepRun) -> dict[str, Any]:
        data = await run.ctx.client(config.node).node_identity()
        run.response = data
        return {
            "account_id": data.get("accountId"),
            "device_id": data.get("deviceId"),
            "public_key": data.get("publicKey"),
            "account_root_public_key": data.get("accountRootPublicKey"),
            "device_agreement_key": data.get("deviceAgreementKey"),
        }
