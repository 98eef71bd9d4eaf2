"""NodeClient over plain HTTP: the keep-alive client of calimero_workflow.http1.

Each test runs a real loopback server that answers with exact bytes, so the
framings, connection reuse and failures a node can produce are all seen the
way the client sees them on a socket.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from calimero_workflow.client import NodeApiError, NodeClient, NodeConnectionError

Answer = Callable[["Seen"], Awaitable[bytes | None]]


class Seen:
    """One request as the server read it."""

    def __init__(self, head: bytes, body: bytes, connection: int) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.method, self.target, _ = lines[0].split(" ")
        self.headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        }
        self.body = body
        self.connection = connection


class Server:
    """Answers each request with ``answer(seen)``; ``None`` closes without answering."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.seen: list[Seen] = []
        self.connections = 0
        self.close_after_answer = False
        self.server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                seen = Seen(head, await reader.readexactly(length), number)
                self.seen.append(seen)
                raw = await self.answer(seen)
                if raw is None:
                    return
                writer.write(raw)
                await writer.drain()
                if self.close_after_answer or b"connection: close" in raw.lower():
                    return
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(answer: Answer) -> Server:
        server = Server(answer)
        server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        assert server.server is not None
        server.server.close()


def reply(body: bytes, *, status: str = "200 OK", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


HEALTH = json.dumps({"data": {"status": "alive"}}).encode()


async def test_requests_share_one_keep_alive_connection(serve) -> None:
    async def answer(seen: Seen) -> bytes:
        return reply(HEALTH)

    server = await serve(answer)
    async with NodeClient(server.url, name="n1") as client:
        for _ in range(3):
            assert await client.health() == {"status": "alive"}
    assert server.connections == 1
    assert [s.target for s in server.seen] == ["/admin-api/health"] * 3
    assert server.seen[0].headers["host"] == server.url.removeprefix("http://")


async def test_json_body_token_and_path_prefix_are_sent(serve) -> None:
    async def answer(seen: Seen) -> bytes:
        return reply(b'{"jsonrpc":"2.0","id":1,"result":{"output":"ok","logs":["l"]}}')

    server = await serve(answer)
    async with NodeClient(server.url + "/node-7/", name="n1", token="t0k") as client:
        result = await client.execute("ctx", "set", {"key": "é", "value": 1})
    assert (result.output, result.logs) == ("ok", ["l"])
    seen = server.seen[0]
    assert (seen.method, seen.target) == ("POST", "/node-7/jsonrpc")
    assert seen.headers["authorization"] == "Bearer t0k"
    assert seen.headers["content-type"] == "application/json"
    envelope = json.loads(seen.body)
    assert envelope["params"] == {"contextId": "ctx", "method": "set", "argsJson": {"key": "é", "value": 1}}
    assert int(seen.headers["content-length"]) == len(seen.body)


async def test_chunked_answer_with_trailer(serve) -> None:
    payload = json.dumps({"data": {"applicationId": "app-1" * 100}}).encode()
    chunks = b"".join(
        f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n"
        for part in (payload[:7], payload[7:300], payload[300:])
    )

    async def answer(seen: Seen) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            + chunks
            + b"0\r\nx-trailer: 1\r\n\r\n"
        )

    server = await serve(answer)
    async with NodeClient(server.url, name="n1") as client:
        assert await client.install_dev_application("/x.wasm") == "app-1" * 100
        assert await client.install_dev_application("/x.wasm") == "app-1" * 100
    assert server.connections == 1


async def test_answer_ended_by_close_then_a_new_connection(serve) -> None:
    async def answer(seen: Seen) -> bytes:
        return b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + HEALTH

    server = await serve(answer)
    async with NodeClient(server.url, name="n1") as client:
        assert await client.health() == {"status": "alive"}
        assert await client.health() == {"status": "alive"}
    assert server.connections == 2


async def test_interim_and_bodiless_answers(serve) -> None:
    async def answer(seen: Seen) -> bytes:
        if seen.target.startswith("/admin-api/contexts/sync"):
            return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
        return reply(HEALTH)

    server = await serve(answer)
    async with NodeClient(server.url, name="n1") as client:
        assert await client.sync("ctx") is None
        assert await client.health() == {"status": "alive"}
    assert server.connections == 1


async def test_error_status_is_an_api_error(serve) -> None:
    async def answer(seen: Seen) -> bytes:
        return reply(b'{"error":"no such context"}', status="404 Not Found")

    server = await serve(answer)
    async with NodeClient(server.url, name="n1") as client:
        with pytest.raises(NodeApiError) as info:
            await client.get_context("nope")
    assert info.value.status == 404
    assert "no such context" in info.value.message


async def test_connection_closed_by_the_node_after_answering_is_replaced(serve) -> None:
    # The node drops each connection right after answering, without saying
    # so; the client sees the close before it would reuse the connection.
    async def answer(seen: Seen) -> bytes:
        return reply(HEALTH)

    server = await serve(answer)
    server.close_after_answer = True
    async with NodeClient(server.url, name="n1") as client:
        for _ in range(3):
            assert await client.health() == {"status": "alive"}
    assert (server.connections, len(server.seen)) == (3, 3)


