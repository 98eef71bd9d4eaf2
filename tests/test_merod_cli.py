"""The ``merod`` command line: init, config files, and real node subprocesses."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import calimero_workflow
from calimero_workflow.node.config import dump_toml, load_config, write_config
from calimero_workflow.node.ids import Keypair
from calimero_workflow.node.merod import EXIT_BAD_CONFIG, EXIT_FAILURE, EXIT_OK, main
from node_fixtures import kv_store_mpk, wait_until

SRC = Path(calimero_workflow.__file__).resolve().parent.parent
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def init(home: Path, node: str, *extra: str) -> int:
    return main(["--home", str(home), "--node", node, "init", *extra])


# -- init ------------------------------------------------------------------------


def test_init_writes_a_merod_style_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = init(
        tmp_path,
        "node-1",
        "--server-host",
        "0.0.0.0",
        "--server-port",
        "2528",
        "--swarm-port",
        "2428",
        "--boot-nodes",
        f"/ip4/10.0.0.2/tcp/2428/p2p/{Keypair.generate().peer_id}",
    )
    assert code == EXIT_OK
    path = tmp_path / "node-1" / "config.toml"
    doc = tomllib.loads(path.read_text())
    keypair = Keypair.from_libp2p(doc["identity"]["keypair"])
    assert doc["identity"]["peer_id"] == keypair.peer_id
    assert doc["identity"]["peer_id"].startswith("12D3KooW")
    assert doc["server"]["listen"] == ["/ip4/0.0.0.0/tcp/2528"]
    assert doc["swarm"]["listen"] == ["/ip4/0.0.0.0/tcp/2428"]
    assert len(doc["bootstrap"]["nodes"]) == 1
    assert doc["sync"]["interval_ms"] == 1000
    assert keypair.peer_id in capsys.readouterr().out

    cfg = load_config(tmp_path / "node-1", "node-1")
    assert (cfg.server_host, cfg.server_port, cfg.swarm_port) == ("0.0.0.0", 2528, 2428)
    assert cfg.identity == keypair


def test_init_twice_is_refused_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path, "n") == EXIT_OK
    first = load_config(tmp_path / "n").identity
    assert init(tmp_path, "n") == EXIT_FAILURE
    assert "already exists; pass --force" in capsys.readouterr().err
    assert load_config(tmp_path / "n").identity == first
    assert init(tmp_path, "n", "--force") == EXIT_OK
    assert load_config(tmp_path / "n").identity != first


def test_init_ignores_auth_mode_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path, "n", "--auth-mode", "embedded") == EXIT_OK
    assert "--auth-mode embedded is ignored" in capsys.readouterr().err


def test_init_rejects_a_bad_boot_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(tmp_path, "n", "--boot-nodes", "not-a-multiaddr") == EXIT_BAD_CONFIG
    assert "not-a-multiaddr" in capsys.readouterr().err


def test_init_loads_neither_the_server_nor_the_wasm_runtime(tmp_path: Path) -> None:
    # A Docker node runs `init` in a container of its own; it must stay cheap.
    import subprocess

    probe = (
        "import sys\n"
        "from calimero_workflow.node.merod import main\n"
        f"code = main(['--home', {str(tmp_path)!r}, '--node', 'n', 'init'])\n"
        "heavy = ('asyncio', 'wasmtime', 'uvicorn', 'httpx', 'sqlite3')\n"
        "print(code, sorted(m for m in heavy if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines()[-1] == "0 []"
    assert (tmp_path / "n" / "config.toml").is_file()


def test_run_with_a_missing_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--home", str(tmp_path), "--node", "ghost", "run"]) == EXIT_BAD_CONFIG
    assert (
        "run `merod --home <dir> --node <name> init` first" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda text: text + "\n[[[", "cannot read config"),
        (lambda text: text.replace("/tcp/0", "/tcp/99999", 1), "[server] listen"),
        (
            lambda text: text.replace('peer_id = "12D3KooW', 'peer_id = "12D3KooX'),
            "peer_id",
        ),
        (
            lambda text: text.replace("interval_ms = 1000", 'interval_ms = "soon"'),
            "interval_ms",
        ),
    ],
)
def test_run_with_a_bad_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, fragment: str
) -> None:
    assert init(tmp_path, "n", "--server-port", "0", "--swarm-port", "0") == EXIT_OK
    path = tmp_path / "n" / "config.toml"
    path.write_text(edit(path.read_text()))
    assert main(["--home", str(tmp_path), "--node", "n", "run"]) == EXIT_BAD_CONFIG
    assert fragment in capsys.readouterr().err


def test_run_with_a_bad_time_limit_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert init(tmp_path, "n", "--server-port", "0", "--swarm-port", "0") == EXIT_OK
    monkeypatch.setenv("CW_WASM_TIME_LIMIT", "abc")
    assert main(["--home", str(tmp_path), "--node", "n", "run"]) == EXIT_BAD_CONFIG
    assert "merod: CW_WASM_TIME_LIMIT='abc' is not a number of seconds" in capsys.readouterr().err


def test_config_accepts_merod_extras_and_skips_quic_addresses(tmp_path: Path) -> None:
    assert init(tmp_path, "n", "--server-port", "0", "--swarm-port", "0") == EXIT_OK
    path = tmp_path / "n" / "config.toml"
    peer = Keypair.generate().peer_id
    text = path.read_text().replace(
        "nodes = []",
        f'nodes = ["/ip4/10.1.1.1/udp/2428/quic-v1/p2p/{peer}", "/dns4/node-2/tcp/2428/p2p/{peer}"]',
    )
    text += '\n[discovery.rendezvous]\nnamespace = "calimero/merobox-tests/x"\n'
    path.write_text(text)
    cfg = load_config(tmp_path / "n")
    assert len(cfg.bootstrap) == 2


def test_dump_toml_round_trips_nested_tables() -> None:
    doc = {
        "bootstrap": {
            "nodes": ["/ip4/1.2.3.4/tcp/2428/p2p/x", 'quote " and \\ backslash']
        },
        "discovery": {
            "mdns": True,
            "rendezvous": {"namespace": "calimero/merobox-tests/wf"},
        },
        "sync": {"interval_ms": 500, "ratio": 0.5},
        "only": {"nested": {"deep": {"value": "\u00e9\t"}}},
    }
    assert tomllib.loads(dump_toml(doc)) == doc


def test_real_merod_listen_lists_with_ip6_and_quic_are_accepted(tmp_path: Path) -> None:
    assert init(tmp_path, "n") == EXIT_OK
    path = tmp_path / "n" / "config.toml"
    text = path.read_text().replace(
        'listen = ["/ip4/0.0.0.0/tcp/2428"]',
        'listen = ["/ip4/0.0.0.0/udp/2428/quic-v1", "/ip6/::/tcp/2428", "/ip4/0.0.0.0/tcp/2428"]',
    )
    path.write_text(text)
    cfg = load_config(tmp_path / "n")
    assert (cfg.swarm_host, cfg.swarm_port) == ("::", 2428)


# -- run as a subprocess -----------------------------------------------------------


class MerodProcess:
    """``python -m calimero_workflow.node.merod ... run`` with its stdout read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.url = ""
        self.swarm = ""

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    pytest.fail(
                        "merod exited before it was ready:\n" + "\n".join(self.lines)
                    )
                line = raw.decode().rstrip()
                self.lines.append(line)
                if " ready: server " in line:
                    words = line.split()
                    self.url = words[words.index("server") + 1]
                    self.swarm = words[words.index("swarm") + 1]
                    return

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        assert self.proc.stdout is not None
        rest, _ = await asyncio.wait_for(self.proc.communicate(), START_TIMEOUT)
        self.lines.extend(rest.decode().splitlines())
        return int(self.proc.returncode or 0)


