"""The curve arithmetic behind the ed25519 checks of the node and the bundles."""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from calimero_workflow import ed25519 as E


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_the_base_point_has_the_subgroup_order():
    assert E.encode_point(E.BASE) == (4 * pow(5, E.P - 2, E.P) % E.P).to_bytes(32, "little")
    x, y, z, _ = E.mul(E.L, E.BASE)
    assert x % E.P == 0 and (y - z) % E.P == 0
    assert not E.is_small_order(E.BASE)


def test_real_public_keys_decode_and_encode_back():
    for _ in range(20):
        public = _public(Ed25519PrivateKey.generate())
        point = E.decode_point(public)
        assert point is not None and E.encode_point(point) == public
        assert E.decode_point(public, strict=False) == point


def test_a_public_key_is_the_secret_scalar_times_the_base():
    seed = os.urandom(32)
    key = Ed25519PrivateKey.from_private_bytes(seed)
    h = bytearray(hashlib.sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    assert E.encode_point(E.mul(int.from_bytes(h, "little"), E.BASE)) == _public(key)


def test_strict_decoding_refuses_what_dalek_reads_leniently():
    # y = P + 1 is y = 1 read modulo P: the identity, a small-order point.
    over = (E.P + 1).to_bytes(32, "little")
    assert E.decode_point(over) is None
    lenient = E.decode_point(over, strict=False)
    assert lenient is not None and E.is_small_order(lenient)
    # x = 0 with the sign bit set: "negative zero".
    negative_zero = (1 | (1 << 255)).to_bytes(32, "little")
    assert E.decode_point(negative_zero) is None
    assert E.decode_point(negative_zero, strict=False) == (0, 1, 1, 0)


def test_bytes_that_encode_no_point_decode_to_none():
    # y = 2: (y² - 1) / (d·y² + 1) has no square root modulo P.
    assert E.decode_point((2).to_bytes(32, "little")) is None
    assert E.decode_point((2).to_bytes(32, "little"), strict=False) is None
    assert E.decode_point(b"\x01" * 31) is None
