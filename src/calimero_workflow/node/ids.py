"""Identifier encodings and keys used by the embedded node.

merod (0.11.0-rc.27 and later) shows every 32-byte id the same way: contexts,
applications, public keys, accounts, devices, blobs, hashes, namespaces and
groups are 64 lowercase hex digits, and base58 is refused where an id is read.
Base58 is left only where libp2p uses it. Peer ids are base58 of an identity
multihash over the protobuf-encoded ed25519 public key, which is why they all
start with ``12D3KooW``, and config.toml keeps the node's keypair in base58.
Keys are ed25519: via the ``cryptography`` package when it is installed, else a
small pure-Python RFC 8032 signer (slow, but nodes sign only handshakes and
invitations).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass

from .abi import ed25519_public_key_valid, ed25519_verify

__all__ = [
    "ZERO_HASH",
    "IdError",
    "Keypair",
    "Multiaddr",
    "b58decode",
    "b58encode",
    "canonical_hex32",
    "hex32",
    "looks_base58",
    "parse_hex32",
    "parse_multiaddr",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
    "sha256",
    "verify_signature",
    "x25519_public_key",
]

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}

#: How merod shows an all-zero hash: the state hash of an uninitialised context.
ZERO_HASH = "0" * 64

# libp2p protobuf framing: field 1 (KeyType) = 1 (Ed25519), field 2 = key bytes.
_PB_PUBLIC_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
_PB_KEYPAIR_PREFIX = bytes([0x08, 0x01, 0x12, 0x40])
# Identity multihash (code 0x00) of the 36-byte protobuf public key.
_PEER_ID_PREFIX = bytes([0x00, 0x24]) + _PB_PUBLIC_PREFIX


class IdError(ValueError):
    """A string is not a valid id of the expected kind."""


def b58encode(data: bytes) -> str:
    """Encode bytes as base58 (Bitcoin alphabet), keeping leading zero bytes as ``1``."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    num = int.from_bytes(data, "big")
    out = []
    while num:
        num, rem = divmod(num, 58)
        out.append(_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(out))


@functools.lru_cache(maxsize=4096)
def b58decode(text: str) -> bytes:
    """Decode a base58 string; raises :class:`IdError` naming the bad character.

    A node decodes the same few ids (contexts, identities) on every call, and
    the digit-by-digit loop is slow in Python, so answers are cached.
    """
    num = 0
    for pos, char in enumerate(text):
        digit = _INDEX.get(char)
        if digit is None:
            msg = f"{text!r} is not base58: bad character {char!r} at position {pos}"
            raise IdError(msg)
        num = num * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body


def hex32(data: bytes) -> str:
    """The 64 lowercase hex digits merod shows for a 32-byte id."""
    return data.hex()


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def looks_base58(text: str) -> bool:
    """Whether ``text`` is the base58 of 32 bytes (how merod showed ids before 0.11.0-rc.27)."""
    try:
        return len(b58decode(text)) == 32
    except IdError:
        return False


def parse_hex32(text: object, what: str = "id") -> bytes:
    """Parse a 32-byte id written as 64 hex digits, as merod reads every id.

    A base58 id (what merod showed before 0.11.0-rc.27) is refused with a hint:
    merod refuses it too, since hex digits are also base58 digits and a parser
    taking both could read one id as another.
    """
    if isinstance(text, str) and _HEX64.fullmatch(text):
        return bytes.fromhex(text)
    msg = f"invalid {what} {text!r}: expected 64 hex digits (32 bytes)"
    if isinstance(text, str) and looks_base58(text):
        msg += (
            "; it looks like a base58 id, which merod no longer reads "
            "(every id is hex since 0.11.0-rc.27)"
        )
    raise IdError(msg)


def canonical_hex32(text: object, what: str = "id") -> str:
    """``text`` checked by :func:`parse_hex32` and spelled in lowercase."""
    return parse_hex32(text, what).hex()


