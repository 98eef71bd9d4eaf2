"""``WorkflowExecutor``: one workflow run through its lifecycle phases.

The phases run in this order, each recorded as a :class:`PhaseRecord`:

======================  ======================================================
nuke                    remove leftovers of an earlier run (``nuke_on_start``)
pull_image              make sure the node image is present
sandbox_start           start a chain sandbox, when the workflow names one
deploy_contracts        deploy contracts into it, when the workflow names them
nodes_start             start local nodes in parallel and wait until ready
register_remote_nodes   check remote nodes answer, attach their credentials
steps                   run the steps in order; stop at the first failure
on_failure              on failure: capture node logs, node states, contexts
cleanup                 always: write node logs, stop and remove what we made
======================  ======================================================

A phase with nothing to do for this workflow or backend says so and is
recorded as skipped. Cleanup runs on success, failure, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .backends.base import (
    BackendError,
    NodeBackend,
    NodeSpec,
    NodeUnavailableError,
    PhaseReport,
)
from .client import NodeClient, NodeError
from .confined import replace_file
from .credentials import redact_url
from .errors import StepFailure, WorkflowValidationError
from .placeholders import Resolver
from .results import (
    ErrorInfo,
    PhaseRecord,
    RunResult,
    Status,
    StepRecord,
    error_from_exception,
)
from .steps.base import NodeRef, RunContext, RunEvents, StepRun
from .workflow import Workflow, backend_problems

log = logging.getLogger("calimero_workflow")

PHASES = (
    "nuke",
    "pull_image",
    "sandbox_start",
    "deploy_contracts",
    "nodes_start",
    "register_remote_nodes",
    "steps",
    "on_failure",
    "cleanup",
)

BACKENDS = ("embedded", "docker")


class _PhaseFailed(Exception):
    pass


#: How long the on_failure phase waits for a node to list its contexts.
_INSPECT_TIMEOUT = 5.0


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def make_backend(
    kind: str, *, run_id: str, workflow: Workflow, workdir: Path, image: str | None
) -> NodeBackend:
    """Create the node backend named ``kind``."""
    if kind == "embedded":
        from .backends.embedded import EmbeddedBackend

        return EmbeddedBackend(run_id=run_id, workflow_name=workflow.name, workdir=workdir)
    if kind == "docker":
        from .backends.docker import DockerBackend

        return DockerBackend(
            run_id=run_id,
            workflow_name=workflow.name,
            workdir=workdir,
            image=image or workflow.settings.image or _workflow_image(workflow),
        )
    raise BackendError(f"unknown backend {kind!r}", hint="use one of: " + ", ".join(BACKENDS))


def _workflow_image(workflow: Workflow) -> str | None:
    for node in workflow.nodes:
        if node.image:
            return node.image
    return None


class WorkflowExecutor:
    """Runs one loaded workflow and returns its :class:`RunResult`."""

    def __init__(
        self,
        workflow: Workflow,
        *,
        backend: str | None = None,
        image: str | None = None,
        env: dict[str, str] | None = None,
        events: RunEvents | None = None,
        workdir: Path | None = None,
        logs_dir: Path | None = None,
        run_id: str | None = None,
        resolver: Resolver | None = None,
        nuke: bool | None = None,
        force_pull: bool | None = None,
        backend_factory: Callable[..., NodeBackend] | None = None,
        secret_values: list[str] | None = None,
    ):
        self.workflow = workflow
        self.backend_kind = backend or workflow.settings.backend or "embedded"
        if self.backend_kind not in BACKENDS:
            raise BackendError(
                f"unknown backend {self.backend_kind!r}", hint="use one of: " + ", ".join(BACKENDS)
            )
        # A step the backend cannot run is refused before any node starts.
        unfit = backend_problems(workflow.steps, self.backend_kind)
        if unfit:
            raise WorkflowValidationError(unfit)
        self.image = image
        self.env = dict(os.environ if env is None else env)
        self.events = events or RunEvents()
        self.run_id = run_id or new_run_id()
        base = workdir or Path(os.environ.get("CW_WORKDIR", Path.cwd() / ".cw-runs"))
        self.workdir = base / f"{_slug(workflow.name)}-{self.run_id}"
        self.logs_dir = logs_dir
        self.resolver = resolver or Resolver()
        self.nuke = workflow.settings.nuke_on_start if nuke is None else nuke
        self.force_pull = workflow.settings.force_pull_image if force_pull is None else force_pull
        #: --force-pull asks for every image; force_pull_image for the workflow's own.
        self._force_from_file = force_pull is None
        self._backend_factory = backend_factory or make_backend
        self.backend: NodeBackend | None = None
        self.sandbox: Any = None
        self.ctx: RunContext | None = None
        #: Whether :meth:`run` began; until it does, ``result`` is skipped.
        self.started = False
        self.result = RunResult(
            workflow_name=workflow.name,
            workflow_file=str(workflow.path) if workflow.path else None,
            run_id=self.run_id,
            backend=self.backend_kind,
            # the workflow's, and the caller's (values of the environment)
            secrets=list(dict.fromkeys([*workflow.secret_values(), *(secret_values or ())])),
        )

    # -- phases ---------------------------------------------------------------------

    async def _phase(self, name: str, action: Callable[[], Awaitable[PhaseReport | None]]) -> PhaseRecord:
        self.events.phase_started(name)
        started = time.perf_counter()
        record = PhaseRecord(name=name, status=Status.PASSED)
        try:
            report = await action()
            if report is not None:
                record.detail = report.detail
                record.data = report.data
                if report.skipped:
                    record.status = Status.SKIPPED
        except asyncio.CancelledError:
            record.status = Status.FAILED
            record.error = ErrorInfo(message="interrupted", kind="cancelled")
            record.duration_s = time.perf_counter() - started
            self.result.phases.append(record)
            self.events.phase_finished(record)
            raise
        except (BackendError, NodeError, StepFailure, OSError) as exc:
            record.status = Status.FAILED
            record.error = error_from_exception(exc)
            if isinstance(exc, NodeUnavailableError) and exc.last_logs:
                record.data["last_logs"] = exc.last_logs
        except Exception as exc:  # a bug: fail the phase, never the whole run
            log.error("phase %s crashed", name, exc_info=True)
            record.status = Status.FAILED
            record.error = ErrorInfo(
                message=f"internal error in phase {name}: {type(exc).__name__}: {exc}",
                kind="internal",
                hint="this is a bug in calimero-workflow; please report it with this workflow",
            )
        record.duration_s = time.perf_counter() - started
        self.result.phases.append(record)
        self.events.phase_finished(record)
        if record.status is Status.FAILED:
            raise _PhaseFailed(name)
        return record

    def _skip(self, name: str, detail: str) -> None:
        self.events.phase_started(name)
        record = PhaseRecord(name=name, status=Status.SKIPPED, detail=detail)
        self.result.phases.append(record)
        self.events.phase_finished(record)

    async def _nuke(self) -> PhaseReport:
        assert self.backend is not None
        return await self.backend.nuke()

    async def _pull(self) -> PhaseReport:
        assert self.backend is not None
        report = await self.backend.pull_image(
            force=self.force_pull, as_given=self._given_images()
        )
        self.result.image = self.backend.image_info()
        return report

    def _given_images(self) -> set[str]:
        """``--image`` when it replaces the images the workflow names, which
        ``force_pull_image`` then does not pull anew: merobox force-pulls the
        image its file names and never the command line's. (``--force-pull``
        given on the command line is for every image.)"""
        if not self.image or not self._force_from_file:
            return set()
        named = {self.workflow.settings.image, *(node.image for node in self.workflow.nodes)}
        return set() if self.image in named else {self.image}

    def _node_specs(self) -> list[NodeSpec]:
        specs: list[NodeSpec] = []
        for spec in self.workflow.nodes:
            specs.append(
                NodeSpec(
                    name=spec.name,
                    image=self.image or spec.image,
                    server_port=spec.server_port,
                    swarm_port=spec.swarm_port,
                    data_dir=spec.data_dir,
                    env=dict(spec.env),
                    log_level=self.workflow.settings.log_level,
                )
            )
        return specs

    async def _start_sandbox(self) -> PhaseReport:
        from .backends.sandbox import Sandbox

        self.sandbox = Sandbox(
            run_id=self.run_id,
            workflow_name=self.workflow.name,
            settings=self.workflow.settings.sandbox,
            contracts=self.workflow.settings.contracts,
            base_dir=self.workflow.base_dir,
        )
        report = await self.sandbox.start()
        assert self.ctx is not None
        self.ctx.results["sandbox"] = {"url": self.sandbox.url, "internal_url": self.sandbox.internal_url}
        return report

    async def _deploy_contracts(self) -> PhaseReport:
        assert self.sandbox is not None and self.ctx is not None
        report = await self.sandbox.deploy()
        self.ctx.results["deploy_contracts"] = self.sandbox.deployed
        if self.backend is not None:
            # Nodes learn where the contracts are at init.
            self.backend.node_setup(
                env=self.sandbox.node_env(),
                init_args=self.sandbox.init_args(),
                networks=[self.sandbox.network_name],
            )
        return report

    async def _start_nodes(self) -> PhaseReport:
        assert self.backend is not None and self.ctx is not None
        specs = self._node_specs()
        if not specs:
            return PhaseReport(skipped=True, detail="the workflow has no local nodes")
        handles = await self.backend.start_nodes(specs, ready_timeout=self.workflow.settings.wait_timeout)
        for name, handle in handles.items():
            self.ctx.nodes[name] = NodeRef(
                name=name,
                url=handle.url,
                kind=handle.backend,
                client=NodeClient(handle.url, name=name),
                info=dict(handle.info),
            )
            self.result.nodes[name] = {"url": handle.url, "kind": handle.backend, **handle.info}
        if not self.result.image:
            self.result.image = self.backend.image_info()
        return PhaseReport(detail=f"{len(handles)} node(s) ready: " + ", ".join(handles))

    async def _register_remote(self) -> PhaseReport:
        assert self.ctx is not None
        remotes = self.workflow.settings.remote_nodes
        if not remotes:
            return PhaseReport(skipped=True, detail="no remote nodes")
        for name, settings in remotes.items():
            auth = settings.auth
            token = (auth.api_key or auth.key) if auth is not None and auth.method == "api_key" else None
            client = NodeClient(settings.url, name=name, token=token)
            try:
                await client.health(timeout=10)
                if auth is not None and auth.method in ("password", "user_password"):
                    # masked before anything can show it (a node may echo it back)
                    self.ctx.add_secret(
                        await client.obtain_token(auth.username or "", auth.password or "")
                    )
                if auth is not None and auth.method != "none":
                    # health is public; a guarded route proves the credentials work
                    await client.peers_count()
            except NodeError as exc:
                await client.aclose()
                raise BackendError(
                    f"remote node {name} at {redact_url(settings.url)}: {exc}",
                    node=name,
                    hint="check the URL and the node's auth settings (`remote_nodes.<name>.auth`)",
                ) from exc
            self.ctx.nodes[name] = NodeRef(name=name, url=settings.url, kind="remote", client=client)
            self.result.nodes[name] = {"url": redact_url(settings.url), "kind": "remote"}
        return PhaseReport(detail=f"{len(remotes)} remote node(s) answer: " + ", ".join(remotes))

    async def _run_steps(self) -> PhaseReport:
        assert self.ctx is not None
        failed: StepRecord | None = None
        steps = self.workflow.steps
        for i, step in enumerate(steps):
            run = StepRun(ctx=self.ctx, path=step.display_name)
            try:
                record = await step.run(run)
            except asyncio.CancelledError:
                # Interrupted: the step recorded itself as cancelled.
                if run.record is not None:
                    self.result.steps.append(run.record)
                self._skip_steps(steps[i + 1:])
                raise
            self.result.steps.append(record)
            if record.status is Status.FAILED and not record.non_blocking:
                failed = record
                self._skip_steps(steps[i + 1:])
                break
        counts = self.result.counts()
        detail = f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped"
        if failed is not None or counts["failed"]:
            raise StepFailure(
                f"step {(failed or self.result.failed_steps()[0]).path!r} failed" if failed else detail,
                kind="steps",
            )
        return PhaseReport(detail=detail)

    def _skip_steps(self, steps: list[Any]) -> None:
        for rest in steps:
            skipped = StepRecord(
                name=rest.display_name,
                type=rest.type_name,
                path=rest.display_name,
                status=Status.SKIPPED,
                location=rest.location,
            )
            self.result.steps.append(skipped)
            self.events.step_finished(skipped)

    async def _on_failure(self) -> PhaseReport:
        assert self.backend is not None and self.ctx is not None
        data: dict[str, Any] = {}
        dest = self._logs_dir()
        dest.mkdir(parents=True, exist_ok=True)
        states: dict[str, Any] = {}
        # every local node, those that never got ready too: their logs and
        # states are what explains a failed start
        for spec in self.workflow.nodes:
            name = spec.name
            try:
                state = await self.backend.node_state(name)
                states[name] = state.__dict__
            except Exception as exc:  # a node we cannot inspect is itself a finding
                states[name] = {"error": str(exc)}
            ref = self.ctx.nodes.get(name)
            if ref is None:
                states[name]["contexts_error"] = "the node never got ready"
                continue
            halt = self.ctx.halted.get(name)
            if halt is not None:
                # it would not answer: no need to wait for that
                states[name]["contexts_error"] = f"not read: {halt.describe(name)}"
                continue
            try:
                async with asyncio.timeout(_INSPECT_TIMEOUT):
                    contexts = await ref.client.list_contexts()
                states[name]["contexts"] = [
                    {k: c.get(k) for k in ("id", "applicationId", "contextStateHash", "dagHeads")}
                    for c in contexts
                ]
            except NodeError as exc:
                states[name]["contexts_error"] = exc.message
            except TimeoutError:
                states[name]["contexts_error"] = f"no answer within {_INSPECT_TIMEOUT:g} s"
        replace_file(dest / "node-states.json", json.dumps(states, indent=2, default=str).encode())
        data["states"] = str(dest / "node-states.json")
        files = await self.backend.collect_logs(dest, redact=self._redact())
        self.result.node_log_files.update({n: str(p) for n, p in files.items()})
        data["logs"] = {n: str(p) for n, p in files.items()}
        return PhaseReport(detail=f"node logs and states written to {dest}", data=data)

    def _redact(self) -> Callable[[str], str] | None:
        """Masks the workflow's credentials in node logs before they are written:
        a node may log what it was given (a URL with a password in it)."""
        if not self.result.secrets:
            return None
        from .report.github import Redactor

        return Redactor(self.result.secrets).redact

    def _logs_dir(self) -> Path:
        return self.logs_dir if self.logs_dir is not None else self.workdir / "node-logs"

    async def _cleanup(self) -> PhaseReport:
        details = []
        if self.backend is not None:
            if not self.result.node_log_files and self.workflow.nodes:
                try:
                    files = await self.backend.collect_logs(self._logs_dir(), redact=self._redact())
                    self.result.node_log_files.update({n: str(p) for n, p in files.items()})
                    if files:
                        details.append(f"node logs in {self._logs_dir()}")
                except Exception as exc:  # never let log capture stop the teardown
                    details.append(f"could not write node logs: {exc}")
            report = await self.backend.cleanup()
            if report.detail:
                details.append(report.detail)
            if self.workflow.settings.nuke_on_end:
                nuked = await self.backend.nuke()
                details.append(nuked.detail)
        if self.sandbox is not None:
            await self.sandbox.cleanup()
            details.append("sandbox removed")
        if self.ctx is not None:
            for ref in self.ctx.nodes.values():
                await ref.client.aclose()
        return PhaseReport(detail="; ".join(d for d in details if d))

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> RunResult:
        """Run every phase; always clean up; return the result."""
        self.started = True
        started = time.perf_counter()
        self.result.started_at = time.time()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ctx = RunContext(
            workflow=self.workflow,
            run_id=self.run_id,
            workdir=self.workdir,
            resolver=self.resolver,
            env=self.env,
            events=self.events,
            results=self.result.workflow_results,
            ready_timeout=self.workflow.settings.wait_timeout,
            secrets=self.result.secrets,
            files_read=self.result.files_read,
        )
        failed = False
        for note in self.workflow.notes:
            self.events.note(note)
        try:
            needs_backend = bool(self.workflow.nodes)
            if needs_backend:
                self.backend = self._backend_factory(
                    self.backend_kind,
                    run_id=self.run_id,
                    workflow=self.workflow,
                    workdir=self.workdir,
                    image=self.image,
                )
                self.ctx.backend = self.backend
                self.backend.plan(self._node_specs())
            if not self.nuke:
                self._skip("nuke", "nuke_on_start is off")
            elif self.backend is None:
                self._skip("nuke", "no local nodes")
            else:
                await self._phase("nuke", self._nuke)
            if self.backend is None:
                self._skip("pull_image", "no local nodes")
            else:
                await self._phase("pull_image", self._pull)
            if self.workflow.settings.sandbox is None:
                self._skip("sandbox_start", "the workflow names no sandbox")
            else:
                await self._phase("sandbox_start", self._start_sandbox)
            if self.workflow.settings.contracts is None:
                self._skip("deploy_contracts", "the workflow names no contracts")
            else:
                await self._phase("deploy_contracts", self._deploy_contracts)
            if self.backend is None:
                self._skip("nodes_start", "no local nodes")
            else:
                await self._phase("nodes_start", self._start_nodes)
            await self._phase("register_remote_nodes", self._register_remote)
            await self._phase("steps", self._run_steps)
        except _PhaseFailed:
            failed = True
        except (asyncio.CancelledError, KeyboardInterrupt):
            failed = True
            self.result.interrupted = True
            for step in self.result.all_steps():
                if step.error is not None and step.error.kind == "cancelled":
                    step.error.message = "the run was interrupted"
        finally:
            self.result.status = Status.FAILED if failed else Status.PASSED
            # The teardown runs to its end: a signal that arrives during it (the
            # first, or a second one) only marks the run interrupted. Giving up
            # here would let asyncio.run cancel the teardown and leave nodes behind.
            finish = asyncio.ensure_future(self._finish(failed))
            while not finish.done():
                try:
                    await asyncio.shield(finish)
                except asyncio.CancelledError:
                    self.result.interrupted = True
            finish.result()
            self.result.duration_s = time.perf_counter() - started
        # A signal during the teardown of a run whose steps had all passed
        # leaves it passed (and interrupted): the teardown ran to its end.
        return self.result

    async def _finish(self, failed: bool) -> None:
        ran_phases = {p.name for p in self.result.phases}
        why = "interrupted" if self.result.interrupted else "an earlier phase failed" if failed else "not reached"
        for name in PHASES[: PHASES.index("steps")]:
            if name not in ran_phases:
                self._skip(name, why)
        if "steps" not in ran_phases:
            self._skip("steps", why)
            for step in self.workflow.steps:
                skipped = StepRecord(
                    name=step.display_name,
                    type=step.type_name,
                    path=step.display_name,
                    status=Status.SKIPPED,
                    location=step.location,
                )
                self.result.steps.append(skipped)
        if failed and self.backend is not None and self.ctx is not None and self.workflow.nodes:
            try:
                await self._phase("on_failure", self._on_failure)
            except _PhaseFailed:
                pass
        else:
            self._skip("on_failure", "the run passed" if not failed else "no nodes to inspect")
        try:
            await self._phase("cleanup", self._cleanup)
        except _PhaseFailed:
            self.result.status = Status.FAILED


def _slug(name: str) -> str:
    out = "".join(c.lower() if c.isalnum() else "-" for c in name).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out[:40] or "workflow"
