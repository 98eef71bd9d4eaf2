"""Peer-to-peer behaviour of embedded nodes: delta push, catch-up and partitions.

Every wait polls with a deadline (``wait_until``/``Cluster.converged``); the
background sync runs every 100 ms here so catch-up tests finish quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import struct
from collections.abc import Callable

import pytest

from calimero_workflow import bundle
from calimero_workflow.node import ids
from calimero_workflow.node.errors import ApiError, PeerError
from calimero_workflow.node.ids import Keypair, Multiaddr
from calimero_workflow.node.server import EmbeddedNode, NodeConfig
from calimero_workflow.node.swarm import _check_proof, _Handshake
from node_fixtures import (
    KV_STORE_WASM,
    Api,
    Cluster,
    cluster,
    dev_bundle,
    node_runtime,
    wait_until,
)

__all__ = ["cluster", "node_runtime"]  # fixtures used by name


async def values(api: Api, ctx: str) -> dict[str, str]:
    return dict(await api.call(ctx, "entries"))


async def test_nodes_bootstrapped_to_one_peer_form_a_full_mesh(
    cluster: Cluster,
) -> None:
    first = await cluster.start("node-1")
    await cluster.start("node-2", bootstrap=[first.node.swarm_multiaddr])
    await cluster.start("node-3", bootstrap=[first.node.swarm_multiaddr])
    # Nodes 2 and 3 learn of each other through peer exchange with node 1.
    await cluster.connected()


async def test_handshake_refuses_a_peer_with_the_wrong_id(cluster: Cluster) -> None:
    first = await cluster.start("node-1")
    port = first.node.swarm.port
    impostor = f"/ip4/127.0.0.1/tcp/{port}/p2p/{Keypair.generate().peer_id}"
    second = await cluster.start("node-2", bootstrap=[impostor])
    await second.node.swarm.dial_missing()
    assert second.node.peer_count == 0
    assert first.node.peer_count == 0


async def test_three_nodes_converge(cluster: Cluster) -> None:
    for name in ("node-1", "node-2", "node-3"):
        await cluster.start(name)
    await cluster.connected()
    ctx = await cluster.shared_context("node-1", "node-2", "node-3")
    apis = [cluster.api(n) for n in ("node-1", "node-2", "node-3")]

    for i, api in enumerate(apis):
        await api.call(ctx, "set", {"key": f"from-{i}", "value": str(i)})
    await apis[1].call(ctx, "remove", {"key": "from-0"})

    await cluster.converged(ctx)
    expected = {"from-1": "1", "from-2": "2"}

    async def all_agree() -> bool:
        return all([await values(a, ctx) == expected for a in apis])

    await wait_until(all_agree, what="every node to hold the same entries")


async def test_concurrent_writes_on_two_nodes_converge(cluster: Cluster) -> None:
    node1 = await cluster.start("node-1")
    node2 = await cluster.start("node-2")
    await cluster.connected()
    ctx = await cluster.shared_context("node-1", "node-2")

    async def writes(api: Api, tag: str) -> None:
        for i in range(10):
            await api.call(ctx, "set", {"key": "same", "value": f"{tag}-{i}"})
            await api.call(ctx, "set", {"key": f"{tag}-{i}", "value": tag})

    await asyncio.gather(writes(node1, "a"), writes(node2, "b"))
    await cluster.converged(ctx)
    left, right = await values(node1, ctx), await values(node2, ctx)
    assert left == right
    assert left["same"] in {"a-9", "b-9"}
    assert len(left) == 21


async def test_a_restarted_node_catches_up(cluster: Cluster) -> None:
    node1 = await cluster.start("node-1")
    node2 = await cluster.start("node-2")
    await cluster.connected()
    ctx = await cluster.shared_context("node-1", "node-2")
    await node1.call(ctx, "set", {"key": "before", "value": "1"})
    await cluster.converged(ctx)

    await node2.node.stop()
    for i in range(5):
        await node1.call(ctx, "set", {"key": f"while-down-{i}", "value": str(i)})
    await node1.call(ctx, "remove", {"key": "before"})

    # A new node object on the same home, as a backend restart does.
    config = NodeConfig(
        name="node-2",
        home=node2.node.home,
        bootstrap=[node1.node.swarm_multiaddr],
        sync_interval_ms=100,
    )
    revived = EmbeddedNode(config, runtime=cluster.runtime)
    await revived.start()
    cluster.nodes["node-2"] = revived
    assert revived.peer_id == node2.node.peer_id

    await cluster.converged(ctx)
    again = cluster.api("node-2")
    assert await values(again, ctx) == {f"while-down-{i}": str(i) for i in range(5)}


async def test_a_stopped_node_that_restarts_without_bootstrap_redials_known_peers(
    cluster: Cluster,
) -> None:
    node1 = await cluster.start("node-1")
    node2 = await cluster.start("node-2")
    await cluster.connected()
    ctx = await cluster.shared_context("node-1", "node-2")

    await node1.node.stop()
    await node2.call(ctx, "set", {"key": "k", "value": "v"})
    # Node 1 has no bootstrap list, yet it remembers node 2's address.
    await node1.node.start()
    await cluster.converged(ctx)
    assert await node1.call(ctx, "get", {"key": "k"}) == "v"


async def test_a_partitioned_node_diverges_then_converges_after_heal(
    cluster: Cluster,
) -> None:
    for name in ("node-1", "node-2", "node-3"):
        await cluster.start(name)
    await cluster.connected()
    ctx = await cluster.shared_context("node-1", "node-2", "node-3")
    node1, node3 = cluster.api("node-1"), cluster.api("node-3")
    await cluster.converged(ctx)

    node3.node.swarm.partitioned = True
    assert node3.node.peer_count == 0
    await node1.call(ctx, "set", {"key": "majority", "value": "m"})
    await node1.call(ctx, "set", {"key": "contested", "value": "from-1"})
    await node3.call(ctx, "set", {"key": "minority", "value": "n"})
    await node3.call(ctx, "set", {"key": "contested", "value": "from-3"})

    # The connected side converges without node 3; node 3 stays different.
    majority = await cluster.converged(ctx, "node-1", "node-2")
    await cluster.api("node-1").data("POST", "/admin-api/contexts/sync")
    assert await node3.state_hash(ctx) != majority
    assert await node3.call(ctx, "get", {"key": "majority"}) is None
    assert node3.node.peer_count == 0

    node3.node.swarm.partitioned = False
    await cluster.connected()
    await cluster.converged(ctx)
    merged = await values(node1, ctx)
    assert merged == await values(node3, ctx)
    assert merged["majority"] == "m" and merged["minority"] == "n"
    assert merged["contested"] in {"from-1", "from-3"}


async def test_admin_sync_pulls_missed_deltas(cluster: Cluster) -> None:
    # A slow background sync, so the explicit sync route does the catch-up.
    node1 = await cluster.start("node-1", sync_interval_ms=600_000)
    node2 = await cluster.start("node-2", sync_interval_ms=600_000)
    await cluster.connected()
    ctx = await cluster.shared_context("node-1", "node-2")
    await cluster.converged(ctx)

    node2.node.swarm.partitioned = True
    await node1.call(ctx, "set", {"key": "missed", "value": "x"})
    node2.node.swarm.partitioned = False
    await cluster.connected()
    await node2.data("POST", f"/admin-api/contexts/sync/{ctx}")
    assert await node2.call(ctx, "get", {"key": "missed"}) == "x"
    assert await node1.state_hash(ctx) == await node2.state_hash(ctx)


async def test_a_late_joiner_gets_a_snapshot_and_later_deltas(cluster: Cluster) -> None:
    node1 = await cluster.start("node-1")
    await cluster.start("node-2")
    await cluster.connected()
    ctx = await cluster.shared_context("node-1", "node-2")
    for i in range(20):
        await node1.call(ctx, "set", {"key": f"k{i}", "value": str(i)})

    node3 = await cluster.start("node-3")
    await cluster.connected()
    ns = (await node1.data("GET", f"/admin-api/contexts/{ctx}"))["groupId"]
    await node3.join(ns, await node1.invite(ns))
    await node3.join_context(ctx)
    assert await node3.call(ctx, "len") == 20

    await node3.call(ctx, "set", {"key": "late", "value": "yes"})
    await cluster.converged(ctx)
    assert await cluster.api("node-2").call(ctx, "get", {"key": "late"}) == "yes"


async def test_dns4_bootstrap_addresses_are_dialed(cluster: Cluster) -> None:
    first = await cluster.start("node-1")
    addr = f"/dns4/localhost/tcp/{first.node.swarm.port}/p2p/{first.node.peer_id}"
    await cluster.start("node-2", bootstrap=[addr])
    await cluster.connected()


def test_pure_python_signer_matches_cryptography() -> None:
    # Ed25519 signatures are deterministic, so both signers must agree bit for bit.
    pytest.importorskip("cryptography")
    for seed in range(4):
        secret = bytes([seed]) * 32
        pair = Keypair.from_secret(secret)
        message = b"calimero" * seed
        assert ids._pure_public(secret) == pair.public
        assert ids._pure_sign(secret, pair.public, message) == pair.sign(message)
        assert ids.verify_signature(pair.public, pair.sign(message), message)
        assert not ids.verify_signature(pair.public, pair.sign(message), message + b"!")


def test_the_agreement_key_is_the_x25519_form_of_the_identity() -> None:
    # What X25519 derives from the same seed (RFC 8032 §5.1.5, RFC 7748 §5).
    x25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.x25519")
    for seed in range(1, 5):
        pair = Keypair.from_secret(bytes([seed]) * 32)
        scalar = hashlib.sha512(pair.secret).digest()[:32]
        expected = x25519.X25519PrivateKey.from_private_bytes(scalar).public_key()
        assert ids.x25519_public_key(pair.public) == expected.public_bytes_raw()
    with pytest.raises(ids.IdError):
        ids.x25519_public_key(b"short")


async def test_nodes_work_without_the_cryptography_package(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ids, "Ed25519PrivateKey", None)
    await cluster.start("node-1")
    await cluster.start("node-2")
    await cluster.connected()
    ctx = await cluster.shared_context("node-1", "node-2")
    await cluster.api("node-2").call(ctx, "set", {"key": "k", "value": "v"})
    await cluster.converged(ctx)


async def test_a_node_woken_just_as_it_stops_still_stops(
    tmp_path, node_runtime
) -> None:
    # Python 3.11's asyncio.wait_for drops a cancellation that arrives just
    # after the awaited event fired; a background loop waiting that way would
    # then never end, and stop() would wait for it forever.
    node = EmbeddedNode(NodeConfig(name="n", home=tmp_path / "n"), runtime=node_runtime)
    await node.start()
    await asyncio.sleep(0.05)  # both loops are waiting for their next round
    node.service.replicator.peer_connected("a-peer")
    node.swarm.partitioned = False  # wakes the dialer
    await asyncio.sleep(0)  # the wake-ups land, the loops not yet resumed
    stopping = asyncio.ensure_future(node.stop())
    done, _ = await asyncio.wait({stopping}, timeout=10)
    if not done:  # a second cancellation gets a stuck loop out, for the teardown
        stopping.cancel()
        await asyncio.gather(stopping, return_exceptions=True)
        await node.stop()
    assert done, "stop() did not return: a background loop kept running"
    assert not node.running


async def test_stopping_a_node_keeps_the_callers_cancellation(
    tmp_path, node_runtime
) -> None:
    node = EmbeddedNode(NodeConfig(name="n", home=tmp_path / "n"), runtime=node_runtime)
    await node.start()
    try:
        stopper = asyncio.ensure_future(node.service.replicator.stop())
        await asyncio.sleep(0)  # stop() now waits for the loop task to end
        stopper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopper
    finally:
        await node.stop()


async def test_a_start_cut_short_anywhere_stops_cleanly_and_frees_its_ports(
    tmp_path, node_runtime
) -> None:
    # A run cancelled (or out of time) while its nodes start cancels start()
    # at any of its awaits; the node must stop and let the cancellation go
    # on, never fail with a closed socket inside a live server.
    seen_running = False
    for turns in range(40):
        node = EmbeddedNode(
            NodeConfig(name="n", home=tmp_path / f"n{turns}"), runtime=node_runtime
        )
        starting = asyncio.ensure_future(node.start())
        for _ in range(turns):
            await asyncio.sleep(0)
        starting.cancel()
        try:
            await starting
        except asyncio.CancelledError:
            assert not node.running
        else:  # started before the cancellation landed
            seen_running = True
            assert node.running
            await node.stop()
        # nothing left listening: the port can be taken again
        port = int(node.url.rsplit(":", 1)[1])
        if port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port))
    assert seen_running  # the loop reached past the end of start()


# -- namespace members follow the namespace's contexts (merod's auto-join) ----------


async def contexts_of(api: Api) -> set[str]:
    return {c["id"] for c in (await api.data("GET", "/admin-api/contexts"))["contexts"]}


async def test_joining_a_namespace_joins_its_existing_contexts(cluster: Cluster) -> None:
    node1 = await cluster.start("node-1")
    node2 = await cluster.start("node-2")
    await cluster.connected()
    app_id = await node1.install_kv_store()
    ns = await node1.create_namespace(app_id)
    first = await node1.create_context(app_id, ns)
    second = await node1.create_context(app_id, ns)
    await node1.call(first, "set", {"key": "before", "value": "join"})

    # Node 2 has not installed the app and never calls join_context.
    joined = await node2.join(ns, await node1.invite(ns))
    me = joined["memberIdentity"]
    assert await contexts_of(node2) == {first, second}
    # The join took the state: a read works at once and the hashes agree.
    assert await node2.call(first, "get", {"key": "before"}) == "join"
    assert await node2.state_hash(first) == await node1.state_hash(first)
    assert await node2.state_hash(second) == await node1.state_hash(second)
    # The member key is the namespace identity, held by node 2, known to node 1.
    for ctx in (first, second):
        owned = await node2.data("GET", f"/admin-api/contexts/{ctx}/identities-owned")
        assert owned == {"identities": [me]}
        members = await node1.data("GET", f"/admin-api/contexts/{ctx}/identities")
        assert me in members["identities"] and len(members["identities"]) == 2

    # join_context afterwards answers as for any joined context, every time.
    assert await node2.join_context(first) == {"contextId": first, "memberPublicKey": me}
    assert await node2.join_context(first) == {"contextId": first, "memberPublicKey": me}

    await node2.call(second, "set", {"key": "from", "value": "joiner"})
    await cluster.converged(second)
    assert await node1.call(second, "get", {"key": "from"}) == "joiner"


async def test_a_context_created_later_is_joined_by_every_member(cluster: Cluster) -> None:
    # Slow background rounds: the members join on the creator's announcement.
    nodes = [
        await cluster.start(f"node-{i}", sync_interval_ms=600_000) for i in (1, 2, 3)
    ]
    node1, node2, node3 = nodes
    await cluster.connected()
    app_id = await node1.install_kv_store()
    ns = await node1.create_namespace(app_id)
    identities = {}
    for node in (node2, node3):
        identities[node] = (await node.join(ns, await node1.invite(ns)))["memberIdentity"]
    assert await contexts_of(node2) == set()

    # A member that is not the namespace's creator creates the context; node 3
    # has not installed the app and fetches it as it joins.
    assert await node2.install_kv_store() == app_id
    ctx = await node2.create_context(app_id, ns)
    for node in (node1, node3):
        assert ctx in await contexts_of(node)
        owned = await node.data("GET", f"/admin-api/contexts/{ctx}/identities-owned")
        assert len(owned["identities"]) == 1
    owned3 = await node3.data("GET", f"/admin-api/contexts/{ctx}/identities-owned")
    assert owned3 == {"identities": [identities[node3]]}
    assert await node3.join_context(ctx) == {
        "contextId": ctx,
        "memberPublicKey": identities[node3],
    }

    await node3.call(ctx, "set", {"key": "k", "value": "v"})
    state = await cluster.converged(ctx)
    assert state == await node2.state_hash(ctx)
    assert await node1.call(ctx, "get", {"key": "k"}) == "v"


async def test_a_member_that_was_cut_off_joins_new_contexts_after_the_heal(
    cluster: Cluster,
) -> None:
    node1 = await cluster.start("node-1")
    node2 = await cluster.start("node-2")
    await cluster.connected()
    app_id = await node1.install_kv_store()
    ns = await node1.create_namespace(app_id)
    await node2.join(ns, await node1.invite(ns))

    node2.node.swarm.partitioned = True
    ctx = await node1.create_context(app_id, ns)
    await node1.call(ctx, "set", {"key": "while", "value": "away"})
    assert ctx not in await contexts_of(node2)
    node2.node.swarm.partitioned = False

    async def joined() -> bool:
        return ctx in await contexts_of(node2)

    await wait_until(joined, what="node 2 to join the context after the heal")
    await cluster.converged(ctx)
    assert await node2.call(ctx, "get", {"key": "while"}) == "away"


async def test_a_deleted_context_stays_left_until_join_context(cluster: Cluster) -> None:
    node1 = await cluster.start("node-1")
    node2 = await cluster.start("node-2")
    await cluster.connected()
    app_id = await node1.install_kv_store()
    ns = await node1.create_namespace(app_id)
    ctx = await node1.create_context(app_id, ns)
    me = (await node2.join(ns, await node1.invite(ns)))["memberIdentity"]
    await node2.data("DELETE", f"/admin-api/contexts/{ctx}")

    # Catch-up rounds (background and requested) do not bring it back.
    await node2.data("POST", "/admin-api/contexts/sync")
    await node1.call(ctx, "set", {"key": "k", "value": "v"})
    await node2.data("POST", "/admin-api/contexts/sync")
    assert (await node2.get(f"/admin-api/contexts/{ctx}")).status_code == 404

    assert await node2.join_context(ctx) == {"contextId": ctx, "memberPublicKey": me}
    assert await node2.call(ctx, "get", {"key": "k"}) == "v"
    await cluster.converged(ctx)


async def test_nodes_stopped_while_they_mesh_leave_no_failed_task(
    tmp_path, node_runtime
) -> None:
    # a run cancelled just after its nodes started stops them while their
    # handshakes and peer exchanges are still in flight
    import gc

    loop = asyncio.get_running_loop()
    failures: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: failures.append(context["message"]))
    try:
        for round_ in range(6):
            nodes: list[EmbeddedNode] = []
            for i in range(8):
                config = NodeConfig(
                    name=f"n{i}",
                    home=tmp_path / f"r{round_}" / f"n{i}",
                    bootstrap=[n.swarm_multiaddr for n in nodes],
                )
                node = EmbeddedNode(config, runtime=node_runtime)
                await node.start()
                nodes.append(node)
            await asyncio.sleep(0.005 * round_)
            for node in nodes:
                await node.stop()
            await asyncio.sleep(0.05)  # stray handshakes finish
            gc.collect()  # a failed task nobody awaited is reported when collected
    finally:
        loop.set_exception_handler(previous)
    assert failures == []


async def test_a_fetched_bundle_is_verified_by_the_receiver(cluster: Cluster) -> None:
    """A node that joins a context whose app it lacks fetches the bundle from a
    member and verifies it itself: a bundle that derives another id, or that
    fails verification, is not installed, whatever the peer's row says."""
    node1 = await cluster.start("node-1")
    node2 = await cluster.start("node-2")
    await cluster.connected()
    app_id = await node1.install_kv_store()
    ns_id = await node1.create_namespace(app_id)
    await node2.join(ns_id, await node1.invite(ns_id))
    store1 = node1.node.service.store
    ns2 = node2.node.service.store.namespaces[ns_id]
    row = store1.apps[app_id]
    good_blob = row.blob_id

    other = bundle.build_bundle(
        KV_STORE_WASM.read_bytes(), package="com.example.other", version="0.1.0"
    )
    row.blob_id = store1.put_blob(other.data)
    with pytest.raises(ApiError) as info:
        await node2.node.service.sync.fetch_application(app_id, ns2)
    assert info.value.status == 503
    assert f"application mismatch: expected {app_id}, got {other.application_id}" in str(info.value)

    signed = bundle.build_bundle(KV_STORE_WASM.read_bytes(), package="com.calimero.kv-store", version="0.1.0")
    forged = {**signed.manifest, "appVersion": "6.6.6"}
    row.blob_id = store1.put_blob(
        bundle._tar_gz([("manifest.json", json.dumps(forged).encode()), ("app.wasm", KV_STORE_WASM.read_bytes())])
    )
    with pytest.raises(ApiError) as info:
        await node2.node.service.sync.fetch_application(app_id, ns2)
    assert "Ed25519 signature verification failed" in str(info.value)
    assert app_id not in node2.node.service.store.apps

    row.blob_id = good_blob
    await node2.node.service.sync.fetch_application(app_id, ns2)
    fetched = node2.node.service.store.apps[app_id]
    assert (fetched.blob_id, fetched.size, fetched.signer_id) == (
        good_blob, row.size, bundle.DEV_SIGNER_ID
    )
    assert fetched.source == row.source


