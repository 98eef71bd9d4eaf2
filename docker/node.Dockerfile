# A merod-compatible node image: our embedded Calimero node behind a `merod`
# command that takes `init` and `run` as merod does, so the Docker backend (and
# merobox) can run it in place of ghcr.io/calimero-network/merod.
#
#   docker build -f docker/node.Dockerfile -t calimero-workflow/node:dev .
#   docker build -f docker/node.Dockerfile --build-arg BASE_IMAGE=calimero-workflow/base:bookworm ...
#
# Any base with python3 >= 3.11 and its venv module works: the public default,
# or the local debootstrap base (scripts/build-base-image.sh) where no image
# registry is reachable. scripts/build-images.sh picks one.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/cw
# Dependencies from PyPI first, in their own layer, so a source change reuses it:
# install the project's metadata with an empty package, then drop the package.
# The readme is a stand-in, so editing README.md does not reinstall them.
# (The action's Dockerfile repeats this stage exactly, to share its layers.)
COPY pyproject.toml /src/
RUN mkdir -p /src/src/calimero_workflow && touch /src/README.md /src/src/calimero_workflow/__init__.py \
 && /opt/cw/bin/pip install --quiet /src \
 && /opt/cw/bin/pip uninstall --quiet -y calimero-workflow \
 && rm -rf /src/build /src/src /src/*.egg-info
COPY README.md /src/
COPY src /src/src
# Build the wheel, install it, add `merod`, then drop the installers (about
# 25 MB, not needed at run time).
RUN /opt/cw/bin/pip wheel --quiet --no-deps --wheel-dir /wheels /src \
 && /opt/cw/bin/pip install --quiet --no-deps /wheels/calimero_workflow-*.whl \
 && printf '#!/bin/sh\nexec /opt/cw/bin/merod-embedded "$@"\n' > /opt/cw/bin/merod \
 && chmod 0755 /opt/cw/bin/merod \
 && /opt/cw/bin/python -m pip uninstall --quiet -y pip setuptools

FROM ${BASE_IMAGE}
COPY --from=build /opt/cw /opt/cw
RUN ln -s /opt/cw/bin/merod /usr/local/bin/merod \
 && ln -s /opt/cw/bin/calimero-workflow /usr/local/bin/calimero-workflow
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Like current merod, the node installs only signed .mpk bundles, signed under
# this scheme: the engine then bundles a raw .wasm for it without asking first.
LABEL calimero-workflow.app-bundles="calimero.bundle.manifest.v1"
EXPOSE 2528 2428
WORKDIR /app
ENTRYPOINT ["merod"]
CMD ["--help"]
