"""Signed application bundles (``.mpk``): building, verifying, refusing.

The expected texts are merod's (core ``crates/node/primitives/src/client/
application/{install,bundle}.rs``, ``crates/bundle/src/{lib,signature}.rs``), and
the vectors are core's own where core pins one: the cross-implementation signing
vector of ``crates/bundle/src/signature.rs``, the pinned dev signer, and RFC 8785's
canonicalization examples.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import struct
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from calimero_workflow import bundle as mpk
from calimero_workflow import ed25519
from calimero_workflow.bundle import BundleError

REPO = Path(__file__).resolve().parent.parent
KV_STORE_WASM = REPO / "apps" / "kv-store" / "kv_store.wasm"

#: A tiny valid wasm module (magic and version only): merod does not compile at install.
TINY_WASM = b"\0asm\x01\x00\x00\x00"
OTHER_WASM = b"\0asm\x01\x00\x00\x00\x00\x04\x01x\x01\x02"  # plus one custom section


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def artifact(path: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "hash": hashlib.sha256(data).hexdigest(), "size": len(data)}


def manifest(module: bytes = TINY_WASM, **fields: Any) -> dict[str, Any]:
    """A manifest for ``module`` at app.wasm; ``field=...`` drops a field."""
    base: dict[str, Any] = {
        "version": "1.0",
        "package": "com.example.app",
        "appVersion": "1.0.0",
        "minRuntimeVersion": "0.1.0",
        "wasm": artifact("app.wasm", module),
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def tar_gz(entries: list[tuple[str | bytes, bytes]] | list[Any], *, raw_tail: bytes = b"") -> bytes:
    """A GNU tar.gz of ``(name, data)`` or ready-made header+data blocks."""
    out = bytearray()
    for item in entries:
        if isinstance(item, (bytes, bytearray)):
            out += item
            continue
        name, data = item
        raw = name.encode() if isinstance(name, str) else name
        out += mpk._tar_header(raw, len(data)) + data + bytes(-len(data) % 512)
    out += bytes(1024)
    return gzip.compress(bytes(out), mtime=0) + raw_tail


def pack(
    man: dict[str, Any] | bytes,
    files: list[tuple[str | bytes, bytes]] | None = None,
    *,
    sign: bool = True,
    key: Ed25519PrivateKey | None = None,
    scheme: str = mpk.SCHEME_V1,
) -> bytes:
    """A bundle: ``manifest.json`` first (signed unless told not to), then files."""
    if isinstance(man, dict):
        body = mpk.sign_manifest(man, key, scheme=scheme) if sign else man
        text = json.dumps(body, indent=2, ensure_ascii=False).encode()
    else:
        text = man
    if files is None:
        files = [("app.wasm", TINY_WASM)]
    return tar_gz([("manifest.json", text), *files])


def refused(data: bytes, **options: Any) -> str:
    with pytest.raises(BundleError) as info:
        mpk.open_bundle(data, **options)
    return str(info.value)


# -- constants and vectors -------------------------------------------------------------


def test_dev_key_is_the_published_one() -> None:
    assert mpk.DEV_SEED.hex() == "8cb7ae251b4da55aecc3875f4c0a712ce2b34cb06d4771e713f2bb3289d0f7b4"
    # Pinned by core's dev_signer_id_is_pinned and by mero-sign's test.
    assert mpk.DEV_SIGNER_ID == "did:key:z6MknF3p5L5FDHJQ7FREUapuX4Wmp4MtF6WrHYaXS2B3eZQd"
    assert mpk.DEV_PUBLIC_KEY == "c7yxmuCRXfb4Ab4kcl9M3D5lxcpG9BTZm7smM8jMdMI"


# core crates/bundle/src/signature.rs, the_signing_payload_matches_the_cross_implementation_vector
CORE_VECTOR_MANIFEST = {
    "version": "1.0",
    "package": "com.example.app",
    "appVersion": "1.0.0",
    "minRuntimeVersion": "1.0.0",
    "resources": [
        {
            "role": "executable",
            "path": "app.wasm",
            "hash": "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2",
            "size": 1024,
        }
    ],
}


def test_core_cross_implementation_signing_vector() -> None:
    canonical = mpk.canonical_manifest(CORE_VECTOR_MANIFEST)
    assert canonical == (
        b'{"appVersion":"1.0.0","minRuntimeVersion":"1.0.0","package":"com.example.app",'
        b'"resources":[{"hash":"a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2",'
        b'"path":"app.wasm","role":"executable","size":1024}],"version":"1.0"}'
    )
    assert mpk.bundle_hash(CORE_VECTOR_MANIFEST).hex() == (
        "3dec7675feff863a1346c157e74ace6b77aaaf3483f2a35ecd419463c54f52a8"
    )
    payload = mpk.signing_payload(canonical)
    assert payload.hex() == "ce52b6437aa6e385d6ca6704775a2c7a89a5623e4f9520a7e411628d0ccf6c70"
    # Before core#4307 the payload was the bundle hash itself.
    assert mpk.signing_payload(canonical, mpk.SCHEME_UNTAGGED) == mpk.bundle_hash(CORE_VECTOR_MANIFEST)

    key = Ed25519PrivateKey.from_private_bytes(bytes([7] * 32))
    signed = mpk.sign_manifest(CORE_VECTOR_MANIFEST, key)
    assert signed["signature"] == {
        "algorithm": "ed25519",
        "publicKey": "6kpsY-KcUgq-9VB7Ey7F-ZVHdq6-vnuSQh7qaRRG0iw",
        # signerId is part of the signed view here, so the signature differs from
        # the vector's (which signs the manifest without one): check the bare one.
        "signature": signed["signature"]["signature"],
    }
    assert b64u(key.sign(payload)) == (
        "E-QrACBF4wcY_y90BgszUPa8Gu2MD1fPycE_PkLnue3iFMXzCXTRYmNUJSBbq7IBoBSYDh81dBr-RyJzIOaXCw"
    )
    verification = mpk.verify_manifest_signature(signed)
    assert verification.signer_id == signed["signerId"]
    assert verification.scheme == mpk.SCHEME_V1


def test_an_untagged_signature_is_refused_unless_asked_for() -> None:
    # core: an_untagged_signature_is_refused
    key = Ed25519PrivateKey.from_private_bytes(bytes([7] * 32))
    old = mpk.sign_manifest(CORE_VECTOR_MANIFEST, key, scheme=mpk.SCHEME_UNTAGGED)
    with pytest.raises(BundleError, match="^Ed25519 signature verification failed$"):
        mpk.verify_manifest_signature(old)
    both = (mpk.SCHEME_V1, mpk.SCHEME_UNTAGGED)
    assert mpk.verify_manifest_signature(old, schemes=both).scheme == mpk.SCHEME_UNTAGGED
    new = mpk.sign_manifest(CORE_VECTOR_MANIFEST, key)
    with pytest.raises(BundleError, match="verification failed"):
        mpk.verify_manifest_signature(new, schemes=(mpk.SCHEME_UNTAGGED,))


def test_signer_id_is_did_key_of_the_multicodec_key() -> None:
    key = bytes(range(32))
    sid = mpk.signer_id_for_public_key(key)
    assert sid.startswith("did:key:z6Mk")
    # base58btc decode of the part after "z" gives 0xed 0x01 || key.
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    num = 0
    for ch in sid[len("did:key:z"):]:
        num = num * 58 + alphabet.index(ch)
    assert num.to_bytes(34, "big") == b"\xed\x01" + key


def test_application_id_is_sha256_of_borsh_package_and_signer() -> None:
    package, signer = "com.calimero.kv-store", mpk.DEV_SIGNER_ID
    borsh = (
        len(package).to_bytes(4, "little") + package.encode()
        + len(signer).to_bytes(4, "little") + signer.encode()
    )
    expected = hashlib.sha256(borsh).digest()
    assert mpk.application_id_for_bundle(package, signer) == expected
    # Regression pin for the dev-signed kv-store (what `cargo mero bundle --dev`
    # prints as "Application" for package com.calimero.kv-store).
    assert expected.hex() == "ad61b1324e760fc4a8cb2beaeb1a799e4bac774b5f78bebe66f2cb863774926f"
    # UTF-8 byte length, not character count.
    assert mpk.application_id_for_bundle("é", "x") == hashlib.sha256(
        b"\x02\x00\x00\x00\xc3\xa9\x01\x00\x00\x00x"
    ).digest()
    assert mpk.application_id_for_bundle("a", "bc") != mpk.application_id_for_bundle("ab", "c")


# -- round trip ----------------------------------------------------------------------------


def test_build_then_verify_round_trip_with_the_real_app() -> None:
    wasm = KV_STORE_WASM.read_bytes()
    built = mpk.build_bundle(wasm, package="com.calimero.kv-store", version="0.1.0", name="kv_store")
    assert built.signer_id == mpk.DEV_SIGNER_ID
    verified = mpk.verify_bundle(built.data, source="test")
    assert verified.application_id == built.application_id == (
        "ad61b1324e760fc4a8cb2beaeb1a799e4bac774b5f78bebe66f2cb863774926f"
    )
    assert verified.signer_id == mpk.DEV_SIGNER_ID
    assert verified.package == "com.calimero.kv-store"
    assert verified.version == verified.record_version == "0.1.0"
    assert verified.scheme == mpk.SCHEME_V1
    assert verified.runnable_wasm() == wasm
    assert verified.services == ()
    assert verified.bundle_hash == mpk.bundle_hash(built.manifest)
    assert json.loads(verified.metadata_json()) == {
        "package": "com.calimero.kv-store",
        "version": "0.1.0",
        "name": "kv_store",
    }
    # The embedded ABI rides along as abi.json, as cargo-mero bundles it.
    abi = built.manifest["abi"]
    assert abi["path"] == "abi.json" and abi["size"] > 0


def test_the_archive_has_cargo_mero_layout() -> None:
    wasm = KV_STORE_WASM.read_bytes()
    built = mpk.build_bundle(wasm, package="com.calimero.kv-store", version="0.1.0")
    raw = gzip.decompress(built.data)
    assert built.data[:4] == b"\x1f\x8b\x08\x00" and built.data[4:8] == bytes(4)  # mtime 0
    with tarfile.open(fileobj=io.BytesIO(built.data), mode="r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["manifest.json", "app.wasm", "abi.json"]
        assert all(m.isreg() and m.mode == 0o644 for m in members)
        assert tar.extractfile("app.wasm").read() == wasm  # type: ignore[union-attr]
        text = tar.extractfile("manifest.json").read().decode()  # type: ignore[union-attr]
    assert raw[257:265] == b"ustar  \0"  # GNU headers, like tar-rs
    man = json.loads(text)
    assert list(man) == [
        "version", "package", "appVersion", "minRuntimeVersion", "metadata",
        "handlers", "wasm", "abi", "links", "signerId", "signature",
    ]
    assert text.startswith('{\n  "version": "1.0",\n')  # serde_json's pretty form
    assert man["handlers"] == {"slug": "com.calimero.kv-store"}
    assert man["links"] == {}
    assert man["wasm"] == artifact("app.wasm", wasm)
    assert list(man["signature"]) == ["algorithm", "publicKey", "signature"]
    assert man["signature"]["publicKey"] == mpk.DEV_PUBLIC_KEY


def test_builds_are_deterministic() -> None:
    a = mpk.build_bundle(TINY_WASM, package="p", version="1.0.0")
    b = mpk.build_bundle(TINY_WASM, package="p", version="1.0.0")
    assert a.data == b.data


def test_a_legacy_signed_build_verifies_only_under_the_legacy_scheme() -> None:
    built = mpk.build_bundle(TINY_WASM, package="p", version="1.0.0", scheme=mpk.SCHEME_UNTAGGED)
    assert refused(built.data) == "Ed25519 signature verification failed"
    both = (mpk.SCHEME_V1, mpk.SCHEME_UNTAGGED)
    assert mpk.open_bundle(built.data, schemes=both).scheme == mpk.SCHEME_UNTAGGED


def test_another_key_is_another_application() -> None:
    key = Ed25519PrivateKey.generate()
    mine = mpk.open_bundle(mpk.build_bundle(TINY_WASM, package="p", version="1.0.0", key=key).data)
    dev = mpk.open_bundle(mpk.build_bundle(TINY_WASM, package="p", version="1.0.0").data)
    newer = mpk.open_bundle(mpk.build_bundle(OTHER_WASM, package="p", version="2.0.0").data)
    assert mine.signer_id != dev.signer_id
    assert mine.application_id != dev.application_id
    # Version and bytes are not part of the id.
    assert newer.application_id == dev.application_id


# -- tampering -----------------------------------------------------------------------------


def test_a_changed_manifest_field_breaks_the_signature() -> None:
    signed = mpk.sign_manifest(manifest())
    signed["appVersion"] = "2.0.0"
    assert refused(pack(signed, sign=False)) == "Ed25519 signature verification failed"


def test_a_changed_wasm_byte_fails_its_digest() -> None:
    man = manifest()
    evil = TINY_WASM[:-1] + b"\x02"
    message = refused(pack(man, [("app.wasm", evil)]))
    assert message == (
        f"bundle artifact 'app.wasm' failed its integrity check: manifest hash "
        f"{man['wasm']['hash']}, actual {hashlib.sha256(evil).hexdigest()}"
    )


def test_a_changed_signature_fails() -> None:
    signed = mpk.sign_manifest(manifest())
    raw = bytearray(base64.urlsafe_b64decode(signed["signature"]["signature"] + "=="))
    raw[5] ^= 1
    signed["signature"]["signature"] = b64u(bytes(raw))
    assert refused(pack(signed, sign=False)) == "Ed25519 signature verification failed"


def test_another_signers_key_fails() -> None:
    signed = mpk.sign_manifest(manifest())
    other = Ed25519PrivateKey.generate()
    signed["signature"]["publicKey"] = b64u(mpk._raw_public_key(other))
    assert refused(pack(signed, sign=False)) == "Ed25519 signature verification failed"


def test_a_changed_signer_id_fails_the_signature() -> None:
    signed = mpk.sign_manifest(manifest())
    signed["signerId"] = mpk.signer_id_for_public_key(bytes(32))
    assert refused(pack(signed, sign=False)) == "Ed25519 signature verification failed"


def _sign_as_is(man: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Sign without touching signerId (what a forger or an old tool would do)."""
    out = dict(man)
    payload = mpk.signing_payload(mpk.canonical_manifest(out))
    out["signature"] = {
        "algorithm": "ed25519",
        "publicKey": b64u(mpk._raw_public_key(key)),
        "signature": b64u(key.sign(payload)),
    }
    return out


