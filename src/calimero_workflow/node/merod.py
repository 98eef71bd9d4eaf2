"""``merod``-compatible command line for the embedded node.

Installed as the ``merod-embedded`` console script (and as ``merod`` in our
Docker image), it accepts the commands merobox and our Docker backend use::

    merod --home H --node NAME init --server-host 0.0.0.0 --server-port 2528 \\
          --swarm-port 2428 [--boot-nodes ADDR ...] [--auth-mode X] [--force]
    merod --home H --node NAME run

``init`` writes ``H/NAME/config.toml`` with a fresh identity; ``run`` serves the
node until SIGTERM or SIGINT and then exits 0. Exit codes: 0 ok, 1 runtime
failure (port in use, init refused), 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .config import CONFIG_FILE, ConfigError, NodeConfig, load_config, write_config
from .ids import Keypair
from .logfilter import LogFilter

# asyncio, logging and the server (uvicorn, wasmtime) are imported by `run`
# only: a Docker node runs `init` in a container of its own, and those imports
# were most of its CPU time.

__all__ = ["EXIT_BAD_CONFIG", "EXIT_FAILURE", "EXIT_OK", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_CONFIG = 2

_LOGGER = "calimero_workflow.node.merod"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="merod",
        description="Embedded Calimero node (calimero-workflow), merod-compatible CLI.",
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(os.environ.get("CALIMERO_HOME", "~/.calimero")),
        help="directory holding node directories (default: $CALIMERO_HOME or ~/.calimero)",
    )
    parser.add_argument(
        "--node",
        "--node-name",
        dest="node",
        default=os.environ.get("NODE_NAME") or None,
        required=not os.environ.get("NODE_NAME"),
        help="node name: its directory under --home (default: $NODE_NAME)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser(
        "init", help="write <home>/<node>/config.toml with a new identity"
    )
    init.add_argument("--server-host", default="127.0.0.1")
    init.add_argument("--server-port", type=int, default=2528)
    init.add_argument("--swarm-host", default="0.0.0.0")
    init.add_argument("--swarm-port", type=int, default=2428)
    init.add_argument(
        "--boot-nodes",
        nargs="*",
        default=[],
        metavar="MULTIADDR",
        help="peers to dial: /ip4/<ip>/tcp/<port>/p2p/<peer id>",
    )
    init.add_argument("--sync-interval-ms", type=int, default=1000)
    init.add_argument("--auth-mode", help="accepted for merod compatibility; ignored")
    init.add_argument(
        "--force", action="store_true", help="replace an existing config and node data"
    )

    run = sub.add_parser("run", help="serve the node until SIGTERM/SIGINT")
    run.add_argument("--mock-tee", action="store_true", help="accepted; ignored")
    return parser


def _init(args: argparse.Namespace) -> int:
    node_dir = Path(args.home).expanduser() / args.node
    config_path = node_dir / CONFIG_FILE
    if config_path.exists() and not args.force:
        print(
            f"merod: {config_path} already exists; pass --force to replace it "
            "(this discards the node's identity and data)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if args.auth_mode:
        print(
            f"merod: note: --auth-mode {args.auth_mode} is ignored; the embedded node "
            "serves its API without authentication",
            file=sys.stderr,
        )
    try:
        cfg = NodeConfig(
            name=args.node,
            home=node_dir,
            server_host=args.server_host,
            server_port=args.server_port,
            swarm_host=args.swarm_host,
            swarm_port=args.swarm_port,
            bootstrap=list(args.boot_nodes),
            sync_interval_ms=args.sync_interval_ms,
            identity=Keypair.generate(),
        )
    except ConfigError as exc:
        print(f"merod: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.force:
        for leftover in node_dir.glob("node.sqlite3*"):
            leftover.unlink()
    write_config(cfg)
    assert cfg.identity is not None
    print(
        f"Initialized node {args.node} in {node_dir} (peer id {cfg.identity.peer_id})"
    )
    return EXIT_OK


async def _serve(cfg: NodeConfig) -> int:
    import asyncio
    import logging
    import signal

    from .server import EmbeddedNode

    node = EmbeddedNode(cfg)
    try:
        await node.start()
    except OSError as exc:
        print(f"merod: cannot start node {cfg.name}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"node {cfg.name} ready: server {node.url} swarm {node.swarm_multiaddr}",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        logging.getLogger(_LOGGER).info("shutting down node %s", cfg.name)
        # already on the way out: a second signal (docker stop after a
        # Ctrl-C) must not kill the process once the loop's handlers are gone
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        await node.stop()
    return EXIT_OK


def _log_filter(environ: Mapping[str, str]) -> LogFilter:
    # merobox passes RUST_LOG; a value that is not a filter is reported, and
    # the node logs at INFO
    try:
        return LogFilter.parse(environ.get("RUST_LOG"))
    except ValueError as exc:
        print(f"merod: RUST_LOG: {exc}; logging at info", file=sys.stderr)
        return LogFilter()


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from .interrupt import time_limit_from

    node_dir = Path(args.home).expanduser() / args.node
    try:
        cfg = load_config(node_dir, args.node)
    except ConfigError as exc:
        print(f"merod: bad config: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        time_limit_from(os.environ)
    except ValueError as exc:
        print(f"merod: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    log_filter = _log_filter(os.environ)
    logging.basicConfig(
        level=log_filter.lowest,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter.allows)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    return asyncio.run(_serve(cfg))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``merod-embedded``; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "init":
        return _init(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