async def test_a_fetched_bundle_never_replaces_a_newer_version(cluster: Cluster, tmp_path) -> None:
    """merod's rule for a bundle a peer names: equal or newer versions replace the row."""
    node1 = await cluster.start("node-1")
    node2 = await cluster.start("node-2")
    await cluster.connected()
    v1 = dev_bundle(KV_STORE_WASM, version="1.0.0")
    v2 = dev_bundle(KV_STORE_WASM, version="2.0.0")
    app_id = (await node1.data("POST", "/admin-api/install-dev-application", {"path": str(v1)}))[
        "applicationId"
    ]
    assert (await node2.data("POST", "/admin-api/install-dev-application", {"path": str(v2)}))[
        "applicationId"
    ] == app_id
    ns_id = await node1.create_namespace(app_id)
    await node2.join(ns_id, await node1.invite(ns_id))
    ns2 = node2.node.service.store.namespaces[ns_id]
    await node2.node.service.sync.fetch_application(app_id, ns2)
    assert node2.node.service.store.apps[app_id].version == "2.0.0"


# -- the handshake: who may claim a peer id, and what may come before it ----------

#: The handshake's wire name, written out: the tests speak the protocol themselves.
PROTO = "calimero-embedded-swarm/2"


def _frame(msg: dict) -> bytes:
    data = json.dumps(msg).encode()
    return struct.pack(">I", len(data)) + data


