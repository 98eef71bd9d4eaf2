"""Edwards25519 point arithmetic, for the checks ``cryptography`` does not expose.

merod verifies signatures with ed25519-dalek, which refuses some keys and
signatures that ``cryptography`` (OpenSSL) accepts or cannot tell apart:
public keys that decode to no curve point, and (for ``verify_strict``)
small-order keys and ``R`` values. Those checks need the curve itself, which
is small enough to do here in pure Python: a decode is one modular square
root, and the signature equation itself is left to ``cryptography`` where it
is importable.

Points are kept in extended coordinates ``(X, Y, Z, T)``.
"""

from __future__ import annotations

__all__ = [
    "BASE",
    "L",
    "P",
    "Point",
    "add",
    "decode_point",
    "encode_point",
    "is_small_order",
    "mul",
    "negate",
]

P = 2**255 - 19
#: The order of the base point's subgroup.
L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, P - 2, P) % P
_SQRT_M1 = pow(2, (P - 1) // 4, P)
_BASE_Y = 4 * pow(5, P - 2, P) % P

Point = tuple[int, int, int, int]

_IDENTITY: Point = (0, 1, 1, 0)


def _sqrt_x(y: int) -> int | None:
    """An x with (x, y) on the curve, or None when there is none."""
    x2 = (y * y - 1) * pow(_D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * _SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    return x


def decode_point(encoded: bytes, *, strict: bool = True) -> Point | None:
    """The point 32 bytes encode, or None when they encode none.

    ``strict`` follows RFC 8032: a ``y`` of ``P`` or more, and a negative zero
    ``x``, are refused. Without it the bytes are read as curve25519-dalek's
    ``CompressedEdwardsY::decompress`` reads them: ``y`` is reduced modulo
    ``P`` and the sign of a zero ``x`` is ignored.
    """
    if len(encoded) != 32:
        return None
    y = int.from_bytes(encoded, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if strict and y >= P:
        return None
    y %= P
    x = _sqrt_x(y)
    if x is None:
        return None
    if x == 0 and sign and strict:
        return None
    if x & 1 != sign:
        x = (P - x) % P
    return (x, y, 1, x * y % P)


def encode_point(point: Point) -> bytes:
    x, y, z, _ = point
    zinv = pow(z, P - 2, P)
    x, y = x * zinv % P, y * zinv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def add(a: Point, b: Point) -> Point:
    # "add-2008-hwcd-3" for twisted Edwards curves with a = -1.
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = 2 * t1 * t2 * _D % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def negate(point: Point) -> Point:
    x, y, z, t = point
    return ((P - x) % P, y, z, (P - t) % P)


def mul(scalar: int, point: Point) -> Point:
    result = _IDENTITY
    while scalar:
        if scalar & 1:
            result = add(result, point)
        point = add(point, point)
        scalar >>= 1
    return result


def is_small_order(point: Point) -> bool:
    """Whether eight times the point is the identity (its order divides 8)."""
    for _ in range(3):
        point = add(point, point)
    x, y, z, _ = point
    return x % P == 0 and (y - z) % P == 0


def _base() -> Point:
    x = _sqrt_x(_BASE_Y) or 0
    if x & 1:  # the base point's x is the even root
        x = P - x
    return (x, _BASE_Y, 1, x * _BASE_Y % P)


BASE: Point = _base()