def sha256(*parts: bytes) -> bytes:
    """SHA-256 over the concatenation of ``parts``."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id (``12D3KooW…``) of an ed25519 public key."""
    return b58encode(_PEER_ID_PREFIX + public_key)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The ed25519 public key inside a libp2p peer id; :class:`IdError` if it has none."""
    raw = b58decode(peer_id)
    if len(raw) != len(_PEER_ID_PREFIX) + 32 or not raw.startswith(_PEER_ID_PREFIX):
        msg = (
            f"peer id {peer_id!r} is not an ed25519 identity peer id "
            "(expected the 12D3KooW... form)"
        )
        raise IdError(msg)
    return raw[len(_PEER_ID_PREFIX) :]


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is a valid ed25519 signature of ``message``."""
    if len(signature) != 64 or not ed25519_public_key_valid(public_key):
        return False
    return ed25519_verify(signature, public_key, message)


# -- signing -------------------------------------------------------------------
#
# RFC 8032 Ed25519 over edwards25519, in extended coordinates (X:Y:Z:T with
# x = X/Z, y = Y/Z, xy = T/Z). Used only when `cryptography` is missing.

_Q = 2**255 - 19
_ORDER = 2**252 + 27742317777372353535851937790883648493
_CURVE_D = (-121665 * pow(121666, -1, _Q)) % _Q


def x25519_public_key(ed25519_public: bytes) -> bytes:
    """The X25519 (Montgomery) form of an ed25519 public key, as libsodium converts it.

    u = (1 + y) / (1 - y) mod p, from the key's y coordinate (RFC 7748 §4.1).
    """
    if len(ed25519_public) != 32:
        raise IdError(f"an ed25519 public key is 32 bytes, got {len(ed25519_public)}")
    y = int.from_bytes(ed25519_public, "little") & ((1 << 255) - 1)
    if y == 1:
        raise IdError("the ed25519 identity point has no X25519 form")
    u = (1 + y) * pow((1 - y) % _Q, -1, _Q) % _Q
    return u.to_bytes(32, "little")


