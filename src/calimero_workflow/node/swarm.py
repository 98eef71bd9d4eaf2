"""The peer-to-peer transport of the embedded node.

Our own protocol, not libp2p: length-prefixed JSON frames over plain TCP. Each
frame is a 4-byte big-endian length and a UTF-8 JSON object. A connection opens
with a mutual challenge-response handshake of four frames::

    dialer   -> listener   {"t": "hello", "proto", "peer", "nonce", "port"}
    listener -> dialer     {"t": "hello", "proto", "peer", "nonce", "port"}
    dialer   -> listener   {"t": "auth", "sig"}    the dialer's proof
    listener -> dialer     {"t": "auth", "sig"}    the listener's proof

A proof is an ed25519 signature, by the key behind the signer's peer id, over
a transcript of this one handshake: a domain tag, the signer's role (dialer or
listener), the signer's and the verifier's peer ids, both nonces and the port
the dialer listens on. Each side checks the other's proof against the nonce it
chose itself, so a signature made in one handshake verifies in no other: not
for another peer, not in the other role, not later. That is what makes a peer
id impossible to claim without its key; an attacker who dials two nodes, each
claiming to be the other, has nothing to pass between them. The listener signs
only for a dialer that has proved its id, and its proof is also its consent:
a dialer registers the connection only once that proof arrived, so neither
side ever uses a connection the other refused. A dialer that knows the
expected id (from ``/p2p/<id>``) refuses an impostor before signing anything.
Until the handshake completes a frame may be at most 64 KiB (handshake frames
are tiny); a larger one closes the connection unread.

After that both sides send requests ``{"t", "id", "body"}`` and answer
``{"re", "body"}`` or ``{"re", "err"}``, multiplexed on the one connection.
These frames are neither encrypted nor signed: the handshake proves who holds
the other end of the TCP connection, not that nobody sits between the two. A
host on the path (or one a node was sent to in place of a peer, by a peer's
exchanged address) can relay a whole handshake between the real nodes and then
read or alter their frames. That is acceptable for test networks on one host
or one Docker network; the transport is not meant for untrusted networks.

The swarm knows nothing of contexts: the node registers a request handler and
a connect callback. Peers come from the bootstrap list, from whoever dials us,
and from peer exchange (every new connection is asked for its peers' addresses);
a background loop redials missing peers. ``partitioned = True`` drops every
connection and refuses new ones until it is set back, to simulate a network cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import PeerError
from .ids import IdError, Keypair, Multiaddr, parse_multiaddr, public_key_from_peer_id
from .ids import verify_signature as _verify
from .logs import node_logger
from .tasks import cancel_and_wait

__all__ = ["Handler", "Swarm"]

#: Answers a request ``(peer id, message type, body) -> reply body``.
Handler = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]

_PROTOCOL = "calimero-embedded-swarm/2"
#: Starts every signed transcript, so that a handshake proof is never a valid
#: signature of anything else the node's key signs, nor one of those a proof.
_DOMAIN = b"calimero-embedded-swarm/2 handshake proof\0"
_DIALER, _LISTENER = "dialer", "listener"
_NONCE_BYTES = 32
#: Peer ids are 52 characters; a longer claim is refused before it is decoded
#: (base58 decoding is quadratic, and ids.b58decode caches what it decodes).
_MAX_PEER_ID = 128
_MAX_FRAME = 256 * 1024 * 1024
#: The frame limit until the handshake has completed. Handshake frames are a
#: few hundred bytes; nobody who has proved nothing may make the node buffer
#: more (the 256 MiB limit is for snapshots and blobs between proven peers).
_MAX_HANDSHAKE_FRAME = 64 * 1024
_HANDSHAKE_TIMEOUT = 5.0
_DIAL_TIMEOUT = 3.0
_HEADER = struct.Struct(">I")


async def _read_frame(
    reader: asyncio.StreamReader, limit: int = _MAX_FRAME
) -> dict[str, Any]:
    header = await reader.readexactly(4)
    (length,) = _HEADER.unpack(header)
    if length > limit:
        # Refused from the header alone: the body is never read, and the
        # caller closes the connection.
        raise PeerError(f"peer sent a {length}-byte frame; the limit is {limit}")
    try:
        msg = json.loads(await reader.readexactly(length))
    except RecursionError:  # deep nesting; not a ValueError, so named here
        raise PeerError("peer sent a frame nested too deeply") from None
    if not isinstance(msg, dict):
        raise PeerError(f"peer sent a frame that is not a JSON object: {msg!r:.80}")
    return msg


def _encode_frame(msg: dict[str, Any]) -> bytes:
    data = json.dumps(msg, separators=(",", ":")).encode()
    return _HEADER.pack(len(data)) + data


@dataclass(frozen=True)
class _Handshake:
    """What one handshake is about; both proofs sign it, each in its own role."""

    dialer: str
    listener: str
    dialer_nonce: bytes
    listener_nonce: bytes
    #: The port the dialer listens on, which the listener records to dial it
    #: back and tells other peers: signed, so it is the dialer's own word.
    dialer_port: int

    def transcript(self, role: str) -> bytes:
        """The bytes the side in ``role`` signs and the other side verifies.

        The role, and who signs for whom, are spelled out: the two proofs of
        one handshake differ, and neither is the proof of any other handshake
        (whose nonces differ). Every field is length-prefixed, so that no two
        different handshakes give the same bytes.
        """
        if role == _DIALER:
            signer, verifier = self.dialer, self.listener
        elif role == _LISTENER:
            signer, verifier = self.listener, self.dialer
        else:
            raise ValueError(f"unknown handshake role {role!r}")
        fields = (
            role.encode(),
            signer.encode(),
            verifier.encode(),
            self.dialer_nonce,
            self.listener_nonce,
            str(self.dialer_port).encode(),
        )
        return _DOMAIN + b"".join(_HEADER.pack(len(f)) + f for f in fields)

    def signer(self, role: str) -> str:
        return self.dialer if role == _DIALER else self.listener


def _read_hello(hello: dict[str, Any]) -> tuple[str, bytes]:
    """The peer id a hello claims and its nonce; PeerError if it is malformed.

    The claim is only checked to be a well-formed ed25519 peer id here; the
    proof that follows shows whether the other side holds its key.
    """
    if hello.get("t") != "hello":
        raise PeerError(f"expected a hello, got {str(hello.get('t'))!r:.40}")
    if hello.get("proto") != _PROTOCOL:
        raise PeerError(f"peer speaks {str(hello.get('proto'))!r:.60}, not {_PROTOCOL}")
    claimed = hello.get("peer")
    if not isinstance(claimed, str) or len(claimed) > _MAX_PEER_ID:
        raise PeerError(f"hello names no peer id: {claimed!r:.80}")
    try:
        public_key_from_peer_id(claimed)
        nonce = bytes.fromhex(str(hello.get("nonce")))
    except (IdError, ValueError) as exc:
        raise PeerError(f"bad hello from {claimed!r}: {exc}") from None
    if len(nonce) != _NONCE_BYTES:
        raise PeerError(f"hello from {claimed} has a {len(nonce)}-byte nonce")
    return claimed, nonce


def _port_of(hello: dict[str, Any]) -> int:
    """The listen port a dialer's hello gives, or 0 when it gives none usable."""
    port = hello.get("port")
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        return port
    return 0


