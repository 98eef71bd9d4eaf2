"""Fetching apps from URLs without letting callers aim the node inward (SSRF).

merod's ``install-application`` refuses loopback, private, link-local, CGNAT and
``localhost`` hosts, since the URL comes from whoever can reach the admin API.
We do the same; tests opt out with ``CALIMERO_NODE_ALLOW_PRIVATE_URLS=1``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from .errors import ApiError

__all__ = ["MAX_APP_BYTES", "check_public_url", "fetch_app"]

#: Largest application we download (merod's limit is in the same range).
MAX_APP_BYTES = 64 * 1024 * 1024
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def _blocked_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT)
    )


async def check_public_url(url: str, *, allow_private: bool) -> None:
    """Refuse URLs merod's SSRF guard refuses: non-http(s), localhost, private IPs.

    Host names are resolved and every address is checked. (A name that resolves
    differently on the second lookup could still slip through; merod has the same
    window.)
    """
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ApiError(400, f"url {url!r} must be an absolute http:// or https:// URL")
    if allow_private:
        return
    host = parts.hostname.lower()
    hint = "set CALIMERO_NODE_ALLOW_PRIVATE_URLS=1 on the node to allow it for testing"
    if host == "localhost" or host.endswith(".localhost"):
        raise ApiError(
            400, f"refusing to fetch {url!r}: {host!r} is a local host; {hint}"
        )
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, parts.port or 443, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise ApiError(
                400, f"cannot resolve host {host!r} of {url!r}: {exc}"
            ) from None
        addresses = [
            ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos
        ]
    for ip in addresses:
        if _blocked_address(ip):
            msg = f"refusing to fetch {url!r}: {host!r} is a private address ({ip}); {hint}"
            raise ApiError(400, msg)


async def fetch_app(url: str, *, allow_private: bool) -> bytes:
    """GET ``url`` after :func:`check_public_url`; ApiError(400) on any failure."""
    # Imported here: every node process loads this module, few fetch an app.
    import httpx

    await check_public_url(url, allow_private=allow_private)
    chunks: list[bytes] = []
    try:
        # Redirects are not followed: a public URL must not bounce us inward.
        async with httpx.AsyncClient(follow_redirects=False, timeout=60) as client:
            async with client.stream("GET", url) as resp:
                if resp.status_code != 200:
                    msg = f"fetching {url!r} failed: HTTP {resp.status_code}"
                    raise ApiError(400, msg)
                size = 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_APP_BYTES:
                        msg = (
                            f"{url!r} is larger than the {MAX_APP_BYTES}-byte app limit"
                        )
                        raise ApiError(400, msg)
                    chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise ApiError(400, f"fetching {url!r} failed: {exc}") from None
    return b"".join(chunks)
