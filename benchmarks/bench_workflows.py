"""Workflow files the benchmarks run, generated so their size is a parameter.

All of them use the committed kv-store app. The files are written into a
scratch directory per benchmark run and never committed; the wasm path in
them is absolute so they can live anywhere.
"""

from __future__ import annotations

from pathlib import Path

from bench_harness import KV_WASM

#: The key the step benchmark reads; written once during setup.
BENCH_KEY = "bench"


def _setup(n_nodes: int, wasm: Path) -> list[str]:
    """Steps that install the app and put every node into one context."""
    lines = [
        f"  - {{name: setup-install, type: install_application, node: node-1, path: '{wasm}'}}",
        "  - {name: setup-ns, type: create_namespace, node: node-1,"
        " application_id: '${results.setup-install.application_id}'}",
        "  - {name: setup-ctx, type: create_context, node: node-1,"
        " application_id: '${results.setup-install.application_id}',"
        " namespace_id: '${results.setup-ns.namespace_id}'}",
    ]
    for i in range(2, n_nodes + 1):
        lines += [
            f"  - {{name: setup-invite{i}, type: invite, node: node-1,"
            " namespace_id: '${results.setup-ns.namespace_id}'}",
            f"  - {{name: setup-join{i}, type: join, node: node-{i},"
            " namespace_id: '${results.setup-ns.namespace_id}',"
            f" invitation: '${{results.setup-invite{i}.invitation}}'}}",
        ]
    for i in range(2, n_nodes + 1):
        lines.append(
            f"  - {{name: setup-joinctx{i}, type: join_context, node: node-{i},"
            " context_id: '${results.setup-ctx.context_id}'}"
        )
    return lines


def _head(name: str, n_nodes: int) -> list[str]:
    return [f"name: {name}", "nodes:", f"  count: {n_nodes}", "  prefix: node", "steps:"]


def steps_workflow(n_steps: int, wasm: Path = KV_WASM) -> str:
    """One node and ``n_steps`` trivial steps after the setup.

    Even steps assert on a literal, odd steps read a key with a ``get`` call
    on the node. Every step is named, as in real workflows, so each one's
    data is kept in ``results`` for placeholders (the heavier case).
    """
    lines = _head(f"bench {n_steps} steps", 1) + _setup(1, wasm)
    lines.append(
        "  - {name: setup-set, type: call, node: node-1, context_id: '${results.setup-ctx.context_id}',"
        f" method: set, args: {{key: {BENCH_KEY}, value: v}}}}"
    )
    for i in range(n_steps):
        if i % 2 == 0:
            lines.append(f"  - {{name: s{i}, type: assert, actual: 1, equals: 1}}")
        else:
            lines.append(
                f"  - {{name: s{i}, type: call, node: node-1,"
                " context_id: '${results.setup-ctx.context_id}',"
                f" method: get, args: {{key: {BENCH_KEY}}}}}"
            )
    return "\n".join(lines) + "\n"


def sync_workflow(n_nodes: int, rounds: int, wasm: Path = KV_WASM) -> str:
    """``rounds`` of: a ``set`` on one node (in turn), then ``wait_for_sync`` on all."""
    lines = _head(f"bench sync {n_nodes}x{rounds}", n_nodes) + _setup(n_nodes, wasm)
    for r in range(rounds):
        node = r % n_nodes + 1
        lines += [
            f"  - {{name: set{r}, type: call, node: node-{node},"
            " context_id: '${results.setup-ctx.context_id}',"
            f" method: set, args: {{key: k{r}, value: v{r}}}}}",
            f"  - {{name: sync{r}, type: wait_for_sync,"
            " context_id: '${results.setup-ctx.context_id}', timeout: 30}",
        ]
    return "\n".join(lines) + "\n"


def many_nodes_workflow(n_nodes: int, wasm: Path = KV_WASM) -> str:
    """The kv-store example widened to ``n_nodes``: write on the first, read on the last."""
    lines = _head(f"bench {n_nodes} nodes", n_nodes) + _setup(n_nodes, wasm)
    lines += [
        "  - {name: set, type: call, node: node-1, context_id: '${results.setup-ctx.context_id}',"
        " method: set, args: {key: hello, value: world}}",
        "  - {name: synced, type: wait_for_sync, context_id: '${results.setup-ctx.context_id}', timeout: 60}",
        f"  - {{name: get, type: call, node: node-{n_nodes},"
        " context_id: '${results.setup-ctx.context_id}', method: get, args: {key: hello}}",
        "  - {name: check, type: assert, actual: '${results.get.output}', equals: world}",
    ]
    return "\n".join(lines) + "\n"


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path
