"""Downloading an application for a node, when the engine installs it by URL.

Current merod (0.11.0-rc.27 and later) cannot install from a URL: its
``install-application`` takes registry coordinates. For the nodes a run starts
itself (embedded and Docker), ``install_application`` with a ``url`` therefore
downloads the file here, checks it against ``hash`` when one is given, and
installs it from a file as a ``path`` would be, which works on every merod.

``hash`` is the SHA-256 of the file, as 64 hex digits (how current merod
writes hashes) or in base58 (how older merod wrote them).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .credentials import redact_url, redact_urls

__all__ = ["MAX_APP_BYTES", "AppFetchError", "decode_app_hash", "download_app"]

#: Largest application downloaded: merod's ``max_module_size`` (128 MiB).
MAX_APP_BYTES = 128 << 20
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class AppFetchError(Exception):
    """The application could not be downloaded or is not the one expected.

    ``key`` is the step key the problem is about (``url`` or ``hash``).
    """

    def __init__(self, message: str, *, key: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.key = key
        self.hint = hint


def decode_app_hash(value: str) -> bytes:
    """The 32 bytes of a ``hash`` written in hex or base58."""
    if _HEX64.fullmatch(value):
        return bytes.fromhex(value)
    from .node.ids import IdError, b58decode

    try:
        raw = b58decode(value)
    except IdError:
        raw = b""
    if len(raw) != 32:
        raise AppFetchError(
            f"hash {value!r} is not a SHA-256: expected 64 hex digits or the base58 of 32 bytes",
            key="hash",
            hint="e.g. the output of `sha256sum app.wasm`",
        )
    return raw


def _file_name(url: str) -> str:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")
    return name or "app.wasm"


async def download_app(
    url: str, dest_dir: Path, *, expected_hash: str | None = None, timeout: float = 60.0
) -> Path:
    """Download ``url`` into ``dest_dir`` and return the file.

    Redirects are followed (release downloads redirect). The file is checked
    against ``expected_hash`` before it is kept; nothing is written otherwise.
    """
    import httpx

    want = decode_app_hash(expected_hash) if expected_hash else None
    shown = redact_url(url)  # messages never show its password or token
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    size = 0
    try:
        async with httpx.AsyncClient(follow_redirects=True, timeout=timeout) as client:
            async with client.stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise AppFetchError(
                        f"downloading {shown} failed: HTTP {resp.status_code} {resp.reason_phrase}",
                        key="url",
                    )
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_APP_BYTES:
                        raise AppFetchError(
                            f"{shown} is larger than {MAX_APP_BYTES} bytes, merod's module size limit",
                            key="url",
                        )
                    digest.update(chunk)
                    chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise AppFetchError(
            f"downloading {shown} failed: {redact_urls(str(exc)) or type(exc).__name__}", key="url"
        ) from exc
    got = digest.digest()
    if want is not None and got != want:
        raise AppFetchError(
            f"{shown} has SHA-256 {got.hex()}, not the expected {want.hex()} ({expected_hash})",
            key="hash",
            hint="the file changed, or `hash` is of another file",
        )
    # In a folder named by the digest, under the URL's own file name: a dev
    # bundle built from it takes its default package and version from that name.
    folder = dest_dir / got.hex()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _file_name(url)
    path.write_bytes(b"".join(chunks))
    return path