def test_a_signer_id_that_is_not_the_keys_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    claimed = mpk.DEV_SIGNER_ID
    signed = _sign_as_is(manifest(signerId=claimed), key)
    derived = mpk.signer_id_for_public_key(mpk._raw_public_key(key))
    assert refused(pack(signed, sign=False)) == (
        f"signerId mismatch: manifest declares '{claimed}' but signature public key derives to '{derived}'"
    )


def test_a_missing_signer_id_is_refused() -> None:
    signed = _sign_as_is(manifest(), Ed25519PrivateKey.generate())
    assert refused(pack(signed, sign=False)) == "bundle manifest is missing required signerId field"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("signature"), "manifest is missing required 'signature' field"),
        (lambda s: s.__setitem__("signature", None), "signature missing 'algorithm' field"),
        (
            lambda s: s["signature"].__setitem__("algorithm", "Ed25519"),
            "unsupported signature algorithm: 'Ed25519', expected 'ed25519'",
        ),
        (
            lambda s: s["signature"].__setitem__("publicKey", s["signature"]["publicKey"] + "="),
            "invalid base64url encoding for public key",
        ),
        (
            lambda s: s["signature"].__setitem__("publicKey", b64u(bytes(31))),
            "invalid public key length: expected 32 bytes, got 31",
        ),
        (
            lambda s: s["signature"].__setitem__("signature", s["signature"]["signature"].replace("-", "+").replace("_", "/") + "+"),
            "invalid base64url encoding for signature",
        ),
        (
            lambda s: s["signature"].__setitem__("signature", b64u(bytes(63))),
            "invalid signature length: expected 64 bytes, got 63",
        ),
        (
            # y = 2 is not the y of any curve point.
            lambda s: s["signature"].__setitem__("publicKey", b64u((2).to_bytes(32, "little"))),
            "invalid Ed25519 public key",
        ),
    ],
)
def test_signature_block_checks(change: Any, message: str) -> None:
    signed = mpk.sign_manifest(manifest())
    change(signed)
    assert refused(pack(signed, sign=False)) == message


