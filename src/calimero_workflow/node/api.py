"""The node's HTTP surface: merod's admin API and JSON-RPC, as a plain ASGI app.

Shapes follow merod at 0.11.0-rc.27 and later (era C, see docs/reference): JSON
bodies wrapped in ``{"data": …}``, camelCase fields, ``{"error": message}`` with
a meaningful status for failures, and every 32-byte id as 64 hex digits.
Request bodies are closed sets read as merod reads them (see :mod:`.bodies`):
``install-dev-application`` takes ``{path}`` alone and ``install-application``
registry coordinates ``{package, version}``. ``GET /admin-api/peers`` answers a
bare ``{"count": N}``. JSON-RPC answers are always HTTP 200 with either
``result`` or an ``error`` object of merod's ``{"type", "data"}`` shapes.

Beyond merod, the execute result (and a FunctionCallError) also carries the
call's ``logs`` and ``events`` (with the ``handler`` an event names, if any),
the result carries ``xcalls`` (what became of the cross-context calls the call
queued) when there were any, and an app ``Err`` return carries the parsed value
as ``returnedError`` so callers can show it without decoding byte lists.
Requests are read as merod reads them (see :mod:`.jsonrpc`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from .bodies import BodyShape, read_body, unexpected
from .errors import ApiError, RpcError
from .ids import IdError, canonical_hex32
from .jsonrpc import EnvelopeRejected, parse_envelope, parse_params
from .logs import node_logger

if TYPE_CHECKING:
    from .runtime import Outcome
    from .server import EmbeddedNode

__all__ = ["MAX_BODY_BYTES", "NodeApi", "Request", "Response"]

MAX_BODY_BYTES = 128 * 1024 * 1024
#: merod's MAX_METHOD_NAME_LENGTH and MAX_ARGS_JSON_SIZE for ``execute``.
_METHOD_NAME_LIMIT = 256
_ARGS_LIMIT = 10 * 1024 * 1024
#: merod's EPHEMERAL_MAX_BYTES for set_ephemeral.
_EPHEMERAL_MAX = 16 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Request:
    """What a route handler sees of an HTTP request."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    content_type: str = ""

    def closed_json(self, shape: BodyShape) -> dict[str, Any]:
        """The body as merod reads it into ``shape``: 400 in merod's words otherwise."""
        return read_body(self.body, self.content_type, shape)


@dataclass
class Response:
    """An HTTP response to send."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(value, separators=(",", ":")).encode())

    @classmethod
    def data(cls, value: Any) -> Response:
        return cls.json({"data": value})


Handler = Callable[[Request], Awaitable[Response]]


# -- request bodies (crates/server/primitives/src/admin/mod.rs) ---------------------


def _too_long(name: str, value: str, limit: int) -> list[str]:
    size = len(value.encode())
    if size > limit:
        return [f"Field '{name}' exceeds maximum length of {limit} characters (got {size})"]
    return []


def _coordinate_problems(body: Mapping[str, Any]) -> list[str]:
    """``InstallApplicationRequest``'s checks: both coordinates set and short."""
    problems: list[str] = []
    for name, limit in (("package", 128), ("version", 64)):
        value = body[name]
        if not isinstance(value, str):
            shown = unexpected(value, from_value=False)
            return [f"invalid type: {shown}, expected a string"]
        if not value:
            problems.append(f"Field '{name}' is required but was empty")
        problems += _too_long(name, value, limit)
    return problems


def _init_params_problems(body: Mapping[str, Any]) -> list[str]:
    params = body["initializationParams"]
    limit = 1 << 20
    if isinstance(params, list) and len(params) > limit:
        return [
            f"Field 'initialization_params' exceeds maximum size of {limit} bytes "
            f"(got {len(params)})"
        ]
    return []


