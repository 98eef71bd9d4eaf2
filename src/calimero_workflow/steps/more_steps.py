"""Applications, blobs and ``create_mesh`` (one step for a whole shared context)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field

from ..appinstall import install_local_app
from ..confined import ConfinedPathError, read_file, same_file, write_confined
from ..errors import Problem, StepFailure
from ..validation import contains_deferred
from .base import (
    BaseStep,
    NodeStepConfig,
    PathText,
    StepConfig,
    StepRun,
    ValidationContext,
    file_hint,
    register_step,
    workflow_file,
)
from .ids import HexId


class GetApplicationConfig(NodeStepConfig):
    application_id: HexId


@register_step
class GetApplication(BaseStep):
    type_name = "get_application"
    Config = GetApplicationConfig
    default_retries = 2
    summary = "read an installed application's record → `application` (null when absent)"

    async def execute(self, config: GetApplicationConfig, run: StepRun) -> dict[str, Any]:
        app = await run.ctx.client(config.node).get_application(config.application_id)
        run.response = {"application": app}
        return {"application": app, "installed": app is not None}


def _confined(step: BaseStep, value: str, base: Path, key: str, *, existing: bool = False) -> Path:
    path = (workflow_file(base, value) if existing else base / value).resolve()
    roots = [base.resolve(), Path.cwd().resolve()]
    if not any(path == r or r in path.parents for r in roots):
        raise StepFailure(
            f"{key} {value!r} is outside the workflow's folder and the working directory",
            location=step.key_location(key),
        )
    return path


class UploadBlobConfig(NodeStepConfig):
    file_path: PathText = Field(validation_alias=AliasChoices("file_path", "path"))
    context_id: HexId | None = None


@register_step
class UploadBlob(BaseStep):
    type_name = "upload_blob"
    Config = UploadBlobConfig
    default_retries = 2
    exports = {"blob_id_{node}": "blob_id"}
    summary = "upload a file as a blob → `blob_id`, `size`, `sha256`"

    def check(self, config: UploadBlobConfig, vctx: ValidationContext) -> list[Problem]:
        problems = super().check(config, vctx)
        if vctx.check_files and not contains_deferred(config.file_path):
            path = workflow_file(vctx.base_dir, config.file_path).resolve()
            roots = [vctx.base_dir.resolve(), Path.cwd().resolve()]
            if not any(path == r or r in path.parents for r in roots):
                problems.append(
                    self.problem(
                        f"file_path {config.file_path!r} is outside the workflow's folder and the working directory",
                        key="file_path",
                    )
                )
            elif not path.is_file():
                problems.append(
                    self.problem(f"file not found: {config.file_path}", key="file_path", hint=file_hint(vctx.base_dir))
                )
        return problems

    async def execute(self, config: UploadBlobConfig, run: StepRun) -> dict[str, Any]:
        path = _confined(self, config.file_path, run.ctx.workflow.base_dir, "file_path", existing=True)
        run.ctx.files_read.append(path)
        content = read_file(path)
        data = await run.ctx.client(config.node).upload_blob(content, context_id=config.context_id)
        run.response = data
        blob_id = data.get("blobId") or data.get("blob_id")
        return {"blob_id": blob_id, "size": len(content), "sha256": hashlib.sha256(content).hexdigest()}


class DownloadBlobConfig(NodeStepConfig):
    blob_id: HexId
    context_id: HexId | None = None
    output_path: PathText | None = None
    expected_size: int | None = Field(default=None, ge=0)
    expected_sha256: str | None = None


@register_step
class DownloadBlob(BaseStep):
    type_name = "download_blob"
    Config = DownloadBlobConfig
    default_retries = 2
    summary = "download a blob, optionally checking its size and sha256 → `size`, `sha256`"

    def check(self, config: DownloadBlobConfig, vctx: ValidationContext) -> list[Problem]:
        problems = super().check(config, vctx)
        out = config.output_path
        if out and vctx.check_files and not contains_deferred(out):
            path = (vctx.base_dir / out).resolve()
            roots = [vctx.base_dir.resolve(), Path.cwd().resolve()]
            if not any(path == r or r in path.parents for r in roots):
                problems.append(
                    self.problem(
                        f"output_path {out!r} is outside the workflow's folder and the working directory",
                        key="output_path",
                        hint="write downloads next to the workflow or inside the repository",
                    )
                )
            elif vctx.file is not None and same_file(vctx.base_dir / out, vctx.file):
                problems.append(self._overwrites_workflow(out, vctx.file))
        return problems

    def _overwrites_workflow(self, out: str, workflow: Path) -> Problem:
        return self.problem(
            f"output_path {out!r} is the workflow file {workflow}: the download would overwrite it",
            key="output_path",
            hint="write the blob to a file of its own, e.g. output_path: downloads/blob.bin",
        )

    async def execute(self, config: DownloadBlobConfig, run: StepRun) -> dict[str, Any]:
        content = await run.ctx.client(config.node).download_blob(config.blob_id, context_id=config.context_id)
        digest = hashlib.sha256(content).hexdigest()
        data: dict[str, Any] = {"blob_id": config.blob_id, "size": len(content), "sha256": digest}
        if config.output_path:
            base = run.ctx.workflow.base_dir
            workflow = run.ctx.workflow.path
            if workflow is not None and same_file(base / config.output_path, workflow):
                # written out, refused at load; this one came from a placeholder
                problem = self._overwrites_workflow(config.output_path, workflow)
                raise StepFailure(problem.message, location=problem.location, hint=problem.hint, data=data)
            try:
                out = await asyncio.to_thread(
                    write_confined, config.output_path, content, base=base, roots=[base, Path.cwd()]
                )
            except (ConfinedPathError, OSError) as exc:
                raise StepFailure(
                    f"cannot write output_path {config.output_path!r}: {exc}",
                    location=self.key_location("output_path"),
                    hint="output_path is relative to the workflow's folder, must stay inside it or "
                    "the working directory, and may pass through no symbolic link",
                    data=data,
                ) from None
            data["output_path"] = str(out)
        if config.expected_size is not None and config.expected_size != len(content):
            raise StepFailure("blob size differs", kind="assertion", expected=config.expected_size,
                              actual=len(content), location=self.key_location("expected_size"), data=data)
        if config.expected_sha256 and config.expected_sha256.lower() != digest:
            raise StepFailure("blob sha256 differs", kind="assertion", expected=config.expected_sha256,
                              actual=digest, location=self.key_location("expected_sha256"), data=data)
        return data


class CreateMeshConfig(StepConfig):
    context_node: str
    application_id: HexId
    nodes: list[str] = Field(min_length=1)
    params: dict[str, Any] | str | None = None
    #: A wasm file to dev-install on every other node first (relative to the workflow).
    path: PathText | None = None
    #: Older merobox's capability for the invited members: accepted, not used
    #: (a note says so).
    capability: str | None = None


@register_step
class CreateMesh(BaseStep):
    type_name = "create_mesh"
    Config = CreateMeshConfig
    default_retries = 2
    summary = (
        "namespace + context on `context_node`, then invite, join and join the context on every "
        "other node → `context_id`, `namespace_id`, `member_public_key`, per-node `members`"
    )

    def node_of(self, config: Any) -> str | None:
        return getattr(config, "context_node", None)

    def check(self, config: CreateMeshConfig, vctx: ValidationContext) -> list[Problem]:
        problems = super().check(config, vctx)
        if config.path and vctx.check_files and not contains_deferred(config.path):
            if not workflow_file(vctx.base_dir, config.path).is_file():
                problems.append(
                    self.problem(
                        f"application file not found: {config.path}", key="path", hint=file_hint(vctx.base_dir)
                    )
                )
        return problems

    def check_raw(self, vctx: ValidationContext) -> list[Problem]:
        problems = super().check_raw(vctx)
        nodes = self.raw.get("nodes")
        # Anything but a list is the model's to report.
        names = [self.raw.get("context_node")] + (nodes if isinstance(nodes, list) else [])
        for name in names:
            if isinstance(name, str) and "${" not in name and "{{" not in name and vctx.all_nodes and name not in vctx.all_nodes:
                problems.append(self.unknown_node_problem(name, "nodes", vctx))
        return problems

    async def execute(self, config: CreateMeshConfig, run: StepRun) -> dict[str, Any]:
        import json

        ctx = run.ctx
        owner = ctx.client(config.context_node)
        ns = await owner.create_namespace(config.application_id)
        if isinstance(config.params, dict):
            params = json.dumps(config.params, separators=(",", ":")).encode()
        else:
            params = (config.params or "").encode()
        created = await owner.create_context(config.application_id, ns, params=params)
        context_id = created["contextId"]
        members: dict[str, Any] = {}
        captured = ctx.captured
        captured["namespace_id"] = ns
        captured[f"namespace_id_{config.context_node}"] = ns
        captured[f"context_id_{config.context_node}"] = context_id
        captured[f"public_key_{config.context_node}"] = created.get("memberPublicKey")
        for name in config.nodes:
            if name == config.context_node:
                continue
            client = ctx.client(name)
            if config.path:
                local = ctx.local_file(config.path)
                installed = await install_local_app(ctx, name, local)
                if installed.bundle is not None:
                    run.log(f"{name} installs signed bundles only: installed {installed.bundle['path']}")
            invitation = await owner.create_namespace_invitation(ns)
            joined = await client.join_namespace(ns, invitation["invitation"])
            in_context = await client.join_context(context_id)
            members[name] = {
                "member_identity": joined.get("memberIdentity"),
                "member_account": joined.get("memberAccount"),
                "public_key": (in_context or {}).get("memberPublicKey"),
            }
            captured[f"member_identity_{name}"] = joined.get("memberIdentity")
            captured[f"member_account_{name}"] = joined.get("memberAccount")
            captured[f"public_key_{name}"] = (in_context or {}).get("memberPublicKey")
            captured[f"context_id_{name}"] = context_id
            run.log(f"{name} joined namespace {ns} and context {context_id}")
        run.response = {
            "contextId": context_id,
            "memberPublicKey": created.get("memberPublicKey"),
            "namespaceId": ns,
        }
        return {
            "context_id": context_id,
            "member_public_key": created.get("memberPublicKey"),
            "namespace_id": ns,
            "members": members,
        }
