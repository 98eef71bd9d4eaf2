"""Docker nodes: ``merod`` containers (the real image or our merod-compatible one).

What one run creates, all labelled ``calimero-workflow.run-id=<run id>``,
``calimero-workflow.workflow=<workflow name>`` and, on node objects,
``calimero-workflow.node=<node>``; cleanup removes exactly that run-id label:

- a *peers* bridge network for the swarm, on which each node is known as
  ``<node>.peers`` (the only name its siblings' ``bootstrap.nodes`` use).
  ``disconnect_node`` takes a node off this network and nothing else. While
  ``partition_peers`` keeps pairs of nodes apart, the nodes are spread over
  several such networks (``peers``, ``peers-1``…), each one a group of nodes
  that may all talk to each other, so two nodes share a network exactly when
  they may talk;
- *control* networks through which the workflow reaches each node's server
  port. Docker drops a container's published ports when it leaves its only
  network, which is why peers and control are separate. Nodes must not talk to
  each other over control, or a partition would leak (a real merod announces
  every interface and runs mDNS): on the host, one control network with
  inter-container traffic disabled (published ports still work); when the
  engine itself runs in a container, one control network per node, shared only
  with the engine's container;
- a data dir per node, ``<workdir>/nodes/<node>`` (or ``data_dir``), bind-mounted
  at ``/app/data``. Inside a container the engine maps the dir to its host path
  through its own mounts; a dir that is on no mount becomes a labelled volume;
- ``merod --home /app/data --node <node> init …`` in a throwaway container,
  then ``bootstrap.nodes`` in each config.toml lists the siblings as
  ``/dns4/<node>.peers/tcp/2428/p2p/<peer id>``, then ``merod … run``.

The engine uses ``http://127.0.0.1:<published port>`` from the host (or a
container on the host's network), and ``http://<container name>:2528`` from
inside a container (see :func:`network_home`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import logging
import os
import re
import shutil
import socket
import tarfile
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import httpx

from ..confined import read_file, replace_file
from .base import (
    BackendError,
    NodeBackend,
    NodeHandle,
    NodeNotRunningError,
    NodeSpec,
    NodeState,
    NodeUnavailableError,
    PhaseReport,
    in_progress_note,
    other_runs,
    release_run,
    run_id_of,
    write_run_marker,
)

__all__ = [
    "DEFAULT_IMAGE",
    "LABEL_APP_BUNDLES",
    "LABEL_NODE",
    "LABEL_RUN",
    "LABEL_WORKFLOW",
    "DockerBackend",
    "host_path_for",
    "image_reference_problem",
    "labels_for",
    "network_home",
    "own_container_id",
    "remove_run",
    "set_bootstrap",
]

log = logging.getLogger("calimero_workflow.docker")

DEFAULT_IMAGE = "ghcr.io/calimero-network/merod:edge"
LABEL_RUN = "calimero-workflow.run-id"
LABEL_WORKFLOW = "calimero-workflow.workflow"
LABEL_NODE = "calimero-workflow.node"
#: An image label naming the bundle signing scheme its node requires for dev
#: installs (our node image has it): the engine then bundles a raw .wasm for
#: it at once, instead of learning so from a refused install.
LABEL_APP_BUNDLES = "calimero-workflow.app-bundles"
SERVER_PORT = 2528
SWARM_PORT = 2428
DATA = "/app/data"
#: How often readiness is polled; a node takes a few hundred ms to serve.
POLL_INTERVAL = 0.05
#: Bound on waiting for Docker calls still in flight when cleanup starts.
IN_FLIGHT_WAIT = 60.0
#: ``merod init`` gets ``wait_timeout`` seconds, but never less than this: a
#: short readiness timeout must not fail an init that is merely slow to start.
MIN_INIT_TIMEOUT = 10.0

T = TypeVar("T")

#: What a registry says about an image it does not have, or will not give.
_NOT_THERE = ("manifest unknown", "not found", "does not exist", "name unknown")
_NOT_ALLOWED = (
    "unauthorized",
    "no basic auth credentials",
    "denied",
    "authentication required",
)


def _registry_of(ref: str) -> str:
    first, sep, _ = ref.partition("/")
    if sep and (any(c in first for c in ".:[") or first == "localhost"):
        return first
    return "docker.io"


def labels_for(
    run_id: str, workflow_name: str, node: str | None = None
) -> dict[str, str]:
    """The labels every Docker object of a run carries (sandbox objects too)."""
    labels = {LABEL_RUN: run_id, LABEL_WORKFLOW: workflow_name}
    if node is not None:
        labels[LABEL_NODE] = node
    return labels


def _slug(text: str) -> str:
    # Kept for callers that name things after a workflow; labels use the name itself.
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return out[:40] or "workflow"


def _name_part(node: str) -> str:
    """``node`` as a container-name and DNS-label fragment."""
    return re.sub(r"[^a-z0-9-]+", "-", node.lower()).strip("-") or "node"


def _peer_alias(node: str) -> str:
    # Only the peers network knows this name, so swarm dials never take a
    # control network even where a plain name would resolve on both.
    return f"{_name_part(node)}.peers"


# The image reference grammar Docker reads (distribution/reference).
_ALNUM = r"[a-z0-9]+"
_PATH_PART = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*"  # name
    r"(?::[\w][\w.-]{0,127})?"  # tag
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
_NAME_LIMIT = 255


def image_reference_problem(ref: str) -> str | None:
    """Why Docker would refuse ``ref`` as an image reference, or None if it reads it."""
    if not ref.strip():
        return "the image reference is empty"
    if not _REFERENCE.fullmatch(ref):
        why = f"{ref!r} is not a valid image reference"
        name = ref.split("@")[0]
        if _REFERENCE.fullmatch(ref.lower()) or (
            name != name.lower() and "/" not in name
        ):
            why += ": repository names must be lowercase"
        return why
    if len(ref.split("@")[0].rsplit(":", 1)[0]) > _NAME_LIMIT:
        return f"{ref[:60]!r}… is not a valid image reference: the name is over {_NAME_LIMIT} characters"
    return None


def _docker() -> Any:
    """A connected Docker client, or BackendError with a hint."""
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - docker is a dependency
        raise BackendError(
            "the docker package is not installed", hint="pip install docker"
        ) from exc
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
    """Our container's id when this process runs in a container ``client``'s engine knows.

    ``/.dockerenv`` or the cgroup says whether we are in a container at all; the
    hostname (Docker's default is the short id) or a ``/containers/<id>/`` path
    in mountinfo names it. A container of another engine (a CI machine that is
    itself a container) is not found, and the engine then counts as on the host.
    """
    in_container = Path("/.dockerenv").exists()
    if not in_container:
        try:
            cgroup = Path("/proc/1/cgroup").read_text()
            in_container = any(
                word in cgroup for word in ("docker", "kubepods", "containerd")
            )
        except OSError:
            in_container = False
    if not in_container:
        return None
    candidates = [socket.gethostname()]
    with contextlib.suppress(OSError):
        mountinfo = Path("/proc/self/mountinfo").read_text()
        candidates += re.findall(r"/containers/([0-9a-f]{64})/", mountinfo)
    for candidate in dict.fromkeys(candidates):
        try:
            return client.containers.get(candidate).id
        except Exception:  # not a container this engine knows
            continue
    return None


def network_home(client: Any, own: str | None) -> str | None:
    """The container whose network the engine uses, or None for the host's.

    None on the host, and in a container started with ``--network host``:
    nodes are then reached through ports published on 127.0.0.1. A container
    sharing another one's network namespace (``--network container:<id>``,
    as act runs actions) cannot join networks itself; the namespace's owner
    joins them instead.

    Raises:
        BackendError: the engine's container has no network at all.
    """
    seen: set[str] = set()
    current = own
    while current is not None and current not in seen:
        seen.add(current)
        mode = (
            client.containers.get(current)
            .attrs.get("HostConfig", {})
            .get("NetworkMode")
            or ""
        )
        if mode == "host":
            return None
        if mode == "none":
            raise BackendError(
                "calimero-workflow runs in a container without a network "
                "(--network none), so it cannot reach Docker nodes",
                hint="run it with a network (the default bridge will do), or use --backend embedded",
            )
        if not mode.startswith("container:"):
            return current
        current = client.containers.get(mode.partition(":")[2]).id
    return current


def host_path_for(path: Path, mounts: Iterable[dict[str, Any]]) -> str | None:
    """The daemon-side path of ``path`` as seen in a container with ``mounts``.

    ``mounts`` is the container's ``Mounts`` from ``docker inspect``. The
    deepest mount whose destination contains ``path`` wins; None when no bind
    or volume mount contains it (the path exists only inside the container).
    """
    target = PurePosixPath(path)
    best: tuple[int, str] | None = None
    for mount in mounts:
        dest, source = mount.get("Destination"), mount.get("Source")
        if mount.get("Type") not in ("bind", "volume") or not dest or not source:
            continue
        try:
            rest = target.relative_to(PurePosixPath(dest))
        except ValueError:
            continue
        depth = len(PurePosixPath(dest).parts)
        if best is None or depth > best[0]:
            best = (depth, str(PurePosixPath(source) / rest))
    return best[1] if best else None


def set_bootstrap(config_text: str, nodes: list[str]) -> str:
    """Return ``config_text`` with ``[bootstrap] nodes`` replaced by ``nodes``.

    A textual edit, so the rest of a real merod config keeps its form and
    comments; the result is parsed once so a node never gets a broken file.
    """
    rendered = "nodes = [" + ", ".join(json.dumps(n) for n in nodes) + "]"
    out: list[str] = []
    section = None
    done = False
    depth = 0
    for line in config_text.splitlines():
        stripped = line.strip()
        if depth > 0:  # inside the old multi-line array
            depth += stripped.count("[") - stripped.count("]")
            continue
        header = re.match(r"^\[([^\[\]]+)\]\s*(#.*)?$", stripped)
        if header:
            if section == "bootstrap" and not done:
                out.append(rendered)
                done = True
            section = header.group(1).strip()
        elif section == "bootstrap" and not done and re.match(r"^nodes\s*=", stripped):
            out.append(rendered)
            done = True
            depth = stripped.count("[") - stripped.count("]")
            continue
        out.append(line)
    if not done:
        if section != "bootstrap":
            out.extend(["", "[bootstrap]"])
        out.append(rendered)
    text = "\n".join(out) + "\n"
    tomllib.loads(text)
    return text


def _tar_one(name: str, data: bytes, *, owner: tuple[int, int] | None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = int(time.time())
        if owner is not None:
            info.uid, info.gid = owner
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _read_archive(container: Any, path: str) -> bytes:
    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        handle = tar.extractfile(member) if member is not None else None
        if handle is None:
            raise BackendError(f"{path} is not a file in {container.name}")
        return handle.read()


def _merge_logs(earlier: bytes, current: bytes) -> bytes:
    """Earlier log segments plus the current log, without repeating lines.

    Docker keeps a container's log across stop/start, so ``current`` usually
    starts with ``earlier``; with rotating log drivers it may not.
    """
    if not earlier or current.startswith(earlier):
        return current
    return (
        earlier
        + b"--- calimero-workflow: log continues after a restart ---\n"
        + current
    )


def _clique_cover(names: list[str], blocked: set[frozenset[str]]) -> list[frozenset[str]]:
    """Groups of nodes that may all talk to each other, covering every pair
    that may talk (a pair in ``blocked`` may not). Nodes that may talk to no
    one are in no group."""
    allowed = {
        n: {m for m in names if m != n and frozenset((n, m)) not in blocked}
        for n in names
    }
    cliques: list[frozenset[str]] = []

    def extend(chosen: set[str], candidates: set[str], excluded: set[str]) -> None:
        # Bron-Kerbosch: every maximal clique, for the handful of nodes a run has.
        if not candidates and not excluded:
            cliques.append(frozenset(chosen))
            return
        for node in sorted(candidates):
            extend(chosen | {node}, candidates & allowed[node], excluded & allowed[node])
            candidates = candidates - {node}
            excluded = excluded | {node}

    extend(set(), set(names), set())
    uncovered = {frozenset((a, b)) for a in names for b in allowed[a]}
    cover: list[frozenset[str]] = []
    while uncovered:
        best = max(
            cliques,
            key=lambda c: (sum(1 for pair in uncovered if pair <= c), sorted(c)),
        )
        cover.append(best)
        uncovered = {pair for pair in uncovered if not pair <= best}
    return cover


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _peer_count(payload: Any) -> int:
    if isinstance(payload, dict) and isinstance(payload.get("data"), dict):
        payload = payload["data"]
    if isinstance(payload, dict):
        return int(payload.get("count", 0) or 0)
    return 0


class DockerBackend(NodeBackend):
    """Runs each local node of one workflow run as a Docker container.

    Args:
        run_id: Unique per run; names and labels every object.
        workflow_name: Label value that ``nuke`` matches earlier runs by.
        workdir: Per-run scratch directory; node data lives in ``nodes/``.
        image: Node image, unless a node's spec names its own.
    """

    name = "docker"

    def __init__(
        self,
        *,
        run_id: str,
        workflow_name: str,
        workdir: Path,
        image: str | None = None,
    ):
        super().__init__(run_id=run_id, workflow_name=workflow_name, workdir=workdir)
        self.image = image or DEFAULT_IMAGE
        #: Short run id in every object name, so two runs on one daemon never collide.
        self.short = re.sub(r"[^a-z0-9]", "", run_id.lower())[-10:] or "run"
        self.extra_env: dict[str, str] = {}
        self.extra_init_args: list[str] = []
        self.extra_networks: list[str] = []
        self._client: Any = None
        self._own: str | None = None
        #: The container joined to the control networks (see network_home).
        self._joins: str | None = None
        self._own_mounts: list[dict[str, Any]] = []
        self._user: str | None = None
        self._networks: dict[str, Any] = {}
        self._containers: dict[str, Any] = {}
        self._specs: dict[str, NodeSpec] = {}
        self._images: dict[str, Any] = {}
        self._configs: dict[str, str] = {}
        self._data: dict[str, str] = {}
        self._urls: dict[str, str] = {}
        self._disconnected: set[str] = set()
        self._paused: set[str] = set()
        #: Pairs of nodes ``partition_peers`` keeps apart.
        self._blocked_pairs: set[frozenset[str]] = set()
        #: Members of each peer network (role -> node names).
        self._peer_members: dict[str, set[str]] = {}
        self._rewiring = threading.Lock()
        #: Log text saved at each stop, merged with the live log at collection.
        self._log_history: dict[str, bytes] = {}
        # Docker calls run in worker threads that a cancelled task cannot stop;
        # cleanup waits for them so nothing is created after it has looked.
        self._busy = 0
        self._idle = threading.Condition()
        self._closed = False

    def node_setup(
        self, *, env: dict[str, str], init_args: list[str], networks: list[str]
    ) -> None:
        """Extra env, ``merod init`` arguments and networks (from contract deployment)."""
        self.extra_env = dict(env)
        self.extra_init_args = list(init_args)
        self.extra_networks = list(networks)

    # -- plumbing -----------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The Docker client, connected on first use (in a worker thread)."""
        if self._client is None:
            client = _docker()
            self._own = own_container_id(client)
            if self._own is not None:
                self._own_mounts = (
                    client.containers.get(self._own).attrs.get("Mounts") or []
                )
            self._joins = network_home(client, self._own)
            self._user = self._container_user(client)
            self._client = client
        return self._client

    def _container_user(self, client: Any) -> str | None:
        # A non-root user on the host must be able to delete the node data
        # later, so nodes run as that user. Rootless Docker maps container root
        # to the user already, and inside a container we are root anyway.
        if self._own is not None or os.geteuid() == 0:
            return None
        options = client.info().get("SecurityOptions") or []
        if any("rootless" in option for option in options):
            return None
        return f"{os.getuid()}:{os.getgid()}"

    def _tar_owner(self) -> tuple[int, int] | None:
        return (os.getuid(), os.getgid()) if self._user else None

    def _labels(self, node: str | None = None) -> dict[str, str]:
        return labels_for(self.run_id, self.workflow_name, node)

    def _container_name(self, node: str) -> str:
        return f"cw-{self.short}-{_name_part(node)}"

    def _tracked(
        self, fn: Callable[..., T], cleanup: bool, *args: Any, **kwargs: Any
    ) -> T:
        with self._idle:
            if self._closed and not cleanup:
                raise BackendError(
                    "this run's Docker objects were already cleaned up",
                    hint="a backend serves one run; create a new one",
                )
            self._busy += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    async def _io(
        self, fn: Callable[..., T], *args: Any, _cleanup: bool = False, **kwargs: Any
    ) -> T:
        """Run a blocking SDK call in a thread; Docker errors become BackendError."""
        return await self._mapped(
            asyncio.to_thread(self._tracked, fn, _cleanup, *args, **kwargs)
        )

    async def _untracked(self, fn: Callable[..., T], *args: Any) -> T:
        """Like :meth:`_io` for a call that creates nothing of the run (a pull).

        It runs in a daemon thread that neither cleanup nor the interpreter's
        exit waits for: a pull can take minutes, or hang on a registry that
        never answers, and Ctrl-C must still end the run at once.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(outcome: Callable[[], None]) -> None:
            if not future.done():
                outcome()

        def work() -> None:
            try:
                value = fn(*args)
            except BaseException as exc:  # handed to the awaiting task
                error = exc
                with contextlib.suppress(RuntimeError):  # the loop is gone
                    loop.call_soon_threadsafe(
                        settle, lambda: future.set_exception(error)
                    )
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(settle, lambda: future.set_result(value))

        threading.Thread(target=work, name=f"docker {fn.__name__}", daemon=True).start()
        return await self._mapped(future)

    async def _mapped(self, awaitable: Awaitable[T]) -> T:
        import docker.errors
        import requests

        try:
            return await awaitable
        except docker.errors.DockerException as exc:
            explanation = getattr(exc, "explanation", None) or str(exc)
            raise BackendError(f"Docker: {explanation}") from exc
        except requests.RequestException as exc:  # the engine went away or timed out
            raise BackendError(
                f"the Docker engine did not answer: {exc}",
                hint="is the Docker daemon still running?",
            ) from exc

    def _wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout=timeout)

    def _image_for(self, spec: NodeSpec) -> str:
        return spec.image or self.image

    def _container(self, name: str) -> Any:
        if name not in self._containers:
            known = ", ".join(sorted(self._containers)) or "none started"
            raise BackendError(
                f"no Docker node named {name!r} in this run (nodes: {known})", node=name
            )
        return self._containers[name]

    # -- image --------------------------------------------------------------------

    async def pull_image(
        self, *, force: bool = False, as_given: Collection[str] = ()
    ) -> PhaseReport:
        """Pull the node images that are not here; ``force`` pulls the others too.

        ``force`` (``force_pull_image``) applies to the images the workflow
        names. One in ``as_given`` (an ``--image`` that replaces them) is pulled
        only when it is not here, as merobox force-pulls the workflow's images
        and never the command line's. A forced pull that fails while a copy of
        the image is here is a warning, and the nodes run that copy (merobox:
        "Workflow will continue with existing image"); without a copy it fails.
        """
        planned = getattr(self, "planned", [])
        images = sorted({self.image, *(s.image for s in planned if s.image)})
        for ref in images:
            problem = image_reference_problem(ref)
            if problem:
                raise BackendError(
                    f"node image {problem}",
                    hint="write it as Docker does, e.g. ghcr.io/calimero-network/merod:edge",
                )
        pulled, present, given, kept, warnings = [], [], [], [], []
        for ref in images:
            here = await self._io(self._image_present, ref)
            if here and not force:
                present.append(ref)
                continue
            if here and ref in as_given:
                given.append(ref)
                continue
            try:
                await self._pull(ref)
            except BackendError as exc:
                if not here:
                    raise
                kept.append(ref)
                warnings.append(
                    f"the forced pull of {ref} failed ({exc}); the copy of it here is used"
                )
                log.info("%s", warnings[-1])
                continue
            pulled.append(ref)
        detail = []
        if present:
            detail.append("present: " + ", ".join(present))
        if given:
            detail.append(
                "present, not force-pulled (chosen with --image): " + ", ".join(given)
            )
        if pulled:
            detail.append("pulled: " + ", ".join(pulled))
        detail.extend(f"warning: {w}" for w in warnings)
        return PhaseReport(
            skipped=not (pulled or kept),
            detail="; ".join(detail),
            data={"warnings": warnings} if warnings else {},
        )

    def _image_present(self, ref: str) -> bool:
        import docker.errors

        try:
            self._images[ref] = self.client.images.get(ref)
            return True
        except docker.errors.ImageNotFound:
            return False

    async def _pull(self, ref: str) -> None:
        delay = 1.0
        last: Exception | None = None
        build = (
            "build the image locally (scripts/build-images.sh makes "
            "calimero-workflow/node:dev) and pass it with --image"
        )
        for attempt in range(3):
            try:
                self._images[ref] = await self._untracked(self.client.images.pull, ref)
                return
            except BackendError as exc:
                last = exc
                log.debug("pulling %s, attempt %d: %s", ref, attempt + 1, exc)
                text = str(exc).lower()
                # an answer from the registry: trying again would not change it
                if any(word in text for word in _NOT_THERE):
                    raise BackendError(
                        f"the registry has no image {ref!r}: {exc}",
                        hint=f"check the name and the tag; or {build}",
                    ) from exc
                if any(word in text for word in _NOT_ALLOWED):
                    registry = _registry_of(ref)
                    raise BackendError(
                        f"the registry refused {ref!r}: {exc}",
                        hint=f"log in first: docker login {registry}",
                    ) from exc
                if attempt < 2:
                    await asyncio.sleep(delay)
                    delay *= 2
        raise BackendError(
            f"cannot pull the node image {ref!r} after 3 attempts: {last}",
            hint=f"check that the registry is reachable, or {build}",
        )

    def image_info(self) -> dict[str, Any]:
        """The default node image, its id and digest (RepoDigests, else the id)."""
        image = self._images.get(self.image)
        if image is None:
            try:
                image = self.client.images.get(self.image)
            except Exception:  # not pulled yet, or no engine: report the reference
                return {"image": self.image}
        digests = image.attrs.get("RepoDigests") or []
        return {
            "image": self.image,
            "id": image.id,
            "digest": digests[0] if digests else image.id,
        }

    # -- start --------------------------------------------------------------------

    def _network(self, role: str, *, isolated: bool = False) -> Any:
        if role not in self._networks:
            options = (
                {"com.docker.network.bridge.enable_icc": "false"} if isolated else None
            )
            network = self.client.networks.create(
                f"cw-{self.short}-{role}",
                driver="bridge",
                labels=self._labels(),
                options=options,
                check_duplicate=True,
            )
            self._networks[role] = network
            if self._joins is not None and role != "peers":
                network.connect(self._joins)
        return self._networks[role]

    def _control_network(self, node: str) -> Any:
        if self._joins is None:
            return self._network("control", isolated=True)
        return self._network(f"ctl-{_name_part(node)}")

    def _write_marker(self) -> None:
        write_run_marker(
            self.workdir,
            workflow_name=self.workflow_name,
            run_id=self.run_id,
            backend=self.name,
        )

    def _local_data_dir(self, spec: NodeSpec) -> Path:
        if spec.data_dir is not None:
            return Path(spec.data_dir).resolve()
        return (self.workdir / "nodes" / spec.name).resolve()

    def _prepare_data(self, spec: NodeSpec) -> bool:
        """Make the node's data dir (a host path, else a volume) and say whether we see it."""
        local = self._local_data_dir(spec)
        source = (
            str(local) if self._own is None else host_path_for(local, self._own_mounts)
        )
        if source is not None:
            local.mkdir(parents=True, exist_ok=True)
            self._data[spec.name] = source
            return True
        log.info(
            "%s is on no mount of this container; node %s keeps its data in a volume",
            local,
            spec.name,
        )
        volume = self.client.volumes.create(
            f"cw-{self.short}-{_name_part(spec.name)}", labels=self._labels(spec.name)
        )
        self._data[spec.name] = volume.name
        return False

    def _init_node(self, spec: NodeSpec, timeout: float) -> str:
        """Run ``merod init`` for one node (unless its data dir has a config); return its peer id."""
        name = spec.name
        visible = self._prepare_data(spec)
        # A data_dir that already holds this node (merobox reuses them) keeps its identity.
        existing = self._local_data_dir(spec) / name / "config.toml"
        if visible and existing.is_file():
            self._configs[name] = existing.read_text()
        else:
            self._configs[name] = self._run_init(spec, self._data[name], timeout)
        peer_id = tomllib.loads(self._configs[name]).get("identity", {}).get("peer_id")
        if not peer_id:
            raise NodeUnavailableError(
                f"node {name}: {DATA}/{name}/config.toml has no [identity] peer_id",
                node=name,
                hint=f"the image {self._image_for(spec)} must write merod's config format",
            )
        return str(peer_id)

    def _run_init(self, spec: NodeSpec, source: str, timeout: float) -> str:
        import docker.errors
        import requests

        name = spec.name
        image = self._image_for(spec)
        init = self.client.containers.create(
            image,
            entrypoint=[],
            command=[
                "merod",
                "--home",
                DATA,
                "--node",
                name,
                "init",
                "--server-host",
                "0.0.0.0",
                "--server-port",
                str(SERVER_PORT),
                "--swarm-port",
                str(SWARM_PORT),
                *self.extra_init_args,
            ],
            volumes={source: {"bind": DATA, "mode": "rw"}},
            labels=self._labels(name),
            name=f"{self._container_name(name)}-init",
            environment={"NODE_NAME": name, "CALIMERO_HOME": DATA, **self.extra_env},
            network=self.extra_networks[0] if self.extra_networks else None,
            user=self._user,
        )
        try:
            try:
                init.start()
            except docker.errors.APIError as exc:
                raise NodeUnavailableError(
                    f"`merod init` for node {name} could not start: {exc.explanation or exc}",
                    node=name,
                    hint=f"the image {image} must provide `merod` on its PATH",
                ) from exc
            try:
                status = init.wait(timeout=timeout)
            except requests.RequestException as exc:  # the wait's read timed out
                output = init.logs().decode("utf-8", "replace")
                raise NodeUnavailableError(
                    f"`merod init` for node {name} did not finish within {timeout:g}s",
                    node=name,
                    last_logs="\n".join(output.splitlines()[-50:]),
                    hint=f"raise `wait_timeout`, or check that `merod init` of {image} "
                    "exits once it has written the config",
                ) from exc
            code = status.get("StatusCode", 1)
            if code != 0:
                output = init.logs().decode("utf-8", "replace")
                raise NodeUnavailableError(
                    f"`merod init` for node {name} exited with code {code}",
                    node=name,
                    exit_code=code,
                    last_logs="\n".join(output.splitlines()[-50:]),
                    hint=f"check that {image} provides a merod that accepts `init`",
                )
            return _read_archive(init, f"{DATA}/{name}/config.toml").decode()
        finally:
            init.remove(force=True)

    def _create_node(
        self, spec: NodeSpec, bootstrap: list[str], host_port: int | None
    ) -> Any:
        name = spec.name
        ports = None
        if self._joins is None:
            ports = {f"{SERVER_PORT}/tcp": ("127.0.0.1", host_port)}
            if spec.swarm_port:
                ports[f"{SWARM_PORT}/tcp"] = ("127.0.0.1", spec.swarm_port)
        env = {"NODE_NAME": name, "CALIMERO_HOME": DATA, **self.extra_env, **spec.env}
        if spec.log_level:
            env["RUST_LOG"] = spec.log_level
        container = self.client.containers.create(
            self._image_for(spec),
            entrypoint=[],
            command=["merod", "--home", DATA, "--node", name, "run"],
            volumes={self._data[name]: {"bind": DATA, "mode": "rw"}},
            labels=self._labels(name),
            name=self._container_name(name),
            environment=env,
            ports=ports,
            network=self._control_network(name).name,
            user=self._user,
        )
        self._network("peers").connect(container, aliases=[_peer_alias(name)])
        for extra in self.extra_networks:
            self.client.networks.get(extra).connect(container)
        text = set_bootstrap(self._configs[name], bootstrap)
        container.put_archive(
            f"{DATA}/{name}",
            _tar_one("config.toml", text.encode(), owner=self._tar_owner()),
        )
        return container

    def _launch(self, spec: NodeSpec, bootstrap: list[str]) -> None:
        """Create and start one node container; an auto-picked port that got taken is re-picked."""
        import docker.errors

        for attempt in range(3):
            port = spec.server_port or _free_port()
            container = self._create_node(spec, bootstrap, port)
            try:
                container.start()
            except docker.errors.APIError as exc:
                # The container may already be gone (that can be the failure).
                with contextlib.suppress(docker.errors.APIError):
                    container.remove(force=True)
                # We pick the port (so it survives restarts); someone may take it first.
                text = str(exc)
                taken = "already allocated" in text or "address already in use" in text
                if taken and not spec.server_port and attempt < 2:
                    continue
                hint = (
                    f"host port {port} is taken; give the node another `rpc_port` "
                    "(or the nodes another `base_rpc_port`), or leave it out to get a free one"
                    if taken
                    else None
                )
                raise NodeUnavailableError(
                    f"node {spec.name} could not start: {exc.explanation or exc}",
                    node=spec.name,
                    hint=hint,
                ) from exc
            self._containers[spec.name] = container
            with self._rewiring:
                self._peer_members.setdefault("peers", set()).add(spec.name)
            self._urls[spec.name] = (
                f"http://127.0.0.1:{port}"
                if self._joins is None
                else f"http://{container.name}:{SERVER_PORT}"
            )
            return

    def _check_names(self, specs: list[NodeSpec]) -> None:
        seen: dict[str, str] = {}
        for spec in specs:
            part = _name_part(spec.name)
            if part in seen:
                raise BackendError(
                    f"nodes {seen[part]!r} and {spec.name!r} would share the container name "
                    f"{self._container_name(spec.name)!r}",
                    node=spec.name,
                    hint="give nodes names that differ in letters or digits, not only in punctuation or case",
                )
            seen[part] = spec.name

    async def start_nodes(
        self, specs: list[NodeSpec], *, ready_timeout: float
    ) -> dict[str, NodeHandle]:
        """Init every node, wire each to its siblings, start all, wait until ready."""
        self._check_names(specs)
        self._specs.update({s.name: s for s in specs})
        await self._io(lambda: self.client)
        await self._io(self._write_marker)
        peer_ids = await asyncio.gather(
            *(
                self._io(self._init_node, s, max(ready_timeout, MIN_INIT_TIMEOUT))
                for s in specs
            )
        )
        addresses = {
            s.name: f"/dns4/{_peer_alias(s.name)}/tcp/{SWARM_PORT}/p2p/{peer}"
            for s, peer in zip(specs, peer_ids, strict=True)
        }
        # Networks first: creating them from parallel threads would race.
        await self._io(self._network, "peers")
        for spec in specs:
            await self._io(self._control_network, spec.name)
        await asyncio.gather(
            *(
                self._io(
                    self._launch, s, [a for n, a in addresses.items() if n != s.name]
                )
                for s in specs
            )
        )
        await self._wait_ready([s.name for s in specs], len(specs) - 1, ready_timeout)
        return {s.name: self._handle(s.name) for s in specs}

    def _handle(self, name: str) -> NodeHandle:
        container = self._containers[name]
        info = {
            "container": container.name,
            "image": self._image_for(self._specs[name]),
            "data": self._data.get(name),
        }
        # A container carries its image's labels.
        scheme = (container.labels or {}).get(LABEL_APP_BUNDLES)
        if scheme:
            info["app_bundles"] = scheme
        return NodeHandle(name=name, url=self._urls[name], backend=self.name, info=info)

    # -- readiness ----------------------------------------------------------------

    async def _exited(
        self, name: str, state: NodeState, what: str
    ) -> NodeUnavailableError:
        oom = " (killed: out of memory)" if state.oom_killed else ""
        return NodeUnavailableError(
            f"node {name} exited with code {state.exit_code}{oom} {what}",
            node=name,
            exit_code=state.exit_code,
            oom_killed=state.oom_killed,
            last_logs=await self.tail_logs(name),
            hint="the node's last log lines say why",
        )

    async def _wait_ready(self, names: list[str], peers: int, timeout: float) -> None:
        """Wait until each node's health answers 200 and it sees ``peers`` peers."""
        deadline = time.monotonic() + timeout
        # trust_env=False: a proxy from the environment must not carry loopback
        # or container-name requests.
        try:
            async with (
                httpx.AsyncClient(timeout=2.0, trust_env=False) as http,
                asyncio.TaskGroup() as group,
            ):
                for name in names:
                    group.create_task(
                        self._wait_one(http, name, peers, deadline, timeout)
                    )
        except ExceptionGroup as failed:
            # The first node that failed explains the run; the others were cancelled.
            raise failed.exceptions[0] from None

    async def _wait_one(
        self,
        http: httpx.AsyncClient,
        name: str,
        peers: int,
        deadline: float,
        timeout: float,
    ) -> None:
        url = self._urls[name]
        last = "it did not answer yet"
        while True:
            answered = False
            try:
                health = await http.get(f"{url}/admin-api/health")
                if health.status_code == 200:
                    answered = True
                    if peers <= 0:
                        return
                    seen = _peer_count(
                        (await http.get(f"{url}/admin-api/peers")).json()
                    )
                    if seen >= peers:
                        return
                    last = f"it sees {seen} of {peers} peer(s)"
                else:
                    last = f"GET /admin-api/health answered HTTP {health.status_code}"
            except (httpx.HTTPError, ValueError) as exc:
                last = f"GET {url}/admin-api/health failed: {type(exc).__name__}"
            if not answered:
                state = await self.node_state(name)
                if not state.running:
                    raise await self._exited(name, state, "before it was ready")
            if time.monotonic() >= deadline:
                raise NodeUnavailableError(
                    f"node {name} was not ready within {timeout:g}s: {last}",
                    node=name,
                    last_logs=await self.tail_logs(name),
                    hint="raise `wait_timeout`, or read the node's log lines for why it is slow",
                )
            await asyncio.sleep(POLL_INTERVAL)

    # -- files and commands ------------------------------------------------------

    async def stage_file(self, name: str, path: Path) -> str:
        """Copy a regular host file into the node's data dir; return its path in the node."""
        container = self._container(name)
        source = Path(path)
        if not source.is_file():
            raise BackendError(
                f"cannot give node {name} {str(path)!r}: not a regular file",
                node=name,
                hint="install_application `path` must name a .wasm file",
            )
        target = re.sub(r"[^A-Za-z0-9._-]", "_", source.name).lstrip(".") or "staged"
        if target in self._specs:  # the node's own directory under /app/data
            target = f"staged-{target}"
        data = await asyncio.to_thread(read_file, source)
        await self._io(
            container.put_archive, DATA, _tar_one(target, data, owner=self._tar_owner())
        )
        return f"{DATA}/{target}"

    async def exec_in_node(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        limit: int | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` in the node's container: ``(exit code, stdout, stderr)``.

        With ``limit``, each output keeps at most that many bytes; the rest is
        read (so the command never blocks on a full pipe) and dropped.
        """
        container = self._container(name)
        return await self._io(self._exec, container, argv, env, limit)

    def _exec(
        self, container: Any, argv: list[str], env: dict[str, str], limit: int | None
    ) -> tuple[int, bytes, bytes]:
        api = self.client.api
        exec_id = api.exec_create(
            container.id, argv, environment=env, user=self._user or ""
        )["Id"]
        kept = (bytearray(), bytearray())
        for chunks in api.exec_start(exec_id, stream=True, demux=True):
            for buffer, chunk in zip(kept, chunks, strict=True):
                if chunk:
                    room = len(chunk) if limit is None else limit - len(buffer)
                    buffer += chunk[: max(room, 0)]
        code = api.exec_inspect(exec_id).get("ExitCode")
        return code or 0, bytes(kept[0]), bytes(kept[1])

    # -- faults -------------------------------------------------------------------

    async def _stop_node(self, name: str) -> bool:
        """SIGTERM the node (SIGKILL after 10 s); container, data and logs stay."""
        container = self._container(name)
        await self._io(container.reload)
        if container.status == "paused":
            await self._io(container.unpause)
        self._paused.discard(name)
        if container.status not in ("running", "paused"):
            return False
        await self._io(container.stop, timeout=10)
        current = await self._io(container.logs, timestamps=True)
        self._log_history[name] = _merge_logs(self._log_history.get(name, b""), current)
        return True

    async def _start_node(self, name: str, *, ready_timeout: float, wait: bool) -> NodeHandle:
        """Start a stopped node on its data; ready once it sees the reachable running peers."""
        container = self._container(name)
        await self._io(container.reload)
        if container.status in ("running", "paused"):
            handle = self._handle(name)
            handle.already_running = True
            return handle
        await self._io(container.start)
        if wait:
            await self._wait_ready([name], await self._reachable_peers(name), ready_timeout)
        return self._handle(name)

    async def _reachable_peers(self, name: str) -> int:
        """How many running nodes share a peer network with ``name``."""
        mine = {role for role, members in self._peer_members.items() if name in members}
        count = 0
        for other, sibling in self._containers.items():
            shared = any(
                other in self._peer_members.get(role, ()) for role in mine
            )
            if other == name or not shared:
                continue
            await self._io(sibling.reload)
            count += sibling.status == "running"
        return count

    async def _pause_node(self, name: str) -> bool:
        """``docker pause``: the container keeps its memory and answers nothing."""
        container = self._container(name)
        await self._io(container.reload)
        if container.status == "paused":
            return False
        if container.status != "running":
            raise NodeNotRunningError(f"node {name} is not running, so it cannot be paused", node=name)
        await self._io(container.pause)
        self._paused.add(name)
        return True

    async def _unpause_node(self, name: str) -> bool:
        container = self._container(name)
        await self._io(container.reload)
        if container.status != "paused":
            if container.status != "running":
                raise NodeNotRunningError(
                    f"node {name} is not running, so it cannot be unpaused", node=name
                )
            return False
        await self._io(container.unpause)
        self._paused.discard(name)
        return True

    async def _disconnect_node(self, name: str) -> None:
        """Take the node off its peer networks; the workflow still reaches it."""
        self._container(name)
        self._disconnected.add(name)
        await self._io(self._rewire_peers)

    async def _connect_node(self, name: str) -> None:
        """Put a disconnected node back on its peer networks under its alias."""
        self._container(name)
        self._disconnected.discard(name)
        await self._io(self._rewire_peers)

    async def _set_partition(self, name: str, peers: list[str], *, blocked: bool) -> None:
        for node in [name, *peers]:
            self._container(node)
        for peer in peers:
            if peer == name:
                raise BackendError(f"node {name} cannot be partitioned from itself", node=name)
            pair = frozenset((name, peer))
            if blocked:
                self._blocked_pairs.add(pair)
            else:
                self._blocked_pairs.discard(pair)
        await self._io(self._rewire_peers)

    def _peer_cover(self) -> dict[str, set[str]]:
        """Which peer network each group of mutually reachable nodes uses.

        A group keeps the network whose members it shares most (``peers``
        first), so a change moves as few nodes as it can.
        """
        names = [n for n in self._containers if n not in self._disconnected]
        if not self._blocked_pairs:
            groups = [frozenset(names)] if names else []
        else:
            groups = _clique_cover(names, self._blocked_pairs)
        free = {role: set(members) for role, members in self._peer_members.items()}
        free.setdefault("peers", set())
        cover: dict[str, set[str]] = {}
        for group in sorted(groups, key=lambda g: (-len(g), sorted(g))):
            if free:
                role = max(
                    free,
                    key=lambda r: (len(free[r] & group), r == "peers", -len(r), r),
                )
                del free[role]
            else:
                role = next(f"peers-{i}" for i in itertools.count(1) if f"peers-{i}" not in cover)
            cover[role] = set(group)
        return cover

    def _rewire_peers(self) -> None:
        """Connect and disconnect nodes so the peer networks match the faults:
        new memberships first, so a pair that may talk never loses all of them."""
        with self._rewiring:
            desired = self._peer_cover()
            for role, members in desired.items():
                current = self._peer_members.get(role, set())
                for node in sorted(members - current):
                    self._network(role).connect(
                        self._containers[node], aliases=[_peer_alias(node)]
                    )
            for role, current in self._peer_members.items():
                for node in sorted(current - desired.get(role, set())):
                    self._network(role).disconnect(self._containers[node], force=True)
            self._peer_members = {role: set(m) for role, m in desired.items()}

    # -- observation --------------------------------------------------------------

    async def node_state(self, name: str) -> NodeState:
        """The container's state as Docker reports it."""
        container = self._container(name)
        await self._io(container.reload)
        state = container.attrs.get("State", {})
        return NodeState(
            running=bool(state.get("Running")),
            exit_code=state.get("ExitCode"),
            paused=bool(state.get("Paused")),
            oom_killed=bool(state.get("OOMKilled")),
            error=state.get("Error") or None,
            started_at=state.get("StartedAt"),
            finished_at=state.get("FinishedAt"),
        )

    async def tail_logs(self, name: str, lines: int = 50) -> str:
        """The last ``lines`` log lines of a node, with timestamps ('' when gone)."""
        try:
            container = self._container(name)
            raw = await self._io(container.logs, tail=lines, timestamps=True)
        except BackendError:  # the container is gone: nothing to show
            return ""
        return raw.decode("utf-8", "replace").rstrip("\n")

    async def read_logs(self, name: str, *, tail: int | None = None) -> str | None:
        """The container's log as the node wrote it (no timestamps added)."""
        container = self._container(name)
        raw = await self._io(container.logs, tail=tail or "all", timestamps=False)
        return raw.decode("utf-8", "replace")

    async def logs_since(self, name: str, since: float) -> list[str]:
        try:
            container = self._container(name)
            raw = await self._io(container.logs, since=since, timestamps=True)
        except BackendError:
            return []
        return raw.decode("utf-8", "replace").splitlines()

    async def collect_logs(
        self, dest: Path, *, redact: Callable[[str], str] | None = None
    ) -> dict[str, Path]:
        """Write ``<node>.log`` (all segments, timestamps) and ``<node>.state.json`` per node."""
        dest.mkdir(parents=True, exist_ok=True)
        out: dict[str, Path] = {}

        def write(path: Path, data: bytes) -> None:
            if redact is not None:
                text = redact(data.decode("utf-8", "surrogateescape"))
                data = text.encode("utf-8", "surrogateescape")
            replace_file(path, data)

        for name, container in list(self._containers.items()):
            path = dest / f"{name}.log"
            try:
                raw = await self._io(container.logs, timestamps=True)
                state = await self.node_state(name)
            except BackendError as exc:  # keep going for the other nodes
                write(
                    path,
                    self._log_history.get(name, b"")
                    + f"could not read logs: {exc}\n".encode(),
                )
                out[name] = path
                continue
            write(path, _merge_logs(self._log_history.get(name, b""), raw))
            replace_file(
                dest / f"{name}.state.json", (json.dumps(asdict(state), indent=2) + "\n").encode()
            )
            out[name] = path
        return out

    # -- teardown -----------------------------------------------------------------

    def _remove_labelled(self, label: str, keep_runs: Collection[str] = ()) -> tuple[int, int, int]:
        """Remove containers, then networks, then volumes carrying ``label``
        (except those of the runs ``keep_runs``)."""
        client = self.client

        def kept(obj: Any) -> bool:
            labels = (obj.attrs.get("Config") or {}).get("Labels") or obj.attrs.get("Labels") or {}
            return labels.get(LABEL_RUN) in keep_runs

        # The SDK inspects each listed container; one removed in between (an
        # init container finishing) must be skipped, not fail the cleanup.
        containers = [
            c
            for c in client.containers.list(all=True, filters={"label": label}, ignore_removed=True)
            if not kept(c)
        ]
        for container in containers:
            try:
                container.remove(force=True, v=False)
            except Exception as exc:  # already gone
                log.debug("removing %s: %s", container.name, exc)
        networks = [n for n in client.networks.list(filters={"label": label}) if not kept(n)]
        for network in networks:
            try:
                network.reload()
                # Our own container (engine in a container) is still attached.
                for attached in network.attrs.get("Containers") or {}:
                    network.disconnect(attached, force=True)
                network.remove()
            except Exception as exc:
                log.debug("removing network %s: %s", network.name, exc)
        volumes = [v for v in client.volumes.list(filters={"label": label}) if not kept(v)]
        for volume in volumes:
            try:
                volume.remove(force=True)
            except Exception as exc:
                log.debug("removing volume %s: %s", volume.name, exc)
        return len(containers), len(networks), len(volumes)

    async def cleanup(self) -> PhaseReport:
        """Remove everything labelled with this run id. Safe to call twice, and
        while a cancelled start is still creating objects."""
        release_run(self.workdir)
        with self._idle:
            self._closed = True
            busy = self._busy > 0
        label = f"{LABEL_RUN}={self.run_id}"
        early = (0, 0, 0)
        if busy and self._client is not None:
            # Calls of a cancelled start may be blocked on a container (waiting
            # for a `merod init` that never ends); removing the run's
            # containers first releases them instead of waiting them out.
            early = await self._io(self._remove_labelled, label, _cleanup=True)
        if not await asyncio.to_thread(self._wait_idle, IN_FLIGHT_WAIT):
            log.warning(
                "Docker calls still running after %gs; cleaning up anyway",
                IN_FLIGHT_WAIT,
            )
        if self._client is None:
            return PhaseReport(detail="no Docker objects were created")
        # again once nothing is in flight: it may have created more meanwhile
        late = await self._io(self._remove_labelled, label, _cleanup=True)
        counts = [a + b for a, b in zip(early, late, strict=True)]
        self._containers.clear()
        self._networks.clear()
        return PhaseReport(
            detail=f"removed {counts[0]} container(s), {counts[1]} network(s), {counts[2]} volume(s)"
        )

    @staticmethod
    def _remove_old_data(over: Collection[Path]) -> list[str]:
        removed = []
        for run_dir in over:
            if (run_dir / "nodes").is_dir():
                shutil.rmtree(run_dir / "nodes")
                removed.append(run_dir.name)
        return removed

    async def nuke(self) -> PhaseReport:
        """Remove containers, networks, volumes and node data dirs of earlier runs
        of this workflow (not of one still in progress on this machine)."""
        # Allowed after cleanup: the engine nukes at the end with `nuke_on_end`.
        # this run's own folder is not in progress here: the nuke at the
        # start comes before its marker, the one at the end after its cleanup
        over, live = await asyncio.to_thread(other_runs, self.workdir.parent, self.workflow_name)
        counts = await self._io(
            self._remove_labelled,
            f"{LABEL_WORKFLOW}={self.workflow_name}",
            {run_id for run_id in map(run_id_of, live) if run_id},
            _cleanup=True,
        )
        try:
            dirs = await asyncio.to_thread(self._remove_old_data, over)
        except OSError as exc:
            raise BackendError(
                f"cannot remove node data of an earlier run: {exc}",
                hint="the files may belong to another user; remove them by hand",
            ) from exc
        detail = (
            f"removed leftovers of this workflow: {counts[0]} container(s), "
            f"{counts[1]} network(s), {counts[2]} volume(s), node data of {len(dirs)} run(s)"
        )
        return PhaseReport(
            detail=detail + in_progress_note(live),
            data={"data_dirs": dirs, "in_progress": [run_dir.name for run_dir in live]},
        )


def remove_run(run_id: str) -> tuple[int, int, int]:
    """Synchronously remove every Docker object of one run.

    For the action's post step, signal handlers and atexit hooks: no event loop
    needed. Returns the numbers of containers, networks and volumes removed.
    """
    backend = DockerBackend(run_id=run_id, workflow_name="-", workdir=Path(os.devnull))
    # removing needs no network, so none of the detection the nodes need
    backend._client = _docker()
    return backend._remove_labelled(f"{LABEL_RUN}={run_id}")