async def test_request_on_a_connection_the_node_just_dropped_is_sent_again(serve) -> None:
    # The race of an idle timeout: the node hangs up on a kept-alive
    # connection just as the next request arrives on it, answering nothing.
    async def answer(seen: Seen) -> bytes | None:
        first_on_its_connection = sum(s.connection == seen.connection for s in server.seen) == 1
        return reply(HEALTH) if first_on_its_connection else None

    server = await serve(answer)
    async with NodeClient(server.url, name="n1") as client:
        for _ in range(3):
            assert await client.health() == {"status": "alive"}
    assert server.connections == 3
    assert [s.connection for s in server.seen] == [1, 1, 2, 2, 3]


async def test_node_that_hangs_up_without_answering(serve) -> None:
    async def answer(seen: Seen) -> None:
        return None

    server = await serve(answer)
    async with NodeClient(server.url, name="n1") as client:
        with pytest.raises(NodeConnectionError) as info:
            await client.health()
    assert "unreachable" in info.value.message
    assert info.value.transient


async def test_slow_node_times_out(serve) -> None:
    async def answer(seen: Seen) -> bytes:
        await asyncio.sleep(1)
        return reply(HEALTH)

    server = await serve(answer)
    async with NodeClient(server.url, name="n1") as client:
        with pytest.raises(NodeConnectionError) as info:
            await client.health(timeout=0.2)
    assert "did not answer GET /admin-api/health in time (ReadTimeout)" in info.value.message


async def test_refused_connection_is_unreachable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with NodeClient(f"http://127.0.0.1:{port}", name="gone") as client:
        with pytest.raises(NodeConnectionError) as info:
            await client.health()
    assert f"node gone is unreachable at http://127.0.0.1:{port}" in info.value.message


async def test_not_http_is_a_connection_error(serve) -> None:
    async def answer(seen: Seen) -> bytes:
        return b"SSH-2.0-OpenSSH\r\n\r\n"

    server = await serve(answer)
    async with NodeClient(server.url, name="n1") as client:
        with pytest.raises(NodeConnectionError) as info:
            await client.health()
    assert "not an HTTP/1.x response" in info.value.message


async def test_concurrent_requests_get_their_own_answers(serve) -> None:
    async def answer(seen: Seen) -> bytes:
        key = json.loads(seen.body)["params"]["argsJson"]["key"]
        await asyncio.sleep(0.001 * (int(key) % 5))
        body = {"jsonrpc": "2.0", "id": 1, "result": {"output": key}}
        return reply(json.dumps(body).encode())

    server = await serve(answer)
    async with NodeClient(server.url, name="n1") as client:
        outputs = await asyncio.gather(
            *(client.execute("ctx", "get", {"key": str(i)}) for i in range(20))
        )
        assert [o.output for o in outputs] == [str(i) for i in range(20)]
        # Connections came back to the pool: a second round opens none.
        opened = server.connections
        await asyncio.gather(*(client.execute("ctx", "get", {"key": "1"}) for _ in range(opened)))
        assert server.connections == opened


async def test_upload_sends_raw_bytes(serve) -> None:
    async def answer(seen: Seen) -> bytes:
        return reply(json.dumps({"data": {"blobId": "b", "size": len(seen.body)}}).encode())

    server = await serve(answer)
    blob = bytes(range(256)) * 1000
    async with NodeClient(server.url, name="n1") as client:
        assert await client.upload_blob(blob, context_id="c1") == {"blobId": "b", "size": len(blob)}
    seen = server.seen[0]
    assert (seen.method, seen.target, seen.body) == ("PUT", "/admin-api/blobs?context_id=c1", blob)
    assert "content-type" not in seen.headers


async def test_a_given_transport_goes_through_httpx() -> None:
    # https:// nodes and custom transports use httpx; the replies look the same.
    import httpx

    seen: list[tuple[str, str | None]] = []

    async def app(scope, receive, send) -> None:
        headers = dict(scope["headers"])
        seen.append((scope["path"], headers.get(b"authorization", b"").decode() or None))
        status, body = (200, HEALTH) if scope["path"].endswith("/health") else (404, b'{"error":"gone"}')
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    client = NodeClient("https://127.0.0.1", name="n1", transport=httpx.ASGITransport(app=app))
    async with client:
        assert await client.health() == {"status": "alive"}
        client.set_token("abc")
        with pytest.raises(NodeApiError) as info:
            await client.get_context("c")
    assert info.value.status == 404 and "gone" in info.value.message
    assert seen == [("/admin-api/health", None), ("/admin-api/contexts/c", "Bearer abc")]


async def test_a_token_with_a_line_break_is_refused_before_sending(serve) -> None:
    async def answer(seen: Seen) -> bytes:
        return reply(HEALTH)

    server = await serve(answer)
    async with NodeClient(server.url, name="n1", token="t\r\nX-Injected: 1") as client:
        with pytest.raises(NodeConnectionError) as info:
            await client.peers_count()
    assert "line break" in info.value.message
    assert server.seen == []


async def test_closing_the_client_mid_request_closes_that_connection_after_it(serve) -> None:
    release = asyncio.Event()

    async def answer(seen: Seen) -> bytes:
        await release.wait()
        return reply(HEALTH)

    server = await serve(answer)
    client = NodeClient(server.url, name="n1")
    pending = asyncio.create_task(client.health())
    while not server.seen:
        await asyncio.sleep(0.005)
    await client.aclose()
    release.set()
    assert await pending == {"status": "alive"}
    # Not kept for reuse: the next request opens a connection of its own.
    assert await client.health() == {"status": "alive"}
    assert server.connections == 2