async def spawn(home: Path, node: str, rust_log: str | None = None) -> MerodProcess:
    env = dict(os.environ)
    env.pop("RUST_LOG", None)
    if rust_log is not None:
        env["RUST_LOG"] = rust_log
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "calimero_workflow.node.merod",
        "--home",
        str(home),
        "--node",
        node,
        "run",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    return MerodProcess(proc)


@pytest.fixture
async def processes() -> AsyncIterator[list[MerodProcess]]:
    started: list[MerodProcess] = []
    yield started
    for proc in started:
        if proc.proc.returncode is None:
            proc.proc.kill()
            await proc.proc.wait()


async def test_run_serves_health_and_exits_0_on_sigterm(
    tmp_path: Path, processes: list[MerodProcess]
) -> None:
    assert (
        init(tmp_path, "node-1", "--server-port", "0", "--swarm-port", "0") == EXIT_OK
    )
    node = await spawn(tmp_path, "node-1")
    processes.append(node)
    await node.ready()
    async with httpx.AsyncClient() as client:
        resp = await client.get(node.url + "/admin-api/health")
    assert resp.json() == {"data": {"status": "alive"}}
    assert await node.stop() == 0
    assert any("stopped" in line for line in node.lines)


@pytest.mark.parametrize(
    "rust_log, shown",
    [
        (None, ["INFO", "GET /admin-api/health"]),
        ("warn", []),
        ("merod=debug", ["INFO", "GET /admin-api/health"]),
        ("loud", ["RUST_LOG: 'loud' is not a log level", "GET /admin-api/health"]),
    ],
)
async def test_run_logs_as_rust_log_says(
    tmp_path: Path, processes: list[MerodProcess], rust_log: str | None, shown: list[str]
) -> None:
    assert init(tmp_path, "n", "--server-port", "0", "--swarm-port", "0") == EXIT_OK
    node = await spawn(tmp_path, "n", rust_log)
    processes.append(node)
    await node.ready()
    async with httpx.AsyncClient() as client:
        assert (await client.get(node.url + "/admin-api/health")).status_code == 200
    assert await node.stop() == 0
    text = "\n".join(node.lines)
    for part in shown:
        assert part in text, text
    if not shown:
        # nothing below WARNING: only the ready line the backend waits for
        assert [line for line in node.lines if " INFO " in line] == [], text


