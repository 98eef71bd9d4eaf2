"""The chain sandbox and contract deployment phases.

A workflow that needs a chain names a sandbox image and, optionally, a
contracts directory and a deploy command::

    sandbox:
      image: my/sandbox:1
      port: 3030               # the port it serves on inside the container
      ready_path: /status      # answers 2xx when ready (omit: TCP connect)
    contracts:
      dir: ./contracts         # copied to /contracts in the deploy container
      command: [python3, /contracts/deploy.py]

The sandbox runs on its own network as ``sandbox``; the deploy command runs in
a throwaway container on that network with ``SANDBOX_URL`` set, and prints a
JSON object. That object becomes ``${results.deploy_contracts.…}``; its
``env`` mapping is added to every Docker node's environment and its
``init_args`` list to ``merod init``, which is how nodes learn where the
contracts live. Everything carries the run's labels and is removed in cleanup.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx

from .base import BackendError, PhaseReport
from .docker import LABEL_RUN, _docker, labels_for, network_home, own_container_id

SANDBOX_ALIAS = "sandbox"


def _tar_dir(path: Path, arcname: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(path), arcname=arcname)
    return buffer.getvalue()


class Sandbox:
    """One run's sandbox container and contract deployment."""

    def __init__(self, *, run_id: str, workflow_name: str, settings: Any, contracts: Any, base_dir: Path):
        self.run_id = run_id
        self.settings = settings
        self.contracts = contracts
        self.base_dir = base_dir
        self.labels = labels_for(run_id, workflow_name)
        self.short = "".join(c for c in run_id.lower() if c.isalnum())[-10:]
        self._client: Any = None
        self.network: Any = None
        self.container: Any = None
        self.url: str | None = None
        #: What the deploy command printed (also the phase's results).
        self.deployed: dict[str, Any] = {}

    @property
    def network_name(self) -> str:
        return f"cw-{self.short}-sandbox"

    @property
    def internal_url(self) -> str:
        return f"http://{SANDBOX_ALIAS}:{self.settings.port}"

    async def _io(self, fn, *args, **kwargs):
        import docker.errors

        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except docker.errors.DockerException as exc:
            raise BackendError(f"Docker: {getattr(exc, 'explanation', None) or exc}") from exc

    async def start(self) -> PhaseReport:
        self._client = await asyncio.to_thread(_docker)
        s = self.settings
        self.network = await self._io(
            self._client.networks.create, self.network_name, driver="bridge", labels=self.labels
        )
        own = await self._io(
            lambda: network_home(self._client, own_container_id(self._client))
        )
        ports = None if own else {f"{s.port}/tcp": ("127.0.0.1", None)}
        endpoint = self._client.api.create_endpoint_config(aliases=[SANDBOX_ALIAS])
        self.container = await self._io(
            self._client.containers.run,
            s.image,
            command=s.command,
            environment=s.env,
            labels=self.labels,
            name=f"cw-{self.short}-sandbox",
            network=self.network_name,
            networking_config={self.network_name: endpoint},
            ports=ports,
            detach=True,
        )
        if own:
            await self._io(self.network.connect, own)
            self.url = self.internal_url
        else:
            await self._io(self.container.reload)
            binding = self.container.attrs["NetworkSettings"]["Ports"][f"{s.port}/tcp"][0]
            self.url = f"http://127.0.0.1:{binding['HostPort']}"
        await self._wait_ready()
        return PhaseReport(detail=f"{s.image} answers at {self.url}", data={"url": self.url})

    async def _wait_ready(self) -> None:
        s = self.settings
        deadline = time.monotonic() + s.timeout
        last = "no answer yet"
        async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
            while True:
                await self._io(self.container.reload)
                if self.container.status == "exited":
                    logs = (await self._io(self.container.logs, tail=30)).decode("utf-8", "replace")
                    raise BackendError(
                        f"the sandbox {s.image} exited with code "
                        f"{self.container.attrs['State'].get('ExitCode')} before it answered:\n{logs}"
                    )
                try:
                    response = await http.get(self.url + (s.ready_path or "/"))
                    if s.ready_path is None or response.status_code < 300:
                        return
                    last = f"{s.ready_path} answered HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    raise BackendError(
                        f"the sandbox {s.image} did not answer within {s.timeout:g}s ({last})",
                        hint="check `sandbox.port` and `sandbox.ready_path`",
                    )
                await asyncio.sleep(0.1)

    async def deploy(self) -> PhaseReport:
        c = self.contracts
        image = c.image or self.settings.image
        source = (self.base_dir / c.dir).resolve() if c.dir else None
        container = await self._io(
            self._client.containers.create,
            image,
            command=c.command,
            environment={"SANDBOX_URL": self.internal_url, **c.env},
            labels=self.labels,
            name=f"cw-{self.short}-deploy",
            network=self.network_name,
        )
        try:
            if source is not None:
                await self._io(container.put_archive, "/", _tar_dir(source, "contracts"))
            await self._io(container.start)
            status = await self._io(container.wait, timeout=c.timeout)
            stdout = (await self._io(container.logs, stdout=True, stderr=False)).decode("utf-8", "replace")
            stderr = (await self._io(container.logs, stdout=False, stderr=True)).decode("utf-8", "replace")
        finally:
            await self._io(container.remove, force=True)
        code = status.get("StatusCode", 1)
        if code != 0:
            raise BackendError(
                f"deploying contracts failed with exit code {code}: {stderr.strip()[-2000:] or stdout.strip()[-2000:]}"
            )
        last_line = next((line for line in reversed(stdout.strip().splitlines()) if line.strip()), "{}")
        try:
            deployed = json.loads(last_line)
        except ValueError:
            raise BackendError(
                f"the deploy command must print a JSON object as its last line; it printed {last_line[:200]!r}"
            ) from None
        if not isinstance(deployed, dict):
            raise BackendError(f"the deploy command printed {type(deployed).__name__}, not a JSON object")
        self.deployed = deployed
        return PhaseReport(detail=f"contracts deployed: {', '.join(map(str, deployed)) or 'nothing reported'}",
                           data=deployed)

    def node_env(self) -> dict[str, str]:
        env = {"SANDBOX_URL": self.internal_url}
        extra = self.deployed.get("env") or {}
        env.update({str(k): str(v) for k, v in extra.items()})
        return env

    def init_args(self) -> list[str]:
        return [str(a) for a in self.deployed.get("init_args") or []]

    async def cleanup(self) -> None:
        if self._client is None:
            return
        from .docker import DockerBackend

        backend = DockerBackend(run_id=self.run_id, workflow_name="-", workdir=self.base_dir)
        backend._client = self._client
        await asyncio.to_thread(backend._remove_labelled, f"{LABEL_RUN}={self.run_id}")