def test_non_canonical_base64_trailing_bits_are_refused() -> None:
    signed = mpk.sign_manifest(manifest())
    pk = signed["signature"]["publicKey"]  # 43 chars: the last one carries 2 spare bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    bumped = alphabet[alphabet.index(pk[-1]) ^ 1]
    signed["signature"]["publicKey"] = pk[:-1] + bumped
    assert refused(pack(signed, sign=False)) == "invalid base64url encoding for public key"


def test_a_small_order_key_forgery_is_refused() -> None:
    # core: test_verify_ed25519_rejects_small_order_public_key. The identity point
    # with R = identity and S = 0 satisfies the equation for any message, and
    # only strict verification refuses it.
    identity = (1).to_bytes(32, "little")
    forged = manifest(signerId=mpk.signer_id_for_public_key(identity))
    forged["signature"] = {
        "algorithm": "ed25519",
        "publicKey": b64u(identity),
        "signature": b64u(identity + bytes(32)),
    }
    assert refused(pack(forged, sign=False)) == "Ed25519 signature verification failed"


def test_a_non_canonical_s_is_refused() -> None:
    signed = mpk.sign_manifest(manifest())
    sig = base64.urlsafe_b64decode(signed["signature"]["signature"] + "==")
    s = int.from_bytes(sig[32:], "little") + ed25519.L
    assert s < 2**256
    signed["signature"]["signature"] = b64u(sig[:32] + s.to_bytes(32, "little"))
    assert refused(pack(signed, sign=False)) == "Ed25519 signature verification failed"


