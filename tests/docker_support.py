"""Docker availability for the tests that need the engine and our images.

Without Docker the tests skip, except under ``CI=true``, where a missing
engine or image is a failure: CI must exercise the Docker backend.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODE_IMAGE = os.environ.get("CW_NODE_IMAGE", "calimero-workflow/node:dev")
BASE_IMAGE = os.environ.get("CW_LOCAL_BASE_IMAGE", "calimero-workflow/base:bookworm")


def derived_image(kind: str) -> str:
    """The tag of a test image built on :data:`NODE_IMAGE`, e.g. ``…/node-test-crash:dev``.

    Derived from the node image's own tag, so checkouts that test their own
    node image (``CW_NODE_IMAGE``) never rebuild each other's test images.
    """
    repo, _, tag = NODE_IMAGE.rpartition(":")
    if not repo or "/" in tag:  # no tag given (or a registry port): the default one
        repo, tag = NODE_IMAGE, "latest"
    return f"{repo}-test-{kind}:{tag}"


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: Docker tests must run; .ci/run sets Docker up)")
    pytest.skip(reason)


def docker_client():
    """A connected docker client with our node image present, or skip/fail."""
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        _missing(f"no Docker engine: {exc}")
    try:
        client.images.get(NODE_IMAGE)
    except Exception:
        built = subprocess.run(["bash", str(ROOT / "scripts" / "build-images.sh")], capture_output=True, text=True)
        if built.returncode != 0:
            _missing(f"cannot build {NODE_IMAGE}: {built.stderr[-2000:]}")
    return client


def leftovers(client, label: str) -> dict[str, list[str]]:
    """Containers, networks and volumes carrying ``label`` (key=value)."""
    flt = {"label": label}
    return {
        "containers": [c.name for c in client.containers.list(all=True, filters=flt, ignore_removed=True)],
        "networks": [n.name for n in client.networks.list(filters=flt)],
        "volumes": [v.name for v in client.volumes.list(filters=flt)],
    }
