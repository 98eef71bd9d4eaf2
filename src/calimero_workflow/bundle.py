"""Signed application bundles (``.mpk``), built and verified the way merod does.

Since core 0.11.0-rc.31 (core#3652, "registry-only distribution") merod installs
only signed bundles (Mero PacKage, CIP-0001): a gzip-compressed tar holding
``manifest.json`` and the artifacts it names (``app.wasm``, ``abi.json``, or
``services/<name>.wasm`` for multi-service apps). The manifest is signed with
Ed25519 over a SHA-256 of its RFC 8785 (JCS) canonical form, every wasm artifact
is checked against the SHA-256 the manifest records, and the application id is
``SHA-256(borsh((package, signerId)))``: every version of one package signed by
one key shares an id.

This module serves both sides:

* the node side, :func:`verify_bundle` / :func:`open_bundle` /
  :func:`load_bundle_file`, runs merod's checks in merod's order and fails with
  merod's error texts (``crates/node/primitives/src/client/application/
  {install,bundle}.rs``, ``crates/bundle/src/{lib,signature}.rs``), under the same
  decompression caps, reading the archive with a small bounded tar reader of our
  own that never touches the filesystem;
* the client side, :func:`build_bundle` / :func:`build_dev_bundle_file` /
  :func:`dev_bundle_for`, packs a raw ``.wasm`` into a bundle signed with the
  well-known development key ``cargo mero bundle --dev`` uses, which a local merod
  accepts (the registry does not).

The signing payload changed once (core#4307): current merod signs and verifies
``SHA-256(b"calimero.bundle.manifest.v1\\0" || canonical)`` (:data:`SCHEME_V1`);
releases before it used ``SHA-256(canonical)`` (:data:`SCHEME_UNTAGGED`) and each
refuses the other's signatures. Both are supported; V1 is the default.

Where this module cannot reproduce a text exactly (serde_json's parse errors
carry line/column positions, the tar and flate2 crates' I/O errors), it keeps
merod's prefix and says the same thing in its own words.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .confined import open_regular, read_file, replace_file
from .ed25519 import L, decode_point, is_small_order
from .node.abi import LIMITS
from .node.ids import b58encode

__all__ = [
    "DEV_PUBLIC_KEY",
    "DEV_SEED",
    "DEV_SIGNER_ID",
    "EMBEDDED_RUNTIME_VERSION",
    "MANIFEST_SIGNING_DOMAIN",
    "MANIFEST_VERSION",
    "MAX_ARCHIVE_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_MANIFEST_SCAN_BYTES",
    "MAX_MODULE_BYTES",
    "NOT_A_BUNDLE",
    "SemVer",
    "SCHEME_UNTAGGED",
    "SCHEME_V1",
    "WASM_MAGIC",
    "BuiltBundle",
    "BundleError",
    "VerifiedBundle",
    "WasmArtifact",
    "application_id_for_bundle",
    "build_bundle",
    "build_dev_bundle_file",
    "bundle_hash",
    "canonical_manifest",
    "canonicalize",
    "coordinates_problem",
    "default_coordinates",
    "dev_bundle_for",
    "dev_signing_key",
    "is_bundle",
    "is_bundle_file",
    "is_wasm_file",
    "load_bundle_file",
    "open_bundle",
    "parse_semver",
    "sign_manifest",
    "signer_id_for_public_key",
    "signing_payload",
    "size_problem",
    "verify_bundle",
    "verify_manifest_signature",
]

# -- constants (merod's, with their sources) ------------------------------------

#: install.rs: a payload that is no bundle at all, as opposed to one that fails
#: to verify. merod answers ``f"{NOT_A_BUNDLE}: {path}"``.
NOT_A_BUNDLE = "not a signed application bundle"

#: bundle.rs: how far any full archive walk may decompress (it bounds a bundle's
#: whole decompressed size), and the cap on a bundle file's size on disk.
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024

#: bundle.rs: how far the manifest scan (before any signature check) and the
#: is-this-a-bundle probe may decompress.
MAX_MANIFEST_SCAN_BYTES = 8 * 1024 * 1024

#: crates/bundle: the node refuses a ``manifest.json`` above this size.
MAX_MANIFEST_BYTES = 1024 * 1024

#: cargo-mero manifest.rs: the manifest schema version it writes.
MANIFEST_VERSION = "1.0"

#: The first bytes of a wasm module: any other file is a bundle, or nothing.
WASM_MAGIC = b"\0asm"

#: merod's ``max_module_size`` (VMLimits): the largest wasm module it installs.
MAX_MODULE_BYTES = LIMITS.max_module_size

#: crates/bundle signature.rs (core#4307): prefixed to the canonical manifest
#: before it is hashed for signing.
MANIFEST_SIGNING_DOMAIN = b"calimero.bundle.manifest.v1\x00"

#: Signing payload ``SHA-256(MANIFEST_SIGNING_DOMAIN || canonical)`` (core#4307 on).
SCHEME_V1 = "calimero.bundle.manifest.v1"
#: Signing payload ``SHA-256(canonical)``: merod from rc.31 until core#4307.
SCHEME_UNTAGGED = "untagged"
_SCHEMES = (SCHEME_V1, SCHEME_UNTAGGED)

#: The development key's seed: ``SHA-256("calimero-dev-signing-key-v1")``
#: (mero-sign ``DEV_SEED``, crates/bundle ``dev_signing_key``). It is public.
DEV_SEED = hashlib.sha256(b"calimero-dev-signing-key-v1").digest()

#: The runtime version the embedded node compares ``minRuntimeVersion`` against
#: when the caller names none (merod uses its own release version).
EMBEDDED_RUNTIME_VERSION = "0.11.0"

_ED25519_PUB_MULTICODEC = b"\xed\x01"
_JSON_MAX_DEPTH = 127  # serde_json refuses the 128th nested array/object


class BundleError(ValueError):
    """A bundle merod would refuse; ``str(error)`` is merod's message."""


class _Corrupt(Exception):
    """The archive itself is unreadable (gzip or tar framing)."""