def _check_proof(shake: _Handshake, role: str, frame: dict[str, Any]) -> None:
    """Raise PeerError unless ``frame`` is the proof of ``shake`` in ``role``.

    The key is the one behind the peer id that ``shake`` names for the role, so
    the proof shows that the holder of that id signed this very handshake.
    """
    claimed = shake.signer(role)
    if frame.get("t") != "auth":
        raise PeerError(
            f"peer {claimed} sent {str(frame.get('t'))!r:.40}, not its proof"
        )
    try:
        public = public_key_from_peer_id(claimed)
        sig = bytes.fromhex(str(frame.get("sig")))
    except (IdError, ValueError) as exc:
        raise PeerError(f"bad handshake from {claimed!r}: {exc}") from None
    if not _verify(public, sig, shake.transcript(role)):
        raise PeerError(
            f"peer {claimed!r} failed the handshake: its {role} proof does not verify"
        )


class _Connection:
    """One authenticated connection to a peer, with request multiplexing.

    Built only once the handshake has completed on this side (and, for a
    dialer, once the listener's proof arrived, so the listener took it too).
    """

    def __init__(
        self,
        swarm: Swarm,
        peer_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        addr: Multiaddr | None,
        first_frame: dict[str, Any] | None = None,
    ) -> None:
        self.swarm = swarm
        self.peer_id = peer_id
        self.reader = reader
        self.writer = writer
        self.addr = addr
        #: Sent when the connection starts: the listener's proof, which must go
        #: out only once the connection is registered (and before any request).
        self._first_frame = first_frame
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.reader_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._first_frame is not None:
            self.writer.write(_encode_frame(self._first_frame))
            self._first_frame = None
        self.reader_task = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await _read_frame(self.reader)
                if "re" in msg:
                    fut = self._pending.pop(int(msg["re"]), None)
                    if fut is not None and not fut.done():
                        if "err" in msg:
                            err = PeerError(
                                f"peer {self.peer_id} refused: {msg['err']}"
                            )
                            fut.set_exception(err)
                        else:
                            fut.set_result(dict(msg.get("body") or {}))
                elif "t" in msg:
                    task = asyncio.create_task(self._serve(msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except (PeerError, ValueError) as exc:
            self.swarm.log.warning("dropping peer %s: %s", self.peer_id, exc)
        finally:
            self.close()

    async def _serve(self, msg: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"re": msg.get("id")}
        try:
            body = msg.get("body")
            kind = str(msg["t"])
            if kind == "peers":
                # Peer exchange is the swarm's own business.
                known = self.swarm.addresses()
                known.pop(self.peer_id, None)
                reply["body"] = {"addresses": known}
            else:
                reply["body"] = await self.swarm.handler(
                    self.peer_id, kind, body if isinstance(body, dict) else {}
                )
        except Exception as exc:  # any failure becomes the peer's error answer
            if not isinstance(exc, PeerError | ValueError | KeyError | LookupError):
                self.swarm.log.exception(
                    "handling %r from %s failed", msg.get("t"), self.peer_id
                )
            reply["err"] = str(exc) or type(exc).__name__
        # the connection may close meanwhile (the node stops): nobody to answer
        with contextlib.suppress(ConnectionError, OSError, RuntimeError, PeerError):
            await self.send(reply)

    async def send(self, msg: dict[str, Any]) -> None:
        if self.closed:
            raise PeerError(f"connection to {self.peer_id} is closed")
        # StreamWriter.write is synchronous and frames go out whole, so
        # concurrent senders cannot interleave bytes; drain only applies backpressure.
        self.writer.write(_encode_frame(msg))
        await self.writer.drain()

    async def request(
        self, kind: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        self._next_id += 1
        req_id = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            await self.send({"t": kind, "id": req_id, "body": body})
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise PeerError(
                f"peer {self.peer_id} did not answer {kind!r} within {timeout:g}s"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise PeerError(f"peer {self.peer_id} is unreachable: {exc}") from exc
        finally:
            self._pending.pop(req_id, None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(PeerError(f"connection to {self.peer_id} closed"))
        self._pending.clear()
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            self.writer.close()
        self.swarm._forget(self)


class Swarm:
    """Connections to other nodes, keyed by verified peer id."""

    def __init__(
        self,
        keypair: Keypair,
        *,
        host: str,
        port: int,
        bootstrap: list[str],
        handler: Handler,
        on_connect: Callable[[str], None] | None = None,
        known_peers: dict[str, str] | None = None,
        remember_peer: Callable[[str, str], None] | None = None,
        redial_interval: float = 1.0,
        node_name: str = "node",
    ) -> None:
        self.keypair = keypair
        self.peer_id = keypair.peer_id
        self.host = host
        self.port = port
        self.handler = handler
        self.on_connect = on_connect
        self.remember_peer = remember_peer
        self.redial_interval = redial_interval
        self._bootstrap = [a for a in (parse_multiaddr(b) for b in bootstrap) if a]
        #: peer id -> last dialable address seen for it
        self._addresses: dict[str, Multiaddr] = {}
        for peer, text in (known_peers or {}).items():
            with contextlib.suppress(IdError):
                addr = parse_multiaddr(text)
                if addr is not None and peer != self.peer_id:
                    self._addresses[peer] = addr
        self._conns: dict[str, list[_Connection]] = {}
        self._dialing: set[tuple[str, int]] = set()
        self._server: asyncio.Server | None = None
        self._maintainer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._partitioned = False
        self._stopping = False
        self.connected = asyncio.Event()
        self.log = node_logger(node_name, "swarm")

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already bound and listening socket and start dialing."""
        self._stopping = False
        self._server = await asyncio.start_server(self._accept, sock=sock)
        self.port = sock.getsockname()[1]
        self._maintainer = asyncio.create_task(self._maintain())

    async def stop(self) -> None:
        """Close the listener and every connection; no waiting on peers."""
        self._stopping = True
        if self._maintainer is not None:
            await cancel_and_wait(self._maintainer)
        if self._server is not None:
            self._server.close()
        for conns in list(self._conns.values()):
            for conn in list(conns):
                conn.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(0.5):
                    await self._server.wait_closed()
            self._server = None

    @property
    def partitioned(self) -> bool:
        """True while this node is cut off: no swarm traffic in or out."""
        return self._partitioned

    @partitioned.setter
    def partitioned(self, value: bool) -> None:
        self._partitioned = bool(value)
        if self._partitioned:
            for conns in list(self._conns.values()):
                for conn in list(conns):
                    conn.close()
            self.log.info("swarm partitioned: all peer connections dropped")
        else:
            self.log.info("swarm partition healed: redialing peers")
            self._wake.set()

    # -- peers ---------------------------------------------------------------------

    @property
    def peer_count(self) -> int:
        """Number of distinct peers with a live, authenticated connection."""
        return len(self._conns)

    def peers(self) -> list[str]:
        """Peer ids currently connected."""
        return list(self._conns)

    def is_connected(self, peer_id: str) -> bool:
        return peer_id in self._conns

    def addresses(self) -> dict[str, str]:
        """Dialable addresses of known peers (for peer exchange)."""
        return {p: str(a) for p, a in self._addresses.items()}

    def learn(self, peer_id: str, addr_text: str) -> None:
        """Remember a peer address heard from someone else; dialed by the maintainer."""
        if peer_id == self.peer_id:
            return
        with contextlib.suppress(IdError):
            addr = parse_multiaddr(addr_text)
            if addr is not None and addr.peer_id == peer_id:
                if peer_id not in self._addresses:
                    self._addresses[peer_id] = addr
                    self._wake.set()

    async def request(
        self, peer_id: str, kind: str, body: dict[str, Any], *, timeout: float = 10.0
    ) -> dict[str, Any]:
        """Send a request to a connected peer and await its answer (PeerError if not)."""
        if self._partitioned:
            raise PeerError(f"cannot reach {peer_id}: this node is partitioned")
        # Every connection listed passed the whole handshake (for one we dialed,
        # the listener's proof too), and one leaves the list as it closes; the
        # check on ``closed`` only keeps that true should the two ever drift.
        # All are proven to be this peer's, so which one to use is a question
        # of liveness, not trust. Several exist when both sides dialed at once
        # or the peer dialed again; the newest is the one the peer set up last,
        # while an older one may be half-open (the peer restarted, or the
        # network dropped it, and no FIN came), so the newest wins.
        conn = next(
            (c for c in reversed(self._conns.get(peer_id, [])) if not c.closed), None
        )
        if conn is None:
            raise PeerError(f"peer {peer_id} is not connected")
        return await conn.request(kind, body, timeout)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run a background coroutine owned by the swarm (cancelled on stop)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _register(self, conn: _Connection) -> None:
        first = conn.peer_id not in self._conns
        # Listed and reading together: request() may pick any listed connection,
        # so none may be listed without its reader, even should the bookkeeping
        # below fail.
        self._conns.setdefault(conn.peer_id, []).append(conn)
        conn.start()
        if conn.addr is not None:
            self._addresses[conn.peer_id] = conn.addr
            if self.remember_peer is not None:
                self.remember_peer(conn.peer_id, str(conn.addr))
        self.connected.set()
        if first:
            self.log.info(
                "peer connected: %s (%d peers)", conn.peer_id, self.peer_count
            )
            if self.on_connect is not None:
                self.on_connect(conn.peer_id)
            self.spawn(self._exchange_peers(conn.peer_id))

    def _forget(self, conn: _Connection) -> None:
        conns = self._conns.get(conn.peer_id)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[conn.peer_id]
                self.log.info(
                    "peer disconnected: %s (%d peers)", conn.peer_id, self.peer_count
                )
                if not self._conns:
                    self.connected.clear()
                self._wake.set()

    async def _exchange_peers(self, peer_id: str) -> None:
        with contextlib.suppress(PeerError):
            reply = await self.request(peer_id, "peers", {}, timeout=5.0)
            for other, addr in dict(reply.get("addresses") or {}).items():
                self.learn(str(other), str(addr))

    # -- handshake -----------------------------------------------------------------

    def _hello(self, nonce: bytes) -> dict[str, Any]:
        return {
            "t": "hello",
            "proto": _PROTOCOL,
            "peer": self.peer_id,
            "nonce": nonce.hex(),
            "port": self.port,
        }

    def _proof(self, shake: _Handshake, role: str) -> dict[str, Any]:
        """Our ``auth`` frame: our signature of the handshake in ``role``."""
        if shake.signer(role) != self.peer_id:
            raise ValueError(f"this node is not the {role} of the handshake")
        return {"t": "auth", "sig": self.keypair.sign(shake.transcript(role)).hex()}

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._partitioned:
            writer.close()
            return
        try:
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                hello = await _read_frame(reader, _MAX_HANDSHAKE_FRAME)
                claimed, their_nonce = _read_hello(hello)
                if claimed == self.peer_id:
                    raise PeerError("the dialer claims this node's own peer id")
                shake = _Handshake(
                    dialer=claimed,
                    listener=self.peer_id,
                    dialer_nonce=their_nonce,
                    listener_nonce=os.urandom(_NONCE_BYTES),
                    dialer_port=_port_of(hello),
                )
                # Only our nonce: we sign nothing until the dialer has proved
                # its id, so an unproven dialer gets no signature of ours.
                writer.write(_encode_frame(self._hello(shake.listener_nonce)))
                await writer.drain()
                _check_proof(
                    shake, _DIALER, await _read_frame(reader, _MAX_HANDSHAKE_FRAME)
                )
        except (
            TimeoutError,
            PeerError,
            ValueError,
            OSError,
            asyncio.IncompleteReadError,
        ) as exc:
            self.log.debug("refused an incoming swarm connection: %s", exc)
            writer.close()
            return
        if self._partitioned or self._stopping:
            # a handshake that ends as the node stops registers nothing; the
            # dialer, never getting our proof, registers nothing either
            writer.close()
            return
        # Peers dial from ephemeral ports; their listen port comes in the hello.
        addr = None
        peername = writer.get_extra_info("peername")
        if peername and shake.dialer_port:
            addr = Multiaddr(
                host=str(peername[0]), port=shake.dialer_port, peer_id=claimed
            )
        # Our proof is our consent: the connection sends it as it starts, which
        # is when it is registered, so a connection refused even then (the
        # embedded backend's partition guard wraps _register) never tells the
        # dialer yes, and it goes out before any request on the connection.
        proof = self._proof(shake, _LISTENER)
        self._register(_Connection(self, claimed, reader, writer, addr, proof))

    async def _dial(self, addr: Multiaddr) -> None:
        key = (addr.host, addr.port)
        if key in self._dialing or self._partitioned:
            return
        self._dialing.add(key)
        writer = None
        done = False
        try:
            async with asyncio.timeout(_DIAL_TIMEOUT + _HANDSHAKE_TIMEOUT):
                reader, writer = await asyncio.open_connection(addr.host, addr.port)
                nonce = os.urandom(_NONCE_BYTES)
                writer.write(_encode_frame(self._hello(nonce)))
                claimed, their_nonce = _read_hello(
                    await _read_frame(reader, _MAX_HANDSHAKE_FRAME)
                )
                if addr.peer_id is not None and claimed != addr.peer_id:
                    msg = (
                        f"{addr} answered as {claimed}, not the expected {addr.peer_id}"
                    )
                    raise PeerError(msg)
                if claimed == self.peer_id:
                    raise PeerError(f"{addr} is this node itself")
                shake = _Handshake(
                    dialer=self.peer_id,
                    listener=claimed,
                    dialer_nonce=nonce,
                    listener_nonce=their_nonce,
                    dialer_port=self.port,
                )
                writer.write(_encode_frame(self._proof(shake, _DIALER)))
                await writer.drain()
                # The listener's proof is its consent as well: without it the
                # connection is not registered, so no request ever goes to a
                # connection the listener refused.
                _check_proof(
                    shake, _LISTENER, await _read_frame(reader, _MAX_HANDSHAKE_FRAME)
                )
            done = True
        except (
            TimeoutError,
            PeerError,
            ValueError,
            OSError,
            asyncio.IncompleteReadError,
        ) as exc:
            self.log.debug("dialing %s failed: %s", addr, exc)
            return
        finally:
            self._dialing.discard(key)
            # also when the dial is cancelled (the node stops) mid-handshake
            if not done and writer is not None:
                writer.close()
        if self._partitioned or self._stopping:
            writer.close()
            return
        self._register(
            _Connection(
                self, claimed, reader, writer, Multiaddr(addr.host, addr.port, claimed)
            )
        )

    def _dial_targets(self) -> list[Multiaddr]:
        targets: list[Multiaddr] = []
        seen: set[tuple[str, int]] = set()
        for addr in [*self._bootstrap, *self._addresses.values()]:
            if addr.peer_id == self.peer_id or (
                addr.peer_id and addr.peer_id in self._conns
            ):
                continue
            key = (addr.host, addr.port)
            if key in seen:
                continue
            # A bootstrap entry without /p2p/ is dialed until some peer answers there.
            if addr.peer_id is None and any(
                c.addr and (c.addr.host, c.addr.port) == key
                for conns in self._conns.values()
                for c in conns
            ):
                continue
            seen.add(key)
            targets.append(addr)
        return targets

    async def dial_missing(self) -> None:
        """Dial every known peer that is not connected (all at once)."""
        if self._partitioned:
            return
        targets = self._dial_targets()
        if targets:
            await asyncio.gather(*(self._dial(a) for a in targets))

    async def _maintain(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.dial_missing()
            except Exception:  # the maintainer must outlive any single bad dial
                self.log.exception("swarm maintenance failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.redial_interval):
                    await self._wake.wait()