async def _recv(reader: asyncio.StreamReader) -> dict | None:
    """The next frame, or None once the node closed the connection."""
    try:
        (length,) = struct.unpack(">I", await reader.readexactly(4))
        return dict(json.loads(await reader.readexactly(length)))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def _relay(victim: EmbeddedNode, other: EmbeddedNode) -> dict | None:
    """The reviewer's attack: pose as ``other`` to ``victim`` with signatures
    that ``other`` makes for an attacker posing as ``victim``.

    Dial ``victim`` claiming ``other`` and take its challenge; dial ``other``
    claiming ``victim``, presenting that challenge as our own; hand ``victim``
    whatever ``other`` signed. Answers what ``victim`` sent after our proof:
    None when it closed the connection, a frame when it took us for ``other``.
    """
    v_reader, v_writer = await asyncio.open_connection("127.0.0.1", victim.swarm.port)
    o_reader, o_writer = await asyncio.open_connection("127.0.0.1", other.swarm.port)
    try:
        async with asyncio.timeout(20):  # bounds a failure only
            hello = {"t": "hello", "proto": PROTO, "peer": other.peer_id, "port": 1}
            v_writer.write(_frame(hello | {"nonce": os.urandom(32).hex()}))
            challenge = await _recv(v_reader)
            assert challenge is not None and challenge.get("peer") == victim.peer_id
            hello = {"t": "hello", "proto": PROTO, "peer": victim.peer_id, "port": 1}
            o_writer.write(_frame(hello | {"nonce": challenge["nonce"]}))
            answer = await _recv(o_reader)
            assert answer is not None and answer.get("peer") == other.peer_id
            # ``other`` signs nothing for an unproven dialer any more; a
            # signature it did make is the one the attack forwards.
            sig = answer.get("sig") or "00" * 64
            v_writer.write(_frame({"t": "auth", "sig": sig}))
            return await _recv(v_reader)
    finally:
        for writer in (v_writer, o_writer):
            writer.close()