def test_transient_top_level_fields_are_not_signed_but_nested_ones_are() -> None:
    signed = mpk.sign_manifest(manifest(metadata={"name": "n", "_note": "a"}))
    signed["_binary"] = "added after signing"
    signed["signature"]["signedAt"] = "2026-01-01T00:00:00Z"  # inside signature: unsigned
    assert mpk.open_bundle(pack(signed, sign=False)).package == "com.example.app"
    signed["metadata"]["_note"] = "b"
    assert refused(pack(signed, sign=False)) == "Ed25519 signature verification failed"


def test_the_digest_is_compared_without_case() -> None:
    man = manifest()
    man["wasm"]["hash"] = man["wasm"]["hash"].upper()
    assert mpk.open_bundle(pack(man)).runnable_wasm() == TINY_WASM


# -- manifest checks -----------------------------------------------------------------------


def test_not_a_bundle() -> None:
    assert not mpk.is_bundle(TINY_WASM)
    assert not mpk.is_bundle(gzip.compress(b"not a tar"))
    assert not mpk.is_bundle(tar_gz([("app.wasm", TINY_WASM)]))
    with pytest.raises(BundleError, match=r"^not a signed application bundle: /x/app\.wasm$"):
        mpk.verify_bundle(TINY_WASM, source="/x/app.wasm")
    assert refused(tar_gz([("app.wasm", TINY_WASM)])) == "manifest.json not found in bundle"
    assert refused(TINY_WASM) == "invalid gzip header"


def test_a_nested_manifest_is_not_the_manifest() -> None:
    data = tar_gz([("old/manifest.json", b"{}"), ("app.wasm", TINY_WASM)])
    assert not mpk.is_bundle(data)


def test_the_manifest_size_cap() -> None:
    man = manifest(padding="x" * mpk.MAX_MANIFEST_BYTES)
    assert refused(pack(man, sign=False)) == "bundle manifest.json exceeds the 1048576 byte cap"


def test_json_and_type_errors() -> None:
    assert refused(pack(b"{not json")).startswith("failed to parse manifest.json as JSON: ")
    assert refused(pack(b"\xef\xbb\xbf{}")).startswith("failed to parse manifest.json as JSON: ")
    assert refused(pack(manifest(package=...), sign=False)) == (
        "failed to parse manifest.json: missing field `package`"
    )
    man = manifest()
    man["wasm"]["size"] = "8"
    assert refused(pack(man, sign=False)) == (
        'failed to parse manifest.json: invalid type: string "8", expected u64'
    )
    man["wasm"]["size"] = -1
    assert refused(pack(man, sign=False)) == (
        "failed to parse manifest.json: invalid value: integer `-1`, expected u64"
    )
    man["wasm"]["size"] = 8.0
    assert refused(pack(man, sign=False)) == (
        "failed to parse manifest.json: invalid type: floating point `8.0`, expected u64"
    )
    assert refused(pack(manifest(wasm=None, metadata=[]), sign=False)).startswith(
        "failed to parse manifest.json: invalid length 0, expected struct BundleMetadata"
    )
    hashless = manifest()
    del hashless["wasm"]["hash"]  # required since core#3327
    assert refused(pack(hashless, sign=False)) == "failed to parse manifest.json: missing field `hash`"
    assert refused(pack(b'"a string"')) == (
        'failed to parse manifest.json: invalid type: string "a string", expected struct BundleManifest'
    )