# -- small encodings --------------------------------------------------------------


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64url_decode(text: str) -> bytes | None:
    """base64url without padding, refusing what Rust's ``URL_SAFE_NO_PAD`` refuses:
    padding, other alphabets, an impossible length and non-zero trailing bits."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64url_encode(data) != text:
        return None
    return data


def signer_id_for_public_key(public_key: bytes) -> str:
    """``did:key:z`` + base58btc(0xed01 || key): the signerId of an Ed25519 key."""
    if len(public_key) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
    return "did:key:z" + b58encode(_ED25519_PUB_MULTICODEC + public_key)


def _raw_public_key(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def dev_signing_key() -> Ed25519PrivateKey:
    """The well-known development key ``cargo mero bundle --dev`` signs with."""
    return Ed25519PrivateKey.from_private_bytes(DEV_SEED)


#: base64url of the development public key.
DEV_PUBLIC_KEY = _b64url_encode(_raw_public_key(dev_signing_key()))
#: The signerId of every dev-signed bundle (pinned in core's own tests).
DEV_SIGNER_ID = signer_id_for_public_key(_raw_public_key(dev_signing_key()))


def application_id_for_bundle(package: str, signer_id: str) -> bytes:
    """``ApplicationId::for_bundle``: SHA-256 of ``borsh((package, signer_id))``.

    Borsh writes a ``&str`` as a little-endian u32 byte length and the UTF-8
    bytes, and a tuple as its fields in order. Current merod shows the 32 bytes
    as 64 lowercase hex digits (``.hex()``).
    """
    out = bytearray()
    for text in (package, signer_id):
        raw = text.encode("utf-8")
        out += struct.pack("<I", len(raw)) + raw
    return hashlib.sha256(bytes(out)).digest()


# -- JSON as serde_json reads it ---------------------------------------------------


class _JsonError(ValueError):
    pass


_I64_MIN = -(2**63)
_U64_MAX = 2**64 - 1


def _json_int(text: str) -> int | float:
    value = int(text)
    if _I64_MIN <= value <= _U64_MAX:
        return value
    # serde_json reads an integer outside i64/u64 as an f64.
    return _json_float(text)


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _JsonError("number out of range")
    return value


def _json_constant(name: str) -> Any:
    raise _JsonError(f"{name} is not a JSON value")


def _check_parsed(value: Any, depth: int = 0) -> None:
    if isinstance(value, str):
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            raise _JsonError("lone surrogate in hex escape")
    elif isinstance(value, (list, dict)):
        depth += 1
        if depth > _JSON_MAX_DEPTH:
            raise _JsonError("recursion limit exceeded")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                _check_parsed(key, depth)
            _check_parsed(item, depth)


def _parse_json(data: bytes) -> Any:
    """Parse like ``serde_json::from_slice::<Value>``: strict UTF-8, no BOM, no
    NaN/Infinity, no lone surrogates, at most 127 levels, later duplicate keys win
    (keeping the first one's position, as serde_json's ``preserve_order`` map)."""
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text,
            parse_int=_json_int,
            parse_float=_json_float,
            parse_constant=_json_constant,
        )
    except UnicodeDecodeError as exc:
        raise _JsonError(f"invalid UTF-8 at byte {exc.start}") from None
    except RecursionError:
        raise _JsonError("recursion limit exceeded") from None
    except ValueError as exc:  # JSONDecodeError and ours
        raise _JsonError(str(exc)) from None
    _check_parsed(value)
    return value


# -- RFC 8785 canonical JSON (serde_json_canonicalizer) ----------------------------


def _js_number(value: float) -> str:
    """ECMAScript ``Number.prototype.toString`` of a finite double (RFC 8785 §3.2.2.3)."""
    if not math.isfinite(value):
        raise ValueError("NaN and +/-Infinity are not permitted in JSON")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr() is the shortest string that round-trips, the same digits ryu finds.
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    point = len(int_part) + (int(exp_text) if exp_text else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k, n = len(digits), point
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        exp = n - 1
        exp_str = ("+" if exp >= 0 else "-") + str(abs(exp))
        text = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + exp_str
    return sign + text


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _jcs_string(text: str) -> str:
    out = ['"']
    for ch in text:
        esc = _SHORT_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        elif "\ud800" <= ch <= "\udfff":
            raise ValueError("a lone surrogate has no UTF-8 form")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _jcs(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        # JCS numbers are doubles: integers too (serde_json_canonicalizer
        # writes every integer through f64, so 2**64-1 becomes 18446744073709552000).
        try:
            out.append(_js_number(float(value)))
        except OverflowError:
            raise ValueError(f"integer {value} is out of the range of a double") from None
    elif isinstance(value, float):
        out.append(_js_number(value))
    elif isinstance(value, str):
        out.append(_jcs_string(value))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _jcs(item, out)
        out.append("]")
    elif isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"object keys must be strings, got {key!r}")
        out.append("{")
        # Keys in UTF-16 code unit order: big-endian UTF-16 bytes sort the same.
        keys = sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))
        for i, key in enumerate(keys):
            if i:
                out.append(",")
            out.append(_jcs_string(key))
            out.append(":")
            _jcs(value[key], out)
        out.append("}")
    else:
        raise ValueError(f"{type(value).__name__} is not a JSON value")


def canonicalize(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of a JSON value, as ``serde_json_canonicalizer`` writes them."""
    out: list[str] = []
    _jcs(value, out)
    return "".join(out).encode("utf-8")


def canonical_manifest(manifest: Mapping[str, Any]) -> bytes:
    """The signed bytes: the manifest without ``signature`` and without any
    top-level key starting with ``_`` (transient fields), canonicalized."""
    view = {k: v for k, v in manifest.items() if k != "signature" and not k.startswith("_")}
    return canonicalize(view)


def bundle_hash(manifest: Mapping[str, Any]) -> bytes:
    """``bundleHash``: SHA-256 of the canonical manifest (never domain-tagged)."""
    return hashlib.sha256(canonical_manifest(manifest)).digest()


def signing_payload(canonical: bytes, scheme: str = SCHEME_V1) -> bytes:
    """The 32 bytes Ed25519 signs for canonical manifest bytes under ``scheme``."""
    if scheme == SCHEME_V1:
        return hashlib.sha256(MANIFEST_SIGNING_DOMAIN + canonical).digest()
    if scheme == SCHEME_UNTAGGED:
        return hashlib.sha256(canonical).digest()
    raise ValueError(f"unknown signing scheme {scheme!r}; expected one of {_SCHEMES}")


# -- Ed25519 as ed25519-dalek's verify_strict --------------------------------------


def _verify_strict(signature: bytes, public_key: bytes, message: bytes) -> bool:
    """ed25519-dalek ``verify_strict``: the cofactorless equation, refusing
    small-order keys and R, non-canonical s, and an R that is no point."""
    point_a = decode_point(public_key, strict=False)
    point_r = decode_point(signature[:32], strict=False)
    if point_a is None or point_r is None:
        return False
    if int.from_bytes(signature[32:], "little") >= L:
        return False
    if is_small_order(point_a) or is_small_order(point_r):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class _Verification:
    signer_id: str
    bundle_hash: bytes
    scheme: str