async def test_sigint_also_exits_cleanly(
    tmp_path: Path, processes: list[MerodProcess]
) -> None:
    assert init(tmp_path, "n", "--server-port", "0", "--swarm-port", "0") == EXIT_OK
    node = await spawn(tmp_path, "n")
    processes.append(node)
    await node.ready()
    node.proc.send_signal(signal.SIGINT)
    assert await node.stop() == 0


async def test_two_subprocess_nodes_bootstrapped_to_each_other_converge(
    tmp_path: Path, processes: list[MerodProcess]
) -> None:
    ports = {name: (free_port(), free_port()) for name in ("node-1", "node-2")}
    for name, (server, swarm) in ports.items():
        code = init(
            tmp_path,
            name,
            "--server-port",
            str(server),
            "--swarm-port",
            str(swarm),
            "--swarm-host",
            "127.0.0.1",
        )
        assert code == EXIT_OK
    configs = {name: load_config(tmp_path / name, name) for name in ports}
    # Wire each node to the other by editing config.toml, as merobox does.
    for name, other in (("node-1", "node-2"), ("node-2", "node-1")):
        peer = configs[other]
        assert peer.identity is not None
        addr = f"/ip4/127.0.0.1/tcp/{peer.swarm_port}/p2p/{peer.identity.peer_id}"
        write_config(
            dataclasses.replace(configs[name], bootstrap=[addr], sync_interval_ms=200)
        )

    nodes = [await spawn(tmp_path, name) for name in ports]
    processes.extend(nodes)
    for node in nodes:
        await node.ready()
    url1, url2 = nodes[0].url, nodes[1].url

    async with httpx.AsyncClient(timeout=30) as client:

        async def peered() -> bool:
            counts = [
                (await client.get(u + "/admin-api/peers")).json()["count"]
                for u in (url1, url2)
            ]
            return counts == [1, 1]

        await wait_until(peered, what="the two nodes to connect")

        async def data(url: str, path: str, body: object = None) -> dict:
            resp = (
                await client.post(url + path, json=body)
                if body is not None
                else await client.post(url + path)
            )
            assert resp.status_code == 200, resp.text
            return resp.json()["data"]

        app_id = (
            await data(
                url1,
                "/admin-api/install-dev-application",
                {"path": str(kv_store_mpk())},
            )
        )["applicationId"]
        ns = (await data(url1, "/admin-api/namespaces", {"applicationId": app_id}))[
            "namespaceId"
        ]
        ctx = (
            await data(
                url1,
                "/admin-api/contexts",
                {"applicationId": app_id, "groupId": ns, "initializationParams": []},
            )
        )["contextId"]
        invitation = (await data(url1, f"/admin-api/namespaces/{ns}/invite", {}))[
            "invitation"
        ]
        await data(url2, f"/admin-api/namespaces/{ns}/join", {"invitation": invitation})
        await data(url2, f"/admin-api/contexts/{ctx}/join")

        rpc = {"jsonrpc": "2.0", "id": 1, "method": "execute"}
        params = {
            "contextId": ctx,
            "method": "set",
            "argsJson": {"key": "k", "value": "v"},
        }
        resp = await client.post(url1 + "/jsonrpc", json={**rpc, "params": params})
        assert "result" in resp.json(), resp.text

        async def same_hash() -> bool:
            hashes = [
                (await client.get(f"{u}/admin-api/contexts/{ctx}")).json()["data"][
                    "contextStateHash"
                ]
                for u in (url1, url2)
            ]
            return hashes[0] == hashes[1]

        await wait_until(same_hash, what="equal state hashes")
        params = {"contextId": ctx, "method": "get", "argsJson": {"key": "k"}}
        resp = await client.post(url2 + "/jsonrpc", json={**rpc, "params": params})
        assert resp.json()["result"]["output"] == "v"

    assert [await n.stop() for n in nodes] == [0, 0]
    assert any("applied delta" in line for line in nodes[1].lines)