async def test_a_relay_attacker_is_taken_for_neither_node(cluster: Cluster) -> None:
    first = (await cluster.start("node-1", bootstrap=[])).node
    second = (await cluster.start("node-2", bootstrap=[])).node
    for victim, other in ((second, first), (first, second)):
        reply = await _relay(victim, other)
        assert reply is None, f"{victim.config.name} took the attacker for the other"
        assert not victim.swarm.is_connected(other.peer_id)
        assert not other.swarm.is_connected(victim.peer_id)
    assert first.peer_count == second.peer_count == 0


async def _stream_until_closed(
    writer: asyncio.StreamWriter, total: int, chunk: int = 1024 * 1024
) -> int:
    """Write ``total`` bytes; answers how many went out before the peer closed."""
    sent = 0
    data = b"x" * chunk
    with contextlib.suppress(ConnectionError):
        while sent < total:
            writer.write(data)
            await writer.drain()
            sent += chunk
    return sent


async def test_an_oversized_frame_before_the_handshake_closes_the_connection(
    cluster: Cluster,
) -> None:
    node = (await cluster.start("node-1", bootstrap=[])).node
    reader, writer = await asyncio.open_connection("127.0.0.1", node.swarm.port)
    try:
        async with asyncio.timeout(30):  # bounds a failure only
            # 200 MiB is under the limit for a peer that proved its id, but
            # nobody has proved anything yet: the node must not take it in.
            size = 200 * 1024 * 1024
            writer.write(struct.pack(">I", size))
            sent = await _stream_until_closed(writer, size)
            assert await _recv(reader) is None
    finally:
        writer.close()
    # What the socket buffers hold before the node's close is noticed, not the frame.
    assert sent < size // 4, f"the node read {sent} bytes of an unauthenticated frame"
    assert node.peer_count == 0



