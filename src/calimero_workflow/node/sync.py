"""Replication between nodes: namespaces, context membership and state deltas.

Deltas form a DAG per context: each has the author's heads as parents and an
id that hashes parents and artifact. A node pushes each delta it produces to
the other members of the context once; receivers apply it through the app's
``__calimero_sync_next`` and never forward it. Whatever a push misses (a peer
was down or partitioned) is pulled later by catch-up, which runs every sync
interval, when a peer connects, and on ``POST /admin-api/contexts/sync``:

1. ask each member peer for its root and heads;
2. equal roots: done; a node without state takes a *snapshot* (storage, root,
   heads and delta log copied wholesale); otherwise, if the peer has heads we
   do not know or we miss parents of deltas we hold, *pull* the deltas the peer
   has beyond our heads and apply them (the app's CRDT makes order irrelevant).

Namespace records (members, contexts) only grow, so they replicate by union.
A node that learns of a context of a namespace it is a member of joins it (see
:mod:`.service`): a member that hears of a new context through a peer's
announcement joins it before answering (within a time budget, so the creator's
``create_context`` returns with the connected members already in), and every
catch-up round joins what an earlier attempt missed.
Peers are trusted once they hold a member identity of the namespace concerned.
Blobs an app opens in a context (``blob_open_in_context``) are fetched from the
context's members when this node does not hold them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from typing import TYPE_CHECKING, Any

from .. import bundle
from .errors import ApiError, PeerError
from .ids import Keypair, hex32, sha256
from .logs import node_logger
from .store import ContextRecord, Delta, NamespaceRecord
from .tasks import cancel_and_wait

if TYPE_CHECKING:
    from .service import NodeService
    from .swarm import Swarm

__all__ = ["Replicator"]

_REQUEST_TIMEOUT = 10.0
_PEER_WAIT = 5.0
_ANNOUNCE_TIMEOUT = 5.0
#: How long a member answering an announcement spends joining the contexts it
#: names before it answers (under the announcer's timeout); the joins go on after.
_FOLLOW_BUDGET = 3.0


class _NotMember(PeerError):
    """The peer asked about something it has no membership for."""


class Replicator:
    """Keeps one node's namespaces and contexts in step with its peers."""

    def __init__(self, service: NodeService, swarm: Swarm, *, interval: float) -> None:
        self.service = service
        self.store = service.store
        self.swarm = swarm
        self.interval = interval
        self._refs: dict[str, set[bytes]] = {}
        self._status: dict[str, dict[str, Any]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.log = node_logger(service.name, "sync")
        service.replicator = self

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic catch-up loop."""
        self._loop_task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._loop_task is not None:
            await cancel_and_wait(self._loop_task)
            self._loop_task = None

    def peer_connected(self, peer_id: str) -> None:
        """Catch up right away with a peer that just (re)appeared."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync_all()
            except Exception:  # the loop must survive any one failed round
                self.log.exception("background sync round failed")

    # -- helpers -------------------------------------------------------------------

    def _member_peers(self, ns: NamespaceRecord) -> list[str]:
        return [
            p
            for p in ns.member_peers()
            if p != self.swarm.peer_id and self.swarm.is_connected(p)
        ]

    def _context_peers(self, ctx: ContextRecord) -> list[str]:
        peers = set(ctx.members.values()) - {self.swarm.peer_id}
        return [p for p in peers if self.swarm.is_connected(p)]

    def _member_ns(self, ns_id: str, peer_id: str) -> NamespaceRecord:
        ns = self.store.namespaces.get(str(ns_id))
        if ns is None or ns.identity is None:
            raise _NotMember(f"not a member of namespace {ns_id}")
        if peer_id not in ns.member_peers():
            raise _NotMember(f"peer {peer_id} is not a member of namespace {ns_id}")
        return ns

    def _member_ctx(self, ctx_id: str, peer_id: str) -> ContextRecord:
        ctx = self.store.contexts.get(str(ctx_id))
        if ctx is None:
            raise _NotMember(f"context {ctx_id} is not on this node")
        self._member_ns(ctx.namespace_id, peer_id)
        return ctx

    def refs(self, ctx_id: str) -> set[bytes]:
        """Ids referenced as parents by deltas in the log (cached)."""
        refs = self._refs.get(ctx_id)
        if refs is None:
            refs = {p for d in self.store.deltas(ctx_id).values() for p in d.parents}
            self._refs[ctx_id] = refs
        return refs

    def missing(self, ctx_id: str) -> set[bytes]:
        """Parents we know of but never received (a push that got lost)."""
        return self.refs(ctx_id) - self.store.deltas(ctx_id).keys()

    def heads_after(self, ctx: ContextRecord, delta: Delta) -> list[bytes]:
        """The DAG heads once ``delta`` (not yet logged) joins the log."""
        refs = self.refs(ctx.id)
        heads = set(ctx.heads) - set(delta.parents)
        if delta.id not in refs:
            heads.add(delta.id)
        refs.update(delta.parents)
        return sorted(heads)

    def forget_context(self, ctx_id: str) -> None:
        self._refs.pop(ctx_id, None)
        self._status.pop(ctx_id, None)

    def status(self, ctx_id: str) -> dict[str, Any]:
        """The ``sync_status`` of a context."""
        ctx = self.store.contexts.get(ctx_id)
        st = self._status.get(ctx_id, {})
        state = st.get("state", "idle")
        if ctx is not None and not ctx.initialized and not self._context_peers(ctx):
            state = "waitingForPeers"
        body: dict[str, Any] = {
            "syncState": {"state": state},
            "failureCount": st.get("failureCount", 0),
        }
        if st.get("lastError"):
            body["lastError"] = st["lastError"]
        return body

    async def _gather(self, coros: list[Any]) -> list[Any]:
        return (
            list(await asyncio.gather(*coros, return_exceptions=True)) if coros else []
        )

    # -- outgoing: namespaces ------------------------------------------------------

    async def _wait_for_peers(self) -> None:
        if not self.swarm.peers():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_PEER_WAIT):
                    await self.swarm.connected.wait()

    async def join_namespace(
        self, ns_id: str, signed: Any, me: Keypair
    ) -> dict[str, Any]:
        """Ask connected peers to admit ``me``; returns the namespace state."""
        await self._wait_for_peers()
        body = {
            "invitation": signed,
            "identity": me.public_hex,
            "account": me.public.hex(),
        }
        refusals: list[str] = []
        for peer in self.swarm.peers():
            try:
                reply = await self.swarm.request(
                    peer, "ns_join", body, timeout=_REQUEST_TIMEOUT
                )
            except PeerError as exc:
                if "not a member" not in str(exc):
                    refusals.append(str(exc))
                continue
            state = reply.get("state")
            if isinstance(state, dict) and state.get("id") == ns_id:
                return state
        if refusals:
            raise ApiError(403, "joining namespace refused: " + "; ".join(refusals))
        msg = (
            f"no connected peer is a member of namespace {ns_id} "
            f"({self.swarm.peer_count} peers connected); check the bootstrap "
            "addresses and that the inviting node is running"
        )
        raise ApiError(503, msg)

    async def announce_namespace(self, ns: NamespaceRecord) -> None:
        """Push our view of a namespace to its member peers and merge theirs."""
        peers = self._member_peers(ns)
        replies = await self._gather(
            [
                self.swarm.request(
                    p, "ns_sync", {"state": ns.replicated()}, timeout=_ANNOUNCE_TIMEOUT
                )
                for p in peers
            ]
        )
        changed = False
        for reply in replies:
            if isinstance(reply, dict) and isinstance(reply.get("state"), dict):
                changed |= ns.merge(reply["state"])
        if changed:
            self.store.save_namespace(ns)
            self._follow(ns)

    def _follow(self, ns: NamespaceRecord) -> asyncio.Future[Any] | None:
        """Start joining the contexts of ``ns`` this node should follow, if any."""
        if not self.service.contexts_to_follow(ns):
            return None
        return self.swarm.spawn(self.service.follow_contexts(ns))

    async def refresh_namespaces(self) -> None:
        for ns in list(self.store.namespaces.values()):
            if ns.identity is not None:
                await self.announce_namespace(ns)

    async def fetch_application(self, app_id: str, ns: NamespaceRecord) -> None:
        """Install an app by copying its signed bundle from a member peer.

        As merod's ``install_expected_bundle_blob``: the archive is verified
        here, under this node's own checks, and must derive the id asked for
        (``application mismatch: expected …, got …`` otherwise); the peer's
        record only lends its ``source``. A bundle never replaces a newer
        version of the row.
        """
        reasons = []
        for peer in self._member_peers(ns):
            try:
                reply = await self.swarm.request(
                    peer, "app_fetch", {"application_id": app_id}, timeout=60.0
                )
                data = base64.b64decode(reply["bundle"], validate=True)
                source = str(reply["source"])
            except (PeerError, KeyError, TypeError, ValueError) as exc:
                reasons.append(f"peer {peer}: {exc}")
                continue
            try:
                verified = bundle.verify_bundle(
                    data,
                    source=f"application {app_id} from peer {peer}",
                    schemes=self.service.bundle_schemes,
                )
                if verified.application_id != app_id:
                    raise bundle.BundleError(
                        f"application mismatch: expected {app_id}, got {verified.application_id}"
                    )
                self.service.install_bundle(verified, data, source=source, remote=True)
            except (bundle.BundleError, ApiError) as exc:
                reasons.append(f"peer {peer}: {exc}")
                continue
            self.log.info("fetched application %s from peer %s", app_id, peer)
            return
        detail = "; ".join(reasons) or "no member peer is connected"
        msg = f"application {app_id} is not installed here and could not be fetched: {detail}"
        raise ApiError(503, msg)

    # -- outgoing: contexts --------------------------------------------------------

    async def announce_context_join(self, ctx: ContextRecord) -> None:
        ns = self.store.namespaces[ctx.namespace_id]
        body = {"context_id": ctx.id, "identity": ctx.identity}
        replies = await self._gather(
            [
                self.swarm.request(p, "ctx_joined", body, timeout=5.0)
                for p in self._member_peers(ns)
            ]
        )
        for reply in replies:
            if isinstance(reply, dict):
                self._merge_members(ctx, reply.get("members"))

    def _merge_members(self, ctx: ContextRecord, members: Any) -> None:
        if not isinstance(members, dict):
            return
        new = {str(k): str(v) for k, v in members.items() if k not in ctx.members}
        if new:
            ctx.members.update(new)
            if ctx.id in self.store.contexts:
                self.store.save_context(ctx)

    async def fetch_blob(self, blob_id: str, ctx_id: str) -> bytes | None:
        """A blob from this node, else from a member of the context (then kept)."""
        data = self.store.blob(blob_id)
        ctx = self.store.contexts.get(ctx_id)
        if data is not None or ctx is None or self.swarm.partitioned:
            return data
        for peer in self._context_peers(ctx):
            try:
                reply = await self.swarm.request(
                    peer,
                    "blob_fetch",
                    {"context_id": ctx_id, "blob_id": blob_id},
                    timeout=_REQUEST_TIMEOUT,
                )
            except PeerError as exc:
                self.log.debug("blob %s: fetch from %s failed: %s", blob_id, peer, exc)
                continue
            if not reply.get("found"):
                continue
            data = base64.b64decode(reply["data"], validate=True)
            if hex32(sha256(data)) != blob_id:
                self.log.warning("blob %s: %s sent other content; ignored", blob_id, peer)
                continue
            self.store.put_blob(data)
            self.log.info("blob %s: fetched %d bytes from %s", blob_id, len(data), peer)
            return data
        return None

    def broadcast_delta(self, ctx: ContextRecord, delta: Delta) -> None:
        """Push a fresh local delta to every connected member (fire and forget)."""
        body = {"context_id": ctx.id, "delta": delta.to_wire()}
        for peer in self._context_peers(ctx):
            self.swarm.spawn(self._push(peer, body))

    async def _push(self, peer: str, body: dict[str, Any]) -> None:
        try:
            await self.swarm.request(peer, "delta", body, timeout=_REQUEST_TIMEOUT)
        except PeerError as exc:
            # Catch-up pulls it later; nothing else to do here.
            self.log.debug("delta push to %s failed: %s", peer, exc)

    async def sync_all(self) -> None:
        """One catch-up round: namespaces, contexts to follow, then every context."""
        if self.swarm.partitioned:
            return
        await self.refresh_namespaces()
        known = list(self.store.contexts)
        for ns in list(self.store.namespaces.values()):
            # A join takes its state as it joins; the others catch up below.
            if self._member_peers(ns) and self.service.contexts_to_follow(ns):
                await self.service.follow_contexts(ns)
        await self._gather([self.sync_context(c) for c in known])

    async def sync_context(self, ctx_id: str) -> None:
        """Catch up one context with every connected member peer."""
        ctx = self.store.contexts.get(ctx_id)
        if ctx is None or self.swarm.partitioned:
            return
        status = self._status.setdefault(ctx_id, {"failureCount": 0})
        peers = self._context_peers(ctx)
        if not peers:
            ns = self.store.namespaces.get(ctx.namespace_id)
            # A fresh joiner may know members only through the namespace.
            peers = self._member_peers(ns) if ns is not None else []
        status["state"] = "syncing"
        errors = []
        for peer in peers:
            try:
                await self._sync_with(ctx_id, peer)
            except (PeerError, ValueError, KeyError, TypeError) as exc:
                errors.append(f"{peer}: {exc}")
        status["state"] = "idle"
        if errors:
            status["failureCount"] = status.get("failureCount", 0) + 1
            status["lastError"] = "; ".join(errors)
            self.log.debug("context %s: sync problems: %s", ctx_id, status["lastError"])

    async def _sync_with(self, ctx_id: str, peer: str) -> None:
        summary = await self.swarm.request(
            peer, "ctx_summary", {"context_id": ctx_id}, timeout=_REQUEST_TIMEOUT
        )
        ctx = self.store.contexts.get(ctx_id)
        if ctx is None or not summary.get("known"):
            return
        self._merge_members(ctx, summary.get("members"))
        their_root = bytes.fromhex(summary["root"])
        if not ctx.initialized:
            if summary.get("initialized"):
                await self._take_snapshot(ctx_id, peer)
            return
        if their_root == ctx.root:
            return
        known = self.store.deltas(ctx_id)
        their_heads = {bytes.fromhex(h) for h in summary.get("heads", [])}
        missing = self.missing(ctx_id)
        if their_heads <= known.keys() and not missing:
            return  # they are behind us; their own catch-up pulls from us
        reply = await self.swarm.request(
            peer,
            "ctx_pull",
            {
                "context_id": ctx_id,
                "heads": [h.hex() for h in ctx.heads],
                "missing": [m.hex() for m in missing],
            },
            timeout=60.0,
        )
        applied = 0
        for wire in reply.get("deltas", []):
            delta = Delta.from_wire(wire)
            if delta.id not in self.store.deltas(ctx_id):
                applied += await self.service.apply_delta(ctx_id, delta, peer)
        if applied:
            self.log.info(
                "context %s: caught up %d delta(s) from %s", ctx_id, applied, peer
            )

    async def _take_snapshot(self, ctx_id: str, peer: str) -> None:
        snap = await self.swarm.request(
            peer, "ctx_snapshot", {"context_id": ctx_id}, timeout=60.0
        )
        entries = {
            base64.b64decode(k): base64.b64decode(v) for k, v in snap.get("entries", [])
        }
        deltas = [Delta.from_wire(w) for w in snap.get("deltas", [])]
        async with self.service.lock(ctx_id):
            ctx = self.store.contexts.get(ctx_id)
            if ctx is None or ctx.initialized:
                return
            ctx.root = bytes.fromhex(snap["root"])
            ctx.heads = [bytes.fromhex(h) for h in snap.get("heads", [])]
            self._merge_members(ctx, snap.get("members"))
            self.store.replace_state(ctx, entries, deltas)
            self._refs.pop(ctx_id, None)
        self.log.info(
            "context %s: installed snapshot from %s (%d entries, %d deltas, root %s)",
            ctx_id,
            peer,
            len(entries),
            len(deltas),
            hex32(ctx.root),
        )

    # -- incoming ------------------------------------------------------------------

    async def handle(
        self, peer: str, kind: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Answer a swarm request from ``peer``."""
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            raise PeerError(f"unknown request type {kind!r}")
        if self.swarm.partitioned:
            raise PeerError("node is partitioned")
        result: dict[str, Any] = await handler(peer, body)
        return result

    async def _on_ns_join(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        signed = body.get("invitation")
        inv = signed.get("invitation") if isinstance(signed, dict) else None
        ns_id = str(inv.get("group_id", "")).lower() if isinstance(inv, dict) else ""
        ns = self.store.namespaces.get(ns_id)
        if ns is None or ns.identity is None:
            raise _NotMember(f"not a member of namespace {ns_id}")
        try:
            self.service.verify_invitation(signed, ns_id)
        except ApiError as exc:
            raise PeerError(exc.message) from None
        assert isinstance(inv, dict)
        if inv["inviter_identity"] not in ns.members:
            msg = f"inviter {inv['inviter_identity']} is not a member of namespace {ns_id}"
            raise PeerError(msg)
        identity = str(body.get("identity"))
        if identity not in ns.members:
            ns.members[identity] = {
                "peerId": peer,
                "account": str(body.get("account", "")),
                "joinedAt": int(time.time()),
                "role": str(inv.get("invited_role", "Member")),
            }
            self.store.save_namespace(ns)
            self.log.info(
                "admitted %s (peer %s) to namespace %s", identity, peer, ns_id
            )
            self.swarm.spawn(self.announce_namespace(ns))
        return {"state": ns.replicated()}

    async def _on_ns_sync(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        state = body.get("state")
        if not isinstance(state, dict):
            raise PeerError("ns_sync needs a namespace state")
        ns = self._member_ns(str(state.get("id")), peer)
        if ns.merge(state):
            self.store.save_namespace(ns)
            following = self._follow(ns)
            if following is not None:
                # Not cancelled at the budget: the joins finish in the background.
                await asyncio.wait({following}, timeout=_FOLLOW_BUDGET)
        return {"state": ns.replicated()}

    async def _on_app_fetch(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        app_id = str(body.get("application_id"))
        if not any(
            peer in ns.member_peers() and ns.identity
            for ns in self.store.namespaces.values()
        ):
            raise _NotMember(f"peer {peer} shares no namespace with this node")
        app = self.store.apps.get(app_id)
        data = self.store.blob(app.blob_id) if app is not None else None
        if app is None or data is None:
            raise PeerError(f"application {app_id} is not installed on this node")
        return {"source": app.source, "bundle": base64.b64encode(data).decode()}

    async def _on_ctx_joined(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        ctx = self._member_ctx(str(body.get("context_id")), peer)
        identity = str(body.get("identity"))
        if ctx.members.get(identity) != peer:
            ctx.members[identity] = peer
            self.store.save_context(ctx)
            self.log.info(
                "context %s: member %s joined from %s", ctx.id, identity, peer
            )
        return {"members": ctx.members}

    async def _on_ctx_summary(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            ctx = self._member_ctx(str(body.get("context_id")), peer)
        except _NotMember:
            return {"known": False}
        return {
            "known": True,
            "root": ctx.root.hex(),
            "heads": [h.hex() for h in ctx.heads],
            "initialized": ctx.initialized,
            "members": ctx.members,
        }

    async def _on_ctx_pull(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        ctx = self._member_ctx(str(body.get("context_id")), peer)
        log_ = self.store.deltas(ctx.id)
        their_heads = {bytes.fromhex(h) for h in body.get("heads", [])}
        # Everything reachable from their heads (as far as we know the DAG) they have.
        have: set[bytes] = set()
        stack = [h for h in their_heads if h in log_]
        while stack:
            ident = stack.pop()
            if ident in have:
                continue
            have.add(ident)
            stack.extend(p for p in log_[ident].parents if p in log_)
        # They hold deltas whose parents never reached them: send those parents with
        # all their ancestors, since what they have below their heads is unknown.
        wanted: set[bytes] = set()
        stack = [
            m for m in (bytes.fromhex(x) for x in body.get("missing", [])) if m in log_
        ]
        while stack:
            ident = stack.pop()
            if ident not in wanted:
                wanted.add(ident)
                stack.extend(p for p in log_[ident].parents if p in log_)
        out = [
            d.to_wire()
            for d in log_.values()
            if (d.id not in have and d.id not in their_heads) or d.id in wanted
        ]
        return {"deltas": out}

    async def _on_ctx_snapshot(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        ctx = self._member_ctx(str(body.get("context_id")), peer)
        if not ctx.initialized:
            raise PeerError(f"context {ctx.id} has no state on this node yet")
        # No await between these reads: the copy is one consistent state.
        kv = self.store.kv(ctx.id)
        return {
            "root": ctx.root.hex(),
            "heads": [h.hex() for h in ctx.heads],
            "members": ctx.members,
            "entries": [
                [base64.b64encode(k).decode(), base64.b64encode(v).decode()]
                for k, v in kv.items()
            ],
            "deltas": [d.to_wire() for d in self.store.deltas(ctx.id).values()],
        }

    async def _on_blob_fetch(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        self._member_ctx(str(body.get("context_id")), peer)
        data = self.store.blob(str(body.get("blob_id")))
        if data is None:
            return {"found": False}
        return {"found": True, "data": base64.b64encode(data).decode()}

    async def _on_delta(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        ctx = self._member_ctx(str(body.get("context_id")), peer)
        delta = Delta.from_wire(body["delta"])
        applied = await self.service.apply_delta(ctx.id, delta, peer)
        return {"applied": applied}