async def test_state_survives_a_killed_process(
    tmp_path: Path, processes: list[MerodProcess]
) -> None:
    assert init(tmp_path, "n", "--server-port", "0", "--swarm-port", "0") == EXIT_OK
    node = await spawn(tmp_path, "n")
    processes.append(node)
    await node.ready()
    async with httpx.AsyncClient(timeout=30) as client:
        body = {"path": str(kv_store_mpk())}
        resp = await client.post(
            node.url + "/admin-api/install-dev-application", json=body
        )
        app_id = resp.json()["data"]["applicationId"]
        resp = await client.post(
            node.url + "/admin-api/namespaces", json={"applicationId": app_id}
        )
        ns = resp.json()["data"]["namespaceId"]
        body = {"applicationId": app_id, "groupId": ns, "initializationParams": []}
        resp = await client.post(node.url + "/admin-api/contexts", json=body)
        ctx = resp.json()["data"]["contextId"]
        rpc = {"jsonrpc": "2.0", "id": 1, "method": "execute"}
        params = {
            "contextId": ctx,
            "method": "set",
            "argsJson": {"key": "k", "value": "kept"},
        }
        assert (
            "result"
            in (
                await client.post(node.url + "/jsonrpc", json={**rpc, "params": params})
            ).json()
        )

        node.proc.kill()  # no clean shutdown
        await node.proc.wait()
        again = await spawn(tmp_path, "n")
        processes.append(again)
        await again.ready()
        params = {"contextId": ctx, "method": "get", "argsJson": {"key": "k"}}
        resp = await client.post(again.url + "/jsonrpc", json={**rpc, "params": params})
        assert resp.json()["result"]["output"] == "kept"
    assert await again.stop() == 0
