"""Docker nodes: real ``merod`` containers (or our merod-compatible image).

Per run:

- every container, network and volume carries the labels
  ``calimero-workflow.run-id``, ``calimero-workflow.workflow`` and (on nodes)
  ``calimero-workflow.node``; cleanup removes exactly the run's objects;
- two bridge networks: a *control* network, through which the engine reaches
  each node's server port, and a *peers* network for the swarm, on which each
  node is known by its own name. ``disconnect_node`` takes a node off the peers
  network only, so the workflow still reaches it while its peers cannot;
- one volume per node at ``/app/data`` (volumes rather than bind mounts, so
  the same code works when the engine itself runs in a container);
- ``merod --home /app/data --node <name> init …`` in a throwaway container,
  then each node's ``bootstrap.nodes`` lists its siblings as
  ``/dns4/<name>.peers/tcp/2428/p2p/<peer id>`` before ``merod … run`` starts.

The engine reaches nodes through ports published on 127.0.0.1 when it runs on
the host, and by joining the control network when it runs inside a container.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import socket
import tarfile
import time
import tomllib
from pathlib import Path
from typing import Any

from ..client import NodeClient, NodeError
from .base import (
    BackendError,
    NodeBackend,
    NodeHandle,
    NodeSpec,
    NodeState,
    NodeUnavailableError,
    PhaseReport,
)

log = logging.getLogger("calimero_workflow.docker")

DEFAULT_IMAGE = "ghcr.io/calimero-network/merod:edge"
LABEL_RUN = "calimero-workflow.run-id"
LABEL_WORKFLOW = "calimero-workflow.workflow"
LABEL_NODE = "calimero-workflow.node"
SERVER_PORT = 2528
SWARM_PORT = 2428
DATA = "/app/data"


def _slug(text: str) -> str:
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return out[:40] or "workflow"


def _docker():
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a dependency
        raise BackendError("the docker package is not installed", hint="pip install docker") from exc
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:
        raise BackendError(
            f"cannot reach the Docker engine: {exc}",
            hint="start Docker (scripts/start-docker.sh) or use --backend embedded",
        ) from exc
    return client


def own_container_id(client: Any) -> str | None:
    """Our container's id when this process runs inside a container the engine knows."""
    in_container = Path("/.dockerenv").exists()
    if not in_container:
        try:
            in_container = any(
                word in Path("/proc/1/cgroup").read_text() for word in ("docker", "kubepods", "containerd")
            )
        except OSError:
            in_container = False
    if not in_container:
        return None
    candidates = [socket.gethostname()]
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            match = re.search(r"/containers/([0-9a-f]{64})/", line)
            if match:
                candidates.append(match.group(1))
    except OSError:
        pass
    for candidate in candidates:
        try:
            return client.containers.get(candidate).id
        except Exception:  # not a container this engine knows
            continue
    return None


def set_bootstrap(config_text: str, nodes: list[str]) -> str:
    """Return ``config_text`` with ``[bootstrap] nodes`` replaced by ``nodes``.

    A textual edit, so the rest of a real merod config keeps its form.
    """
    rendered = "nodes = [" + ", ".join(json.dumps(n) for n in nodes) + "]"
    lines = config_text.splitlines()
    out: list[str] = []
    section = None
    done = False
    skipping = False
    depth = 0
    for line in lines:
        stripped = line.strip()
        if skipping:
            depth += stripped.count("[") - stripped.count("]")
            if depth <= 0:
                skipping = False
            continue
        header = re.match(r"^\[([^\[\]]+)\]\s*(#.*)?$", stripped)
        if header:
            if section == "bootstrap" and not done:
                out.append(rendered)
                done = True
            section = header.group(1).strip()
        elif section == "bootstrap" and re.match(r"^nodes\s*=", stripped) and not done:
            out.append(rendered)
            done = True
            depth = stripped.count("[") - stripped.count("]")
            skipping = depth > 0
            continue
        out.append(line)
    if not done:
        if section != "bootstrap":
            out.extend(["", "[bootstrap]"])
        out.append(rendered)
    text = "\n".join(out) + "\n"
    tomllib.loads(text)  # never hand a node a config it cannot read
    return text


