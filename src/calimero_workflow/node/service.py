"""What one node does, independent of HTTP: the operations behind the admin API.

``NodeService`` installs applications, keeps blobs, manages namespaces,
invitations, identities and contexts, and executes app methods through the
shared :class:`~calimero_workflow.node.runtime.WasmRuntime`. Everything that
talks to other nodes is delegated to :class:`~calimero_workflow.node.sync.Replicator`.
Errors are raised as :class:`ApiError` (admin API) or :class:`RpcError`
(JSON-RPC) with messages that name the bad value.

As in merod, an execution also reaches the context's node-local stores and the
node's blob store; the cross-context calls it queues run on this node right
after it, and the handlers its events name run on the *receiving* nodes when
they apply its delta.

Namespace members follow the namespace's contexts, as merod's default
(``auto_join`` on the namespace, ``auto_follow.contexts`` on each member) has
it: joining a namespace joins every context it has, and a context created in it
later is joined by every member that hears of it. A member joins as its
namespace identity and takes the context's state from a peer, exactly as
``POST /contexts/:ctx/join`` does. Deleting a context on a node opts that node
out: it is not joined again until ``join_context`` asks for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .. import bundle
from .errors import ApiError, RpcError
from .ids import (
    IdError,
    Keypair,
    canonical_hex32,
    hex32,
    parse_hex32,
    sha256,
    verify_signature,
    x25519_public_key,
)
from .logs import node_logger
from .runtime import (
    AppFormatError,
    AppModule,
    Cancellation,
    Outcome,
    WasmRuntime,
    XCall,
)
from .store import (
    LOCAL_SPACES,
    ZERO_ROOT,
    AppRecord,
    ContextRecord,
    Delta,
    NamespaceRecord,
    NodeStore,
    delta_id,
)
from .worker import WasmWorker

if TYPE_CHECKING:
    from .sync import Replicator

__all__ = [
    "INVITATION_TTL_S",
    "MAX_XCALL_DEPTH",
    "NodeService",
    "XCallReport",
    "invitation_message",
]

#: Default lifetime of a namespace invitation, as in merod (one year).
INVITATION_TTL_S = 365 * 24 * 3600
_SYNC_METHOD = "__calimero_sync_next"
#: merod's MAX_XCALL_DEPTH: a call made over JSON-RPC runs at depth 0 and each
#: xcall one deeper; an execution at this depth still runs, but the xcalls it
#: queues are denied ("xcall depth limit"). With at most 8 xcalls per execution
#: this bounds what one call can set off.
MAX_XCALL_DEPTH = 3
_BLOB_FETCH_TIMEOUT = 30.0

T = TypeVar("T")


@dataclass(frozen=True)
class XCallReport:
    """What became of one cross-context call (merod reports these as node events).

    ``status`` is ``"ok"``, ``"denied"`` (not run: ``reason`` says why) or
    ``"failed"`` (ran and failed: ``reason`` is the error).
    """

    origin: str
    context_id: str
    function: str
    status: str
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        body = {
            "origin": self.origin,
            "contextId": self.context_id,
            "function": self.function,
            "status": self.status,
        }
        if self.reason is not None:
            body["reason"] = self.reason
        return body


class _NodeBlobs:
    """The node's blob store as the runtime's ``blob_*`` functions use it.

    The runtime calls it from a worker thread; every store access is handed to
    the event loop, which owns the database connection.
    """

    def __init__(self, service: NodeService, loop: asyncio.AbstractEventLoop) -> None:
        self._service = service
        self._loop = loop

    def _on_loop(self, make: Callable[[], Awaitable[T]], timeout: float) -> T:
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout)

    def get(self, blob_id: bytes) -> bytes | None:
        async def read() -> bytes | None:
            return self._service.store.blob(hex32(blob_id))

        return self._on_loop(read, _BLOB_FETCH_TIMEOUT)

    def put(self, data: bytes) -> bytes:
        async def write() -> str:
            return self._service.store.put_blob(data)

        return parse_hex32(self._on_loop(write, _BLOB_FETCH_TIMEOUT))

    def announce(self, blob_id: bytes, context_id: bytes) -> bool:
        # Members of the context fetch blobs from any member that holds them,
        # so there is nothing to publish beyond holding it.
        return True

    def fetch(self, blob_id: bytes, context_id: bytes) -> bytes | None:
        async def fetch() -> bytes | None:
            return await self._service.sync.fetch_blob(
                hex32(blob_id), hex32(context_id)
            )

        return self._on_loop(fetch, _BLOB_FETCH_TIMEOUT + 5)


def _now() -> int:
    return int(time.time())


def invitation_message(invitation: Mapping[str, Any]) -> bytes:
    """The exact bytes an inviter signs: canonical JSON of the invitation."""
    return json.dumps(invitation, sort_keys=True, separators=(",", ":")).encode()


def _remote_may_replace(row: AppRecord | None, version: str) -> bool:
    """merod's rule for a bundle a peer names: it replaces the row only if the
    row is not a bundle's, or the version is equal or provably newer."""
    if row is None or row.signer_id is None or row.version == version:
        return True
    try:
        return not bundle.parse_semver(row.version or "") > bundle.parse_semver(version)
    except ValueError:
        return False


