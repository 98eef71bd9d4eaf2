"""Durable node state in one SQLite database under the node's home.

Everything a node knows survives a restart: identities, installed applications
and blobs, namespaces with their members, contexts with their key-value storage,
state root, DAG heads and the delta log, and the addresses of peers seen. Each
context also has three node-local stores that are never replicated nor part of
a snapshot: private storage, the ordered index and the index's validity markers
(merod's ``private_storage_*`` and ``storage_index_*`` host functions).
Records are cached in memory (nodes under test are small); every change is
written through in a transaction, so an execute's storage writes, new root and
delta land together or not at all. WAL mode with ``synchronous=OFF``: every
commit is in the operating system's hands when it returns, so a stopped, killed
or restarted node keeps all of it, but nothing is flushed to the disk itself,
so a crash of the machine may lose the last commits. Test nodes survive what
tests and containers do to them (a killed process), and skip the fsync of every
checkpoint, which held an execute up by 5-40 ms now and then.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .ids import hex32, sha256

__all__ = [
    "LOCAL_SPACES",
    "ZERO_ROOT",
    "AppRecord",
    "ContextRecord",
    "Delta",
    "DeltaEvent",
    "NamespaceRecord",
    "NodeStore",
    "delta_id",
]

DB_FILE = "node.sqlite3"
ZERO_ROOT = bytes(32)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (
    public_key BLOB PRIMARY KEY, secret BLOB NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blobs (id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS applications (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS namespaces (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS contexts (id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS context_kv (
    context_id TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (context_id, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deltas (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, context_id TEXT NOT NULL, id BLOB NOT NULL,
    parents BLOB NOT NULL, artifact BLOB NOT NULL, author TEXT NOT NULL,
    events TEXT NOT NULL DEFAULT '[]', UNIQUE (context_id, id));
CREATE TABLE IF NOT EXISTS peers (peer_id TEXT PRIMARY KEY, addr TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS node_local (
    context_id TEXT NOT NULL, space TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (context_id, space, key)) WITHOUT ROWID;
"""

#: The node-local keyspaces of a context (never replicated).
LOCAL_SPACES = ("private", "index", "index_meta")


def _now() -> int:
    return int(time.time())


@dataclass
class AppRecord:
    """An installed application (shown snake_case, like merod's ``Application``).

    For a signed bundle, as merod records one: ``blob_id`` is the blob of the
    whole ``.mpk`` archive and ``size`` its length, ``metadata`` the manifest's
    metadata JSON, ``signer_id`` the did:key that signed it, and ``services``
    maps each named service of a multi-service bundle to the blob of its wasm.
    A record without ``signer_id`` is a raw-wasm install of an older node home.
    """

    id: str
    blob_id: str
    size: int
    source: str
    metadata: list[int]
    package: str | None = None
    version: str | None = None
    installed_at: int = field(default_factory=_now)
    signer_id: str | None = None
    services: dict[str, str] | None = None

    def to_api(self) -> dict[str, Any]:
        """The ``Application`` JSON of the admin API."""
        body: dict[str, Any] = {
            "id": self.id,
            "blob": {"bytecode": self.blob_id, "compiled": self._compiled(self.blob_id)},
            "size": self.size,
            "source": self.source,
            "metadata": self.metadata,
        }
        if self.signer_id is not None:
            body["signer_id"] = self.signer_id
        if self.package:
            body["package"] = self.package
        if self.version is not None:
            body["version"] = self.version
        if self.services:
            body["services"] = {
                name: {"bytecode": blob, "compiled": self._compiled(blob)}
                for name, blob in self.services.items()
            }
        return body

    def _compiled(self, blob_id: str) -> str:
        # Compiled code is never persisted. merod shows the zero blob id for a
        # bundle's modules until it has compiled them; older rows keep a
        # derived hash, as they always showed.
        if self.signer_id is not None:
            return "0" * 64
        return hex32(sha256(b"compiled:", blob_id.encode()))


