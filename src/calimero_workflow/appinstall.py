"""Installing a local application file on a node this run started.

Current merod (0.11.0-rc.31 and later) installs only signed ``.mpk`` bundles,
while workflows name the ``.wasm`` they build. :func:`install_local_app` hands
the node what it takes (see :meth:`calimero_workflow.client.NodeClient.install_file`):
the file as is, or a bundle of it signed with the public development key, built
in the run's folder and staged like the original file (copied into the node's
data on Docker). The engine knows which of its nodes need bundles, so those
get one without a refused request first: embedded nodes, and containers of an
image that says so with the :data:`~calimero_workflow.backends.docker.LABEL_APP_BUNDLES`
label (our node image does). Any other node is asked, and what it answered is
remembered for the rest of the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .client import InstalledApp

if TYPE_CHECKING:
    from .steps.base import RunContext

__all__ = ["install_local_app"]


def _expected_scheme(ctx: RunContext, node: str) -> str | None:
    """The bundle signing scheme a node of this run is known to take, if known."""
    ref = ctx.node(node)
    if ref.kind == "embedded":
        from .bundle import SCHEME_V1

        return SCHEME_V1
    scheme = ref.info.get("app_bundles")
    return scheme if isinstance(scheme, str) and scheme else None


async def install_local_app(
    ctx: RunContext,
    node: str,
    local: Path,
    *,
    metadata: bytes = b"",
    package: str | None = None,
    version: str | None = None,
) -> InstalledApp:
    """Install the ``.wasm`` or ``.mpk`` at ``local`` on ``node`` (started by this run)."""
    client = ctx.client(node)
    expected = _expected_scheme(ctx, node)
    if expected is not None:
        client.expect_bundles(expected)
    backend = ctx.backend

    async def stage(path: Path) -> str:
        return await backend.stage_file(node, path) if backend else str(path.resolve())

    return await client.install_file(
        local,
        bundle_dir=ctx.workdir / "bundles",
        stage=stage,
        metadata=metadata,
        package=package,
        version=version,
    )