def test_a_positional_artifact_is_read_as_serde_reads_it() -> None:
    # serde's derived structs also take a sequence, so merod accepts this spelling.
    man = manifest()
    w = man["wasm"]
    man["wasm"] = [w["path"], w["hash"], w["size"]]
    assert mpk.open_bundle(pack(man)).runnable_wasm() == TINY_WASM


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"package": ""}, "bundle manifest 'package' field is empty"),
        ({"appVersion": ""}, "bundle manifest 'appVersion' field is empty"),
        ({"package": "com..app"}, "package contains path traversal sequence '..'"),
        ({"package": "com/app"}, "package contains directory separator"),
        ({"package": "com\\app"}, "package contains directory separator"),
        ({"package": "com\0app"}, "package contains null byte"),
        ({"package": "C:app"}, "package appears to be an absolute path"),
        ({"appVersion": "../1"}, "appVersion contains path traversal sequence '..'"),
    ],
)
def test_coordinates_must_be_path_safe(fields: dict[str, Any], message: str) -> None:
    assert refused(pack(manifest(**fields))) == message


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "wasm.path is empty"),
        ("a\0b", "wasm.path contains null byte"),
        ("dir\\app.wasm", "wasm.path contains backslash (use forward slashes)"),
        ("/app.wasm", "wasm.path is an absolute path"),
        ("C:app.wasm", "wasm.path appears to be an absolute Windows path"),
        ("../app.wasm", "wasm.path contains path traversal component '..'"),
        ("dir/../../app.wasm", "wasm.path contains path traversal component '..'"),
    ],
)
def test_artifact_paths_cannot_escape(path: str, message: str) -> None:
    man = manifest()
    man["wasm"]["path"] = path
    assert refused(pack(man)) == message


def test_every_artifact_path_is_checked_by_field_name() -> None:
    abi = artifact("../abi.json", b"{}")
    assert refused(pack(manifest(abi=abi))) == "abi.path contains path traversal component '..'"
    services = [
        {"name": "a", "wasm": artifact("services/a.wasm", TINY_WASM)},
        {"name": "b", "wasm": artifact("services/b.wasm", TINY_WASM), "abi": artifact("/b.json", b"")},
    ]
    assert refused(pack(manifest(wasm=..., services=services))) == "services[1].abi.path is an absolute path"


def test_min_runtime_version() -> None:
    assert refused(pack(manifest(minRuntimeVersion="1.0"))) == (
        "invalid minRuntimeVersion '1.0': unexpected end of input while parsing minor version number"
    )
    assert refused(pack(manifest(minRuntimeVersion="v1.0.0"))) == (
        "invalid minRuntimeVersion 'v1.0.0': unexpected character 'v' while parsing major version number"
    )
    assert refused(pack(manifest(minRuntimeVersion="99.0.0"))) == (
        "bundle requires runtime version 99.0.0 but current runtime is 0.11.0"
    )
    # A release candidate is older than the release it leads to.
    assert refused(pack(manifest(minRuntimeVersion="0.11.0")), runtime_version="0.11.0-rc.80") == (
        "bundle requires runtime version 0.11.0 but current runtime is 0.11.0-rc.80"
    )
    ok = pack(manifest(minRuntimeVersion="0.11.0-rc.31"))
    assert mpk.open_bundle(ok, runtime_version="0.11.0-rc.80").package == "com.example.app"


def test_path_checks_come_before_the_signature() -> None:
    # Unsigned, but the coordinate check fires first, as in merod.
    assert refused(pack(manifest(package="a/b"), sign=False)) == "package contains directory separator"
    assert refused(pack(manifest(), sign=False)) == "manifest is missing required 'signature' field"


def test_artifacts_must_be_in_the_archive_exactly_once() -> None:
    man = manifest()
    assert refused(pack(man, [])) == (
        "bundle artifact 'app.wasm' named in the manifest is missing from the archive"
    )
    assert refused(pack(man, [("app.wasm", TINY_WASM), ("./app.wasm", TINY_WASM)])) == (
        "bundle archive has more than one entry at 'app.wasm'"
    )
    assert mpk.open_bundle(pack(man, [("./app.wasm", TINY_WASM)])).runnable_wasm() == TINY_WASM
    assert mpk.open_bundle(pack(man, [("a//../app.wasm", TINY_WASM), ("app.wasm", TINY_WASM)]))


def test_a_second_manifest_is_refused() -> None:
    signed = json.dumps(mpk.sign_manifest(manifest())).encode()
    data = tar_gz([("manifest.json", signed), ("app.wasm", TINY_WASM), ("./manifest.json", b"{}")])
    assert refused(data) == "bundle archive has more than one entry at 'manifest.json'"


def test_a_decoy_entry_does_not_pass_for_the_real_path() -> None:
    # #3327: a basename match let an honest decoy pass the check for the evil entry.
    man = manifest()
    evil = TINY_WASM + b"\x00"
    data = pack(man, [("decoy/app.wasm", TINY_WASM), ("app.wasm", evil)])
    assert refused(data).startswith("bundle artifact 'app.wasm' failed its integrity check")