INSTALL_DEV = BodyShape("InstallDevApplicationRequest", ("path",), ("path",))
INSTALL_REGISTRY = BodyShape(
    "InstallApplicationRequest",
    ("package", "version"),
    ("package", "version"),
    check=_coordinate_problems,
)
CREATE_CONTEXT = BodyShape(
    "CreateContextRequest",
    (
        "applicationId",
        "serviceName",
        "contextSeed",
        "initializationParams",
        "groupId",
        "identitySecret",
        "name",
    ),
    ("applicationId", "initializationParams", "groupId"),
    check=_init_params_problems,
)
CREATE_NAMESPACE = BodyShape(
    "CreateNamespaceApiRequest",
    ("applicationId", "name", "appKey", "bytecodeId"),
    ("applicationId",),
    aliases={"bytecodeId": "appKey"},
)
CREATE_INVITATION = BodyShape(
    "CreateGroupInvitationApiRequest",
    ("expirationTimestamp", "recursive", "admitters", "admitterAddrs"),
)
JOIN_NAMESPACE = BodyShape("JoinGroupApiRequest", ("invitation", "groupName"), ("invitation",))


# -- JSON-RPC execute checks (crates/server/primitives/src/validation.rs) -----------


def _rust_escape_default(char: str) -> str:
    escapes = {"\t": "\\t", "\r": "\\r", "\n": "\\n"}
    return escapes.get(char, f"\\u{{{ord(char):x}}}")


def _method_name_problem(method: str) -> str | None:
    """The server's check of a method name: empty, too long, or a control character.

    Any other character reaches the runtime, which refuses it as a
    ``FunctionCallError`` (merod's ``validate_method_name`` in the runtime).
    """
    if not method:
        return "Field 'method' is required but was empty"
    size = len(method.encode())
    if size > _METHOD_NAME_LIMIT:
        return f"Field 'method' exceeds maximum length of {_METHOD_NAME_LIMIT} characters (got {size})"
    for char in method:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            return (
                "Field 'method' has invalid format: contains control character "
                f"'{_rust_escape_default(char)}' which is not allowed"
            )
    return None


def _estimated_json_size(value: Any) -> int:
    """merod's size estimate of ``argsJson``: strings count twice, plus quotes."""
    if value is None or value is True:
        return 4
    if value is False:
        return 5
    if isinstance(value, (int, float)):
        return len(json.dumps(value))
    if isinstance(value, str):
        return len(value.encode()) * 2 + 2
    if isinstance(value, list):
        return 2 + sum(_estimated_json_size(v) for v in value) + max(len(value) - 1, 0)
    items = value.items()
    body = sum(len(k.encode()) * 2 + 3 + _estimated_json_size(v) for k, v in items)
    return 2 + body + max(len(value) - 1, 0)


def _execute_problems(params: Mapping[str, Any]) -> None:
    """``ExecutionRequest``'s checks; a failure is a ``ParseError`` with their texts."""
    problems = []
    name_problem = _method_name_problem(params["method"])
    if name_problem is not None:
        problems.append(name_problem)
    size = _estimated_json_size(params["argsJson"])
    if size > _ARGS_LIMIT:
        problems.append(
            f"Field 'args_json' exceeds maximum size of {_ARGS_LIMIT} bytes (got {size})"
        )
    if problems:
        text = problems[0] if len(problems) == 1 else "Validation errors: " + "; ".join(problems)
        raise RpcError("ParseError", text)


def _rpc_context_id(value: str) -> str:
    try:
        return canonical_hex32(value, "contextId")
    except IdError as exc:
        raise RpcError("ParseError", str(exc)) from None


def _rust_debug_bytes(data: bytes) -> str:
    # How Rust's Debug prints a Vec<u8>; merod embeds it in FunctionCallError text.
    return "[" + ", ".join(str(b) for b in data) + "]"