@dataclass
class NamespaceRecord:
    """A namespace (root group): its app, members and contexts.

    ``members`` and ``contexts`` only ever grow, so replicas merge by union and
    converge whatever order updates arrive in. ``identity`` (this node's member
    key) and ``unfollowed`` (contexts this node deleted, which it does not join
    again by itself) are local and never replicated.
    """

    id: str
    application_id: str
    app_key: str
    created_at: int
    name: str | None = None
    #: member public key (hex) -> {"peerId", "account", "joinedAt"}
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: context id -> {"applicationId", "createdAt", "name"?}
    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)
    identity: str | None = None
    unfollowed: list[str] = field(default_factory=list)

    def replicated(self) -> dict[str, Any]:
        """The part of the record that peers share."""
        body = asdict(self)
        body.pop("identity")
        body.pop("unfollowed")
        return body

    def state_hash(self) -> bytes:
        """The hash of the governance state members share (merod's ``groupStateHash``).

        It covers the application, the members (with their accounts and roles)
        and the contexts, and nothing local or timed, so members that merged
        the same updates report the same hash and any join or new context
        changes it.
        """
        state = {
            "id": self.id,
            "applicationId": self.application_id,
            "appKey": self.app_key,
            "members": {
                key: [value.get("account"), value.get("role", "Member")]
                for key, value in self.members.items()
            },
            "contexts": {
                key: value.get("applicationId") for key, value in self.contexts.items()
            },
        }
        return sha256(json.dumps(state, sort_keys=True, separators=(",", ":")).encode())

    def merge(self, other: Mapping[str, Any]) -> bool:
        """Union ``other``'s members and contexts into ours; True if anything changed."""
        changed = False
        for key, value in dict(other.get("members", {})).items():
            if key not in self.members:
                self.members[key] = dict(value)
                changed = True
        for key, value in dict(other.get("contexts", {})).items():
            if key not in self.contexts:
                self.contexts[key] = dict(value)
                changed = True
        return changed

    def member_peers(self) -> set[str]:
        """Peer ids of the nodes holding a member identity."""
        return {m["peerId"] for m in self.members.values() if m.get("peerId")}


@dataclass
class ContextRecord:
    """A context this node is a member of."""

    id: str
    application_id: str
    namespace_id: str
    identity: str
    root: bytes = ZERO_ROOT
    heads: list[bytes] = field(default_factory=list)
    #: member public key (hex) -> peer id of the node that holds it
    members: dict[str, str] = field(default_factory=dict)
    created_at: int = field(default_factory=_now)
    name: str | None = None
    service_name: str | None = None

    @property
    def initialized(self) -> bool:
        """False until ``init`` ran here or a snapshot arrived."""
        return self.root != ZERO_ROOT

    def to_json(self) -> str:
        # Every execute saves the record; asdict's deep copy cost more than
        # the JSON itself. The fields hold plain values, lists and dicts.
        body = {name: getattr(self, name) for name in _CONTEXT_FIELDS}
        body["root"] = self.root.hex()
        body["heads"] = [h.hex() for h in self.heads]
        return json.dumps(body)

    @classmethod
    def from_json(cls, text: str) -> ContextRecord:
        body = json.loads(text)
        body["root"] = bytes.fromhex(body["root"])
        body["heads"] = [bytes.fromhex(h) for h in body["heads"]]
        return cls(**body)


_CONTEXT_FIELDS = tuple(f.name for f in fields(ContextRecord))


def delta_id(parents: Iterable[bytes], artifact: bytes) -> bytes:
    """A delta's id: the hash of its parents (in order) and its artifact."""
    return sha256(b"calimero-delta-v1", *parents, artifact)


#: An event carried with a delta: (kind, data, handler or None).
DeltaEvent = tuple[str, bytes, str | None]


def _events_json(events: Iterable[DeltaEvent]) -> list[dict[str, Any]]:
    return [
        {"kind": k, "data": base64.b64encode(d).decode(), "handler": h}
        for k, d, h in events
    ]