def test_entries_outside_the_bundle_root_never_match() -> None:
    man = manifest()
    for name in ("../app.wasm", "/app.wasm", "x/../app.wasm"):
        assert refused(pack(man, [(name, TINY_WASM)])) == (
            "bundle artifact 'app.wasm' named in the manifest is missing from the archive"
        )


def test_a_bundle_without_wasm_is_refused() -> None:
    man = manifest(wasm=..., abi=artifact("abi.json", b"{}"))
    assert refused(pack(man, [("abi.json", b"{}")])) == (
        "bundle manifest declares no wasm artifact: expected a top-level 'wasm' or a non-empty 'services' list"
    )


def test_multi_service_bundles() -> None:
    services = [
        {"name": "a", "wasm": artifact("services/a.wasm", TINY_WASM)},
        {"name": "b", "wasm": artifact("services/b.wasm", OTHER_WASM)},
    ]
    # services win over a top-level wasm, which is then not even read.
    man = manifest(services=services)
    files = [("services/a.wasm", TINY_WASM), ("services/b.wasm", OTHER_WASM)]
    verified = mpk.open_bundle(pack(man, files))
    assert verified.services == ("a", "b")
    assert verified.runnable_wasm("b") == OTHER_WASM
    with pytest.raises(BundleError, match="name the one to run"):
        verified.runnable_wasm()
    with pytest.raises(BundleError, match="^service 'c' not found in bundle manifest$"):
        verified.runnable_wasm("c")
    one = mpk.open_bundle(pack(manifest(wasm=..., services=services[:1]), files[:1]))
    assert one.runnable_wasm() == TINY_WASM


def test_metadata_json_is_merods_application_metadata() -> None:
    man = manifest(
        metadata={
            "name": "Demo",
            "description": "d",
            "tags": ["x"],
            "category": "tools",
            "license": "MIT",
            "author": "A",
        },
        handlers={"slug": "demo"},
        links={"frontend": "HTTPS://app.example", "github": "javascript:alert(1)", "docs": "https://"},
    )
    verified = mpk.open_bundle(pack(man))
    assert verified.metadata_json() == (
        b'{"package":"com.example.app","version":"1.0.0","name":"Demo","description":"d",'
        b'"author":"A","tags":["x"],"license":"MIT","links":{"frontend":"HTTPS://app.example"}}'
    )
    assert mpk.open_bundle(pack(manifest(appVersion="1.0"))).record_version is None


# -- archive bombs and framing ------------------------------------------------------------


def test_the_manifest_scan_stops_at_8_mib() -> None:
    signed = json.dumps(mpk.sign_manifest(manifest())).encode()
    filler = bytes(mpk.MAX_MANIFEST_SCAN_BYTES)  # decompresses to 8 MiB from ~8 KiB
    data = tar_gz([("filler", filler), ("manifest.json", signed), ("app.wasm", TINY_WASM)])
    assert len(data) < 64 * 1024
    assert not mpk.is_bundle(data)
    assert refused(data) == "bundle archive exceeds the 8388608 byte decompressed cap"


def test_the_whole_archive_is_capped() -> None:
    signed = json.dumps(mpk.sign_manifest(manifest())).encode()
    data = tar_gz([("manifest.json", signed), ("app.wasm", TINY_WASM), ("bomb", bytes(4 << 20))])
    assert mpk.open_bundle(data).package == "com.example.app"
    assert refused(data, archive_limit=1 << 20) == "bundle archive exceeds the 1048576 byte decompressed cap"


def test_the_cap_has_merods_one_byte_of_slack() -> None:
    signed = json.dumps(mpk.sign_manifest(manifest())).encode()
    data = tar_gz([("manifest.json", signed), ("app.wasm", TINY_WASM)])
    # A walk reads every block up to and including the first all-zero one.
    consumed = len(gzip.decompress(data)) - 512
    assert mpk.open_bundle(data, archive_limit=consumed)
    # `Capped` lets the stream reach limit + 1 and fails only on the read after.
    assert mpk.open_bundle(data, archive_limit=consumed - 1)
    assert refused(data, archive_limit=consumed - 2) == (
        f"bundle archive exceeds the {consumed - 2} byte decompressed cap"
    )


def test_decompression_is_bounded_not_buffered() -> None:
    stream = mpk._GunzipStream(gzip.compress(bytes(64 << 20)), 1 << 20)
    with pytest.raises(BundleError, match="decompressed cap"):
        while stream.read(1 << 16):
            pass
    assert stream.used <= (1 << 20) + 1


def test_a_gnu_sparse_entry_is_refused() -> None:
    # core sparse_entry_tests.rs: a hole must not expand out of a tiny archive.
    signed = json.dumps(mpk.sign_manifest(manifest())).encode()
    header = bytearray(mpk._tar_header(b"app.wasm", 0, b"S"))
    header[483:495] = b"%011o\0" % (256 << 20)  # real size: 256 MiB of hole
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data = tar_gz([("manifest.json", signed), bytes(header)])
    assert refused(data) == "bundle archive entry 'app.wasm' is a GNU sparse file, which a bundle never holds"


def _pax_entry(records: bytes) -> bytes:
    return mpk._tar_header(b"PaxHeader", len(records), b"x") + records + bytes(-len(records) % 512)