def verify_manifest_signature(
    manifest: Any, *, schemes: Sequence[str] = (SCHEME_V1,)
) -> _Verification:
    """merod's ``verify_manifest_signature`` on a parsed manifest, check by check.

    ``schemes`` lists the signing payloads accepted (current merod: V1 only).
    """
    obj = manifest if isinstance(manifest, Mapping) else {}
    if "signature" not in obj:
        raise BundleError("manifest is missing required 'signature' field")
    sig_obj = obj["signature"]
    sig_map = sig_obj if isinstance(sig_obj, Mapping) else {}

    def text_field(name: str) -> str:
        value = sig_map.get(name)
        if not isinstance(value, str):
            raise BundleError(f"signature missing '{name}' field")
        return value

    algorithm = text_field("algorithm")
    if algorithm != "ed25519":
        raise BundleError(f"unsupported signature algorithm: '{algorithm}', expected 'ed25519'")
    public_b64 = text_field("publicKey")
    signature_b64 = text_field("signature")
    public_key = _b64url_decode(public_b64)
    if public_key is None:
        raise BundleError("invalid base64url encoding for public key")
    if len(public_key) != 32:
        raise BundleError(f"invalid public key length: expected 32 bytes, got {len(public_key)}")
    signature = _b64url_decode(signature_b64)
    if signature is None:
        raise BundleError("invalid base64url encoding for signature")
    if len(signature) != 64:
        raise BundleError(f"invalid signature length: expected 64 bytes, got {len(signature)}")
    try:
        canonical = canonical_manifest(obj)
    except ValueError:
        raise BundleError("failed to canonicalize manifest JSON") from None
    if decode_point(public_key, strict=False) is None:
        raise BundleError("invalid Ed25519 public key")
    used = None
    for scheme in schemes:
        if _verify_strict(signature, public_key, signing_payload(canonical, scheme)):
            used = scheme
            break
    if used is None:
        raise BundleError("Ed25519 signature verification failed")
    derived = signer_id_for_public_key(public_key)
    declared = obj.get("signerId")
    if not isinstance(declared, str):
        raise BundleError("bundle manifest is missing required signerId field")
    if declared != derived:
        raise BundleError(
            f"signerId mismatch: manifest declares '{declared}' but signature public key derives to '{derived}'"
        )
    return _Verification(derived, hashlib.sha256(canonical).digest(), used)


# -- the manifest's serde type ------------------------------------------------------


def _rust_char(ch: str) -> str:
    escapes = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0", "'": "\\'", "\\": "\\\\"}
    if ch in escapes:
        return f"'{escapes[ch]}'"
    if not ch.isprintable():
        return f"'\\u{{{ord(ch):x}}}'"
    return f"'{ch}'"