def _peer_alias(node: str) -> str:
    # Only the peers network knows this name, so swarm traffic never takes
    # the control network (a plain node name could resolve on both).
    return f"{node}.peers"


def _tar_one(name: str, data: bytes, mode: int = 0o644) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _read_archive(container: Any, path: str) -> bytes:
    stream, _ = container.get_archive(path)
    raw = b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        member = tar.next()
        if member is None:
            raise BackendError(f"{path} is empty in {container.name}")
        handle = tar.extractfile(member)
        if handle is None:
            raise BackendError(f"{path} is not a file in {container.name}")
        return handle.read()


class DockerBackend(NodeBackend):
    """Runs each local node as a container on the Docker engine."""

    name = "docker"

    def __init__(self, *, run_id: str, workflow_name: str, workdir: Path, image: str | None = None):
        super().__init__(run_id=run_id, workflow_name=workflow_name, workdir=workdir)
        self.image = image or DEFAULT_IMAGE
        self.short = re.sub(r"[^a-z0-9]", "", run_id.lower())[-10:]
        self.workflow_slug = _slug(workflow_name)
        self._client: Any = None
        self._own: str | None = None
        self._networks: dict[str, Any] = {}
        self._containers: dict[str, Any] = {}
        self._specs: dict[str, NodeSpec] = {}
        self._images: dict[str, Any] = {}
        #: From the contract deployment: see :meth:`node_setup`.
        self.extra_env: dict[str, str] = {}
        self.extra_init_args: list[str] = []
        self.extra_networks: list[str] = []
        #: Logs of containers that were replaced, kept so nothing is lost.
        self._old_logs: dict[str, list[bytes]] = {}
        self._cleaned = False

    def node_setup(self, *, env: dict[str, str], init_args: list[str], networks: list[str]) -> None:
        self.extra_env = dict(env)
        self.extra_init_args = list(init_args)
        self.extra_networks = list(networks)

    # -- plumbing ---------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _docker()
            self._own = own_container_id(self._client)
        return self._client

    def _labels(self, node: str | None = None) -> dict[str, str]:
        labels = {LABEL_RUN: self.run_id, LABEL_WORKFLOW: self.workflow_slug}
        if node:
            labels[LABEL_NODE] = node
        return labels

    def _container_name(self, node: str) -> str:
        return f"cw-{self.short}-{node}"

    async def _io(self, fn, *args, **kwargs):
        """Run a blocking SDK call in a thread; Docker errors become BackendError."""
        import docker.errors

        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except BackendError:
            raise
        except docker.errors.DockerException as exc:
            explanation = getattr(exc, "explanation", None) or str(exc)
            raise BackendError(f"Docker: {explanation}") from exc

    def _image_for(self, spec: NodeSpec) -> str:
        return spec.image or self.image

    # -- image ----------------------------------------------------------------------

    async def pull_image(self, *, force: bool = False) -> PhaseReport:
        planned = getattr(self, "planned", [])
        images = sorted({self.image, *(s.image for s in planned if s.image)})
        pulled, present = [], []
        for ref in images:
            if not force and await self._io(self._image_present, ref):
                present.append(ref)
                continue
            await self._pull(ref)
            pulled.append(ref)
        detail = []
        if present:
            detail.append("present: " + ", ".join(present))
        if pulled:
            detail.append("pulled: " + ", ".join(pulled))
        return PhaseReport(skipped=not pulled, detail="; ".join(detail))

    def _image_present(self, ref: str) -> bool:
        try:
            self._images[ref] = self.client.images.get(ref)
            return True
        except Exception:
            return False

    async def _pull(self, ref: str) -> None:
        delay = 1.0
        last: Exception | None = None
        for attempt in range(3):
            try:
                self._images[ref] = await self._io(self.client.images.pull, ref)
                return
            except Exception as exc:  # registry errors come in many types
                last = exc
                if attempt < 2:
                    await asyncio.sleep(delay)
                    delay *= 2
        raise BackendError(
            f"cannot pull image {ref} after 3 attempts: {last}",
            hint="check the registry is reachable, or build a local image and pass it with --image "
            "(scripts/build-images.sh builds calimero-workflow/node:dev)",
        )

    def image_info(self) -> dict[str, Any]:
        image = self._images.get(self.image)
        if image is None:
            try:
                image = self.client.images.get(self.image)
            except Exception:
                return {"image": self.image}
        digests = image.attrs.get("RepoDigests") or []
        return {"image": self.image, "id": image.id, "digest": digests[0] if digests else image.id}

    # -- start ---------------------------------------------------------------------

    def _network(self, role: str) -> Any:
        if role not in self._networks:
            self._networks[role] = self.client.networks.create(
                f"cw-{self.short}-{role}", driver="bridge", labels=self._labels(), check_duplicate=True
            )
        return self._networks[role]

    def _init_node(self, spec: NodeSpec) -> str:
        """Create the node's volume, run ``merod init``, return its peer id."""
        name = spec.name
        volume = self.client.volumes.create(f"cw-{self.short}-{name}", labels=self._labels(name))
        init = self.client.containers.create(
            self._image_for(spec),
            entrypoint=[],
            command=[
                "merod", "--home", DATA, "--node", name, "init",
                "--server-host", "0.0.0.0", "--server-port", str(SERVER_PORT),
                "--swarm-port", str(SWARM_PORT), *self.extra_init_args,
            ],
            volumes={volume.name: {"bind": DATA, "mode": "rw"}},
            labels=self._labels(name),
            name=f"{self._container_name(name)}-init",
            environment={"NODE_NAME": name, "CALIMERO_HOME": DATA, **self.extra_env},
            network=self.extra_networks[0] if self.extra_networks else None,
        )
        import docker.errors

        try:
            try:
                init.start()
            except docker.errors.APIError as exc:
                raise NodeUnavailableError(
                    f"`merod init` for node {name} could not start: {exc.explanation or exc}",
                    node=name,
                    hint=f"the image {self._image_for(spec)} must provide `merod` on its PATH",
                ) from exc
            status = init.wait(timeout=120)
            output = init.logs().decode("utf-8", "replace")
            code = status.get("StatusCode", 1)
            if code != 0:
                raise NodeUnavailableError(
                    f"`merod init` for node {name} exited with code {code}",
                    node=name, exit_code=code, last_logs=output[-4000:],
                    hint=f"check that {self._image_for(spec)} provides merod",
                )
            config = _read_archive(init, f"{DATA}/{name}/config.toml").decode()
        finally:
            init.remove(force=True)
        peer_id = tomllib.loads(config).get("identity", {}).get("peer_id")
        if not peer_id:
            raise NodeUnavailableError(f"node {name}: config.toml has no identity.peer_id", node=name)
        self._configs[name] = config
        return peer_id

    def _create_node(self, spec: NodeSpec, bootstrap: list[str]) -> Any:
        name = spec.name
        control, peers = self._network("control"), self._network("peers")
        ports = None
        if self._own is None:
            ports = {f"{SERVER_PORT}/tcp": ("127.0.0.1", spec.server_port)}
            if spec.swarm_port:
                ports[f"{SWARM_PORT}/tcp"] = ("127.0.0.1", spec.swarm_port)
        env = {"NODE_NAME": name, "CALIMERO_HOME": DATA, **self.extra_env, **spec.env}
        if spec.log_level:
            env["RUST_LOG"] = spec.log_level
        container = self.client.containers.create(
            self._image_for(spec),
            entrypoint=[],
            command=["merod", "--home", DATA, "--node", name, "run"],
            volumes={f"cw-{self.short}-{name}": {"bind": DATA, "mode": "rw"}},
            labels=self._labels(name),
            name=self._container_name(name),
            environment=env,
            ports=ports,
            network=control.name,
        )
        peers.connect(container, aliases=[_peer_alias(name)])
        for extra in self.extra_networks:
            self.client.networks.get(extra).connect(container)
        text = set_bootstrap(self._configs[name], bootstrap)
        container.put_archive(f"{DATA}/{name}", _tar_one("config.toml", text.encode()))
        return container

    async def start_nodes(self, specs: list[NodeSpec], *, ready_timeout: float) -> dict[str, NodeHandle]:
        self._configs: dict[str, str] = {}
        for spec in specs:
            self._specs[spec.name] = spec
        await self._io(lambda: self.client)
        if self._own is not None:
            await self._io(self._network("control").connect, self._own)
        peer_ids = dict(
            zip(
                [s.name for s in specs],
                await asyncio.gather(*(self._io(self._init_node, s) for s in specs)),
                strict=True,
            )
        )
        for spec in specs:
            siblings = [
                f"/dns4/{_peer_alias(other)}/tcp/{SWARM_PORT}/p2p/{peer_ids[other]}"
                for other in peer_ids
                if other != spec.name
            ]
            self._containers[spec.name] = await self._io(self._create_node, spec, siblings)
        await asyncio.gather(*(self._io(c.start) for c in self._containers.values()))
        handles = await asyncio.gather(*(self._handle(s.name) for s in specs))
        await self._wait_ready([h.name for h in handles], len(specs), ready_timeout)
        return {h.name: h for h in handles}

    async def _exited(self, name: str, state: NodeState) -> NodeUnavailableError:
        oom = " (killed: out of memory)" if state.oom_killed else ""
        return NodeUnavailableError(
            f"node {name} exited with code {state.exit_code}{oom} before it was ready",
            node=name, exit_code=state.exit_code, oom_killed=state.oom_killed,
            last_logs=await self.tail_logs(name),
        )

    async def _handle(self, name: str) -> NodeHandle:
        container = self._containers[name]
        state = await self.node_state(name)
        if not state.running:
            raise await self._exited(name, state)
        if self._own is not None:
            url = f"http://{container.name}:{SERVER_PORT}"
        else:
            binding = (container.attrs["NetworkSettings"]["Ports"] or {}).get(f"{SERVER_PORT}/tcp") or []
            if not binding:
                raise NodeUnavailableError(
                    f"node {name} has no published server port (is the container running?)",
                    node=name, last_logs=await self.tail_logs(name),
                )
            url = f"http://127.0.0.1:{binding[0]['HostPort']}"
        return NodeHandle(
            name=name,
            url=url,
            backend=self.name,
            info={"container": container.name, "image": self._image_for(self._specs[name])},
        )

    async def _wait_ready(self, names: list[str], total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout

        async def one(name: str) -> None:
            handle = await self._handle(name)
            async with NodeClient(handle.url, name=name, timeout=5) as client:
                last = "no answer yet"
                while True:
                    state = await self.node_state(name)
                    if not state.running:
                        raise await self._exited(name, state)
                    try:
                        await client.health(timeout=2)
                        peers = await client.peers_count() if total > 1 else 0
                        if total <= 1 or peers >= total - 1:
                            return
                        last = f"it sees {peers} of {total - 1} peers"
                    except NodeError as exc:
                        last = exc.message
                    if time.monotonic() >= deadline:
                        raise NodeUnavailableError(
                            f"node {name} was not ready within {timeout:g}s: {last}",
                            node=name, last_logs=await self.tail_logs(name),
                            hint="raise `wait_timeout`, or check the node's log lines above",
                        )
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(one(n) for n in names))

    # -- files, commands, faults -------------------------------------------------------

    def _container(self, name: str) -> Any:
        if name not in self._containers:
            raise BackendError(f"no node named {name!r} in this run", node=name)
        return self._containers[name]

    async def stage_file(self, name: str, path: Path) -> str:
        path = path.resolve()
        if not path.is_file():
            raise BackendError(f"{path} is not a regular file", node=name)
        target = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)
        container = self._container(name)
        await self._io(container.put_archive, DATA, _tar_one(target, path.read_bytes()))
        return f"{DATA}/{target}"

    async def exec_in_node(self, name: str, argv: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
        container = self._container(name)
        result = await self._io(container.exec_run, argv, environment=env, demux=True)
        stdout, stderr = result.output if isinstance(result.output, tuple) else (result.output, b"")
        return result.exit_code or 0, stdout or b"", stderr or b""

    async def stop_node(self, name: str) -> None:
        container = self._container(name)
        await self._io(container.stop, timeout=10)

    async def start_node(self, name: str, *, ready_timeout: float) -> NodeHandle:
        container = self._container(name)
        await self._io(container.reload)
        if container.status != "running":
            await self._io(container.start)
        running = 0
        for other in self._containers.values():
            await self._io(other.reload)
            running += other.status == "running"
        # Ready once it sees the peers that are running now.
        await self._wait_ready([name], max(1, running), ready_timeout)
        return await self._handle(name)

    async def restart_node(self, name: str, *, ready_timeout: float) -> NodeHandle:
        await self.stop_node(name)
        return await self.start_node(name, ready_timeout=ready_timeout)

    async def disconnect_node(self, name: str) -> None:
        container = self._container(name)
        await self._io(self._network("peers").disconnect, container, force=True)

    async def connect_node(self, name: str) -> None:
        container = self._container(name)
        await self._io(self._network("peers").connect, container, aliases=[_peer_alias(name)])

    # -- observation ---------------------------------------------------------------

    async def node_state(self, name: str) -> NodeState:
        container = self._container(name)
        await self._io(container.reload)
        state = container.attrs.get("State", {})
        return NodeState(
            running=bool(state.get("Running")),
            exit_code=state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            error=state.get("Error") or None,
            started_at=state.get("StartedAt"),
            finished_at=state.get("FinishedAt"),
        )

    async def tail_logs(self, name: str, lines: int = 50) -> str:
        try:
            container = self._container(name)
            raw = await self._io(container.logs, tail=lines, timestamps=True)
        except Exception:  # the container may be gone
            return ""
        return raw.decode("utf-8", "replace").rstrip("\n")

    async def collect_logs(self, dest: Path) -> dict[str, Path]:
        dest.mkdir(parents=True, exist_ok=True)
        out: dict[str, Path] = {}
        for name, container in self._containers.items():
            try:
                raw = await self._io(container.logs, timestamps=True)
                state = await self.node_state(name)
            except Exception as exc:  # keep going for the other nodes
                (dest / f"{name}.log").write_text(f"could not read logs: {exc}\n")
                continue
            path = dest / f"{name}.log"
            path.write_bytes(b"".join(self._old_logs.get(name, [])) + raw)
            (dest / f"{name}.state.json").write_text(json.dumps(state.__dict__, indent=2))
            out[name] = path
        return out

    # -- teardown ------------------------------------------------------------------

    def _remove_labelled(self, label: str) -> tuple[int, int, int]:
        client = self.client
        containers = client.containers.list(all=True, filters={"label": label})
        for container in containers:
            try:
                container.remove(force=True, v=False)
            except Exception as exc:  # already gone
                log.debug("removing %s: %s", container.name, exc)
        networks = client.networks.list(filters={"label": label})
        for network in networks:
            try:
                network.reload()
                for attached in network.attrs.get("Containers", {}) or {}:
                    network.disconnect(attached, force=True)
                network.remove()
            except Exception as exc:
                log.debug("removing network %s: %s", network.name, exc)
        volumes = client.volumes.list(filters={"label": label})
        for volume in volumes:
            try:
                volume.remove(force=True)
            except Exception as exc:
                log.debug("removing volume %s: %s", volume.name, exc)
        return len(containers), len(networks), len(volumes)

    async def cleanup(self) -> PhaseReport:
        if self._client is None:
            return PhaseReport(detail="nothing was created")
        counts = await self._io(self._remove_labelled, f"{LABEL_RUN}={self.run_id}")
        self._containers.clear()
        self._networks.clear()
        self._cleaned = True
        return PhaseReport(
            detail=f"removed {counts[0]} container(s), {counts[1]} network(s), {counts[2]} volume(s)"
        )

    async def nuke(self) -> PhaseReport:
        counts = await self._io(self._remove_labelled, f"{LABEL_WORKFLOW}={self.workflow_slug}")
        return PhaseReport(
            detail=f"removed leftovers of earlier runs of this workflow: {counts[0]} container(s), "
            f"{counts[1]} network(s), {counts[2]} volume(s)"
        )


def remove_run(run_id: str) -> tuple[int, int, int]:
    """Remove every object of one run (the action's post step uses this)."""
    backend = DockerBackend(run_id=run_id, workflow_name="-", workdir=Path(os.devnull))
    return backend._remove_labelled(f"{LABEL_RUN}={run_id}")