def test_gnu_long_names_and_pax_paths_are_honoured() -> None:
    signed = json.dumps(mpk.sign_manifest(manifest())).encode()
    # A pax `path` overrides the name in the header that follows it.
    renamed = mpk._tar_header(b"not-the-manifest", len(signed)) + signed + bytes(-len(signed) % 512)
    data = tar_gz([_pax_entry(b"22 path=manifest.json\n"), renamed, ("app.wasm", TINY_WASM)])
    assert mpk.open_bundle(data).runnable_wasm() == TINY_WASM
    # Python's pax writer, and a POSIX ustar name split into prefix and name.
    long_dir = "d" * 120
    services = [{"name": "s", "wasm": artifact(f"{long_dir}/s.wasm", TINY_WASM)}]
    svc_manifest = json.dumps(mpk.sign_manifest(manifest(wasm=..., services=services))).encode()
    for fmt, files in (
        (tarfile.PAX_FORMAT, (("manifest.json", signed), ("app.wasm", TINY_WASM))),
        (tarfile.USTAR_FORMAT, (("manifest.json", svc_manifest), (f"{long_dir}/s.wasm", TINY_WASM))),
    ):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for name, body in files:
                info = tarfile.TarInfo(name)
                info.size = len(body)
                if fmt == tarfile.PAX_FORMAT:
                    info.pax_headers = {"comment": "x"}
                tar.addfile(info, io.BytesIO(body))
        assert mpk.open_bundle(gzip.compress(buf.getvalue())).runnable_wasm() == TINY_WASM

    # GNU long names ('L' entries), as tar-rs writes for paths over 100 bytes.
    data = mpk._tar_gz([
        ("manifest.json", json.dumps(mpk.sign_manifest(manifest(wasm=..., services=services))).encode()),
        (f"{long_dir}/s.wasm", TINY_WASM),
    ])
    assert mpk.open_bundle(data).runnable_wasm() == TINY_WASM


def test_corrupt_archives() -> None:
    good = pack(manifest())
    raw = bytearray(gzip.decompress(good))
    raw[0] ^= 0xFF  # first header's name: checksum no longer matches
    broken = gzip.compress(bytes(raw))
    assert not mpk.is_bundle(broken)
    assert refused(broken) == "archive header checksum mismatch"
    assert refused(good[: len(good) // 2]) == "unexpected end of file"
    clean = gzip.decompress(good)
    assert refused(gzip.compress(clean[:300])) == "failed to read entire block"
    assert refused(gzip.compress(clean[:600])) == "unexpected end of file"
    # Bytes after the gzip member are ignored, as flate2's GzDecoder ignores them.
    assert mpk.open_bundle(good + b"trailing junk").package == "com.example.app"


# -- files ----------------------------------------------------------------------------------


def test_load_bundle_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"^application file not found at .*nope\.mpk$"):
        mpk.load_bundle_file(tmp_path / "nope.mpk")
    wasm = tmp_path / "app.wasm"
    wasm.write_bytes(TINY_WASM)
    with pytest.raises(BundleError) as info:
        mpk.load_bundle_file(wasm)
    assert str(info.value) == f"not a signed application bundle: {wasm.resolve()}"
    out = mpk.build_dev_bundle_file(wasm)
    assert out == tmp_path / "app.dev.mpk"
    verified, data, real = mpk.load_bundle_file(out)
    assert real == out.resolve() and data == out.read_bytes()
    assert verified.package == "com.calimero.app" and verified.version == "0.1.0"
    with pytest.raises(BundleError) as info:
        mpk.load_bundle_file(out, archive_limit=100)
    assert str(info.value) == (
        f"application file at {out.resolve()} is {len(data)} bytes, exceeding the 100 byte bundle cap"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("kv_store.wasm", ("com.calimero.kv-store", "0.1.0", "kv_store")),
        ("demo-app-1.2.3.wasm", ("com.calimero.demo-app", "1.2.3", "demo-app")),
        ("chat-0.11.0-rc.2.wasm", ("com.calimero.chat", "0.11.0-rc.2", "chat")),
        ("com.example.app.wasm", ("com.example.app", "0.1.0", "com.example.app")),
        ("My App!.wasm", ("com.calimero.my-app", "0.1.0", "My App!")),
    ],
)
def test_default_coordinates(name: str, expected: tuple[str, str, str]) -> None:
    assert mpk.default_coordinates(Path("/x") / name) == expected


def test_dev_bundle_for_reuses_and_passes_bundles_through(tmp_path: Path) -> None:
    wasm = tmp_path / "kv_store.wasm"
    wasm.write_bytes(KV_STORE_WASM.read_bytes())
    cache = tmp_path / "cache"
    first = mpk.dev_bundle_for(wasm, cache)
    assert first.parent == cache and first.name.startswith("com.calimero.kv-store-0.1.0-")
    assert mpk.dev_bundle_for(wasm, cache) == first
    assert mpk.dev_bundle_for(first, cache) == first  # already a bundle
    legacy = mpk.dev_bundle_for(wasm, cache, scheme=mpk.SCHEME_UNTAGGED)
    assert legacy != first
    verified, _, _ = mpk.load_bundle_file(first)
    assert verified.application_id == "ad61b1324e760fc4a8cb2beaeb1a799e4bac774b5f78bebe66f2cb863774926f"