def _rust_str(text: str) -> str:
    out = []
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch in "\n\r\t\0\\":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0", "\\": "\\\\"}[ch])
        elif not ch.isprintable():
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _unexpected(value: Any) -> str:
    """serde's ``Unexpected`` rendering of a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        text = format(Decimal(repr(value)), "f")
        if "." not in text:
            text += ".0"
        return f"floating point `{text}`"
    if isinstance(value, str):
        return f"string {_rust_str(value)}"
    if isinstance(value, list):
        return "sequence"
    return "map"


class _SerdeError(Exception):
    pass


def _mismatch(value: Any, expected: str) -> _SerdeError:
    return _SerdeError(f"invalid type: {_unexpected(value)}, expected {expected}")


_Check = Callable[[Any], Any]


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _mismatch(value, "a string")
    return value


def _u64(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _mismatch(value, "u64")
    if value < 0:
        raise _SerdeError(f"invalid value: integer `{value}`, expected u64")
    return value


def _option(inner: _Check) -> _Check:
    return lambda value: None if value is None else inner(value)


def _seq(inner: _Check) -> _Check:
    def check(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise _mismatch(value, "a sequence")
        return [inner(item) for item in value]

    return check


@dataclass(frozen=True)
class _Field:
    key: str
    check: _Check
    #: What a missing key becomes in a map (``_REQUIRED`` = "missing field").
    absent: Any
    #: Whether the field has ``#[serde(default)]`` (matters for positional input).
    has_default: bool = False


_REQUIRED = object()


def _struct(name: str, fields: Sequence[_Field]) -> _Check:
    """A serde-derived struct: from a map (unknown keys ignored, type errors in
    key order, then the first missing field in declaration order), or from a
    sequence, positionally, as serde's derive also accepts."""
    by_key = {f.key: f for f in fields}
    expecting = f"struct {name}"

    def check(value: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if isinstance(value, dict):
            for key, item in value.items():
                spec = by_key.get(key)
                if spec is not None:
                    out[key] = spec.check(item)
            for spec in fields:
                if spec.key not in out:
                    if spec.absent is _REQUIRED:
                        raise _SerdeError(f"missing field `{spec.key}`")
                    out[spec.key] = spec.absent
            return out
        if isinstance(value, list):
            for i, spec in enumerate(fields):
                if i < len(value):
                    out[spec.key] = spec.check(value[i])
                elif spec.has_default:
                    out[spec.key] = spec.absent
                else:
                    raise _SerdeError(
                        f"invalid length {i}, expected {expecting} with {len(fields)} elements"
                    )
            if len(value) > len(fields):
                raise _SerdeError(
                    f"invalid length {len(value)}, expected fewer elements in array"
                )
            return out
        raise _mismatch(value, expecting)

    return check


def _opt_str(key: str, *, default: bool = False) -> _Field:
    return _Field(key, _option(_string), None, default)


_ARTIFACT = _struct(
    "BundleArtifact",
    [_Field("path", _string, _REQUIRED), _Field("hash", _string, _REQUIRED), _Field("size", _u64, _REQUIRED)],
)
_METADATA = _struct(
    "BundleMetadata",
    [
        _Field("name", _string, _REQUIRED),
        _opt_str("description"),
        _opt_str("author"),
        _opt_str("icon"),
        _Field("tags", _seq(_string), [], True),
        _opt_str("license"),
        _opt_str("category"),
        _opt_str("guide"),
    ],
)
_HANDLERS = _struct("BundleHandlers", [_opt_str("slug", default=True)])
_BUILD_INFO = _struct(
    "BundleBuildInfo",
    [_opt_str("sdkSource", default=True), _opt_str("sdkVersion", default=True), _opt_str("sdkRev", default=True)],
)
_INTERFACES = _struct(
    "BundleInterfaces",
    [_Field("exports", _seq(_string), [], True), _Field("uses", _seq(_string), [], True)],
)
_SERVICE = _struct(
    "BundleService",
    [
        _Field("name", _string, _REQUIRED),
        _Field("wasm", _ARTIFACT, _REQUIRED),
        _Field("abi", _option(_ARTIFACT), None, True),
    ],
)
_LINKS = _struct("BundleLinks", [_opt_str("frontend"), _opt_str("github"), _opt_str("docs")])
_SIGNATURE = _struct(
    "BundleSignature",
    [
        _Field("algorithm", _string, _REQUIRED),
        _Field("publicKey", _string, _REQUIRED),
        _Field("signature", _string, _REQUIRED),
        _opt_str("signedAt"),
    ],
)
_MANIFEST = _struct(
    "BundleManifest",
    [
        _Field("version", _string, _REQUIRED),
        _Field("package", _string, _REQUIRED),
        _Field("appVersion", _string, _REQUIRED),
        _opt_str("signerId"),
        _Field("minRuntimeVersion", _string, _REQUIRED),
        _Field("metadata", _option(_METADATA), None, True),
        _Field("handlers", _option(_HANDLERS), None, True),
        _Field("buildInfo", _option(_BUILD_INFO), None, True),
        _Field("interfaces", _option(_INTERFACES), None, True),
        _Field("wasm", _option(_ARTIFACT), None),
        _Field("abi", _option(_ARTIFACT), None),
        _Field("services", _option(_seq(_SERVICE)), None, True),
        _Field("links", _option(_LINKS), None, True),
        _Field("signature", _option(_SIGNATURE), None, True),
    ],
)


def _artifacts(typed: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``BundleManifest::artifacts()``: every artifact with its manifest field."""
    out: list[tuple[str, Mapping[str, Any]]] = []
    if typed["wasm"] is not None:
        out.append(("wasm", typed["wasm"]))
    if typed["abi"] is not None:
        out.append(("abi", typed["abi"]))
    for i, service in enumerate(typed["services"] or ()):
        out.append((f"services[{i}].wasm", service["wasm"]))
        if service["abi"] is not None:
            out.append((f"services[{i}].abi", service["abi"]))
    return out


def _wasm_artifacts(typed: Mapping[str, Any]) -> list[tuple[str | None, Mapping[str, Any]]]:
    """``BundleManifest::wasm_artifacts()``: services when non-empty, else ``wasm``."""
    services = typed["services"]
    if services:
        return [(s["name"], s["wasm"]) for s in services]
    if typed["wasm"] is not None:
        return [(None, typed["wasm"])]
    return []


def _validate_path_component(value: str, field: str) -> None:
    if ".." in value:
        raise BundleError(f"{field} contains path traversal sequence '..'")
    if "/" in value or "\\" in value:
        raise BundleError(f"{field} contains directory separator")
    if "\0" in value:
        raise BundleError(f"{field} contains null byte")
    raw = value.encode("utf-8")
    if len(raw) >= 2 and raw[1:2] == b":":
        raise BundleError(f"{field} appears to be an absolute path")


def _validate_artifact_path(value: str, field: str) -> None:
    if not value:
        raise BundleError(f"{field} is empty")
    if "\0" in value:
        raise BundleError(f"{field} contains null byte")
    if "\\" in value:
        raise BundleError(f"{field} contains backslash (use forward slashes)")
    if value.startswith("/"):
        raise BundleError(f"{field} is an absolute path")
    if value.encode("utf-8")[1:2] == b":":
        raise BundleError(f"{field} appears to be an absolute Windows path")
    if ".." in value.split("/"):
        raise BundleError(f"{field} contains path traversal component '..'")


# -- semver, as the Rust `semver` crate parses and orders it --------------------------


class _SemverError(ValueError):
    pass


@dataclass(frozen=True)
class SemVer:
    """A version as the ``semver`` crate holds it (``Version``)."""

    major: int
    minor: int
    patch: int
    pre: str = ""
    build: str = ""

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            text += f"-{self.pre}"
        if self.build:
            text += f"+{self.build}"
        return text

    def _key(self) -> tuple[Any, ...]:
        pre_key = (1,) if not self.pre else (0, *(_ident_key(p) for p in self.pre.split(".")))
        build_key = tuple(_ident_key(p, build=True) for p in self.build.split(".")) if self.build else ()
        return (self.major, self.minor, self.patch, pre_key, build_key)

    def __lt__(self, other: SemVer) -> bool:
        return self._key() < other._key()

    def __gt__(self, other: SemVer) -> bool:
        return other._key() < self._key()


def _ident_key(part: str, *, build: bool = False) -> tuple[Any, ...]:
    # Numeric identifiers sort before alphanumeric ones and among themselves by
    # value (build metadata: then by length, "0" < "00"); others by ASCII order.
    if part.isascii() and part.isdigit():
        return (0, len(part.lstrip("0")), part.lstrip("0"), len(part) if build else 0)
    return (1, part)


_POSITIONS = {
    "major": "major version number",
    "minor": "minor version number",
    "patch": "patch version number",
    "pre": "pre-release identifier",
    "build": "build metadata",
}


def _numeric(text: str, pos: str) -> tuple[int, str]:
    length = 0
    value = 0
    while length < len(text) and "0" <= text[length] <= "9":
        if value == 0 and length > 0:
            raise _SemverError(f"invalid leading zero in {_POSITIONS[pos]}")
        value = value * 10 + ord(text[length]) - 48
        if value > _U64_MAX:
            raise _SemverError(f"value of {_POSITIONS[pos]} exceeds u64::MAX")
        length += 1
    if length:
        return value, text[length:]
    if text:
        raise _SemverError(f"unexpected character {_rust_char(text[0])} while parsing {_POSITIONS[pos]}")
    raise _SemverError(f"unexpected end of input while parsing {_POSITIONS[pos]}")


def _dot(text: str, pos: str) -> str:
    if text.startswith("."):
        return text[1:]
    if text:
        raise _SemverError(f"unexpected character {_rust_char(text[0])} after {_POSITIONS[pos]}")
    raise _SemverError(f"unexpected end of input while parsing {_POSITIONS[pos]}")


def _identifier(text: str, pos: str) -> tuple[str, str]:
    acc = seg = 0
    nondigit = False
    while True:
        ch = text[acc + seg] if acc + seg < len(text) else None
        if ch is not None and ch.isascii() and (ch.isalpha() or ch == "-"):
            seg += 1
            nondigit = True
        elif ch is not None and "0" <= ch <= "9":
            seg += 1
        else:
            if seg == 0:
                if acc == 0 and ch != ".":
                    return "", text
                raise _SemverError(f"empty identifier segment in {_POSITIONS[pos]}")
            if pos == "pre" and seg > 1 and not nondigit and text[acc] == "0":
                raise _SemverError(f"invalid leading zero in {_POSITIONS[pos]}")
            acc += seg
            if ch == ".":
                acc += 1
                seg = 0
                nondigit = False
            else:
                return text[:acc], text[acc:]


def parse_semver(text: str) -> SemVer:
    """``semver::Version::parse``; raises ``ValueError`` with the crate's message."""
    if not text:
        raise _SemverError("empty string, expected a semver version")
    major, rest = _numeric(text, "major")
    rest = _dot(rest, "major")
    minor, rest = _numeric(rest, "minor")
    rest = _dot(rest, "minor")
    patch, rest = _numeric(rest, "patch")
    pos = "patch"
    pre = build = ""
    if rest.startswith("-"):
        pos = "pre"
        pre, rest = _identifier(rest[1:], pos)
        if not pre:
            raise _SemverError(f"empty identifier segment in {_POSITIONS[pos]}")
    if rest.startswith("+"):
        pos = "build"
        build, rest = _identifier(rest[1:], pos)
        if not build:
            raise _SemverError(f"empty identifier segment in {_POSITIONS[pos]}")
    if rest:
        raise _SemverError(f"unexpected character {_rust_char(rest[0])} after {_POSITIONS[pos]}")
    return SemVer(major, minor, patch, pre, build)


def _record_version(text: str) -> str | None:
    """What ``calimero_primitives::application::Version::new`` keeps (else None)."""
    core = re.split(r"[-+]", text, maxsplit=1)[0]
    parts = core.split(".")
    ok = len(parts) == 3 and all(p and p.isascii() and p.isdigit() for p in parts)
    return text if ok else None


# -- a bounded, read-only tar.gz walker ------------------------------------------------


def _cap_error(limit: int) -> BundleError:
    return BundleError(f"bundle archive exceeds the {limit} byte decompressed cap")


class _GunzipStream:
    """One gzip member, decompressed on demand and capped like merod's ``Capped``:
    at most ``limit`` bytes, plus one byte of slack so a stream of exactly
    ``limit`` bytes still reaches its end. Bytes after the member are ignored, as
    ``flate2::read::GzDecoder`` ignores them."""

    _CHUNK = 64 * 1024

    def __init__(self, data: bytes, limit: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""
        self.limit = limit
        self.used = 0

    def read(self, size: int) -> bytes:
        if size <= 0:
            return b""
        allowed = self.limit + 1 - self.used
        if allowed <= 0:
            raise _cap_error(self.limit)
        want = min(size, allowed)
        while True:
            if self._z.eof:
                return b""
            if not self._pending:
                if self._pos >= len(self._data):
                    raise _Corrupt("unexpected end of file")
                self._pending = bytes(self._data[self._pos : self._pos + self._CHUNK])
                self._pos += self._CHUNK
            try:
                out = self._z.decompress(self._pending, want)
            except zlib.error as exc:
                detail = "invalid gzip header" if "header" in str(exc) else "corrupt deflate stream"
                raise _Corrupt(detail) from None
            self._pending = self._z.unconsumed_tail
            if out:
                self.used += len(out)
                return out

    def read_exact(self, size: int) -> bytes:
        parts = []
        while size:
            chunk = self.read(size)
            if not chunk:
                break
            parts.append(chunk)
            size -= len(chunk)
        return b"".join(parts)

    def skip(self, size: int) -> None:
        while size:
            chunk = self.read(min(size, self._CHUNK))
            if not chunk:
                raise _Corrupt("unexpected end of file")
            size -= len(chunk)


def _tar_number(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise _Corrupt(f"numeric field was not a number: {text.decode('latin-1')!r}") from None


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            raise _Corrupt("malformed pax extension")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise _Corrupt("malformed pax extension") from None
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise _Corrupt("malformed pax extension")
        key, sep, value = data[space + 1 : end - 1].partition(b"=")
        if not sep:
            raise _Corrupt("malformed pax extension")
        out[key] = value
        pos = end
    return out


@dataclass
class _Entry:
    path: bytes
    kind: bytes
    size: int
    stream: _GunzipStream
    remaining: int

    def read_all(self, limit: int | None = None) -> bytes:
        """The entry's data (at most ``limit`` bytes when given)."""
        size = self.remaining if limit is None else min(limit, self.remaining)
        data = self.stream.read_exact(size)
        if len(data) < size:
            raise _Corrupt("unexpected end of file")
        self.remaining -= size
        return data


def _walk(data: bytes, limit: int) -> Iterator[_Entry]:
    """The entries of a tar.gz, as the ``tar`` crate's ``entries()`` yields them:
    GNU long names and pax headers folded into the next entry, the end at the
    first all-zero block. GNU sparse entries are refused: the crate makes their
    holes without reading the capped stream, so they could outgrow every cap."""
    stream = _GunzipStream(data, limit)
    long_name: bytes | None = None
    pax: dict[bytes, bytes] = {}
    while True:
        header = stream.read_exact(512)
        if not header:
            return
        if len(header) < 512:
            raise _Corrupt("failed to read entire block")
        if header == bytes(512):
            return
        if _tar_number(header[148:156]) != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise _Corrupt("archive header checksum mismatch")
        kind = header[156:157]
        size = _tar_number(header[124:136])
        gnu = header[257:265] == b"ustar  \0"
        ustar = header[257:265] == b"ustar\x0000"
        # The crate folds extension entries only under a GNU or ustar header.
        if (gnu or ustar) and kind in (b"L", b"K", b"x"):
            body = stream.read_exact(size)
            if len(body) < size:
                raise _Corrupt("unexpected end of file")
            stream.skip(-size % 512)
            if kind == b"L":
                long_name = body.rstrip(b"\0")
            elif kind == b"x":
                pax = _pax_records(body)
            continue
        name = header[:100].split(b"\0", 1)[0]
        if ustar:  # POSIX ustar: the name may continue in the prefix field
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        path = long_name if long_name is not None else pax.get(b"path", name)
        if b"size" in pax:
            try:
                size = int(pax[b"size"])
            except ValueError:
                raise _Corrupt("malformed pax size") from None
        sparse = kind == b"S" or any(k.startswith(b"GNU.sparse.") for k in pax)
        long_name, pax = None, {}
        if sparse:
            shown = path.decode("utf-8", "replace")
            raise BundleError(f"bundle archive entry '{shown}' is a GNU sparse file, which a bundle never holds")
        entry = _Entry(path, kind, size, stream, size)
        yield entry
        stream.skip(entry.remaining)
        stream.skip(-size % 512)


def _path_key(path: bytes) -> tuple[bool, tuple[bytes, ...]]:
    """Rust ``Path::components()`` with leading ``.`` skipped: what
    ``same_archive_path`` compares. ``a//b``, ``a/./b`` and ``a/b/`` are ``a/b``;
    ``/a`` (rooted), ``old/a`` and ``x/../a`` are not ``a``."""
    return path.startswith(b"/"), tuple(p for p in path.split(b"/") if p not in (b"", b"."))


_MANIFEST_KEY = _path_key(b"manifest.json")


def is_bundle(data: bytes) -> bool:
    """merod's ``is_bundle_blob``: a tar.gz with an entry at ``manifest.json``
    within the first 8 MiB decompressed. Any unreadable part ends the walk as False."""
    try:
        for entry in _walk(data, MAX_MANIFEST_SCAN_BYTES):
            if _path_key(entry.path) == _MANIFEST_KEY:
                return True
    except (_Corrupt, BundleError):
        return False
    return False


def _scan_manifest(data: bytes) -> bytes:
    try:
        for entry in _walk(data, MAX_MANIFEST_SCAN_BYTES):
            if _path_key(entry.path) == _MANIFEST_KEY:
                raw = entry.read_all(MAX_MANIFEST_BYTES + 1)
                if len(raw) > MAX_MANIFEST_BYTES:
                    raise BundleError(f"bundle manifest.json exceeds the {MAX_MANIFEST_BYTES} byte cap")
                return raw
    except _Corrupt as exc:
        raise BundleError(str(exc)) from None
    raise BundleError("manifest.json not found in bundle")


def _full_walk(data: bytes, wanted: Sequence[str], limit: int) -> dict[str, bytes]:
    """``ensure_single_manifest`` then ``extract_bundle_files`` in one pass, with
    their errors in the order the two walks would raise them."""
    keys = {w: _path_key(w.encode("utf-8")) for w in wanted}
    found: dict[str, bytes] = {}
    duplicate: str | None = None
    seen_manifest = False
    try:
        for entry in _walk(data, limit):
            key = _path_key(entry.path)
            if key == _MANIFEST_KEY:
                if seen_manifest:
                    raise BundleError("bundle archive has more than one entry at 'manifest.json'")
                seen_manifest = True
            matched = [w for w, k in keys.items() if k == key]
            if not matched:
                continue
            body = entry.read_all()
            for w in matched:
                if w in found and duplicate is None:
                    duplicate = w
                found[w] = body
    except _Corrupt as exc:
        raise BundleError(str(exc)) from None
    if duplicate is not None:
        raise BundleError(f"bundle archive has more than one entry at '{duplicate}'")
    return found


# -- verification ---------------------------------------------------------------------


def _ascii_lower(text: str) -> str:
    return "".join(c.lower() if c.isascii() else c for c in text)


def _is_web_url(url: str) -> bool:
    """crates/bundle ``is_web_url``: an absolute ``http(s)://`` URL with something
    after the scheme and no control character anywhere."""
    raw = url.encode("utf-8")
    head = url
    if len(raw) >= 8:
        try:
            head = raw[:8].decode("utf-8")
        except UnicodeDecodeError:
            head = url
    lower = _ascii_lower(head)
    if lower.startswith("https://"):
        rest = url[8:]
    elif lower.startswith("http://"):
        rest = url[7:]
    else:
        return False
    return bool(rest) and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in url)


@dataclass(frozen=True)
class WasmArtifact:
    """One digest-checked wasm module of a bundle."""

    #: Service name; None for a single-service bundle's top-level ``wasm``.
    name: str | None
    #: Its path inside the archive, as the manifest names it.
    path: str
    data: bytes


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed every check merod makes on install."""

    #: The manifest as parsed (what the signature covers, minus ``signature``).
    manifest: dict[str, Any]
    signer_id: str
    #: ``ApplicationId::for_bundle(package, signer_id)`` (32 bytes; ``.hex()`` to show).
    application_id_bytes: bytes
    #: SHA-256 of the canonical manifest.
    bundle_hash: bytes
    #: Which signing payload verified (:data:`SCHEME_V1` or :data:`SCHEME_UNTAGGED`).
    scheme: str
    #: Every wasm artifact, digest-checked, in ``wasm_artifacts()`` order.
    wasm: tuple[WasmArtifact, ...]
    #: The typed view merod works from (defaults filled in).
    typed: dict[str, Any]

    @property
    def application_id(self) -> str:
        """The application id as current merod shows it: 64 lowercase hex digits."""
        return self.application_id_bytes.hex()

    @property
    def package(self) -> str:
        return self.typed["package"]

    @property
    def version(self) -> str:
        """``appVersion``."""
        return self.typed["appVersion"]

    @property
    def record_version(self) -> str | None:
        """The ``version`` the Application record shows (None unless semver-shaped)."""
        return _record_version(self.version)

    @property
    def services(self) -> tuple[str, ...]:
        """Named services (empty for a single-service bundle)."""
        return tuple(a.name for a in self.wasm if a.name is not None)

    def runnable_wasm(self, service: str | None = None) -> bytes:
        """The module a context runs (``Application::resolve_service_blob``): the
        top-level ``wasm`` of a single-service bundle, the only service when there
        is one, else the named one."""
        named = [a for a in self.wasm if a.name is not None]
        if service is None:
            if not named:
                return self.wasm[0].data
            if len(named) == 1:
                return named[0].data
            names = ", ".join(a.name or "" for a in named)
            raise BundleError(f"bundle has several services ({names}); name the one to run")
        for artifact in named:
            if artifact.name == service:
                return artifact.data
        raise BundleError(f"service '{service}' not found in bundle manifest")

    def metadata_json(self) -> bytes:
        """``BundleManifest::to_metadata_json()``: the Application record's
        ``metadata`` bytes (compact JSON, merod's key order)."""
        obj: dict[str, Any] = {"package": self.package, "version": self.version}
        meta = self.typed["metadata"]
        if meta is not None:
            obj["name"] = meta["name"]
            for key in ("description", "author", "icon"):
                if meta[key] is not None:
                    obj[key] = meta[key]
            if meta["tags"]:
                obj["tags"] = list(meta["tags"])
            for key in ("license", "guide"):
                if meta[key] is not None:
                    obj[key] = meta[key]
        links = self.typed["links"]
        if links is not None:
            kept = {k: links[k] for k in ("frontend", "github", "docs") if links[k] is not None and _is_web_url(links[k])}
            if kept:
                obj["links"] = kept
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def open_bundle(
    data: bytes,
    *,
    runtime_version: str = EMBEDDED_RUNTIME_VERSION,
    schemes: Sequence[str] = (SCHEME_V1,),
    archive_limit: int = MAX_ARCHIVE_BYTES,
) -> VerifiedBundle:
    """Open and verify a bundle exactly as merod's ``install_bundle`` does.

    The checks, in merod's order: the manifest scan (8 MiB decompressed, a 1 MiB
    manifest), JSON and typed parse, non-empty ``package``/``appVersion``, path
    safety of both and of every artifact path, ``minRuntimeVersion`` against
    ``runtime_version``, the signature (``schemes``), a single ``manifest.json``
    in the whole archive (``archive_limit`` decompressed), each wasm artifact
    present exactly once and matching its digest, and at least one wasm artifact.
    Raises :class:`BundleError` with merod's message.
    """
    for scheme in schemes:
        if scheme not in _SCHEMES:
            raise ValueError(f"unknown signing scheme {scheme!r}; expected one of {_SCHEMES}")
    raw = _scan_manifest(data)
    try:
        value = _parse_json(raw)
    except _JsonError as exc:
        raise BundleError(f"failed to parse manifest.json as JSON: {exc}") from None
    try:
        typed = _MANIFEST(value)
    except _SerdeError as exc:
        raise BundleError(f"failed to parse manifest.json: {exc}") from None
    if not typed["package"]:
        raise BundleError("bundle manifest 'package' field is empty")
    if not typed["appVersion"]:
        raise BundleError("bundle manifest 'appVersion' field is empty")
    _validate_path_component(typed["package"], "package")
    _validate_path_component(typed["appVersion"], "appVersion")
    for field, artifact in _artifacts(typed):
        _validate_artifact_path(artifact["path"], f"{field}.path")
    try:
        current = parse_semver(runtime_version)
    except _SemverError as exc:
        raise BundleError(f"failed to parse current runtime version: {exc}") from None
    try:
        minimum = parse_semver(typed["minRuntimeVersion"])
    except _SemverError as exc:
        raise BundleError(f"invalid minRuntimeVersion '{typed['minRuntimeVersion']}': {exc}") from None
    if minimum > current:
        raise BundleError(f"bundle requires runtime version {minimum} but current runtime is {current}")

    verified = verify_manifest_signature(value, schemes=schemes)

    wasm_specs = _wasm_artifacts(typed)
    wanted = sorted({spec["path"] for _, spec in wasm_specs})
    found = _full_walk(data, wanted, archive_limit)
    artifacts = []
    for name, spec in wasm_specs:
        path = spec["path"]
        body = found.get(path)
        if body is None:
            raise BundleError(f"bundle artifact '{path}' named in the manifest is missing from the archive")
        actual = hashlib.sha256(body).hexdigest()
        if not (spec["hash"].isascii() and spec["hash"].lower() == actual):
            raise BundleError(
                f"bundle artifact '{path}' failed its integrity check: manifest hash {spec['hash']}, actual {actual}"
            )
        artifacts.append(WasmArtifact(name, path, body))
    if not artifacts:
        raise BundleError(
            "bundle manifest declares no wasm artifact: expected a top-level 'wasm' or a non-empty 'services' list"
        )
    return VerifiedBundle(
        manifest=value,
        signer_id=verified.signer_id,
        application_id_bytes=application_id_for_bundle(typed["package"], verified.signer_id),
        bundle_hash=verified.bundle_hash,
        scheme=verified.scheme,
        wasm=tuple(artifacts),
        typed=typed,
    )


def verify_bundle(data: bytes, *, source: str, **options: Any) -> VerifiedBundle:
    """An install of ``data`` named ``source``: refused with
    ``"not a signed application bundle: {source}"`` unless it is a bundle at all,
    then :func:`open_bundle` (``options`` go to it)."""
    if not is_bundle(data):
        raise BundleError(f"{NOT_A_BUNDLE}: {source}")
    return open_bundle(data, **options)


def load_bundle_file(path: str | Path, **options: Any) -> tuple[VerifiedBundle, bytes, Path]:
    """``install_application_from_path`` up to the row: returns the verified
    bundle, the archive bytes (merod's application blob) and the canonical path
    (the row's ``source`` is its ``file://`` URI)."""
    given = Path(path)
    try:
        real = given.resolve(strict=True)
    except FileNotFoundError:
        raise BundleError(f"application file not found at {path}") from None
    size = real.stat().st_size
    cap = options.get("archive_limit", MAX_ARCHIVE_BYTES)
    if size > cap:
        raise BundleError(f"application file at {real} is {size} bytes, exceeding the {cap} byte bundle cap")
    data = read_file(real)
    return verify_bundle(data, source=str(real), **options), data, real


def is_wasm_file(path: str | Path) -> bool:
    """Whether the file starts as a wasm module does (``\\0asm``), read without
    reading the rest."""
    with open_regular(path) as fh:
        return fh.read(len(WASM_MAGIC)) == WASM_MAGIC


def is_bundle_file(path: str | Path) -> bool:
    """:func:`is_bundle` of a file, reading only what its probe can reach: the
    manifest must lie within the first 8 MiB decompressed, which no stream
    encodes in more than that plus its block overhead."""
    with open_regular(path) as fh:
        return is_bundle(fh.read(MAX_MANIFEST_SCAN_BYTES + (1 << 20)))


def size_problem(path: str | Path, *, wasm: bool) -> str | None:
    """Why merod would refuse the file for its size before reading it, or None:
    a wasm module over ``max_module_size`` (128 MiB), a bundle over the
    archive cap (512 MiB)."""
    size = Path(path).stat().st_size
    limit = MAX_MODULE_BYTES if wasm else MAX_ARCHIVE_BYTES
    if size <= limit:
        return None
    what = "module size limit (max_module_size)" if wasm else "bundle cap"
    return (
        f"{Path(path).name} is {size} bytes ({size / (1 << 20):.0f} MiB), over merod's {what} "
        f"of {limit >> 20} MiB ({limit} bytes)"
    )


# -- building ---------------------------------------------------------------------------

_PACKAGE_ID = re.compile(r"[A-Za-z0-9._-]+")


def coordinates_problem(package: str | None, version: str | None) -> str | None:
    """Why ``package`` or ``version`` cannot name a bundle, or None (None for
    one not given): the checks of :func:`build_bundle`, merod's texts."""
    if package is not None and package and not _PACKAGE_ID.fullmatch(package):
        return (
            f"invalid package id `{package}`: may contain only ASCII letters, digits, "
            "`.`, `-`, and `_`"
        )
    for text, what in ((package, "package"), (version, "appVersion")):
        if text is None:
            continue
        if not text:
            return f"bundle manifest '{what}' field is empty"
        try:
            _validate_path_component(text, what)
        except BundleError as exc:
            return str(exc)
    return None
_VERSIONED_STEM = re.compile(r"(?P<name>.+?)-(?P<version>\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]*)?)")


def default_coordinates(path: str | Path) -> tuple[str, str, str]:
    """``(package, version, name)`` for a wasm file: ``kv_store.wasm`` →
    ``("com.calimero.kv-store", "0.1.0", "kv_store")``; ``demo-1.2.3.wasm`` gives
    version ``1.2.3``; a dotted stem (``com.example.app``) is the package as is."""
    stem = Path(path).stem
    version = "0.1.0"
    match = _VERSIONED_STEM.fullmatch(stem)
    if match:
        stem, version = match["name"], match["version"]
    if "." in stem and _PACKAGE_ID.fullmatch(stem) and ".." not in stem:
        package = stem
    else:
        slug = re.sub(r"[^a-z0-9-]+", "-", stem.lower().replace("_", "-")).strip("-") or "app"
        package = f"com.calimero.{slug}"
    return package, version, stem


def sign_manifest(
    manifest: Mapping[str, Any],
    key: Ed25519PrivateKey | None = None,
    *,
    scheme: str = SCHEME_V1,
) -> dict[str, Any]:
    """A signed copy of ``manifest``, as mero-sign writes it: ``signerId`` set to
    the key's (replacing any), then ``signature`` = ``{algorithm, publicKey,
    signature}``. ``key`` defaults to the development key."""
    if not isinstance(manifest.get("minRuntimeVersion"), str):
        raise ValueError("manifest is missing required field `minRuntimeVersion`")
    key = key or dev_signing_key()
    public = _raw_public_key(key)
    out = dict(manifest)
    out["signerId"] = signer_id_for_public_key(public)
    payload = signing_payload(canonical_manifest(out), scheme)
    out["signature"] = {
        "algorithm": "ed25519",
        "publicKey": _b64url_encode(public),
        "signature": _b64url_encode(key.sign(payload)),
    }
    return out


def _tar_header(name: bytes, size: int, kind: bytes = b"0") -> bytes:
    header = bytearray(512)
    header[0 : len(name)] = name
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8
    header[156:157] = kind
    header[257:265] = b"ustar  \0"  # GNU magic and version, as tar-rs writes
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _tar_gz(files: Sequence[tuple[str, bytes]]) -> bytes:
    """A deterministic GNU tar in a single gzip member (mtime 0, mode 0644, owner
    0): the layout tar-rs and flate2 produce, minus the build machine's metadata."""
    tar = bytearray()
    for name, body in files:
        raw = name.encode("utf-8")
        if len(raw) > 100:
            long_name = raw + b"\0"
            tar += _tar_header(b"././@LongLink", len(long_name), b"L")
            tar += long_name + bytes(-len(long_name) % 512)
            raw = raw[:100]
        tar += _tar_header(raw, len(body))
        tar += body + bytes(-len(body) % 512)
    tar += bytes(1024)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(bytes(tar)) + deflate.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0, OS unknown
    trailer = struct.pack("<II", zlib.crc32(tar) & 0xFFFFFFFF, len(tar) & 0xFFFFFFFF)
    return header + body + trailer


def _artifact(path: str, body: bytes) -> dict[str, Any]:
    return {"path": path, "hash": hashlib.sha256(body).hexdigest(), "size": len(body)}


def _embedded_abi(wasm: bytes) -> bytes | None:
    from .node.abi import custom_sections

    try:
        for name, payload in custom_sections(wasm):
            if name == "calimero_abi_v1":
                return payload
    except ValueError:
        return None
    return None


@dataclass(frozen=True)
class BuiltBundle:
    """A bundle this module packed."""

    data: bytes
    manifest: dict[str, Any]
    signer_id: str
    application_id_bytes: bytes

    @property
    def application_id(self) -> str:
        return self.application_id_bytes.hex()


_AUTO = object()


def build_bundle(
    wasm: bytes,
    *,
    package: str,
    version: str,
    name: str | None = None,
    min_runtime_version: str = "0.1.0",
    abi: bytes | None | object = _AUTO,
    key: Ed25519PrivateKey | None = None,
    scheme: str = SCHEME_V1,
) -> BuiltBundle:
    """Pack one wasm module into a signed single-service ``.mpk``.

    The manifest has ``cargo mero bundle``'s shape (``version`` "1.0",
    ``package``, ``appVersion``, ``minRuntimeVersion``, ``metadata`` {name, tags},
    ``handlers`` {slug}, ``wasm``, ``abi``, ``links``, then ``signerId`` and
    ``signature``), and the archive holds ``manifest.json`` first, then
    ``app.wasm`` and ``abi.json``. ``abi`` defaults to the module's embedded
    ``calimero_abi_v1`` section, if any; pass None to leave it out. ``key``
    defaults to the development key; ``scheme`` picks the signing payload
    (:data:`SCHEME_UNTAGGED` for merod releases before core#4307).
    """
    if wasm[:4] != WASM_MAGIC:
        raise ValueError("not a wasm module (no \\0asm magic); pass the .wasm file, not a bundle")
    problem = coordinates_problem(package, version)
    if problem:
        raise ValueError(problem)
    try:
        parse_semver(min_runtime_version)
    except _SemverError as exc:
        raise ValueError(f"invalid minRuntimeVersion '{min_runtime_version}': {exc}") from None
    abi_bytes = _embedded_abi(wasm) if abi is _AUTO else abi
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "package": package,
        "appVersion": version,
        "minRuntimeVersion": min_runtime_version,
        "metadata": {"name": name or package, "tags": []},
        "handlers": {"slug": package},
        "wasm": _artifact("app.wasm", wasm),
    }
    files = [("app.wasm", wasm)]
    if isinstance(abi_bytes, bytes):
        manifest["abi"] = _artifact("abi.json", abi_bytes)
        files.append(("abi.json", abi_bytes))
    manifest["links"] = {}
    signed = sign_manifest(manifest, key, scheme=scheme)
    text = json.dumps(signed, indent=2, ensure_ascii=False).encode("utf-8")
    data = _tar_gz([("manifest.json", text), *files])
    signer = signed["signerId"]
    return BuiltBundle(data, signed, signer, application_id_for_bundle(package, signer))


def build_dev_bundle_file(
    wasm_path: str | Path,
    out_path: str | Path | None = None,
    *,
    package: str | None = None,
    version: str | None = None,
    **options: Any,
) -> Path:
    """Write a dev-signed ``.mpk`` for a ``.wasm`` file and return its path.

    Package and version default from the file name (:func:`default_coordinates`);
    the output defaults to ``<stem>.dev.mpk`` beside the wasm. ``options`` go to
    :func:`build_bundle`.
    """
    source = Path(wasm_path)
    default_package, default_version, name = default_coordinates(source)
    options.setdefault("name", name)
    built = build_bundle(
        read_file(source),
        package=package or default_package,
        version=version or default_version,
        **options,
    )
    out = Path(out_path) if out_path is not None else source.with_name(f"{source.stem}.dev.mpk")
    replace_file(out, built.data)
    return out


def dev_bundle_for(
    path: str | Path,
    cache_dir: str | Path,
    *,
    package: str | None = None,
    version: str | None = None,
    scheme: str = SCHEME_V1,
) -> Path:
    """The file to hand a node that refuses raw wasm: ``path`` itself when it is
    already a bundle, else a dev-signed bundle of it in ``cache_dir``, named by a
    digest of everything that went into it (so reruns reuse it)."""
    source = Path(path)
    if not is_wasm_file(source):
        if is_bundle_file(source):
            return source
        raise ValueError("not a wasm module (no \\0asm magic); pass the .wasm file, not a bundle")
    problem = size_problem(source, wasm=True)
    if problem:
        raise ValueError(problem)
    default_package, default_version, _ = default_coordinates(source)
    package = package or default_package
    version = version or default_version
    # streamed: a cached bundle is found without holding the module in memory
    digest = hashlib.sha256()
    with source.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    digest.update(b"\0".join([b"", package.encode(), version.encode(), scheme.encode()]))
    out = Path(cache_dir) / f"{package}-{version}-{digest.hexdigest()[:16]}.mpk"
    if not out.is_file():
        build_dev_bundle_file(source, out, package=package, version=version, scheme=scheme)
    return out
