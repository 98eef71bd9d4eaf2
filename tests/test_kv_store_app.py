"""The committed kv-store app (apps/kv-store/kv_store.wasm) under the runtime.

Single-node behaviour first (results, logs, events, errors, SDK-style panics),
then replicas exchanging artifacts through ``__calimero_sync_next``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import struct

import pytest

from calimero_workflow.node.runtime import AppModule, Event

# KvNode asserts inside; let pytest rewrite those before the import below.
pytest.register_assert_rewrite("wasm_fixtures")
from wasm_fixtures import KvNode  # noqa: E402

pytest_plugins = ["wasm_fixtures"]

ALICE = b"A" * 32
BOB = b"B" * 32
CAROL = b"C" * 32


@pytest.fixture
def node(kv_module: AppModule) -> KvNode:
    replica = KvNode(kv_module, ALICE)
    replica.call("init")
    return replica


def panic_message(
    replica: KvNode, method: str, args: object = None, *, raw: bytes | None = None
) -> str:
    outcome = replica.run(method, args, raw=raw)
    assert outcome.failure is not None, f"{method} should have panicked"
    assert outcome.failure.kind == "Panic", outcome.failure
    assert outcome.writes == {} and outcome.root_hash is None
    return outcome.failure.message


# --- single node ------------------------------------------------------------------------


def test_module_shape(kv_module: AppModule) -> None:
    assert kv_module.methods == {
        "init",
        "set",
        "get",
        "get_result",
        "get_unchecked",
        "entries",
        "len",
        "remove",
        "clear",
    }
    assert kv_module.abi is not None
    assert kv_module.abi["schema_version"] == "wasm-abi/1"
    assert [m["name"] for m in kv_module.abi["methods"]][:2] == ["init", "set"]


def test_init_commits_and_refuses_to_run_twice(kv_module: AppModule) -> None:
    replica = KvNode(kv_module, ALICE)
    outcome = replica.run("init")
    assert outcome.failure is None
    assert outcome.returns is None
    assert len(outcome.root_hash or b"") == 32
    assert outcome.artifact[:5] == b"\x00\x01\x00\x00\x00"  # tag 0, one action
    message = panic_message(replica, "init")
    assert message.startswith(
        "guest panicked: Cannot initialize over already existing state. at "
    )


@pytest.mark.parametrize(
    "method, args",
    [
        ("get", {"key": "a"}),
        ("set", {"key": "a", "value": "b"}),
        ("entries", None),
        ("len", None),
        ("remove", {"key": "a"}),
        ("clear", None),
        ("get_result", {"key": "a"}),
    ],
)
def test_methods_on_an_uninitialised_store_panic(
    kv_module: AppModule, method: str, args: object
) -> None:
    message = panic_message(KvNode(kv_module, ALICE), method, args)
    assert message.startswith(
        "guest panicked: Failed to find or read app state at apps/kv-store/kv_store.c:"
    )


def test_set_then_get(node: KvNode) -> None:
    outcome = node.run("set", {"key": "a", "value": "b"})
    assert outcome.failure is None
    assert outcome.returns == b"null"
    assert outcome.logs == ['Setting key: "a" to value: "b"']
    assert outcome.events == [Event("Inserted", b'{"key":"a","value":"b"}')]
    assert len(outcome.root_hash or b"") == 32 and outcome.artifact

    get = node.run("get", {"key": "a"})
    assert get.returns == b'"b"'
    assert get.logs == ['Getting key: "a"']
    assert get.root_hash is None and get.artifact == b"" and get.writes == {}, (
        "reads never commit"
    )
    assert node.call("get", {"key": "missing"}) is None


def test_overwrite_emits_updated(node: KvNode) -> None:
    node.call("set", {"key": "a", "value": "1"})
    outcome = node.run("set", {"key": "a", "value": "2"})
    assert outcome.events == [Event("Updated", b'{"key":"a","value":"2"}')]
    assert node.call("get", {"key": "a"}) == "2"


def test_entries_and_len(node: KvNode) -> None:
    assert node.call("entries") == {}
    assert node.call("len") == 0
    for key in ["b", "a", "c"]:
        node.call("set", {"key": key, "value": key.upper()})
    entries = node.run("entries")
    assert entries.returns == b'{"a":"A","b":"B","c":"C"}'  # byte order of keys
    assert entries.logs == ["Getting all entries"]
    assert node.call("len") == 3


def test_remove_returns_the_old_value(node: KvNode) -> None:
    node.call("set", {"key": "a", "value": "b"})
    outcome = node.run("remove", {"key": "a"})
    assert outcome.returns == b'"b"'
    assert outcome.logs == ['Removing key: "a"']
    assert outcome.events == [Event("Removed", b'{"key":"a"}')]
    assert outcome.root_hash is not None
    assert node.call("get", {"key": "a"}) is None
    assert node.call("len") == 0
    assert node.call("remove", {"key": "a"}) is None


def test_clear(node: KvNode) -> None:
    for i in range(5):
        node.call("set", {"key": f"k{i}", "value": "v"})
    outcome = node.run("clear")
    assert outcome.returns == b"null"
    assert outcome.events == [Event("Cleared", b"null")]
    assert outcome.logs == ["Clearing all entries"]
    assert node.call("entries") == {} and node.call("len") == 0
    node.call("set", {"key": "k1", "value": "back"})
    assert node.call("entries") == {"k1": "back"}


def test_get_result_err_and_ok(node: KvNode) -> None:
    missing = node.run("get_result", {"key": "zzz"})
    assert missing.failure is None
    assert missing.is_error
    assert json.loads(missing.returns or b"") == {"kind": "NotFound", "data": "zzz"}
    node.call("set", {"key": "zzz", "value": "found"})
    found = node.run("get_result", {"key": "zzz"})
    assert not found.is_error and found.returns == b'"found"'


def test_get_unchecked_panics_with_location(node: KvNode) -> None:
    message = panic_message(node, "get_unchecked", {"key": "nope"})
    assert message.startswith(
        "guest panicked: key not found at apps/kv-store/kv_store.c:"
    )
    line, column = message.rsplit(":", 2)[1:]
    assert int(line) > 0 and int(column) > 0
    node.call("set", {"key": "nope", "value": "yes"})
    assert node.call("get_unchecked", {"key": "nope"}) == "yes"


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'{"key":1,"value":"b"}', "invalid type: integer `1`, expected a string"),
        (b'{"key":"a","value":null}', "invalid type: null, expected a string"),
        (b'{"key":"a","value":[1]}', "invalid type: sequence, expected a string"),
        (
            b'{"key":"a","value":1.5}',
            "invalid type: floating point `1.5`, expected a string",
        ),
        (b'{"key":"a"}', "missing field `value`"),
        (b"{}", "missing field `key`"),
        (b'{"key":"a","key":"b","value":"c"}', "duplicate field `key`"),
        (b'{"key":"a","value":"b"} x', "trailing characters"),
        (b'{"key":"a","value":"b",}', "trailing comma"),
        (b'{"key":"a" "value":"b"}', "expected `,` or `}`"),
        (b"", "EOF while parsing a value"),
        (b'"key"', "invalid type"),
        (b'{"key":"\\x"}', "invalid escape"),
        (b'{"key":"\\ud800","value":"b"}', "hex escape"),
        (b'{"key":"\\udc00","value":"b"}', "lone trailing surrogate"),
        (b'{"key":"a\x01","value":"b"}', "control character"),
        (b'{"key":"\xff","value":"b"}', "invalid unicode code point"),
    ],
)
def test_bad_arguments_panic_like_the_sdk(
    node: KvNode, raw: bytes, reason: str
) -> None:
    message = panic_message(node, "set", raw=raw)
    assert message.startswith("guest panicked: Failed to deserialize input from JSON: ")
    assert reason in message


def test_json_escapes_and_unknown_fields(node: KvNode) -> None:
    raw = (
        b'{"extra":{"nested":[1,-2.5e3,true,false,null,"s"]},'
        b'"key":"q\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00","value":"\\u0000x"}'
    )
    outcome = node.run("set", raw=raw)
    assert outcome.failure is None, outcome.failure
    key = 'q"\\/\b\f\n\r\té\U0001f600'
    assert node.call("get", {"key": key}) == "\0x"
    # Logs use Rust's {:?} form, events and results serde_json's escaping.
    assert outcome.logs == [
        'Setting key: "q\\"\\\\/\\u{8}\\u{c}\\n\\r\\té😀" to value: "\\0x"'
    ]
    assert json.loads(outcome.events[0].data) == {"key": key, "value": "\0x"}
    assert node.call("entries") == {key: "\0x"}


def test_methods_without_parameters_ignore_their_input(node: KvNode) -> None:
    assert node.run("len", raw=b"not json at all").returns == b"0"


def test_read_only_calls_leave_storage_alone(node: KvNode) -> None:
    node.call("set", {"key": "a", "value": "b"})
    for method, args in [
        ("get", {"key": "a"}),
        ("entries", None),
        ("len", None),
        ("get_result", {"key": "x"}),
        ("get_unchecked", {"key": "a"}),
    ]:
        outcome = node.run(method, args)
        assert outcome.writes == {} and outcome.root_hash is None, method


def test_root_hash_is_a_function_of_state(kv_module: AppModule) -> None:
    # Same writes with the same clock and executor -> the same root.
    one, two = KvNode(kv_module, ALICE), KvNode(kv_module, ALICE)
    for replica in (one, two):
        replica.call("init")
        replica.call("set", {"key": "a", "value": "b"})
    assert one.root == two.root and one.storage == two.storage
    two.call("set", {"key": "a", "value": "c"})
    assert one.root != two.root


# --- replicas -------------------------------------------------------------------------------


def replicas(
    kv_module: AppModule, *names: bytes, clocks: tuple[int, ...] = ()
) -> list[KvNode]:
    """The first replica runs init; the others apply its artifact."""
    nodes = [
        KvNode(kv_module, name, clocks[i] if i < len(clocks) else 1_000)
        for i, name in enumerate(names)
    ]
    genesis = nodes[0].run("init").artifact
    for other in nodes[1:]:
        other.apply(genesis)
    return nodes


def assert_converged(*nodes: KvNode) -> None:
    roots = {n.root for n in nodes}
    assert len(roots) == 1, [r.hex()[:12] if r else None for r in roots]
    entries = [n.call("entries") for n in nodes]
    assert all(e == entries[0] for e in entries), entries
    assert all(n.storage == nodes[0].storage for n in nodes)


def test_init_artifact_initialises_a_peer(kv_module: AppModule) -> None:
    a, b = replicas(kv_module, ALICE, BOB)
    assert_converged(a, b)
    assert b.call("len") == 0


def test_sync_applies_a_peers_writes(kv_module: AppModule) -> None:
    a, b = replicas(kv_module, ALICE, BOB)
    artifact = a.run("set", {"key": "a", "value": "b"}).artifact
    outcome = b.apply(artifact)
    assert outcome.artifact == b"", "applied deltas are not re-broadcast"
    assert outcome.events == [] and outcome.returns is None
    assert b.call("get", {"key": "a"}) == "b"
    assert_converged(a, b)
    # And the other way round.
    b_artifact = b.run("set", {"key": "x", "value": "y"}).artifact
    a.apply(b_artifact)
    assert_converged(a, b)


def test_concurrent_writes_to_the_same_key_converge_in_any_order(
    kv_module: AppModule,
) -> None:
    a, b = replicas(kv_module, ALICE, BOB, clocks=(5_000, 5_000))
    from_a = a.run("set", {"key": "k", "value": "from A"}).artifact
    from_b = b.run("set", {"key": "k", "value": "from B"}).artifact
    a.apply(from_b)
    b.apply(from_a)
    assert_converged(a, b)
    # Equal timestamps: the writer id breaks the tie (B > A).
    assert a.call("get", {"key": "k"}) == "from B"


def test_the_later_write_wins(kv_module: AppModule) -> None:
    a, b = replicas(kv_module, ALICE, BOB, clocks=(9_000, 1_000))
    from_a = a.run("set", {"key": "k", "value": "later"}).artifact
    from_b = b.run("set", {"key": "k", "value": "earlier"}).artifact
    b.apply(from_a)
    a.apply(from_b)
    assert_converged(a, b)
    assert b.call("get", {"key": "k"}) == "later"


def test_a_local_write_after_seeing_a_newer_one_still_wins(
    kv_module: AppModule,
) -> None:
    # B's clock lags far behind A's, but B overwrites a value it has seen.
    a, b = replicas(kv_module, ALICE, BOB, clocks=(9_000, 1_000))
    b.apply(a.run("set", {"key": "k", "value": "A's"}).artifact)
    a.apply(b.run("set", {"key": "k", "value": "B's correction"}).artifact)
    assert_converged(a, b)
    assert a.call("get", {"key": "k"}) == "B's correction"


@pytest.mark.parametrize("remove_is_later", [True, False])
def test_remove_racing_a_set(kv_module: AppModule, remove_is_later: bool) -> None:
    a, b = replicas(kv_module, ALICE, BOB)
    b.apply(a.run("set", {"key": "k", "value": "v0"}).artifact)
    # Concurrent: A overwrites while B removes, neither seeing the other.
    a.now, b.now = (3_000, 4_000) if remove_is_later else (4_000, 3_000)
    a_set = a.run("set", {"key": "k", "value": "v1"}).artifact
    b_remove = b.run("remove", {"key": "k"}).artifact
    a.apply(b_remove)
    b.apply(a_set)
    assert_converged(a, b)
    expected = None if remove_is_later else "v1"
    assert a.call("get", {"key": "k"}) == expected
    assert a.call("len") == (0 if remove_is_later else 1)


def test_remove_of_an_unseen_key_beats_an_older_set(kv_module: AppModule) -> None:
    a, b = replicas(kv_module, ALICE, BOB, clocks=(1_000, 2_000))
    a_set = a.run("set", {"key": "k", "value": "old"}).artifact
    b_remove = b.run("remove", {"key": "k"}).artifact  # B never saw the set
    b.apply(a_set)
    a.apply(b_remove)
    assert_converged(a, b)
    assert a.call("get", {"key": "k"}) is None


def test_reapplying_an_artifact_is_harmless(kv_module: AppModule) -> None:
    a, b = replicas(kv_module, ALICE, BOB)
    first = a.run("set", {"key": "k", "value": "1"}).artifact
    second = a.run("set", {"key": "k", "value": "2"}).artifact
    b.apply(first)
    b.apply(second)
    root = b.root
    for artifact in (second, first, second):
        b.apply(artifact)
        assert b.root == root
    assert b.call("get", {"key": "k"}) == "2"
    a.apply(second)  # a node seeing its own delta again
    assert_converged(a, b)


def test_snapshot_copy_then_further_deltas(kv_module: AppModule) -> None:
    (a,) = replicas(kv_module, ALICE)
    for i in range(10):
        a.call("set", {"key": f"k{i}", "value": str(i)})
    joiner = a.snapshot(CAROL)
    assert_converged(a, joiner)
    a_delta = a.run("set", {"key": "k3", "value": "changed"}).artifact
    j_delta = joiner.run("remove", {"key": "k4"}).artifact
    j_clear = joiner.run("clear").artifact
    j_after = joiner.run("set", {"key": "fresh", "value": "new"}).artifact
    joiner.apply(a_delta)
    for artifact in (j_delta, j_clear, j_after):
        a.apply(artifact)
    assert_converged(a, joiner)
    # The clear came after A's change in the joiner's (later) clock: only "fresh" survives.
    assert a.call("entries") == {"fresh": "new"}


def test_three_replicas_converge_under_every_delivery_order(
    kv_module: AppModule,
) -> None:
    nodes = replicas(kv_module, ALICE, BOB, CAROL, clocks=(1_000, 1_000, 1_003))
    a, b, c = nodes
    ops = [
        (a, a.run("set", {"key": "x", "value": "a1"}).artifact),
        (b, b.run("set", {"key": "x", "value": "b1"}).artifact),
        (c, c.run("remove", {"key": "x"}).artifact),
        (a, a.run("set", {"key": "y", "value": "a2"}).artifact),
        (b, b.run("clear").artifact),
    ]
    roots = set()
    for order in itertools.permutations(range(len(ops))):
        fresh = [n.snapshot(n.executor) for n in nodes]
        # Replay: each replica applies everyone else's artifacts in this order.
        for replica, original in zip(fresh, nodes, strict=True):
            for i in order:
                source, artifact = ops[i]
                if source is not original:
                    replica.apply(artifact)
        # Snapshots were taken after the local writes; applying covers the rest.
        assert len({r.root for r in fresh}) == 1
        roots.add(fresh[0].root)
    assert len(roots) == 1


def test_random_operations_converge(kv_module: AppModule) -> None:
    rng = random.Random(20260822)
    nodes = replicas(kv_module, ALICE, BOB, CAROL, clocks=(1_000, 1_050, 990))
    log: list[tuple[KvNode, bytes]] = []
    for step in range(120):
        replica = rng.choice(nodes)
        key = rng.choice("pqrs")
        roll = rng.random()
        if roll < 0.6:
            outcome = replica.run("set", {"key": key, "value": f"{step}"})
        elif roll < 0.9:
            outcome = replica.run("remove", {"key": key})
        else:
            outcome = replica.run("clear")
        assert outcome.failure is None
        log.append((replica, outcome.artifact))
    for replica in nodes:
        incoming = [artifact for source, artifact in log if source is not replica]
        rng.shuffle(incoming)
        for artifact in incoming + incoming[:10]:
            replica.apply(artifact)
    assert_converged(*nodes)


@pytest.mark.parametrize(
    "artifact",
    [
        b"",
        b"\x02\x00\x00\x00\x00",  # tag 2 (CausalActions) is not understood
        b"\x00\x01\x00\x00\x00",  # count says 1, no action follows
        b"\x00\x01\x00\x00\x00\x07",  # unknown action
        b"\x00\x00\x00\x00\x00trailing",
        b"\x00\x01\x00\x00\x00\x01\xff\xff\xff\xff",  # key length past the end
    ],
)
def test_bad_artifacts_fail_sync_and_change_nothing(
    node: KvNode, artifact: bytes
) -> None:
    node.call("set", {"key": "a", "value": "b"})
    before = dict(node.storage), node.root
    message = panic_message(node, "__calimero_sync_next", raw=artifact)
    assert message.startswith("guest panicked: fatal: sync failed at ")
    assert (node.storage, node.root) == before


def test_an_empty_artifact_list_still_commits_the_root(node: KvNode) -> None:
    root = node.root
    outcome = node.apply(b"\x00\x00\x00\x00\x00")
    assert outcome.root_hash == root


# --- the documented formats (apps/kv-store/README.md) ------------------------------------


def _index(storage: dict[bytes, bytes]) -> list[tuple[bytes, int, bytes]]:
    data = storage[b"kv-store/v1/index"]
    count, pos, rows = int.from_bytes(data[:4], "little"), 4, []
    for _ in range(count):
        klen = int.from_bytes(data[pos : pos + 4], "little")
        key = data[pos + 4 : pos + 4 + klen]
        live, entry_hash = data[pos + 4 + klen], data[pos + 5 + klen : pos + 37 + klen]
        rows.append((key, live, entry_hash))
        pos += 37 + klen
    assert pos == len(data)
    return rows


def test_root_hash_follows_the_documented_formula(node: KvNode) -> None:
    node.call("set", {"key": "long", "value": "x" * 300})  # multi-block SHA-256
    node.call("set", {"key": "b", "value": "2"})
    node.call("remove", {"key": "gone"})  # a tombstone for a key never set
    rows = _index(node.storage)
    assert [(key, live) for key, live, _ in rows] == [
        (b"b", 1),
        (b"gone", 0),
        (b"long", 1),
    ]
    root = hashlib.sha256(b"calimero-workflow/kv-store/v1/root")
    root.update(struct.pack("<I", len(rows)))
    for key, _live, entry_hash in rows:
        record = node.storage[b"kv-store/v1/entry/" + key]
        assert (
            entry_hash
            == hashlib.sha256(struct.pack("<I", len(key)) + key + record).digest()
        )
        root.update(struct.pack("<I", len(key)) + key + entry_hash)
    assert node.root == root.digest()
    assert node.storage[b"kv-store/v1/meta"] == b"\x01" + struct.pack("<I", 2)


def test_artifact_follows_the_documented_encoding(node: KvNode) -> None:
    node.now = 0x0102030405060708 - 1  # the next time_now
    artifact = node.run("set", {"key": "k", "value": "val"}).artifact
    assert artifact == (
        b"\x00"
        + struct.pack("<I", 1)
        + b"\x01"
        + struct.pack("<I", 1)
        + b"k"
        + struct.pack("<Q", 0x0102030405060708)
        + ALICE
        + struct.pack("<I", 3)
        + b"val"
    )
    delete = node.run("remove", {"key": "k"}).artifact
    assert delete == (
        b"\x00"
        + struct.pack("<I", 1)
        + b"\x02"
        + struct.pack("<I", 1)
        + b"k"
        + struct.pack("<Q", 0x0102030405060709)
        + ALICE
    )


def test_a_hand_written_artifact_applies(node: KvNode) -> None:
    put = (
        b"\x01"
        + struct.pack("<I", 3)
        + b"new"
        + struct.pack("<Q", 10**18)
        + CAROL
        + struct.pack("<I", 2)
        + b"hi"
    )
    init = b"\x00"
    node.apply(b"\x00" + struct.pack("<I", 2) + init + put)
    assert node.call("get", {"key": "new"}) == "hi"