def _x_for(y: int) -> int:
    # Solve x^2 = (y^2 - 1) / (d y^2 + 1) and take the even root (sign bit 0).
    xx = (y * y - 1) * pow(_CURVE_D * y * y + 1, -1, _Q) % _Q
    x = pow(xx, (_Q + 3) // 8, _Q)
    if (x * x - xx) % _Q:
        x = x * pow(2, (_Q - 1) // 4, _Q) % _Q
    return _Q - x if x & 1 else x


_GY = 4 * pow(5, -1, _Q) % _Q
_GENERATOR = (_x_for(_GY), _GY, 1, _x_for(_GY) * _GY % _Q)


def _point_add(
    p1: tuple[int, int, int, int], p2: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % _Q
    b = (y1 + x1) * (y2 + x2) % _Q
    c = 2 * _CURVE_D * t1 * t2 % _Q
    d = 2 * z1 * z2 % _Q
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _Q, g * h % _Q, f * g % _Q, e * h % _Q)


def _base_times(k: int) -> bytes:
    acc, addend = (0, 1, 1, 0), _GENERATOR
    while k:
        if k & 1:
            acc = _point_add(acc, addend)
        addend = _point_add(addend, addend)
        k >>= 1
    x, y, z, _ = acc
    inv = pow(z, -1, _Q)
    x, y = x * inv % _Q, y * inv % _Q
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _expand(secret: bytes) -> tuple[int, bytes]:
    digest = hashlib.sha512(secret).digest()
    scalar = int.from_bytes(digest[:32], "little")
    scalar = (scalar & ((1 << 254) - 8)) | (1 << 254)
    return scalar, digest[32:]


def _pure_public(secret: bytes) -> bytes:
    return _base_times(_expand(secret)[0])


def _pure_sign(secret: bytes, public: bytes, message: bytes) -> bytes:
    scalar, prefix = _expand(secret)
    r = int.from_bytes(hashlib.sha512(prefix + message).digest(), "little") % _ORDER
    big_r = _base_times(r)
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little")
    s = (r + (k % _ORDER) * scalar) % _ORDER
    return big_r + s.to_bytes(32, "little")


try:
    # Only the ed25519 module: the serialization package would load every
    # key format (SSH, PKCS#12…) for the one raw encoding used here.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
except ImportError:  # pragma: no cover - depends on the environment
    Ed25519PrivateKey = None  # type: ignore[assignment,misc]


def _public_of(secret: bytes) -> bytes:
    if Ed25519PrivateKey is None:
        return _pure_public(secret)
    key = Ed25519PrivateKey.from_private_bytes(secret)
    return key.public_key().public_bytes_raw()


def _sign(secret: bytes, public: bytes, message: bytes) -> bytes:
    if Ed25519PrivateKey is None:
        return _pure_sign(secret, public, message)
    return Ed25519PrivateKey.from_private_bytes(secret).sign(message)


@dataclass(frozen=True)
class Keypair:
    """An ed25519 keypair: 32-byte secret seed and 32-byte public key."""

    secret: bytes
    public: bytes

    @classmethod
    def generate(cls) -> Keypair:
        """A fresh random keypair."""
        return cls.from_secret(os.urandom(32))

    @classmethod
    def from_secret(cls, secret: bytes) -> Keypair:
        """The keypair of a 32-byte secret seed."""
        if len(secret) != 32:
            raise IdError(f"an ed25519 secret is 32 bytes, got {len(secret)}")
        return cls(secret=secret, public=_public_of(secret))

    @classmethod
    def from_libp2p(cls, text: str) -> Keypair:
        """Parse the base58 protobuf keypair merod writes to ``[identity] keypair``."""
        raw = b58decode(text)
        if len(raw) != 68 or not raw.startswith(_PB_KEYPAIR_PREFIX):
            msg = (
                f"identity keypair {text[:12]!r}... is not a base58 libp2p ed25519 "
                "keypair (expected 68 bytes starting 08 01 12 40)"
            )
            raise IdError(msg)
        pair = cls.from_secret(raw[4:36])
        if pair.public != raw[36:]:
            raise IdError("identity keypair is corrupt: its public half does not match")
        return pair

    def to_libp2p(self) -> str:
        """The base58 protobuf form merod stores in config.toml."""
        return b58encode(_PB_KEYPAIR_PREFIX + self.secret + self.public)

    @property
    def peer_id(self) -> str:
        """This key's libp2p peer id."""
        return peer_id_from_public_key(self.public)

    @property
    def public_hex(self) -> str:
        """The public key as merod shows it (64 hex digits)."""
        return self.public.hex()

    def sign(self, message: bytes) -> bytes:
        """A 64-byte ed25519 signature over ``message``."""
        return _sign(self.secret, self.public, message)

    def __repr__(self) -> str:  # never print the secret
        return f"Keypair(public={self.public_hex})"


@dataclass(frozen=True)
class Multiaddr:
    """A dialable TCP address parsed from a multiaddr."""

    host: str
    port: int
    peer_id: str | None = None

    def __str__(self) -> str:
        if ":" in self.host:
            proto = "ip6"
        else:
            proto = "ip4" if re.fullmatch(r"[\d.]+", self.host) else "dns4"
        tail = f"/p2p/{self.peer_id}" if self.peer_id else ""
        return f"/{proto}/{self.host}/tcp/{self.port}{tail}"


def parse_multiaddr(text: str) -> Multiaddr | None:
    """Parse ``/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>[/p2p/<peer id>]``.

    Returns None for well-formed addresses on transports we do not speak (QUIC,
    UDP), so a config copied from real merod still loads; raises :class:`IdError`
    for anything malformed.
    """
    parts = text.strip().split("/")
    if len(parts) < 5 or parts[0] != "":
        msg = f"multiaddr {text!r} is malformed; expected /ip4/<ip>/tcp/<port>/p2p/<peer id>"
        raise IdError(msg)
    proto, host, transport, port_text = parts[1:5]
    if proto not in {"ip4", "ip6", "dns", "dns4", "dns6"}:
        raise IdError(f"multiaddr {text!r}: unsupported address protocol {proto!r}")
    if transport == "udp":
        return None
    if transport != "tcp" or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise IdError(f"multiaddr {text!r}: expected /tcp/<port> after the host")
    rest = parts[5:]
    peer_id = None
    if rest:
        if len(rest) != 2 or rest[0] != "p2p":
            raise IdError(
                f"multiaddr {text!r}: only /p2p/<peer id> may follow the port"
            )
        peer_id = rest[1]
        public_key_from_peer_id(peer_id)
    return Multiaddr(host=host, port=int(port_text), peer_id=peer_id)