def _prove(key: Keypair, shake: _Handshake, role: str) -> dict:
    return {"t": "auth", "sig": key.sign(shake.transcript(role)).hex()}


def test_a_handshake_proof_verifies_only_for_its_own_handshake() -> None:
    key = Keypair.generate()
    me = key.peer_id
    listener, other = Keypair.generate().peer_id, Keypair.generate().peer_id
    mine, theirs = os.urandom(32), os.urandom(32)
    proof = _prove(key, _Handshake(me, listener, mine, theirs, 2428), "dialer")
    _check_proof(_Handshake(me, listener, mine, theirs, 2428), "dialer", proof)

    # Handshakes that each differ from the one signed in one thing only.
    elsewhere = {
        # the same parties and nonces with us as the listener: only the role differs
        "the other role": (_Handshake(listener, me, mine, theirs, 2428), "listener"),
        "another listener": (_Handshake(me, other, mine, theirs, 2428), "dialer"),
        "another dialer nonce": (
            _Handshake(me, listener, os.urandom(32), theirs, 2428),
            "dialer",
        ),
        "another listener nonce": (
            _Handshake(me, listener, mine, os.urandom(32), 2428),
            "dialer",
        ),
        "the nonces swapped": (_Handshake(me, listener, theirs, mine, 2428), "dialer"),
        "another port": (_Handshake(me, listener, mine, theirs, 2429), "dialer"),
        "another signer": (_Handshake(other, listener, mine, theirs, 2428), "dialer"),
    }
    for what, (shake, role) in elsewhere.items():
        with pytest.raises(PeerError, match="does not verify"):
            _check_proof(shake, role, proof)
            pytest.fail(f"a proof replayed with {what} was taken")