def test_build_refuses_what_the_node_would() -> None:
    with pytest.raises(ValueError, match="not a wasm module"):
        mpk.build_bundle(pack(manifest()), package="p", version="1.0.0")
    with pytest.raises(ValueError, match="invalid package id `a/b`"):
        mpk.build_bundle(TINY_WASM, package="a/b", version="1.0.0")
    with pytest.raises(ValueError, match="appVersion contains directory separator"):
        mpk.build_bundle(TINY_WASM, package="p", version="1/0")
    with pytest.raises(ValueError, match="invalid minRuntimeVersion"):
        mpk.build_bundle(TINY_WASM, package="p", version="1", min_runtime_version="1")
    with pytest.raises(ValueError, match="minRuntimeVersion"):
        mpk.sign_manifest({"package": "p"})


# -- canonical JSON (RFC 8785) ---------------------------------------------------------------

# RFC 8785 Appendix B: IEEE 754 bit patterns and their canonical text.
RFC8785_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "text"), RFC8785_NUMBERS)
def test_jcs_number_formatting(bits: str, text: str) -> None:
    value = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert mpk.canonicalize(value) == text.encode()


def test_jcs_integers_are_doubles() -> None:
    # serde_json_canonicalizer writes every integer through f64.
    assert mpk.canonicalize([1, -0, 2**53 + 1, 2**64 - 1, 10**21, 1.0, 100.0]) == (
        b"[1,0,9007199254740992,18446744073709552000,1e+21,1,100]"
    )
    # ...so a manifest parsed from text canonicalizes the same way.
    parsed = mpk._parse_json(b'{"n":[18446744073709551615, 1E2, 1.50, -0.0, 1e-7]}')
    assert mpk.canonicalize(parsed) == b'{"n":[18446744073709552000,100,1.5,0,1e-7]}'


def test_jcs_rfc_example() -> None:
    # RFC 8785 §3.2.3 input (the escaped solidus and \u escapes decoded by the parser).
    text = (
        b'{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        b' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        b' "literals": [null, true, false]}'
    )
    assert mpk.canonicalize(mpk._parse_json(text)) == (
        b'{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        b'"string":"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )


def test_jcs_string_escaping() -> None:
    assert mpk.canonicalize("\x00\x08\x09\x0a\x0c\x0d\x1f\x7f\u2028é😀\"\\/") == (
        '"\\u0000\\b\\t\\n\\f\\r\\u001f\x7f\u2028é😀\\"\\\\/"'.encode()
    )


def test_jcs_keys_sort_by_utf16_code_units() -> None:
    # RFC 8785 §3.2.3 sorting example: the emoji (surrogates D83D DE00) sorts
    # before U+FB33 though its code point is larger.
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    keys = list(json.loads(mpk.canonicalize(value)))
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert sorted(value) != keys  # code point order would differ


def test_jcs_nesting_and_whitespace() -> None:
    value = {"b": [{"z": 1, "a": {"y": None, "x": []}}], "a": {}}
    assert mpk.canonicalize(value) == b'{"a":{},"b":[{"a":{"x":[],"y":null},"z":1}]}'


def test_parsing_refuses_what_serde_json_refuses() -> None:
    for bad in (b'{"a": NaN}', b'["\\ud800"]', b"\xff", b"\xef\xbb\xbf{}", b"[1e400]", b"[1,]"):
        with pytest.raises(ValueError):
            mpk._parse_json(bad)
    assert mpk._parse_json(b"[" * 127 + b"]" * 127)
    with pytest.raises(ValueError, match="recursion limit"):
        mpk._parse_json(b"[" * 128 + b"]" * 128)
    # Later duplicates win, in the first one's position (serde_json preserve_order).
    assert list(mpk._parse_json(b'{"a":1,"b":2,"a":3}').items()) == [("a", 3), ("b", 2)]


# -- semver ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty string, expected a semver version"),
        ("1", "unexpected end of input while parsing major version number"),
        ("1.2", "unexpected end of input while parsing minor version number"),
        ("1.2.x", "unexpected character 'x' while parsing patch version number"),
        ("01.2.3", "invalid leading zero in major version number"),
        ("1.2.3-01", "invalid leading zero in pre-release identifier"),
        ("1.2.3-", "empty identifier segment in pre-release identifier"),
        ("1.2.3-a..b", "empty identifier segment in pre-release identifier"),
        ("1.2.3+", "empty identifier segment in build metadata"),
        ("1.2.3 ", "unexpected character ' ' after patch version number"),
        ("1.2.3-a!", "unexpected character '!' after pre-release identifier"),
        ("1x.2.3", "unexpected character 'x' after major version number"),
        ("18446744073709551616.0.0", "value of major version number exceeds u64::MAX"),
    ],
)
def test_semver_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        mpk.parse_semver(text)
    assert str(info.value) == message


def test_semver_order() -> None:
    v = mpk.parse_semver
    ordered = [
        "0.1.0", "0.11.0-alpha", "0.11.0-alpha.1", "0.11.0-alpha.beta", "0.11.0-rc.2",
        "0.11.0-rc.9", "0.11.0-rc.10", "0.11.0-rc.31", "0.11.0", "0.11.1", "1.0.0",
    ]
    for a, b in zip(ordered, ordered[1:], strict=False):
        assert v(a) < v(b) and v(b) > v(a), (a, b)
    assert not v("1.0.0+a") > v("1.0.0+b")
    assert v("1.0.0+b") > v("1.0.0+a")
    assert v("1.2.3-00a+build.007") == v("1.2.3-00a+build.007")
    assert str(v("1.2.3-rc.1+x.2")) == "1.2.3-rc.1+x.2"