def _parse_json_or_text(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return data.decode("utf-8", errors="replace")


def _events(outcome: Outcome) -> list[dict[str, Any]]:
    events = []
    for e in outcome.events:
        event = {"kind": e.kind, "data": _parse_json_or_text(e.data)}
        if e.handler is not None:
            event["handler"] = e.handler
        events.append(event)
    return events


class NodeApi:
    """The ASGI application of one :class:`EmbeddedNode`."""

    def __init__(self, node: EmbeddedNode) -> None:
        self.node = node
        self.log = node_logger(node.config.name, "api")
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        a = "/admin-api"
        table: list[tuple[str, str, Handler]] = [
            ("GET", f"{a}/health", self.health),
            ("GET", f"{a}/ready", self.ready),
            ("GET", f"{a}/is-authed", self.health),
            ("POST", f"{a}/install-dev-application", self.install_dev),
            ("POST", f"{a}/install-application", self.install_registry),
            ("GET", f"{a}/applications", self.list_apps),
            ("GET", f"{a}/applications/{{app}}", self.get_app),
            ("DELETE", f"{a}/applications/{{app}}", self.delete_app),
            ("GET", f"{a}/applications/{{app}}/abi", self.app_abi),
            ("POST", f"{a}/namespaces", self.create_namespace),
            ("GET", f"{a}/namespaces", self.list_namespaces),
            ("GET", f"{a}/namespaces/{{ns}}", self.get_namespace),
            ("POST", f"{a}/namespaces/{{ns}}/invite", self.invite),
            ("POST", f"{a}/namespaces/{{ns}}/join", self.join_namespace),
            ("GET", f"{a}/groups/{{group}}", self.get_group),
            ("POST", f"{a}/contexts", self.create_context),
            ("GET", f"{a}/contexts", self.list_contexts),
            ("POST", f"{a}/contexts/sync", self.sync_all),
            ("POST", f"{a}/contexts/sync/{{ctx}}", self.sync_context),
            ("GET", f"{a}/contexts/{{ctx}}", self.get_context),
            ("DELETE", f"{a}/contexts/{{ctx}}", self.delete_context),
            ("GET", f"{a}/contexts/{{ctx}}/identities", self.identities),
            ("GET", f"{a}/contexts/{{ctx}}/identities-owned", self.identities_owned),
            ("POST", f"{a}/contexts/{{ctx}}/join", self.join_context),
            ("POST", f"{a}/identity/context", self.new_identity),
            ("GET", f"{a}/identity", self.identity),
            ("GET", f"{a}/peers", self.peers),
            ("PUT", f"{a}/blobs", self.put_blob),
            ("GET", f"{a}/blobs", self.list_blobs),
            ("GET", f"{a}/blobs/{{blob}}", self.get_blob),
            ("HEAD", f"{a}/blobs/{{blob}}", self.get_blob),
            ("DELETE", f"{a}/blobs/{{blob}}", self.delete_blob),
            ("POST", "/jsonrpc", self.jsonrpc),
        ]
        for method, template, handler in table:
            pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
            self._routes.append((method, re.compile(pattern + "/?"), handler))
        # Fixed paths (``POST /jsonrpc`` above all) are found without trying
        # every pattern, wherever the scan in _dispatch would pick the same.
        self._exact: dict[tuple[str, str], Handler] = {}
        for method, template, handler in table:
            if "{" in template:
                continue
            first = next(
                (h for m, p, h in self._routes if m == method and p.fullmatch(template)),
                None,
            )
            if first is handler:
                self._exact[(method, template)] = handler

    @property
    def service(self) -> Any:
        return self.node.service

    # -- ASGI plumbing -------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        method, path = scope["method"], scope["path"]
        try:
            body = await self._read_body(receive)
            request = Request(
                method=method,
                path=path,
                query=parse_qs(scope.get("query_string", b"").decode("latin-1")),
                body=body,
                content_type=next(
                    (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"content-type"),
                    "",
                ),
            )
            if method == "POST" and path == "/jsonrpc":
                answer = await self._dispatch_while_connected(request, receive)
                if answer is None:
                    self.log.info("%s %s: the client went away; call interrupted", method, path)
                    return
                response = answer
            else:
                response = await self._dispatch(request)
        except asyncio.CancelledError:
            if self.node.running:
                raise
            # uvicorn cancels the requests still running when the node stops;
            # their connections are closing, so there is nobody to answer.
            self.log.info("%s %s: cut short, node %s stopped", method, path, self.node.config.name)
            return
        except ApiError as exc:
            if exc.plain:
                response = Response(
                    exc.status, exc.message.encode(), "text/plain; charset=utf-8"
                )
            else:
                response = Response.json({"error": exc.message}, exc.status)
        except Exception:  # untyped failures are logged, never echoed (as merod)
            self.log.exception("%s %s failed", method, path)
            response = Response.json({"error": "Internal server error"}, 500)
        headers = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            *response.headers,
        ]
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": headers,
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": b"" if method == "HEAD" else response.body,
            }
        )
        self.log.info(
            "%s %s %d %.1fms",
            method,
            path,
            response.status,
            (time.perf_counter() - started) * 1e3,
        )

    async def _read_body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise ApiError(
                    413, f"request body is larger than {MAX_BODY_BYTES} bytes"
                )
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks)

    async def _dispatch_while_connected(
        self, request: Request, receive: Receive
    ) -> Response | None:
        """Dispatch ``request``, cancelled if its client disconnects first.

        A JSON-RPC call can keep a guest busy for the node's whole time limit;
        when the caller gives up (a step timeout closes the connection), the
        guest is interrupted instead (see ``NodeService._run_guest``). Returns
        None when the client went away.
        """
        task = asyncio.current_task()
        assert task is not None
        # With the body read, receive() answers only once the client disconnects
        # (or the response is complete).
        gone = asyncio.ensure_future(receive())
        answered = left = False

        def client_left(done: asyncio.Future[dict[str, Any]]) -> None:
            nonlocal left
            # A callback scheduled before the answer may run after it.
            if answered or done.cancelled() or done.exception() is not None:
                return
            if done.result().get("type") == "http.disconnect":
                left = True
                task.cancel()

        gone.add_done_callback(client_left)
        try:
            return await self._dispatch(request)
        except asyncio.CancelledError:
            if not left:
                raise
            task.uncancel()
            return None
        finally:
            answered = True
            gone.cancel()

    async def _dispatch(self, request: Request) -> Response:
        exact = self._exact.get((request.method, request.path))
        if exact is not None:
            return await exact(request)
        allowed = []
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            # HEAD is answered like GET (without the body) unless routed itself.
            wanted = request.method
            if wanted == "HEAD" and not any(
                m == "HEAD" and p.fullmatch(request.path) for m, p, _ in self._routes
            ):
                wanted = "GET"
            if method != wanted:
                allowed.append(method)
                continue
            request.params = match.groupdict()
            return await handler(request)
        if allowed:
            msg = f"{request.method} is not allowed on {request.path}; use {', '.join(allowed)}"
            return Response.json({"error": msg}, 405)
        msg = f"no route for {request.method} {request.path}; admin routes live under /admin-api"
        return Response.json({"error": msg}, 404)

    # -- status --------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return Response.data({"status": "alive"})

    async def ready(self, request: Request) -> Response:
        if not self.node.running:
            # Requests can arrive while start() finishes or stop() drains.
            return Response.json({"data": {"status": "not running"}}, 503)
        return Response.data({"status": "ready"})

    async def peers(self, request: Request) -> Response:
        return Response.json({"count": self.node.peer_count})

    # -- applications --------------------------------------------------------------

    async def install_dev(self, request: Request) -> Response:
        app = self.service.install_dev(request.closed_json(INSTALL_DEV))
        return Response.data({"applicationId": app.id})

    async def install_registry(self, request: Request) -> Response:
        app = self.service.install_from_registry(request.closed_json(INSTALL_REGISTRY))
        return Response.data({"applicationId": app.id})

    async def list_apps(self, request: Request) -> Response:
        apps = sorted(self.service.store.apps.values(), key=lambda a: a.installed_at)
        return Response.data({"apps": [a.to_api() for a in apps]})

    async def get_app(self, request: Request) -> Response:
        app = self.service.app(request.params["app"])
        return Response.data({"application": app.to_api() if app else None})

    async def delete_app(self, request: Request) -> Response:
        self.service.uninstall(request.params["app"])
        return Response.data({"applicationId": request.params["app"].lower()})

    async def app_abi(self, request: Request) -> Response:
        app = self.service.require_app(request.params["app"])
        abi = self.service.module(app).abi
        if abi is None:
            msg = f"application {app.id} has no ABI (no calimero_abi_v1 custom section)"
            raise ApiError(404, msg)
        return Response.data(abi)

    # -- namespaces ----------------------------------------------------------------

    async def create_namespace(self, request: Request) -> Response:
        ns = self.service.create_namespace(request.closed_json(CREATE_NAMESPACE))
        return Response.data({"namespaceId": ns.id})

    async def list_namespaces(self, request: Request) -> Response:
        spaces = [n for n in self.service.store.namespaces.values() if n.identity]
        return Response.data([self.service.namespace_api(n) for n in spaces])

    async def get_namespace(self, request: Request) -> Response:
        ns = self.service.namespace(request.params["ns"])
        return Response.data(self.service.namespace_api(ns))

    async def get_group(self, request: Request) -> Response:
        return Response.data(self.service.group_info(request.params["group"]))

    async def invite(self, request: Request) -> Response:
        body = request.closed_json(CREATE_INVITATION)
        ns_id = request.params["ns"]
        signed = self.service.invite(ns_id, body)
        if isinstance(body, dict) and body.get("recursive"):
            # One entry per group of the namespace; ours have no subgroups.
            entry: dict[str, Any] = {"groupId": ns_id, "invitation": signed}
            name = self.service.namespace(ns_id).name
            if name is not None:
                entry["groupName"] = name
            return Response.data({"invitations": [entry]})
        return Response.data({"invitation": signed})

    async def join_namespace(self, request: Request) -> Response:
        body = request.closed_json(JOIN_NAMESPACE)
        joined = await self.service.join_namespace(request.params["ns"], body)
        return Response.data(joined)

    # -- contexts ------------------------------------------------------------------

    async def create_context(self, request: Request) -> Response:
        return Response.data(
            await self.service.create_context(request.closed_json(CREATE_CONTEXT))
        )

    def _int_query(self, request: Request, name: str, default: int, top: int) -> int:
        raw = request.query.get(name, [str(default)])[-1]
        if not raw.isdigit():
            raise ApiError(
                400,
                f"query parameter {name} must be a non-negative integer, got {raw!r}",
            )
        return min(int(raw), top)

    async def list_contexts(self, request: Request) -> Response:
        offset = self._int_query(request, "offset", 0, 1 << 31)
        limit = self._int_query(request, "limit", 100, 1000)
        contexts = sorted(
            self.service.store.contexts.values(), key=lambda c: (c.created_at, c.id)
        )
        page = contexts[offset : offset + limit]
        return Response.data({"contexts": [self.service.context_api(c) for c in page]})

    async def get_context(self, request: Request) -> Response:
        ctx = self.service.context(request.params["ctx"])
        return Response.data(self.service.context_api(ctx))

    async def delete_context(self, request: Request) -> Response:
        deleted = self.service.delete_context(request.params["ctx"])
        return Response.data({"isDeleted": deleted})

    async def identities(self, request: Request) -> Response:
        ctx = self.service.context(request.params["ctx"])
        return Response.data({"identities": sorted(ctx.members)})

    async def identities_owned(self, request: Request) -> Response:
        ctx = self.service.context(request.params["ctx"])
        owned = [k for k in sorted(ctx.members) if k in self.service.store.identities]
        return Response.data({"identities": owned})

    async def join_context(self, request: Request) -> Response:
        return Response.data(await self.service.join_context(request.params["ctx"]))

    async def sync_all(self, request: Request) -> Response:
        await self.service.sync.sync_all()
        return Response.data(None)

    async def sync_context(self, request: Request) -> Response:
        ctx = self.service.context(request.params["ctx"])
        await self.service.sync.sync_context(ctx.id)
        return Response.data(None)

    # -- identities ----------------------------------------------------------------

    async def new_identity(self, request: Request) -> Response:
        return Response.data({"publicKey": self.service.new_context_identity()})

    async def identity(self, request: Request) -> Response:
        return Response.data(self.service.node_identity())

    # -- blobs ---------------------------------------------------------------------

    def _blob_id(self, request: Request) -> str:
        try:
            return canonical_hex32(request.params["blob"], "blob id")
        except IdError as exc:
            raise ApiError(400, str(exc)) from None

    async def put_blob(self, request: Request) -> Response:
        blob_id = self.service.store.put_blob(request.body)
        return Response.data({"blobId": blob_id, "size": len(request.body)})

    async def list_blobs(self, request: Request) -> Response:
        sizes = self.service.store.blob_sizes()
        return Response.data(
            {"blobs": [{"blobId": k, "size": v} for k, v in sizes.items()]}
        )

    async def get_blob(self, request: Request) -> Response:
        """The blob's bytes; with ``?context_id=`` (merod's network discovery),
        fetched from a member of that context when this node lacks it."""
        blob_id = self._blob_id(request)
        context = request.query.get("context_id")
        if context is None:
            data = self.service.store.blob(blob_id)
        else:
            try:
                context_id = canonical_hex32(context[-1], "context id")
            except IdError:
                raise ApiError(400, "Invalid context ID format") from None
            data = await self.service.sync.fetch_blob(blob_id, context_id)
        if data is None:
            raise ApiError(404, "Blob not found locally or in network")
        return Response(200, data, "application/octet-stream")

    async def delete_blob(self, request: Request) -> Response:
        blob_id = self._blob_id(request)
        if not self.service.store.delete_blob(blob_id):
            raise ApiError(404, f"blob {blob_id} not found")
        return Response.data({"blobId": blob_id, "deleted": True})

    # -- JSON-RPC ------------------------------------------------------------------

    async def jsonrpc(self, request: Request) -> Response:
        try:
            req_id, payload = parse_envelope(request.body, request.content_type)
        except EnvelopeRejected as exc:
            # axum answers before any JSON-RPC handling, in plain text.
            return Response(exc.status, exc.text.encode(), "text/plain; charset=utf-8")
        try:
            method, params = parse_params(payload)
            if method == "execute":
                result = await self._execute(params)
            elif method == "sync_status":
                result = self._sync_status(params)
            else:
                result = self._set_ephemeral(params)
        except RpcError as exc:
            return Response.json(
                {"jsonrpc": "2.0", "id": req_id, "error": exc.to_json()}
            )
        return Response.json({"jsonrpc": "2.0", "id": req_id, "result": result})

    async def _execute(self, params: dict[str, Any]) -> dict[str, Any]:
        ctx_id = _rpc_context_id(params["contextId"])
        method = params["method"]
        _execute_problems(params)
        args = json.dumps(
            params["argsJson"], separators=(",", ":"), ensure_ascii=False
        ).encode()

        xcalls: list[Any] = []
        outcome = await self.service.execute(ctx_id, method, args, xcall_reports=xcalls)
        extras: dict[str, Any] = {"logs": list(outcome.logs), "events": _events(outcome)}
        if outcome.failure is not None:
            self.log.info(
                "execute %s on %s failed: %s", method, ctx_id, outcome.failure.message
            )
            raise RpcError("FunctionCallError", outcome.failure.message, **extras)
        if outcome.is_error:
            returned = outcome.returns or b""
            text = f"the method call returned an error: {_rust_debug_bytes(returned)}"
            raise RpcError(
                "FunctionCallError",
                text,
                returnedError=_parse_json_or_text(returned),
                **extras,
            )
        output = None
        if outcome.returns is not None:
            try:
                output = json.loads(outcome.returns)
            except RecursionError:
                raise RpcError(
                    "SerdeError", {"message": "output is not JSON: recursion limit exceeded"}
                ) from None
            except (ValueError, UnicodeDecodeError) as exc:
                raise RpcError(
                    "SerdeError", {"message": f"output is not JSON: {exc}"}
                ) from None
        if xcalls:
            extras["xcalls"] = [report.to_json() for report in xcalls]
        return {"output": output, **extras}

    def _sync_status(self, params: dict[str, Any]) -> dict[str, Any]:
        ctx = self.service.store.contexts.get(_rpc_context_id(params["contextId"]))
        if ctx is None:
            raise RpcError("ContextNotFound")
        return {
            "contextId": ctx.id,
            "isInitialized": ctx.initialized,
            **self.service.sync.status(ctx.id),
        }

    def _set_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        """Take this node's presence slice for a context (merod's ``set_ephemeral``).

        Known gap: the slice is kept in memory only; embedded nodes neither
        gossip presence nor serve it back.
        """
        state = params["state"]
        if not isinstance(state, list) or not all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in state
        ):
            raise RpcError("ParseError", f"invalid type: state must be a sequence of u8, got {state!r:.80}")
        ctx = self.service.store.contexts.get(_rpc_context_id(params["contextId"]))
        if ctx is None or ctx.identity not in self.service.store.identities:
            raise RpcError("NoOwnedIdentity")
        if len(state) > _EPHEMERAL_MAX:
            raise RpcError("SliceTooLarge", {"size": len(state), "max": _EPHEMERAL_MAX})
        self.service.presence[ctx.id] = bytes(state)
        return {}