async def _dial_as(
    node: EmbeddedNode, peer: str, nonce: bytes, proof: Callable[[bytes], dict]
) -> tuple[dict, dict | None, asyncio.StreamReader, asyncio.StreamWriter]:
    """Dial ``node`` claiming ``peer`` and send ``proof(its nonce)``. Answers its
    hello and what it sent next (None: it closed), and the open connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.swarm.port)
    async with asyncio.timeout(20):  # bounds a failure only
        hello = {"t": "hello", "proto": PROTO, "peer": peer, "port": 2428}
        writer.write(_frame(hello | {"nonce": nonce.hex()}))
        theirs = await _recv(reader)
        assert theirs is not None and theirs["peer"] == node.peer_id
        writer.write(_frame(proof(bytes.fromhex(theirs["nonce"]))))
        return theirs, await _recv(reader), reader, writer


async def test_a_signature_from_one_handshake_is_refused_in_another(
    cluster: Cluster,
) -> None:
    first = (await cluster.start("node-1", bootstrap=[])).node
    second = (await cluster.start("node-2", bootstrap=[])).node
    key = Keypair.generate()
    me, mine = key.peer_id, os.urandom(32)
    shakes: list[_Handshake] = []

    def genuine(theirs: bytes) -> dict:
        shakes.append(_Handshake(me, first.peer_id, mine, theirs, 2428))
        return _prove(key, shakes[-1], "dialer")

    # A genuine handshake with node 1: our proof gets us in, node 1's comes back.
    _, first_proof, reader, writer = await _dial_as(first, me, mine, genuine)
    assert first_proof is not None
    _check_proof(shakes[-1], "listener", first_proof)
    assert first.swarm.is_connected(me)
    # Past the handshake, frames over its 64 KiB limit are fine.
    writer.write(_frame({"t": "peers", "id": 1, "body": {"pad": "x" * 200_000}}))
    reply: dict | None = {}
    while reply is not None and reply.get("re") != 1:
        reply = await _recv(reader)
    assert reply is not None and "addresses" in reply["body"]
    writer.close()
    our_proof = _prove(key, shakes[-1], "dialer")

    replays = [
        # our proof again, to node 1, in a new handshake with our same nonce
        (first, me, our_proof),
        # our proof, made for node 1, to node 2
        (second, me, our_proof),
        # node 1's proof (made as listener, for us), to node 2 as node 1's own
        (second, first.peer_id, first_proof),
    ]
    for node, claimed, proof in replays:
        _, answer, _, writer = await _dial_as(node, claimed, mine, lambda _, p=proof: p)
        writer.close()
        assert answer is None, f"{node.config.name} took a replayed proof of {claimed}"
        assert not node.swarm.is_connected(claimed)
    assert second.peer_count == 0


class _FakeListener:
    """A listening socket the test answers by hand, one connection at a time."""

    def __init__(self) -> None:
        self.accepted: asyncio.Queue[
            tuple[asyncio.StreamReader, asyncio.StreamWriter]
        ] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> _FakeListener:
        self.server = await asyncio.start_server(
            lambda r, w: self.accepted.put_nowait((r, w)), "127.0.0.1", 0
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        while not self.accepted.empty():  # e.g. the node redialing meanwhile
            self.writers.append(self.accepted.get_nowait()[1])
        for writer in self.writers:
            writer.close()
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def next(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(20):  # bounds a failure only
            reader, writer = await self.accepted.get()
        self.writers.append(writer)
        return reader, writer


async def test_a_dialing_node_takes_the_listener_only_once_its_proof_verifies(
    cluster: Cluster,
) -> None:
    node = (await cluster.start("node-1", bootstrap=[])).node
    key = Keypair.generate()
    public = ids.public_key_from_peer_id(node.peer_id)
    async with _FakeListener() as fake:
        addr = Multiaddr("127.0.0.1", fake.port, key.peer_id)

        async def answer_hello() -> tuple[
            asyncio.StreamReader, asyncio.StreamWriter, _Handshake
        ]:
            reader, writer = await fake.next()
            hello = await _recv(reader)
            assert hello is not None and hello["peer"] == node.peer_id
            mine = os.urandom(32)
            ours = {"t": "hello", "proto": PROTO, "peer": key.peer_id, "port": 1}
            writer.write(_frame(ours | {"nonce": mine.hex()}))
            theirs = bytes.fromhex(hello["nonce"])
            shake = _Handshake(node.peer_id, key.peer_id, theirs, mine, hello["port"])
            # the node proves itself first, in the dialer's role
            proof = await _recv(reader)
            assert proof is not None
            assert ids.verify_signature(
                public, bytes.fromhex(proof["sig"]), shake.transcript("dialer")
            )
            return reader, writer, shake

        # The right key, but the node's own transcript signed back: refused.
        dial = asyncio.ensure_future(node.swarm._dial(addr))
        reader, writer, shake = await answer_hello()
        writer.write(_frame(_prove(key, shake, "dialer")))
        await dial
        assert await _recv(reader) is None
        assert not node.swarm.is_connected(key.peer_id)

        # Until the listener's proof arrives the node has no such peer, then it has.
        dial = asyncio.ensure_future(node.swarm._dial(addr))
        reader, writer, shake = await answer_hello()
        assert not dial.done() and not node.swarm.is_connected(key.peer_id)
        writer.write(_frame(_prove(key, shake, "listener")))
        await dial
        assert node.swarm.is_connected(key.peer_id)
        writer.close()


async def test_an_oversized_frame_from_a_listener_ends_the_dial(
    cluster: Cluster,
) -> None:
    node = (await cluster.start("node-1", bootstrap=[])).node
    async with _FakeListener() as fake:
        addr = Multiaddr("127.0.0.1", fake.port, Keypair.generate().peer_id)
        dial = asyncio.ensure_future(node.swarm._dial(addr))
        reader, writer = await fake.next()
        assert await _recv(reader) is not None  # the node's hello
        size = 200 * 1024 * 1024
        writer.write(struct.pack(">I", size))
        async with asyncio.timeout(30):  # bounds a failure only
            sent = await _stream_until_closed(writer, size)
            await dial
    assert sent < size // 4, f"the node read {sent} bytes of an unauthenticated frame"
    assert node.peer_count == 0


async def test_malformed_hellos_close_the_connection(cluster: Cluster) -> None:
    node = (await cluster.start("node-1", bootstrap=[])).node
    loop = asyncio.get_running_loop()
    failures: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: failures.append(context["message"]))
    good = {
        "t": "hello",
        "proto": PROTO,
        "peer": Keypair.generate().peer_id,
        "nonce": os.urandom(32).hex(),
        "port": 1,
    }
    frames = {
        "nested too deeply": b"[" * 60_000,
        "not an object": b"[1]",
        "not JSON": b"\xff",
        "an older protocol": json.dumps(good | {"proto": "calimero-embedded-swarm/1"}),
        "no protocol": json.dumps({k: v for k, v in good.items() if k != "proto"}),
        "not a peer id": json.dumps(good | {"peer": "12D3KooWnope"}),
        "a long peer id": json.dumps(good | {"peer": "1" * 60_000}),
        "a short nonce": json.dumps(good | {"nonce": "00" * 8}),
    }
    try:
        for what, data in frames.items():
            raw = data.encode() if isinstance(data, str) else data
            reader, writer = await asyncio.open_connection("127.0.0.1", node.swarm.port)
            writer.write(struct.pack(">I", len(raw)) + raw)
            async with asyncio.timeout(20):  # bounds a failure only
                assert await _recv(reader) is None, f"a hello with {what} was answered"
            writer.close()
    finally:
        loop.set_exception_handler(previous)
    assert failures == []


async def test_a_listener_that_refuses_the_connection_sends_no_proof(
    cluster: Cluster,
) -> None:
    # The embedded backend's partition guard refuses a connection as it is
    # registered, after the handshake: the dialer must not be told yes.
    from calimero_workflow.backends.embedded import _guard_swarm

    node = (await cluster.start("node-1", bootstrap=[])).node
    key = Keypair.generate()
    blocked: set[str] = set()
    _guard_swarm(node.swarm, blocked)
    mine = os.urandom(32)

    def genuine(theirs: bytes) -> dict:
        shake = _Handshake(key.peer_id, node.peer_id, mine, theirs, 2428)
        return _prove(key, shake, "dialer")

    blocked.add(key.peer_id)
    _, answer, _, writer = await _dial_as(node, key.peer_id, mine, genuine)
    writer.close()
    assert answer is None
    blocked.clear()
    _, answer, _, writer = await _dial_as(node, key.peer_id, mine, genuine)
    writer.close()
    assert answer is not None and answer["t"] == "auth"
