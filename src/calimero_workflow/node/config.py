"""Node configuration: the :class:`NodeConfig` value and merod's ``config.toml``.

The file layout follows what ``merod init`` writes (``[identity]``, ``[server]``,
``[swarm]``, ``[bootstrap]``, ``[sync]`` …) so tools that edit a real merod config
(merobox rewrites ``bootstrap.nodes`` and the ``sync`` timings) work on ours too.
Keys we do not use are accepted and ignored. We read with :mod:`tomllib` and write
with a small writer of our own, because the standard library has no TOML writer.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..confined import replace_file
from .ids import IdError, Keypair, parse_multiaddr

__all__ = [
    "CONFIG_FILE",
    "ConfigError",
    "NodeConfig",
    "dump_toml",
    "load_config",
    "write_config",
]

CONFIG_FILE = "config.toml"


class ConfigError(ValueError):
    """The node configuration is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class NodeConfig:
    """Everything one embedded node needs to start.

    ``home`` is the node's own directory (merod's ``<home>/<node>``): it holds
    ``config.toml``, the database and nothing else. Ports set to 0 are chosen by
    the OS; a restarted node first tries the ports it had last time so its URL
    and swarm address stay stable.
    """

    name: str
    home: Path
    server_host: str = "127.0.0.1"
    server_port: int = 0
    swarm_host: str = "127.0.0.1"
    swarm_port: int = 0
    #: Peers to dial: ``/ip4/<ip>/tcp/<port>/p2p/<peer id>`` or ``/dns4/<host>/...``.
    bootstrap: list[str] = field(default_factory=list)
    #: Period of the background catch-up sync with member peers.
    sync_interval_ms: int = 1000
    #: The node identity; None means "use the one stored in home, or make one".
    identity: Keypair | None = None

    def __post_init__(self) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            msg = f"node name {self.name!r} must be letters, digits, '.', '_' or '-'"
            raise ConfigError(msg)
        for label, port in (("server", self.server_port), ("swarm", self.swarm_port)):
            if not 0 <= port < 65536:
                raise ConfigError(f"{label} port {port!r} is out of range 0-65535")
        if self.sync_interval_ms <= 0:
            msg = f"sync interval_ms must be positive, got {self.sync_interval_ms!r}"
            raise ConfigError(msg)
        for addr in self.bootstrap:
            try:
                parse_multiaddr(addr)
            except IdError as exc:
                raise ConfigError(f"bad bootstrap node: {exc}") from None

    def with_identity(self, identity: Keypair) -> NodeConfig:
        """A copy with ``identity`` set."""
        return replace(self, identity=identity)


# -- writing -----------------------------------------------------------------------


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cannot write non-finite float {value!r} to TOML")
        return repr(value)
    if isinstance(value, str):
        escaped = []
        for char in value:
            if char in {'"', "\\"}:
                escaped.append("\\" + char)
            elif ord(char) < 0x20 or ord(char) == 0x7F:
                escaped.append(f"\\u{ord(char):04x}")
            else:
                escaped.append(char)
        return '"' + "".join(escaped) + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()
        )
        return "{ " + items + " }" if items else "{}"
    raise ConfigError(f"cannot write {type(value).__name__} value {value!r} to TOML")


def dump_toml(data: Mapping[str, Any]) -> str:
    """Serialise nested dicts of scalars and lists as TOML (tables for sub-dicts)."""
    lines: list[str] = []

    def emit_table(path: list[str], table: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
        tables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        if path and (scalars or not tables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        for key, value in scalars.items():
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, value in tables.items():
            emit_table([*path, key], value)

    emit_table([], data)
    return "\n".join(lines) + "\n"


def _listen(host: str, port: int) -> str:
    proto = "ip6" if ":" in host else "ip4"
    return f"/{proto}/{host}/tcp/{port}"


def write_config(cfg: NodeConfig, path: Path | None = None) -> Path:
    """Write ``cfg`` as merod-style TOML to ``path`` (default ``home/config.toml``).

    The identity must be set: the keypair is what makes the node the same node
    across restarts.
    """
    if cfg.identity is None:
        raise ConfigError(
            "cannot write a config without an identity; generate one first"
        )
    target = path or cfg.home / CONFIG_FILE
    doc = {
        "identity": {
            "peer_id": cfg.identity.peer_id,
            "keypair": cfg.identity.to_libp2p(),
        },
        "node": {"name": cfg.name},
        "server": {"listen": [_listen(cfg.server_host, cfg.server_port)]},
        "swarm": {"listen": [_listen(cfg.swarm_host, cfg.swarm_port)]},
        "bootstrap": {"nodes": list(cfg.bootstrap)},
        "discovery": {"mdns": False},
        "sync": {"interval_ms": cfg.sync_interval_ms, "timeout_ms": 30000},
    }
    header = "# Written by merod-embedded (calimero-workflow). Safe to edit.\n"
    replace_file(target, (header + dump_toml(doc)).encode("utf-8"))
    return target


# -- reading -----------------------------------------------------------------------


def _first_tcp_listen(
    doc: Mapping[str, Any], section: str, path: Path
) -> tuple[str, int]:
    listens = doc.get(section, {}).get("listen")
    if isinstance(listens, str):
        listens = [listens]
    if not isinstance(listens, list) or not listens:
        msg = (
            f"{path}: [{section}] listen must list at least one /ip4/<host>/tcp/<port>"
        )
        raise ConfigError(msg)
    for entry in listens:
        try:
            addr = parse_multiaddr(str(entry))
        except IdError as exc:
            raise ConfigError(f"{path}: [{section}] listen: {exc}") from None
        if addr is not None:
            return addr.host, addr.port
    msg = f"{path}: [{section}] listen has no TCP address (only {listens!r})"
    raise ConfigError(msg)


def load_config(home: Path, name: str | None = None) -> NodeConfig:
    """Read ``home/config.toml`` into a :class:`NodeConfig`.

    Raises :class:`ConfigError` naming the file and the bad key.
    """
    path = home / CONFIG_FILE
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = f"no config at {path}; run `merod --home <dir> --node <name> init` first"
        raise ConfigError(msg) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None

    ident = doc.get("identity", {})
    try:
        identity = Keypair.from_libp2p(str(ident.get("keypair", "")))
    except IdError as exc:
        raise ConfigError(f"{path}: [identity] keypair: {exc}") from None
    if ident.get("peer_id") not in (None, identity.peer_id):
        msg = (
            f"{path}: [identity] peer_id {ident.get('peer_id')!r} does not match the "
            f"keypair (which gives {identity.peer_id}); fix or remove peer_id"
        )
        raise ConfigError(msg)

    server_host, server_port = _first_tcp_listen(doc, "server", path)
    swarm_host, swarm_port = _first_tcp_listen(doc, "swarm", path)
    nodes = doc.get("bootstrap", {}).get("nodes", [])
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise ConfigError(
            f"{path}: [bootstrap] nodes must be a list of multiaddr strings"
        )
    interval = doc.get("sync", {}).get("interval_ms", 1000)
    if isinstance(interval, bool) or not isinstance(interval, int):
        raise ConfigError(
            f"{path}: [sync] interval_ms must be an integer, got {interval!r}"
        )
    node_name = name or doc.get("node", {}).get("name") or home.name
    try:
        return NodeConfig(
            name=str(node_name),
            home=home,
            server_host=server_host,
            server_port=server_port,
            swarm_host=swarm_host,
            swarm_port=swarm_port,
            bootstrap=list(nodes),
            sync_interval_ms=interval,
            identity=identity,
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
