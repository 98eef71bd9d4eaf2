"""A small HTTP/1.1 client for plain ``http://`` nodes, on asyncio streams.

:class:`~calimero_workflow.client.NodeClient` sends every request of a run
through here unless the node is reached over TLS or a custom transport is
given (those go through httpx). The requests are simple (a method, a path, a
few headers, a body of known length), and answering them through httpx's
layers (request and response models, the auth and redirect flows, httpcore's
pool, anyio's streams and cancel scopes, h11's state machine) cost several
times what the node itself spent on a call.

It speaks a deliberately small part of HTTP/1.1: keep-alive connections, one
request at a time on each (no pipelining), request bodies with a
``Content-Length``, and response bodies framed by ``Content-Length``, chunked
transfer encoding or the end of the connection. No redirects, no cookies, no
content decoding (it asks for none), no proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ConnectionPool", "HttpError", "HttpTimeout", "Reply"]

#: The longest head (status line and headers) accepted from a server.
MAX_HEAD_BYTES = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})


class HttpError(Exception):
    """The server could not be reached, or broke the connection or the protocol."""


class HttpTimeout(HttpError):
    """No complete answer in time; ``phase`` is ``ConnectTimeout`` or ``ReadTimeout``."""

    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


class Reply:
    """A response: status, lower-cased headers and the whole body."""

    __slots__ = ("status_code", "reason_phrase", "headers", "content")

    def __init__(
        self, status_code: int, reason_phrase: str, headers: dict[str, str], content: bytes
    ) -> None:
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def __repr__(self) -> str:
        return f"<Reply {self.status_code} {len(self.content)} bytes>"


class _Connection:
    __slots__ = ("reader", "writer", "loop")

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()

    def usable(self) -> bool:
        """False once the server closed it (seen by the loop) or it belongs to another loop."""
        return (
            self.loop is asyncio.get_running_loop()
            and not self.writer.is_closing()
            and not self.reader.at_eof()
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Stale(Exception):
    """A reused connection closed before any byte of the answer came back."""


class ConnectionPool:
    """Keep-alive connections to one ``http://host:port`` origin.

    Concurrent requests each get a connection of their own; connections go
    back to the pool when their answer has been read in full.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not a plain http:// URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.authority = parts.netloc.rsplit("@", 1)[-1].encode("ascii")
        self._idle: list[_Connection] = []
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float,
    ) -> Reply:
        """Send one request (``target`` is the path and query) and read its answer.

        Raises:
            HttpTimeout: no complete answer within ``timeout`` seconds.
            HttpError: refused, reset, or an answer that is not HTTP/1.x.
        """
        head = self._head(method, target, headers, body)
        phase = "ConnectTimeout"
        try:
            async with asyncio.timeout(timeout):
                while True:
                    connection, reused = self._take(), True
                    if connection is None:
                        connection, reused = await self._connect(), False
                    phase = "ReadTimeout"
                    try:
                        return await self._exchange(connection, method, head, body, reused)
                    except _Stale:
                        phase = "ConnectTimeout"
                        continue
        except TimeoutError:
            raise HttpTimeout(phase) from None

    async def aclose(self) -> None:
        """Close the idle connections; those still in use close when done."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
            with contextlib.suppress(Exception):
                await connection.writer.wait_closed()

    # -- one exchange ----------------------------------------------------------------

    def _head(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None
    ) -> bytes:
        lines = [
            f"{method} {self.prefix}{target} HTTP/1.1",
            f"Host: {self.authority.decode()}",
            "Accept: */*",
            "User-Agent: calimero-workflow",
        ]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise HttpError(f"the {name} header holds a line break")
            lines.append(f"{name}: {value}")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _take(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable():
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, limit=MAX_HEAD_BYTES
            )
        except OSError as exc:
            raise HttpError(str(exc) or type(exc).__name__) from exc
        return _Connection(reader, writer)

    async def _exchange(
        self,
        connection: _Connection,
        method: str,
        head: bytes,
        body: bytes | None,
        reused: bool,
    ) -> Reply:
        keep = False
        try:
            writer = connection.writer
            writer.write(head + body if body else head)
            reply, keep = await self._read_reply(connection.reader, method, reused)
            return reply
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            raise HttpError(_describe(exc)) from exc
        except asyncio.LimitOverrunError:
            raise HttpError(
                f"the response head is larger than {MAX_HEAD_BYTES} bytes"
            ) from None
        finally:
            # Cancelled, failed or told to close: the connection's state is
            # unknown or final, so it is not reused.
            if keep and not self._closed:
                self._idle.append(connection)
            else:
                connection.close()

    async def _read_reply(
        self, reader: asyncio.StreamReader, method: str, reused: bool
    ) -> tuple[Reply, bool]:
        while True:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
                partial = getattr(exc, "partial", b"")
                if reused and not partial:
                    # The server dropped the idle connection just as we used it.
                    raise _Stale from None
                raise
            status, reason, version, headers = _parse_head(raw)
            if 100 <= status < 200:
                continue  # an interim answer (100 Continue); the real one follows
            break
        connection = headers.get("connection", "").lower()
        keep = "close" not in connection and (
            version == "HTTP/1.1" or "keep-alive" in connection
        )
        if method == "HEAD" or status in _NO_BODY_STATUS:
            content = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            content = await _read_chunked(reader)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise HttpError(
                    f"bad Content-Length {headers['content-length']!r}"
                ) from None
            content = await reader.readexactly(length)
        else:
            content = await reader.read()
            keep = False
        return Reply(status, reason, headers, content), keep


def _parse_head(raw: bytes) -> tuple[int, str, str, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise HttpError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(f"malformed response header {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(code), reason, version, headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(f"bad chunk size line {line[:40]!r}") from None
        if size == 0:
            # Trailers, if any, up to the empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the server closed the connection before the answer was complete"
    return str(exc) or type(exc).__name__
