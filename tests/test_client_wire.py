"""The client against current merod and the merods before it, over real HTTP.

Current merod (0.11.0-rc.27 and later) is our embedded node, which serves its
shapes. Older nodes, and a current one whose registry has the app, are
:class:`StandIn` servers: a small ``http.server`` on loopback that answers
install and context routes in the shape and words of one merod era, and
records every request it saw.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from calimero_workflow import bundle
from calimero_workflow.client import (
    APP_WASM,
    LEGACY_ZERO_HASH,
    ZERO_HASH,
    NodeApiError,
    NodeClient,
    NodeUnsupportedError,
    is_zero_hash,
)
from calimero_workflow.node.ids import b58encode
from node_fixtures import KV_STORE_WASM, Cluster, cluster, kv_store_mpk, node_runtime

__all__ = ["cluster", "node_runtime"]  # fixtures used by name

APP_ID = "ab" * 32
CTX_ID = "cd" * 32

#: The request fields of each era: (install-dev fields, required), (install fields, required).
ERAS: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    # crates/server/primitives/src/admin/mod.rs at HEAD: closed bodies.
    "current": {
        "install-dev-application": (("path",), ("path",)),
        "install-application": (("package", "version"), ("package", "version")),
    },
    # 0.11.0-rc.25: ValidatedJson, metadata required, unknown fields ignored.
    "rc25": {
        "install-dev-application": (("path", "metadata", "package", "version"), ("path", "metadata")),
        "install-application": (("url", "hash", "metadata", "package", "version"), ("url", "metadata")),
    },
    # 0.8 - 0.10 (era B): axum's Json, so a body that does not fit is a plain 422.
    "era-b": {
        "install-dev-application": (("path", "metadata", "package", "version"), ("path", "metadata")),
        "install-application": (("url", "hash", "metadata", "package", "version"), ("url", "metadata")),
    },
}


class StandIn(ThreadingHTTPServer):
    """A merod of one era on loopback; ``seen`` holds ``(path, body)`` of each request.

    ``takes`` is what its install-dev-application reads from the file: None
    (it does not look, and answers :data:`APP_ID`), ``"wasm"`` (any file, its
    id the SHA-256 of the bytes, as merod before 0.11.0-rc.31 installs a raw
    ``.wasm``), or the signing schemes of the only bundles it installs, checked
    and refused with merod's texts (0.11.0-rc.31 and later).
    """

    def __init__(self, era: str, takes: str | tuple[str, ...] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.era = era
        self.takes = takes
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def dev_install(self, path: str) -> tuple[int, str]:
        """(status, application id or merod's plain-text error) for a dev install."""
        if self.takes is None:
            return 200, APP_ID
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return 500, f"application file not found at {path}"
        if self.takes == "wasm":
            return 200, hashlib.sha256(data).hexdigest()
        try:
            verified = bundle.verify_bundle(data, source=path, schemes=self.takes)
        except bundle.BundleError as exc:
            return 500, str(exc)
        return 200, verified.application_id

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def bodies(self, route: str) -> list[dict[str, Any]]:
        return [body for path, body in self.seen if path == f"/admin-api/{route}"]

    def refusal(self, route: str, body: dict[str, Any]) -> tuple[int, str] | None:
        """Why this era refuses ``body`` on ``route``, as (status, serde text)."""
        fields, required = ERAS[self.era][route]
        if self.era == "current":
            for key in body:
                if key not in fields:
                    expected = " or ".join(f"`{f}`" for f in fields)
                    return 400, f"unknown field `{key}`, expected {expected}"
        for name in required:
            if name not in body:
                return (422 if self.era == "era-b" else 400), f"missing field `{name}`"
        return None

    def state_hash(self) -> str:
        return ZERO_HASH if self.era == "current" else LEGACY_ZERO_HASH


class _Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def do_GET(self) -> None:
        self.server.seen.append((self.path, {}))
        if self.path == f"/admin-api/contexts/{CTX_ID}":
            data = {"id": CTX_ID, "applicationId": APP_ID}
            key = "contextStateHash" if self.server.era != "era-b" else "rootHash"
            self._json(200, {"data": {**data, key: self.server.state_hash()}})
        else:
            self._json(404, {"error": "no such route in this stand-in"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.seen.append((self.path, body))
        route = self.path.removeprefix("/admin-api/")
        if route not in ("install-dev-application", "install-application"):
            self._json(404, {"error": "no such route in this stand-in"})
            return
        refused = self.server.refusal(route, body)
        if refused is None and route == "install-dev-application":
            status, answer = self.server.dev_install(body["path"])
            if status == 200:
                self._json(200, {"data": {"applicationId": answer}})
            else:  # merod answers install errors in plain text
                self._send(status, answer.encode(), "text/plain; charset=utf-8")
            return
        if refused is None:
            self._json(200, {"data": {"applicationId": APP_ID}})
            return
        status, reason = refused
        text = f"Failed to deserialize the JSON body into the target type: {reason} at line 1 column 9"
        if status == 422:
            self._send(422, text.encode(), "text/plain; charset=utf-8")
        else:
            self._json(400, {"error": f"Invalid JSON data: {text}"})


@pytest.fixture
def stand_in() -> Iterator[Any]:
    servers: list[StandIn] = []

    def start(era: str, takes: str | tuple[str, ...] | None = None) -> StandIn:
        server = StandIn(era, takes)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def install_requests(caplog: pytest.LogCaptureFixture, route: str) -> int:
    """How many requests the embedded node logged on ``route``."""
    return sum(
        f"POST /admin-api/{route} " in r.getMessage()
        for r in caplog.records
        if r.name == "calimero_workflow.node.api"
    )


# -- against the embedded node: current merod --------------------------------------


async def test_dev_install_sends_the_path_alone_to_current_merod(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="calimero_workflow.node.api")
    api = await cluster.start("node-1")
    async with NodeClient(api.url, name="node-1") as node:
        first = await node.install_dev_application(str(kv_store_mpk()))
        assert first == await node.install_dev_application(str(kv_store_mpk()))
    assert install_requests(caplog, "install-dev-application") == 2


async def test_dev_install_extras_are_refused_by_current_merod_once(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="calimero_workflow.node.api")
    api = await cluster.start("node-1")
    async with NodeClient(api.url, name="node-1") as node:
        with pytest.raises(NodeUnsupportedError) as info:
            await node.install_dev_application(
                str(KV_STORE_WASM), metadata=b"{}", version="1.0.0"
            )
        assert info.value.fields == ("metadata", "version")
        assert "cannot record `metadata`, `version`" in info.value.message
        assert "remove them" in info.value.hint
        assert info.value.status == 400
        assert install_requests(caplog, "install-dev-application") == 1
        # The node's shape is known now: refused again without asking it.
        with pytest.raises(NodeUnsupportedError):
            await node.install_dev_application(str(KV_STORE_WASM), package="p")
        assert install_requests(caplog, "install-dev-application") == 1
        # A plain install still works, in one request.
        await node.install_dev_application(str(kv_store_mpk()))
    assert install_requests(caplog, "install-dev-application") == 2


async def test_install_file_bundles_a_raw_wasm_for_the_embedded_node(
    cluster: Cluster, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="calimero_workflow.node.api")
    api = await cluster.start("node-1")
    async with NodeClient(api.url, name="node-1") as node:
        installed = await node.install_file(KV_STORE_WASM, bundle_dir=tmp_path / "b")
        # asked with the raw file first: nothing told the client what the node takes
        assert install_requests(caplog, "install-dev-application") == 2
        assert installed.application_id == bundle.application_id_for_bundle(
            "com.calimero.kv-store", bundle.DEV_SIGNER_ID
        ).hex()
        assert installed.bundle is not None
        assert installed.bundle["package"] == "com.calimero.kv-store"
        assert installed.bundle["version"] == "0.1.0"
        assert installed.bundle["signer_id"] == bundle.DEV_SIGNER_ID
        assert Path(installed.bundle["path"]).parent == tmp_path / "b"
        assert node.app_format == bundle.SCHEME_V1
        # known now: straight to the bundle
        again = await node.install_file(KV_STORE_WASM, bundle_dir=tmp_path / "b", version="0.2.0")
        assert again.application_id == installed.application_id
        assert install_requests(caplog, "install-dev-application") == 3
        app = await node.get_application(installed.application_id)
        assert app is not None and app["version"] == "0.2.0"


async def test_install_file_installs_a_bundle_as_given(
    cluster: Cluster, tmp_path: Path
) -> None:
    api = await cluster.start("node-1")
    async with NodeClient(api.url, name="node-1") as node:
        node.expect_bundles(bundle.SCHEME_V1)
        installed = await node.install_file(kv_store_mpk(), bundle_dir=tmp_path / "bundles")
        assert installed.bundle is None and not (tmp_path / "bundles").exists()
        app = await node.get_application(installed.application_id)
        assert app is not None and app["source"] == kv_store_mpk().resolve().as_uri()


async def test_url_install_on_current_merod(cluster: Cluster) -> None:
    api = await cluster.start("node-1")
    async with NodeClient(api.url, name="node-1") as node:
        with pytest.raises(NodeUnsupportedError) as info:
            await node.install_application("https://example.org/kv.wasm")
        assert info.value.fields == ("url",)
        assert "takes registry coordinates" in info.value.message
        # With coordinates given, those are installed instead; the embedded
        # node has no registry, so its answer is merod's 502 for them.
        with pytest.raises(NodeApiError) as info:
            await node.install_application(
                "https://example.org/kv.wasm", package="com.example.kv", version="1.0.0"
            )
        assert info.value.status == 502 and "com.example.kv@1.0.0" in info.value.message


# -- against stand-ins of other merods -----------------------------------------------


@pytest.mark.parametrize("era", ["rc25", "era-b"])
async def test_dev_install_falls_back_to_metadata_on_older_nodes_and_remembers(
    stand_in: Any, era: str
) -> None:
    server = stand_in(era)
    async with NodeClient(server.url, name="old") as node:
        assert await node.install_dev_application("/app/a.wasm") == APP_ID
        assert await node.install_dev_application("/app/b.wasm") == APP_ID
    assert server.bodies("install-dev-application") == [
        {"path": "/app/a.wasm"},
        {"path": "/app/a.wasm", "metadata": []},
        {"path": "/app/b.wasm", "metadata": []},
    ]


async def test_dev_install_extras_reach_older_nodes_in_one_request(stand_in: Any) -> None:
    server = stand_in("rc25")
    async with NodeClient(server.url, name="old") as node:
        app_id = await node.install_dev_application(
            "/app/a.wasm", metadata=b"{}", package="com.example.kv", version="1.0.0"
        )
    assert app_id == APP_ID
    assert server.bodies("install-dev-application") == [
        {
            "path": "/app/a.wasm",
            "metadata": [123, 125],
            "package": "com.example.kv",
            "version": "1.0.0",
        }
    ]


async def test_url_install_on_older_nodes_sends_the_hash_as_they_read_it(
    stand_in: Any,
) -> None:
    server = stand_in("rc25")
    digest = bytes(range(32))
    async with NodeClient(server.url, name="old") as node:
        await node.install_application("https://example.org/kv.wasm", hash=digest.hex())
        await node.install_application("https://example.org/kv.wasm", hash=b58encode(digest))
    first, second = server.bodies("install-application")
    assert first == {
        "url": "https://example.org/kv.wasm",
        "metadata": [],
        "hash": b58encode(digest),
    }
    assert second == first


async def test_registry_install_on_current_and_older_nodes(stand_in: Any) -> None:
    current = stand_in("current")
    coords = {"package": "com.example.kv", "version": "1.0.0"}
    async with NodeClient(current.url, name="head") as node:
        assert await node.install_from_registry("com.example.kv", "1.0.0") == APP_ID
    assert current.bodies("install-application") == [coords]

    # A URL install falls back to the coordinates given with it on a node that
    # takes only those, and the next one goes straight to them.
    current.seen.clear()
    url = "https://example.org/kv.wasm"
    async with NodeClient(current.url, name="head") as node:
        for _ in range(2):
            app_id = await node.install_application(url, package="com.example.kv", version="1.0.0")
            assert app_id == APP_ID
    assert current.bodies("install-application") == [
        {"url": url, "metadata": [], **coords},
        coords,
        coords,
    ]

    old = stand_in("era-b")
    async with NodeClient(old.url, name="old") as node:
        with pytest.raises(NodeUnsupportedError) as info:
            await node.install_from_registry("com.example.kv", "1.0.0")
    assert info.value.fields == ("package", "version")
    assert "fetches a URL" in info.value.message and "`url`" in info.value.hint


def dev_paths(server: StandIn) -> list[str]:
    return [body["path"] for body in server.bodies("install-dev-application")]


async def test_install_file_sends_raw_wasm_to_a_node_that_takes_it(
    stand_in: Any, tmp_path: Path
) -> None:
    """merod before 0.11.0-rc.31 installs a raw .wasm: it keeps getting one."""
    server = stand_in("current", takes="wasm")
    async with NodeClient(server.url, name="rc30") as node:
        installed = await node.install_file(KV_STORE_WASM, bundle_dir=tmp_path)
        assert installed.application_id == hashlib.sha256(KV_STORE_WASM.read_bytes()).hexdigest()
        assert installed.bundle is None and node.app_format == APP_WASM
        await node.install_file(KV_STORE_WASM, bundle_dir=tmp_path)
    assert dev_paths(server) == [str(KV_STORE_WASM)] * 2
    assert list(tmp_path.iterdir()) == []


async def test_install_file_negotiates_a_bundle_signed_as_before_core_4307(
    stand_in: Any, tmp_path: Path
) -> None:
    """A node from rc.31 until core#4307 refuses raw wasm and the current
    signature; the client bundles, re-signs, and remembers what worked."""
    server = stand_in("current", takes=(bundle.SCHEME_UNTAGGED,))
    async with NodeClient(server.url, name="rc40") as node:
        installed = await node.install_file(
            KV_STORE_WASM, bundle_dir=tmp_path, package="com.example.kv", version="2.0.0"
        )
        expected = bundle.application_id_for_bundle("com.example.kv", bundle.DEV_SIGNER_ID).hex()
        assert installed.application_id == expected
        assert installed.bundle == {
            "package": "com.example.kv",
            "version": "2.0.0",
            "signer_id": bundle.DEV_SIGNER_ID,
            "path": dev_paths(server)[-1],
        }
        assert node.app_format == bundle.SCHEME_UNTAGGED
        raw, tagged, untagged = dev_paths(server)
        assert raw == str(KV_STORE_WASM)
        assert bundle.open_bundle(Path(tagged).read_bytes()).scheme == bundle.SCHEME_V1
        built = bundle.open_bundle(Path(untagged).read_bytes(), schemes=(bundle.SCHEME_UNTAGGED,))
        assert (built.package, built.version) == ("com.example.kv", "2.0.0")
        assert built.runnable_wasm() == KV_STORE_WASM.read_bytes()

        # Remembered: one request, straight to the scheme that worked.
        server.seen.clear()
        await node.install_file(KV_STORE_WASM, bundle_dir=tmp_path)
        assert dev_paths(server) == [
            str(bundle.dev_bundle_for(KV_STORE_WASM, tmp_path, scheme=bundle.SCHEME_UNTAGGED))
        ]


async def test_install_file_bundles_at_once_for_a_node_known_to_need_them(
    stand_in: Any, tmp_path: Path
) -> None:
    current = stand_in("current", takes=(bundle.SCHEME_V1,))
    async with NodeClient(current.url, name="head") as node:
        node.expect_bundles(bundle.SCHEME_V1)
        installed = await node.install_file(KV_STORE_WASM, bundle_dir=tmp_path)
    assert dev_paths(current) == [installed.bundle["path"]]

    # Expected wrongly (an older node): the signature is still renegotiated.
    older = stand_in("current", takes=(bundle.SCHEME_UNTAGGED,))
    async with NodeClient(older.url, name="older") as node:
        node.expect_bundles(bundle.SCHEME_V1)
        await node.install_file(KV_STORE_WASM, bundle_dir=tmp_path)
        assert node.app_format == bundle.SCHEME_UNTAGGED
    assert len(dev_paths(older)) == 2 and str(KV_STORE_WASM) not in dev_paths(older)


async def test_install_file_refuses_what_a_bundle_cannot_carry(
    stand_in: Any, tmp_path: Path
) -> None:
    server = stand_in("current", takes=(bundle.SCHEME_V1,))
    async with NodeClient(server.url, name="head") as node:
        # metadata: a bundle records its manifest's, and the node takes no other
        with pytest.raises(NodeUnsupportedError) as info:
            await node.install_file(KV_STORE_WASM, bundle_dir=tmp_path, metadata=b"{}")
        assert info.value.fields == ("metadata",)
        # a package id cargo-mero would refuse
        with pytest.raises(NodeUnsupportedError) as info:
            await node.install_file(KV_STORE_WASM, bundle_dir=tmp_path, package="my app")
        assert info.value.fields == ("package",)
        assert "invalid package id `my app`" in info.value.message
        # package and version alone are refused as request fields, then carried by the bundle
        installed = await node.install_file(KV_STORE_WASM, bundle_dir=tmp_path, version="1.0.0")
        assert installed.bundle is not None and installed.bundle["version"] == "1.0.0"
    assert server.bodies("install-dev-application")[0] == {
        "path": str(KV_STORE_WASM), "metadata": [123, 125]
    }


@pytest.mark.parametrize(
    ("era", "zero"), [("current", ZERO_HASH), ("rc25", LEGACY_ZERO_HASH), ("era-b", LEGACY_ZERO_HASH)]
)
async def test_an_uninitialised_state_hash_is_recognised_in_both_spellings(
    stand_in: Any, era: str, zero: str
) -> None:
    server = stand_in(era)
    async with NodeClient(server.url, name=era) as node:
        state = await node.context_state_hash(CTX_ID)
    assert state == zero and is_zero_hash(state)
    assert ZERO_HASH == "0" * 64 and not is_zero_hash("ab" * 32)