def _events_from_json(items: Any) -> tuple[DeltaEvent, ...]:
    events = []
    for item in items or []:
        handler = item.get("handler")
        events.append(
            (
                str(item["kind"]),
                base64.b64decode(item["data"], validate=True),
                None if handler is None else str(handler),
            )
        )
    return tuple(events)


@dataclass(frozen=True)
class Delta:
    """One state change of a context, as produced by a mutating call.

    ``events`` are the events of the call that produced it; receiving nodes run
    the ones that name a handler (``emit_with_handler``), as merod does. Like in
    merod at the time this follows, the delta id does not cover them.
    """

    id: bytes
    parents: tuple[bytes, ...]
    artifact: bytes
    author: str
    events: tuple[DeltaEvent, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """A JSON-safe form for the swarm."""
        body = {
            "id": self.id.hex(),
            "parents": [p.hex() for p in self.parents],
            "artifact": base64.b64encode(self.artifact).decode(),
            "author": self.author,
        }
        if self.events:
            body["events"] = _events_json(self.events)
        return body

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Delta:
        """Parse and check a delta received from a peer (ValueError if forged)."""
        parents = tuple(bytes.fromhex(p) for p in body["parents"])
        artifact = base64.b64decode(body["artifact"], validate=True)
        ident = bytes.fromhex(body["id"])
        if ident != delta_id(parents, artifact):
            raise ValueError(f"delta id {body['id']} does not match its content")
        return cls(
            id=ident,
            parents=parents,
            artifact=artifact,
            author=str(body["author"]),
            events=_events_from_json(body.get("events")),
        )


class NodeStore:
    """The node's database plus in-memory caches of its records."""

    def __init__(self, home: Path) -> None:
        self.path = home / DB_FILE
        self._db: sqlite3.Connection | None = None
        self.identities: dict[str, bytes] = {}  # public key (hex) -> secret
        self.apps: dict[str, AppRecord] = {}
        self.namespaces: dict[str, NamespaceRecord] = {}
        self.contexts: dict[str, ContextRecord] = {}
        self.peers: dict[str, str] = {}
        self._kv: dict[str, dict[bytes, bytes]] = {}
        self._local: dict[tuple[str, str], dict[bytes, bytes]] = {}
        self._deltas: dict[str, dict[bytes, Delta]] = {}

    # -- lifecycle -----------------------------------------------------------------

    def open(self) -> None:
        """Open (creating if needed) the database and load the records."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(deltas)")}
        if "events" not in columns:  # a node home written before events were kept
            db.execute("ALTER TABLE deltas ADD COLUMN events TEXT NOT NULL DEFAULT '[]'")
        self._db = db
        for pk, secret in db.execute("SELECT public_key, secret FROM identities"):
            self.identities[hex32(pk)] = secret
        for (text,) in db.execute("SELECT record FROM applications"):
            rec = AppRecord(**json.loads(text))
            self.apps[rec.id] = rec
        for (text,) in db.execute("SELECT record FROM namespaces"):
            ns = NamespaceRecord(**json.loads(text))
            self.namespaces[ns.id] = ns
        for (text,) in db.execute("SELECT record FROM contexts"):
            ctx = ContextRecord.from_json(text)
            self.contexts[ctx.id] = ctx
        self.peers = dict(db.execute("SELECT peer_id, addr FROM peers").fetchall())

    def close(self) -> None:
        """Checkpoint and close the database; caches are dropped."""
        if self._db is not None:
            self._db.close()
            self._db = None
        self._kv.clear()
        self._local.clear()
        self._deltas.clear()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"the node store at {self.path} is not open")
        return self._db

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        db = self.db
        db.execute("BEGIN")
        try:
            for sql, args in statements:
                db.execute(sql, args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- meta and identities -------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._write([("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))])

    def add_identity(self, public: bytes, secret: bytes) -> str:
        """Keep a keypair this node owns; returns the public key (hex)."""
        self._write(
            [
                (
                    "INSERT OR IGNORE INTO identities VALUES (?, ?, ?)",
                    (public, secret, _now()),
                )
            ]
        )
        key = hex32(public)
        self.identities[key] = secret
        return key

    # -- blobs and applications ----------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        """Store bytes under their content id (hex sha256) and return the id."""
        blob_id = hex32(sha256(data))
        self._write([("INSERT OR IGNORE INTO blobs VALUES (?, ?)", (blob_id, data))])
        return blob_id

    def blob(self, blob_id: str) -> bytes | None:
        row = self.db.execute(
            "SELECT data FROM blobs WHERE id = ?", (blob_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def blob_sizes(self) -> dict[str, int]:
        rows = self.db.execute("SELECT id, length(data) FROM blobs ORDER BY id")
        return {str(i): int(n) for i, n in rows}

    def delete_blob(self, blob_id: str) -> bool:
        cur = self.db.execute("DELETE FROM blobs WHERE id = ?", (blob_id,))
        return cur.rowcount > 0

    def put_app(self, rec: AppRecord) -> None:
        text = json.dumps(asdict(rec))
        self._write(
            [("INSERT OR REPLACE INTO applications VALUES (?, ?)", (rec.id, text))]
        )
        self.apps[rec.id] = rec

    def delete_app(self, app_id: str) -> None:
        self._write([("DELETE FROM applications WHERE id = ?", (app_id,))])
        self.apps.pop(app_id, None)

    # -- namespaces and contexts ---------------------------------------------------

    def save_namespace(self, ns: NamespaceRecord) -> None:
        text = json.dumps(asdict(ns))
        self._write(
            [("INSERT OR REPLACE INTO namespaces VALUES (?, ?)", (ns.id, text))]
        )
        self.namespaces[ns.id] = ns

    def save_context(self, ctx: ContextRecord) -> None:
        sql = "INSERT OR REPLACE INTO contexts VALUES (?, ?)"
        self._write([(sql, (ctx.id, ctx.to_json()))])
        self.contexts[ctx.id] = ctx

    def delete_context(self, ctx_id: str) -> None:
        """Forget a context with its storage and delta log."""
        self._write(
            [
                ("DELETE FROM contexts WHERE id = ?", (ctx_id,)),
                ("DELETE FROM context_kv WHERE context_id = ?", (ctx_id,)),
                ("DELETE FROM deltas WHERE context_id = ?", (ctx_id,)),
                ("DELETE FROM node_local WHERE context_id = ?", (ctx_id,)),
            ]
        )
        self.contexts.pop(ctx_id, None)
        self._kv.pop(ctx_id, None)
        for space in LOCAL_SPACES:
            self._local.pop((ctx_id, space), None)
        self._deltas.pop(ctx_id, None)

    def kv(self, ctx_id: str) -> dict[bytes, bytes]:
        """The context's storage (loaded on first use, then cached).

        Callers must treat it as read-only and change it through
        :meth:`commit_changes`, which writes through to disk.
        """
        cached = self._kv.get(ctx_id)
        if cached is None:
            rows = self.db.execute(
                "SELECT key, value FROM context_kv WHERE context_id = ?", (ctx_id,)
            )
            cached = {bytes(k): bytes(v) for k, v in rows}
            self._kv[ctx_id] = cached
        return cached

    def local(self, ctx_id: str, space: str) -> dict[bytes, bytes]:
        """One node-local keyspace of a context (``LOCAL_SPACES``), read-only.

        Loaded on first use and cached; change it through :meth:`commit_changes`.
        """
        cached = self._local.get((ctx_id, space))
        if cached is None:
            rows = self.db.execute(
                "SELECT key, value FROM node_local WHERE context_id = ? AND space = ?",
                (ctx_id, space),
            )
            cached = {bytes(k): bytes(v) for k, v in rows}
            self._local[(ctx_id, space)] = cached
        return cached

    def deltas(self, ctx_id: str) -> dict[bytes, Delta]:
        """The context's delta log in arrival order (loaded on first use)."""
        cached = self._deltas.get(ctx_id)
        if cached is None:
            rows = self.db.execute(
                "SELECT id, parents, artifact, author, events FROM deltas "
                "WHERE context_id = ? ORDER BY seq",
                (ctx_id,),
            )
            cached = {}
            for ident, parents, artifact, author, events in rows:
                p = bytes(parents)
                cached[bytes(ident)] = Delta(
                    id=bytes(ident),
                    parents=tuple(p[i : i + 32] for i in range(0, len(p), 32)),
                    artifact=bytes(artifact),
                    author=str(author),
                    events=_events_from_json(json.loads(events)),
                )
            self._deltas[ctx_id] = cached
        return cached

    def commit_changes(
        self,
        ctx: ContextRecord,
        writes: Mapping[bytes, bytes | None],
        deltas: Iterable[Delta] = (),
        local: Mapping[str, Mapping[bytes, bytes | None]] | None = None,
    ) -> None:
        """Atomically apply storage writes, save the context record and log deltas.

        ``local`` maps a node-local keyspace (``LOCAL_SPACES``) to its writes.
        """
        kv = self.kv(ctx.id)
        log = self.deltas(ctx.id)
        new_deltas = [d for d in deltas if d.id not in log]
        local = {space: w for space, w in (local or {}).items() if w}
        statements: list[tuple[str, tuple[Any, ...]]] = []
        for key, value in writes.items():
            if value is None:
                sql = "DELETE FROM context_kv WHERE context_id = ? AND key = ?"
                statements.append((sql, (ctx.id, key)))
            else:
                sql = "INSERT OR REPLACE INTO context_kv VALUES (?, ?, ?)"
                statements.append((sql, (ctx.id, key, value)))
        for space, space_writes in local.items():
            for key, value in space_writes.items():
                if value is None:
                    sql = (
                        "DELETE FROM node_local WHERE context_id = ? AND space = ? "
                        "AND key = ?"
                    )
                    statements.append((sql, (ctx.id, space, key)))
                else:
                    sql = "INSERT OR REPLACE INTO node_local VALUES (?, ?, ?, ?)"
                    statements.append((sql, (ctx.id, space, key, value)))
        for d in new_deltas:
            sql = (
                "INSERT OR IGNORE INTO deltas "
                "(context_id, id, parents, artifact, author, events) "
                "VALUES (?, ?, ?, ?, ?, ?)"
            )
            events = json.dumps(_events_json(d.events))
            statements.append(
                (sql, (ctx.id, d.id, b"".join(d.parents), d.artifact, d.author, events))
            )
        statements.append(
            ("INSERT OR REPLACE INTO contexts VALUES (?, ?)", (ctx.id, ctx.to_json()))
        )
        self._write(statements)

        for key, value in writes.items():
            if value is None:
                kv.pop(key, None)
            else:
                kv[key] = value
        for space, space_writes in local.items():
            cache = self.local(ctx.id, space)
            for key, value in space_writes.items():
                if value is None:
                    cache.pop(key, None)
                else:
                    cache[key] = value
        for d in new_deltas:
            log[d.id] = d
        self.contexts[ctx.id] = ctx

    def replace_state(
        self,
        ctx: ContextRecord,
        entries: Mapping[bytes, bytes],
        deltas: Iterable[Delta],
    ) -> None:
        """Install a snapshot: storage replaced wholesale, deltas merged into the log."""
        kv = self.kv(ctx.id)
        writes: dict[bytes, bytes | None] = {k: None for k in kv if k not in entries}
        writes.update(entries)
        self.commit_changes(ctx, writes, deltas)

    # -- peers ---------------------------------------------------------------------

    def remember_peer(self, peer_id: str, addr: str) -> None:
        """Keep the last dialable address of a peer, to find it after a restart."""
        if self.peers.get(peer_id) == addr:
            return
        self._write([("INSERT OR REPLACE INTO peers VALUES (?, ?)", (peer_id, addr))])
        self.peers[peer_id] = addr