def _bytes_field(value: Any, what: str) -> bytes:
    """A ``Vec<u8>`` JSON field: an array of integers 0-255."""
    if not isinstance(value, list) or not all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in value
    ):
        raise ApiError(
            400, f"{what} must be an array of byte values 0-255, got {value!r:.80}"
        )
    return bytes(value)


def _api_id(text: Any, what: str) -> str:
    """An id from a request, lowercase; 400 with the reason if it is not 64 hex."""
    try:
        return canonical_hex32(text, what)
    except IdError as exc:
        raise ApiError(400, str(exc)) from None


class NodeService:
    """The state and local operations of one node."""

    def __init__(
        self,
        *,
        name: str,
        store: NodeStore,
        runtime: WasmRuntime,
        keypair: Keypair,
    ) -> None:
        self.name = name
        self.store = store
        self.runtime = runtime
        self.keypair = keypair
        self.replicator: Replicator | None = None
        self.log = node_logger(name, "service")
        #: Compiled modules by (application id, service name).
        self._modules: dict[tuple[str, str | None], AppModule] = {}
        #: The signing payloads install-dev-application accepts: current merod's.
        self.bundle_schemes: tuple[str, ...] = (bundle.SCHEME_V1,)
        self._locks: dict[str, asyncio.Lock] = {}
        #: Serialise joins of one context (explicit and automatic ones).
        self._join_locks: dict[str, asyncio.Lock] = {}
        #: Presence slices taken by set_ephemeral, by context (memory only).
        self.presence: dict[str, bytes] = {}
        #: The guest calls under way, to interrupt when the node stops.
        self._calls: set[Cancellation] = set()
        #: This node's wasm threads (its calls never wait for another node's).
        self.wasm = WasmWorker(name)
        #: Why no guest may run any more (the node is stopping); None while it may.
        self._closing: str | None = None

    @property
    def peer_id(self) -> str:
        return self.keypair.peer_id

    def lock(self, ctx_id: str) -> asyncio.Lock:
        """The lock serialising executions and state changes of one context."""
        lock = self._locks.get(ctx_id)
        if lock is None:
            lock = self._locks[ctx_id] = asyncio.Lock()
        return lock

    @property
    def sync(self) -> Replicator:
        if self.replicator is None:
            raise RuntimeError("the node's replicator is not attached")
        return self.replicator

    # -- applications --------------------------------------------------------------

    def module(self, app: AppRecord, service: str | None = None) -> AppModule:
        """The compiled module a context of ``app`` runs (compiled on first use).

        As merod resolves it: a single-service bundle runs its top-level wasm,
        read from the archive and digest-checked again; a multi-service bundle
        runs the named service (the only one when none is named).
        """
        key = (app.id, service)
        mod = self._modules.get(key)
        if mod is None:
            mod = self._modules[key] = self.runtime.compile(
                self._runnable_wasm(app, service)
            )
        return mod

    def _runnable_wasm(self, app: AppRecord, service: str | None) -> bytes:
        def blob(blob_id: str) -> bytes:
            data = self.store.blob(blob_id)
            if data is None:
                raise ApiError(500, f"application {app.id} has lost its bytecode blob")
            return data

        if app.services:
            name = service
            if name is None and len(app.services) == 1:
                name = next(iter(app.services))
            if name is None:
                names = ", ".join(app.services)
                msg = f"bundle has several services ({names}); name the one to run"
                raise ApiError(400, msg)
            if name not in app.services:
                raise ApiError(400, f"service '{name}' not found in bundle manifest")
            return blob(app.services[name])
        data = blob(app.blob_id)
        if app.signer_id is None and not bundle.is_bundle(data):
            return data  # a raw-wasm row of an older node home
        try:
            # The signature was checked at install, under either scheme.
            verified = bundle.open_bundle(data, schemes=(bundle.SCHEME_V1, bundle.SCHEME_UNTAGGED))
            return verified.runnable_wasm(service)
        except bundle.BundleError as exc:
            raise ApiError(400, str(exc)) from None

    def install_bundle(
        self,
        verified: bundle.VerifiedBundle,
        data: bytes,
        *,
        source: str,
        remote: bool = False,
    ) -> AppRecord:
        """Install a verified bundle as merod's ``install_bundle`` does.

        The archive is the application blob and each named service's wasm gets a
        blob of its own. The id derives from (package, signer), so another
        version of the same package replaces the row, and the contexts of the
        application then run the new code (the cached modules are dropped). A
        ``remote`` install (a peer's bundle) never moves the row to an older
        version. Modules merod would refuse to link are refused here, with the
        reason, as a plain-text 500 (merod's install-error answer).
        """
        app_id = verified.application_id
        row = self.store.apps.get(app_id)
        if remote and not _remote_may_replace(row, verified.version):
            return row  # type: ignore[return-value]
        compiled: dict[tuple[str, str | None], AppModule] = {}
        for artifact in verified.wasm:
            try:
                compiled[(app_id, artifact.name)] = self.runtime.compile(artifact.data)
            except AppFormatError as exc:
                raise ApiError(500, f"cannot install {source}: {exc}", plain=True) from None
        blob_id = self.store.put_blob(data)
        services = {
            a.name: self.store.put_blob(a.data) for a in verified.wasm if a.name is not None
        }
        rec = AppRecord(
            id=app_id,
            blob_id=blob_id,
            size=len(data),
            source=source,
            metadata=list(verified.metadata_json()),
            package=verified.package,
            version=verified.record_version,
            signer_id=verified.signer_id,
            services=services or None,
        )
        self.store.put_app(rec)
        for key in [k for k in self._modules if k[0] == app_id]:
            del self._modules[key]
        if len(services) == 1:
            compiled[(app_id, None)] = compiled[(app_id, next(iter(services)))]
        self._modules.update(compiled)
        replaced = ""
        if row is not None and row.blob_id != blob_id:
            replaced = f", replacing {row.package or 'raw wasm'}@{row.version or '?'}"
        self.log.info(
            "installed application %s: %s@%s signed by %s, from %s (%d bytes)%s",
            app_id, verified.package, verified.version, verified.signer_id,
            source, len(data), replaced,
        )
        return rec

    def install_dev(self, body: Mapping[str, Any]) -> AppRecord:
        """``install-dev-application``: ``path`` is a signed ``.mpk`` bundle on
        this node's filesystem.

        As in current merod the body is ``{path}`` alone (the route refuses
        ``metadata``, ``package`` and ``version`` before this runs): what the
        row records comes from the bundle's manifest. The file is recognised
        by its content, a raw ``.wasm`` is refused with merod's ``not a signed
        application bundle: {path}``, and every check and error text is
        merod's (:func:`calimero_workflow.bundle.load_bundle_file`).
        """
        path = body.get("path")
        if not isinstance(path, str) or not path:
            raise ApiError(
                400, f"'path' must be the bundle file's path on the node, got {path!r}"
            )
        try:
            verified, data, real = bundle.load_bundle_file(path, schemes=self.bundle_schemes)
        except bundle.BundleError as exc:
            raise ApiError(500, str(exc), plain=True) from None
        except OSError as exc:
            raise ApiError(500, f"cannot read application file {path}: {exc}", plain=True) from None
        return self.install_bundle(verified, data, source=real.as_uri())

    def install_from_registry(self, body: Mapping[str, Any]) -> AppRecord:
        """``install-application``: registry coordinates ``{package, version}``.

        merod fetches them from the registry in its config; an embedded node
        has none, so well-formed coordinates get merod's answer for coordinates
        its source cannot resolve: a plain-text 502.
        """
        coords = f"{body['package']}@{body['version']}"
        msg = (
            f"the embedded node has no application registry, so nothing is published "
            f"at {coords}; install the .wasm from a file with install-dev-application"
        )
        raise ApiError(502, msg, plain=True)

    def app(self, app_id: str) -> AppRecord | None:
        """An installed application, None if unknown; 400 if the id is malformed."""
        return self.store.apps.get(_api_id(app_id, "application id"))

    def require_app(self, app_id: Any) -> AppRecord:
        app = self.app(app_id)
        if app is None:
            msg = f"application {app_id} is not installed on node {self.name}; install it first"
            raise ApiError(404, msg)
        return app

    def uninstall(self, app_id: str) -> None:
        """``DELETE /applications/:id``: as in merod, an app that is not here is no error."""
        app = self.app(app_id)
        if app is None:
            self.log.info("uninstall of application %s: not installed", app_id)
            return
        self.store.delete_app(app.id)
        for key in [k for k in self._modules if k[0] == app.id]:
            del self._modules[key]
        self.log.info("uninstalled application %s", app.id)

    # -- namespaces and invitations ------------------------------------------------

    def _new_identity(self) -> Keypair:
        pair = Keypair.generate()
        self.store.add_identity(pair.public, pair.secret)
        return pair

    def identity_pair(self, public_hex: str) -> Keypair:
        secret = self.store.identities.get(public_hex)
        if secret is None:
            raise ApiError(
                500, f"this node does not hold the key of identity {public_hex}"
            )
        return Keypair.from_secret(secret)

    def namespace(self, ns_id: str) -> NamespaceRecord:
        try:
            parse_hex32(ns_id, "namespace id")
        except IdError as exc:
            raise ApiError(400, str(exc)) from None
        ns = self.store.namespaces.get(ns_id.lower())
        if ns is None:
            raise ApiError(404, f"namespace {ns_id} not found on node {self.name}")
        return ns

    def member_namespace(
        self, ns_id: Any, field: str = "namespace id"
    ) -> NamespaceRecord:
        """A namespace this node is a member of (403 if it only heard of it)."""
        if not isinstance(ns_id, str):
            raise ApiError(400, f"{field} must be 64 hex digits, got {ns_id!r}")
        try:
            parse_hex32(ns_id, field)
        except IdError as exc:
            raise ApiError(400, str(exc)) from None
        ns = self.store.namespaces.get(ns_id.lower())
        if ns is None or ns.identity is None:
            msg = (
                f"node {self.name} is not a member of namespace {ns_id}; create it here "
                "or join it with an invitation first"
            )
            raise ApiError(403, msg)
        return ns

    def create_namespace(self, body: Mapping[str, Any]) -> NamespaceRecord:
        app = self.require_app(body.get("applicationId"))
        name = body.get("name")
        app_key = body.get("appKey")
        me = self._new_identity()
        ns = NamespaceRecord(
            id=os.urandom(32).hex(),
            application_id=app.id,
            app_key=app_key
            if isinstance(app_key, str)
            else sha256(app.blob_id.encode()).hex(),
            created_at=_now(),
            name=name if isinstance(name, str) else None,
            members={
                me.public_hex: {
                    "peerId": self.peer_id,
                    "account": me.public.hex(),
                    "joinedAt": _now(),
                    "role": "Admin",
                }
            },
            identity=me.public_hex,
        )
        self.store.save_namespace(ns)
        self.log.info("created namespace %s for application %s", ns.id, app.id)
        return ns

    def namespace_api(self, ns: NamespaceRecord) -> dict[str, Any]:
        body: dict[str, Any] = {
            "namespaceId": ns.id,
            "appKey": ns.app_key,
            "targetApplicationId": ns.application_id,
            "createdAt": ns.created_at,
            "memberCount": len(ns.members),
            "contextCount": len(ns.contexts),
            "subgroupCount": 0,
        }
        if ns.name is not None:
            body["name"] = ns.name
        app = self.store.apps.get(ns.application_id)
        if app is not None and app.version is not None:
            body["appVersion"] = app.version
        return body

    def group_info(self, group_id: str) -> dict[str, Any]:
        """``GET /groups/:gid`` of a namespace (the only groups embedded nodes have).

        merod answers only a member of the group; the shape is its
        ``GroupInfoApiResponseData``, with the namespace as its own root and
        merod's defaults for what embedded namespaces do not have (capabilities,
        subgroup visibility, owner-guarded ops).
        """
        try:
            parse_hex32(group_id, "group id")
        except IdError as exc:
            raise ApiError(400, str(exc)) from None
        ns = self.store.namespaces.get(group_id.lower())
        if ns is None:
            raise ApiError(404, f"group {group_id} not found on node {self.name}")
        if ns.identity is None:
            msg = (
                f"node {self.name} is not a member of group {group_id}; join it with an "
                "invitation first"
            )
            raise ApiError(403, msg)
        return {
            "groupId": ns.id,
            "namespaceId": ns.id,
            "appKey": ns.app_key,
            "targetApplicationId": ns.application_id,
            "memberCount": len(ns.members),
            "contextCount": len(ns.contexts),
            "defaultCapabilities": 0,
            "subgroupVisibility": "restricted",
            "ownerOpCounter": 0,
            "groupStateHash": ns.state_hash().hex(),
        }

    def invite(self, ns_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A signed open invitation to a namespace this node belongs to."""
        ns = self.member_namespace(ns_id)
        expires = body.get("expirationTimestamp")
        if expires is None:
            expires = _now() + INVITATION_TTL_S
        if isinstance(expires, bool) or not isinstance(expires, int) or expires < 0:
            raise ApiError(
                400, f"expirationTimestamp must be unix seconds, got {expires!r}"
            )
        assert ns.identity is not None
        inviter = self.identity_pair(ns.identity)
        invitation = {
            "inviter_identity": inviter.public_hex,
            "group_id": ns.id,
            "expiration_timestamp": expires,
            "secret_salt": list(os.urandom(32)),
            "invited_role": "Member",
        }
        signature = inviter.sign(invitation_message(invitation)).hex()
        self.log.info(
            "issued an invitation to namespace %s (expires %d)", ns.id, expires
        )
        return {"invitation": invitation, "inviter_signature": signature}

    @staticmethod
    def verify_invitation(signed: Any, ns_id: str | None = None) -> dict[str, Any]:
        """Check shape, signature and expiry of a signed invitation; returns it."""
        if not isinstance(signed, dict) or not isinstance(
            signed.get("invitation"), dict
        ):
            msg = (
                "'invitation' must be the signed invitation object "
                "{invitation: {...}, inviter_signature} returned by /namespaces/:ns/invite"
            )
            raise ApiError(400, msg)
        inv = signed["invitation"]
        for key in (
            "inviter_identity",
            "group_id",
            "expiration_timestamp",
            "secret_salt",
        ):
            if key not in inv:
                raise ApiError(400, f"invitation is missing {key!r}")
        if ns_id is not None and str(inv["group_id"]).lower() != ns_id.lower():
            msg = f"invitation is for namespace {inv['group_id']}, not {ns_id}"
            raise ApiError(400, msg)
        try:
            inviter = parse_hex32(inv["inviter_identity"], "inviter_identity")
            signature = bytes.fromhex(str(signed.get("inviter_signature")))
        except (IdError, ValueError) as exc:
            raise ApiError(400, f"malformed invitation: {exc}") from None
        if not verify_signature(inviter, signature, invitation_message(inv)):
            msg = (
                "invitation signature does not verify: it was altered or not signed by "
                f"{inv['inviter_identity']}"
            )
            raise ApiError(403, msg)
        expires = inv["expiration_timestamp"]
        if not isinstance(expires, int) or expires < _now():
            raise ApiError(
                400,
                f"invitation expired at {expires} (now {_now()}); ask for a new one",
            )
        return inv

    async def join_namespace(
        self, ns_id: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        try:
            parse_hex32(ns_id, "namespace id")
        except IdError as exc:
            raise ApiError(400, str(exc)) from None
        ns_id = ns_id.lower()
        signed = body.get("invitation")
        self.verify_invitation(signed, ns_id)
        existing = self.store.namespaces.get(ns_id)
        if existing is not None and existing.identity is not None:
            me = self.identity_pair(existing.identity)
        else:
            me = self._new_identity()
            state = await self.sync.join_namespace(ns_id, signed, me)
            ns = NamespaceRecord(
                id=ns_id,
                application_id=state["application_id"],
                app_key=state["app_key"],
                created_at=state["created_at"],
                name=state.get("name"),
                identity=me.public_hex,
            )
            ns.merge(state)
            self.store.save_namespace(ns)
            self.log.info("joined namespace %s as %s", ns_id, me.public_hex)
        await self.follow_contexts(self.store.namespaces[ns_id])
        return {
            "namespaceId": ns_id,
            "memberIdentity": me.public_hex,
            "memberAccount": me.public.hex(),
        }

    # -- identities ----------------------------------------------------------------

    def new_context_identity(self) -> str:
        return self._new_identity().public_hex

    def node_identity(self) -> dict[str, Any]:
        """``GET /identity``: merod's ``NodeIdentityApiResponseData``.

        An embedded node's account is its identity in its first namespace, a
        single device that holds its own root: account, device, signing key
        and root are that one key (what ``env.account_id`` and ``env.device_id``
        answer), its namespace is the account's, the device is certified, and
        the agreement key is the key's X25519 form.
        """
        for ns in self.store.namespaces.values():
            if ns.identity is not None:
                key = bytes.fromhex(ns.identity)
                return {
                    "accountId": ns.identity,
                    "accountNamespaceId": ns.id,
                    "accountRootPublicKey": ns.identity,
                    "deviceAgreementKey": x25519_public_key(key).hex(),
                    "deviceCertified": True,
                    "deviceId": ns.identity,
                    "holdsAccountRoot": True,
                    "publicKey": ns.identity,
                }
        # merod's words; it mints both when the node first takes part in a namespace.
        msg = (
            "this node holds neither a usable device nor an account root yet; both are "
            "minted the first time it takes part in a namespace"
        )
        raise ApiError(404, msg)

    # -- contexts ------------------------------------------------------------------

    def context(self, ctx_id: str) -> ContextRecord:
        ctx = self.store.contexts.get(_api_id(ctx_id, "context id"))
        if ctx is None:
            raise ApiError(404, "Context not found")
        return ctx

    def context_api(self, ctx: ContextRecord) -> dict[str, Any]:
        state_hash = hex32(ctx.root)
        body: dict[str, Any] = {
            "id": ctx.id,
            "applicationId": ctx.application_id,
            "contextStateHash": state_hash,
            # Era-B clients (merod <= 0.10) read rootHash.
            "rootHash": state_hash,
            "groupId": ctx.namespace_id,
        }
        if ctx.heads:
            body["dagHeads"] = [list(h) for h in sorted(ctx.heads)]
        if ctx.service_name is not None:
            body["serviceName"] = ctx.service_name
        if ctx.name is not None:
            body["name"] = ctx.name
        app = self.store.apps.get(ctx.application_id)
        if app is not None and app.version is not None:
            body["applicationVersion"] = app.version
        return body

    async def create_context(self, body: Mapping[str, Any]) -> dict[str, Any]:
        if "groupId" not in body or body.get("groupId") is None:
            msg = (
                "'groupId' is required: the hex id of a namespace this node belongs to"
            )
            raise ApiError(400, msg)
        ns = self.member_namespace(body["groupId"], "groupId")
        app = self.require_app(body.get("applicationId"))
        params = _bytes_field(
            body.get("initializationParams", []), "initializationParams"
        )
        seed = body.get("contextSeed")
        if seed is not None:
            try:
                context_key = Keypair.from_secret(parse_hex32(seed, "contextSeed"))
            except IdError as exc:
                raise ApiError(400, str(exc)) from None
        else:
            context_key = Keypair.generate()
        ctx_id = context_key.public_hex
        if ctx_id in self.store.contexts or ctx_id in ns.contexts:
            raise ApiError(
                400, f"context {ctx_id} already exists; use another contextSeed"
            )
        assert ns.identity is not None

        # The executor is the node's member identity in the namespace.
        ctx = ContextRecord(
            id=ctx_id,
            application_id=app.id,
            namespace_id=ns.id,
            identity=ns.identity,
            members={ns.identity: self.peer_id},
            name=body.get("name") if isinstance(body.get("name"), str) else None,
            service_name=body.get("serviceName")
            if isinstance(body.get("serviceName"), str)
            else None,
        )
        module = self.module(app, ctx.service_name)
        outcome = await self._run_guest(
            module,
            "init",
            params,
            storage={},
            context_id=context_key.public,
            **self._host_services(ctx_id, ns.identity),
        )
        if outcome.failure is not None:
            raise ApiError(400, outcome.failure.message)
        deltas = []
        if outcome.artifact:
            d = Delta(
                id=delta_id((), outcome.artifact),
                parents=(),
                artifact=outcome.artifact,
                author=self.peer_id,
            )
            deltas.append(d)
            ctx.heads = [d.id]
        ctx.root = outcome.root_hash or ZERO_ROOT
        if ctx.root == ZERO_ROOT:
            # An init that commits nothing still initialises the context.
            ctx.root = sha256(b"initialised", context_key.public)
        self.store.commit_changes(ctx, outcome.writes, deltas, _local_writes(outcome))
        ns.contexts[ctx_id] = {"applicationId": app.id, "createdAt": ctx.created_at}
        self.store.save_namespace(ns)
        self.log.info(
            "created context %s (app %s) in namespace %s", ctx_id, app.id, ns.id
        )
        await self.sync.announce_namespace(ns)
        return {
            "contextId": ctx_id,
            "memberPublicKey": ns.identity,
            "groupId": ns.id,
            "groupCreated": False,
        }

    def delete_context(self, ctx_id: str) -> bool:
        """``DELETE /contexts/:ctx``: False (merod's ``isDeleted``) if it is not here."""
        ctx = self.store.contexts.get(_api_id(ctx_id, "context id"))
        if ctx is None:
            return False
        ns = self.store.namespaces.get(ctx.namespace_id)
        if ns is not None and ctx.id not in ns.unfollowed:
            # Not joined again automatically; join_context undoes this.
            ns.unfollowed.append(ctx.id)
            self.store.save_namespace(ns)
        self.store.delete_context(ctx.id)
        self._locks.pop(ctx.id, None)
        self.sync.forget_context(ctx.id)
        self.log.info("deleted context %s from this node", ctx.id)
        return True

    def _member_namespace_of(self, ctx_id: str) -> NamespaceRecord | None:
        return next(
            (
                n
                for n in self.store.namespaces.values()
                if ctx_id in n.contexts and n.identity
            ),
            None,
        )

    async def join_context(self, ctx_id: str) -> dict[str, Any]:
        """``POST /contexts/:ctx/join``: idempotent, as the namespace identity."""
        ctx_id = _api_id(ctx_id, "context id")
        existing = self.store.contexts.get(ctx_id)
        if existing is not None:
            return {"contextId": ctx_id, "memberPublicKey": existing.identity}
        ns = self._member_namespace_of(ctx_id)
        if ns is None:
            # The namespace update announcing the context may not have reached us.
            await self.sync.refresh_namespaces()
            ns = self._member_namespace_of(ctx_id)
        if ns is None:
            msg = (
                f"context {ctx_id} is not in any namespace node {self.name} belongs to; "
                "join its namespace (POST /admin-api/namespaces/:ns/join) first"
            )
            raise ApiError(403, msg)
        if ctx_id in ns.unfollowed:
            # An explicit join undoes an earlier opt-out.
            ns.unfollowed.remove(ctx_id)
            self.store.save_namespace(ns)
        ctx = await self._join(ns, ctx_id)
        return {"contextId": ctx_id, "memberPublicKey": ctx.identity}

    async def _join(self, ns: NamespaceRecord, ctx_id: str) -> ContextRecord:
        """Become a member of a context of ``ns`` and take its state from a peer.

        The member key is the node's namespace identity. Concurrent joins of
        one context (an explicit one racing an automatic one) join once.
        """
        lock = self._join_locks.get(ctx_id)
        if lock is None:
            lock = self._join_locks[ctx_id] = asyncio.Lock()
        async with lock:
            existing = self.store.contexts.get(ctx_id)
            if existing is not None:
                return existing
            assert ns.identity is not None
            app_id = ns.contexts[ctx_id]["applicationId"]
            if app_id not in self.store.apps:
                await self.sync.fetch_application(app_id, ns)
            ctx = ContextRecord(
                id=ctx_id,
                application_id=app_id,
                namespace_id=ns.id,
                identity=ns.identity,
                members={ns.identity: self.peer_id},
            )
            async with self.lock(ctx_id):
                self.store.save_context(ctx)
            self.log.info("joined context %s as %s", ctx_id, ns.identity)
            await self.sync.announce_context_join(ctx)
            await self.sync.sync_context(ctx_id)
            return ctx

    def contexts_to_follow(self, ns: NamespaceRecord) -> list[str]:
        """Contexts of a namespace this node is a member of but has not joined."""
        if ns.identity is None:
            return []
        return [
            c
            for c in ns.contexts
            if c not in self.store.contexts and c not in ns.unfollowed
        ]

    async def follow_contexts(self, ns: NamespaceRecord) -> list[str]:
        """Join every context of ``ns`` this node should follow; returns those joined.

        A context that cannot be joined yet (its application cannot be fetched,
        no member is reachable) is logged and left for a later sync round.
        """
        wanted = self.contexts_to_follow(ns)

        async def follow(ctx_id: str) -> str | None:
            try:
                await self._join(ns, ctx_id)
            except ApiError as exc:
                self.log.warning(
                    "auto-join of context %s in namespace %s failed, retried later: %s",
                    ctx_id,
                    ns.id,
                    exc.message,
                )
                return None
            return ctx_id

        if not wanted:
            return []
        self.log.info(
            "auto-join: %d context(s) of namespace %s", len(wanted), ns.id
        )
        joined = await asyncio.gather(*(follow(c) for c in wanted))
        return [c for c in joined if c is not None]

    # -- execution -----------------------------------------------------------------

    async def _run_guest(
        self, module: AppModule, method: str, input: bytes, **kwargs: Any
    ) -> Outcome:
        """``module.run`` on the node's wasm threads, interrupted if the caller gives up.

        A cancelled caller (a client that closed its request, a task stopped
        with the node) interrupts the guest at once instead of leaving it to
        hold a wasm thread until its time is up.
        """
        cancellation = Cancellation()
        if self._closing is not None:
            cancellation.cancel(self._closing)
        self._calls.add(cancellation)
        try:
            outcome = await self.wasm.run(
                module.run, method, input, cancellation=cancellation, **kwargs
            )
        except asyncio.CancelledError:
            cancellation.cancel("the request was cancelled")
            raise
        finally:
            self._calls.discard(cancellation)
        context = kwargs.get("context_id")
        where = context.hex() if isinstance(context, bytes) else "-"
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug(
                "context %s: %s: ran in %.3f ms, %d log line(s), %d event(s)%s",
                where, method, outcome.duration_s * 1000, len(outcome.logs),
                len(outcome.events), f", failed: {outcome.failure}" if outcome.failure else "",
            )
        # merod logs each log_utf8 line at INFO (target runtime::guest::log)
        if outcome.logs and self.log.isEnabledFor(logging.INFO):
            for line in outcome.logs:
                self.log.info(
                    "context %s: %s: guest log: %s", where, method, line, extra={"guest": True}
                )
        return outcome

    def interrupt_calls(self, reason: str) -> None:
        """Interrupt the guest calls under way and refuse new ones (the node stops)."""
        self._closing = reason
        for cancellation in list(self._calls):
            cancellation.cancel(reason)

    def _runnable(self, ctx_id: str) -> tuple[ContextRecord, AppModule]:
        try:
            parse_hex32(ctx_id, "contextId")
        except IdError as exc:
            raise RpcError("ParseError", str(exc)) from None
        ctx = self.store.contexts.get(ctx_id)
        if ctx is None:
            raise RpcError("ContextNotFound")
        app = self.store.apps.get(ctx.application_id)
        if app is None:
            raise RpcError(
                "ApplicationNotInstalled", {"application_id": ctx.application_id}
            )
        if not ctx.initialized:
            raise RpcError("Uninitialized")
        return ctx, self.module(app, ctx.service_name)

    def _host_services(self, ctx_id: str, identity: str) -> dict[str, Any]:
        """The run() arguments that bind an execution to this node.

        The device is the node's member identity in the context. Embedded nodes
        give each account exactly one device, so the account id is the same key.
        """
        key = bytes.fromhex(identity)
        return {
            "executor_id": key,
            "account_id": key,
            "private_storage": self.store.local(ctx_id, "private"),
            "index": self.store.local(ctx_id, "index"),
            "index_meta": self.store.local(ctx_id, "index_meta"),
            "blobs": _NodeBlobs(self, asyncio.get_running_loop()),
        }

    async def execute(
        self,
        ctx_id: str,
        method: str,
        args: bytes,
        *,
        origin: str | None = None,
        xcall_reports: list[XCallReport] | None = None,
        _depth: int = 0,
    ) -> Outcome:
        """Run ``method`` in a context; apply, log and broadcast its changes.

        A failure of the guest is returned in ``Outcome.failure`` (nothing is
        applied); node-side problems raise :class:`RpcError`. The xcalls a
        successful call queued run next, each as its own execution on the
        target context with this context as ``origin``; what became of them is
        appended to ``xcall_reports`` (nested ones too, depth first).
        """
        ctx, module = self._runnable(ctx_id)
        delta = None
        async with self.lock(ctx_id):
            ctx = self.store.contexts.get(ctx_id) or ctx
            outcome = await self._run_guest(
                module,
                method,
                args,
                storage=self.store.kv(ctx_id),
                context_id=bytes.fromhex(ctx_id),
                xcall_origin=None if origin is None else bytes.fromhex(origin),
                **self._host_services(ctx_id, ctx.identity),
            )
            if outcome.failure is not None or ctx_id not in self.store.contexts:
                # Failed, or the context was deleted while the call ran.
                return outcome
            deltas = []
            if outcome.artifact:
                parents = tuple(sorted(ctx.heads))
                delta = Delta(
                    id=delta_id(parents, outcome.artifact),
                    parents=parents,
                    artifact=outcome.artifact,
                    author=self.peer_id,
                    events=tuple((e.kind, e.data, e.handler) for e in outcome.events),
                )
                deltas.append(delta)
                ctx.heads = [delta.id]
            if outcome.root_hash is not None:
                ctx.root = outcome.root_hash
            local = _local_writes(outcome)
            if outcome.writes or deltas or local:
                self.store.commit_changes(ctx, outcome.writes, deltas, local)
        if delta is not None:
            if self.log.isEnabledFor(logging.INFO):
                self.log.info(
                    "context %s: %s produced delta %s, root %s",
                    ctx_id,
                    method,
                    delta.id.hex()[:16],
                    hex32(ctx.root),
                )
            self.sync.broadcast_delta(ctx, delta)
        if outcome.xcalls and not outcome.is_error:
            reports = [] if xcall_reports is None else xcall_reports
            await self._run_xcalls(ctx, outcome.xcalls, reports, _depth)
        return outcome

    async def _run_xcalls(
        self,
        source: ContextRecord,
        xcalls: list[XCall],
        reports: list[XCallReport],
        depth: int,
    ) -> None:
        """Run queued cross-context calls in order, as merod does after a call.

        The checks and their denial reasons are merod's, in its order: the
        depth bound, then a target in the caller's own group (an embedded
        namespace has no subgroups, so the namespace), then an identity of this
        node in the target, as which the call runs. A failure is reported and
        logged and never affects the calling execution.
        """
        for call in xcalls:
            target_id = hex32(call.context_id)
            report = XCallReport(source.id, target_id, call.function, "ok")
            target = self.store.contexts.get(target_id)
            if depth >= MAX_XCALL_DEPTH:
                report = _deny(report, "xcall depth limit")
            elif target is None or target.namespace_id != source.namespace_id:
                report = _deny(report, "owning group boundary")
            elif target.identity not in self.store.identities:
                report = _deny(report, "no owned member")
            else:
                nested: list[XCallReport] = []
                try:
                    outcome = await self.execute(
                        target_id,
                        call.function,
                        call.params,
                        origin=source.id,
                        xcall_reports=nested,
                        _depth=depth + 1,
                    )
                except RpcError as exc:
                    report = _fail(report, str(exc))
                else:
                    if outcome.failure is not None:
                        report = _fail(report, outcome.failure.message)
                    elif outcome.is_error:
                        payload = ", ".join(str(b) for b in outcome.returns or b"")
                        report = _fail(report, f"the method call returned an error: [{payload}]")
                reports.append(report)
                reports.extend(nested)
                self._log_xcall(report)
                continue
            reports.append(report)
            self._log_xcall(report)

    def _log_xcall(self, report: XCallReport) -> None:
        level = self.log.info if report.status == "ok" else self.log.warning
        level(
            "xcall from context %s to %s.%s: %s%s",
            report.origin,
            report.context_id,
            report.function,
            report.status,
            f" ({report.reason})" if report.reason else "",
        )

    async def apply_delta(self, ctx_id: str, delta: Delta, source: str) -> bool:
        """Apply a delta from a peer through ``__calimero_sync_next``; False if skipped."""
        async with self.lock(ctx_id):
            ctx = self.store.contexts.get(ctx_id)
            if ctx is None or not ctx.initialized:
                return False
            if delta.id in self.store.deltas(ctx_id):
                return False
            app = self.store.apps.get(ctx.application_id)
            if app is None:
                return False
            outcome = await self._run_guest(
                self.module(app, ctx.service_name),
                _SYNC_METHOD,
                delta.artifact,
                storage=self.store.kv(ctx_id),
                context_id=bytes.fromhex(ctx_id),
                **self._host_services(ctx_id, ctx.identity),
            )
            if outcome.failure is not None:
                msg = f"delta {delta.id.hex()[:16]} from {source} failed to apply: "
                raise ValueError(msg + outcome.failure.message)
            if outcome.root_hash is not None:
                ctx.root = outcome.root_hash
            ctx.heads = self.sync.heads_after(ctx, delta)
            self.store.commit_changes(ctx, outcome.writes, [delta], _local_writes(outcome))
        if self.log.isEnabledFor(logging.INFO):
            self.log.info(
                "context %s: applied delta %s from %s, root %s",
                ctx_id,
                delta.id.hex()[:16],
                source,
                hex32(ctx.root),
            )
        await self._run_handlers(ctx_id, delta)
        return True

    async def _run_handlers(self, ctx_id: str, delta: Delta) -> None:
        """Run the handlers the delta's events name, as merod's receivers do.

        Each runs as this node's identity with the event data as input; a
        failing handler is logged and the others still run.
        """
        for kind, data, handler in delta.events:
            if handler is None:
                continue
            try:
                outcome = await self.execute(ctx_id, handler, data)
            except RpcError as exc:
                error = str(exc)
            else:
                error = outcome.failure.message if outcome.failure else None
            if error is None:
                self.log.info("context %s: ran handler %s for event %s", ctx_id, handler, kind)
            else:
                self.log.warning(
                    "context %s: handler %s for event %s failed: %s",
                    ctx_id,
                    handler,
                    kind,
                    error,
                )


def _local_writes(outcome: Outcome) -> dict[str, dict[bytes, bytes | None]]:
    """The node-local store writes of an outcome, by ``LOCAL_SPACES`` name."""
    writes = dict(
        zip(
            LOCAL_SPACES,
            (outcome.private_writes, outcome.index_writes, outcome.index_meta_writes),
            strict=True,
        )
    )
    return {space: w for space, w in writes.items() if w}


def _deny(report: XCallReport, reason: str) -> XCallReport:
    return XCallReport(report.origin, report.context_id, report.function, "denied", reason)


def _fail(report: XCallReport, reason: str) -> XCallReport:
    return XCallReport(report.origin, report.context_id, report.function, "failed", reason)
